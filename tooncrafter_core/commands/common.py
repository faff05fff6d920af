"""What several verbs share: the --lora, --dtype, --device and sampling options, loading an
interpolation model in two halves, the sketch encoder and the progress bar."""

from __future__ import annotations

import argparse
import gc
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .. import pipeline
from ..frames import FIT_METHODS
from ..models.tooncrafter import ToonCrafter
from ..pipeline import check_size
from ..runtime import COMPUTE_DTYPES, compute_dtype_name, usable_device
from ..settings import RuntimeOptions, SamplingConfig
from ..sketches import DEFAULT_SCALE as SKETCH_SCALE
from ..weights import catalog, lora
from ..weights.checkpoint import WEIGHT_DTYPES, load_deferred_unet, load_for, move_model
from ..weights.lora import parse_spec
from ..weights.sketch_encoder import load_sketch_encoder

log = logging.getLogger(__name__)

# Where checkpoints and sketch encoders are downloaded when no file is named and the pack is not inside
# a ComfyUI (relative to the current folder).
MODELS_DIR = Path("models/tooncrafter")
MODELS_ENV = "TOONCRAFTER_MODELS"
# This package's folder's parent: the pack, which may sit in ComfyUI/custom_nodes/.
PACK_DIR = Path(__file__).absolute().parents[2]


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
    parser.add_argument("--vae-dtype", choices=sorted(COMPUTE_DTYPES),
                        help="the VAE's dtype, for its encode and decode (default: --dtype)")


def add_device_argument(parser: argparse.ArgumentParser, help: str = "where to compute: cuda (a GPU) or cpu") -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help=help)


def add_size_arguments(parser: argparse.ArgumentParser, role: str, frames_help: Optional[str], fitted: str) -> None:
    """--height and --width (default: the model's), --frames (unless `frames_help` is None) and --resize."""
    parser.add_argument("--height", type=int, help=f"{role} height (default: the model's, 320)")
    parser.add_argument("--width", type=int, help=f"{role} width (default: the model's, 512)")
    if frames_help is not None:
        parser.add_argument("--frames", type=int, help=frames_help)
    parser.add_argument("--resize", choices=FIT_METHODS, default="crop", help=f"how {fitted} are fitted to that size")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampler's settings. Those whose default depends on the model's kind default to None here and to
    the model's in `sampling_config` (the original scripts' values for that kind)."""
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default: 50, as the original)")
    parser.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale (default: 7.5)")
    parser.add_argument("--eta", type=float, default=1.0, help="DDIM eta, 0 deterministic (default: 1.0)")
    parser.add_argument("--fs", type=int, help="frame-rate condition, at least 1, smaller: larger motion; for DynamiCrafter "
                        "256 the frame stride, larger: larger motion (default: the model's: 10 ToonCrafter, 5 "
                        "DynamiCrafter interpolation, 24 / 10 / 3 DynamiCrafter 512 / 1024 / 256)")
    parser.add_argument("--guidance-rescale", type=float,
                        help="rescale of the guided prediction's std, 0-1 (default: the model's: 0.7, 0 for DynamiCrafter 256)")
    parser.add_argument("--spacing", choices=("uniform_trailing", "uniform"),
                        help="DDIM timestep spacing (default: the model's: uniform_trailing, uniform for DynamiCrafter 256)")
    parser.add_argument("--seed", type=int, default=123, help="seed of every random draw (default: 123)")


def sampling_config(args: argparse.Namespace, config=None, **extra) -> SamplingConfig:
    """`add_sampling_arguments`' values, the model's defaults where none was given. Without a model's config
    it checks the given values alone (before anything is loaded), with the defaults of SamplingConfig."""
    if config is None:
        plain = SamplingConfig()
        fs, rescale, spacing = plain.fs, plain.guidance_rescale, plain.timestep_spacing
    else:
        fs, rescale, spacing = config.fs_default, config.default_guidance_rescale, config.default_spacing
    return SamplingConfig(
        steps=args.steps,
        cfg_scale=args.cfg,
        eta=args.eta,
        fs=args.fs if args.fs is not None else fs,
        guidance_rescale=args.guidance_rescale if args.guidance_rescale is not None else rescale,
        timestep_spacing=args.spacing or spacing,
        **extra,
    )


def add_weight_dtype_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weight-dtype",
        choices=["auto", *WEIGHT_DTYPES],
        default="auto",
        help="dtype the weights are stored in (auto: the compute dtype); fp8 stores the UNet's Linear and "
        "Conv weights in 8 bits (half of fp16) and keeps everything else in the compute dtype",
    )


def output_size(args: argparse.Namespace, config) -> tuple[int, int]:
    """--height x --width, the model's size where not given, checked against the model."""
    height = args.height or config.pixel_size[0]
    width = args.width or config.pixel_size[1]
    check_size(height, width, config, "--width x --height")
    return height, width


def add_models_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", type=Path,
                        help=f"where released files are found and downloaded (default: ${MODELS_ENV}; else, with the "
                        "pack in ComfyUI/custom_nodes, that ComfyUI's models/tooncrafter or its extra_model_paths.yaml "
                        f"'tooncrafter' entry; else {MODELS_DIR} in the current folder)")


def default_models_dir(pack: Path = PACK_DIR, environ=os.environ) -> tuple[Path, str]:
    """The models folder when --models-dir is not given, and why: $TOONCRAFTER_MODELS; ComfyUI's folder
    when `pack` sits in its custom_nodes/ (so the CLI and ComfyUI share one copy of each file); else
    ./models/tooncrafter."""
    if environ.get(MODELS_ENV):
        return Path(environ[MODELS_ENV]), f"${MODELS_ENV}"
    comfy = pack.parent.parent
    if pack.parent.name == "custom_nodes" and (comfy / "folder_paths.py").is_file():
        listed = _extra_model_paths(comfy / "extra_model_paths.yaml")
        if listed:
            return listed[0], f"the 'tooncrafter' entry of {comfy / 'extra_model_paths.yaml'}"
        return comfy / "models" / "tooncrafter", f"the pack is in {comfy}'s custom_nodes"
    return MODELS_DIR, "the default, in the current folder"


def _extra_model_paths(path: Path) -> list[Path]:
    """The folders a ComfyUI extra_model_paths.yaml lists under `tooncrafter`, default sections first."""
    if not path.is_file():
        return []
    import yaml

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        log.warning("%s is not valid YAML; ignoring it", path)
        return []
    sections = sorted((c for c in config.values() if isinstance(c, dict)), key=lambda c: not c.get("is_default"))
    folders = []
    for section in sections:
        base = Path(os.path.expanduser(str(section.get("base_path", path.parent))))
        base = base if base.is_absolute() else path.parent / base
        for line in str(section.get("tooncrafter") or "").splitlines():
            if line.strip():
                folder = Path(os.path.expanduser(line.strip()))
                folders.append(folder if folder.is_absolute() else base / folder)
    return folders


def resolve_models_dir(args: argparse.Namespace) -> None:
    """Fill in --models-dir where a verb has it and it was not given, saying which folder and why."""
    if getattr(args, "models_dir", False) is None:
        args.models_dir, why = default_models_dir()
        log.info("models folder: %s (%s)", args.models_dir, why)


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


def add_sketch_arguments(parser: argparse.ArgumentParser, scale: float = SKETCH_SCALE, what: str = "the sketches") -> None:
    """--sketch-scale and --sketch-encoder."""
    parser.add_argument("--sketch-scale", type=float, default=scale,
                        help=f"how strongly {what} steer (0 = not at all, 1 = fully; default {scale})")
    parser.add_argument("--sketch-encoder", type=Path,
                        help="sketch encoder file; omitted: download sketch_encoder-fp16.safetensors into --models-dir")


def sketch_encoder(args: argparse.Namespace, dtype: torch.dtype, device: str):
    """The --sketch-encoder file (or the downloaded release) on `device`."""
    path = args.sketch_encoder or catalog.download(catalog.DEFAULT_SKETCH, args.models_dir)
    return load_sketch_encoder(path, dtype).to(device)


@dataclass
class InterpolationModel:
    """An interpolation model read without its UNet: the encoders run first, then `swap_encoders_for_unet`
    drops them and reads the UNet (with the --lora files merged), so a run never holds both."""

    model: ToonCrafter
    sampling: SamplingConfig
    device: str
    dtype: torch.dtype
    vae_dtype: Optional[torch.dtype]
    loras: list

    def options(self, **extra) -> RuntimeOptions:
        return RuntimeOptions(device=self.device, dtype=self.dtype, vae_dtype=self.vae_dtype, **extra)

    def swap_encoders_for_unet(self) -> None:
        self.model.cond_stage_model = None
        self.model.embedder = None
        gc.collect()
        load_deferred_unet(self.model, self.device)
        lora.merge(self.model.unet, self.loras)


def load_interpolation_model(args: argparse.Namespace, **sampling) -> InterpolationModel:
    """--ckpt (or the default release, downloaded) for `interpolate`-like verbs, checked to be an
    interpolation model, with its sampling settings (`sampling`: SamplingConfig fields from the verb)."""
    device = usable_device(args.device)
    ckpt = args.ckpt or catalog.download(catalog.DEFAULT, args.models_dir)
    dtype = COMPUTE_DTYPES[compute_dtype_name(args.dtype, device)]
    vae_dtype = COMPUTE_DTYPES[args.vae_dtype] if args.vae_dtype else None
    model = load_for(ckpt, dtype, WEIGHT_DTYPES.get(args.weight_dtype), defer_unet=True, vae_dtype=vae_dtype)
    pipeline.check_task(model.config, pipeline.INTERPOLATION)
    loras = lora.load_specs(args.lora, lora.adaptable_shapes(model.unet.state_dict()))
    return InterpolationModel(move_model(model, device), sampling_config(args, model.config, **sampling), device,
                              dtype, vae_dtype, loras)
