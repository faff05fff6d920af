"""The sketch encoder's file: architecture from weight shapes and a strict, meta-device load."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping, Optional

import torch

from ..models.ops import Default
from ..models.sketch_encoder import SketchEncoder, SketchEncoderConfig
from .checkpoint import SHAPE_ERRORS, CheckpointError, check_keys, one_line, read_state_dict

log = logging.getLogger(__name__)


def infer_config(shapes: Mapping[str, tuple]) -> SketchEncoderConfig:
    """Architecture from weight shapes. Head widths are not in the weights: 64 as released, or the
    narrowest attention width when that is narrower (small test models)."""
    keys = list(shapes)
    mc, in_ch = shapes["input_blocks.0.0.weight"][:2]
    downs = sorted(int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.weight$", k)))
    blocks = len({int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.", k))})
    nrb = downs[0] - 1 if downs else blocks - 1
    mult, attn = [], []
    for level in range(len(downs) + 1):
        idx = 1 + level * (nrb + 1)
        mult.append(shapes[f"input_blocks.{idx}.0.out_layers.3.weight"][0] // mc)
        if f"input_blocks.{idx}.1.norm.weight" in shapes:
            attn.append(2**level)
    to_k = next(k for k in keys if k.endswith("attn2.to_k.weight"))
    widths = [shapes[k][0] for k in keys if k.endswith("attn2.to_q.weight")]
    return SketchEncoderConfig(
        num_head_channels=min([SketchEncoderConfig.num_head_channels, *widths]),
        in_channels=in_ch,
        hint_channels=shapes["input_hint_block.0.weight"][1],
        model_channels=mc,
        attention_resolutions=tuple(reversed(attn)),
        num_res_blocks=nrb,
        channel_mult=tuple(mult),
        context_dim=shapes[to_k][1],
        use_linear=len(shapes[next(k for k in keys if k.endswith(".1.proj_in.weight"))]) == 2,
    )


def load_sketch_encoder(
    path: str | Path,
    dtype: Optional[torch.dtype] = None,
    config: Optional[SketchEncoderConfig] = None,
    operations=Default,
) -> SketchEncoder:
    """The released `sketch_encoder.ckpt` (weights only) or `.safetensors` (fp32 or fp16), built on
    the meta device and loaded strictly; `dtype` None keeps the file's."""
    path = Path(path)
    state = read_state_dict(path)
    state = {k.removeprefix("control_model."): v for k, v in state.items()}
    if "input_hint_block.0.weight" not in state:
        raise CheckpointError(
            f"{path.name} is not a ToonCrafter sketch encoder (no input_hint_block); use sketch_encoder.ckpt "
            "from Doubiiu/ToonCrafter or sketch_encoder-fp16.safetensors from Kijai/DynamiCrafter_pruned"
        )
    try:  # the names and shapes come from the file: any that describe no encoder end here, named
        config = config or infer_config({k: tuple(v.shape) for k, v in state.items()})
        with torch.device("meta"):
            encoder = SketchEncoder(config, operations=operations)
    except SHAPE_ERRORS as e:
        raise CheckpointError(
            f"{path.name} has an input_hint_block but its other weights describe no sketch encoder ({one_line(e)}); "
            "use the released sketch_encoder.ckpt or sketch_encoder-fp16.safetensors, or a conversion of them"
        ) from None
    check_keys(
        encoder.state_dict(), state, path.name, "the sketch encoder",
        "use the released sketch_encoder.ckpt / sketch_encoder-fp16.safetensors or a conversion of them",
    )
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    encoder.load_state_dict(state, strict=True, assign=True)
    encoder.requires_grad_(False).eval()
    log.info("loaded sketch encoder %s (%s)", path.name, next(encoder.parameters()).dtype)
    return encoder

