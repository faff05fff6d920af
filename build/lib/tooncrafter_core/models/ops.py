"""Layer namespace every module is built from.

Modules take `operations=` so a host can swap in its own casting / lazily-initialised layers
(ComfyUI passes `comfy.ops.manual_cast` or `comfy.ops.disable_weight_init`); the default is plain
`torch.nn`; `CastWeights` is the core's own casting namespace (weights stored in fp8, or in
another dtype than the computation). Anything passed must provide these names with the
`torch.nn` signatures.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

# Layouts of the UNet's hot path as plain reshapes: torch.compile traces einops' pattern parser at
# every call (229 calls took 50 s of tracing for the tiny UNet on 2 cores), these in no time.


def frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """b c t h w -> (b t) c h w"""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def batch_to_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(b t) c h w -> b c t h w"""
    n, c, h, w = x.shape
    return x.reshape(batch, n // batch, c, h, w).transpose(1, 2)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """b n (h d) -> b h n d"""
    b, n, _ = x.shape
    return x.reshape(b, n, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """b h n d -> b n (h d)"""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


# Up to this many output positions, a CPU convolution's time goes mostly into reordering its
# weight into oneDNN's blocked layout (at every call); a matmul over unfolded inputs reads the
# weight as it is: 3-10x faster for the UNet's deepest levels at small sizes, slower above.
SMALL_CONV_POSITIONS = 256


def _conv_as_matmul(layer: nn.Module, x: torch.Tensor) -> bool:
    if x.device.type != "cpu" or layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        return False
    if any(s != 1 for s in layer.stride) or any(d != 1 for d in layer.dilation):
        return False
    if x.ndim == 5:  # only the temporal (k, 1, 1) kernels
        kt, kh, kw = layer.kernel_size
        if (kh, kw) != (1, 1) or tuple(layer.padding) != (kt // 2, 0, 0):
            return False
    n_out = x.shape[0] * x.shape[2:].numel()  # stride 1, "same" padding
    return n_out <= SMALL_CONV_POSITIONS and all(2 * p == k - 1 for p, k in zip(layer.padding, layer.kernel_size))


def conv2d_matmul(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], padding) -> torch.Tensor:
    """A stride-1 "same" conv2d as one matmul: x (n c h w) -> (n o h w)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    if h == 1 and wd == 1:  # only the centre tap sees the pixel
        return F.linear(x.reshape(n, c), w[:, :, kh // 2, kw // 2], b).view(n, o, 1, 1)
    cols = F.unfold(x, (kh, kw), padding=padding).transpose(1, 2).reshape(n * h * wd, c * kh * kw)
    return F.linear(cols, w.reshape(o, -1), b).view(n, h, wd, o).permute(0, 3, 1, 2).contiguous()


def conv_temporal_matmul(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    """A stride-1 "same" (k, 1, 1) conv3d as one matmul: x (b c t h w) -> (b o t h w)."""
    bsz, c, t, h, wd = x.shape
    o, k = w.shape[0], w.shape[2]
    xp = F.pad(x, (0, 0, 0, 0, k // 2, k // 2))
    cols = torch.stack([xp[:, :, i : i + t] for i in range(k)], dim=2)  # (b c k t h w)
    cols = cols.permute(0, 3, 4, 5, 1, 2).reshape(bsz * t * h * wd, c * k)
    out = F.linear(cols, w.reshape(o, c * k), b).view(bsz, t, h, wd, o)
    return out.permute(0, 4, 1, 2, 3).contiguous()


def conv(layer: nn.Module, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    """`layer`'s convolution of x with the given (cast) weight and bias."""
    if _conv_as_matmul(layer, x):
        if x.ndim == 4:
            return conv2d_matmul(x, w, b, layer.padding)
        return conv_temporal_matmul(x, w, b)
    return layer._conv_forward(x, w, b)


class Conv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv(self, x, self.weight, self.bias)


class Conv3d(nn.Conv3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv(self, x, self.weight, self.bias)


class Default:
    Linear = nn.Linear
    Conv1d = nn.Conv1d
    Conv2d = Conv2d
    Conv3d = Conv3d
    GroupNorm = nn.GroupNorm
    LayerNorm = nn.LayerNorm
    Embedding = nn.Embedding


def group_norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """Apply a GroupNorm layer in the activation's dtype.

    The half-precision kernels (CPU and CUDA) accumulate mean and variance in fp32 and round once
    at the end, which is as accurate as normalising an fp32 copy, without the two full copies.
    Weights kept in another dtype or on another device (host-managed) are cast to the activation's.
    """
    w = norm.weight
    if w is None or (w.dtype == x.dtype and w.device == x.device):
        return norm(x)
    return F.group_norm(x, norm.num_groups, *_weight_and_bias(norm, x), norm.eps)


def norm_silu(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """SiLU(GroupNorm(x)), the SiLU in place on the fresh normalised tensor (inference only)."""
    h = group_norm(norm, x)
    return F.silu(h, inplace=not h.requires_grad)


def param(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A raw parameter cast to the activation's device and dtype (hosts may keep weights elsewhere)."""
    return t.to(device=like.device, dtype=like.dtype)


def _weight_and_bias(layer: nn.Module, x: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    w, b = layer.weight, layer.bias
    return (None if w is None else param(w, x)), (None if b is None else param(b, x))


class CastWeights:
    """Layers that store their weights in any dtype (fp8, fp16, ...) on any device and cast them to
    the activation's dtype and device at every call, the way ComfyUI's `comfy.ops.manual_cast` does
    for its own models. The cast copy lives for one call; a cast to the same dtype and device is free.
    """

    class Linear(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, *_weight_and_bias(self, x))

    class Conv1d(nn.Conv1d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self._conv_forward(x, *_weight_and_bias(self, x))

    class Conv2d(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return conv(self, x, *_weight_and_bias(self, x))

    class Conv3d(nn.Conv3d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return conv(self, x, *_weight_and_bias(self, x))

    class GroupNorm(nn.GroupNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.group_norm(x, self.num_groups, *_weight_and_bias(self, x), self.eps)

    class LayerNorm(nn.LayerNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.layer_norm(x, self.normalized_shape, *_weight_and_bias(self, x), self.eps)

    class Embedding(nn.Embedding):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            """Rows in the stored dtype: token ids carry no dtype to follow, so the caller casts
            (gathering first, then casting only the rows used)."""
            return F.embedding(ids, self.weight.to(ids.device), self.padding_idx)
