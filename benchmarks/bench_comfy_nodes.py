"""Runs the pack's four nodes under ComfyUI's own model management (in-process, no server) with a
random-weight full-size fp16 checkpoint, and reports each node's time and peak VRAM.

    python3 benchmarks/bench_comfy_nodes.py --comfy PATH/TO/ComfyUI --budget-gib 8 --lowvram
    python3 benchmarks/bench_comfy_nodes.py --comfy PATH/TO/ComfyUI --sampler ipndm --scheduler beta --steps 16

`--sampler`: the stock KSampler on the loader's MODEL (with ToonCrafter Guidance Rescale 0.7) instead of
ToonCrafter Sampler (the original's DDIM, eta 1).

`--easycache T` / `--torch-compile BACKEND` put ComfyUI's EasyCache (reuse threshold T) / TorchCompileModel
before the stock KSampler (with `--sampler`); the summary counts the UNet passes.

`--budget-gib N` makes ComfyUI believe the card has about N GiB (it reserves the rest through
`--reserve-vram`), which is how a small card is emulated on a big one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

log = logging.getLogger("bench_comfy_nodes")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--comfy", type=Path, required=True, help="ComfyUI source tree")
    p.add_argument("--ckpt-dir", type=Path, default=Path(tempfile.gettempdir()) / "tc-bench-ckpt")
    p.add_argument("--budget-gib", type=float, help="emulate a card with this much memory")
    p.add_argument("--lowvram", action="store_true")
    p.add_argument("--novram", action="store_true")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", help="a ComfyUI sampler name: sample with the stock KSampler on the native MODEL")
    p.add_argument("--scheduler", default="simple", help="the KSampler's scheduler (with --sampler)")
    p.add_argument("--easycache", type=float, help="EasyCache's reuse threshold (with --sampler)")
    p.add_argument("--torch-compile", help="TorchCompileModel's backend (with --sampler), e.g. inductor")
    p.add_argument("--weight-dtype", default="auto")
    p.add_argument("--chunk", type=int, default=0, help="frames_per_chunk of the decode node (0: auto)")
    p.add_argument("--ckpt", help="an existing checkpoint in --ckpt-dir instead of a random full-size one")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=320)
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def make_checkpoint(folder: Path) -> str:
    """A random full-size fp16 checkpoint in the released key layout (built on the GPU)."""
    from bench_interpolate import build_model
    from safetensors.torch import save_file

    from tooncrafter_core.models.config import ModelConfig

    name = "tooncrafter_random-fp16.safetensors"
    path = folder / name
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        model = build_model(ModelConfig(), torch.float16, torch.device("cuda"), seed=0, std=0.02)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        del model
        torch.cuda.empty_cache()
        save_file(state, str(path))
        log.info("wrote %s (%.2f GB)", path, path.stat().st_size / 1e9)
    return name


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(args.comfy))
    from comfy.cli_args import args as comfy_args

    cuda = torch.cuda.is_available()
    if not cuda:
        comfy_args.cpu = True  # smoke test with a tiny --ckpt
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else 0.0
    if args.budget_gib:
        comfy_args.reserve_vram = max(0.0, total_gib - args.budget_gib)
    comfy_args.lowvram = args.lowvram
    comfy_args.novram = args.novram
    import comfy.model_management as mm
    import folder_paths

    spec = importlib.util.spec_from_file_location("tc_pack", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["tc_pack"] = pack
    spec.loader.exec_module(pack)
    from tc_pack.nodes import conditioning, decoder, loader, native, sampler

    import nodes as comfy_nodes

    ckpt = args.ckpt or make_checkpoint(args.ckpt_dir)
    folder_paths.add_model_folder_path("tooncrafter", str(args.ckpt_dir), is_default=True)

    from tooncrafter_core import frames

    def image(name: str) -> torch.Tensor:  # IMAGE: (1 H W 3) in [0, 1]
        return frames.load_image(REPO / "workflows" / "keyframes" / name).permute(0, 2, 3, 1)

    results = {}

    def run(label: str, fn):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        results[label] = {
            "seconds": round(time.perf_counter() - t0, 3),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else 0.0,
            "resident_gib_after": round(torch.cuda.memory_allocated() / 2**30, 2) if cuda else 0.0,
        }
        log.info("%-14s %7.2f s  peak %6.2f GiB  resident after %6.2f GiB", label, results[label]["seconds"],
                 results[label]["peak_gib"], results[label]["resident_gib_after"])
        return out

    model, native_model, _ = run("load", lambda: loader.LoadToonCrafterModel.execute(ckpt, args.weight_dtype).result)
    pos, neg, latent = run("conditioning", lambda: conditioning.ToonCrafterConditioning.execute(
        model, image("tooncrafter_start.png"), image("tooncrafter_end.png"), "a cartoon ball jumps", "", 10, args.width, args.height,
        "crop", 0).result)
    passes = []
    native_model.model.diffusion_model.register_forward_pre_hook(lambda module, inputs: passes.append(1))
    if args.sampler:
        rescaled = native.ToonCrafterGuidanceRescale.execute(native_model, 0.7).result[0]
        if args.easycache is not None:
            from comfy_extras.nodes_easycache import EasyCacheNode

            rescaled = EasyCacheNode.execute(rescaled, args.easycache, 0.15, 0.95, False).result[0]
        if args.torch_compile:
            from comfy_extras.nodes_torch_compile import TorchCompileModel

            rescaled = TorchCompileModel.execute(rescaled, args.torch_compile).result[0]

        def sample():
            return comfy_nodes.KSampler().sample(rescaled, 123, args.steps, 7.5, args.sampler, args.scheduler, pos, neg, latent)
    else:
        def sample():
            return sampler.ToonCrafterSampler.execute(
                model, pos, neg, latent, 123, args.steps, 7.5, 1.0, 0.7, "uniform_trailing").result
    run("sample (cold)", sample)
    passes.clear()
    (samples,) = run("sample (warm)", sample)
    warm_passes = len(passes)
    (video,) = run("decode", lambda: decoder.ToonCrafterDecode.execute(model, samples, args.chunk, True).result)
    arr = video.cpu().numpy()
    summary = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "card_gib": round(total_gib, 1),
        "budget_gib": args.budget_gib,
        "lowvram": args.lowvram,
        "novram": args.novram,
        "vram_state": str(mm.vram_state),
        "steps": args.steps,
        "sampler": args.sampler or "ToonCrafter Sampler (DDIM, eta 1)",
        "scheduler": args.scheduler if args.sampler else "uniform_trailing",
        "easycache": args.easycache,
        "torch_compile": args.torch_compile,
        "unet_passes_warm": warm_passes,
        "frames": list(arr.shape),
        "finite": bool(np.isfinite(arr).all()),
        "nodes": results,
        "peak_gib": max(r["peak_gib"] for r in results.values()),
    }
    log.info(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
