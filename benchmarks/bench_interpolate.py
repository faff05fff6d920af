"""Benchmark of the whole ToonCrafter interpolation (`tooncrafter_core.pipeline.interpolate`) with
random weights: text + image encoders, VAE encode, DDIM with batched classifier-free guidance,
and the dual-reference decode (with the original's second decode).

The model is built on the meta device, materialised on the target device with `to_empty` and
filled there with deterministic small normal values (norm layers: weight 1, bias 0), so no CPU
initialisation of the 2.6 B parameters happens. Timings and memory do not depend on the values;
only the finiteness checks do, and random weights say little about real-weight overflow.

Per dtype:
  1. one warm-up `interpolate` with a few steps;
  2. `--runs` timed `interpolate` calls; the step callback records a CUDA event (no sync) after
     every DDIM step, giving ms per step, the time before the first step ends and the time after
     the last (decode + copy to the CPU);
  3. one phased run through the stage functions in the same order as `interpolate`, with the
     peak-memory counter reset before each phase: conditioning (CLIP text + vision + Resampler),
     VAE encode, sampling (`--phase-steps` steps; peak memory does not depend on the step count),
     and decode (timed `--runs` times: the decode alone);
  4. with `--profile`, one guided DDIM step under torch.profiler (the top operators by their own
     device time, each with its share of the step) and under FlopCounterMode (its FLOPs, hence the
     TFLOP/s the timed runs' median step reached and, with a known or given `--peak-tflops`, the
     fraction of the card's dense peak).

Examples:
  python3 benchmarks/bench_interpolate.py --device cuda --dtypes fp16,bf16 --runs 2 --json bench.json
  python3 benchmarks/bench_interpolate.py --tiny ../shared/reference/tiny-4f-64x64 --device cpu --dtypes fp32 --steps 3
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from check_targets import op_lines  # noqa: E402

from tooncrafter_core import frames as tc_frames  # noqa: E402
from tooncrafter_core.conditioning import contexts  # noqa: E402
from tooncrafter_core.decoding import decode  # noqa: E402
from tooncrafter_core.guidance import Conditioning, sample  # noqa: E402
from tooncrafter_core.keyframes import encode_keyframes, initial_latents  # noqa: E402
from tooncrafter_core.models import encoders as tc_encoders  # noqa: E402
from tooncrafter_core.models.config import ModelConfig, from_original_yaml  # noqa: E402
from tooncrafter_core.models.init import normal_init_  # noqa: E402
from tooncrafter_core.models.ops import CastWeights  # noqa: E402
from tooncrafter_core.models.tooncrafter import ToonCrafter  # noqa: E402
from tooncrafter_core.pipeline import interpolate  # noqa: E402
from tooncrafter_core.runtime import prepare  # noqa: E402
from tooncrafter_core.settings import RuntimeOptions, SamplingConfig  # noqa: E402
from tooncrafter_core.weights.checkpoint import FP8_DTYPES, UNET_PREFIX, WEIGHT_DTYPES, unet_matrix_keys  # noqa: E402

log = logging.getLogger("bench_interpolate")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
UNET_STORAGE = {"auto": None, **{name: d for name, d in WEIGHT_DTYPES.items() if d in FP8_DTYPES}}
GIB = 1024**3
# Dense (no sparsity) fp16/bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets (SXM parts),
# matched against torch.cuda.get_device_name(); --peak-tflops overrides.
DENSE_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "RTX 4090": 165.0,
                     "RTX 3090": 71.0, "A10G": 70.0}
PROFILE_TOP = 15


# ---------------------------------------------------------------------------------------------
# Device helpers


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class Clock:
    """Marks on the device's timeline: CUDA events (no host sync) on CUDA, perf_counter elsewhere."""

    def __init__(self, dev: torch.device):
        self.cuda = dev.type == "cuda"

    def mark(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def seconds(self, a, b) -> float:
        """Seconds between two marks (call after a sync)."""
        return a.elapsed_time(b) / 1000.0 if self.cuda else b - a


class Memory:
    """Peak-allocation bookkeeping; all None off CUDA."""

    def __init__(self, dev: torch.device):
        self.dev = dev
        self.cuda = dev.type == "cuda"

    def allocated(self) -> Optional[int]:
        return torch.cuda.memory_allocated(self.dev) if self.cuda else None

    def reset_peak(self) -> None:
        if self.cuda:
            sync(self.dev)
            torch.cuda.reset_peak_memory_stats(self.dev)

    def peak(self) -> Optional[int]:
        if not self.cuda:
            return None
        sync(self.dev)
        return torch.cuda.max_memory_allocated(self.dev)


def gib(n: Optional[int]) -> Optional[float]:
    return None if n is None else round(n / GIB, 3)


# ---------------------------------------------------------------------------------------------
# Model with random weights


@torch.no_grad()
def init_random_(model: nn.Module, seed: int, std: float, dev: torch.device) -> None:
    """Deterministic small normal values on the parameters' device; norm layers weight 1, bias 0."""
    normal_init_(model, std, torch.Generator(device=dev).manual_seed(seed))


def build_model(
    config: ModelConfig, dtype: torch.dtype, dev: torch.device, seed: int, std: float, unet_storage: Optional[torch.dtype] = None
) -> ToonCrafter:
    """Random weights in `dtype`; `unet_storage` (fp8) stores the UNet's Linear/Conv weights as the
    loader's `unet_weight_dtype` does, computing through casting layers."""
    with torch.device("meta"):
        model = ToonCrafter(config, dtype=dtype, device=None, unet_operations=CastWeights if unet_storage else None)
    model.to_empty(device=dev)
    init_random_(model, seed, std, dev)
    if unet_storage is not None:
        for key in unet_matrix_keys(model):
            layer = model.unet.get_submodule(key[len(UNET_PREFIX) : -len(".weight")])
            layer.weight = nn.Parameter(layer.weight.detach().to(unet_storage), requires_grad=False)
    model.requires_grad_(False)
    model.eval()
    return model


def param_bytes(module: Optional[nn.Module]) -> int:
    if module is None:
        return 0
    return sum(p.numel() * p.element_size() for p in module.parameters())


def param_count(module: Optional[nn.Module]) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


COMPONENTS = {
    "unet": "model",
    "vae": "first_stage_model",
    "text_encoder": "cond_stage_model",
    "image_encoder": "embedder",
    "resampler": "image_proj_model",
}


# ---------------------------------------------------------------------------------------------
# Tokenizer


def ensure_tokenizer() -> str:
    """open_clip's tokenizer if it imports; else a deterministic stand-in (timing only, warned)."""
    try:
        tc_encoders.tokenize(["probe"])

        return "open_clip"
    except Exception as e:  # ImportError, or a broken optional dependency inside open_clip
        log.warning("open_clip tokenizer unavailable (%s: %s); using a stand-in tokenizer", type(e).__name__, e)

    def stand_in(prompts, context_length: int = 77) -> torch.Tensor:
        out = torch.zeros(len(prompts), context_length, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids = [49406] + [256 + (sum(map(ord, w)) * 131) % 49000 for w in p.split()][: context_length - 2] + [49407]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    tc_encoders.tokenize = stand_in
    return "stand-in"


# ---------------------------------------------------------------------------------------------
# Runs


def keyframes(h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two smooth-ish random keyframes (1 3 H W) in [-1, 1] (CPU, as a host would hand them in)."""
    g = torch.Generator("cpu").manual_seed(seed)
    out = []
    for _ in range(2):
        coarse = torch.rand(1, 3, max(1, h // 16), max(1, w // 16), generator=g) * 2 - 1
        fine = torch.rand(1, 3, h, w, generator=g) * 0.2 - 0.1
        img = nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) + fine
        out.append(img.clamp(-1, 1))
    return out[0], out[1]


def make_generator(kind: str, dev: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(dev if kind == "device" else "cpu").manual_seed(seed)


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def timed_interpolate(model, start, end, args, sampling, options, dev, gen_seed) -> dict:
    """One `interpolate` call: wall time plus per-step device timings from the callback."""
    clock = Clock(dev)
    marks = []
    last_x = {}

    def callback(i, x, x0):
        marks.append(clock.mark())
        if i == sampling.steps - 1:
            last_x["x"] = x

    generator = make_generator(args.generator, dev, gen_seed)
    model.negative_contexts.clear()  # every measured run pays for it, as a one-clip run (and the original) does
    sync(dev)
    t0 = time.perf_counter()
    m0 = clock.mark()
    error = None
    try:
        video = interpolate(
            model, start, end, args.prompt, sampling, options,
            frames=args.frames, generator=generator, callback=callback,
        )
    except FloatingPointError as e:  # interpolate's own finiteness check of the decoded video
        video, error = None, str(e)
    m1 = clock.mark()
    sync(dev)
    total = time.perf_counter() - t0
    steps_s = [clock.seconds(a, b) for a, b in zip(marks, marks[1:])]
    rec = {
        "total_s": total,
        "until_first_step_end_s": clock.seconds(m0, marks[0]) if marks else None,
        "after_last_step_s": clock.seconds(marks[-1], m1) if marks else None,
        "step_ms": [s * 1000 for s in steps_s],
        "latents_finite": finite(last_x["x"]) if "x" in last_x else None,
        "video_finite": video is not None and finite(video),
    }
    if error:
        rec["error"] = error
    if video is not None:
        rec["video_shape"] = list(video.shape)
        rec["video_absmax"] = float(video.abs().max())
    return rec


def phased_run(model, start, end, args, sampling, options, dev, step_ms: Optional[float]) -> dict:
    """The stages of `interpolate`, in its order, with peak memory reset before each one; with
    `--profile`, one more step of the same sampling, profiled (`step_ms`: the timed runs' step)."""
    clock, mem = Clock(dev), Memory(dev)
    dtype, b = options.dtype, start.shape[0]
    out: dict = {"phases": {}, "nonfinite": []}

    def phase(name, fn):
        mem.reset_peak()
        base = mem.allocated()
        sync(dev)
        t0 = time.perf_counter()
        res = fn()
        sync(dev)
        out["phases"][name] = {
            "seconds": time.perf_counter() - t0,
            "peak_gib": gib(mem.peak()),
            "peak_over_start_gib": gib(None if base is None else mem.peak() - base),
        }
        return res

    generator = make_generator(args.generator, dev, args.seed)
    model.negative_contexts.clear()  # every measured run pays for it, as a one-clip run (and the original) does
    with torch.inference_mode():
        s = start.to(dev, torch.float32)
        e = end.to(dev, torch.float32)

        def encoders():
            return contexts(model, s.to(dtype), [args.prompt] * b, sampling.cfg_scale != 1.0, dev, dtype)

        context, uncond = phase("conditioning", encoders)

        def vae_encode():
            enc = encode_keyframes(model.vae, s.to(dtype), e.to(dtype))
            concat, x_T = initial_latents(enc, args.frames, model.config, generator, dev)
            return enc, concat, x_T

        enc, concat, x_T = phase("vae_encode", vae_encode)
        fs = torch.full((b,), sampling.fs, dtype=torch.long, device=dev)
        cond = Conditioning(context, uncond, concat.to(dtype), fs)
        short = dataclasses.replace(sampling, steps=args.phase_steps)
        samples = phase(
            "sampling",
            lambda: sample(model.unet, model.schedule, cond, short, x_T.to(dtype), generator=generator),
        )
        out["phases"]["sampling"]["steps"] = args.phase_steps
        if args.profile:
            out["profile"] = profile_step(model, cond, x_T.to(dtype), args, sampling, dev, step_ms)

        decode_s = []
        video = None
        for i in range(max(1, args.runs)):
            m0 = clock.mark()
            video = phase(
                "decode",
                lambda: decode(
                    model.vae, samples, enc.refs, sampling.second_decode, options.decode_chunk, options.decode_overlap
                )[1],
            )
            m1 = clock.mark()
            sync(dev)
            decode_s.append(clock.seconds(m0, m1))
        out["phases"]["decode"]["seconds_runs"] = decode_s

        for name, t in (
            ("text+image context", context),
            ("unconditional context", uncond),
            ("keyframe latents (mean)", enc.mean),
            ("sampled latents", samples),
            ("decoded video", video),
        ):
            if t is not None and not finite(t):
                out["nonfinite"].append(name)
                log.warning("[%s] non-finite values in %s", args_dtype_name(dtype), name)
        out["video_absmax"] = float(video.float().abs().max())
    return out


def dense_peak_tflops(dev: torch.device, given: Optional[float]) -> Optional[float]:
    if given is not None or dev.type != "cuda":
        return given
    name = torch.cuda.get_device_name(dev)
    return next((v for k, v in DENSE_PEAK_TFLOPS.items() if k in name), None)


def profile_step(model, cond: Conditioning, x_T: torch.Tensor, args, sampling, dev, step_ms: Optional[float]) -> dict:
    """Where one guided DDIM step's time goes: its FLOPs and the top operators by own device time."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    one = dataclasses.replace(sampling, steps=1)

    def step():
        sample(model.unet, model.schedule, cond, one, x_T, generator=make_generator(args.generator, dev, 0))
        sync(dev)

    with torch.inference_mode():
        step()  # the shapes' kernels chosen before the profiled call
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=activities) as prof:
            step()
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    total_us = sum(getattr(e, key) for e in events)
    top = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:PROFILE_TOP]
    flops = counter.get_total_flops()
    achieved = flops / (step_ms / 1000) / 1e12 if step_ms else None
    peak = dense_peak_tflops(dev, args.peak_tflops)
    out = {
        "flops_per_step": flops,
        "profiled_step_ms": total_us / 1000,
        "timed_step_ms": step_ms,
        "achieved_tflops": achieved,
        "dense_peak_tflops": peak,
        "fraction_of_peak": achieved / peak if achieved is not None and peak else None,
        "time_kind": key,
        "top_ops": [
            {"name": e.key, "ms": getattr(e, key) / 1000, "share": getattr(e, key) / total_us, "calls": e.count}
            for e in top
        ],
    }
    log.info("[%s] one step: %.1f GFLOP, %s TFLOP/s at the timed step%s; top operators by own time:\n%s",
             args_dtype_name(x_T.dtype), flops / 1e9, fmt(achieved, ".2f"),
             f" = {out['fraction_of_peak']:.1%} of the {peak:.0f} TFLOP/s dense peak" if out["fraction_of_peak"] else "",
             "\n".join(op_lines(out["top_ops"])))
    return out


def args_dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def bench_dtype(name: str, config: ModelConfig, args, dev: torch.device) -> dict:
    dtype = DTYPES[name]
    mem = Memory(dev)
    res: dict = {"dtype": name}

    mem.reset_peak()
    before = mem.allocated()
    t0 = time.perf_counter()
    model = build_model(config, dtype, dev, args.seed, args.init_std, UNET_STORAGE[args.weight_dtype])
    sync(dev)
    res["build_s"] = time.perf_counter() - t0
    res["weights_gib"] = gib(param_bytes(model))
    res["weights_allocated_gib"] = gib(None if before is None else mem.allocated() - before)
    res["components"] = {
        k: {"params_m": round(param_count(getattr(model, a)) / 1e6, 2), "gib": gib(param_bytes(getattr(model, a)))}
        for k, a in COMPONENTS.items()
    }
    log.info(
        "[%s] built %.2f B params (%.2f GiB) on %s in %.1f s",
        name, param_count(model) / 1e9, res["weights_gib"], dev, res["build_s"],
    )

    start, end = keyframes(args.height, args.width, args.seed)
    options = RuntimeOptions(
        device=dev, dtype=dtype, decode_chunk=args.decode_chunk, decode_overlap=args.decode_overlap, compile=args.compile,
        compile_mode=args.compile_mode, channels_last=args.channels_last,
    )
    prepare(model, options)
    sampling = SamplingConfig(steps=args.steps, second_decode=not args.no_second_decode)

    # Warm-up (kernels, cuBLAS/cuDNN heuristics, allocator).
    warm = dataclasses.replace(sampling, steps=args.warmup_steps)
    t0 = time.perf_counter()
    w = timed_interpolate(model, start, end, args, warm, options, dev, args.seed)
    res["warmup_s"] = time.perf_counter() - t0
    log.info("[%s] warm-up (%d steps): %.2f s", name, args.warmup_steps, res["warmup_s"])
    if not w["video_finite"]:
        log.warning("[%s] warm-up output not finite: %s", name, w.get("error", "non-finite video"))

    runs = []
    for i in range(args.runs):
        mem.reset_peak()
        r = timed_interpolate(model, start, end, args, sampling, options, dev, args.seed + 1 + i)
        r["peak_gib"] = gib(mem.peak())
        runs.append(r)
        step_ms = statistics.median(r["step_ms"]) if r["step_ms"] else float("nan")
        log.info(
            "[%s] run %d: %.2f s total, %.1f ms/step (median), %.2f s before the first step ended, "
            "%.2f s after the last (decode + copy), peak %s GiB",
            name, i + 1, r["total_s"], step_ms, r["until_first_step_end_s"] or 0.0,
            r["after_last_step_s"] or 0.0, r["peak_gib"],
        )
        if not (r["video_finite"] and r["latents_finite"] is not False):
            log.warning(
                "[%s] run %d: non-finite output (latents finite: %s, video finite: %s) %s",
                name, i + 1, r["latents_finite"], r["video_finite"], r.get("error", ""),
            )
    res["runs"] = runs

    all_steps = [s for r in runs for s in r["step_ms"]]
    median_step_ms = statistics.median(all_steps) if all_steps else None
    ph = phased_run(model, start, end, args, sampling, options, dev, median_step_ms)
    res.update(ph)
    for pname, p in ph["phases"].items():
        log.info("[%s] phase %-12s %.3f s, peak %s GiB", name, pname, p["seconds"], p["peak_gib"])

    # Summary numbers.
    totals = [r["total_s"] for r in runs]
    res["summary"] = {
        "total_s_mean": statistics.mean(totals) if totals else None,
        "total_s_min": min(totals) if totals else None,
        "step_ms_median": median_step_ms,
        "step_ms_mean": statistics.mean(all_steps) if all_steps else None,
        "sampling_s_est": statistics.mean(all_steps) * args.steps / 1000 if all_steps else None,
        "decode_s_min": min(ph["phases"]["decode"]["seconds_runs"]),
        "after_last_step_s_mean": statistics.mean(r["after_last_step_s"] for r in runs) if runs else None,
        "peak_run_gib": max((r["peak_gib"] for r in runs if r["peak_gib"] is not None), default=None),
        "all_finite": all(r["video_finite"] and r["latents_finite"] is not False for r in runs) and not ph["nonfinite"],
    }

    # The process's peak so far: run one dtype per process for that dtype's own peak (CPU runs).
    res["process_peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)
    log.info("[%s] process peak RSS so far %.2f GB", name, res["process_peak_rss_gb"])

    if args.cli:
        with tempfile.TemporaryDirectory(prefix="bench_cli_") as tmp:
            ckpt = write_checkpoint(model, Path(tmp), args)
            del model
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            res["cli"] = cli_run(ckpt, name, start, end, sampling, args, Path(tmp))
        log.info("[%s] one clip through the CLI: %.2f s, peak RSS %.2f GB", name, res["cli"]["seconds"],
                 res["cli"]["peak_rss_gb"])
        return res
    del model
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return res


def write_checkpoint(model: ToonCrafter, folder: Path, args) -> Path:
    """The model's random weights as an fp16 safetensors file, the layout and precision of the default
    download (a --tiny case's yaml and OpenCLIP json next to it, as the loader reads them). The model is
    consumed: its tensors are converted one by one, so this process never holds two copies."""
    path = folder / "random.safetensors"
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.data = t.data.to(torch.float16).contiguous()
    save_file(model.state_dict(), str(path))
    if args.tiny is not None:
        shutil.copy(args.tiny / "config.yaml", folder / "random.yaml")
        for extra in args.tiny.glob("*.json"):
            if extra.name != "reference.json":
                shutil.copy(extra, folder / extra.name)
    return path


# The CLI's main, then the process's own high-water mark of resident memory (Linux). Not ru_maxrss: a
# child this large process spawns (vfork + exec) starts its ru_maxrss at the parent's peak.
_CLI_RUNNER = """
import sys
from pathlib import Path
from tooncrafter_core.__main__ import main
code = main(sys.argv[2:])
status = Path("/proc/self/status").read_text().splitlines()
Path(sys.argv[1]).write_text(next(line for line in status if line.startswith("VmHWM:")).split()[1])
sys.exit(code)
"""


def cli_run(ckpt: Path, name: str, start, end, sampling: SamplingConfig, args, folder: Path) -> dict:
    """One clip through `python -m tooncrafter_core interpolate` with the benchmark's settings, in a
    fresh process: its wall time (load included) and its own peak RSS."""
    images = []
    for label, image in (("start", start), ("end", end)):
        images.append(folder / f"{label}.png")
        tc_frames.save_frames(tc_frames.from_model(image), folder / label)
        shutil.move(folder / label / "frame_000.png", images[-1])
    cmd = [
        sys.executable, "-m", "tooncrafter_core", "interpolate", "--ckpt", str(ckpt), "--start", str(images[0]),
        "--end", str(images[1]), "--prompt", args.prompt, "--out", str(folder / "out"), "--steps", str(args.steps),
        "--cfg", str(sampling.cfg_scale), "--eta", str(sampling.eta), "--fs", str(sampling.fs),
        "--guidance-rescale", str(sampling.guidance_rescale), "--spacing", sampling.timestep_spacing,
        "--seed", str(args.seed), "--height", str(args.height), "--width", str(args.width), "--frames", str(args.frames),
        "--dtype", name, "--weight-dtype", args.weight_dtype, "--device", args.device,
    ]
    cmd += ["--no-second-decode"] * args.no_second_decode + ["--compile"] * args.compile
    cmd += ["--channels-last"] * args.channels_last
    log_file, peak_file = folder / "cli.log", folder / "cli_peak_kib"
    t0 = time.perf_counter()
    with open(log_file, "w") as err:
        runner = [sys.executable, "-c", _CLI_RUNNER, str(peak_file), *cmd[3:]]
        proc = subprocess.run(runner, cwd=REPO, stderr=err, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the CLI run failed (exit {proc.returncode}): {log_file.read_text()[-2000:]}")
    return {"seconds": seconds, "peak_rss_gb": round(int(peak_file.read_text()) * 1024 / 1e9, 3),
            "frames_written": len(list((folder / "out").glob("frame_*.png")))}


# ---------------------------------------------------------------------------------------------
# Report


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(results: dict, args) -> str:
    cols = [
        ("dtype", 6, lambda r: r["dtype"], "s"),
        ("total s", 9, lambda r: r["summary"]["total_s_mean"], ".2f"),
        ("ms/step", 9, lambda r: r["summary"]["step_ms_median"], ".1f"),
        ("sample s", 9, lambda r: r["summary"]["sampling_s_est"], ".2f"),
        ("decode s", 9, lambda r: r["summary"]["decode_s_min"], ".2f"),
        ("weights", 8, lambda r: r["weights_gib"], ".2f"),
        ("pk cond", 8, lambda r: r["phases"]["conditioning"]["peak_gib"], ".2f"),
        ("pk enc", 8, lambda r: r["phases"]["vae_encode"]["peak_gib"], ".2f"),
        ("pk samp", 8, lambda r: r["phases"]["sampling"]["peak_gib"], ".2f"),
        ("pk dec", 8, lambda r: r["phases"]["decode"]["peak_gib"], ".2f"),
        ("pk run", 8, lambda r: r["summary"]["peak_run_gib"], ".2f"),
        ("finite", 6, lambda r: "yes" if r["summary"]["all_finite"] else "NO", "s"),
    ]
    head = " ".join(f"{c:>{w}}" for c, w, _, _ in cols)
    lines = [
        f"{args.frames} frames {args.height}x{args.width}, {args.steps} DDIM steps, CFG batched, "
        f"second decode {'off' if args.no_second_decode else 'on'}; times in s, memory in GiB (peaks include weights)",
        head,
        "-" * len(head),
    ]
    for r in results.values():
        lines.append(" ".join(f"{fmt(get(r), spec):>{w}}" for _, w, get, spec in cols))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", default="fp16,bf16", help="comma-separated: fp32, fp16, bf16")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of the timed runs")
    p.add_argument("--runs", type=int, default=2, help="timed runs per dtype (also decode repetitions)")
    p.add_argument("--warmup-steps", type=int, default=3, help="steps of the one warm-up run")
    p.add_argument("--phase-steps", type=int, default=2, help="steps of the phased (memory) run")
    p.add_argument("--height", type=int, help="default: the model's (320; --tiny: the case's)")
    p.add_argument("--width", type=int, help="default: the model's (512; --tiny: the case's)")
    p.add_argument("--frames", type=int, help="default: the model's (16; --tiny: the case's)")
    p.add_argument("--tiny", type=Path, metavar="CASE_DIR", help="use a reference case's config.yaml (smoke test)")
    p.add_argument("--prompt", default="a cartoon cat waves")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-std", type=float, default=0.02, help="std of the random weights")
    p.add_argument("--generator", choices=("cpu", "device"), default="cpu",
                   help="where random draws are made (cpu: as the CLI and the nodes do)")
    p.add_argument("--decode-chunk", type=int, help="frames kept per VAE decode call (default: all at once)")
    p.add_argument("--decode-overlap", type=int, default=RuntimeOptions().decode_overlap,
                   help="context frames a chunked decode call adds on either side")
    p.add_argument("--no-second-decode", action="store_true")
    p.add_argument("--weight-dtype", choices=sorted(UNET_STORAGE), default="auto",
                   help="UNet weight storage: auto (the compute dtype) or fp8 (cast to the compute dtype at each call)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet and VAE decoder (compiled in the warm-up)")
    p.add_argument("--compile-mode", help="torch.compile mode, e.g. max-autotune-no-cudagraphs or reduce-overhead")
    p.add_argument("--channels-last", action="store_true", help="channels-last convolution weights")
    p.add_argument("--cli", action="store_true",
                   help="then also one clip through the CLI in a fresh process, from these random weights written as "
                        "an fp16 safetensors file (the default download's format): its time and peak RSS (results.<dtype>.cli)")
    p.add_argument("--profile", action="store_true",
                   help="then profile one guided step: FLOPs, TFLOP/s, top operators (results.<dtype>.profile)")
    p.add_argument("--peak-tflops", type=float,
                   help="the device's dense fp16/bf16 peak for --profile's fraction (default: known cards)")
    p.add_argument("--json", type=Path, metavar="OUT.json", help="write the full results here")
    args = p.parse_args(argv)
    names = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in names if d not in DTYPES]
    if bad or not names:
        p.error(f"--dtypes: unknown {bad}; choose from {sorted(DTYPES)}")
    args.dtype_names = names
    if args.runs < 1 or args.steps < 2:
        p.error("--runs must be >= 1 and --steps >= 2 (per-step timing needs two steps)")
    return args


def load_config(args) -> ModelConfig:
    if args.tiny is None:
        return ModelConfig()
    config = from_original_yaml(args.tiny / "config.yaml")
    ref = args.tiny / "reference.json"
    if ref.is_file():
        case = json.loads(ref.read_text())
        args.height = args.height or case.get("height")
        args.width = args.width or case.get("width")
        args.frames = args.frames or case.get("frames")
    return config


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        log.error("--device %s: CUDA is not available", args.device)
        return 2
    config = load_config(args)
    args.height = args.height or config.pixel_size[0]
    args.width = args.width or config.pixel_size[1]
    args.frames = args.frames or config.frames
    tokenizer = ensure_tokenizer()

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "tokenizer": tokenizer,
        "cuda": torch.version.cuda,
    }
    if dev.type == "cuda":
        env["device_memory_gib"] = gib(torch.cuda.get_device_properties(dev).total_memory)
    log.info("environment: %s", env)
    log.info(
        "config: %s, %d frames %dx%d, %d steps, dtypes %s, %d timed runs",
        f"tiny ({args.tiny})" if args.tiny else "full ModelConfig()", args.frames, args.height, args.width,
        args.steps, ",".join(args.dtype_names), args.runs,
    )

    results = {}
    failed = {}
    for name in args.dtype_names:
        try:
            results[name] = bench_dtype(name, config, args, dev)
        except Exception as e:  # keep the other dtypes' numbers
            log.exception("[%s] failed", name)
            failed[name] = f"{type(e).__name__}: {e}"
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    if results:
        log.info("summary\n%s", table(results, args))
    summary = {
        "environment": env,
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k != "json"
        },
        "results": results,
        "failed": failed,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))
        log.info("wrote %s", args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
