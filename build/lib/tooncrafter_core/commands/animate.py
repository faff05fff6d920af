"""`python -m tooncrafter_core animate --image X.png --prompt "..." --out DIR`: a clip from one image with
an image-to-video model of the family (DynamiCrafter 256, 512 or 1024).

Without --ckpt the DynamiCrafter 512 release is downloaded into --models-dir (once).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from .. import frames, pipeline
from ..runtime import COMPUTE_DTYPES, compute_dtype_name, usable_device
from ..settings import RuntimeOptions
from ..weights import catalog, lora
from ..weights.checkpoint import WEIGHT_DTYPES, load_for
from . import common

log = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    a = subparsers.add_parser(
        "animate",
        help="animate one image with an image-to-video model (DynamiCrafter)",
        description="A clip from one image and a prompt with DynamiCrafter's image-to-video models; the "
        "interpolation models (ToonCrafter, DynamiCrafter 512 interpolation) take `interpolate`.",
    )
    a.add_argument("--ckpt", type=Path, help=f"checkpoint file; omitted: download {catalog.DEFAULT_IMAGE_TO_VIDEO.name}")
    common.add_models_dir_argument(a)
    a.add_argument("--image", type=Path, required=True, help="the first frame")
    a.add_argument("--prompt", default="", help="what happens in the clip")
    a.add_argument("--out", type=Path, required=True, help="folder for frame_NNN.png and preview.gif")
    common.add_sampling_arguments(a)
    common.add_size_arguments(a, "output", "frames to generate (default: the model's, 16)", "the image is")
    common.add_dtype_argument(a)
    common.add_weight_dtype_argument(a)
    common.add_device_argument(a)
    a.add_argument("--perframe-ae", action="store_true",
                   help="decode one frame at a time (the original's perframe_ae: less memory, the same frames)")
    a.add_argument("--fps", type=int, default=8, help="preview frame rate (default: 8)")
    common.add_lora_argument(a)
    return a


def run(args: argparse.Namespace) -> int:
    common.check_out_dir(args.out)
    image = frames.load_image(args.image)
    common.sampling_config(args)  # the settings checked before loading
    device = usable_device(args.device)
    ckpt = args.ckpt or catalog.download(catalog.DEFAULT_IMAGE_TO_VIDEO, args.models_dir)
    dtype = COMPUTE_DTYPES[compute_dtype_name(args.dtype, device)]
    vae_dtype = COMPUTE_DTYPES[args.vae_dtype] if args.vae_dtype else None
    model = load_for(ckpt, dtype, WEIGHT_DTYPES.get(args.weight_dtype), vae_dtype=vae_dtype)
    pipeline.check_task(model.config, pipeline.IMAGE_TO_VIDEO)
    lora.merge(model.unet, lora.load_specs(args.lora, lora.adaptable_shapes(model.unet.state_dict())))
    model = model.to(device)
    height, width = common.output_size(args, model.config)
    first = frames.to_model(frames.fit(image, height, width, args.resize))
    options = RuntimeOptions(device=device, dtype=dtype, vae_dtype=vae_dtype, decode_chunk=1 if args.perframe_ae else None)
    progress = common.StepProgress(args.steps)
    try:
        video = pipeline.animate(
            model, first, args.prompt, common.sampling_config(args, model.config), options, frames=args.frames,
            generator=torch.Generator("cpu").manual_seed(args.seed), callback=progress,
        )
    finally:
        progress.close()
    written = frames.save_frames(frames.from_model(video[0]).transpose(0, 1), args.out, args.fps)
    log.info("wrote %d frames and %s", len(written) - 1, written[-1])
    return 0
