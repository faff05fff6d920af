"""Decoding: latents -> frames through the model's decoder (ToonCrafter's dual-reference one with the
keyframes' features and its second pass, or DynamiCrafter's plain one), retried in smaller chunks when
memory runs out.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch

from .models.config import DECODE_OVERLAP
from .models.vae import AutoencoderKL, AutoencoderKLDualRef

log = logging.getLogger(__name__)


def decode_fitting(
    vae: AutoencoderKLDualRef | AutoencoderKL,
    z: torch.Tensor,
    refs: Sequence[torch.Tensor],
    chunk: Optional[int] = None,
    overlap: int = DECODE_OVERLAP,
) -> tuple[torch.Tensor, Optional[int]]:
    """`vae.decode` of unscaled z (b z t h w), retried with half the chunk (down to one frame a call)
    while it runs out of memory -> (video (b 3 t H W), the chunk that fit; None: the whole clip)."""
    t = z.shape[2]
    while True:
        try:
            return vae.decode(z, refs, chunk, overlap), chunk
        except torch.OutOfMemoryError:
            frames = min(chunk or t, t)
            if frames <= 1:
                raise
        # Retried outside the except block, so the failed attempt's tensors (held by the
        # exception's traceback) are freed before the smaller attempt allocates.
        chunk = frames // 2
        log.warning(
            "out of memory decoding %d frames at a time: retrying with %d frames at a time (plus %d context "
            "frames on each side); set the decode chunk (ComfyUI: frames_per_chunk) to %d to start there",
            frames, chunk, overlap, chunk,
        )
        if z.device.type == "cuda":
            torch.cuda.empty_cache()  # hands the failed attempt's cached blocks back before retrying


def decode(
    vae: AutoencoderKLDualRef | AutoencoderKL,
    latents: torch.Tensor,
    refs: Sequence[torch.Tensor],
    second_decode: bool = True,
    chunk: Optional[int] = None,
    overlap: int = DECODE_OVERLAP,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled latents (b z t h w) -> (first pass, final video), each (b 3 t H W) in about [-1, 1].

    ToonCrafter decodes a second time without frames 1 and t-2 and takes the middle pair from that pass;
    `second_decode=False` skips it (final video = first pass). The plain decoder (DynamiCrafter) decodes
    once. `chunk` and `overlap`: see `AutoencoderKLDualRef.decode`. Out of memory, the decode is retried in
    smaller chunks (`decode_fitting`).
    """
    z = latents / vae.config.scale_factor
    first, chunk = decode_fitting(vae, z, refs, chunk, overlap)
    t = z.shape[2]
    if not second_decode or t < 4 or not vae.config.reference_decoder:
        return first, first
    keep = [i for i in range(t) if i not in (1, t - 2)]
    second, _ = decode_fitting(vae, z[:, :, keep], refs, chunk, overlap)
    video = first.clone()
    mid = t // 2
    video[:, :, mid - 1 : mid + 1] = second[:, :, mid - 2 : mid]
    return first, video
