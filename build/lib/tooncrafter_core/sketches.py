"""Sketch guidance at run time: drawn sketches -> per-frame hints for the sketch encoder, and the
guide that sampling carries (`models.sketch_encoder` is the network, `weights.sketch_encoder` its file).

A frame without a sketch gets an all-zero hint that still runs through the encoder (so the encoder
still steers that frame), as in the reference implementation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from einops import rearrange

from . import frames as tc_frames
from .models.sketch_encoder import SketchEncoder

DEFAULT_SCALE = 0.6  # the reference app's and both ComfyUI packs' default
# ITU-R BT.601 luma, as OpenCV's BGR2GRAY in the reference preprocessing.
LUMA = (0.299, 0.587, 0.114)


@dataclass
class SketchGuide:
    """What sampling needs for sketch guidance: the encoder, the sketches (b 1 t H W) and the scale."""

    encoder: SketchEncoder
    hint: torch.Tensor
    scale: float = DEFAULT_SCALE



# ---------------------------------------------------------------------------------------------
# Sketch images


def sketch_hint(images: torch.Tensor, height: int, width: int, resize: str = "crop") -> torch.Tensor:
    """Drawn sketches (t 3 H' W') in [0, 1], dark lines on light paper -> hints (1 1 t height width):
    luma, inverted (lines 1, paper 0, as the encoder was trained), fitted like the keyframes."""
    fitted = tc_frames.fit(luma(images), height, width, resize)  # (t 1 h w)
    return rearrange(1.0 - fitted, "t c h w -> 1 c t h w")


def luma(images: torch.Tensor) -> torch.Tensor:
    """RGB images (t 3 H W) -> their luma (t 1 H W)."""
    weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device)
    return torch.tensordot(weights, images[:, :3], dims=([0], [1]))[:, None]


def sketch_pixels(images: torch.Tensor) -> torch.Tensor:
    """RGB sketches (t 3 H W) in [0, 1] already at the hint's size -> the encoder's input (t 1 H W)."""
    return 1.0 - luma(images)


def place_sketches(hints: torch.Tensor, indices: Optional[Sequence[int]], frames: int) -> torch.Tensor:
    """Hints (1 1 k H W) of drawn frames -> (1 1 frames H W): frame `indices[i]` gets hint i, every
    other frame an empty (all-zero) sketch. `indices` None: the k hints are all `frames` frames."""
    k = hints.shape[2]
    if indices is None:
        if k != frames:
            raise ValueError(
                f"{k} sketches for {frames} frames: give one per frame (blank paper for frames without one), "
                "or say which frames the sketches are for"
            )
        return hints
    indices = list(indices)
    if len(indices) != k:
        raise ValueError(f"{k} sketches but {len(indices)} frame numbers ({indices}): give one frame number per sketch")
    bad = [i for i in indices if not 0 <= i < frames]
    if bad or len(set(indices)) != k:
        raise ValueError(f"sketch frame numbers must be distinct and in 0..{frames - 1}, got {indices}")
    out = hints.new_zeros(hints.shape[0], hints.shape[1], frames, *hints.shape[3:])
    out[:, :, indices] = hints
    return out


def parse_frame_indices(text: str) -> Optional[list[int]]:
    """'0, 5, 10' -> [0, 5, 10]; '' -> None."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    if not parts:
        return None
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"frame numbers must be whole numbers separated by commas, got {text!r}") from None


def sketch_files(paths: Sequence[Path]) -> tuple[list[Path], list[int]]:
    """Sketch files (folders expanded to their images) and the frame each is for, by the number in its name."""
    return tc_frames.numbered_files(paths, "sketch")
