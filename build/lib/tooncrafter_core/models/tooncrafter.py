"""The loaded model of any kind of the family: every component under its checkpoint name
(`model.diffusion_model.`, `first_stage_model.`, `cond_stage_model.`, `embedder.`, `image_proj_model.`)
and the noise schedule."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .config import ModelConfig
from .encoders import ImageEncoder, Resampler, TextEncoder
from .ops import Default
from .schedule import Schedule
from .unet import UNetModel
from .vae import AutoencoderKL, AutoencoderKLDualRef


class DiffusionWrapper(nn.Module):
    """Keeps the checkpoint's `model.diffusion_model.` prefix."""

    def __init__(self, unet: UNetModel):
        super().__init__()
        self.diffusion_model = unet


class ToonCrafter(nn.Module):
    """All components under their checkpoint names (ToonCrafter's or DynamiCrafter's: `config` says which).
    Text/vision encoders are optional (pruned files).

    `unet_operations` (default: `operations`) builds the UNet alone from other layers, e.g. casting
    layers for UNet weights stored in fp8.
    """

    def __init__(
        self,
        config: ModelConfig,
        text_encoder: bool = True,
        image_encoder: bool = True,
        dtype=None,
        device=None,
        operations=Default,
        unet_operations=None,
    ):
        super().__init__()
        kw = dict(dtype=dtype, device=device, operations=operations)
        self.config = config
        self.model = DiffusionWrapper(UNetModel(config.unet, dtype=dtype, device=device, operations=unet_operations or operations))
        autoencoder = AutoencoderKLDualRef if config.vae.reference_decoder else AutoencoderKL
        self.first_stage_model = autoencoder(config.vae, **kw)
        self.cond_stage_model = TextEncoder(config.text, **kw) if text_encoder else None
        self.embedder = ImageEncoder(config.vision, **kw) if image_encoder else None
        self.image_proj_model = Resampler(config.resampler, **kw)
        self.schedule = Schedule.from_config(config.schedule)
        # The empty prompt's and the all-zero image's context per (device, dtype): a constant of the weights
        # (`conditioning.contexts` fills it; forget it after changing the encoders' weights).
        self.negative_contexts: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        # The run-time options `runtime.prepare` applied, and a UNet left unread on the meta device by
        # `weights.checkpoint.load_model(defer_unet=True)` (what to read it from).
        self.prepared: Optional[tuple] = None
        self.deferred_unet: Optional[tuple] = None

    @property
    def unet(self) -> UNetModel:
        return self.model.diffusion_model

    @property
    def vae(self) -> AutoencoderKLDualRef | AutoencoderKL:
        return self.first_stage_model
