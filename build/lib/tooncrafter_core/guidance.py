"""Denoising: the UNet with its conditions bound (the concat channels, the context, fs, sketch
residuals), classifier-free guidance over it, and the original's DDIM through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .errors import InputError
from .models.schedule import Schedule
from .models.sketch_encoder import HINT_DOWNSAMPLE, SketchEncoder, controls
from .models.unet import UNetModel
from .models.unet_call import NO_HOOKS, ControlResiduals, UNetHooks
from .noise_levels import NoiseLevels
from .sampling import Denoiser, GuidedModel, StepCallback, ddim_plan, sample_ddim
from .settings import SamplingConfig
from .sketches import SketchGuide


def unet_output(
    unet: UNetModel,
    x: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    concat: torch.Tensor,
    fs: torch.Tensor,
    sketch: Optional[tuple[SketchEncoder, torch.Tensor, float]] = None,
) -> torch.Tensor:
    """One UNet call: noisy latent (b z t h w) + concat condition -> its output (v or eps). `sketch`:
    (encoder, hint features ((b t) c h w), scale) adds the sketch encoder's residuals."""
    control = None
    if sketch is not None:
        encoder, features, scale = sketch
        control = controls(encoder, x, t, context, features, scale)
    return unet(torch.cat([x, concat.to(x)], dim=1), t, context, fs, control)


def concat_network(
    unet: UNetModel,
    context: torch.Tensor,
    concat: torch.Tensor,
    fs: Optional[torch.Tensor],
    control: Optional[Sequence[torch.Tensor] | ControlResiduals] = None,
    hooks: UNetHooks = NO_HOOKS,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The UNet with its conditions bound: (x_t (b z t h w), t (b,)) -> its output, the concat condition
    joined to x_t in x_t's dtype."""

    def network(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(torch.cat([x_t, concat.to(x_t)], dim=1), t, context.to(x_t.dtype), fs, control, hooks)

    return network


def level_denoised(
    network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    levels: NoiseLevels,
    sigma: torch.Tensor,
    x: torch.Tensor,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """One network call for a host that samples in noise levels (`NoiseLevels`): x (b z t h w) at levels
    sigma (b,) -> D, fp32. `network(x_t, t)` sees the original's x_t in `dtype` and its timestep."""
    c = levels.coefficients(sigma)
    x_t = levels.model_input(sigma, x.float(), c).to(dtype or x.dtype)
    out = network(x_t, c.t.to(x.device, torch.float32))
    return levels.denoised(sigma, x.float(), out.float(), c)


@dataclass
class Conditioning:
    context: torch.Tensor  # (b L d): text tokens then image tokens
    uncond_context: Optional[torch.Tensor]
    concat: torch.Tensor  # (b z t h w)
    fs: torch.Tensor  # (b,) long
    sketch: Optional[SketchGuide] = None  # the same sketches steer the conditional and unconditional pass


def guided_model(unet: UNetModel, cond: Conditioning, sampling: SamplingConfig) -> GuidedModel:
    guide = cond.sketch

    def net(x, t, context, concat, fs, sketch=None):
        return unet_output(unet, x, t, context, concat, fs, None if guide is None else (guide.encoder, sketch, guide.scale))

    c = {"context": cond.context, "concat": cond.concat, "fs": cond.fs}
    if guide is not None:
        check_sketch(guide.hint, cond.concat)
        # The hint block sees neither the timestep nor the context: its features are computed once.
        hint = guide.hint.expand(cond.concat.shape[0], -1, -1, -1, -1)  # one set of sketches for every pair
        c["sketch"] = guide.encoder.hint_features(hint.to(cond.concat))
    u = None
    if cond.uncond_context is not None:
        u = {**c, "context": cond.uncond_context}
    return GuidedModel(net, c, u, sampling.cfg_scale, sampling.guidance_rescale, sampling.cfg_batch)


def check_sketch(hint: torch.Tensor, concat: torch.Tensor) -> None:
    """Sketches (b 1 t H W) must cover every frame at the latents' pixel size."""
    b, _, t, h, w = concat.shape
    if hint.ndim != 5 or hint.shape[1] != 1 or hint.shape[2] != t:
        raise InputError(
            f"sketches must be one per frame, (batch, 1, {t}, H, W); got {tuple(hint.shape)}: give {t} frames "
            "(empty ones where nothing is drawn) or say which frames the sketches are for"
        )
    size = (h * HINT_DOWNSAMPLE, w * HINT_DOWNSAMPLE)
    if tuple(hint.shape[-2:]) != size or hint.shape[0] not in (1, b):
        raise InputError(
            f"sketches of size {tuple(hint.shape[-2:])} (batch {hint.shape[0]}) do not fit the frames: they must be "
            f"{size} like the keyframes, one set for all {b} pairs or one per pair"
        )


def sample(
    unet: UNetModel,
    schedule: Schedule,
    cond: Conditioning,
    sampling: SamplingConfig,
    x_T: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    noises: Optional[Sequence[torch.Tensor]] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """DDIM from x_T (b z t h w) -> clean latents."""
    plan = ddim_plan(schedule, sampling.steps, sampling.timestep_spacing, sampling.eta)
    denoiser = Denoiser(guided_model(unet, cond, sampling), schedule)
    return sample_ddim(denoiser, x_T, plan, generator=generator, noises=noises, callback=callback)
