"""The loaded model: every component under its checkpoint name (`model.diffusion_model.`,
`first_stage_model.`, `cond_stage_model.`, `embedder.`, `image_proj_model.`) and the noise schedule."""

from __future__ import annotations

from torch import nn

from .config import ModelConfig
from .encoders import ImageEncoder, Resampler, TextEncoder
from .ops import Default
from .schedule import Schedule
from .unet import UNetModel
from .vae import AutoencoderKLDualRef


class DiffusionWrapper(nn.Module):
    """Keeps the checkpoint's `model.diffusion_model.` prefix."""

    def __init__(self, unet: UNetModel):
        super().__init__()
        self.diffusion_model = unet


class ToonCrafter(nn.Module):
    """All components under their checkpoint names. Text/vision encoders are optional (pruned files).

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
        self.first_stage_model = AutoencoderKLDualRef(config.vae, **kw)
        self.cond_stage_model = TextEncoder(config.text, **kw) if text_encoder else None
        self.embedder = ImageEncoder(config.vision, **kw) if image_encoder else None
        self.image_proj_model = Resampler(config.resampler, **kw)
        self.schedule = Schedule.from_config(config.schedule)

    @property
    def unet(self) -> UNetModel:
        return self.model.diffusion_model

    @property
    def vae(self) -> AutoencoderKLDualRef:
        return self.first_stage_model
