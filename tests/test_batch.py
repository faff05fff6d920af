"""`batch`: a shot list rendered locally (resumable, failures listed) and on a local Ray cluster."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_checkpoint
from PIL import Image

from tooncrafter_core.__main__ import main
from tooncrafter_core.commands import shots as shot_list

COMMON = {"steps": 2, "width": 64, "height": 64}


def _images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, color in enumerate([(240, 60, 60), (60, 200, 60), (60, 60, 240)]):
        im = Image.new("RGB", (80, 64), color)
        im.paste((255, 255, 255), (10 + 12 * i, 10, 30 + 12 * i, 40))
        paths[f"k{i}"] = folder / f"k{i}.png"
        im.save(paths[f"k{i}"])
    return paths


def _shots(folder: Path, with_missing: bool = True) -> Path:
    """Four shots: a pair, a 3-keyframe sequence with a prompt per segment, a loop, and one whose
    second keyframe does not exist (or a fourth good one)."""
    _images(folder / "keys")
    lines = [
        {"id": "pair", "start": "keys/k0.png", "end": "keys/k1.png", "prompt": "a ball", "seed": 5, **COMMON},
        {"id": "seq", "keyframes": ["keys/k0.png", "keys/k1.png", "keys/k2.png"], "prompts": ["one", "two"], "seed": 6,
         **COMMON},
        {"id": "loop", "keyframes": ["keys/k2.png", "keys/k0.png"], "loop": True, "seed": 7, "cfg": 5.0, **COMMON},
        {"id": "broken" if with_missing else "pair2", "start": "keys/k1.png",
         "end": "keys/missing.png" if with_missing else "keys/k2.png", "seed": 8, **COMMON},
    ]
    path = folder / "shots.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def _frames(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))])


def _interpolate_cli(ckpt: Path, keys: Path, out: Path, keyframes, seed, *extra) -> np.ndarray:
    assert main(["interpolate", "--ckpt", str(ckpt), "--keyframes", *[str(keys / k) for k in keyframes], "--seed", str(seed),
                 "--steps", "2", "--width", "64", "--height", "64", "--device", "cpu", "--out", str(out), *extra]) == 0
    return _frames(out)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def local_run(ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch")
    shots = _shots(folder)
    code = main(["batch", str(shots), "--out", str(folder / "out"), "--ckpt", str(ckpt), "--device", "cpu"])
    return folder, shots, code


def test_each_shot_equals_a_plain_interpolate_run(ckpt, local_run, tmp_path):
    folder, _, _ = local_run
    out, keys = folder / "out", folder / "keys"
    assert np.array_equal(_frames(out / "pair"), _interpolate_cli(ckpt, keys, tmp_path / "p", ["k0.png", "k1.png"], 5,
                                                                  "--prompt", "a ball"))
    assert np.array_equal(_frames(out / "seq"), _interpolate_cli(ckpt, keys, tmp_path / "s", ["k0.png", "k1.png", "k2.png"],
                                                                 6, "--prompts", "one", "two"))
    assert np.array_equal(_frames(out / "loop"), _interpolate_cli(ckpt, keys, tmp_path / "l", ["k2.png", "k0.png"], 7,
                                                                  "--loop", "--cfg", "5"))
    done = json.loads((out / "seq" / "shot.json").read_text())
    assert done["frames"] == 7 and done["size"] == [64, 64] and done["fingerprint"]["seed"] == 6
    assert (out / "seq" / "preview.gif").is_file()


def test_a_shot_with_a_missing_keyframe_fails_alone(local_run, caplog):
    folder, _, code = local_run
    out = folder / "out"
    assert code == 2  # the run reports its failures
    failed = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failed] == ["broken"] and failed[0]["line"] == 4
    assert "missing.png" in failed[0]["error"]
    assert not (out / "broken" / "shot.json").exists()
    assert all((out / s / "shot.json").is_file() for s in ("pair", "seq", "loop"))


def test_a_rerun_renders_nothing_and_a_deleted_shot_json_renders_that_shot_only(ckpt, local_run):
    folder, shots, _ = local_run
    out = folder / "out"
    stamps = {s: (out / s / "frame_000.png").stat().st_mtime_ns for s in ("pair", "seq", "loop")}
    shared = shot_list.RenderSettings(ckpt.name, "auto")
    loads = []

    def load():
        import torch

        from tooncrafter_core.weights.checkpoint import load_model

        loads.append(1)
        return load_model(ckpt, dtype=torch.float32)

    import torch

    report = shot_list.run_local(shot_list.read_shots(shots), out, shared, load, torch.device("cpu"), torch.float32)
    assert report.done == [] and report.skipped == ["pair", "seq", "loop"] and report.failed == ["broken"]
    assert loads == []  # nothing to render: the model is never loaded
    (out / "seq" / "shot.json").unlink()
    report = shot_list.run_local(shot_list.read_shots(shots), out, shared, load, torch.device("cpu"), torch.float32)
    assert report.done == ["seq"] and report.skipped == ["pair", "loop"]
    assert {s: (out / s / "frame_000.png").stat().st_mtime_ns for s in ("pair", "loop")} == {
        s: stamps[s] for s in ("pair", "loop")}
    # Changed settings make a done shot stale.
    lines = shots.read_text().splitlines()
    first = json.loads(lines[0])
    first["seed"] = 50
    changed = shots.with_name("changed.jsonl")
    changed.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    report = shot_list.run_local(shot_list.read_shots(changed), out, shared, load, torch.device("cpu"), torch.float32)
    assert report.done == ["pair"]


def test_bad_lines_are_all_reported_with_their_numbers_before_anything_runs(tmp_path):
    lines = [
        json.dumps({"id": "ok", "start": "a.png", "end": "b.png"}),
        json.dumps({"id": "one", "keyframes": ["a.png"]}),
        "{not json",
        json.dumps({"id": "ok", "start": "a.png", "end": "b.png"}),
        json.dumps({"id": "x", "start": "a.png", "end": "b.png", "steps": 0, "colour": "red"}),
        json.dumps({"id": "../up", "start": "a.png", "end": "b.png"}),
        json.dumps({"id": "p", "keyframes": ["a.png", "b.png", "c.png"], "prompts": ["1", "2", "3"]}),
    ]
    shots = tmp_path / "shots.jsonl"
    shots.write_text("\n".join(lines) + "\n")
    with pytest.raises(shot_list.BatchError) as e:
        shot_list.read_shots(shots)
    message = str(e.value)
    for fragment in ("6 bad line(s)", "line 2: needs two or more keyframes", "line 3: not valid JSON",
                     "line 4: id 'ok' is also on line 1", "line 5: unknown field(s) colour",
                     "line 6: id '../up' cannot name a folder", "line 7: got 3 prompts for 2 segments"):
        assert fragment in message
    assert main(["batch", str(shots), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_csv_shot_lists_read_like_jsonl(tmp_path):
    (tmp_path / "s.csv").write_text(
        "id,keyframes,prompt,seed,steps,loop\n"
        "a,k0.png;k1.png;k2.png,a ball,3,4,false\n"
        "b,k1.png;k0.png,,,2,yes\n"
        "c,k1.png;k0.png,,,x,\n"
    )
    with pytest.raises(shot_list.BatchError, match=r"line 4: .*steps must be int"):
        shot_list.read_shots(tmp_path / "s.csv")
    (tmp_path / "s.csv").write_text("\n".join((tmp_path / "s.csv").read_text().splitlines()[:3]) + "\n")
    a, b = shot_list.read_shots(tmp_path / "s.csv")
    assert a.keyframes == tuple(tmp_path / k for k in ("k0.png", "k1.png", "k2.png")) and a.seed == 3
    assert a.settings == {"steps": 4, "loop": False} and a.prompts == ("a ball",)
    assert b.seed == shot_list.DEFAULT_SEED and b.setting("loop") is True and b.line == 3


# ---------------------------------------------------------------------------------------------
# Ray


def test_a_local_ray_cluster_gives_the_same_frames_and_survives_a_killed_worker(ckpt, tmp_path):
    import torch

    from tooncrafter_core.commands.cluster import run_ray
    from tooncrafter_core.weights.checkpoint import load_model

    shots = shot_list.read_shots(_shots(tmp_path / "list", with_missing=False))
    shared = shot_list.RenderSettings(ckpt.name, "fp32")
    # A Ray worker with one CPU computes with one thread; the local reference does too, since the
    # order of oneDNN's reductions (and so a rare pixel's last level) depends on the thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = shot_list.run_local(shots, tmp_path / "local", shared, lambda: load_model(ckpt, dtype=torch.float32),
                                torch.device("cpu"), torch.float32)
    finally:
        torch.set_num_threads(threads)
    assert sorted(local.done) == ["loop", "pair", "pair2", "seq"]
    killed = []

    def kill_first(pid: int, shot_id: str) -> None:
        # Kill the first worker the moment its shot is handed over: the shot is in flight on it
        # (a delay could let a fast worker finish first and make the test flaky).
        if not killed:
            killed.append((pid, shot_id))
            os.kill(pid, signal.SIGKILL)

    spec = shot_list.ModelSpec(str(ckpt), str(tmp_path), "fp32")
    report = run_ray(shots, tmp_path / "ray", shared, spec, workers=2, on_dispatch=kill_first)
    assert sorted(report.done) == ["loop", "pair", "pair2", "seq"] and report.failed == []
    assert killed and report.retried == [killed[0][1]]  # the shot it was rendering was handed out again
    assert not (tmp_path / "ray" / "failed.jsonl").exists()
    for shot in report.done:
        assert np.array_equal(_frames(tmp_path / "ray" / shot), _frames(tmp_path / "local" / shot)), shot
        assert json.loads((tmp_path / "ray" / shot / "shot.json").read_text())["fingerprint"] == json.loads(
            (tmp_path / "local" / shot / "shot.json").read_text())["fingerprint"]
