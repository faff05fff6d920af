"""The keyframes' latents: the VAE encode of the keyframes (the start and end keyframe of an
interpolation, the one image of image-to-video), the posterior sample of the clip they stand for, the
UNet's concat condition built from it, and the order of a run's random draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .errors import InputError
from .models.config import IMAGE_TO_VIDEO, INTERPOLATION, ModelConfig, UNetConfig
from .models.vae import AutoencoderKL, AutoencoderKLDualRef
from .sampling import draw_normal


@dataclass
class KeyframeEncoding:
    mean: torch.Tensor  # (b k z h w): k = 2 (start, end) for an interpolation, 1 for image-to-video
    logvar: torch.Tensor  # (b k z h w), clamped as the original
    refs: list[torch.Tensor]  # (b c k H W) per decoder level, then conv_in's features; [] without a reference decoder

    @property
    def task(self) -> str:
        """What the concat condition built from these keyframes is: an interpolation (two) or image-to-video (one)."""
        return INTERPOLATION if self.mean.shape[1] == 2 else IMAGE_TO_VIDEO


def encode_keyframes(vae: AutoencoderKLDualRef | AutoencoderKL, *images: torch.Tensor) -> KeyframeEncoding:
    """Keyframes (b 3 H W) in [-1, 1]: start and end, or one image. Only the keyframes are encoded: the
    encoder works per frame, so this equals the original's encoding of the clip they are repeated into.
    The decoder's reference features are kept only for a decoder that reads them."""
    b = images[0].shape[0]
    mean, logvar, hidden = vae.encode(torch.cat(images))
    split = lambda t: torch.stack(t.split(b), dim=1)  # noqa: E731  ((k b) ...) -> (b k ...)
    refs = [split(h).transpose(1, 2) for h in hidden] if vae.config.reference_decoder else []
    return KeyframeEncoding(split(mean), split(logvar), refs)


def clip_latents(enc: KeyframeEncoding, frames: int, scale_factor: float, noise: torch.Tensor) -> torch.Tensor:
    """Posterior sample of the clip the keyframes are repeated into ([start x T/2, end x T/2], or the one
    image T times): noise (b z t h w) -> z (b z t h w), scaled."""
    if enc.mean.shape[1] == 2:
        which = (torch.arange(frames, device=noise.device) >= frames // 2).long()  # 0 start, 1 end
    else:
        which = torch.zeros(frames, dtype=torch.long, device=noise.device)
    mean = enc.mean[:, which].transpose(1, 2)  # (b z t h w)
    std = torch.exp(0.5 * enc.logvar[:, which].transpose(1, 2))
    return scale_factor * (mean + std * noise.to(mean))


def concat_condition(z: torch.Tensor, task: str = INTERPOLATION) -> torch.Tensor:
    """The UNet's extra input channels from the clip's latents z (b z t h w): zeros but the first and last
    frame's latents (interpolation), or the first frame's latent on every frame (image-to-video)."""
    if task == IMAGE_TO_VIDEO:
        return z[:, :, :1].expand_as(z).clone()
    c = torch.zeros_like(z)
    c[:, :, 0] = z[:, :, 0]
    c[:, :, -1] = z[:, :, -1]
    return c


def keyframe_concat(enc: KeyframeEncoding, frames: int, scale_factor: float, noise: torch.Tensor) -> torch.Tensor:
    """The UNet's extra input channels (b z t h w) fp32 for posterior noise (b z t h w)."""
    z = clip_latents(enc, frames, scale_factor, noise.to(enc.mean.device))
    return concat_condition(z, enc.task).float()


def initial_latents(
    enc: KeyframeEncoding, frames: int, config: ModelConfig, generator: Optional[torch.Generator], device
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (concat condition, x_T), both (b z t h w) fp32. The random draws come in a fixed order, x_T
    first and then the keyframes' posterior noise, so every host reproduces a seed exactly: a host that
    draws its initial noise from the seed itself (ComfyUI's samplers) takes the posterior noise from
    `seeded_generator(seed, skip=...)` after it."""
    if frames < 2:
        raise InputError(f"frames must be at least 2, got {frames}")
    b, _, _, h, w = enc.mean.shape
    x_shape, noise_shape = initial_draws((b, config.unet.out_channels, frames, h, w), config.unet)
    x_T = draw_normal(x_shape, generator, device)
    vae_noise = draw_normal(noise_shape, generator, device)
    return keyframe_concat(enc, frames, config.vae.scale_factor, vae_noise), x_T


def initial_draws(latent_shape: Sequence[int], unet: UNetConfig) -> list[tuple[int, ...]]:
    """The shapes a run draws before sampling, in order, for latents (b z t h w): x_T, then the keyframes'
    posterior noise (the UNet's concat channels). A sampler that draws per-step noise draws it after these."""
    b, _, t, h, w = latent_shape
    return [(b, unet.out_channels, t, h, w), (b, unet.in_channels - unet.out_channels, t, h, w)]


def seeded_concat(enc: KeyframeEncoding, frames: int, scale_factor: float, seed: int, noise_shape: Sequence[int]) -> torch.Tensor:
    """The concat condition `interpolate` / `animate` make for `seed`, for a host that drew x_T
    (`noise_shape`) from the seed itself and needs the posterior noise after it."""
    b, _, zc, h, w = enc.mean.shape
    generator = seeded_generator(seed, skip=[noise_shape])
    return keyframe_concat(enc, frames, scale_factor, draw_normal((b, zc, frames, h, w), generator))


def seeded_generator(seed: int, skip: Sequence[Sequence[int]] = ()) -> torch.Generator:
    """A CPU generator seeded `seed` that has already drawn normal tensors of the shapes in `skip`:
    the draws a run makes before the one a host needs next."""
    generator = torch.Generator("cpu").manual_seed(seed)
    for shape in skip:
        draw_normal(shape, generator)
    return generator
