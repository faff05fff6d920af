"""Command line: `python -m tooncrafter_core interpolate --start A.png --end B.png --prompt "..." --out DIR`.

Without --ckpt the default released checkpoint is downloaded into --models-dir (once).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from . import catalog, convert, evaluate, frames, lora, pipeline, sketch
from .config import RuntimeOptions, SamplingConfig
from .loading import WEIGHT_DTYPES, CheckpointError, load_for
from .pipeline import InputError
from .runtime import COMPUTE_DTYPES, compute_dtype_name, usable_device

log = logging.getLogger("tooncrafter_core")

DTYPES = COMPUTE_DTYPES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tooncrafter_core", description="ToonCrafter keyframe interpolation")
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser(
        "interpolate",
        help="draw the in-between frames of two keyframes, or of a sequence of keyframes",
        description="Interpolate --start to --end, or every consecutive pair of --keyframes into one clip "
        "(segment i, keyframe i+1 to i+2, uses seed --seed + i, so a segment can be redone alone).",
    )
    i.add_argument("--ckpt", type=Path, help="checkpoint file; omitted: download the default release")
    i.add_argument("--models-dir", type=Path, default=Path("models/tooncrafter"), help="where downloads go")
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
    i.add_argument("--fs", type=int, default=10, help="frame stride conditioning (smaller: larger motion)")
    i.add_argument("--guidance-rescale", type=float, default=0.7)
    i.add_argument("--spacing", choices=("uniform_trailing", "uniform"), default="uniform_trailing")
    i.add_argument("--seed", type=int, default=123)
    i.add_argument("--frames", type=int, help="frames to generate (default: the model's)")
    i.add_argument("--height", type=int, help="output height (default: the model's, 320)")
    i.add_argument("--width", type=int, help="output width (default: the model's, 512)")
    i.add_argument("--resize", choices=frames.FIT_METHODS, default="crop", help="how keyframes are fitted")
    i.add_argument("--dtype", choices=sorted(DTYPES), help="compute dtype (default fp16 on CUDA, fp32 on CPU)")
    i.add_argument(
        "--weight-dtype",
        choices=["auto", *WEIGHT_DTYPES],
        default="auto",
        help="dtype the weights are stored in (auto: the compute dtype); fp8 stores the UNet's Linear and "
        "Conv weights in 8 bits (half of fp16) and keeps everything else in the compute dtype",
    )
    i.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    i.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet and VAE decoder (the first run compiles for minutes; worth it on a GPU)")
    i.add_argument("--channels-last", action="store_true",
                   help="channels-last convolution weights (faster in fp16/bf16, slower in fp32 on the CPU)")
    i.add_argument("--fps", type=int, default=8, help="preview frame rate")
    lora.add_argument(i)
    i.add_argument("--no-second-decode", action="store_true", help="skip the original's second decode of the middle pair")
    i.add_argument("--sketches", type=Path, nargs="+", metavar="DIR_OR_FILE",
                   help="sketch guidance: a folder of sketch images, or the files, each named with the frame it is "
                   "for (sketch_05.png -> frame 5 of 0..T-1); dark lines on light paper; frames without one are "
                   "left free. One keyframe pair only")
    i.add_argument("--sketch-scale", type=float, default=sketch.DEFAULT_SCALE,
                   help="how strongly the sketches steer (0 = not at all, 1 = fully; default 0.6)")
    i.add_argument("--sketch-encoder", type=Path,
                   help="sketch encoder file; omitted: download sketch_encoder-fp16.safetensors into --models-dir")

    c = sub.add_parser(
        "convert",
        help="write a checkpoint in another precision, without the encoders, or with LoRAs merged in",
        description="Convert a ToonCrafter checkpoint (any released layout) into one .safetensors file that "
        "this CLI and the ComfyUI loader read back. The noise-schedule buffers stay fp32 whatever --dtype says.",
    )
    c.add_argument("input", type=Path, help="checkpoint to convert (.ckpt or .safetensors)")
    c.add_argument("output", type=Path, help="the converted .safetensors (the yaml beside the input is copied beside it)")
    c.add_argument("--dtype", choices=sorted(DTYPES), required=True, help="precision of the converted weights")
    c.add_argument("--parts", choices=convert.PARTS, default="all",
                   help="unet: convert only the UNet (1.44 B of 2.57 B parameters), the rest as in the file; all: everything")
    c.add_argument("--prune-encoders", action="store_true",
                   help="drop the OpenCLIP text and image encoders (1 B parameters); the ComfyUI workflow then "
                   "takes them from CLIPLoader / CLIPVisionLoader")
    lora.add_argument(c)
    evaluate.add_parser(sub)

    b = sub.add_parser(
        "batch",
        help="render a whole shot list (JSONL or CSV), resumable, locally or on a Ray cluster",
        description="Render every shot of SHOTS into OUT/<id>/ (frame_NNN.png, preview.gif, shot.json). Each line: "
        "id, keyframes (2 or more paths; ';'-separated in CSV) or start/end, prompt (or prompts), seed, and any of "
        "steps, cfg, eta, fs, guidance_rescale, spacing, frames, width, height, resize, loop, second_decode. Bad lines "
        "are reported with their numbers before anything runs; done shots (shot.json, same settings) are skipped; "
        "failures go to OUT/failed.jsonl while the rest go on.",
    )
    b.add_argument("shots", type=Path, help="the shot list: .jsonl (one JSON object a line) or .csv (a header row)")
    b.add_argument("--out", type=Path, required=True, help="output folder, one subfolder per shot")
    b.add_argument("--ckpt", type=Path, help="checkpoint file (on every Ray worker); omitted: download the default release")
    b.add_argument("--models-dir", type=Path, default=Path("models/tooncrafter"), help="where downloads go")
    b.add_argument("--dtype", choices=sorted(DTYPES), help="compute dtype (default fp16 on CUDA, fp32 on CPU)")
    b.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device of the local run")
    lora.add_argument(b)
    b.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="render on Ray: alone, a local Ray on this machine; with an ADDRESS (e.g. ray://head:10001 or "
                   "auto), the cluster there. Needs the cluster extra: pip install '.[cluster]'")
    b.add_argument("--workers", type=int, help="Ray workers (default: one per GPU, else one per --cpus-per-worker CPUs)")
    b.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs per Ray worker on a cluster without GPUs")
    b.add_argument("--retries", type=int, default=2, help="times a shot is retried after its Ray worker died")
    return p


class _Progress:
    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="sampling", unit="step")

    def __call__(self, i, x, x0):
        self.bar.update(1)

    def close(self):
        self.bar.close()


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


def run_interpolate(args: argparse.Namespace) -> Path:
    # Inputs are checked and read before the model: a typo should not cost a checkpoint load.
    images = [frames.load_image(path) for path in _keyframe_files(args)]
    segments = len(pipeline.segment_pairs(len(images), args.loop))
    prompts = pipeline.segment_prompts(args.prompts or args.prompt, segments)
    sketches = None
    if args.sketches:
        if segments != 1:
            raise InputError(f"--sketches guide one keyframe pair; these keyframes make {segments} segments")
        files, indices = sketch.sketch_files(args.sketches)
        sketches = ([frames.load_image(f) for f in files], indices)
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
    dtype = DTYPES[compute_dtype_name(args.dtype, device)]
    model = load_for(ckpt, dtype, WEIGHT_DTYPES.get(args.weight_dtype))
    lora.merge_specs(model, args.lora)
    model = model.to(device)
    height = args.height or model.config.pixel_size[0]
    width = args.width or model.config.pixel_size[1]
    _check_size(height, width, pipeline.size_multiple(model.config))
    keyframes = torch.cat([frames.to_model(frames.fit(im, height, width, args.resize)) for im in images])
    guide = None
    if sketches is not None:
        encoder_file = args.sketch_encoder or catalog.download(catalog.DEFAULT_SKETCH, args.models_dir)
        encoder = sketch.load_sketch_encoder(encoder_file, dtype).to(device)
        hints = torch.cat([sketch.sketch_hint(im, height, width, args.resize) for im in sketches[0]], dim=2)
        guide = sketch.SketchGuide(encoder, sketch.place_sketches(hints, sketches[1], args.frames or model.config.frames),
                                   args.sketch_scale)
    progress = _Progress(args.steps * segments)
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
        )
    finally:
        progress.close()
    written = frames.save_frames(frames.from_model(video).transpose(0, 1), args.out, args.fps)
    log.info("wrote %d frames and %s", len(written) - 1, written[-1])
    return args.out


def run_convert(args: argparse.Namespace) -> Path:
    convert.convert(args.input, args.output, DTYPES[args.dtype], args.parts, args.prune_encoders, args.lora)
    return args.output


def run_batch(args: argparse.Namespace) -> Path:
    from . import batch

    shots = batch.read_shots(args.shots)
    ckpt = args.ckpt.resolve() if args.ckpt else None
    name = ckpt.name if ckpt else catalog.DEFAULT.name
    shared = batch.RenderSettings(name, args.dtype or "auto", tuple(f"{s.path.name}:{s.strength:g}" for s in args.lora))
    spec = batch.ModelSpec(str(ckpt) if ckpt else None, str(args.models_dir), args.dtype,
                           tuple((str(s.path.resolve()), s.strength) for s in args.lora))
    if args.ray:
        from .cluster import run_ray

        address = None if args.ray == "local" else args.ray
        report = run_ray(shots, args.out, shared, spec, address, args.workers, args.cpus_per_worker, args.retries)
    else:
        device = usable_device(args.device)
        report = batch.run_local(shots, args.out, shared, lambda: spec.load(device), device, spec.compute_dtype(device))
    if report.failed:
        raise batch.BatchError(f"{len(report.failed)} shot(s) failed: {', '.join(report.failed)}; see {args.out / batch.FAILED}")
    return args.out


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(argv)
    commands = {"interpolate": run_interpolate, "convert": run_convert, "evaluate": evaluate.run, "batch": run_batch}
    try:
        commands[args.command](args)
    except (InputError, CheckpointError, catalog.DownloadError, lora.LoraError, ValueError) as e:
        log.error("error: %s", e)
        return 2
    except FloatingPointError as e:
        log.error("error: %s (--dtype bf16 or --dtype fp32 on this command line)", e)
        return 3
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130  # 128 + SIGINT, as a shell reports a Ctrl-C
    return 0


if __name__ == "__main__":
    sys.exit(main())
