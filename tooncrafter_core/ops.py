"""Layer namespace every module is built from.

Modules take `operations=` so a host can swap in its own casting / lazily-initialised layers
(ComfyUI passes `comfy.ops.manual_cast` or `comfy.ops.disable_weight_init`); the default is plain
`torch.nn`. Anything passed must provide these names with the `torch.nn` signatures.
"""

import torch
import torch.nn.functional as F
from torch import nn


class Default:
    Linear = nn.Linear
    Conv1d = nn.Conv1d
    Conv2d = nn.Conv2d
    Conv3d = nn.Conv3d
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
    b = None if norm.bias is None else param(norm.bias, x)
    return F.group_norm(x, norm.num_groups, param(w, x), b, norm.eps)


def norm_silu(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """SiLU(GroupNorm(x)), the SiLU in place on the fresh normalised tensor (inference only)."""
    h = group_norm(norm, x)
    return F.silu(h, inplace=not h.requires_grad)


def param(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A raw parameter cast to the activation's device and dtype (hosts may keep weights elsewhere)."""
    return t.to(device=like.device, dtype=like.dtype)
