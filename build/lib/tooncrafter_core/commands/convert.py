"""`python -m tooncrafter_core convert IN OUT.safetensors --dtype fp16 [--parts unet|all] [--prune-encoders] [--lora P[:S]]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime import COMPUTE_DTYPES
from ..weights.convert import PARTS, convert
from .common import add_lora_argument


def add_parser(subparsers) -> argparse.ArgumentParser:
    c = subparsers.add_parser(
        "convert",
        help="write a checkpoint in another precision, without the encoders, or with LoRAs merged in",
        description="Convert a ToonCrafter checkpoint (any released layout) into one .safetensors file that "
        "this CLI and the ComfyUI loader read back. The noise-schedule buffers stay fp32 whatever --dtype says.",
    )
    c.add_argument("input", type=Path, help="checkpoint to convert (.ckpt or .safetensors)")
    c.add_argument("output", type=Path, help="the converted .safetensors (the yaml beside the input is copied beside it)")
    c.add_argument("--dtype", choices=sorted(COMPUTE_DTYPES), required=True, help="precision of the converted weights")
    c.add_argument("--parts", choices=PARTS, default="all",
                   help="unet: convert only the UNet (1.44 B of 2.57 B parameters), the rest as in the file; all: everything")
    c.add_argument("--prune-encoders", action="store_true",
                   help="drop the OpenCLIP text and image encoders (1 B parameters); the ComfyUI workflow then "
                   "takes them from CLIPLoader / CLIPVisionLoader")
    add_lora_argument(c)
    return c


def run(args: argparse.Namespace) -> int:
    convert(args.input, args.output, COMPUTE_DTYPES[args.dtype], args.parts, args.prune_encoders, args.lora)
    return 0
