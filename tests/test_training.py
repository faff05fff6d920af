"""train-lora and distill on the tiny fixture (CPU): the loss goes down, only the adapter changes, the
results load, a resumed run is bit for bit the uninterrupted one, bad data is named first, Ctrl-C saves."""

from __future__ import annotations

import csv
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, make_clips, tiny_checkpoint
from PIL import Image
from safetensors.torch import load_file

from tooncrafter_core.__main__ import main
from tooncrafter_core.datasets import find_training_items
from tooncrafter_core.training import loop
from tooncrafter_core.training.adapters import LoraSettings
from tooncrafter_core.training.encodings import EncodingSettings, encode_items
from tooncrafter_core.training.lora import LoraTask, StepSettings
from tooncrafter_core.weights.checkpoint import load_model

SIZE = ["--height", "64", "--width", "64"]
FAST = ["--batch", "4", "--lr", "1e-2", "--rank", "4", "--alpha", "4", "--sample-steps", "2", *SIZE]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("training")
    ckpt = tiny_checkpoint(root / "ckpt")
    student = (root / "ckpt" / "tiny.yaml").read_text().replace("        - 1\n        - 2\n        dropout", "        - 1\n        - 1\n        dropout")
    assert student != (root / "ckpt" / "tiny.yaml").read_text()
    (root / "ckpt" / "student.yaml").write_text(student)
    return {"ckpt": ckpt, "data": make_clips(root / "data"), "val": make_clips(root / "val", clips=1),
            "student": root / "ckpt" / "student.yaml", "root": root}


def _losses(out: Path, column: str = "loss") -> list[float]:
    with open(out / "train_log.csv", newline="") as f:
        return [float(row[column]) for row in csv.DictReader(f) if row[column]]


def _frames(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))]).astype(np.int16)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "run"
    code = main(["train-lora", "--data", str(data["data"]), "--val", str(data["val"]), "--ckpt", str(data["ckpt"]),
                 "--out", str(out), "--steps", "40", "--save-every", "20", "--val-every", "20", *FAST])
    assert code == 0
    return out


def test_forty_steps_on_four_clips_lower_the_training_loss(trained):
    losses = _losses(trained)
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    for name in ("adapter_model.safetensors", "adapter_config.json", "lora_kohya.safetensors", "loss.png", "run.json",
                 "samples/step_000020.gif", "samples/step_000040.gif", "checkpoints/step_000020/training_state.pt"):
        assert (trained / name).is_file(), name
    with open(trained / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["step"] == "0" and rows[0]["val_loss"]  # the validation loss before training
    assert rows[20]["val_loss"] and rows[40]["val_loss"] and not rows[10]["val_loss"]


def test_the_saved_adapter_changes_the_frames_and_strength_zero_gives_the_base_frames(data, trained, tmp_path):
    def frames(*lora: str) -> np.ndarray:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        args = ["interpolate", "--ckpt", str(data["ckpt"]), "--start", str(data["data"] / "clip_00" / "000.png"),
                "--end", str(data["data"] / "clip_00" / "005.png"), "--steps", "3", *SIZE, "--out", str(out)]
        for spec in lora:
            args += ["--lora", spec]
        assert main(args) == 0
        return _frames(out)

    base = frames()
    adapter = trained / "adapter_model.safetensors"
    assert np.abs(frames(f"{adapter}:1") - base).max() > 2
    assert np.array_equal(frames(f"{adapter}:0"), base)
    assert np.abs(frames(f"{trained / 'lora_kohya.safetensors'}:1") - frames(f"{adapter}:1")).max() <= 1


def test_training_changes_only_the_lora_parameters(data, tmp_path):
    model = load_model(data["ckpt"], dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    items = find_training_items(data["data"])
    encoding = EncodingSettings(64, 64, "crop", model.config.frames, "fp32")
    encodings = encode_items(model, items, encoding, data["ckpt"], None, "cpu", torch.float32)
    task = LoraTask(model, items, encodings, ([], []), encoding, LoraSettings(4, 4.0, 0.1), StepSettings(batch=2), None,
                    "cpu", torch.float32)
    loop.run(task, loop.LoopSettings(steps=3, lr=1e-2), tmp_path / "run", {"test": 1})
    lora = {name for name, p in model.named_parameters() if ".lora_" in name}
    assert lora and all(p.grad is not None for name, p in model.named_parameters() if name in lora)
    assert all(p.grad is None for name, p in model.named_parameters() if name not in lora)
    after = model.state_dict()
    base = {k.replace(".base_layer.", "."): v for k, v in after.items() if ".lora_" not in k}
    assert set(base) == set(before)
    assert all(torch.equal(base[k], before[k]) for k in before), "a base weight changed"


def test_a_run_stopped_at_step_20_and_resumed_ends_bit_for_bit_as_the_uninterrupted_one(data, trained, tmp_path):
    out = tmp_path / "resumed"
    common = ["train-lora", "--data", str(data["data"]), "--val", str(data["val"]), "--ckpt", str(data["ckpt"]),
              "--out", str(out), "--save-every", "20", "--val-every", "20", *FAST]
    assert main([*common, "--steps", "20"]) == 0
    assert main([*common, "--steps", "40", "--resume"]) == 0
    ours, theirs = load_file(str(out / "adapter_model.safetensors")), load_file(str(trained / "adapter_model.safetensors"))
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert _losses(out) == _losses(trained)


def test_resume_refuses_other_settings_and_a_second_run_into_the_same_folder(data, trained, caplog):
    args = ["train-lora", "--data", str(data["data"]), "--ckpt", str(data["ckpt"]), "--out", str(trained), "--steps", "41"]
    with caplog.at_level(logging.ERROR):
        assert main([*args, *FAST]) == 2
        assert "already holds a training run: use --resume" in caplog.text
        caplog.clear()
        assert main([*args, *FAST[:-4], "--rank", "8", *SIZE, "--resume"]) == 2
    assert "other settings than the run in the folder" in caplog.text and "lora" in caplog.text


def test_distill_lowers_its_loss_and_saves_a_smaller_student_the_cli_runs(data, tmp_path, caplog):
    out = tmp_path / "distill"
    with caplog.at_level(logging.INFO):
        code = main(["distill", "--teacher", str(data["ckpt"]), "--student-config", str(data["student"]),
                     "--data", str(data["data"]), "--val", str(data["data"]), "--out", str(out), "--steps", "40",
                     "--lr", "3e-3", "--batch", "2", "--w-lpips", "0", "--sample-steps", "2", *SIZE])
    assert code == 0
    # The training loss swings with each step's timestep; the validation loss (fixed draws) shows the trend.
    before, after = _losses(out, "val_loss")[0], _losses(out, "val_loss")[-1]
    assert after < 0.85 * before, (before, after)
    student = load_file(str(out / "student.safetensors"))
    teacher = load_file(str(data["ckpt"]))
    count = lambda state: sum(v.numel() for k, v in state.items() if k.startswith("model.diffusion_model."))  # noqa: E731
    assert count(student) < 0.6 * count(teacher), (count(student), count(teacher))
    assert (out / "student.yaml").is_file()
    assert main(["interpolate", "--ckpt", str(out / "student.safetensors"), "--start",
                 str(data["data"] / "clip_00" / "000.png"), "--end", str(data["data"] / "clip_00" / "005.png"),
                 "--steps", "2", *SIZE, "--out", str(tmp_path / "frames")]) == 0
    assert len(list((tmp_path / "frames").glob("frame_*.png"))) == 4


def test_bad_data_is_named_before_anything_loads(data, tmp_path, caplog):
    bad = tmp_path / "bad"
    make_clips(bad, clips=1)
    (bad / "broken").mkdir()
    (bad / "broken" / "000.png").write_bytes(b"\x89PNG not really")
    (bad / "broken" / "001.png").write_bytes((data["data"] / "clip_00" / "001.png").read_bytes())
    (bad / "triplet").mkdir()
    for stem in ("frame1", "frame3"):
        (bad / "triplet" / f"{stem}.png").write_bytes((data["data"] / "clip_00" / "000.png").read_bytes())
    (bad / "sizes").mkdir()
    Image.new("RGB", (64, 64)).save(bad / "sizes" / "a.png")
    Image.new("RGB", (48, 64)).save(bad / "sizes" / "b.png")
    (bad / "empty").mkdir()
    with caplog.at_level(logging.INFO):
        code = main(["train-lora", "--data", str(bad), "--ckpt", str(data["ckpt"]), "--out", str(tmp_path / "out")])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert code == 2 and len(errors) == 1, errors
    message = errors[0]
    assert "4 problem(s)" in message
    assert "broken/000.png: not a readable image" in message
    assert "triplet: a triplet folder without frame2" in message
    assert "sizes: frames of different sizes (a.png 64x64, b.png 48x64)" in message
    assert "empty: no images" in message
    assert not any("loaded" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "out").exists()


def test_ctrl_c_saves_a_checkpoint_and_exits_130(data, tmp_path):
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tooncrafter_core", "train-lora", "--data", str(data["data"]), "--ckpt", str(data["ckpt"]),
         "--out", str(out), "--steps", "100000", *FAST],
        cwd=REPO, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 300
    seen = ""
    while "3/100000" not in seen:  # a few steps done
        assert proc.poll() is None and time.monotonic() < deadline, seen[-2000:]
        seen += proc.stderr.read(64)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 130, (seen + rest)[-2000:]
    assert "Traceback" not in seen + rest
    saved = loop.checkpoints(out)
    assert len(saved) == 1 and int(saved[0].name.split("_")[1]) >= 3
    assert (saved[0] / "adapter_model.safetensors").is_file() and (saved[0] / "training_state.pt").is_file()
