"""Attention blocks of the ToonCrafter UNet: spatial transformers with dual (text + image)
cross-attention and temporal transformers over the frame axis.

Attribute names follow the checkpoint (`attn1`, `attn2`, `to_k_ip`, `ff.net.0.proj`, ...).
All attention runs through `torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .ops import Default, group_norm, merge_heads, split_heads
from .unet_call import AttentionHooks, AttentionSite, FrameContext, UNetCall


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head softmax attention; q (B n (h d)), k/v (b m (h d)) -> (B n (h d)).

    B may be a multiple of b (B = b * frames): then the frames of a clip share its keys, and their
    queries are stacked into one sequence, `(b t) n c -> b (t n) c`. That is exact (softmax rows are
    independent) and the keys are projected once per clip instead of once per frame.
    """
    batch = q.shape[0]
    if batch != k.shape[0]:
        q = q.reshape(k.shape[0], -1, q.shape[-1])
    q, k, v = (split_heads(t, heads) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)  # (b, h, n, d); scale d**-0.5 as the original
    return merge_heads(out).reshape(batch, -1, out.shape[1] * out.shape[3])


def split_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Attention as ComfyUI computes it for patched layers: keys of another batch than q are split
    evenly over q's batch (a patch that tiles q, as HyperTile does, leaves k and v whole)."""
    if k.shape[0] != q.shape[0]:
        k, v = (t.reshape(q.shape[0], -1, t.shape[-1]) for t in (k, v))
    return attention(q, k, v, heads)


class CrossAttention(nn.Module):
    """Self- or cross-attention; with `image_cross_attention` the context is split into text
    tokens (`to_k`/`to_v`) and image tokens (`to_k_ip`/`to_v_ip`) and the two results are summed."""

    def __init__(
        self,
        query_dim: int,
        context_dim: Optional[int] = None,
        heads: int = 8,
        dim_head: int = 64,
        image_cross_attention: bool = False,
        image_scale_learnable: bool = False,
        text_tokens: int = 77,
        dtype=None,
        device=None,
        operations=Default,
    ):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        kw = dict(dtype=dtype, device=device)
        self.heads, self.dim_head = heads, dim_head
        self.text_tokens = text_tokens
        self.image_cross_attention = image_cross_attention
        self.to_q = operations.Linear(query_dim, inner, bias=False, **kw)
        self.to_k = operations.Linear(context_dim, inner, bias=False, **kw)
        self.to_v = operations.Linear(context_dim, inner, bias=False, **kw)
        self.to_out = nn.Sequential(operations.Linear(inner, query_dim, **kw), nn.Identity())
        if image_cross_attention:
            self.to_k_ip = operations.Linear(context_dim, inner, bias=False, **kw)
            self.to_v_ip = operations.Linear(context_dim, inner, bias=False, **kw)
            if image_scale_learnable:
                self.alpha = nn.Parameter(torch.zeros((), **kw))
        self.image_scale_learnable = image_cross_attention and image_scale_learnable

    def forward(self, x: torch.Tensor, context: Optional[FrameContext] = None) -> torch.Tensor:
        """x ((b t) n c); context None for self-attention."""
        q = self.to_q(x)
        if context is None:
            out = attention(q, self.to_k(x), self.to_v(x), self.heads)
            return self.to_out(out)
        out = attention(q, self.to_k(context.text), self.to_v(context.text), self.heads)
        if self.image_cross_attention:
            out = out + self._image_weight(attention(q, self.to_k_ip(context.image), self.to_v_ip(context.image), self.heads))
        return self.to_out(out)

    def _image_weight(self, out_ip: torch.Tensor) -> torch.Tensor:
        if self.image_scale_learnable:
            return out_ip * (torch.tanh(self.alpha.to(out_ip)) + 1)
        return out_ip

    def patched(self, x: torch.Tensor, context: Optional[FrameContext], hooks: AttentionHooks, site: AttentionSite) -> torch.Tensor:
        """`forward` with a host's patches (shapes in `unet_call`); x ((b t) n c)."""
        if context is None:
            ctx = value = x
        else:
            ctx = value = context.per_frame()
        for patch in hooks.inputs:
            x, ctx, value = patch(x, ctx, value, site)
        attend = hooks.replacement(site)
        if attend is None:
            heads = self.heads
            attend = lambda q, k, v, site: split_attention(q, k, v, heads)  # noqa: E731
        q = self.to_q(x)
        if context is None:
            out = attend(q, self.to_k(ctx), self.to_v(value), site)
        else:
            n = self.text_tokens
            out = attend(q, self.to_k(ctx[:, :n]), self.to_v(value[:, :n]), site)
            if self.image_cross_attention:
                image = attend(q, self.to_k_ip(ctx[:, n:]), self.to_v_ip(value[:, n:]), site)
                out = out + self._image_weight(image)
        out = self.to_out(out)
        for patch in hooks.outputs:
            out = patch(out, site)
        return out


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, dtype=None, device=None, operations=Default):
        super().__init__()
        self.proj = operations.Linear(dim_in, dim_out * 2, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dtype=None, device=None, operations=Default):
        super().__init__()
        inner = dim * mult
        # net.1 is the original's dropout slot, kept so net.2 stays where the checkpoint has it.
        self.net = nn.Sequential(
            GEGLU(dim, inner, dtype=dtype, device=device, operations=operations),
            nn.Identity(),
            operations.Linear(inner, dim, dtype=dtype, device=device),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention, (cross-)attention, gated feed-forward; pre-LayerNorm residuals."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        context_dim: Optional[int] = None,
        image_cross_attention: bool = False,
        image_scale_learnable: bool = False,
        text_tokens: int = 77,
        dtype=None,
        device=None,
        operations=Default,
    ):
        super().__init__()
        kw = dict(dtype=dtype, device=device, operations=operations)
        self.attn1 = CrossAttention(dim, None, heads, dim_head, **kw)
        self.ff = FeedForward(dim, **kw)
        self.attn2 = CrossAttention(
            dim, context_dim, heads, dim_head, image_cross_attention, image_scale_learnable, text_tokens, **kw
        )
        self.norm1 = operations.LayerNorm(dim, dtype=dtype, device=device)
        self.norm2 = operations.LayerNorm(dim, dtype=dtype, device=device)
        self.norm3 = operations.LayerNorm(dim, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, context: Optional[FrameContext] = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x

    def patched(self, x: torch.Tensor, context: Optional[FrameContext], call: UNetCall, site: AttentionSite) -> torch.Tensor:
        """`forward` with the call's attention hooks; each attention without hooks runs as unpatched."""
        hooks = call.hooks
        if hooks.attn1:
            site1 = replace(site, which="attn1", heads=self.attn1.heads)
            x = self.attn1.patched(self.norm1(x), None, hooks.attn1, site1) + x
        else:
            x = self.attn1(self.norm1(x)) + x
        for patch in hooks.middle:
            x = patch(x, site)
        if hooks.attn2:
            site2 = replace(site, which="attn2", heads=self.attn2.heads)
            x = self.attn2.patched(self.norm2(x), context, hooks.attn2, site2) + x
        else:
            x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class _FrameTransformer(nn.Module):
    """GroupNorm, input/output projections (Linear, or a 1x1 conv of `conv_cls`) around transformer blocks."""

    def __init__(self, channels: int, inner: int, use_linear: bool, conv_cls, blocks: list[nn.Module], dtype=None, device=None, operations=Default):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.use_linear = use_linear
        self.norm = operations.GroupNorm(32, channels, eps=1e-6, **kw)
        if use_linear:
            self.proj_in = operations.Linear(channels, inner, **kw)
            self.proj_out = operations.Linear(inner, channels, **kw)
        else:
            self.proj_in = conv_cls(channels, inner, 1, **kw)
            self.proj_out = conv_cls(inner, channels, 1, **kw)
        self.transformer_blocks = nn.ModuleList(blocks)


class SpatialTransformer(_FrameTransformer):
    """Transformer over the h*w tokens of each frame, cross-attending to the frame's context."""

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        depth: int,
        context_dim: int,
        use_linear: bool,
        image_cross_attention: bool,
        image_scale_learnable: bool,
        text_tokens: int,
        dtype=None,
        device=None,
        operations=Default,
    ):
        inner = heads * dim_head
        kw = dict(dtype=dtype, device=device, operations=operations)
        blocks = [
            BasicTransformerBlock(
                inner, heads, dim_head, context_dim, image_cross_attention, image_scale_learnable, text_tokens, **kw
            )
            for _ in range(depth)
        ]
        super().__init__(channels, inner, use_linear, operations.Conv2d, blocks, **kw)

    # Spatial transformers before this one in a forward pass (ComfyUI's transformer_index); the UNet sets it.
    transformer_index = 0

    def forward(self, x: torch.Tensor, call: UNetCall) -> torch.Tensor:
        """x ((b t) c h w)."""
        _, _, h, w = x.shape
        x_in = x
        site = None
        if call.hooks.attention:
            head = self.transformer_blocks[0].attn1
            site = AttentionSite(call.block, 0, self.transformer_index, "attn1", head.heads, head.dim_head, tuple(x.shape))
        x = group_norm(self.norm, x)
        if not self.use_linear:
            x = self.proj_in(x)
        # Contiguous: a Linear over a permuted view falls back to a batched matmul that copies its
        # weight once per batch entry (the slowest part of a bf16 CPU step).
        x = x.flatten(2).transpose(1, 2).contiguous()  # b c h w -> b (h w) c
        if self.use_linear:
            x = self.proj_in(x)
        for i, block in enumerate(self.transformer_blocks):
            if site is None:
                x = block(x, call.context)
            else:
                x = block.patched(x, call.context, call, replace(site, index=i))
        if self.use_linear:
            x = self.proj_out(x)
        x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)  # b (h w) c -> b c h w
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class TemporalTransformer(_FrameTransformer):
    """Self-attention along the frame axis at every pixel (ToonCrafter uses self-attention only)."""

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        depth: int,
        use_linear: bool,
        dtype=None,
        device=None,
        operations=Default,
    ):
        inner = heads * dim_head
        kw = dict(dtype=dtype, device=device, operations=operations)
        blocks = [BasicTransformerBlock(inner, heads, dim_head, **kw) for _ in range(depth)]
        super().__init__(channels, inner, use_linear, operations.Conv1d, blocks, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (b c t h w) -> (b c t h w)."""
        b, _, t, h, w = x.shape
        x_in = x
        x = group_norm(self.norm, x)
        x = x.permute(0, 3, 4, 1, 2).reshape(b * h * w, -1, t)  # b c t h w -> (b h w) c t
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.transpose(1, 2).contiguous()  # n c t -> n t c; contiguous: see SpatialTransformer
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.transpose(1, 2)  # n t c -> n c t
        if not self.use_linear:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, -1, t).permute(0, 3, 4, 1, 2)  # (b h w) c t -> b c t h w
        return x + x_in
