"""Conditioning encoders: OpenCLIP text tower (penultimate layer + final LayerNorm), OpenCLIP
vision tower (all tokens after the transformer), CLIP image preprocessing, and the Resampler that
turns the vision tokens into 16 context tokens per frame.

Module trees follow the checkpoint: `cond_stage_model.model.*`, `embedder.model.visual.*`,
`image_proj_model.*`. The text towers are our own; only the tokenizer comes from open_clip.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import ResamplerConfig, TextEncoderConfig, VisionEncoderConfig, open_clip_file
from .ops import Default, param

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _open_clip_tokenizer():
    """open_clip's tokenizer module alone, without importing the package (see `open_clip_file`)."""
    spec = importlib.util.spec_from_file_location("_tooncrafter_open_clip_tokenizer", open_clip_file("tokenizer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tokenize(prompts: Sequence[str], context_length: int = 77) -> torch.Tensor:
    """CLIP BPE tokens, (n, context_length) long; open_clip's tokenizer ships its vocabulary.

    Longer prompts are cut to `context_length` tokens (start and end token included), as in the
    original; each cut prompt is logged as a warning.
    """
    module = _open_clip_tokenizer()
    for prompt in dict.fromkeys(prompts):  # a batch repeats its prompt: one warning each
        # open_clip truncates silently; counting again costs little (its BPE caches every word).
        n = len(module._tokenizer.encode(prompt)) + 2
        if n > context_length:
            log.warning(
                "prompt of %d tokens is longer than the text encoder's %d: only its first %d tokens are used, "
                "the rest is ignored (shorten the prompt to keep what matters): %.60r...",
                n, context_length, context_length, prompt,
            )
    return module.tokenize(list(prompts), context_length=context_length)


class SelfAttention(nn.Module):
    """nn.MultiheadAttention's parameter layout (`in_proj_weight`, `out_proj`), computed with SDPA."""

    def __init__(self, width: int, heads: int, dtype=None, device=None, operations=Default):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width, **kw))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width, **kw))
        self.out_proj = operations.Linear(width, width, **kw)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        """x (b n c)."""
        qkv = F.linear(x, param(self.in_proj_weight, x), param(self.in_proj_bias, x))
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(rearrange(out, "b h n d -> b n (h d)"))


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(
        self, width: int, heads: int, mlp_ratio: float, quick_gelu: bool = False, dtype=None, device=None, operations=Default
    ):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        hidden = int(width * mlp_ratio)
        self.ln_1 = operations.LayerNorm(width, **kw)
        self.attn = SelfAttention(width, heads, operations=operations, **kw)
        self.ln_2 = operations.LayerNorm(width, **kw)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", operations.Linear(width, hidden, **kw))
        self.mlp.add_module("gelu", QuickGELU() if quick_gelu else nn.GELU())
        self.mlp.add_module("c_proj", operations.Linear(hidden, width, **kw))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(
        self, width: int, layers: int, heads: int, mlp_ratio: float, quick_gelu: bool = False, dtype=None, device=None, operations=Default
    ):
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, quick_gelu, dtype=dtype, device=device, operations=operations)
            for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, causal: bool = False, skip_last: int = 0) -> torch.Tensor:
        for block in self.resblocks[: len(self.resblocks) - skip_last]:
            x = block(x, causal)
        return x


class TextTower(nn.Module):
    def __init__(self, cfg: TextEncoderConfig, dtype=None, device=None, operations=Default):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.config = cfg
        self.token_embedding = operations.Embedding(cfg.vocab_size, cfg.width, **kw)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width, **kw))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.quick_gelu, operations=operations, **kw)
        self.ln_final = operations.LayerNorm(cfg.width, **kw)
        # Present in the checkpoint, unused by ToonCrafter (it takes token features, not the pooled embedding).
        self.text_projection = nn.Parameter(torch.empty(cfg.width, cfg.embed_dim, **kw))
        self.logit_scale = nn.Parameter(torch.empty((), **kw))

    def forward(self, tokens: torch.Tensor, dtype: torch.dtype, skip_last: Optional[int] = None) -> torch.Tensor:
        """tokens (b 77) -> (b 77 width): layer `layers - skip_last` (default: the config's
        `layers_skipped`, the original's penultimate layer), then ln_final."""
        x = self.token_embedding(tokens).to(dtype)
        x = x + param(self.positional_embedding, x)
        x = self.transformer(x, causal=True, skip_last=self.config.layers_skipped if skip_last is None else skip_last)
        return self.ln_final(x)


class TextEncoder(nn.Module):
    """`cond_stage_model`: prompt strings -> text context (b 77 d)."""

    def __init__(self, cfg: TextEncoderConfig, dtype=None, device=None, operations=Default):
        super().__init__()
        self.model = TextTower(cfg, dtype=dtype, device=device, operations=operations)

    def forward(self, prompts: Sequence[str], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        tokens = tokenize(prompts, self.model.config.context_length)
        return self.model(tokens.to(device), dtype)


def _gaussian_kernel1d(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - size // 2
    if size % 2 == 0:
        x = x + 0.5
    k = torch.exp(-x.pow(2) / (2 * sigma**2))
    return k / k.sum()


def resize_antialiased(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize with align_corners=True after a Gaussian anti-alias blur, as kornia's
    `resize(..., antialias=True)` that the original uses (sigma = (scale - 1) / 2, reflect border)."""
    h, w = x.shape[-2:]
    sigmas = (max((h / size[0] - 1.0) / 2.0, 0.001), max((w / size[1] - 1.0) / 2.0, 0.001))
    ks = [int(max(2.0 * 2 * s, 3)) for s in sigmas]
    ks = [k + 1 if k % 2 == 0 else k for k in ks]
    ky = _gaussian_kernel1d(ks[0], sigmas[0], x.device, x.dtype)
    kx = _gaussian_kernel1d(ks[1], sigmas[1], x.device, x.dtype)
    c = x.shape[1]
    x = F.pad(x, (ks[1] // 2, ks[1] // 2, ks[0] // 2, ks[0] // 2), mode="reflect")
    x = F.conv2d(x, kx.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.conv2d(x, ky.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=True)


def clip_pixels(images: torch.Tensor, cfg: VisionEncoderConfig) -> torch.Tensor:
    """Images in [-1, 1] (b 3 H W) -> CLIP-normalised (b 3 S S) fp32, the original's preprocessing
    (also used to feed a host's own CLIP vision model)."""
    size = cfg.image_size
    x = resize_antialiased(images.float(), (size, size))
    x = (x + 1.0) / 2.0
    mean = torch.tensor(cfg.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionEncoderConfig, dtype=None, device=None, operations=Default):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.config = cfg
        self.conv1 = operations.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=False, **kw)
        self.class_embedding = nn.Parameter(torch.empty(cfg.width, **kw))
        self.positional_embedding = nn.Parameter(torch.empty(cfg.num_tokens, cfg.width, **kw))
        self.ln_pre = operations.LayerNorm(cfg.width, **kw)
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.quick_gelu, operations=operations, **kw)
        # Present in the checkpoint, unused: ToonCrafter takes the tokens before ln_post / proj.
        self.ln_post = operations.LayerNorm(cfg.width, **kw)
        self.proj = nn.Parameter(torch.empty(cfg.width, cfg.embed_dim, **kw))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised pixels (b 3 S S) -> all tokens (b 1+(S/p)^2 width)."""
        x = rearrange(self.conv1(pixels), "b c h w -> b (h w) c")
        cls = param(self.class_embedding, x).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + param(self.positional_embedding, x)
        return self.transformer(self.ln_pre(x))


class VisionHolder(nn.Module):
    """Keeps the checkpoint's `embedder.model.visual` nesting."""

    def __init__(self, cfg: VisionEncoderConfig, dtype=None, device=None, operations=Default):
        super().__init__()
        self.visual = VisionTower(cfg, dtype=dtype, device=device, operations=operations)


class ImageEncoder(nn.Module):
    """`embedder`: images in [-1, 1] (b 3 H W) -> OpenCLIP vision tokens."""

    def __init__(self, cfg: VisionEncoderConfig, dtype=None, device=None, operations=Default):
        super().__init__()
        self.config = cfg
        self.model = VisionHolder(cfg, dtype=dtype, device=device, operations=operations)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return clip_pixels(images, self.config)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Runs in the images' dtype; the resize and normalisation are done in fp32."""
        return self.model.visual(self.preprocess(images).to(images.dtype))


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int, dtype=None, device=None, operations=Default):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        inner = dim_head * heads
        self.heads = heads
        self.norm1 = operations.LayerNorm(dim, **kw)
        self.norm2 = operations.LayerNorm(dim, **kw)
        self.to_q = operations.Linear(dim, inner, bias=False, **kw)
        self.to_kv = operations.Linear(dim, inner * 2, bias=False, **kw)
        self.to_out = operations.Linear(inner, dim, bias=False, **kw)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x (b n d) image features, latents (b l d) -> (b l d); latents attend to [x, latents]."""
        x = self.norm1(x)
        latents = self.norm2(latents)
        q = rearrange(self.to_q(latents), "b l (h d) -> b h l d", h=self.heads)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (k, v))
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        return self.to_out(rearrange(out, "b h l d -> b l (h d)"))


class Resampler(nn.Module):
    """`image_proj_model`: vision tokens -> num_queries tokens per frame (b (t q) d)."""

    def __init__(self, cfg: ResamplerConfig, dtype=None, device=None, operations=Default):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        queries = cfg.num_queries * (cfg.video_length or 1)
        self.latents = nn.Parameter(torch.empty(1, queries, cfg.dim, **kw))
        self.proj_in = operations.Linear(cfg.embedding_dim, cfg.dim, **kw)
        self.proj_out = operations.Linear(cfg.dim, cfg.output_dim, **kw)
        self.norm_out = operations.LayerNorm(cfg.output_dim, **kw)
        inner = int(cfg.dim * cfg.ff_mult)
        self.layers = nn.ModuleList()
        for _ in range(cfg.depth):
            ff = nn.Sequential(
                operations.LayerNorm(cfg.dim, **kw),
                operations.Linear(cfg.dim, inner, bias=False, **kw),
                nn.GELU(),
                operations.Linear(inner, cfg.dim, bias=False, **kw),
            )
            attn = PerceiverAttention(cfg.dim, cfg.dim_head, cfg.heads, operations=operations, **kw)
            self.layers.append(nn.ModuleList([attn, ff]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        latents = param(self.latents, x).repeat(x.shape[0], 1, 1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


def zero_image(n: int, size: int, device=None) -> torch.Tensor:
    """The unconditional image of the original: all zeros in [-1, 1] space (a mid-grey picture)."""
    return torch.zeros(n, 3, size, size, device=device)


__all__ = [
    "ImageEncoder",
    "clip_pixels",
    "Resampler",
    "TextEncoder",
    "resize_antialiased",
    "tokenize",
    "zero_image",
]
