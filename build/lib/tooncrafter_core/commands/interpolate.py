"""`python -m tooncrafter_core interpolate --start A.png --end B.png --prompt "..." --out DIR`.

Any interpolation model of the family (ToonCrafter, DynamiCrafter's 512 interpolation model). Without
--ckpt the default released ToonCrafter checkpoint is downloaded into --models-dir (once).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from .. import frames, sequences, sketches
from ..errors import InputError
from .common import (
    StepProgress,
    add_device_argument,
    add_dtype_argument,
    add_lora_argument,
    add_models_dir_argument,
    add_sampling_arguments,
    add_size_arguments,
    add_sketch_arguments,
    add_weight_dtype_argument,
    check_out_dir,
    load_interpolation_model,
    output_size,
    sampling_config,
    sketch_encoder,
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
                   help="also interpolate the last keyframe back to the first: N*(T-1) frames that repeat seamlessly "
                   "(one keyframe: a clip that starts and ends on it, DynamiCrafter's loop)")
    i.add_argument("--trim", type=int, default=0,
                   help="in-betweens cut on each side of every keyframe two segments share, where the model tends "
                   "to hold the keyframe and the joined clip pauses (default: 0)")
    i.add_argument("--prompt", default="", help="what happens between the keyframes")
    i.add_argument("--prompts", nargs="+", metavar="PROMPT",
                   help="one prompt per segment (keyframe 1->2, 2->3, ..., last->first with --loop), instead of --prompt")
    i.add_argument("--out", type=Path, required=True, help="folder for frame_NNN.png and preview.gif")
    add_sampling_arguments(i)
    i.add_argument("--image-context-ratio", type=float, default=0.0,
                   help="the image context from the start keyframe (0, the original's) to the end keyframe's (1); "
                   "between, a blend (default: 0)")
    add_size_arguments(i, "output", "frames to generate (default: the model's)", "keyframes")
    add_dtype_argument(i)
    add_weight_dtype_argument(i)
    add_device_argument(i)
    i.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet and VAE decoder (the first run compiles for minutes; worth it on a GPU)")
    i.add_argument("--channels-last", action="store_true",
                   help="channels-last convolution weights (faster in fp16/bf16, slower in fp32 on the CPU)")
    i.add_argument("--fps", type=int, default=8, help="preview frame rate (default: 8)")
    add_lora_argument(i)
    i.add_argument("--no-second-decode", action="store_true", help="skip the original's second decode of the middle pair")
    i.add_argument("--sketches", type=Path, nargs="+", metavar="DIR_OR_FILE",
                   help="sketch guidance: a folder of sketch images, or the files, each named with the frame it is "
                   "for (sketch_05.png -> frame 5 of 0..T-1); dark lines on light paper; frames without one get an "
                   "empty sketch, which still goes through the encoder and steers them too (as in the reference). "
                   "One keyframe pair only")
    add_sketch_arguments(i)
    return i


def _keyframe_files(args: argparse.Namespace) -> list[Path]:
    if args.keyframes and (args.start or args.end):
        raise InputError("give either --keyframes or --start/--end, not both")
    if args.keyframes:
        return list(args.keyframes)
    if not (args.start and args.end):
        raise InputError("give the keyframes: --start A.png --end B.png, or --keyframes A.png B.png [C.png ...]")
    return [args.start, args.end]


def run(args: argparse.Namespace) -> int:
    # Inputs are checked and read before the model: a typo should not cost a checkpoint load.
    check_out_dir(args.out)
    images = [frames.load_image(path) for path in _keyframe_files(args)]
    segments = len(sequences.segment_pairs(len(images), args.loop))
    prompts = sequences.segment_prompts(args.prompts or args.prompt, segments)
    drawn = None
    if args.sketches:
        if segments != 1:
            raise InputError(f"--sketches guide one keyframe pair; these keyframes make {segments} segments")
        files, indices = sketches.sketch_files(args.sketches)
        drawn = ([frames.load_image(f) for f in files], indices)
    sequences.check_trim(args.frames or 16, args.trim)
    sampling_config(args, image_context_ratio=args.image_context_ratio)  # the settings checked before loading
    # The UNet is read only once every segment is conditioned and the encoders are gone: the run
    # never holds the text and image encoders (1 B parameters) and the UNet (1.4 B) together.
    loaded = load_interpolation_model(args, second_decode=not args.no_second_decode,
                                      image_context_ratio=args.image_context_ratio)
    model = loaded.model
    height, width = output_size(args, model.config)
    keyframes = torch.cat([frames.to_model(frames.fit(im, height, width, args.resize)) for im in images])
    guide = None
    if drawn is not None:
        hints = torch.cat([sketches.sketch_hint(im, height, width, args.resize) for im in drawn[0]], dim=2)
        guide = sketches.SketchGuide(sketch_encoder(args, loaded.dtype, loaded.device),
                                     sketches.place_sketches(hints, drawn[1], args.frames or model.config.frames),
                                     args.sketch_scale)
    progress = StepProgress(args.steps * segments)
    try:
        # Two keyframes are the one-segment sequence: the same draws as interpolate() with --seed.
        video = sequences.interpolate_sequence(
            model,
            keyframes,
            prompts,
            loaded.sampling,
            loaded.options(compile=args.compile, channels_last=args.channels_last),
            frames=args.frames,
            seed=args.seed,
            loop=args.loop,
            callback=progress,
            sketch=guide,
            on_conditioned=loaded.swap_encoders_for_unet,
            trim=args.trim,
        )
    finally:
        progress.close()
    written = frames.save_frames(frames.from_model(video).transpose(0, 1), args.out, args.fps)
    log.info("wrote %d frames and %s", len(written) - 1, written[-1])
    return 0
