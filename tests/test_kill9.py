"""Nothing lost under kill -9: each writer that a later run reads from (convert, a download, batch,
train-lora) is killed at KILLS random moments of its run; after every kill a reader finds the old state
or the complete new one, never a truncated file, and a rerun (--resume where the verb has it) finishes
with what an uninterrupted run makes. tests/kill_harness.py forks the runs from one process.

KILLS is 20 (the ci profile); TOONCRAFTER_FUZZ_PROFILE=long raises it to 100.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from helpers import REPO, StandInHub, make_clips, tiny_checkpoint
from PIL import Image

from tooncrafter_core.weights import catalog

KILLS = 100 if os.environ.get("TOONCRAFTER_FUZZ_PROFILE") == "long" else 20


def _harness(workdir, writer: str, spec: dict, seed: int, env: dict | None = None) -> dict:
    (workdir / "spec.json").write_text(json.dumps({writer: spec}))
    run = subprocess.run([sys.executable, str(REPO / "tests" / "kill_harness.py"), str(workdir), writer, str(KILLS),
                          str(seed)], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "TOONCRAFTER_MODELS": str(workdir / "models"), **(env or {})})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert "error" not in result, result
    assert len(result["delays"]) == KILLS and result["resume"] == 0, result
    assert not result["final"].startswith("BAD"), result
    return result


def _cli(argv: list[str], cwd) -> dict:
    return {"kind": "cli", "argv": argv, "cwd": str(cwd)}


def test_convert_killed_at_random_moments_leaves_the_old_or_the_new_file(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "in")
    from tooncrafter_core.__main__ import main

    target = tmp_path / "out" / "converted.safetensors"
    assert main(["convert", "--dtype", "fp32", str(ckpt), str(target)]) == 0  # the old state: an fp32 conversion
    old = hashlib.sha256(target.read_bytes()).hexdigest()
    reference = tmp_path / "ref" / "converted.safetensors"
    spec = {"full": _cli(["convert", "--dtype", "fp16", str(ckpt), str(reference)], tmp_path),
            "resume": _cli(["convert", "--dtype", "fp16", str(ckpt), str(target)], tmp_path),
            "check": "single_file", "target": str(target), "reference": str(reference), "old": old}
    result = _harness(tmp_path, "convert", spec, seed=1)
    assert {"old", "new"} <= set(result["states"]), result  # kills landed before and after the rename


def test_a_download_killed_at_random_moments_resumes_and_never_shows_a_partial_file(tmp_path):
    hub = StandInHub(seconds_per_mib=0.1)
    try:
        entry = catalog.find("tooncrafter_512_interp.safetensors")
        hub.serve(entry, os.urandom(8 << 20))
        target = tmp_path / "models" / entry.name
        reference = tmp_path / "ref" / entry.name
        spec = {"full": {"kind": "download", "entry": entry.name, "folder": str(reference.parent), "cwd": str(tmp_path)},
                "resume": {"kind": "download", "entry": entry.name, "folder": str(target.parent), "cwd": str(tmp_path)},
                "check": "single_file", "target": str(target), "reference": str(reference), "parse": False,
                "restart_after_new": str(target)}
        result = _harness(tmp_path, "download", spec, seed=2,
                          env={"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf")})
    finally:
        hub.server.shutdown()
    assert "absent" in result["states"], result


def test_batch_killed_at_random_moments_keeps_only_whole_shots_and_resumes(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    for name, color in (("a.png", (200, 40, 40)), ("b.png", (40, 40, 200)), ("c.png", (40, 180, 40))):
        Image.new("RGB", (64, 64), color).save(tmp_path / name)
    shots = [{"id": f"s{i}", "keyframes": pair, "steps": 1, "width": 64, "height": 64}
             for i, pair in enumerate((["a.png", "b.png"],))]
    (tmp_path / "shots.jsonl").write_text("".join(json.dumps(s) + "\n" for s in shots))
    common = ["batch", str(tmp_path / "shots.jsonl"), "--ckpt", str(ckpt), "--device", "cpu"]
    spec = {"full": _cli([*common, "--out", str(tmp_path / "ref")], tmp_path),
            "resume": _cli([*common, "--out", str(tmp_path / "out")], tmp_path),
            "check": "shots", "target": str(tmp_path / "out"), "reference": str(tmp_path / "ref"), "shots": len(shots),
            "imports": ["open_clip", "torch._dynamo"]}
    result = _harness(tmp_path, "batch", spec, seed=3)
    assert {"0-done", "1-done"} <= set(result["states"]), result  # kills landed before and after the shot was written


def test_train_lora_killed_at_random_moments_resumes_from_a_whole_checkpoint(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    data = make_clips(tmp_path / "clips", clips=2)
    common = ["train-lora", "--ckpt", str(ckpt), "--data", str(data), "--steps", "2", "--save-every", "1",
              "--rank", "2", "--alpha", "2", "--height", "64", "--width", "64", "--device", "cpu", "--sample-steps", "1"]
    spec = {"full": _cli([*common, "--out", str(tmp_path / "ref")], tmp_path),
            "resume": {**_cli([*common, "--out", str(tmp_path / "out")], tmp_path),
                       "resume_when": str(tmp_path / "out" / "checkpoints")},
            "check": "training", "target": str(tmp_path / "out"), "reference": str(tmp_path / "ref"),
            "imports": ["open_clip", "peft", "torch._dynamo"]}
    result = _harness(tmp_path, "train", spec, seed=4)
    assert len(set(result["states"])) >= 2, result
