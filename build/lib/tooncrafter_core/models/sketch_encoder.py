"""The released sketch encoder of sketch guidance: an SD 2.1-layout ControlNet.

The encoder is a 2-D copy of the UNet's encoder half and middle block, with an `input_hint_block`
that brings a 1-channel sketch per frame down to latent size. It sees the noisy latent (without
the keyframe concat), the timestep and the whole cross-attention context, frame by frame, and
returns one residual per skip connection plus one for the middle block; the UNet adds them, times
a control scale. The module tree is the released file's key layout (`sketch_encoder.ckpt`, no
prefix).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .attention import SpatialTransformer
from .ops import Default, frames_to_batch
from .unet import Downsample, ResBlock, TimestepEmbedSequential, number_spatial_transformers, timestep_embedding
from .unet_call import FrameContext, UNetCall

# The hint block's fixed widths in the released encoder (and in every SD ControlNet): three
# stride-2 convolutions take the sketch from pixel to latent resolution.
HINT_CHANNELS = (16, 16, 32, 32, 96, 96, 256)
HINT_STRIDES = (1, 1, 2, 1, 2, 1, 2, 1)
HINT_DOWNSAMPLE = 2 ** HINT_STRIDES.count(2)  # sketch pixels per latent pixel: the VAE's factor


@dataclass(frozen=True)
class SketchEncoderConfig:
    """The released encoder (configs/cldm_v21.yaml of the reference implementation) by default."""

    in_channels: int = 4
    hint_channels: int = 1
    model_channels: int = 320
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_res_blocks: int = 2
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_head_channels: int = 64
    transformer_depth: int = 1
    context_dim: int = 1024
    use_linear: bool = True

    def heads_and_dim(self, channels: int) -> tuple[int, int]:
        return channels // self.num_head_channels, self.num_head_channels


class SketchEncoder(nn.Module):
    """Noisy latent + sketch hint -> control residuals (one per UNet skip, then the middle block)."""

    def __init__(self, config: SketchEncoderConfig = SketchEncoderConfig(), dtype=None, device=None, operations=Default):
        super().__init__()
        self.config = cfg = config
        kw = dict(dtype=dtype, device=device)
        okw = dict(kw, operations=operations)
        mc, emb_dim = cfg.model_channels, cfg.model_channels * 4
        self.time_embed = nn.Sequential(operations.Linear(mc, emb_dim, **kw), nn.SiLU(), operations.Linear(emb_dim, emb_dim, **kw))

        hint: list[nn.Module] = []
        widths = (cfg.hint_channels, *HINT_CHANNELS, mc)
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            hint.append(operations.Conv2d(c_in, c_out, 3, stride=HINT_STRIDES[i], padding=1, **kw))
            if i < len(widths) - 2:
                hint.append(nn.SiLU())

        def attention(ch: int) -> SpatialTransformer:
            heads, dim_head = cfg.heads_and_dim(ch)
            return SpatialTransformer(ch, heads, dim_head, cfg.transformer_depth, cfg.context_dim, cfg.use_linear,
                                      False, False, 0, **okw)

        def zero_conv(ch: int) -> nn.Sequential:
            return nn.Sequential(operations.Conv2d(ch, ch, 1, **kw))

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(operations.Conv2d(cfg.in_channels, mc, 3, padding=1, **kw))])
        self.zero_convs = nn.ModuleList([zero_conv(mc)])
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * mc, **okw)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                self.zero_convs.append(zero_conv(ch))
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch, **okw)))
                self.zero_convs.append(zero_conv(ch))
                ds *= 2
        # Registered here, not where it is built: the released file's keys follow this order.
        self.input_hint_block = nn.Sequential(*hint)
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, emb_dim, **okw), attention(ch), ResBlock(ch, emb_dim, **okw))
        self.middle_block_out = zero_conv(ch)
        number_spatial_transformers(self.input_blocks, self.middle_block)

    def hint_features(self, hint: torch.Tensor) -> torch.Tensor:
        """Sketches (b 1 t H W) in [0, 1] -> ((b t) c h w) features at latent size. They depend on
        neither the timestep nor the context: computed once per run."""
        return self.input_hint_block(frames_to_batch(hint))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, features: torch.Tensor) -> list[torch.Tensor]:
        """x (b c t h w) noisy latent (no concat), timesteps (b,), context (b l d), features from
        `hint_features` -> residuals ((b t) c' h' w'), skip connections first, the middle block last."""
        b, _, t, _, _ = x.shape
        dtype = x.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        emb = emb.repeat_interleave(t, dim=0)
        # Every frame cross-attends to the whole context (text and all frames' image tokens) through
        # one key/value projection: the clip's context, shared by its frames.
        call = UNetCall(emb, FrameContext(context.to(dtype).contiguous(), context.new_zeros(0), t), b, t)
        h = frames_to_batch(x)
        outs = []
        for i, (block, zero) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, call.at("input", i))
            if i == 0:
                h = h + features.to(h)
            outs.append(zero(h))
        h = self.middle_block(h, call.at("middle", 0))
        outs.append(self.middle_block_out(h))
        return outs


def controls(encoder: SketchEncoder, x, timesteps, context, features, scale: float) -> Optional[list[torch.Tensor]]:
    """The encoder's residuals times `scale`; None at scale 0 (the unguided UNet, exactly)."""
    if scale == 0:
        return None
    return [r * scale for r in encoder(x, timesteps, context, features)]
