"""A shot list on a Ray cluster (`batch --ray [ADDRESS]`, the `cluster` extra).

One actor per GPU (or per `cpus_per_worker` CPUs where the cluster has no GPU) loads the model
once. The driver reads each shot's keyframes, hands the shot to whichever actor is free, and
writes the frames that come back, so workers need the package's dependencies and the checkpoint
(or a connection to download the default release) but no shared disk. An actor that dies is
replaced and its shot retried up to `retries` times; a shot that fails by itself (a bad keyframe,
an overflow) is not retried. Ray does the scheduling, we only keep the actors busy.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Callable, Optional

import torch

from .shots import (
    BatchError,
    BatchReport,
    ModelSpec,
    Progress,
    RenderSettings,
    Shot,
    error_text,
    fail,
    load_keyframes,
    prepare,
    render,
    write_shot,
)

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parents[1]  # tooncrafter_core, shipped to every worker


class Renderer:
    """The Ray actor: a model on this worker's device."""

    def __init__(self, spec: ModelSpec):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = spec.compute_dtype(self.device)
        self.model = spec.load(self.device)

    def pid(self) -> int:
        return os.getpid()

    def render(self, shot: Shot, images: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
        began = time.perf_counter()
        clip = render(self.model, shot, images, self.device, self.dtype)
        return clip, time.perf_counter() - began


def _import_ray():
    try:
        import ray
    except ImportError:
        raise BatchError(
            'Ray is not installed: pip install "ray[default]" (or, in the pack\'s folder, pip install ".[cluster]"), '
            "or run without --ray"
        ) from None
    return ray


def run_ray(
    shots: list[Shot],
    out: str | Path,
    shared: RenderSettings,
    spec: ModelSpec,
    address: Optional[str] = None,
    workers: Optional[int] = None,
    cpus_per_worker: int = 1,
    retries: int = 2,
    on_dispatch: Optional[Callable[[int, str], None]] = None,
) -> BatchReport:
    """Render the shots on Ray: a local cluster (`address` None) or an existing one. `on_dispatch(pid,
    shot_id)` is called as each shot is handed to the worker process `pid`."""
    ray = _import_ray()
    out = Path(out)
    report, began = BatchReport(), time.perf_counter()
    bar = Progress(len(shots))
    todo = prepare(shots, out, shared, report, bar)
    if not todo:
        bar.close()
        report.seconds = time.perf_counter() - began
        log.info("%s", report.summary())
        return report

    # The package travels to the workers with the job: they need its dependencies, not our files.
    ray.init(address=address, runtime_env={"py_modules": [str(PACKAGE)]}, log_to_driver=True)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus:
            options, capacity = {"num_gpus": 1, "num_cpus": 1}, gpus
        else:
            options, capacity = {"num_cpus": cpus_per_worker}, max(1, int(resources.get("CPU", 1)) // cpus_per_worker)
        count = min(workers or capacity, capacity, len(todo))
        actor_class = ray.remote(max_restarts=0, **options)(Renderer)
        log.info("Ray: %d worker(s) with %s each, %d shot(s) to render", count, options, len(todo))

        def start() -> tuple:
            actor = actor_class.remote(spec)
            try:
                pid = ray.get(actor.pid.remote())  # waits for the model load; a bad checkpoint fails here
            except ray.exceptions.RayError as e:
                raise BatchError(f"a Ray worker could not load the model: {_cause(e)}") from None
            return actor, pid

        idle = [start() for _ in range(count)]
        pending = deque((shot, print_, 1) for shot, print_ in todo)
        running = {}
        while pending or running:
            while idle and pending:
                shot, print_, attempt = pending.popleft()
                try:
                    images = load_keyframes(shot)
                except Exception as e:  # a missing or unreadable keyframe fails this shot only
                    fail(out, shot, error_text(e), attempt, report, bar)
                    continue
                actor, pid = idle.pop()
                running[actor.render.remote(shot, images)] = (actor, pid, shot, print_, attempt)
                if on_dispatch is not None:
                    on_dispatch(pid, shot.id)
            if not running:
                break
            (ready,), _ = ray.wait(list(running), num_returns=1)
            actor, pid, shot, print_, attempt = running.pop(ready)
            try:
                clip, seconds = ray.get(ready)
            except ray.exceptions.RayActorError as e:
                log.warning("worker %d died while rendering shot %s (attempt %d): %s", pid, shot.id, attempt, _cause(e))
                idle.append(start())
                if attempt <= retries:
                    report.retried.append(shot.id)
                    pending.appendleft((shot, print_, attempt + 1))
                else:
                    fail(out, shot, f"its worker died {attempt} times: {_cause(e)}", attempt, report, bar)
                continue
            except ray.exceptions.RayTaskError as e:
                idle.append((actor, pid))
                fail(out, shot, _cause(e), attempt, report, bar)
                continue
            idle.append((actor, pid))
            write_shot(out, shot, print_, clip, seconds)
            report.done.append(shot.id)
            bar.step(shot, "done")
    finally:
        bar.close()
        ray.shutdown()
    report.seconds = time.perf_counter() - began
    log.info("%s", report.summary())
    return report


def _cause(e: Exception) -> str:
    cause = getattr(e, "cause", None)
    return error_text(cause) if isinstance(cause, BaseException) else str(e).strip().splitlines()[-1]
