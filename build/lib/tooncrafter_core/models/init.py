"""Random weights for networks built without their checkpoint (benchmarks, a distillation student)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def normal_init_(module: nn.Module, std: float, generator: torch.Generator) -> None:
    """N(0, std²) parameters drawn from `generator` (on the parameters' device); norm layers weight 1 and
    bias 0; floating buffers zero."""
    for sub in module.modules():
        is_norm = isinstance(sub, (nn.LayerNorm, nn.GroupNorm))
        for name, p in sub.named_parameters(recurse=False):
            if is_norm:
                p.fill_(1.0 if name == "weight" else 0.0)
            else:
                p.normal_(0.0, std, generator=generator)
    for b in module.buffers():
        if b.is_floating_point():
            b.zero_()
