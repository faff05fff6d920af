"""`python -m tooncrafter_core colorize --line-art DIR --keys DIR --prompt "..." --out DIR`: a line-art
shot coloured from coloured keys (see docs/colorization.md).

Each finished segment's frames are written at once and recorded in colorize.json in --out, so a run that
fails or is stopped keeps them and `--resume` skips them.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from .. import colorize, files, frames
from ..errors import InputError
from . import common

log = logging.getLogger(__name__)

MANIFEST = "colorize.json"


def add_parser(subparsers) -> argparse.ArgumentParser:
    c = subparsers.add_parser(
        "colorize",
        help="colour a line-art shot from coloured keys",
        description="Colour every frame of --line-art from the coloured --keys: the shot splits at the keys into "
        "segments, each a sketch-guided interpolation between its two keys with the line art of every frame as "
        "sketches (segment i uses --seed + i). Keys come back exactly as given.",
    )
    c.add_argument("--ckpt", type=Path, help="checkpoint file; omitted: download the default release")
    common.add_models_dir_argument(c)
    c.add_argument("--line-art", type=Path, nargs="+", required=True, metavar="DIR_OR_FILE",
                   help="the shot's line art: a folder of images (in name order) or the files in order; dark lines "
                   "on white or off-white paper, or on a transparent layer")
    c.add_argument("--keys", type=Path, nargs="+", required=True, metavar="DIR_OR_FILE",
                   help="coloured keys, each named with the line-art frame it colours (key_00.png -> frame 0, counting "
                   "from 0): at least the first and the last frame")
    c.add_argument("--prompt", default="", help="what the shot shows")
    c.add_argument("--out", type=Path, required=True,
                   help="folder for frame_NNN.png, preview.gif and strip.png (line art above the result)")
    common.add_sampling_arguments(c)
    common.add_sketch_arguments(c, colorize.DEFAULT_SCALE, "the line art")
    c.add_argument("--max-segment", type=int, default=colorize.DEFAULT_MAX_SEGMENT,
                   help=f"most frames between two keys, both included (default: {colorize.DEFAULT_MAX_SEGMENT}, the "
                   "length the model was trained on)")
    c.add_argument("--single-key", action="store_true",
                   help="exploratory: colour from one key, segment by segment outwards from it (not validated)")
    c.add_argument("--line-overlay", action="store_true", help="multiply the line art over the colours (crisp lines)")
    c.add_argument("--color-match", action="store_true",
                   help="match each coloured frame's colours to its keys' (needs color-matcher)")
    c.add_argument("--resume", action="store_true",
                   help=f"skip the segments a previous run with the same settings finished ({MANIFEST} in --out)")
    common.add_size_arguments(c, "output", None, "line art and keys")
    common.add_dtype_argument(c)
    common.add_weight_dtype_argument(c)
    common.add_device_argument(c)
    c.add_argument("--fps", type=int, default=8, help="preview frame rate (default: 8)")
    common.add_lora_argument(c)
    c.add_argument("--no-second-decode", action="store_true", help="skip the original's second decode of the middle pair")
    return c


def _settings(args: argparse.Namespace, line_files: list[Path], key_files: dict[int, Path]) -> dict:
    """What decides the frames: a resumed run must have the same."""
    skip = {"run", "command", "out", "resume", "device", "line_art", "keys", "fps"}
    settings = {k: str(v) for k, v in sorted(vars(args).items()) if k not in skip}
    settings["line_art"] = [str(p.resolve()) for p in line_files]
    settings["keys"] = {str(k): str(p.resolve()) for k, p in sorted(key_files.items())}
    return settings


def _finished(args: argparse.Namespace, settings: dict, segments: list[colorize.Segment]) -> dict[int, torch.Tensor]:
    """The segments a previous run finished, read back from --out (with --resume)."""
    manifest = args.out / MANIFEST
    if not args.resume or not manifest.exists():
        return {}
    recorded = json.loads(manifest.read_text())
    if recorded.get("settings") != settings:
        changed = sorted(k for k in {*settings, *recorded.get("settings", {})}
                         if settings.get(k) != recorded.get("settings", {}).get(k))
        raise InputError(f"--resume: {args.out} was made with other settings ({', '.join(changed)}): run without "
                         "--resume to start over, or give another --out")
    done = {}
    for segment in segments:
        if segment.index in recorded["done"]:
            paths = [args.out / frames.frame_name(k) for k in segment.frames]
            if all(p.exists() for p in paths):
                done[segment.index] = torch.cat([frames.load_image(p) for p in paths])
    return done


def run(args: argparse.Namespace) -> int:
    # Every input is read and every segment planned before the model: a missing key should not cost a load.
    common.check_out_dir(args.out)
    line_files = frames.image_files(args.line_art, "line-art")
    line_art = colorize.prepare_line_art([frames.load_image(f, paper=True) for f in line_files],
                                         [f.name for f in line_files])
    key_paths, indices = frames.numbered_files(args.keys, "key")
    key_files = dict(zip(indices, key_paths))
    keys = {k: frames.load_image(f, paper=True) for k, f in key_files.items()}
    options = colorize.ColorizeOptions(args.seed, args.sketch_scale, args.max_segment, args.single_key,
                                       args.line_overlay, args.color_match)
    segments = colorize.plan_segments(len(line_files), indices, options)
    if args.color_match:
        colorize.check_color_match()
    common.sampling_config(args)  # the settings checked before loading
    settings = _settings(args, line_files, key_files)
    finished = _finished(args, settings, segments)
    for index in finished:
        log.info("%s: finished before, skipped (--resume)", segments[index].name())

    loaded = common.load_interpolation_model(args, second_decode=not args.no_second_decode)
    height, width = common.output_size(args, loaded.model.config)
    bars: list[common.StepProgress] = []

    def progress(segment: colorize.Segment):
        if bars:
            bars.pop().close()
        bars.append(common.StepProgress(args.steps, f"{segment.name()} of {len(segments)}"))
        return bars[-1]

    done = sorted(finished)
    manifest = args.out / MANIFEST

    def keep(segment: colorize.Segment, made: torch.Tensor) -> None:
        frames.save_images(made, [args.out / frames.frame_name(k) for k in segment.frames])
        done.append(segment.index)
        files.write_text(manifest, json.dumps({"settings": settings, "done": sorted(done)}, indent=1))

    runner = colorize.PipelineRunner(
        loaded.model, common.sketch_encoder(args, loaded.dtype, loaded.device), args.prompt, loaded.sampling,
        loaded.options(), args.sketch_scale, loaded.swap_encoders_for_unet, progress,
    )
    manifest.parent.mkdir(parents=True, exist_ok=True)
    files.write_text(manifest, json.dumps({"settings": settings, "done": done}, indent=1))
    try:
        shot = colorize.colorize(runner, line_art, keys, (height, width), options, args.resize, finished, keep)
    except (InputError, FloatingPointError, torch.OutOfMemoryError) as e:
        if done:
            raise type(e)(f"{e} (the {len(done)} finished segment(s) are in {args.out}: run again with --resume "
                          "to skip them)") from e
        raise
    finally:
        for bar in bars:
            bar.close()
    line = frames.fit(line_art, height, width, args.resize)
    frames.save_gif(shot, args.out / "preview.gif", args.fps)
    frames.save_strip([line, shot], args.out / "strip.png")
    log.info("coloured %d frames in %d segment(s): %s, preview.gif, strip.png", len(shot), len(segments), args.out)
    return 0
