"""Conditioning: the prompts and the first image through the text and image encoders into the UNet's
cross-attention context (77 text tokens, then the Resampler's image tokens), and the original's
negative context (the empty prompt and the all-zero image), a constant of the weights.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import torch

from .errors import InputError
from .models.config import ModelConfig, VisionEncoderConfig
from .models.encoders import ImageEncoder, Resampler, TextEncoder, clip_pixels, zero_image
from .models.tooncrafter import ToonCrafter

log = logging.getLogger(__name__)


def encode_prompts(text_encoder: TextEncoder, prompts: Sequence[str], device, dtype) -> torch.Tensor:
    """-> (n 77 d) text context."""
    return text_encoder(prompts, device=device, dtype=dtype)


def image_context(image_encoder: ImageEncoder, resampler: Resampler, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images (b 3 H W) in [-1, 1] -> raw vision tokens (b n w), resampled context (b (t q) d)."""
    tokens = image_encoder(images)
    return tokens, resampler(tokens)


def negative_pixels(config: VisionEncoderConfig, device=None) -> torch.Tensor:
    """CLIP pixels (1 3 S S) of the original's unconditional all-zero image."""
    return clip_pixels(zero_image(1, config.image_size, device), config)


def negative_image_context(
    vision: Callable[[torch.Tensor], torch.Tensor], resampler: Resampler, config: VisionEncoderConfig, device, dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's negative image, an all-zero image, through a vision tower (CLIP pixels -> tokens)
    and the Resampler -> (raw tokens (1 n w), context (1 (t q) d)). It goes through alone, never in a batch
    with other images: a batched matmul's rounding depends on the batch, and this is a constant."""
    tokens = vision(negative_pixels(config, device).to(dtype))
    return tokens, resampler(tokens.to(device, dtype))


def join_context(text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """(b 77 d) text + (b (t q) d) image tokens -> the UNet's cross-attention context."""
    return torch.cat([text, image.to(text)], dim=1)


def blend_image_contexts(start: torch.Tensor, end: torch.Tensor, ratio: float) -> torch.Tensor:
    """The start and end keyframes' image contexts mixed: `ratio` 0 is the original's (the start image
    alone), 1 the end image's alone."""
    return start if ratio == 0 else torch.lerp(start, end.to(start), ratio)


def external_text_context(hidden: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Token features from a host's own OpenCLIP ViT-H text encoder (penultimate layer + final
    LayerNorm, e.g. ComfyUI's SD2 CLIP) -> the (b 77 d) text context; longer prompts are cut to 77."""
    width = config.unet.context_dim
    if hidden.ndim != 3 or hidden.shape[-1] != width:
        raise InputError(
            f"the CLIP text encoder gives features of shape {tuple(hidden.shape)}, ToonCrafter needs width {width}: "
            "load the OpenCLIP ViT-H-14 text encoder (CLIPLoader, type stable_diffusion, an SD 2.x CLIP file)"
        )
    n = config.unet.text_tokens
    if hidden.shape[1] < n:
        raise InputError(f"the CLIP text encoder returned {hidden.shape[1]} tokens, ToonCrafter needs {n}")
    if hidden.shape[1] > n:
        log.warning("prompt longer than %d tokens: only the first %d are used, as in the original", n, n)
    return hidden[:, :n]


def check_vision_tokens(tokens: torch.Tensor, config: ModelConfig) -> None:
    """Tokens from a host's CLIP vision model must be the ViT-H-14 ones the Resampler was trained on."""
    width, n = config.resampler.embedding_dim, config.vision.num_tokens
    if tokens.ndim != 3 or tokens.shape[-1] != width or tokens.shape[1] != n:
        raise InputError(
            f"the CLIP vision model gives tokens of shape {tuple(tokens.shape)}, ToonCrafter needs (batch, {n}, {width}): "
            "load the OpenCLIP ViT-H-14 vision model (CLIPVisionLoader, e.g. clip_vision_h.safetensors)"
        )


def contexts(
    model: ToonCrafter,
    images: torch.Tensor,
    prompts: Sequence[str],
    negative: bool,
    device,
    dtype,
    end_images: Optional[torch.Tensor] = None,
    image_ratio: float = 0.0,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The model's own encoders: (positive context, negative context or None) for the first images
    (b 3 H W) in [-1, 1]; `end_images` and `image_ratio` blend in the end keyframes' image context
    (`blend_image_contexts`). The negative is the original's (the empty prompt and the all-zero image),
    computed once per model, device and dtype (`ToonCrafter.negative_contexts`), alone: a clip's context
    has the same bits whether it came first or later."""
    encoder = model.embedder
    key = (str(torch.device(device)), dtype)
    if negative and key not in model.negative_contexts:
        text = encode_prompts(model.cond_stage_model, [""], device, dtype)
        _, image = negative_image_context(encoder.model.visual, model.image_proj_model, encoder.config, images.device, dtype)
        model.negative_contexts[key] = join_context(text, image)
    text = encode_prompts(model.cond_stage_model, list(prompts), device, dtype)
    image = model.image_proj_model(encoder.model.visual(encoder.preprocess(images).to(dtype)))
    if end_images is not None and image_ratio > 0:
        end = model.image_proj_model(encoder.model.visual(encoder.preprocess(end_images).to(dtype)))
        image = blend_image_contexts(image, end, image_ratio)
    positive = join_context(text, image)
    if not negative:
        return positive, None
    return positive, model.negative_contexts[key].expand(len(prompts), -1, -1)
