"""The GPU targets of gpu_check.sh's runs, met or missed, and for each miss where the time or memory
went (per-phase or per-node time and peak memory, the profiled step's top operators), so the next
session can act on a miss without another device run.

    python3 benchmarks/check_targets.py --out benchmarks/results --card nvidia_h200

Reads `<card>_<run>.json` from --out (the names gpu_check.sh writes), prints a Markdown table and the
explanations, and writes `<card>_targets.json`. A run that is missing or failed reads "not measured".
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

log = logging.getLogger("check_targets")

STEPS_50_S = 3.0
STEP_MS = 50.0
PEAK_GIB = 8.0
FAST_CLIP_S = 1.0
LOWVRAM_PEAK_GIB = 5.0
LOWVRAM_SLOWDOWN = 1.5
CLIP_NODES = ("conditioning", "sample (warm)", "decode")  # one clip once the model is loaded and warm
TOP_OPS = 10


def read(out: Path, card: str, run: str) -> Optional[dict]:
    path = out / f"{card}_{run}.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return report or None


def bench_result(report: Optional[dict], dtype: str) -> tuple[Optional[str], Optional[dict]]:
    """The dtype's results of a bench_interpolate report, else its first (the CPU dry run has fp32 only)."""
    results = (report or {}).get("results") or {}
    if dtype in results:
        return dtype, results[dtype]
    return next(iter(results.items()), (None, None))


def clip_seconds(report: Optional[dict]) -> Optional[float]:
    nodes = (report or {}).get("nodes") or {}
    if not all(n in nodes for n in CLIP_NODES):
        return None
    return sum(nodes[n]["seconds"] for n in CLIP_NODES)


def op_lines(top_ops: list[dict]) -> list[str]:
    """The profiled step's operators, one line each: share, own time, calls, name."""
    return [f"  {o['share']:6.1%} {o['ms']:9.2f} ms {o['calls']:6d}x  {o['name']}" for o in top_ops]


def where_bench_went(name: str, res: dict) -> list[str]:
    lines = [f"{name}: phases (seconds, peak GiB): " + ", ".join(
        f"{k} {v['seconds']:.3f} s / {v['peak_gib']} GiB" for k, v in res.get("phases", {}).items())]
    prof = res.get("profile")
    if prof:
        frac = prof.get("fraction_of_peak")
        lines.append(
            f"{name}: one step {prof['flops_per_step'] / 1e12:.2f} TFLOP, "
            f"{prof['achieved_tflops'] or 0:.1f} TFLOP/s" + (f" = {frac:.1%} of the dense peak" if frac else "")
            + "; top operators by own time:"
        )
        lines += op_lines(prof["top_ops"][:TOP_OPS])
    else:
        lines.append(f"{name}: no profile (run bench_interpolate.py with --profile)")
    return lines


def where_nodes_went(name: str, report: dict) -> list[str]:
    return [f"{name}: nodes (seconds, peak GiB): " + ", ".join(
        f"{k} {v['seconds']:.2f} s / {v['peak_gib']} GiB" for k, v in report.get("nodes", {}).items())]


def check(out: Path, card: str) -> dict:
    rows, why = [], []

    def row(target: str, measured: Optional[float], limit: float, unit: str, explain) -> None:
        met = None if measured is None else measured <= limit
        rows.append({"target": target, "measured": measured, "limit": limit, "unit": unit, "met": met})
        if met is False:
            why.extend(line for line in explain() if line not in why)  # two misses of one run: explained once

    steps50 = read(out, card, "steps50")
    dtype, fp16 = bench_result(steps50, "fp16")
    summary = (fp16 or {}).get("summary") or {}
    label = f"{(steps50 or {}).get('settings', {}).get('steps', 50)} steps {dtype or 'fp16'}"
    explain50 = (lambda: where_bench_went(label, fp16)) if fp16 else list
    row(f"{label}, end to end", summary.get("total_s_min"), STEPS_50_S, "s", explain50)
    row(f"{label}, per step (median)", summary.get("step_ms_median"), STEP_MS, "ms", explain50)
    row(f"{label}, peak memory of a run", summary.get("peak_run_gib"), PEAK_GIB, "GiB", explain50)

    normal = read(out, card, "comfy_normal")
    row("ComfyUI nodes, normal mode, peak VRAM", (normal or {}).get("peak_gib"), PEAK_GIB, "GiB",
        lambda: where_nodes_went("normal", normal))

    natives = sorted(out.glob(f"{card}_comfy_native_ipndm_*.json"))
    native = json.loads(natives[0].read_text()) if natives else None
    fast_label = f"native KSampler {native['sampler']}/{native['scheduler']} {native['steps']} steps, one clip" if native \
        else "native KSampler fast setting, one clip"
    row(fast_label, clip_seconds(native), FAST_CLIP_S, "s", lambda: where_nodes_went("native", native))

    low = read(out, card, "comfy_6gib_lowvram")
    row("--lowvram with a 6 GiB budget, peak VRAM", (low or {}).get("peak_gib"), LOWVRAM_PEAK_GIB, "GiB",
        lambda: where_nodes_went("lowvram", low))
    low_s, normal_s = clip_seconds(low), clip_seconds(normal)
    row("--lowvram time over normal mode", low_s / normal_s if low_s and normal_s else None, LOWVRAM_SLOWDOWN, "x",
        lambda: where_nodes_went("lowvram", low) + where_nodes_went("normal", normal))

    prof_dtype, profiled = bench_result(steps50, "bf16")
    prof = (profiled or {}).get("profile") or {}
    return {"card": card, "targets": rows, "explanations": why, "profiled_dtype": prof_dtype,
            "step_tflops": prof.get("achieved_tflops"), "step_fraction_of_dense_peak": prof.get("fraction_of_peak")}


def markdown(report: dict) -> str:
    lines = ["| target | measured | limit | met |", "|---|---|---|---|"]
    for r in report["targets"]:
        measured = "not measured" if r["measured"] is None else f"{r['measured']:.3g} {r['unit']}"
        met = {None: "-", True: "yes", False: "**no**"}[r["met"]]
        lines.append(f"| {r['target']} | {measured} | ≤ {r['limit']:g} {r['unit']} | {met} |")
    frac, tflops = report["step_fraction_of_dense_peak"], report["step_tflops"]
    if tflops is not None:
        lines.append("")
        lines.append(f"{report['profiled_dtype']} step: {tflops:.3g} TFLOP/s"
                     + (f", {frac:.1%} of the card's dense peak" if frac else " (the card's dense peak is not known)"))
    if report["explanations"]:
        lines += ["", "Where the time or memory went for the misses:", "```", *report["explanations"], "```"]
    return "\n".join(lines)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the folder gpu_check.sh wrote its JSONs into")
    p.add_argument("--card", required=True, help="the file-name prefix gpu_check.sh used (the card's name)")
    args = p.parse_args(argv)
    if not args.out.is_dir():
        p.error(f"--out {args.out}: no such folder")
    report = check(args.out, args.card)
    (args.out / f"{args.card}_targets.json").write_text(json.dumps(report, indent=1))
    log.info("%s", markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
