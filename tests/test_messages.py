"""The error catalogue is complete: docs/troubleshooting.md quotes the opening words of every user-facing
error message the core, the CLI and the nodes raise (found by walking their code)."""

from __future__ import annotations

import sys

from helpers import REPO

sys.path.insert(0, str(REPO / "tools"))
import list_messages  # noqa: E402

PAGE = (REPO / "docs" / "troubleshooting.md").read_text()


def test_every_user_facing_message_is_quoted_in_the_troubleshooting_page():
    found = list_messages.messages()
    assert len(found) > 150  # the walk sees the code (about 190 messages when this was written)
    missing = [f"{m.path}:{m.line} {m.opening}" for m in found if not list_messages.quoted(m.opening, PAGE)]
    assert missing == [], "add these to docs/troubleshooting.md:\n" + "\n".join(missing)


def test_the_walk_finds_a_new_message_and_its_opening_words(tmp_path):
    package = tmp_path / "tooncrafter_core"
    package.mkdir()
    (package / "new.py").write_text(
        "def check(n, name):\n"
        "    if n < 0:\n"
        "        raise InputError(f'{name} needs a positive count of frames, got {n}: give 1 or more')\n"
        "    raise ValueError('plain text message here')\n"
        "    raise KeyError('not for users')\n"
    )
    (tmp_path / "nodes").mkdir()
    found = list_messages.messages(tmp_path)
    assert [(m.error, m.opening) for m in found] == [
        ("InputError", "needs a positive count of frames, got"), ("ValueError", "plain text message here")]
    assert found[0].text == "… needs a positive count of frames, got …: give 1 or more"
    assert not list_messages.quoted(found[0].opening, PAGE)
    assert list_messages.quoted("is not a readable safetensors file", PAGE)


def test_the_readme_keeps_the_short_list_and_links_the_page():
    readme = (REPO / "README.md").read_text()
    assert "(docs/troubleshooting.md)" in readme
    for opening in ("is not a multiple of", "is not a ToonCrafter or DynamiCrafter checkpoint", "this checkpoint is a"):
        assert opening in readme and list_messages.quoted(opening, PAGE)
