"""Shot lists for `batch`: reading and checking them, fingerprints, rendering one shot, and the local run.

SHOTS is a JSONL file (one object a line) or a CSV file (a header row). Every shot has an `id` and
its keyframes (`keyframes`: two or more image paths, `;`-separated in CSV, or `start` and `end`),
and optionally `prompt` (or `prompts`, one per segment), `seed` and any setting of SETTINGS.
Relative paths are read from the SHOTS file's folder. Every line is checked before anything runs.

Each shot renders into DIR/<id>/ (frame_NNN.png, preview.gif) and ends with DIR/<id>/shot.json,
written last and atomically: it marks the shot done. A rerun skips done shots whose settings (and
keyframe files) are unchanged. A shot that fails is appended to DIR/failed.jsonl and the others go
on. Locally the shots render in file order with one model load; with Ray each worker (an actor per
GPU, or per `cpus_per_worker` CPUs) loads the model once, the driver reads the keyframes, hands out
shots as workers free up and writes the frames that come back, so workers need no shared disk.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .. import files, frames
from ..runtime import COMPUTE_DTYPES, compute_dtype_name
from ..sequences import interpolate_sequence, segment_pairs, segment_prompts
from ..settings import RuntimeOptions, SamplingConfig
from ..weights import catalog, lora
from ..weights.checkpoint import load_for

log = logging.getLogger(__name__)

# Per-shot settings and their types; missing ones take the `interpolate` command's defaults
# (frames, width and height: the model's).
SETTINGS: dict[str, type] = {
    "steps": int,
    "cfg": float,
    "eta": float,
    "fs": int,
    "guidance_rescale": float,
    "spacing": str,
    "frames": int,
    "width": int,
    "height": int,
    "resize": str,
    "loop": bool,
    "second_decode": bool,
}
DEFAULTS: dict[str, Any] = {
    "steps": 50,
    "cfg": 7.5,
    "eta": 1.0,
    "fs": 10,
    "guidance_rescale": 0.7,
    "spacing": "uniform_trailing",
    "resize": "crop",
    "loop": False,
    "second_decode": True,
}
CHOICES = {"spacing": ("uniform_trailing", "uniform"), "resize": frames.FIT_METHODS}
FIELDS = {"id", "keyframes", "start", "end", "prompt", "prompts", "seed", *SETTINGS}
DEFAULT_SEED = 123
DONE = "shot.json"
FAILED = "failed.jsonl"


class BatchError(ValueError):
    """A shot list that cannot run; the message lists every bad line with its number."""


@dataclass(frozen=True)
class Shot:
    id: str
    line: int
    keyframes: tuple[Path, ...]
    prompts: tuple[str, ...]  # one for all segments, or one per segment
    seed: int
    settings: dict = field(default_factory=dict)  # SETTINGS given on the line

    def setting(self, name: str, default=None):
        return self.settings.get(name, DEFAULTS.get(name, default))


# ---------------------------------------------------------------------------------------------
# Reading the shot list


def _typed(name: str, value: Any) -> Any:
    kind = SETTINGS[name]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "0", "false", "no", ""):
            return value.strip().lower() in ("1", "true", "yes")
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name} must be a whole number, got {value}")
    try:
        typed = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {kind.__name__}, got {value!r}") from None
    if name in CHOICES and typed not in CHOICES[name]:
        raise ValueError(f"{name} must be one of {', '.join(CHOICES[name])}, got {typed!r}")
    if name in ("steps", "fs", "width", "height") and typed < 1:
        raise ValueError(f"{name} must be at least 1, got {typed}")
    if name == "frames" and typed < 2:
        raise ValueError(f"frames must be at least 2, got {typed}")
    return typed


def _shot(record: Any, line: int, base: Path) -> Shot:
    if not isinstance(record, dict):
        raise ValueError(f"expected an object with id and keyframes, got {type(record).__name__}")
    unknown = sorted(k for k in record if k not in FIELDS and record[k] not in (None, ""))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(FIELDS))}")
    shot_id = str(record.get("id") or "").strip()
    if not shot_id:
        raise ValueError("no id")
    if shot_id in (".", "..") or any(c in shot_id for c in "/\\:") or shot_id.startswith("."):
        raise ValueError(f"id {shot_id!r} cannot name a folder (no /, \\, : or leading dot)")
    keyframes = record.get("keyframes")
    if isinstance(keyframes, str):
        keyframes = [k.strip() for k in keyframes.split(";") if k.strip()]
    if keyframes and (record.get("start") or record.get("end")):
        raise ValueError("give either keyframes or start/end, not both")
    if not keyframes:
        keyframes = [record[k] for k in ("start", "end") if record.get(k)]
    if not isinstance(keyframes, list) or len(keyframes) < 2 or not all(isinstance(k, str) for k in keyframes):
        raise ValueError("needs two or more keyframes (a keyframes list, or start and end)")
    settings = {k: _typed(k, record[k]) for k in SETTINGS if record.get(k) not in (None, "")}
    prompts = record.get("prompts") or [record.get("prompt") or ""]
    if isinstance(prompts, str):  # a CSV cell: one prompt per segment, separated by |
        prompts = prompts.split("|")
    segment_prompts(list(prompts), len(segment_pairs(len(keyframes), settings.get("loop", False))))
    seed = record.get("seed")
    try:
        seed = DEFAULT_SEED if seed in (None, "") else int(seed)
    except (TypeError, ValueError):
        raise ValueError(f"seed must be a whole number, got {seed!r}") from None
    return Shot(shot_id, line, tuple((base / k) for k in keyframes), tuple(str(p) for p in prompts), seed, settings)


def _records(path: Path) -> Iterable[tuple[int, Any]]:
    """(line number, record or the ValueError that line gives) of a JSONL or CSV shot list."""
    text = path.read_text()
    if path.suffix.lower() == ".csv":
        # One record a row (no quoted line breaks in a shot list): the header is line 1.
        yield from ((i + 2, row) for i, row in enumerate(csv.DictReader(text.splitlines())))
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                yield number, ValueError(f"not valid JSON ({e.msg} at column {e.colno})")


def read_shots(path: str | Path) -> list[Shot]:
    """Every shot of a JSONL or CSV shot list, or BatchError listing every bad line."""
    path = Path(path)
    if not path.is_file():
        raise BatchError(f"shot list not found: {path}")
    base = path.parent
    shots, problems, seen = [], [], {}
    for line, record in _records(path):
        try:
            if isinstance(record, Exception):
                raise record
            shot = _shot(record, line, base)
        except ValueError as e:
            problems.append(f"line {line}: {e}")
            continue
        if shot.id in seen:
            problems.append(f"line {line}: id {shot.id!r} is also on line {seen[shot.id]}")
            continue
        seen[shot.id] = line
        shots.append(shot)
    if problems:
        raise BatchError(f"{path.name} has {len(problems)} bad line(s), nothing was rendered: " + "; ".join(problems))
    if not shots:
        raise BatchError(f"{path.name} holds no shots (one JSON object a line, or a CSV with an id and keyframes columns)")
    return shots


# ---------------------------------------------------------------------------------------------
# Rendering one shot


@dataclass(frozen=True)
class ModelSpec:
    """How a renderer (this process, or a Ray worker) loads its model: paths as seen where it runs."""

    ckpt: str | None  # None: the default release, downloaded into models_dir once per renderer
    models_dir: str
    dtype: str | None  # None: fp16 on a GPU, fp32 on the CPU
    loras: tuple[tuple[str, float], ...] = ()

    def compute_dtype(self, device: torch.device) -> torch.dtype:
        return COMPUTE_DTYPES[compute_dtype_name(self.dtype, device)]

    def load(self, device: torch.device):
        model = load_for(self.ckpt or catalog.download(catalog.DEFAULT, self.models_dir), self.compute_dtype(device))
        lora.merge_specs(model, [lora.LoraSpec(Path(p), s) for p, s in self.loras])
        return model.to(device)


@dataclass(frozen=True)
class RenderSettings:
    """What every shot of one batch shares: the model and how it runs."""

    checkpoint: str
    dtype: str
    loras: tuple[str, ...] = ()


def fingerprint(shot: Shot, shared: RenderSettings) -> dict:
    """Everything that decides a shot's frames: its settings, seed, prompts, the keyframe files'
    contents, and the model it runs on. A done shot whose fingerprint changed is rendered again."""
    hashes = []
    for path in shot.keyframes:
        hashes.append(hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None)
    print_ = {
        "keyframes": [str(p) for p in shot.keyframes],
        "keyframe_sha256": hashes,
        "prompts": list(shot.prompts),
        "seed": shot.seed,
        "settings": {k: shot.setting(k) for k in SETTINGS},
        **asdict(shared),
    }
    return json.loads(json.dumps(print_))  # as shot.json gives it back (tuples as lists)


def load_keyframes(shot: Shot) -> list[torch.Tensor]:
    """The shot's keyframe images, (1 3 H W) in [0, 1] each; read by the host that writes the frames."""
    return [frames.load_image(path) for path in shot.keyframes]


def render(model, shot: Shot, images: list[torch.Tensor], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A shot's clip (t 3 H W) in [0, 1], exactly as `interpolate` draws it with the same settings."""
    height = shot.setting("height") or model.config.pixel_size[0]
    width = shot.setting("width") or model.config.pixel_size[1]
    keyframes = torch.cat([frames.to_model(frames.fit(im, height, width, shot.setting("resize"))) for im in images])
    sampling = SamplingConfig(
        steps=shot.setting("steps"),
        cfg_scale=shot.setting("cfg"),
        eta=shot.setting("eta"),
        fs=shot.setting("fs"),
        guidance_rescale=shot.setting("guidance_rescale"),
        timestep_spacing=shot.setting("spacing"),
        second_decode=shot.setting("second_decode"),
    )
    video = interpolate_sequence(
        model,
        keyframes,
        list(shot.prompts),
        sampling,
        RuntimeOptions(device=device, dtype=dtype),
        frames=shot.setting("frames"),
        seed=shot.seed,
        loop=shot.setting("loop"),
    )
    return frames.from_model(video).transpose(0, 1)


# ---------------------------------------------------------------------------------------------
# Output folder


def is_done(out: Path, shot: Shot, print_: dict) -> bool:
    """True when DIR/<id>/shot.json exists and was written for the same fingerprint."""
    done = out / shot.id / DONE
    if not done.is_file():
        return False
    try:
        return json.loads(done.read_text()).get("fingerprint") == print_
    except (OSError, json.JSONDecodeError):
        return False


def write_shot(out: Path, shot: Shot, print_: dict, clip: torch.Tensor, seconds: float, fps: int = 8) -> Path:
    """Frames and preview of a finished shot, then its shot.json, atomically and last."""
    folder = files.child(out, shot.id, "shot id")
    record = {
        "id": shot.id,
        "line": shot.line,
        "frames": int(clip.shape[0]),
        "size": [int(clip.shape[2]), int(clip.shape[3])],
        "seconds": round(seconds, 3),
        "fingerprint": print_,
    }
    # The whole folder renamed into place when complete (a re-render replaces the old one whole, so it
    # keeps no frames of a longer old clip); a killed write leaves the last complete render or none.
    with files.atomic_path(folder) as partial:
        frames.save_frames(clip, partial, fps)
        (partial / DONE).write_text(json.dumps(record, indent=1))
    return folder / DONE


def fail(out: Path, shot: Shot, error: str, attempts: int, report: "BatchReport", bar: "Progress") -> None:
    """Append the shot to DIR/failed.jsonl, count it and move the progress bar on."""
    with open(out / FAILED, "a") as f:
        f.write(json.dumps({"id": shot.id, "line": shot.line, "error": error, "attempts": attempts}) + "\n")
    log.error("shot %s (line %d) failed: %s", shot.id, shot.line, error)
    report.failed.append(shot.id)
    bar.step(shot, "failed")


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)  # shots handed out again after their worker died
    seconds: float = 0.0

    def summary(self) -> str:
        rate = len(self.done) / (self.seconds / 60) if self.seconds > 0 else 0.0
        return (
            f"{len(self.done)} done, {len(self.skipped)} skipped (already done), {len(self.failed)} failed "
            f"in {self.seconds:.1f} s ({rate:.2f} shots per minute)"
            + (f"; retried after a worker died: {', '.join(self.retried)}" if self.retried else "")
        )


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class Progress:
    """One progress bar over all shots."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="shot", desc="shots")

    def step(self, shot: Shot, what: str) -> None:
        self.bar.set_postfix_str(f"{shot.id} {what}")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def prepare(shots: list[Shot], out: Path, shared: RenderSettings, report: BatchReport, bar: Progress) -> list[tuple[Shot, dict]]:
    """The shots still to render, with their fingerprints; done ones are counted as skipped."""
    out.mkdir(parents=True, exist_ok=True)
    (out / FAILED).unlink(missing_ok=True)  # failed.jsonl describes the latest run
    todo = []
    for shot in shots:
        print_ = fingerprint(shot, shared)
        if is_done(out, shot, print_):
            report.skipped.append(shot.id)
            bar.step(shot, "skipped")
        else:
            todo.append((shot, print_))
    return todo


def run_local(
    shots: list[Shot],
    out: str | Path,
    shared: RenderSettings,
    load: Callable[[], Any],
    device: torch.device,
    dtype: torch.dtype,
) -> BatchReport:
    """Render the shots in file order in this process; `load()` gives the model, called once and only
    when a shot needs rendering."""
    out = Path(out)
    report, began, model = BatchReport(), time.perf_counter(), None
    bar = Progress(len(shots))
    try:
        for shot, print_ in prepare(shots, out, shared, report, bar):
            started = time.perf_counter()
            try:
                images = load_keyframes(shot)
                if model is None:
                    model = load()
                clip = render(model, shot, images, device, dtype)
            except Exception as e:  # one shot's failure must not stop the others; it is logged and listed
                fail(out, shot, error_text(e), 1, report, bar)
                continue
            write_shot(out, shot, print_, clip, time.perf_counter() - started)
            report.done.append(shot.id)
            bar.step(shot, "done")
    finally:
        bar.close()
    report.seconds = time.perf_counter() - began
    log.info("%s", report.summary())
    return report
