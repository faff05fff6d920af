"""The ToonCrafter 3-D UNet: 2-D ResBlocks with temporal convolutions, spatial transformers with
text + per-frame image cross-attention, temporal self-attention, and an `fs` (frame stride) embedding.

Frames are folded into the batch, `(b t) c h w`, everywhere except inside the temporal layers.
The module tree is the checkpoint layout under `model.diffusion_model.`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import SpatialTransformer, TemporalTransformer
from .config import UNetConfig
from .ops import Default, batch_to_frames, frames_to_batch, norm_silu
from .unet_call import NO_HOOKS, ControlResiduals, FrameContext, UNetCall, UNetHooks


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding (cos half first), (n,) -> (n, dim), fp32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TemporalConvBlock(nn.Module):
    """Four (3,1,1) convolutions along time with a residual; Sequential slots match the checkpoint."""

    def __init__(self, channels: int, dtype=None, device=None, operations=Default):
        super().__init__()
        kw = dict(dtype=dtype, device=device)

        def stage(with_dropout_slot: bool) -> nn.Sequential:
            layers = [operations.GroupNorm(32, channels, **kw), nn.SiLU()]
            if with_dropout_slot:
                layers.append(nn.Identity())
            layers.append(operations.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0), **kw))
            return nn.Sequential(*layers)

        self.conv1 = stage(False)
        self.conv2 = stage(True)
        self.conv3 = stage(True)
        self.conv4 = stage(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (b c t h w)."""
        h = x
        for stage in (self.conv1, self.conv2, self.conv3, self.conv4):
            h = stage[-1](norm_silu(stage[0], h))
        return x + h


class ResBlock(nn.Module):
    """Timestep-conditioned residual block; optional temporal convolution after it."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: Optional[int] = None,
        temporal_conv: bool = False,
        dtype=None,
        device=None,
        operations=Default,
    ):
        super().__init__()
        out_channels = out_channels or channels
        kw = dict(dtype=dtype, device=device)
        self.in_layers = nn.Sequential(
            operations.GroupNorm(32, channels, **kw),
            nn.SiLU(),
            operations.Conv2d(channels, out_channels, 3, padding=1, **kw),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), operations.Linear(emb_channels, out_channels, **kw))
        self.out_layers = nn.Sequential(
            operations.GroupNorm(32, out_channels, **kw),
            nn.SiLU(),
            nn.Identity(),  # dropout slot of the original
            operations.Conv2d(out_channels, out_channels, 3, padding=1, **kw),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = operations.Conv2d(channels, out_channels, 1, **kw)
        if temporal_conv:
            # "temopral" is the original spelling; the checkpoint keys depend on it.
            self.temopral_conv = TemporalConvBlock(out_channels, operations=operations, **kw)
        self.temporal_conv = temporal_conv

    def forward(self, x: torch.Tensor, emb: torch.Tensor, batch: int) -> torch.Tensor:
        """x ((b t) c h w), emb ((b t) e)."""
        h = self.in_layers[2](norm_silu(self.in_layers[0], x))
        h = h + self.emb_layers(emb).to(h.dtype)[..., None, None]
        h = self.out_layers[3](norm_silu(self.out_layers[0], h))
        h = self.skip_connection(x) + h
        if self.temporal_conv:
            h = frames_to_batch(self.temopral_conv(batch_to_frames(h, batch)))
        return h


class Downsample(nn.Module):
    def __init__(self, channels: int, dtype=None, device=None, operations=Default):
        super().__init__()
        self.op = operations.Conv2d(channels, channels, 3, stride=2, padding=1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, dtype=None, device=None, operations=Default):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, padding=1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Runs its children, giving each what it takes from the call (emb, context and hooks, or frames unfolded)."""

    def forward(self, x: torch.Tensor, call: UNetCall) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, call.emb, call.batch)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, call)
            elif isinstance(layer, TemporalTransformer):
                x = frames_to_batch(layer(batch_to_frames(x, call.batch)))
            else:
                x = layer(x)
        return x


def number_spatial_transformers(*blocks: nn.Module) -> None:
    """Give each spatial transformer its place in forward order (ComfyUI's transformer_index)."""
    spatial = [m for block in blocks for m in block.modules() if isinstance(m, SpatialTransformer)]
    for i, module in enumerate(spatial):
        module.transformer_index = i


def _add_residual(h: torch.Tensor, residual: Optional[torch.Tensor], where: str) -> torch.Tensor:
    if residual is None:
        return h
    if residual.shape != h.shape:
        raise ValueError(
            f"a control residual of shape {tuple(residual.shape)} for {where}, whose features are {tuple(h.shape)}: "
            "the control network was made for another model"
        )
    return h + residual.to(h)


class UNetModel(nn.Module):
    def __init__(self, config: UNetConfig, dtype=None, device=None, operations=Default):
        super().__init__()
        self.config = cfg = config
        kw = dict(dtype=dtype, device=device, operations=operations)
        emb_dim = cfg.model_channels * 4
        mc = cfg.model_channels

        self.time_embed = nn.Sequential(
            operations.Linear(mc, emb_dim, dtype=dtype, device=device),
            nn.SiLU(),
            operations.Linear(emb_dim, emb_dim, dtype=dtype, device=device),
        )
        if cfg.fs_condition:
            self.fps_embedding = nn.Sequential(
                operations.Linear(mc, emb_dim, dtype=dtype, device=device),
                nn.SiLU(),
                operations.Linear(emb_dim, emb_dim, dtype=dtype, device=device),
            )

        def attention_layers(ch: int) -> list[nn.Module]:
            heads, dim_head = cfg.heads_and_dim(ch)
            layers = [
                SpatialTransformer(
                    ch,
                    heads,
                    dim_head,
                    cfg.transformer_depth,
                    cfg.context_dim,
                    cfg.use_linear,
                    cfg.image_cross_attention,
                    cfg.image_cross_attention_scale_learnable,
                    cfg.text_tokens,
                    **kw,
                )
            ]
            if cfg.temporal_attention:
                layers.append(TemporalTransformer(ch, heads, dim_head, cfg.transformer_depth, cfg.use_linear, **kw))
            return layers

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(operations.Conv2d(cfg.in_channels, mc, 3, padding=1, dtype=dtype, device=device))]
        )
        if cfg.addition_attention:
            # The original builds this one with 1x1 Conv1d projections (use_linear left at False).
            self.init_attn = TimestepEmbedSequential(
                TemporalTransformer(mc, cfg.init_attn_heads, cfg.num_head_channels, cfg.transformer_depth, False, **kw)
            )
        skip_channels = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * mc, cfg.temporal_conv, **kw)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers += attention_layers(ch)
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch, **kw)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_dim, temporal_conv=cfg.temporal_conv, **kw),
            *attention_layers(ch),
            ResBlock(ch, emb_dim, temporal_conv=cfg.temporal_conv, **kw),
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mult * mc, cfg.temporal_conv, **kw)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers += attention_layers(ch)
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch, **kw))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            operations.GroupNorm(32, ch, dtype=dtype, device=device),
            nn.SiLU(),
            operations.Conv2d(mc, cfg.out_channels, 3, padding=1, dtype=dtype, device=device),
        )
        number_spatial_transformers(self.input_blocks, self.middle_block, self.output_blocks)

    # Training sets this: each block's activations are recomputed in the backward pass instead of kept.
    gradient_checkpointing = False

    @property
    def in_channels(self) -> int:
        """Input channels, the concat condition's included (read by hosts' guidance functions)."""
        return self.config.in_channels

    def _block(self, block: nn.Module, h: torch.Tensor, call: UNetCall) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, h, call, use_reentrant=False)
        return block(h, call)

    def frame_context(self, context: torch.Tensor, frames: int) -> FrameContext:
        """(b l c) -> text tokens (b 77 c) and image tokens ((b t) q c) per frame.

        A context laid out as text + `image_tokens_per_frame` tokens per frame is split per frame;
        any other context is shared by all frames, as in the original.
        """
        cfg = self.config
        text, image = context[:, : cfg.text_tokens].contiguous(), context[:, cfg.text_tokens :]
        if context.shape[1] == cfg.text_tokens + frames * cfg.image_tokens_per_frame:
            image = image.reshape(image.shape[0] * frames, -1, image.shape[-1])  # b (t l) c -> (b t) l c
        return FrameContext(text, image.contiguous(), frames)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        fs: Optional[torch.Tensor] = None,
        control: Union[None, Sequence[torch.Tensor], ControlResiduals] = None,
        hooks: UNetHooks = NO_HOOKS,
    ) -> torch.Tensor:
        """x (b c t h w) noisy latent + concat condition, timesteps (b,), context (b l c) -> v (b c' t h w).

        `control`: residuals ((b t) c h w) added to each skip connection and, the last one, to the
        middle block's output (sketch guidance, `sketch.SketchEncoder`), or `ControlResiduals`.
        `hooks`: a host's patch points (`unet_call`).
        """
        b, _, t, _, _ = x.shape
        dtype = x.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        if self.config.fs_condition:
            if fs is None:
                fs = torch.full((b,), self.config.default_fs, dtype=torch.long, device=x.device)
            emb = emb + self.fps_embedding(timestep_embedding(fs, self.config.model_channels).to(dtype))
        emb = emb.repeat_interleave(t, dim=0)  # ((b t) e)
        call = UNetCall(emb, self.frame_context(context.to(dtype), t), b, t, hooks)
        residuals = self._residuals(control)

        h = frames_to_batch(x)
        skips = []
        for i, block in enumerate(self.input_blocks):
            block_call = call.at("input", i)
            h = self._block(block, h, block_call)
            if i == 0 and self.config.addition_attention:
                h = self._block(self.init_attn, h, block_call)
            if i < len(residuals.inputs):
                h = _add_residual(h, residuals.inputs[i], f"input block {i}")
            for patch in hooks.input_block:
                h = patch(h, block_call.block)
            skips.append(h)
            for patch in hooks.input_block_after_skip:
                h = patch(h, block_call.block)
        h = self._block(self.middle_block, h, call.at("middle", 0))
        h = _add_residual(h, residuals.middle, "the middle block")
        for i, block in enumerate(self.output_blocks):
            skip = skips.pop()
            if len(skips) < len(residuals.skips):
                skip = _add_residual(skip, residuals.skips[len(skips)], f"skip connection {len(skips)}")
            for patch in hooks.output_block:
                h, skip = patch(h, skip, ("output", i))
            h = self._block(block, torch.cat([h, skip], dim=1), call.at("output", i))
        h = self.out[2](norm_silu(self.out[0], h))
        return batch_to_frames(h, b)

    def _residuals(self, control: Union[None, Sequence[torch.Tensor], ControlResiduals]) -> ControlResiduals:
        if control is None:
            return ControlResiduals()
        if not isinstance(control, ControlResiduals):
            if len(control) != len(self.input_blocks) + 1:
                raise ValueError(
                    f"{len(control)} control residuals for a UNet with {len(self.input_blocks)} skip connections + 1"
                )
            control = ControlResiduals.from_list(control)
        if len(control.skips) > len(self.input_blocks) or len(control.inputs) > len(self.input_blocks):
            raise ValueError(
                f"control residuals for {max(len(control.skips), len(control.inputs))} blocks; this UNet has "
                f"{len(self.input_blocks)} input blocks"
            )
        return control
