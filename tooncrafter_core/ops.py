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


def norm_fp32(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """Apply a GroupNorm layer in fp32 and return the input's dtype (half-precision safety)."""
    if x.dtype == torch.float32 and norm.weight.dtype == torch.float32 and norm.weight.device == x.device:
        return norm(x)
    w = None if norm.weight is None else norm.weight.to(device=x.device, dtype=torch.float32)
    b = None if norm.bias is None else norm.bias.to(device=x.device, dtype=torch.float32)
    return F.group_norm(x.float(), norm.num_groups, w, b, norm.eps).to(x.dtype)


def param(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A raw parameter cast to the activation's device and dtype (hosts may keep weights elsewhere)."""
    return t.to(device=like.device, dtype=like.dtype)
