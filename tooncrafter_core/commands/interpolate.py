"""`python -m tooncrafter_core interpolate --start A.png --end B.png --prompt "..." --out DIR`.

Without --ckpt the default released checkpoint is downloaded into --models-dir (once).
"""

from __future__ import annotations

import argparse
import gc
import logging
from pathlib import Path

import torch

from .. import frames, pipeline, sketches
from ..pipeline import InputError
from ..runtime import COMPUTE_DTYPES, compute_dtype_name, usable_device
from ..settings import RuntimeOptions, SamplingConfig
from ..weights import catalog, lora
from ..weights.checkpoint import WEIGHT_DTYPES, load_deferred_unet, load_for, move_model
from ..weights.sketch_encoder import load_sketch_encoder
from .common import (
    StepProgress,
    add_device_argument,
    add_dtype_argument,
    add_lora_argument,
    add_models_dir_argument,
    add_size_arguments,
    check_out_dir,
)

log = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    i = subparsers.add_parser(
        "interpolate",
        help="draw the in-between frames of two keyframes, or of a sequence of keyframes",
        description="Interpolate --start to --end, or every consecutive pair of --keyframes into one clip "
        "(segment i, keyframe i+1 to i+2, uses seed --seed + i, so a segment can be redone alone).",
    )
    i.add_argument("--ckpt", type=Path, help="checkpoint file; omitted: download the default release")
    add_models_dir_argument(i)
    i.add_argument("--start", type=Path, help="first keyframe image")
    i.add_argument("--end", type=Path, help="last keyframe image")
    i.add_argument("--keyframes", type=Path, nargs="+", metavar="IMAGE",
                   help="two or more keyframes in order, instead of --start/--end: one continuous clip of "
                   "(N-1)*(T-1)+1 frames, each shared keyframe once")
    i.add_argument("--loop", action="store_true",
                   help="also interpolate the last keyframe back to the first: N*(T-1) frames that repeat seamlessly")
    i.add_argument("--prompt", default="", help="what happens between the keyframes")
    i.add_argument("--prompts", nargs="+", metavar="PROMPT",
                   help="one prompt per segment (keyframe 1->2, 2->3, ..., last->first with --loop), instead of --prompt")
    i.add_argument("--out", type=Path, required=True, help="folder for frame_NNN.png and preview.gif")
    i.add_argument("--steps", type=int, default=50)
    i.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale")
    i.add_argument("--eta", type=float, default=1.0, help="DDIM eta (0 deterministic)")
    i.add_argument("--fs", type=int, default=10, help="frame stride conditioning, at least 1 (smaller: larger motion)")
    i.add_argument("--guidance-rescale", type=float, default=0.7)
    i.add_argument("--spacing", choices=("uniform_trailing", "uniform"), default="uniform_trailing")
    i.add_argument("--seed", type=int, default=123)
    add_size_arguments(i, "output", "frames to generate (default: the model's)", "keyframes")
    add_dtype_argument(i)
    i.add_argument(
        "--weight-dtype",
        choices=["auto", *WEIGHT_DTYPES],
        default="auto",
        help="dtype the weights are stored in (auto: the compute dtype); fp8 stores the UNet's Linear and "
        "Conv weights in 8 bits (half of fp16) and keeps everything else in the compute dtype",
    )
    add_device_argument(i)
    i.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet and VAE decoder (the first run compiles for minutes; worth it on a GPU)")
    i.add_argument("--channels-last", action="store_true",
                   help="channels-last convolution weights (faster in fp16/bf16, slower in fp32 on the CPU)")
    i.add_argument("--fps", type=int, default=8, help="preview frame rate")
    add_lora_argument(i)
    i.add_argument("--no-second-decode", action="store_true", help="skip the original's second decode of the middle pair")
    i.add_argument("--sketches", type=Path, nargs="+", metavar="DIR_OR_FILE",
                   help="sketch guidance: a folder of sketch images, or the files, each named with the frame it is "
                   "for (sketch_05.png -> frame 5 of 0..T-1); dark lines on light paper; frames without one get an "
                   "empty sketch, which still goes through the encoder and steers them too (as in the reference). "
                   "One keyframe pair only")
    i.add_argument("--sketch-scale", type=float, default=sketches.DEFAULT_SCALE,
                   help="how strongly the sketches steer (0 = not at all, 1 = fully; default 0.6)")
    i.add_argument("--sketch-encoder", type=Path,
                   help="sketch encoder file; omitted: download sketch_encoder-fp16.safetensors into --models-dir")
    return i


def _keyframe_files(args: argparse.Namespace) -> list[Path]:
    if args.keyframes and (args.start or args.end):
        raise InputError("give either --keyframes or --start/--end, not both")
    if args.keyframes:
        return list(args.keyframes)
    if not (args.start and args.end):
        raise InputError("give the keyframes: --start A.png --end B.png, or --keyframes A.png B.png [C.png ...]")
    return [args.start, args.end]


def _check_size(height: int, width: int, multiple: int) -> None:
    if height % multiple or width % multiple:
        near = [max(multiple, round(n / multiple) * multiple) for n in (height, width)]
        raise InputError(
            f"--height {height} --width {width}: both must be multiples of {multiple} for this model; "
            f"use e.g. --height {near[0]} --width {near[1]}"
        )


def _swap_encoders_for_unet(model, loras, device) -> None:
    model.cond_stage_model = None
    model.embedder = None
    gc.collect()
    load_deferred_unet(model, device)
    lora.merge(model.unet, loras)


def run(args: argparse.Namespace) -> int:
    # Inputs are checked and read before the model: a typo should not cost a checkpoint load.
    check_out_dir(args.out)
    images = [frames.load_image(path) for path in _keyframe_files(args)]
    segments = len(pipeline.segment_pairs(len(images), args.loop))
    prompts = pipeline.segment_prompts(args.prompts or args.prompt, segments)
    drawn = None
    if args.sketches:
        if segments != 1:
            raise InputError(f"--sketches guide one keyframe pair; these keyframes make {segments} segments")
        files, indices = sketches.sketch_files(args.sketches)
        drawn = ([frames.load_image(f) for f in files], indices)
    sampling = SamplingConfig(
        steps=args.steps,
        cfg_scale=args.cfg,
        eta=args.eta,
        fs=args.fs,
        guidance_rescale=args.guidance_rescale,
        timestep_spacing=args.spacing,
        second_decode=not args.no_second_decode,
    )
    device = usable_device(args.device)
    ckpt = args.ckpt
    if ckpt is None:
        ckpt = catalog.download(catalog.DEFAULT, args.models_dir)
    dtype = COMPUTE_DTYPES[compute_dtype_name(args.dtype, device)]
    # The UNet is read only once every segment is conditioned and the encoders are gone: the run
    # never holds the text and image encoders (1 B parameters) and the UNet (1.4 B) together.
    model = load_for(ckpt, dtype, WEIGHT_DTYPES.get(args.weight_dtype), defer_unet=True)
    loras = lora.load_specs(args.lora, lora.adaptable_shapes(model.unet.state_dict()))
    model = move_model(model, device)
    height = args.height or model.config.pixel_size[0]
    width = args.width or model.config.pixel_size[1]
    _check_size(height, width, pipeline.size_multiple(model.config))
    keyframes = torch.cat([frames.to_model(frames.fit(im, height, width, args.resize)) for im in images])
    guide = None
    if drawn is not None:
        encoder_file = args.sketch_encoder or catalog.download(catalog.DEFAULT_SKETCH, args.models_dir)
        encoder = load_sketch_encoder(encoder_file, dtype).to(device)
        hints = torch.cat([sketches.sketch_hint(im, height, width, args.resize) for im in drawn[0]], dim=2)
        guide = sketches.SketchGuide(
            encoder, sketches.place_sketches(hints, drawn[1], args.frames or model.config.frames), args.sketch_scale
        )
    progress = StepProgress(args.steps * segments)
    try:
        # Two keyframes are the one-segment sequence: the same draws as interpolate() with --seed.
        video = pipeline.interpolate_sequence(
            model,
            keyframes,
            prompts,
            sampling,
            RuntimeOptions(device=device, dtype=dtype, compile=args.compile, channels_last=args.channels_last),
            frames=args.frames,
            seed=args.seed,
            loop=args.loop,
            callback=progress,
            sketch=guide,
            on_conditioned=lambda: _swap_encoders_for_unet(model, loras, device),
        )
    finally:
        progress.close()
    written = frames.save_frames(frames.from_model(video).transpose(0, 1), args.out, args.fps)
    log.info("wrote %d frames and %s", len(written) - 1, written[-1])
    return 0
