"""Frozen settings of one run: how to sample (`SamplingConfig`) and where and how to compute
(`RuntimeOptions`). Passed in explicitly; modules never read the environment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .models.config import DECODE_OVERLAP, ScheduleConfig

# DDIM visits a subset of the training timesteps, so it cannot take more steps than there are.
MAX_STEPS = ScheduleConfig.timesteps
SEEDS = 2**64  # torch generators take seeds below this; ComfyUI's seed inputs go up to SEEDS - 1


def segment_seed(seed: int, index: int) -> int:
    """The seed of segment `index` of a run seeded `seed`: seed + index, wrapping past the largest seed (a
    ComfyUI seed of 2**64 - 1 gives segment 1 seed 0 instead of an overflow)."""
    return (seed + index) % SEEDS


@dataclass(frozen=True)
class SamplingConfig:
    """Settings of one run; defaults are ToonCrafter's 512 app's."""

    steps: int = 50
    cfg_scale: float = 7.5
    eta: float = 1.0
    fs: int = 10
    guidance_rescale: float = 0.7
    timestep_spacing: str = "uniform_trailing"
    # Batch cond and uncond through the UNet together (same result, one call per step).
    cfg_batch: bool = True
    # The original decodes the latents twice and replaces the middle pair from the second pass.
    second_decode: bool = True
    # The image context from the start keyframe (0, the original's) or blended towards the end keyframe's
    # (1: the end keyframe's alone); interpolation only.
    image_context_ratio: float = 0.0

    def __post_init__(self):
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(
                f"steps must be between 1 and {MAX_STEPS} (one DDIM step per timestep of the noise schedule at "
                f"most), got {self.steps}; the original uses 50, 20-30 is often enough"
            )
        if self.timestep_spacing not in ("uniform", "uniform_trailing"):
            raise ValueError(
                f"timestep_spacing must be 'uniform' or 'uniform_trailing', got {self.timestep_spacing!r}"
            )
        if not 0.0 <= self.guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale must be in [0, 1], got {self.guidance_rescale}")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        if not 0.0 <= self.image_context_ratio <= 1.0:
            raise ValueError(
                f"the image context ratio must be between 0 (the start keyframe's, as the original) and 1 (the end "
                f"keyframe's), got {self.image_context_ratio}"
            )
        if self.fs < 1:
            raise ValueError(
                f"the frame stride (fs) must be at least 1, got {self.fs}: smaller values give larger motion; "
                "the original uses 10 (5-30 recommended)"
            )


@dataclass(frozen=True)
class RuntimeOptions:
    """Run-time choices passed in explicitly; modules never read the environment."""

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    # The VAE's compute dtype (its weights loaded in it, `weights.checkpoint.load_for`); None: `dtype`.
    vae_dtype: Optional[torch.dtype] = None
    # Frames kept per VAE decode call; None decodes the whole clip at once (exact). Smaller chunks
    # save memory; each call also decodes `decode_overlap` context frames on either side so the
    # decoder's temporal convolutions do not see a hard border next to the kept frames.
    decode_chunk: Optional[int] = None
    decode_overlap: int = DECODE_OVERLAP
    # torch.compile the UNet and the VAE decoder (`runtime.prepare`). The first call of each shape
    # compiles (minutes); later calls and steps reuse it. `compile_mode` is torch.compile's mode
    # (e.g. "max-autotune-no-cudagraphs"; None: the default), `compile_backend` its backend.
    compile: bool = False
    compile_mode: Optional[str] = None
    compile_backend: str = "inductor"
    # Convolution weights (and so activations) of the UNet and VAE in channels-last layout: faster
    # convolutions in bf16/fp16 (oneDNN and cuDNN), slower in fp32 on the CPU.
    channels_last: bool = False
