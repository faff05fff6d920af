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
