"""How many steps ComfyUI's samplers need on ToonCrafter: the error of each sampler x scheduler x step
count against a 500-step DDIM solution of the same noise (eta 0, the original's cfg 7.5 and guidance
rescale 0.7), through the native MODEL in ComfyUI (in-process).

    python3 benchmarks/ode_error.py --comfy ../shared/comfyui --model tiny --json results/ode_error_tiny.json \\
        --plot ../docs/ode_error_tiny.png --markdown /tmp/ode_tiny.md
    python3 benchmarks/ode_error.py --comfy ../shared/comfyui --model full --schedulers simple karras ...

`--model tiny`: the tiny reference fixture with its own encoders and the example keyframes (64x64, its
4 frames); `full`: the released architecture with random N(0, 0.02^2) weights, 16 frames at 64x64 and
random contexts. The reference is Euler with the `simple` scheduler at 500 steps, which is the
original's DDIM with eta 0 at 500 trailing steps ending at t = 0's scale (the original's own last
step keeps the previous step's scale; that difference is listed as `original DDIM`). Error: relative
L2 distance of the final latents. UNet passes count guided model evaluations (cond and uncond in
one batch are one pass). Results are written after every run and a rerun skips what is done.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
TINY = Path(os.environ.get("TOONCRAFTER_SHARED", REPO.parent / "shared")) / "reference" / "tiny-4f-64x64"
sys.path.insert(0, str(REPO / "benchmarks"))

log = logging.getLogger("ode_error")

SAMPLERS = ("euler", "heun", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc", "deis", "ipndm", "res_multistep")
SCHEDULERS = ("simple", "karras", "exponential", "sgm_uniform", "beta")
STEPS = (4, 6, 8, 12, 16, 25, 50)
REFERENCE_STEPS = 500
BASELINE = ("euler", "simple", 50)  # DDIM-50 with eta 0
# Sampler options that make a sampler deterministic (eta 0).
OPTIONS = {"dpmpp_2m_sde": {"eta": 0.0}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--comfy", type=Path, required=True, help="ComfyUI source tree")
    p.add_argument("--model", choices=("tiny", "full"), default="tiny")
    p.add_argument("--tiny", type=Path, default=TINY,
                   help="the tiny fixture (model.safetensors, config.yaml, TC-Tiny.json)")
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    p.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS))
    p.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--guidance-rescale", type=float, default=0.7)
    p.add_argument("--reference-steps", type=int, default=REFERENCE_STEPS)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", type=Path, required=True, help="results, updated after every run (resumed from)")
    p.add_argument("--plot", type=Path, help="PNG: error against UNet passes, one line per sampler, scheduler simple")
    p.add_argument("--markdown", type=Path, help="the results as Markdown tables")
    return p.parse_args(argv)


def import_comfy(path: Path):
    sys.path.insert(0, str(path))
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = not torch.cuda.is_available()
    spec = importlib.util.spec_from_file_location("tc_pack", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["tc_pack"] = pack
    spec.loader.exec_module(pack)
    return pack


def tiny_setup(fixture: Path):
    """The tiny fixture through the pack's loader and Conditioning node, with the example keyframes:
    (MODEL, positive, negative, latents, (the loaded model, the LATENT with the keyframes' features))."""
    import folder_paths
    from tc_pack.nodes import managed_model
    from tc_pack.nodes.conditioning import condition
    from tc_pack.tooncrafter_core import frames

    folder = Path(tempfile.mkdtemp())
    for src, dst in (("model.safetensors", "tiny.safetensors"), ("config.yaml", "tiny.yaml"), ("TC-Tiny.json", "TC-Tiny.json")):
        shutil.copy(fixture / src, folder / dst)
    folder_paths.add_model_folder_path("tooncrafter", str(folder), is_default=True)
    handle = managed_model.load("tiny.safetensors", "fp32")
    keys = REPO / "workflows" / "keyframes"
    start, end = (frames.load_image(keys / f"tooncrafter_{n}.png").movedim(1, -1) for n in ("start", "end"))
    positive, negative, latent = condition(handle, start, end, "a cheerful ball jumps and waves", "", 10, 64, 64, "crop", 0)
    return handle.unet, positive, negative, latent["samples"], (handle, latent)


def full_setup(seed: int):
    """The released UNet with random weights, random contexts and keyframe posterior, 16 frames 64x64."""
    import comfy.model_management as mm
    from bench_interpolate import init_random_
    from tc_pack.nodes import native_model
    from tc_pack.nodes.types import FS_KEY, POSTERIOR_KEY
    from tc_pack.tooncrafter_core.keyframes import KeyframeEncoding
    from tc_pack.tooncrafter_core.models.config import ModelConfig
    from tc_pack.tooncrafter_core.models.schedule import Schedule
    from tc_pack.tooncrafter_core.models.unet import UNetModel

    config = ModelConfig()
    with torch.device("meta"):
        unet = UNetModel(config.unet)
    unet.to_empty(device="cpu")
    with torch.no_grad():
        init_random_(unet, seed, 0.02, torch.device("cpu"))
    unet.requires_grad_(False).eval()
    device = mm.get_torch_device()
    patcher = native_model.native_patcher(unet, Schedule.from_config(config.schedule), config.vae.scale_factor,
                                          torch.float32, device, mm.unet_offload_device())
    g = torch.Generator().manual_seed(seed)
    frames, tokens = config.frames, config.unet.text_tokens + config.frames * config.unet.image_tokens_per_frame
    posterior = KeyframeEncoding(torch.randn(1, 2, 4, 8, 8, generator=g), torch.full((1, 2, 4, 8, 8), -4.0), [])
    options = {FS_KEY: torch.tensor([10]), POSTERIOR_KEY: posterior}
    positive = [[torch.randn(1, tokens, config.unet.context_dim, generator=g), dict(options)]]
    negative = [[torch.randn(1, tokens, config.unet.context_dim, generator=g), dict(options)]]
    return patcher, positive, negative, torch.zeros(1, 4, frames, 8, 8)


class Runner:
    """Samples the same noise with any sampler, scheduler and step count; counts guided evaluations."""

    def __init__(self, patcher, positive, negative, latent, seed, cfg, rescale):
        import comfy.sample
        from tc_pack.nodes import native_model

        self.model = native_model.with_guidance_rescale(patcher, rescale)
        self.passes = 0

        def count(args):
            self.passes += 1
            return args["denoised"]

        self.model.set_model_sampler_post_cfg_function(count)
        self.positive, self.negative, self.latent, self.seed, self.cfg = positive, negative, latent, seed, cfg
        self.noise = comfy.sample.prepare_noise(latent, seed)

    def run(self, sampler_name: str, scheduler: str, steps: int, sampler=None, sigmas=None) -> dict:
        import comfy.samplers

        if sigmas is None:
            sigmas = comfy.samplers.KSampler(self.model, steps, self.model.load_device, sampler_name, scheduler).sigmas
        if sampler is None:
            options = OPTIONS.get(sampler_name)
            sampler = comfy.samplers.ksampler(sampler_name, options) if options else comfy.samplers.sampler_object(sampler_name)
        self.passes = 0
        began = time.perf_counter()
        with torch.inference_mode():
            latent = comfy.samplers.sample(
                self.model, self.noise, self.positive, self.negative, self.cfg, self.model.load_device, sampler, sigmas,
                model_options=self.model.model_options, latent_image=self.latent, disable_pbar=True, seed=self.seed,
            )
        return {"latent": latent.float().cpu(), "passes": self.passes, "seconds": round(time.perf_counter() - began, 3)}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    import_comfy(args.comfy)
    import comfy.samplers
    from tc_pack.nodes import native_model
    from tc_pack.tooncrafter_core.sampling import ddim_timesteps

    patcher, positive, negative, latent = (tiny_setup(args.tiny)[:4] if args.model == "tiny" else full_setup(args.seed))
    runner = Runner(patcher, positive, negative, latent, args.seed, args.cfg, args.guidance_rescale)
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    settings = {"model": args.model, "seed": args.seed, "cfg": args.cfg, "guidance_rescale": args.guidance_rescale,
                "reference_steps": args.reference_steps, "latent_shape": list(latent.shape)}
    if results.get("settings") not in (None, settings):
        raise SystemExit(f"{args.json} holds results for other settings {results['settings']}; give another --json")
    results["settings"] = settings
    results.setdefault("runs", {})
    reference_file = args.json.with_suffix(".reference.safetensors")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    if reference_file.is_file():
        reference = load_file(str(reference_file))["latent"]
    else:
        log.info("reference: euler, simple, %d steps", args.reference_steps)
        out = runner.run("euler", "simple", args.reference_steps)
        reference = out["latent"]
        save_file({"latent": reference.contiguous()}, str(reference_file))
        results["reference"] = {"passes": out["passes"], "seconds": out["seconds"]}
    levels = patcher.model.levels

    def save():
        args.json.write_text(json.dumps(results, indent=1) + "\n")

    for steps in args.steps:
        key = f"original_ddim|trailing|{steps}"
        if key not in results["runs"]:
            sigmas = levels.ddim_sigmas(ddim_timesteps(steps, "uniform_trailing"))
            out = runner.run("ddim", "trailing", steps, sampler=native_model.ddim_sampler(0.0), sigmas=sigmas)
            results["runs"][key] = {"error": relative_error(out["latent"], reference), "passes": out["passes"],
                                    "seconds": out["seconds"]}
            save()
    for scheduler in args.schedulers:
        for sampler in args.samplers:
            for steps in args.steps:
                key = f"{sampler}|{scheduler}|{steps}"
                if key in results["runs"]:
                    continue
                try:
                    out = runner.run(sampler, scheduler, steps)
                    entry = {"error": relative_error(out["latent"], reference), "passes": out["passes"],
                             "seconds": out["seconds"], "finite": bool(torch.isfinite(out["latent"]).all())}
                except Exception as e:  # a failing combination is a result to report, not a reason to stop
                    entry = {"failed": f"{type(e).__name__}: {e}"}
                results["runs"][key] = entry
                log.info("%-14s %-12s %3d steps: %s", sampler, scheduler, steps, entry)
                save()
    assert set(comfy.samplers.KSampler.SCHEDULERS) >= set(args.schedulers)
    save()
    if args.plot:
        plot(results, args.plot)
    if args.markdown:
        args.markdown.write_text(markdown(results))
    return 0


def _runs(results: dict, sampler: str, scheduler: str) -> list[tuple[int, dict]]:
    out = []
    for key, run in results["runs"].items():
        name, sched, steps = key.split("|")
        if name == sampler and sched == scheduler and "error" in run:
            out.append((int(steps), run))
    return sorted(out)


def plot(results: dict, path: Path, scheduler: str = "simple", extra: tuple[tuple[str, str], ...] = (("ipndm", "beta"),)) -> Path:
    """Error against UNet passes: every sampler with `scheduler`, the original's DDIM, and `extra`
    (sampler, scheduler) pairs where they were run."""
    from tc_pack.tooncrafter_core.charts import line_chart

    samplers = sorted({k.split("|")[0] for k in results["runs"] if k.split("|")[1] == scheduler})
    series = {s: [(r["passes"], r["error"]) for _, r in _runs(results, s, scheduler)] for s in samplers}
    series["original DDIM (trailing)"] = [(r["passes"], r["error"]) for _, r in _runs(results, "original_ddim", "trailing")]
    for sampler, sched in extra:
        if _runs(results, sampler, sched):
            series[f"{sampler}, {sched}"] = [(r["passes"], r["error"]) for _, r in _runs(results, sampler, sched)]
    model = "tiny fixture" if results["settings"]["model"] == "tiny" else "full-size architecture, random weights"
    return line_chart(
        series, path, f"ToonCrafter ({model}): error vs {results['settings']['reference_steps']}-step DDIM, "
        f"scheduler {scheduler}, eta 0, cfg {results['settings']['cfg']:g}",
        "UNet passes (guided evaluations)", "relative error of the final latents", log_x=True, log_y=True,
    )


def markdown(results: dict) -> str:
    """Per scheduler: a table of errors (rows samplers, columns step counts), and the fewest steps at
    which each sampler's error is at most DDIM-50's."""
    runs = results["runs"]
    base = runs.get("|".join(map(str, BASELINE)), {}).get("error")
    steps = sorted({int(k.split("|")[2]) for k in runs})
    lines = []
    if base is not None:
        lines.append(f"DDIM-50 (euler, simple, 50 steps) error: **{base:.2e}**\n")
    schedulers = [s for s in SCHEDULERS if any(k.split("|")[1] == s for k in runs)]
    for scheduler in ["trailing", *schedulers]:
        samplers = [s for s in (["original_ddim"] if scheduler == "trailing" else SAMPLERS)
                    if any(k.startswith(f"{s}|{scheduler}|") for k in runs)]
        if not samplers:
            continue
        title = "the original's DDIM (its last step)" if scheduler == "trailing" else f"scheduler `{scheduler}`"
        lines += [f"**{title}**\n", "| sampler | " + " | ".join(f"{s}" for s in steps) + " | steps to match DDIM-50 |",
                  "|---|" + "---|" * (len(steps) + 1)]
        for sampler in samplers:
            cells, match = [], None
            for s in steps:
                run = runs.get(f"{sampler}|{scheduler}|{s}")
                if run is None:
                    cells.append("")
                elif "failed" in run:
                    cells.append("failed")
                else:
                    cells.append(f"{run['error']:.1e}")
                    if match is None and base is not None and run["error"] <= base:
                        match = s
            lines.append(f"| {sampler} | " + " | ".join(cells) + f" | {match if match is not None else '> ' + str(steps[-1])} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
