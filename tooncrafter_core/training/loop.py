"""The optimisation loop the training commands share.

A task (LoRA fine-tuning, distillation) gives its trainable parameters, the loss of one micro-batch
drawn from a generator, a validation loss with fixed draws, sample clips, and how to save and load its
result. The loop adds AdamW with linear warmup, gradient accumulation, fp16 loss scaling, checkpoints
(`OUT/checkpoints/step_N/`: the task's files and the optimizer, scheduler, loss-scaler and random
states) from which a resumed run continues bit for bit, `OUT/train_log.csv`, `OUT/loss.png`,
`OUT/samples/step_N.gif`, a progress bar, and a checkpoint on Ctrl-C.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

import torch
from torch import nn

from .. import files
from ..charts import line_chart

log = logging.getLogger(__name__)

LOG_COLUMNS = ("step", "loss", "lr", "seconds", "val_loss")
STATE_FILE = "training_state.pt"
RUN_FILE = "run.json"


@dataclass(frozen=True)
class LoopSettings:
    steps: int
    lr: float
    batch: int = 1
    grad_accum: int = 1
    warmup: int = 0
    weight_decay: float = 0.01
    seed: int = 0
    save_every: int = 0  # 0: only at the end (and on Ctrl-C)
    val_every: int = 0  # 0: only at the end, when there is validation data
    dtype: str = "fp32"

    def __post_init__(self):
        for name in ("steps", "batch", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        for name in ("warmup", "save_every", "val_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")


class Task(Protocol):
    """What the loop trains."""

    def parameters(self) -> Sequence[nn.Parameter]: ...

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        """The loss of one micro-batch whose data and noise are drawn from `generator`."""

    def val_loss(self) -> Optional[float]:
        """The loss on the validation data with fixed draws (None without validation data)."""

    def samples(self, path: Path) -> Optional[Path]:
        """Sample clips of the validation data as a GIF at `path` (None without validation data)."""

    def save(self, folder: Path) -> None: ...

    def load(self, folder: Path) -> None: ...

    def train(self, mode: bool) -> None: ...


def _warmup(warmup: int):
    return lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0


def checkpoints(out: Path) -> list[Path]:
    folder = out / "checkpoints"
    return sorted(folder.glob("step_*"), key=lambda p: int(p.name.split("_")[1])) if folder.is_dir() else []


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= upto]


def _write_log(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _plot(out: Path, rows: list[dict]) -> None:
    if not rows:
        return
    series = {"loss": [(int(r["step"]), float(r["loss"])) for r in rows if r["loss"] != ""]}
    val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r.get("val_loss") not in (None, "")]
    if val:
        series["validation loss"] = val
    line_chart(series, out / "loss.png", "training loss", "step", "loss")


StepHook = Callable[[int, int, float], None]


def run(
    task: Task,
    settings: LoopSettings,
    out: Path,
    run_info: dict,
    resume: bool = False,
    device="cpu",
    on_step: Optional[StepHook] = None,
) -> Path:
    """Train `task` for `settings.steps` optimizer steps into `out`; returns the final checkpoint folder.

    `run_info` (the command's settings) is written to OUT/run.json; a resumed run must have the same
    (its step count may grow). `on_step(step, steps, loss)` runs after every step (a host's progress
    bar); a KeyboardInterrupt from it stops the run with a checkpoint, as Ctrl-C does.
    """
    out.mkdir(parents=True, exist_ok=True)
    info = {**run_info, "loop": asdict(settings)}
    run_file = out / RUN_FILE
    params = list(task.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup(settings.warmup))
    device = torch.device(device)
    scaler = torch.amp.GradScaler(device.type, enabled=settings.dtype == "fp16")
    generator = torch.Generator().manual_seed(settings.seed)
    start = 0
    if resume:
        found = checkpoints(out)
        if not found:
            raise ValueError(f"--resume: {out} has no checkpoints/step_N folder to resume from; run without --resume")
        previous = json.loads(run_file.read_text()) if run_file.is_file() else {}
        _check_same_run(previous, info)
        folder = found[-1]
        state = torch.load(folder / STATE_FILE, weights_only=True)
        task.load(folder)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        log.info("resuming from %s (step %d of %d)", folder, start, settings.steps)
    elif checkpoints(out):
        raise ValueError(f"{out} already holds a training run: use --resume to continue it, or another --out")
    else:
        torch.manual_seed(settings.seed)  # what draws from the global generator (dropout) starts from the seed too
    files.write_text(run_file, json.dumps(info, indent=1, default=str))
    log_path = out / "train_log.csv"
    rows = _read_log(log_path, start) if resume else []

    def save(step: int) -> Path:
        folder = out / "checkpoints" / f"step_{step:06d}"
        with files.atomic_path(folder) as partial:  # a killed save leaves the last complete checkpoint
            task.save(partial)
            torch.save(
                {
                    "step": step,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                },
                partial / STATE_FILE,
            )
        _write_log(log_path, rows)
        _plot(out, rows)
        return folder

    def evaluate(step: int, row: dict) -> None:
        task.train(False)
        try:
            val = task.val_loss()
            if val is not None:
                row["val_loss"] = f"{val:.6g}"
            task.samples(out / "samples" / f"step_{step:06d}.gif")
        finally:
            task.train(True)

    from tqdm import tqdm

    task.train(True)
    step = start
    if not resume:
        baseline = {"step": 0, "loss": "", "lr": "", "seconds": "", "val_loss": ""}
        task.train(False)
        try:
            val = task.val_loss()
        finally:
            task.train(True)
        if val is not None:  # the validation loss before any step, to measure the training against
            baseline["val_loss"] = f"{val:.6g}"
            rows.append(baseline)
    bar = tqdm(total=settings.steps, initial=start, desc="training", unit="step")
    try:
        while step < settings.steps:
            began = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for _ in range(settings.grad_accum):
                loss = task.loss(generator) / settings.grad_accum
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"the training loss is {loss.item()} at step {step + 1}: lower --lr, or train in bf16/fp32 "
                        "instead of fp16"
                    )
                scaler.scale(loss).backward()
                total += loss.item()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            row = {"step": step, "loss": f"{total:.6g}", "lr": f"{optimizer.param_groups[0]['lr']:.6g}",
                   "seconds": f"{time.perf_counter() - began:.3f}", "val_loss": ""}
            if settings.val_every and step % settings.val_every == 0:
                evaluate(step, row)
            rows.append(row)
            bar.set_postfix_str(f"loss {total:.4f}")
            bar.update(1)
            if on_step is not None:
                on_step(step, settings.steps, total)
            if settings.save_every and step % settings.save_every == 0 and step < settings.steps:
                save(step)
    except KeyboardInterrupt:
        if step > start:
            log.info("interrupted: saving %s", save(step))
        raise
    finally:
        bar.close()
    if not rows or rows[-1].get("val_loss") in (None, ""):
        if rows:
            evaluate(step, rows[-1])
    final = save(step)
    task.save(out)
    log.info("trained %d steps: %s (checkpoint %s, log %s)", step, out, final, log_path)
    return final


def _check_same_run(previous: dict, current: dict) -> None:
    """A resumed run must be the same run: only the step count may change."""
    def strip(info):
        info = json.loads(json.dumps(info, default=str))
        info.get("loop", {}).pop("steps", None)
        return info

    a, b = strip(previous), strip(current)
    if a != b:
        keys = sorted({k for k in set(a) | set(b) if a.get(k) != b.get(k)})
        raise ValueError(f"--resume with other settings than the run in the folder ({', '.join(keys)} differ); "
                         "use the same options (only --steps may change) or another --out")
