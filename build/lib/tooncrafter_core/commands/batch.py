"""`python -m tooncrafter_core batch SHOTS --out DIR [--ray [ADDRESS]]`: a whole shot list, resumable,
in this process (`shots.run_local`) or on a Ray cluster (`cluster.run_ray`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime import usable_device
from ..weights import catalog
from .common import add_device_argument, add_dtype_argument, add_lora_argument, add_models_dir_argument, check_out_dir
from .shots import FAILED, BatchError, ModelSpec, RenderSettings, read_shots, run_local


def add_parser(subparsers) -> argparse.ArgumentParser:
    b = subparsers.add_parser(
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
    add_models_dir_argument(b)
    add_dtype_argument(b)
    add_device_argument(b, help="device of the local run")
    add_lora_argument(b)
    b.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="render on Ray: alone, a local Ray on this machine; with an ADDRESS (e.g. ray://head:10001 or "
                   "auto), the cluster there. Needs the cluster extra: pip install '.[cluster]'")
    b.add_argument("--workers", type=int, help="Ray workers (default: one per GPU, else one per --cpus-per-worker CPUs)")
    b.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs per Ray worker on a cluster without GPUs")
    b.add_argument("--retries", type=int, default=2, help="times a shot is retried after its Ray worker died")
    return b


def run(args: argparse.Namespace) -> int:
    check_out_dir(args.out)
    shots = read_shots(args.shots)
    ckpt = args.ckpt.resolve() if args.ckpt else None
    name = ckpt.name if ckpt else catalog.DEFAULT.name
    shared = RenderSettings(name, args.dtype or "auto", tuple(f"{s.path.name}:{s.strength:g}" for s in args.lora))
    spec = ModelSpec(str(ckpt) if ckpt else None, str(args.models_dir), args.dtype,
                     tuple((str(s.path.resolve()), s.strength) for s in args.lora))
    if args.ray:
        from .cluster import run_ray

        address = None if args.ray == "local" else args.ray
        report = run_ray(shots, args.out, shared, spec, address, args.workers, args.cpus_per_worker, args.retries)
    else:
        device = usable_device(args.device)
        report = run_local(shots, args.out, shared, lambda: spec.load(device), device, spec.compute_dtype(device))
    if report.failed:
        raise BatchError(f"{len(report.failed)} shot(s) failed: {', '.join(report.failed)}; see {args.out / FAILED}")
    return 0
