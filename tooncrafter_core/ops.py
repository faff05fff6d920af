"""Layer namespace every module is built from.

Modules take `operations=` so a host can swap in its own casting / lazily-initialised layers
(ComfyUI passes `comfy.ops.manual_cast` or `comfy.ops.disable_weight_init`); the default is plain
`torch.nn`. Anything passed must provide these names with the `torch.nn` signatures.
"""

import torch
from torch import nn


class Default:
    Linear = nn.Linear
    Conv1d = nn.Conv1d
    Conv2d = nn.Conv2d
    Conv3d = nn.Conv3d
    GroupNorm = nn.GroupNorm
    LayerNorm = nn.LayerNorm
    Embedding = nn.Embedding


def norm_fp32(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a normalisation layer in fp32 and return the input's dtype (half-precision safety)."""
    if x.dtype == torch.float32:
        return norm(x)
    return norm(x.float()).to(x.dtype)


def param(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A raw parameter cast to the activation's device and dtype (hosts may keep weights elsewhere)."""
    return t.to(device=like.device, dtype=like.dtype)
