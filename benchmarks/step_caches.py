"""ComfyUI's step caches (EasyCache, LazyCache) on the native ToonCrafter MODEL: UNet passes saved against
the change in the result, on the tiny fixture (its 4 frames at 64x64) and on the full-size architecture
with random weights (16 frames at 64x64, fp32), the setups of ode_error.py (CPU, in-process ComfyUI,
stock KSampler).

    python3 benchmarks/step_caches.py --comfy ../shared/comfyui --model tiny --json benchmarks/results/step_caches_tiny.json
    python3 benchmarks/step_caches.py --comfy ../shared/comfyui --model full --json benchmarks/results/step_caches_full.json

The change is the relative L2 distance of the final latents from the run without a cache (and, for the
tiny fixture, of the decoded frames, in 8-bit levels).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ode_error import TINY, full_setup, import_comfy, tiny_setup  # noqa: E402

log = logging.getLogger("step_caches")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--comfy", type=Path, required=True, help="ComfyUI source tree")
    p.add_argument("--model", choices=["tiny", "full"], default="tiny")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--tiny", type=Path, default=TINY, help="the tiny fixture")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--sampler", default="ipndm")
    p.add_argument("--scheduler", default="beta")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path, help="the table as Markdown")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import_comfy(args.comfy)
    from comfy_extras.nodes_easycache import EasyCacheNode, LazyCacheNode

    import nodes as comfy_nodes

    if args.model == "tiny":
        model, pos, neg, samples, (handle, lat) = tiny_setup(args.tiny)
    else:
        (model, pos, neg, samples), handle = full_setup(args.seed), None
        lat = {"samples": samples}
    passes = []
    model.model.diffusion_model.register_forward_pre_hook(lambda m, a: passes.append(1))

    def sample(patched):
        passes.clear()
        t0 = time.perf_counter()
        (out,) = comfy_nodes.KSampler().sample(patched, 7, args.steps, 7.5, args.sampler, args.scheduler, pos, neg, lat)
        return out, len(passes), time.perf_counter() - t0

    def frames(latent):
        if handle is None:
            return None
        from tc_pack.nodes.decoder import ToonCrafterDecode

        return (ToonCrafterDecode.execute(handle, latent, 0, True).result[0] * 255).round()

    base, base_passes, base_seconds = sample(model)
    base_frames = frames(base)
    rows = [{"cache": "none", "threshold": None, "passes": base_passes, "seconds": round(base_seconds, 2),
             "latent_change": 0.0, "max_level_change": 0 if handle is not None else None}]
    for name, node in (("EasyCache", EasyCacheNode), ("LazyCache", LazyCacheNode)):
        for threshold in args.thresholds:
            patched = node.execute(model, threshold, 0.15, 0.95, False).result[0]
            out, n, seconds = sample(patched)
            change = float((out["samples"] - base["samples"]).norm() / base["samples"].norm())
            levels = None
            if base_frames is not None:
                levels = int((frames(out) - base_frames).abs().max())
            rows.append({"cache": name, "threshold": threshold, "passes": n, "seconds": round(seconds, 2),
                         "latent_change": round(change, 5), "max_level_change": levels})
            log.info("%s %.2f: %d of %d passes, latents %.4f from the uncached run", name, threshold, n, base_passes, change)
    summary = {
        "model": args.model, "latent": list(samples.shape), "steps": args.steps, "sampler": args.sampler,
        "scheduler": args.scheduler, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "start_percent": 0.15, "end_percent": 0.95, "rows": rows,
    }
    log.info(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if args.markdown:
        args.markdown.write_text(markdown(summary))
    return 0


def markdown(summary: dict) -> str:
    """The rows as the table docs/native-model.md shows."""
    frames = summary["rows"][0]["max_level_change"] is not None
    head = "| cache | reuse threshold | UNet passes | final latents moved |" + (" frames moved (of 255 levels) |" if frames else "")
    lines = [head, "|---" * (5 if frames else 4) + "|"]
    for r in summary["rows"]:
        cells = [r["cache"], "—" if r["threshold"] is None else f"{r['threshold']:g}", f"{r['passes']} of {summary['steps']}",
                 f"{r['latent_change']:.3f}"]
        if frames:
            cells.append(str(r["max_level_change"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
