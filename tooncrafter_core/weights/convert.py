"""Checkpoint conversion: precision, pruning and LoRA merging into one `.safetensors` file that
`loading.load_model` and the ComfyUI loader read back as any released layout.

`python -m tooncrafter_core convert IN OUT.safetensors --dtype fp16 [--parts unet|all]
[--prune-encoders] [--lora PATH[:S] ...]`
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from .. import files
from ..models.schedule import SCHEDULE_KEYS
from .checkpoint import (
    TEXT_PREFIX,
    UNET_PREFIX,
    VISION_PREFIX,
    check_is_tooncrafter,
    read_state_dict,
)
from .lora import LoraSpec, adaptable_shapes, load_specs, merged_weight

log = logging.getLogger(__name__)

PARTS = ("unet", "all")

# Kept in fp32 whatever --dtype says. The noise-schedule buffers hold alphas_cumprod, which is
# 0.99915 at t = 0 and falls to 0 at t = 999 (zero terminal SNR): near 1, fp16 steps by 4.9e-4
# and bf16 by 3.9e-3, so 1 - alphas_cumprod of the first steps (8.5e-4) would come back 15 % off
# in fp16 and exactly 0 in bf16, and sqrt(1 - alphas_cumprod) / its reciprocal with it. Our
# loader recomputes the schedule in float64, but the original code and other wrappers read these
# buffers from the file. They are 13 x 1000 values: fp32 costs nothing.
KEEP_FP32 = frozenset(SCHEDULE_KEYS)


@dataclass
class ConvertReport:
    tensors: int = 0
    cast: int = 0
    kept_fp32: int = 0
    pruned: int = 0
    merged: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    loras: list[str] = field(default_factory=list)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def target_dtype(key: str, tensor: torch.Tensor, dtype: torch.dtype, parts: str) -> torch.dtype:
    """The dtype `key` is written in."""
    if key in KEEP_FP32:
        return torch.float32
    if not tensor.is_floating_point() or (parts == "unet" and not key.startswith(UNET_PREFIX)):
        return tensor.dtype
    return dtype


def convert_state(
    state: dict[str, torch.Tensor],
    dtype: torch.dtype,
    parts: str = "all",
    prune_encoders: bool = False,
    loras: Sequence = (),
) -> ConvertReport:
    """Convert a checkpoint's state dict in place; `loras` are (lora.Lora, strength) pairs.

    LoRA updates are added in fp32 to the file's weights and rounded once, to the output dtype.
    """
    if parts not in PARTS:
        raise ValueError(f"parts must be one of {', '.join(PARTS)}, got {parts!r}")
    report = ConvertReport(bytes_in=sum(_nbytes(t) for t in state.values()))
    if prune_encoders:
        for key in [k for k in state if k.startswith((TEXT_PREFIX, VISION_PREFIX))]:
            del state[key]
            report.pruned += 1
    merged = {k for lora, s in loras if s != 0 for k in lora.layers}
    for key, tensor in state.items():
        out = target_dtype(key, tensor, dtype, parts)
        if key.startswith(UNET_PREFIX) and key[len(UNET_PREFIX) :] in merged:
            state[key] = merged_weight(tensor, key[len(UNET_PREFIX) :], loras, out)
            report.merged += 1
        elif tensor.dtype != out:
            state[key] = tensor.to(out)
        report.cast += tensor.dtype != out
        report.kept_fp32 += key in KEEP_FP32
    report.tensors = len(state)
    report.bytes_out = sum(_nbytes(t) for t in state.values())
    report.loras = [f"{lora.name}:{s:g}" for lora, s in loras]
    return report


def copy_companions(yaml: Path, dst: Path) -> list[Path]:
    """Copy what must sit beside the checkpoint `dst` for it to load with `yaml`'s architecture: the
    yaml under `dst`'s stem, and the OpenCLIP architecture jsons it names that sit beside it."""
    copied = []
    targets = [(yaml, dst.with_suffix(yaml.suffix))]
    for name in set(re.findall(r"^\s*arch:\s*([\w.-]+)\s*$", yaml.read_text(), flags=re.M)):
        js = yaml.parent / f"{name}.json"
        if js.is_file():
            targets.append((js, dst.parent / js.name))
    for source, target in targets:
        if target.resolve() != source.resolve():
            with files.atomic_path(target) as partial:
                shutil.copyfile(source, partial)
            copied.append(target)
    return copied


def convert(
    src: str | Path,
    dst: str | Path,
    dtype: torch.dtype,
    parts: str = "all",
    prune_encoders: bool = False,
    lora_specs: Sequence[LoraSpec] = (),
) -> ConvertReport:
    """Read `src` (any released layout), convert, and write `dst` (.safetensors) atomically, with the
    settings in its metadata; the yaml (and arch jsons) beside `src` are copied beside `dst`."""
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"the output must be a .safetensors file, got {dst.name}")
    if dst.resolve() == src.resolve():
        raise ValueError(f"the output {dst} is the input: write the conversion to another file")
    state = read_state_dict(src)
    check_is_tooncrafter(state, src.name)
    loras = []
    if lora_specs:
        unet = {k[len(UNET_PREFIX) :]: v for k, v in state.items() if k.startswith(UNET_PREFIX)}
        loras = load_specs(lora_specs, adaptable_shapes(unet))
    report = convert_state(state, dtype, parts, prune_encoders, loras)
    metadata = {
        "format": "pt",
        "tooncrafter_convert": json.dumps(
            {"source": src.name, "dtype": str(dtype).removeprefix("torch."), "parts": parts,
             "prune_encoders": prune_encoders, "loras": report.loras}
        ),
    }
    _save(state, dst, metadata)
    yaml = next((src.with_suffix(s) for s in (".yaml", ".yml") if src.with_suffix(s).is_file()), None)
    if yaml is not None:
        copy_companions(yaml, dst)
    log.info(
        "wrote %s: %d tensors (%d cast to %s, %d schedule buffers kept in fp32, %d pruned, %d merged with %s), "
        "%.2f GB -> %.2f GB",
        dst, report.tensors, report.cast, dtype, report.kept_fp32, report.pruned, report.merged,
        ", ".join(report.loras) or "no LoRA", report.bytes_in / 1e9, report.bytes_out / 1e9,
    )
    return report


def _save(state: dict[str, torch.Tensor], dst: Path, metadata: Optional[dict]) -> None:
    from safetensors.torch import save_file

    # safetensors refuses tensors that share storage, which a pickled .ckpt may hold (views, tied
    # weights): each of those is written from its own copy.
    seen, out = set(), {}
    for key, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if ptr in seen or not tensor.is_contiguous() else tensor
        seen.add(ptr)
    with files.atomic_path(dst) as partial:  # a killed conversion leaves no truncated file under dst
        save_file(out, str(partial), metadata)
