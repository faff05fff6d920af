"""README.md and docs/: the README stays short and links every page, and every
`python -m tooncrafter_core ...` command they show names a real verb and real options."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from helpers import REPO

from tooncrafter_core.__main__ import build_parser
from tooncrafter_core.commands import VERBS

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PREFIX = "python -m tooncrafter_core"


def _commands(path: Path) -> list[str]:
    """The `python -m tooncrafter_core ...` commands in a file's fenced code blocks, continuation
    lines joined, comments and shell chains around them cut off."""
    found = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0]
            if PREFIX not in line:
                continue
            found.append(PREFIX + line.split(PREFIX, 1)[1].split("&&")[0].rstrip())
    return found


ALL_COMMANDS = [(path.relative_to(REPO).as_posix(), cmd) for path in [README, *DOCS] for cmd in _commands(path)]


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return parser, action.choices


def test_readme_is_short_and_links_every_docs_page():
    text = README.read_text()
    assert len(text) <= 12_000, f"README.md has {len(text)} characters; move reference material into docs/"
    linked = set(re.findall(r"\]\((docs/[^)#]+\.md)", text))
    assert linked == {p.relative_to(REPO).as_posix() for p in DOCS}
    for page in DOCS:  # links between pages point at pages that exist
        for target in re.findall(r"\]\(([^)#:]+\.md)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} links to missing {target}"


def test_the_docs_show_commands_of_every_verb():
    shown = {shlex.split(cmd)[3] for _, cmd in ALL_COMMANDS}
    _, verbs = _subparsers()
    assert shown == set(verbs) and len(verbs) == len(VERBS), shown


def test_help_lists_every_verb(capsys):
    parser, verbs = _subparsers()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--help"])
    assert e.value.code == 0
    listed = capsys.readouterr().out
    for name in ("interpolate", "animate", "colorize", "convert", "evaluate", "batch", "replay", "train-lora", "distill"):
        assert name in verbs and name in listed


@pytest.mark.parametrize("where,command", ALL_COMMANDS, ids=[f"{w}:{c[len(PREFIX) + 1:][:40]}" for w, c in ALL_COMMANDS])
def test_documented_command_uses_real_options(where, command, capsys):
    parser, verbs = _subparsers()
    words = shlex.split(command)[3:]
    verb = verbs.get(words[0])
    assert verb is not None, f"{where}: unknown verb {words[0]!r} in {command!r}"
    with pytest.raises(SystemExit) as e:
        verb.parse_args(["--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage:")
    flags = {w.strip("[]").split("=")[0] for w in words[1:] if w.strip("[").startswith("--")}
    unknown = sorted(f for f in flags if f not in verb._option_string_actions)
    assert not unknown, f"{where}: {command!r} uses options that {words[0]} does not have: {unknown}"
    if not any(c in command for c in "[]") and "..." not in command:
        verb.parse_args(words[1:])  # a whole command: its values must parse too (choices, types)


def test_every_option_with_a_default_shows_it_in_help():
    _, verbs = _subparsers()
    for name, verb in verbs.items():
        text = verb.format_help()
        for action in verb._actions:
            if action.option_strings and action.default not in (None, False, "", [], "==SUPPRESS=="):
                helped = verb._get_formatter()._get_help_string(action) % {"default": action.default}
                assert "default" in helped and helped.split("default")[0].strip() in " ".join(text.split()), (name, action.dest)
    interpolate = " ".join(verbs["interpolate"].format_help().split())
    for shown in ("DDIM steps (default: 50", "guidance scale (default: 7.5)", "eta, 0 deterministic (default: 1.0)",
                  "(default: the model's: 10 ToonCrafter", "random draw (default: 123)", "frame rate (default: 8)"):
        assert shown in interpolate


def test_the_node_reference_lists_every_node_with_every_input():
    """docs/nodes.md has a row per node of node_list.json naming each of its inputs (test_comfy_nodes.py
    checks DOCUMENTED against the running ComfyUI's /object_info)."""
    import json

    from test_comfy_nodes import DOCUMENTED

    names = json.loads((REPO / "node_list.json").read_text())
    rows = {line.split("|")[1].strip(): line for line in (REPO / "docs" / "nodes.md").read_text().splitlines()
            if line.startswith("| **")}
    for node_id, display in names.items():
        row = rows.get(f"**{display}**")
        assert row is not None, f"docs/nodes.md has no row for {display}"
        for name in DOCUMENTED[node_id][0]:
            assert f"`{name}`" in row, f"docs/nodes.md: {display} does not name its input {name}"
