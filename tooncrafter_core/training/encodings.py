"""The frozen parts of a training item, computed once and cached on disk: every frame's VAE posterior,
the prompt's text context and the image context of every frame a window can start at. A training
step then costs only the UNet's forward and backward.

The cache file of an item is keyed by the checkpoint (name, size, modification time), the settings
that change the encodings and the item's files (names, sizes, modification times); anything else is
computed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import load_file, save_file

from .. import files
from .. import frames as tc_frames
from ..conditioning import encode_prompts, image_context, join_context, negative_image_context
from ..datasets import TrainingItem, window, window_starts
from ..models.tooncrafter import ToonCrafter

log = logging.getLogger(__name__)


@dataclass
class ItemEncoding:
    """An item's frozen encodings (CPU): posterior mean/logvar (n z h w) of all n frames, the text
    context (1 77 d) and the image contexts (m L d) of the m frames a window can start at."""

    mean: torch.Tensor
    logvar: torch.Tensor
    text: torch.Tensor
    image: torch.Tensor


@dataclass(frozen=True)
class EncodingSettings:
    height: int
    width: int
    resize: str
    frames: int
    dtype: str


def checkpoint_identity(path: Path) -> dict:
    stat = Path(path).stat()
    return {"name": Path(path).name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _files_identity(item: TrainingItem) -> list:
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in item.frames]


def cache_key(ckpt: Path, settings: EncodingSettings) -> str:
    payload = json.dumps({"checkpoint": checkpoint_identity(ckpt), **settings.__dict__}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def load_frames(item: TrainingItem, settings: EncodingSettings) -> torch.Tensor:
    """The item's frames fitted to the training size, (n 3 H W) in [-1, 1]."""
    images = [tc_frames.fit(tc_frames.load_image(p), settings.height, settings.width, settings.resize) for p in item.frames]
    return tc_frames.to_model(torch.cat(images))


@torch.no_grad()
def encode_item(model: ToonCrafter, item: TrainingItem, settings: EncodingSettings, device, dtype) -> ItemEncoding:
    pixels = load_frames(item, settings).to(device, dtype)
    means, logvars = [], []
    for chunk in pixels.split(8):  # the VAE encoder at full size on a few frames at a time
        mean, logvar, _ = model.vae.encode(chunk)
        means.append(mean.float().cpu())
        logvars.append(logvar.float().cpu())
    text = encode_prompts(model.cond_stage_model, [item.prompt], device, dtype).float().cpu()
    starts = [window(item, settings.frames, s)[0][0] for s in range(window_starts(item, settings.frames))]
    _, image = image_context(model.embedder, model.image_proj_model, pixels[starts])
    return ItemEncoding(torch.cat(means), torch.cat(logvars), text, image.float().cpu())


def encode_items(
    model: ToonCrafter,
    items: Sequence[TrainingItem],
    settings: EncodingSettings,
    ckpt: Path,
    cache_dir: Optional[Path],
    device,
    dtype,
) -> list[ItemEncoding]:
    """Every item's encodings, read from `cache_dir` where they are up to date and written there
    otherwise (`cache_dir` None: no cache)."""
    folder = cache_dir / cache_key(ckpt, settings) if cache_dir is not None else None
    out, computed = [], 0
    for item in items:
        where = hashlib.sha256(str(item.frames[0].parent.resolve()).encode()).hexdigest()[:8]
        path = folder / f"{_safe(item.name)}-{where}.safetensors" if folder is not None else None
        meta = json.dumps({"files": _files_identity(item), "prompt": item.prompt})
        if path is not None and path.is_file():
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("item") == meta:
                    t = load_file(str(path))
                    out.append(ItemEncoding(t["mean"], t["logvar"], t["text"], t["image"]))
                    continue
        enc = encode_item(model, item, settings, device, dtype)
        computed += 1
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tensors = {"mean": enc.mean, "logvar": enc.logvar, "text": enc.text, "image": enc.image}
            with files.atomic_path(path) as partial:
                save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial), metadata={"item": meta})
        out.append(enc)
    log.info("encodings: %d computed, %d from the cache%s", computed, len(items) - computed,
             f" ({folder})" if folder is not None else "")
    return out


@torch.no_grad()
def unconditional_context(model: ToonCrafter, device, dtype) -> torch.Tensor:
    """The original's negative: the empty prompt and the all-zero image, (1 L d) on the CPU."""
    text = encode_prompts(model.cond_stage_model, [""], device, dtype)
    _, image = negative_image_context(model.embedder.model.visual, model.image_proj_model, model.config.vision, device, dtype)
    return join_context(text, image).float().cpu()


def clip_batch(
    encodings: Sequence[ItemEncoding],
    items: Sequence[TrainingItem],
    picks: Sequence[tuple[int, int]],
    frames: int,
    scale_factor: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training clips for (item, window start) picks -> (x0 (b z T h w), concat condition (b z T h w),
    context (b L d), mask (b T) of the frames that have a true frame), on the CPU in fp32.

    The latents are posterior samples drawn from `generator`; frames without a true frame get the
    linear blend of the nearest known ones (their noised version is all the UNet sees of them).
    """
    x0s, masks, contexts = [], [], []
    for item_index, start in picks:
        enc, item = encodings[item_index], items[item_index]
        indices, positions = window(item, frames, start)
        mean, logvar = enc.mean[indices], enc.logvar[indices]
        sample = scale_factor * (mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator))
        clip = torch.empty(frames, *sample.shape[1:])
        for (a, pa), (b, pb) in zip(zip(sample, positions), zip(sample[1:], positions[1:])):
            for p in range(pa, pb + 1):
                w = (p - pa) / max(pb - pa, 1)
                clip[p] = (1 - w) * a + w * b
        x0s.append(clip.transpose(0, 1))  # (z T h w)
        mask = torch.zeros(frames)
        mask[positions] = 1.0
        masks.append(mask)
        contexts.append(join_context(enc.text, enc.image[min(start, enc.image.shape[0] - 1)][None]))
    x0 = torch.stack(x0s)
    concat = torch.zeros_like(x0)
    concat[:, :, 0], concat[:, :, -1] = x0[:, :, 0], x0[:, :, -1]
    return x0, concat, torch.cat(contexts), torch.stack(masks)

