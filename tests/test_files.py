"""Writes that survive kill -9 (tooncrafter_core.files) and names from outside data that cannot leave
their folder: shot ids, the Train LoRA node's lora_name (its ComfyUI side is in test_comfy_training.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tooncrafter_core import files
from tooncrafter_core.commands import shots


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/b", "a\\b", "..", ".hidden", "c:evil", "", " padded"])
def test_a_name_that_would_leave_its_folder_is_refused_in_one_line(tmp_path, name):
    with pytest.raises(ValueError) as e:
        files.child(tmp_path, name, "shot id")
    assert str(e.value).startswith(f"shot id {name!r} cannot name a folder inside {tmp_path}") and "\n" not in str(e.value)


def test_a_symbolic_link_out_of_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "s1").symlink_to(outside)
    with pytest.raises(ValueError, match=r"shot id 's1': .* is a symbolic link; writing through it would leave"):
        files.child(out, "s1", "shot id")
    assert files.child(out, "s2", "shot id") == out / "s2"


def _shot(name: str) -> shots.Shot:
    return shots.Shot(id=name, line=1, keyframes=(), prompts=("",), seed=0)


def test_a_shot_cannot_write_through_a_link_and_its_folder_appears_whole(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "s1").symlink_to(outside)
    clip = torch.rand(3, 3, 8, 8)
    shot = _shot("s1")
    with pytest.raises(ValueError, match="is a symbolic link"):
        shots.write_shot(out, shot, {}, clip, 1.0)
    assert list(outside.iterdir()) == []
    done = shots.write_shot(out, _shot("s2"), {"x": 1}, clip, 1.0)
    assert json.loads(done.read_text())["frames"] == 3 and len(list(done.parent.glob("frame_*.png"))) == 3
    # A re-render replaces the folder whole: none of the longer old clip's frames stay.
    shots.write_shot(out, _shot("s2"), {"x": 2}, clip[:2], 1.0)
    assert sorted(p.name for p in done.parent.glob("frame_*.png")) == ["frame_000.png", "frame_001.png"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_an_interrupted_atomic_write_leaves_the_old_file_and_no_visible_leftover(tmp_path):
    path = tmp_path / "model.safetensors"
    files.write_bytes(path, b"old")
    with pytest.raises(RuntimeError):
        with files.atomic_path(path) as partial:
            partial.write_bytes(b"new but half")
            raise RuntimeError("killed")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.safetensors"]
    # What kill -9 leaves (no cleanup runs) is hidden and has no model extension.
    leftover = files.partial_name(path)
    assert not leftover.name.endswith(".safetensors") and leftover.name.startswith(".")


def _gone_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftovers_of_killed_writers_are_tidied_and_those_of_running_ones_kept(tmp_path):
    gone, alive = _gone_pid(), os.getppid()
    path = tmp_path / "model.safetensors"
    files.write_bytes(path, b"old")
    stale = tmp_path / f".model.safetensors.partial-{gone}"
    other_name = tmp_path / f".lora.safetensors.partial-{gone}"
    writing = tmp_path / f".model.safetensors.partial-{alive}"
    for leftover in (stale, other_name, writing):
        leftover.write_bytes(b"half of gigabytes")
    # The next write of the same name removes the dead process's partial of that name only.
    files.write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and not stale.exists() and other_name.exists() and writing.exists()
    # A folder moved aside whose replacement never arrived (killed between the two renames) is put back.
    shot = tmp_path / "shot_a"
    aside = tmp_path / f".shot_a.old-{gone}"
    aside.mkdir()
    (aside / "frame_000.png").write_bytes(b"png")
    replaced = tmp_path / "shot_b"
    replaced.mkdir()
    (tmp_path / f".shot_b.old-{gone}").mkdir()
    assert sorted(files.clean_partials(tmp_path)) == sorted([other_name, aside, tmp_path / f".shot_b.old-{gone}"])
    assert (shot / "frame_000.png").read_bytes() == b"png"
    assert sorted(os.listdir(tmp_path)) == sorted(["model.safetensors", writing.name, "shot_a", "shot_b"])
