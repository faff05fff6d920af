"""The dual-reference autoencoder: a per-frame KL encoder that also returns its hidden states,
and a video decoder (temporal convolutions) that fuses the first and last keyframe's encoder
features back in at every level (cross-attention at deep levels, a 1x1 "Combiner" elsewhere).

The module tree is the checkpoint layout under `first_stage_model.`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import attention
from .config import VAEConfig
from .ops import Default, group_norm, norm_silu, param


def _norm(channels: int, dtype, device, operations) -> nn.Module:
    return operations.GroupNorm(32, channels, eps=1e-6, affine=True, dtype=dtype, device=device)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dtype=None, device=None, operations=Default):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.norm1 = _norm(in_channels, dtype, device, operations)
        self.conv1 = operations.Conv2d(in_channels, out_channels, 3, padding=1, **kw)
        self.norm2 = _norm(out_channels, dtype, device, operations)
        self.conv2 = operations.Conv2d(out_channels, out_channels, 3, padding=1, **kw)
        if in_channels != out_channels:
            self.nin_shortcut = operations.Conv2d(in_channels, out_channels, 1, **kw)
        self.has_shortcut = in_channels != out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(norm_silu(self.norm1, x))
        h = self.conv2(norm_silu(self.norm2, h))
        return (self.nin_shortcut(x) if self.has_shortcut else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions of each frame."""

    def __init__(self, channels: int, dtype=None, device=None, operations=Default):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.norm = _norm(channels, dtype, device, operations)
        self.q = operations.Conv2d(channels, channels, 1, **kw)
        self.k = operations.Conv2d(channels, channels, 1, **kw)
        self.v = operations.Conv2d(channels, channels, 1, **kw)
        self.proj_out = operations.Conv2d(channels, channels, 1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        h_ = group_norm(self.norm, x)
        q, k, v = (rearrange(f(h_), "b c h w -> b (h w) c") for f in (self.q, self.k, self.v))
        out = attention(q, k, v, heads=1)
        return x + self.proj_out(rearrange(out, "b (h w) c -> b c h w", h=h, w=w))


class Downsample(nn.Module):
    def __init__(self, channels: int, dtype=None, device=None, operations=Default):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, stride=2, padding=0, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Asymmetric (right/bottom) padding, as the original.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int, dtype=None, device=None, operations=Default):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, padding=1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig, dtype=None, device=None, operations=Default):
        super().__init__()
        kw = dict(dtype=dtype, device=device, operations=operations)
        self.num_resolutions = len(cfg.ch_mult)
        self.conv_in = operations.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1, dtype=dtype, device=device)
        in_mult = (1,) + tuple(cfg.ch_mult)
        res = cfg.resolution
        self.down = nn.ModuleList()
        for level in range(self.num_resolutions):
            block_in, block_out = cfg.ch * in_mult[level], cfg.ch * cfg.ch_mult[level]
            down = nn.Module()
            down.block = nn.ModuleList()
            down.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                down.block.append(ResnetBlock(block_in, block_out, **kw))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    down.attn.append(AttnBlock(block_in, **kw))
            if level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in, **kw)
                res //= 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, **kw)
        self.mid.attn_1 = AttnBlock(block_in, **kw)
        self.mid.block_2 = ResnetBlock(block_in, block_in, **kw)
        self.norm_out = _norm(block_in, dtype, device, operations)
        self.conv_out = operations.Conv2d(block_in, 2 * cfg.z_channels, 3, padding=1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (n 3 H W) -> moments (n 2z h w), hidden states [level 0 .. last level, conv_in]."""
        first = h = self.conv_in(x)
        hidden = []
        for level, down in enumerate(self.down):
            for i, block in enumerate(down.block):
                h = block(h)
                if len(down.attn) > 0:
                    h = down.attn[i](h)
            hidden.append(h)
            if level != self.num_resolutions - 1:
                h = down.downsample(h)
        hidden.append(first)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        h = self.conv_out(norm_silu(self.norm_out, h))
        return h, hidden


class TimeStackBlock(nn.Module):
    """The decoder's temporal residual block: two (3,1,1) Conv3d stages, no timestep input."""

    def __init__(self, channels: int, kernel: Sequence[int], dtype=None, device=None, operations=Default):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        pad = tuple(k // 2 for k in kernel)
        # GroupNorm eps is torch's default here (the original's `normalization`), not 1e-6.
        self.in_layers = nn.Sequential(
            operations.GroupNorm(32, channels, **kw), nn.SiLU(), operations.Conv3d(channels, channels, kernel, padding=pad, **kw)
        )
        self.out_layers = nn.Sequential(
            operations.GroupNorm(32, channels, **kw),
            nn.SiLU(),
            nn.Identity(),
            operations.Conv3d(channels, channels, kernel, padding=pad, **kw),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.in_layers[2](norm_silu(self.in_layers[0], x))
        h = self.out_layers[3](norm_silu(self.out_layers[0], h))
        return x + h


class VideoResBlock(ResnetBlock):
    """A per-frame ResnetBlock blended with a temporal block by a learned sigmoid(mix_factor)."""

    def __init__(self, in_channels: int, out_channels: int, kernel, dtype=None, device=None, operations=Default):
        super().__init__(in_channels, out_channels, dtype=dtype, device=device, operations=operations)
        self.time_stack = TimeStackBlock(out_channels, kernel, dtype=dtype, device=device, operations=operations)
        self.mix_factor = nn.Parameter(torch.zeros(1, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x = super().forward(x)
        x_mix = rearrange(x, "(b t) c h w -> b c t h w", t=frames)
        alpha = torch.sigmoid(self.mix_factor.to(x))
        x = alpha * self.time_stack(x_mix) + (1.0 - alpha) * x_mix
        return rearrange(x, "b c t h w -> (b t) c h w")


class AE3DConv(nn.Module):
    """conv_out: a per-frame 3x3 conv followed by a temporal Conv3d (`time_mix_conv`).

    The original subclasses Conv2d, so its own weight sits at `conv_out.weight`; this small conv
    keeps raw parameters under those names and casts them to the activation at run time.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel, dtype=None, device=None, operations=Default):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3, **kw))
        self.bias = nn.Parameter(torch.empty(out_channels, **kw))
        self.time_mix_conv = operations.Conv3d(
            out_channels, out_channels, kernel, padding=tuple(k // 2 for k in kernel), **kw
        )

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x = F.conv2d(x, param(self.weight, x), param(self.bias, x), padding=1)
        x = rearrange(x, "(b t) c h w -> b c t h w", t=frames)
        return rearrange(self.time_mix_conv(x), "b c t h w -> (b t) c h w")


class FusionCrossAttention(nn.Module):
    """Every frame attends to the tokens of both reference frames (start then end)."""

    def __init__(self, channels: int, heads: int, dim_head: int, dtype=None, device=None, operations=Default):
        super().__init__()
        inner = heads * dim_head
        kw = dict(dtype=dtype, device=device)
        self.heads = heads
        self.norm = _norm(channels, dtype, device, operations)
        self.to_q = operations.Linear(channels, inner, bias=False, **kw)
        self.to_k = operations.Linear(channels, inner, bias=False, **kw)
        self.to_v = operations.Linear(channels, inner, bias=False, **kw)
        self.to_out = nn.Sequential(operations.Linear(inner, channels, **kw), nn.Identity())

    def forward(self, x: torch.Tensor, context: torch.Tensor, first: bool, last: bool) -> torch.Tensor:
        """x ((b t) c h w), context (b c 2 h w)."""
        b = context.shape[0]
        _, c, h, w = x.shape
        # All frames of a clip share the same keys, so frames are stacked into one query sequence.
        q = self.to_q(rearrange(group_norm(self.norm, x), "(b t) c h w -> b (t h w) c", b=b))
        ctx = rearrange(context.to(x.dtype), "b c l h w -> b (l h w) c")
        out = attention(q, self.to_k(ctx), self.to_v(ctx), self.heads)
        out = rearrange(self.to_out(out), "b (t h w) c -> (b t) c h w", h=h, w=w)
        return x + out


class Combiner(nn.Module):
    """Adds a 1x1-projected reference feature to the clip's first and last frame."""

    def __init__(self, channels: int, dtype=None, device=None, operations=Default):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, context: torch.Tensor, first: bool, last: bool) -> torch.Tensor:
        b = context.shape[0]
        ref = self.conv(rearrange(context.to(x.dtype), "b c l h w -> (b l) c h w"))
        ref = rearrange(ref, "(b l) c h w -> b c l h w", b=b)
        x = rearrange(x, "(b t) c h w -> b c t h w", b=b).clone()
        if first:
            x[:, :, 0] = x[:, :, 0] + ref[:, :, 0]
        if last:
            x[:, :, -1] = x[:, :, -1] + ref[:, :, 1]
        return rearrange(x, "b c t h w -> (b t) c h w")


class VideoDecoder(nn.Module):
    def __init__(self, cfg: VAEConfig, dtype=None, device=None, operations=Default):
        super().__init__()
        kw = dict(dtype=dtype, device=device, operations=operations)
        kernel = tuple(cfg.video_kernel_size)
        self.num_resolutions = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = operations.Conv2d(cfg.z_channels, block_in, 3, padding=1, dtype=dtype, device=device)
        self.mid = nn.Module()
        self.mid.block_1 = VideoResBlock(block_in, block_in, kernel, **kw)
        self.mid.attn_1 = AttnBlock(block_in, **kw)
        self.mid.block_2 = VideoResBlock(block_in, block_in, kernel, **kw)

        up_levels: list[nn.Module] = []
        refinement: list[nn.Module] = []
        for level in reversed(range(self.num_resolutions)):
            up = nn.Module()
            up.block = nn.ModuleList()
            up.attn = nn.ModuleList()
            block_out = cfg.ch * cfg.ch_mult[level]
            for _ in range(cfg.num_res_blocks + 1):
                up.block.append(VideoResBlock(block_in, block_out, kernel, **kw))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    up.attn.append(AttnBlock(block_in, **kw))
            if level != 0:
                up.upsample = Upsample(block_in, **kw)
                res *= 2
            up_levels.insert(0, up)
            if level in cfg.attn_levels:
                refinement.insert(0, FusionCrossAttention(block_in, cfg.fusion_heads, cfg.fusion_dim_head, **kw))
            else:
                refinement.insert(0, Combiner(block_in, **kw))
        refinement.append(Combiner(block_in, **kw))
        self.up = nn.ModuleList(up_levels)
        self.attn_refinement = nn.ModuleList(refinement)
        self.norm_out = _norm(block_in, dtype, device, operations)
        self.conv_out = AE3DConv(block_in, cfg.out_ch, kernel, **kw)

    def forward(
        self, z: torch.Tensor, refs: Sequence[torch.Tensor], frames: int, first: bool = True, last: bool = True
    ) -> torch.Tensor:
        """z ((b t) z h w), refs [(b c 2 H W)] per level + full-res -> ((b t) 3 H W).

        `first`/`last` say whether this chunk holds the clip's first/last frame (the Combiners
        add the reference features only there).
        """
        h = self.conv_in(z)
        h = self.mid.block_1(h, frames)
        h = self.mid.attn_1(h)
        h = self.mid.block_2(h, frames)
        for level in reversed(range(self.num_resolutions)):
            up = self.up[level]
            for i, block in enumerate(up.block):
                h = block(h, frames)
                if len(up.attn) > 0:
                    h = up.attn[i](h)
            h = self.attn_refinement[level](h, refs[level], first, last)
            if level != 0:
                h = up.upsample(h)
        h = norm_silu(self.norm_out, h)
        h = self.attn_refinement[-1](h, refs[-1], first, last)
        return self.conv_out(h, frames)


class AutoencoderKLDualRef(nn.Module):
    def __init__(self, cfg: VAEConfig, dtype=None, device=None, operations=Default):
        super().__init__()
        self.config = cfg
        kw = dict(dtype=dtype, device=device)
        self.encoder = Encoder(cfg, operations=operations, **kw)
        self.decoder = VideoDecoder(cfg, operations=operations, **kw)
        self.quant_conv = operations.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1, **kw)
        # Loaded but never applied: the original's decode() skips it whenever the decoder gets
        # reference features, which is always the case for ToonCrafter.
        self.post_quant_conv = operations.Conv2d(cfg.embed_dim, cfg.z_channels, 1, **kw)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """x (n 3 H W) in [-1, 1] -> posterior mean, clamped logvar (n z h w), hidden states."""
        h, hidden = self.encoder(x)
        mean, logvar = self.quant_conv(h).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0), hidden

    def decode(
        self, z: torch.Tensor, refs: Sequence[torch.Tensor], chunk: Optional[int] = None
    ) -> torch.Tensor:
        """z (b z t h w) unscaled latents, refs [(b c 2 H W)] -> video (b 3 t H W).

        With `chunk`, frames are decoded `chunk` at a time (less memory, temporal convs see the
        chunk borders); None decodes the whole clip in one pass, exactly as the original.
        """
        b, _, t, _, _ = z.shape
        chunk = t if chunk is None else max(1, chunk)
        outs = []
        for start in range(0, t, chunk):
            part = z[:, :, start : start + chunk]
            n = part.shape[2]
            x = self.decoder(
                rearrange(part, "b c t h w -> (b t) c h w"), refs, n, first=start == 0, last=start + n == t
            )
            outs.append(rearrange(x, "(b t) c h w -> b c t h w", b=b))
        return torch.cat(outs, dim=2)
