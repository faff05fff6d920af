"""Paths and small builders shared by the core tests (no fixtures: conftest belongs to the ComfyUI harness)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference"
MANIFEST = REFERENCE / "tooncrafter_512_interp_keys.json"
TINY = REFERENCE / "tiny-4f-64x64"


def relative_error(ours, reference) -> float:
    """||ours - reference|| / ||reference||, in fp32."""
    return ((ours.float() - reference.float()).norm() / reference.float().norm()).item()


def reference_cases() -> list[Path]:
    """Every recorded case under shared/reference (held-back cases are picked up the same way)."""
    return sorted(p.parent for p in REFERENCE.glob("*/reference.json"))


def manifest() -> dict[str, tuple[tuple[int, ...], str]]:
    raw = json.loads(MANIFEST.read_text())
    return {k: (tuple(shape), dtype) for k, (shape, dtype) in raw.items()}


def tiny_checkpoint(folder: Path, stem: str = "tiny", case: Path = TINY) -> Path:
    """Copy a tiny fixture as <stem>.safetensors + <stem>.yaml + its OpenCLIP json into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(case / "model.safetensors", folder / f"{stem}.safetensors")
    shutil.copy(case / "config.yaml", folder / f"{stem}.yaml")
    for js in case.glob("*.json"):
        if js.name not in ("reference.json",):
            shutil.copy(js, folder / js.name)
    return folder / f"{stem}.safetensors"


def full_size_unet_uninitialised():
    """The released UNet architecture (1.44 B parameters) on the CPU, built on meta and given
    uninitialised fp32 storage: the caller fills it (random weights for full-size checks)."""
    from tooncrafter_core.config import ModelConfig
    from tooncrafter_core.unet import UNetModel

    with torch.device("meta"):
        unet = UNetModel(ModelConfig().unet)
    return unet.to_empty(device="cpu")
