"""What a reader finds after a writer was killed (tests/kill_harness.py runs these in forked children):
each returns a one-word state, or raises when a reader would pick up something incomplete."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from PIL import Image
from safetensors.torch import load_file

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".png", ".json", ".csv")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _visible(folder: Path) -> list[Path]:
    """Files a reader can see: not inside a hidden folder, not hidden themselves."""
    return [p for p in folder.rglob("*") if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)]


def _no_stray_model_files(folder: Path, allowed: set[Path]) -> None:
    stray = [p for p in _visible(folder) if p.suffix in MODEL_SUFFIXES and p not in allowed]
    if stray:
        raise AssertionError(f"visible leftovers a loader could pick up: {stray}")


def single_file(spec: dict) -> str:
    """convert and download: the target is absent, the old file, or the complete new one."""
    target, reference = Path(spec["target"]), Path(spec["reference"])
    if spec["stage"] == "reference":
        if spec.get("parse", True):
            load_file(str(reference))
        return "ok"
    # Companions the writer puts beside the target (a converted checkpoint's yaml and OpenCLIP json) are
    # whole copies of the reference's.
    companions = {p for p in _visible(target.parent) if p.suffix in (".yaml", ".json")}
    for companion in companions:
        if _digest(companion) != _digest(reference.parent / companion.name):
            raise AssertionError(f"{companion} is not a whole copy")
    _no_stray_model_files(target.parent, {target, *companions})
    if not target.exists():
        if spec["stage"] == "final":
            raise AssertionError("the resumed run left no file")
        return "absent"
    if _digest(target) == _digest(reference):
        return "new"
    if spec.get("old") and _digest(target) == spec["old"]:
        if spec["stage"] == "final":
            raise AssertionError("the resumed run left the old file")
        return "old"
    raise AssertionError(f"{target} is neither the old nor the complete new file ({target.stat().st_size} bytes)")


def shots(spec: dict) -> str:
    """batch: every visible shot folder is complete (shot.json and every frame it lists, readable)."""
    out, reference = Path(spec["target"]), Path(spec["reference"])
    root = reference if spec["stage"] == "reference" else out
    done = 0
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []:
        record = json.loads((folder / "shot.json").read_text())  # a visible shot folder without it is a failure
        frames = sorted(folder.glob("frame_*.png"))
        if len(frames) != record["frames"]:
            raise AssertionError(f"{folder.name}: {len(frames)} frames, shot.json says {record['frames']}")
        for frame in frames:
            with Image.open(frame) as im:
                im.load()
            if spec["stage"] != "reference" and _digest(frame) != _digest(reference / folder.name / frame.name):
                raise AssertionError(f"{frame} differs from the uninterrupted run's")
        done += 1
    if spec["stage"] == "final" and done != spec["shots"]:
        raise AssertionError(f"{done} of {spec['shots']} shots after the resumed run")
    return f"{done}-done"


def training(spec: dict) -> str:
    """train-lora: every visible checkpoint and the final adapter load whole; the resumed run ends with
    the uninterrupted run's adapter."""
    out, reference = Path(spec["target"]), Path(spec["reference"])
    root = reference if spec["stage"] == "reference" else out
    steps = sorted((root / "checkpoints").glob("step_*")) if (root / "checkpoints").is_dir() else []
    for step in steps:
        load_file(str(step / "adapter_model.safetensors"))
        json.loads((step / "adapter_config.json").read_text())
        import torch

        torch.load(step / "training_state.pt", weights_only=True)
    final = root / "adapter_model.safetensors"
    if final.exists():
        load_file(str(final))
    if spec["stage"] == "final":
        import torch

        ours, theirs = load_file(str(final)), load_file(str(reference / "adapter_model.safetensors"))
        if ours.keys() != theirs.keys() or any(not torch.allclose(ours[k], theirs[k], atol=1e-5) for k in ours):
            raise AssertionError("the resumed run's adapter differs from the uninterrupted run's")
    return f"{len(steps)}-checkpoints" + ("+adapter" if final.exists() else "")
