"""`python -m tooncrafter_core evaluate`: interpolate frame1 -> frame3 of held-out triplets (the
ATD-12K layout) and score the generated middle frame against frame2 (PSNR, SSIM, LPIPS).

Scores are taken on the saved 8-bit images, `generated.png` against `target.png` (frame2 fitted to
the model's size exactly as the keyframes are), so anyone can recompute them from the files.
Several runs (compute dtypes x LoRA strength multipliers) in one call share the checkpoint load of
each dtype and end in a comparison table; `--compare` builds that table from finished run folders.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .. import frames
from ..datasets import Triplet, find_triplets
from ..metrics import UNAVAILABLE, LpipsMetric, Score, image_metrics, psnr_ssim, read_scores, write_scores
from ..models.tooncrafter import ToonCrafter
from ..pipeline import interpolate
from ..runtime import COMPUTE_DTYPES, compute_dtype_name, usable_device
from ..settings import RuntimeOptions, SamplingConfig
from ..weights import catalog, lora
from ..weights.checkpoint import WEIGHT_DTYPES, load_for
from .common import (
    add_device_argument,
    add_lora_argument,
    add_models_dir_argument,
    add_size_arguments,
    check_out_dir,
)

log = logging.getLogger(__name__)

# |generated - truth| is scaled by this in the strips: errors of a few levels would look black.
DIFF_GAIN = 4
SUMMARY_WORST = 5
LABEL_HEIGHT = 14


class EvaluationError(ValueError):
    """Triplets, options or run folders that cannot be evaluated; the message names the file and the fix."""


def _read_uint8(path: Path) -> np.ndarray:
    """An image file -> (h w 3) uint8."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3 h w) in [0, 1] -> (h w 3) uint8, rounded to nearest."""
    return (image.permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)


def _save(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


# ---------------------------------------------------------------------------------------------
# Runs


@dataclass(frozen=True)
class Settings:
    """What every run of one evaluate call shares; written into each run's run.json."""

    checkpoint: str
    triplets: str
    prompt: str
    steps: int
    cfg: float
    eta: float
    fs: int
    seed: int
    frames: int
    height: int
    width: int
    resize: str
    device: str

    @property
    def middle(self) -> int:
        """Index of the scored frame among frames 0..frames-1 (keyframes at 0 and frames-1)."""
        return self.frames // 2


@dataclass(frozen=True)
class RunSpec:
    """One run: a compute dtype and the LoRAs, their strengths scaled by `multiplier` (None: no LoRA)."""

    dtype: str
    loras: tuple[lora.LoraSpec, ...] = ()
    multiplier: Optional[float] = None

    @property
    def name(self) -> str:
        return self.dtype if self.multiplier is None else f"{self.dtype}-lora{self.multiplier:g}"

    def scaled_loras(self) -> list[lora.LoraSpec]:
        return [replace(s, strength=s.strength * self.multiplier) for s in self.loras]


def plan_runs(dtypes: Sequence[str], loras: Sequence[lora.LoraSpec], multipliers: Optional[Sequence[float]]) -> list[RunSpec]:
    """Every dtype x every strength multiplier, dtype-major (one model load per dtype)."""
    if multipliers and not loras:
        raise EvaluationError("--lora-strengths scales the strengths of --lora files; give at least one --lora PATH[:S]")
    dtypes = list(dict.fromkeys(dtypes))
    if not loras:
        return [RunSpec(d) for d in dtypes]
    multipliers = list(dict.fromkeys(multipliers or [1.0]))
    return [RunSpec(d, tuple(loras), m) for d in dtypes for m in multipliers]


def _fitted(path: Path, settings: Settings) -> torch.Tensor:
    """An image file fitted to the model's size as the keyframes are: (1 3 h w) in [0, 1]."""
    return frames.fit(frames.load_image(path), settings.height, settings.width, settings.resize)


def evaluate_run(
    model: ToonCrafter,
    spec: RunSpec,
    settings: Settings,
    triplets: Sequence[Triplet],
    lpips_metric: LpipsMetric,
    folder: Path,
    progress: Optional[Callable[[Score], None]] = None,
) -> list[Score]:
    """Interpolate each triplet, write <folder>/<triplet>/generated.png and target.png, score them."""
    sampling = SamplingConfig(steps=settings.steps, cfg_scale=settings.cfg, eta=settings.eta, fs=settings.fs)
    options = RuntimeOptions(device=torch.device(settings.device), dtype=WEIGHT_DTYPES[spec.dtype])
    scores = []
    for t in triplets:
        start, end = _fitted(t.frame1, settings), _fitted(t.frame3, settings)
        # A fresh generator per triplet: every triplet sees the same noise, whatever its position.
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        try:
            video = interpolate(
                model, frames.to_model(start), frames.to_model(end), settings.prompt, sampling, options,
                frames=settings.frames, generator=generator,
            )  # (1 3 t h w)
        except FloatingPointError as e:
            raise FloatingPointError(f"run {spec.name}, triplet {t.frame1.parent}: {e}") from None
        generated = _to_uint8(frames.from_model(video[0, :, settings.middle]))
        truth = _to_uint8(_fitted(t.frame2, settings)[0])
        (folder / t.name).mkdir(parents=True, exist_ok=True)
        _save(generated, folder / t.name / "generated.png")
        _save(truth, folder / t.name / "target.png")
        psnr, ssim = psnr_ssim(generated, truth)
        scores.append(Score(t.name, psnr, ssim, lpips_metric(generated, truth)))
        if progress is not None:
            progress(scores[-1])
    return scores


# ---------------------------------------------------------------------------------------------
# Reports


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    """Mean, or None when any value is None (an unavailable metric)."""
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(values)


def _fmt(value: Optional[float], digits: int) -> str:
    return UNAVAILABLE if value is None else f"{value:.{digits}f}"


def _worst(scores: Sequence[Score], k: int) -> list[Score]:
    return sorted(scores, key=lambda s: (s.psnr, s.triplet))[:k]


def _lora_text(info: dict) -> str:
    return ", ".join(f"{Path(x['path']).name}:{x['strength']:g}" for x in info["loras"]) or "none"


def write_summary(folder: Path, info: dict, scores: Sequence[Score], strip_rows: int) -> Path:
    """summary.md of one run folder from its run.json contents and scores."""
    psnrs = [s.psnr for s in scores]
    lpips_mean = _mean([s.lpips for s in scores])
    lines = [
        f"# Evaluation: {info['name']}",
        "",
        f"Checkpoint `{info['checkpoint']}`, {info['dtype']}, LoRAs: {_lora_text(info)}; {info['steps']} steps, "
        f"cfg {info['cfg']:g}, eta {info['eta']:g}, fs {info['fs']}, seed {info['seed']} (every triplet); "
        f"{info['frames']} frames at {info['height']}x{info['width']} ({info['resize']}), scored frame index "
        f"{info['middle_index']}; {info['seconds']:.1f} s of sampling and scoring.",
        "",
        "| triplets | PSNR mean | PSNR median | PSNR min | SSIM mean | LPIPS mean |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {len(scores)} | {statistics.fmean(psnrs):.2f} | {statistics.median(psnrs):.2f} | {min(psnrs):.2f} "
        f"| {statistics.fmean(s.ssim for s in scores):.4f} | {_fmt(lpips_mean, 4)} |",
        "",
    ]
    if lpips_mean is None and info.get("lpips_unavailable"):
        lines += [f"LPIPS unavailable: {info['lpips_unavailable']}", ""]
    lines += [
        f"## {min(SUMMARY_WORST, len(scores))} worst triplets by PSNR",
        "",
        f"The first {strip_rows} are the rows of worst.png, top to bottom (frame1 | frame2 | generated | "
        f"frame3 | |generated - frame2| x{DIFF_GAIN}).",
        "",
        "| triplet | PSNR | SSIM | LPIPS |",
        "|---|---:|---:|---:|",
        *(f"| {s.triplet} | {s.psnr:.2f} | {s.ssim:.4f} | {_fmt(s.lpips, 4)} |" for s in _worst(scores, SUMMARY_WORST)),
        "",
    ]
    path = folder / "summary.md"
    path.write_text("\n".join(lines))
    return path


def _grid(rows: Sequence[Sequence[np.ndarray]], labels: Optional[Sequence[str]] = None):
    """Rows of equal-size (h w 3) uint8 images -> one PIL image, with a label strip on top if given."""
    from PIL import Image, ImageDraw

    body = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    if labels is None:
        return Image.fromarray(body)
    width = rows[0][0].shape[1]
    strip = Image.new("RGB", (body.shape[1], LABEL_HEIGHT), "white")
    for i, label in enumerate(labels):
        # Each label is drawn in its own cell so a long run name is cut at its column, not over the next.
        cell = Image.new("RGB", (width, LABEL_HEIGHT), "white")
        ImageDraw.Draw(cell).text((2, 1), label, fill="black")
        strip.paste(cell, (i * width, 0))
    canvas = Image.new("RGB", (body.shape[1], LABEL_HEIGHT + body.shape[0]))
    canvas.paste(strip, (0, 0))
    canvas.paste(Image.fromarray(body), (0, LABEL_HEIGHT))
    return canvas


def _load_run(folder: Path) -> tuple[dict, list[Score]]:
    folder = Path(folder)
    info_path, scores_path = folder / "run.json", folder / "scores.csv"
    for p in (info_path, scores_path):
        if not p.is_file():
            raise EvaluationError(
                f"{folder} is not an evaluate run folder: {p.name} is missing (run folders are written by "
                "python -m tooncrafter_core evaluate; with several runs they are the subfolders of --out)"
            )
    return json.loads(info_path.read_text()), read_scores(scores_path)


def _sources(info: dict, triplets_dir: Optional[Path]) -> dict[str, Triplet]:
    root = Path(triplets_dir) if triplets_dir is not None else Path(info["triplets"])
    if not root.is_dir():
        raise EvaluationError(
            f"the triplets of run {info['name']} are not at {root} (frame1 and frame3 of the strips come from "
            "there); pass --triplets with their folder"
        )
    return {t.name: t for t in find_triplets(root)}


def _settings_of(info: dict) -> Settings:
    return Settings(**{k: info[k] for k in Settings.__dataclass_fields__})


def _strip_keyframes(sources: dict[str, Triplet], name: str, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    if name not in sources:
        raise EvaluationError(f"triplet {name} is not in {settings.triplets}; pass --triplets with the folder that holds it")
    t = sources[name]
    return _to_uint8(_fitted(t.frame1, settings)[0]), _to_uint8(_fitted(t.frame3, settings)[0])


def write_worst_strip(folder: Path, k: int, triplets_dir: Optional[Path] = None) -> Path:
    """worst.png of a run folder: the k lowest-PSNR triplets, one row each,
    frame1 | frame2 | generated | frame3 | |generated - frame2| x DIFF_GAIN, at the model's size."""
    info, scores = _load_run(folder)
    settings = _settings_of(info)
    sources = _sources(info, triplets_dir)
    rows = []
    for s in _worst(scores, k):
        first, last = _strip_keyframes(sources, s.triplet, settings)
        truth = _read_uint8(folder / s.triplet / "target.png")
        generated = _read_uint8(folder / s.triplet / "generated.png")
        diff = (np.abs(generated.astype(np.int16) - truth) * DIFF_GAIN).clip(0, 255).astype(np.uint8)
        rows.append([first, truth, generated, last, diff])
    path = folder / "worst.png"
    _grid(rows).save(path)
    return path


def write_comparison(run_dirs: Sequence[Path], out: Path, k: int, triplets_dir: Optional[Path] = None) -> Path:
    """comparison.md (one row per run) and comparison_worst.png (the k triplets with the lowest PSNR
    averaged over the runs; frame1 | frame2 | each run's generated | frame3) in `out`."""
    runs = [(Path(d), *_load_run(d)) for d in run_dirs]
    names = [d.name for d, _, _ in runs]
    if len(set(names)) < len(names):
        names = [str(d) for d, _, _ in runs]
    sizes = {(info["height"], info["width"]) for _, info, _ in runs}
    if len(sizes) > 1:
        raise EvaluationError(f"the runs were made at different sizes {sorted(sizes)}; compare runs of one size")
    lines = [
        "# Comparison",
        "",
        "| run | dtype | LoRAs | triplets | PSNR mean | SSIM mean | LPIPS mean | worst triplet (PSNR) | seconds |",
        "|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for name, (_, info, scores) in zip(names, runs):
        worst = _worst(scores, 1)[0]
        lines.append(
            f"| {name} | {info['dtype']} | {_lora_text(info)} | {len(scores)} | {statistics.fmean(s.psnr for s in scores):.2f} "
            f"| {statistics.fmean(s.ssim for s in scores):.4f} | {_fmt(_mean([s.lpips for s in scores]), 4)} "
            f"| {worst.triplet} ({worst.psnr:.2f}) | {info['seconds']:.1f} |"
        )
    by_run = [{s.triplet: s.psnr for s in scores} for _, _, scores in runs]
    common = set.intersection(*(set(b) for b in by_run))
    if len(common) < max(len(b) for b in by_run):
        lines += ["", f"The runs share {len(common)} triplets; comparison_worst.png shows only shared ones."]
    ranked = sorted(common, key=lambda n: (statistics.fmean(b[n] for b in by_run), n))[:k]
    lines += ["", f"comparison_worst.png rows, top to bottom (lowest PSNR averaged over the runs): {', '.join(ranked)}", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text("\n".join(lines))

    first_dir, first_info, _ = runs[0]
    settings = _settings_of(first_info)
    sources = _sources(first_info, triplets_dir)
    rows = []
    for name in ranked:
        first, last = _strip_keyframes(sources, name, settings)
        generated = [_read_uint8(d / name / "generated.png") for d, _, _ in runs]
        rows.append([first, _read_uint8(first_dir / name / "target.png"), *generated, last])
    if rows:
        _grid(rows, ["frame1", "frame2 (truth)", *names, "frame3"]).save(out / "comparison_worst.png")
    log.info("wrote %s and comparison_worst.png", out / "comparison.md")
    return out / "comparison.md"


# ---------------------------------------------------------------------------------------------
# Command line


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `evaluate` sub-command to an argparse sub-parser group."""
    e = subparsers.add_parser(
        "evaluate",
        help="score interpolation on held-out triplets (PSNR, SSIM, LPIPS)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Interpolate from frame1 to frame3 of every triplet folder in --triplets (the ATD-12K layout:\n"
            "DIR/<triplet>/frame1|frame2|frame3 .png/.jpg) and score the generated middle frame against frame2.\n"
            "\n"
            "The middle frame: of the T generated frames (index 0 .. T-1, the keyframes at 0 and T-1) the one\n"
            "at index T // 2 is scored. For the released model (T = 16) that is index 8, 8/15 of the way from\n"
            "frame1 to frame3; an odd --frames (e.g. 15, index 7) puts it exactly half-way.\n"
            "\n"
            "Every triplet is sampled with the same --seed. Scores (scikit-image PSNR and SSIM, data range 255;\n"
            "LPIPS-AlexNet when the lpips package and its weights are available, else 'unavailable') are\n"
            "taken on the saved 8-bit images: OUT/<triplet>/generated.png against OUT/<triplet>/target.png\n"
            "(frame2 fitted to the model's size like the keyframes). Written: OUT/scores.csv\n"
            "(triplet,psnr,ssim,lpips), OUT/summary.md, OUT/run.json and OUT/worst.png (the --worst lowest-PSNR\n"
            "triplets: frame1 | frame2 | generated | frame3 | difference).\n"
            "\n"
            "Several runs (each --dtype x each --lora-strengths multiplier) go into OUT/<run>/ (e.g. fp32,\n"
            "bf16-lora0.15), plus OUT/comparison.md and OUT/comparison_worst.png. --compare RUN_DIR ... builds\n"
            "those two from run folders made by separate calls."
        ),
    )
    e.add_argument("--ckpt", type=Path, help="checkpoint file; omitted: download the default release")
    add_models_dir_argument(e)
    e.add_argument("--triplets", type=Path, help="folder of triplet folders (with --compare: where the runs' triplets are now)")
    e.add_argument("--out", type=Path, required=True, help="output folder")
    e.add_argument(
        "--dtype", nargs="+", choices=list(COMPUTE_DTYPES),
        help="compute dtype(s); several give one run each (default fp16 on CUDA, fp32 on CPU)",
    )
    add_lora_argument(e)
    e.add_argument(
        "--lora-strengths", type=float, nargs="+", metavar="S",
        help="multipliers of every --lora strength, one run each (e.g. 0 0.15 1)",
    )
    e.add_argument("--compare", type=Path, nargs="+", metavar="RUN_DIR", help="only compare finished run folders into --out")
    e.add_argument("--worst", type=int, default=4, help="rows of worst.png and comparison_worst.png")
    e.add_argument("--prompt", default="", help="prompt for every triplet")
    e.add_argument("--steps", type=int, default=50)
    e.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale")
    e.add_argument("--eta", type=float, default=1.0, help="DDIM eta (0 deterministic)")
    e.add_argument("--fs", type=int, default=10, help="frame stride conditioning (smaller: larger motion)")
    e.add_argument("--seed", type=int, default=123, help="seed of every triplet's noise")
    add_size_arguments(e, "model input", "frames to generate (default: the model's); frame T // 2 is scored", "frames")
    add_device_argument(e)
    return e


def run(args: argparse.Namespace) -> int:
    """Carry out `evaluate`."""
    check_out_dir(args.out)
    if args.worst < 1:
        raise EvaluationError(f"--worst must be at least 1, got {args.worst}")
    if args.compare:
        write_comparison(args.compare, args.out, args.worst, args.triplets)
        return 0
    if args.triplets is None:
        raise EvaluationError("--triplets DIR is required (or --compare RUN_DIR ... to compare finished runs)")
    if args.frames is not None and args.frames < 3:
        raise EvaluationError(f"--frames must be at least 3 (two keyframes and a middle frame), got {args.frames}")
    triplets = find_triplets(args.triplets)
    image_metrics()
    device = usable_device(args.device)
    runs = plan_runs(args.dtype or [compute_dtype_name(None, device)], args.lora, args.lora_strengths)
    ckpt = args.ckpt if args.ckpt is not None else catalog.download(catalog.DEFAULT, args.models_dir)
    lpips_metric = LpipsMetric()
    log.info(
        "evaluating %d triplets from %s in %d run(s): %s",
        len(triplets), args.triplets, len(runs), ", ".join(r.name for r in runs),
    )

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    run_dirs = []
    model, model_dtype, settings = None, None, None
    with logging_redirect_tqdm(), tqdm(total=len(runs) * len(triplets), unit="triplet") as bar:
        for spec in runs:
            if spec.dtype != model_dtype:
                model = None  # frees the previous dtype's weights before the next load, not after it
                model = load_for(ckpt, WEIGHT_DTYPES[spec.dtype]).to(device)
                model_dtype = spec.dtype
            settings = settings or _settings(args, model, Path(ckpt), device)
            folder = args.out if len(runs) == 1 else args.out / spec.name
            folder.mkdir(parents=True, exist_ok=True)
            bar.set_description(spec.name)

            def progress(score: Score) -> None:
                bar.set_postfix_str(f"{score.triplet} PSNR {score.psnr:.2f}")
                bar.update(1)

            backup = lora.merge_specs(model, spec.scaled_loras(), keep_original=True)
            began = time.perf_counter()
            try:
                scores = evaluate_run(model, spec, settings, triplets, lpips_metric, folder, progress)
            finally:
                lora.restore(model.unet, backup)
            info = {
                "name": spec.name,
                **asdict(settings),
                "middle_index": settings.middle,
                "dtype": spec.dtype,
                "loras": [{"path": str(s.path), "strength": s.strength} for s in spec.scaled_loras()],
                "lora_multiplier": spec.multiplier,
                "lpips_unavailable": lpips_metric.reason,
                "seconds": round(time.perf_counter() - began, 3),
            }
            _write_run(folder, info, scores, args.worst)
            run_dirs.append(folder)
    if len(run_dirs) > 1:
        write_comparison(run_dirs, args.out, args.worst)
    return 0


def _settings(args: argparse.Namespace, model: ToonCrafter, ckpt: Path, device: torch.device) -> Settings:
    return Settings(
        checkpoint=ckpt.name,
        triplets=str(Path(args.triplets).resolve()),
        prompt=args.prompt,
        steps=args.steps,
        cfg=args.cfg,
        eta=args.eta,
        fs=args.fs,
        seed=args.seed,
        frames=args.frames or model.config.frames,
        height=args.height or model.config.pixel_size[0],
        width=args.width or model.config.pixel_size[1],
        resize=args.resize,
        device=str(device),
    )


def _write_run(folder: Path, info: dict, scores: Sequence[Score], worst: int) -> None:
    """run.json, scores.csv, worst.png and summary.md of one finished run."""
    (folder / "run.json").write_text(json.dumps(info, indent=1))
    write_scores(folder / "scores.csv", scores)
    write_worst_strip(folder, worst)
    write_summary(folder, info, scores, min(worst, len(scores)))
    log.info(
        "%s: mean PSNR %.2f, SSIM %.4f, LPIPS %s -> %s",
        info["name"],
        statistics.fmean(s.psnr for s in scores),
        statistics.fmean(s.ssim for s in scores),
        _fmt(_mean([s.lpips for s in scores]), 4),
        folder,
    )
