"""The original's training-time forward process and the losses the training commands use.

x_t = sqrt(ᾱ_t)·(s_t·x0) + sqrt(1 - ᾱ_t)·eps with the dynamic rescale s_t (`scale_arr`), and the
target of the model's prediction: v = sqrt(ᾱ_t)·eps - sqrt(1 - ᾱ_t)·(s_t·x0), as the original's
`q_sample` / `get_v`, or eps itself (DynamiCrafter 256). Losses are
averaged over the frames that have a true frame (`mask`), so items with fewer frames than the clip
(triplets, short clips) supervise only what they know.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..metrics import MetricUnavailable, lpips_network
from ..models.schedule import Schedule


def _at(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return table.to(like.device)[t.to(table.device)].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


@dataclass
class NoisedClip:
    """One noised batch: x_t, timesteps t (b,), the noise and the prediction's target, all (b z T h w) but t."""

    x_t: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    target: torch.Tensor


def noise_clip(schedule: Schedule, x0: torch.Tensor, generator: torch.Generator) -> NoisedClip:
    """Clean latents x0 (b z T h w, scaled by the VAE factor) -> a uniformly drawn timestep per clip and
    the noised clip, drawn from `generator` (CPU) in that order."""
    b = x0.shape[0]
    t = torch.randint(0, schedule.num_timesteps, (b,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    scaled = x0 * _scale(schedule, t, x0)
    sa, sb = _at(schedule.sqrt_alphas_cumprod, t, x0), _at(schedule.sqrt_one_minus_alphas_cumprod, t, x0)
    return NoisedClip(sa * scaled + sb * noise, t.to(x0.device), noise, schedule.target(scaled, noise, t))


def _scale(schedule: Schedule, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if schedule.scale_arr is None:
        return torch.ones((), dtype=like.dtype, device=like.device)
    return _at(schedule.scale_arr, t, like)


def x0_from_output(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The clean latent a prediction stands for, before the dynamic rescale (what the VAE decodes)."""
    return schedule.split(x_t, t, out)[1] / _scale(schedule, t, x_t)


def eps_from_output(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return schedule.split(x_t, t, out)[0]


def masked_mean(error: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `error` (b c T h w) over the frames where `mask` (b T) is set."""
    weights = mask.to(error)[:, None, :, None, None].expand_as(error)
    return (error * weights).sum() / weights.sum()


def prediction_loss(pred: torch.Tensor, noised: NoisedClip, mask: torch.Tensor) -> torch.Tensor:
    """The MSE of the prediction (v or eps) the model was trained with."""
    return masked_mean((pred.float() - noised.target.float()) ** 2, mask)


LpipsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def kdq_loss(
    schedule: Schedule,
    v_pred: torch.Tensor,
    noised: NoisedClip,
    mask: torch.Tensor,
    lpips: Optional[LpipsFn] = None,
    lpips_weight: float = 0.0,
    decode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    frames: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The LoRA fork's loss: L1 on the predicted noise, plus `lpips_weight` times LPIPS between the
    decoded x0 prediction and the true frames (b 3 T H W in [-1, 1]) on the supervised frames."""
    eps = eps_from_output(schedule, noised.x_t.float(), noised.t, v_pred.float())
    loss = masked_mean((eps - noised.noise.float()).abs(), mask)
    if lpips_weight > 0:
        video = decode(x0_from_output(schedule, noised.x_t.float(), noised.t, v_pred.float()))
        keep = mask.bool()
        pred = video.transpose(1, 2)[keep]  # (n 3 H W): the supervised frames of every clip
        true = frames.to(pred).transpose(1, 2)[keep]
        loss = loss + lpips_weight * lpips(pred, true).mean()
    return loss


def image_losses(pred: torch.Tensor, target: torch.Tensor, lpips: Optional[LpipsFn], lpips_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1, LPIPS) between decoded videos (b 3 T H W in [-1, 1]); LPIPS is 0 without its weight."""
    l1 = F.l1_loss(pred.float(), target.float())
    if lpips_weight <= 0:
        return l1, torch.zeros((), device=l1.device)
    flat = lambda v: v.transpose(1, 2).flatten(0, 1)  # noqa: E731  (b T 3 H W) frames
    return l1, lpips(flat(pred).float(), flat(target).float()).mean()


def load_lpips(device: torch.device) -> LpipsFn:
    """LPIPS-AlexNet (the `lpips` package of the eval extra), frozen; inputs in [-1, 1]."""
    try:
        return lpips_network(device)
    except MetricUnavailable as e:
        raise ValueError(f"the LPIPS loss: {e}; or set its loss weight to 0") from None
