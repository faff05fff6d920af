"""What several verbs share: the --lora, --dtype and --device options and the sampling progress bar."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..frames import FIT_METHODS
from ..runtime import COMPUTE_DTYPES
from ..weights.lora import parse_spec

# Where checkpoints and sketch encoders are downloaded when no file is named.
MODELS_DIR = Path("models/tooncrafter")


def add_lora_argument(parser: argparse.ArgumentParser) -> None:
    """The repeatable `--lora PATH[:STRENGTH]` option (a list of `weights.lora.LoraSpec`)."""
    parser.add_argument(
        "--lora",
        type=parse_spec,
        action="append",
        default=[],
        metavar="PATH[:STRENGTH]",
        help="a LoRA for the UNet merged into its weights (repeatable; strength 1 if omitted): a PEFT folder or "
        "adapter_model.safetensors with its adapter_config.json beside it, or a kohya/ComfyUI-style .safetensors",
    )


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=sorted(COMPUTE_DTYPES), help="compute dtype (default fp16 on CUDA, fp32 on CPU)")


def add_device_argument(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help=help)


def add_size_arguments(parser: argparse.ArgumentParser, role: str, frames_help: str, fitted: str) -> None:
    """--height and --width (default: the model's), --frames and --resize."""
    parser.add_argument("--height", type=int, help=f"{role} height (default: the model's, 320)")
    parser.add_argument("--width", type=int, help=f"{role} width (default: the model's, 512)")
    parser.add_argument("--frames", type=int, help=frames_help)
    parser.add_argument("--resize", choices=FIT_METHODS, default="crop", help=f"how {fitted} are fitted to that size")


def add_models_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR, help="where downloads go")


def check_out_dir(path: Path, flag: str = "--out") -> None:
    """An output folder must be a folder (or not exist yet): checked before any work is done."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a folder: give a folder (it is created if missing)")


class StepProgress:
    """A tqdm bar over sampling steps, usable as a sampling callback."""

    def __init__(self, total: int, desc: str = "sampling"):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="step")

    def __call__(self, i, x, x0):
        self.bar.update(1)

    def close(self):
        self.bar.close()
