"""The autoencoders of the family. Both share a per-frame KL encoder (which also returns its hidden
states). ToonCrafter's dual-reference autoencoder decodes with a video decoder (temporal convolutions)
that fuses the first and last keyframe's encoder features back in at every level (cross-attention at
deep levels, a 1x1 "Combiner" elsewhere); DynamiCrafter's plain one decodes each frame alone.

The module tree is the checkpoint layout under `first_stage_model.`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import attention
from .config import DECODE_OVERLAP, VAEConfig
from .ops import Default, batch_to_frames, frames_to_batch, group_norm, norm_silu, param


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


class Decoder(nn.Module):
    """The plain decoder (DynamiCrafter): each frame alone, no reference features."""

    def __init__(self, cfg: VAEConfig, dtype=None, device=None, operations=Default):
        super().__init__()
        kw = dict(dtype=dtype, device=device, operations=operations)
        self.num_resolutions = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = operations.Conv2d(cfg.z_channels, block_in, 3, padding=1, dtype=dtype, device=device)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, **kw)
        self.mid.attn_1 = AttnBlock(block_in, **kw)
        self.mid.block_2 = ResnetBlock(block_in, block_in, **kw)
        up_levels: list[nn.Module] = []
        for level in reversed(range(self.num_resolutions)):
            up = nn.Module()
            up.block = nn.ModuleList()
            up.attn = nn.ModuleList()
            block_out = cfg.ch * cfg.ch_mult[level]
            for _ in range(cfg.num_res_blocks + 1):
                up.block.append(ResnetBlock(block_in, block_out, **kw))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    up.attn.append(AttnBlock(block_in, **kw))
            if level != 0:
                up.upsample = Upsample(block_in, **kw)
                res *= 2
            up_levels.insert(0, up)
        self.up = nn.ModuleList(up_levels)
        self.norm_out = _norm(block_in, dtype, device, operations)
        self.conv_out = operations.Conv2d(block_in, cfg.out_ch, 3, padding=1, dtype=dtype, device=device)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (n z h w) -> (n 3 H W)."""
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(self.num_resolutions)):
            up = self.up[level]
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn) > 0:
                    h = up.attn[i](h)
            if level != 0:
                h = up.upsample(h)
        return self.conv_out(norm_silu(self.norm_out, h))


class _KLAutoencoder(nn.Module):
    """The encoder both autoencoders share, their decoder, and the quantisation convolutions."""

    def __init__(self, cfg: VAEConfig, decoder: type[nn.Module], dtype=None, device=None, operations=Default):
        super().__init__()
        self.config = cfg
        kw = dict(dtype=dtype, device=device)
        self.encoder = Encoder(cfg, operations=operations, **kw)
        self.decoder = decoder(cfg, operations=operations, **kw)
        self.quant_conv = operations.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1, **kw)
        self.post_quant_conv = operations.Conv2d(cfg.embed_dim, cfg.z_channels, 1, **kw)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """x (n 3 H W) in [-1, 1] -> posterior mean, clamped logvar (n z h w), hidden states."""
        h, hidden = self.encoder(x)
        mean, logvar = self.quant_conv(h).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0), hidden


class AutoencoderKL(_KLAutoencoder):
    """DynamiCrafter's autoencoder: the plain decoder, after `post_quant_conv`."""

    def __init__(self, cfg: VAEConfig, dtype=None, device=None, operations=Default):
        super().__init__(cfg, Decoder, dtype=dtype, device=device, operations=operations)

    def decode(
        self, z: torch.Tensor, refs: Sequence[torch.Tensor] = (), chunk: Optional[int] = None, overlap: int = 0
    ) -> torch.Tensor:
        """z (b z t h w) unscaled latents -> video (b 3 t H W). Frames decode alone, so a chunked decode
        (`chunk` frames a call; `refs` and `overlap` are not used) is the whole decode exactly."""
        b, _, t, _, _ = z.shape
        video = None
        for lo, start, stop, hi in decode_windows(t, chunk, 0):
            x = self.decoder(self.post_quant_conv(frames_to_batch(z[:, :, start:stop])))
            x = batch_to_frames(x, b)
            if video is None:
                if stop == t:
                    return x
                video = x.new_empty(x.shape[:2] + (t,) + x.shape[3:])
            video[:, :, start:stop] = x
        return video


class AutoencoderKLDualRef(_KLAutoencoder):
    """ToonCrafter's autoencoder. Its post_quant_conv is loaded but never applied: the original's decode()
    skips it whenever the decoder gets reference features, which is always the case for ToonCrafter."""

    def __init__(self, cfg: VAEConfig, dtype=None, device=None, operations=Default):
        super().__init__(cfg, VideoDecoder, dtype=dtype, device=device, operations=operations)

    def decode(
        self,
        z: torch.Tensor,
        refs: Sequence[torch.Tensor],
        chunk: Optional[int] = None,
        overlap: int = DECODE_OVERLAP,
    ) -> torch.Tensor:
        """z (b z t h w) unscaled latents, refs [(b c 2 H W)] -> video (b 3 t H W).

        None decodes the whole clip in one pass, exactly as the original. With `chunk`, frames are
        decoded `chunk` at a time, each call with `overlap` context frames on either side: less
        memory, close to but not exactly the whole decode (the temporal convolutions see the window
        borders, kept `overlap` frames away, and the temporal blocks' GroupNorm statistics span the
        window, not the clip).
        """
        b, _, t, _, _ = z.shape
        windows = decode_windows(t, chunk, overlap)
        video = None
        for lo, start, stop, hi in windows:
            # A window starting at frame 0 holds the clip's first frame at its own frame 0, so the
            # Combiners add the start reference there, as the whole-clip decode does (likewise last).
            x = self.decoder(rearrange(z[:, :, lo:hi], "b c t h w -> (b t) c h w"), refs, hi - lo, lo == 0, hi == t)
            x = rearrange(x, "(b t) c h w -> b c t h w", b=b)
            if len(windows) == 1:
                return x
            if video is None:  # filled in place: no list of chunks and no concatenated copy
                video = x.new_empty(x.shape[:2] + (t,) + x.shape[3:])
            video[:, :, start:stop] = x[:, :, start - lo : stop - lo]
        return video


def decode_windows(frames: int, chunk: Optional[int], overlap: int = DECODE_OVERLAP) -> list[tuple[int, int, int, int]]:
    """(lo, start, stop, hi) per decode call: frames [start, stop) are kept from the window
    [lo, hi), which adds up to `overlap` context frames on each side (clamped to the clip)."""
    if chunk is None or chunk >= frames:
        return [(0, 0, frames, frames)]
    chunk, overlap = max(1, chunk), max(0, overlap)
    return [
        (max(0, start - overlap), start, min(start + chunk, frames), min(frames, start + chunk + overlap))
        for start in range(0, frames, chunk)
    ]


# ---------------------------------------------------------------------------------------------
# Decode memory

# Head-room on the counted activations for convolution workspaces (cuDNN) and allocator rounding.
# On the CPU the allocator's measured peak is within a few percent of the count itself.
DECODE_MEMORY_MARGIN = 1.5


def _decoder_peak_channels(cfg: VAEConfig) -> float:
    """The most activation channels alive at once in one decoder pass, in full-resolution units
    (a tensor of c channels at 1/2^l of the size counts c / 4^l)."""
    inner = cfg.fusion_heads * cfg.fusion_dim_head
    levels = len(cfg.ch_mult)
    c_in = cfg.ch * cfg.ch_mult[-1]
    scale = 4.0 ** -(levels - 1)
    # mid.attn_1 (single-head, per frame): input, normalised, q, k, v, attention out, projection.
    peak = 7 * c_in * scale
    for level in reversed(range(levels)):
        c, scale = cfg.ch * cfg.ch_mult[level], 4.0**-level
        # VideoResBlock, at its temporal stack's second Conv3d: the block's input (held by the
        # caller), its spatial output, the first stage's result, the normalised second-stage input,
        # the convolution's own buffer (its input is a permuted view) and its output.
        peak = max(peak, (c_in + 5 * c) * scale)
        c_in = c
        if level in cfg.attn_levels:  # FusionCrossAttention: x, normalised, q, out, projected, sum
            peak = max(peak, (4 * c + 2 * inner) * scale)
        if level != 0:  # Upsample: the input, its nearest-neighbour copy and the conv output
            peak = max(peak, c * (scale + 2 * 4 * scale))
    # norm_out, the last Combiner's copy and its input.
    return max(peak, 3.0 * cfg.ch * cfg.ch_mult[0])


def decode_memory_bytes(
    cfg: VAEConfig,
    batch: int,
    frames: int,
    height: int,
    width: int,
    dtype: torch.dtype,
    chunk: Optional[int] = None,
    overlap: int = DECODE_OVERLAP,
) -> int:
    """Peak bytes of one `AutoencoderKLDualRef.decode` of (batch, frames) latents to height x width
    pixels, weights excluded: the largest window's activations (with DECODE_MEMORY_MARGIN), the
    reference features and the decoded video (kept three times by `decoding.decode`'s second pass)."""
    size = torch.empty((), dtype=dtype).element_size()
    window = max(hi - lo for lo, _, _, hi in decode_windows(frames, chunk, overlap))
    pixels = height * width
    activations = DECODE_MEMORY_MARGIN * _decoder_peak_channels(cfg) * batch * window * pixels * size
    ref_channels = sum(cfg.ch * m * 4.0**-level for level, m in enumerate(cfg.ch_mult)) + cfg.ch
    refs = ref_channels * batch * 2 * pixels * size
    video = 3 * cfg.out_ch * batch * frames * pixels * size
    return int(activations + refs + video)


def auto_decode_chunk(
    cfg: VAEConfig,
    batch: int,
    frames: int,
    height: int,
    width: int,
    dtype: torch.dtype,
    free_bytes: int,
    overlap: int = DECODE_OVERLAP,
) -> Optional[int]:
    """None (the whole clip) when its decode fits in `free_bytes`, else the largest chunk whose
    decode (with `overlap`) fits; 1 when none does."""

    def need(chunk: Optional[int]) -> int:
        return decode_memory_bytes(cfg, batch, frames, height, width, dtype, chunk, overlap)

    if need(None) <= free_bytes:
        return None
    return next((c for c in range(frames - 1, 0, -1) if need(c) <= free_bytes), 1)
