"""Soak test of the pack in one real ComfyUI server: N queued prompts mixing every shipped workflow (tiny
model, random valid settings), bad inputs and Cancels at random moments. Every prompt must end in success,
a clean error or an interruption; the server's memory and open files are recorded after each, and a fixed
prompt run first and last must give the same frames, and the server's RSS after the last prompt must stay
within --rss-growth MiB (default 120) of its RSS after prompt 20, and its open files within 8 of that
prompt's. Exits 1 when any of these fails.

    python benchmarks/soak_comfy.py [--prompts 200] [--seed 0] [--rss-growth 120] [--json OUT.json] [--plot RSS.png]

Needs what the tests need (the pinned ComfyUI and the tiny reference model: docs/development.md).
tests/test_comfy_soak.py runs a shorter soak with the same code.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

log = logging.getLogger("soak")

# Bad inputs a user makes, each with the node that must name it.
BAD = [
    ("ToonCrafterConditioning", {"width": 72}, "is not a multiple of"),
    ("ToonCrafterColorize", {"key_frames": "0, 3"}, "keys has 3 image(s) but key_frames names 2"),
    ("ToonCrafterSequence", {"trim": 9}, "would cut every in-between"),
]

# A socket or log file may be open at the moment of a reading; more than this many is a leak.
OPEN_FILES_SLACK = 8


@dataclass
class Record:
    index: int
    workflow: str
    outcome: str  # success, error, interrupted
    seconds: float
    rss_mib: float
    open_files: int
    message: str = ""


@dataclass
class SoakReport:
    prompts: int
    outcomes: dict = field(default_factory=dict)
    errors_by_kind: dict = field(default_factory=dict)
    unexpected: list = field(default_factory=list)
    rss_mib_at: dict = field(default_factory=dict)
    open_files_at: dict = field(default_factory=dict)
    peak_rss_mib: float = 0.0
    rss_growth_bound_mib: float = 0.0
    within_bounds: bool = False
    same_frames_first_and_last: bool = False
    records: list = field(default_factory=list)


def server_usage(server) -> tuple[float, int]:
    """RSS (MiB) of the server and its children, and the server's open file descriptors."""
    import psutil

    process = psutil.Process(server._process.pid)
    rss = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
    return rss / 2**20, process.num_fds()


def workflow_prompts(server) -> dict[str, dict]:
    """Every shipped workflow (but the pruned one, whose encoders are not staged) in API form, on the tiny model."""
    from comfy_harness import workflow_to_api
    from test_comfy_nodes import WORKFLOWS, _tiny_settings

    info = server.object_info()
    prompts = {}
    for path in WORKFLOWS:
        if "pruned" in path.name:
            continue
        api = workflow_to_api(json.loads(path.read_text()), info)
        _tiny_settings(api, path.stem)
        prompts[path.stem] = api
    return prompts


def _randomize(api: dict, rng: random.Random) -> dict:
    api = json.loads(json.dumps(api))
    for node in api.values():
        inputs = node["inputs"]
        if "seed" in inputs:
            inputs["seed"] = rng.choice([0, rng.randrange(2**32), 2**64 - 1])
        if "noise_seed" in inputs:
            inputs["noise_seed"] = rng.randrange(2**32)
        if "eta" in inputs:
            inputs["eta"] = rng.choice([0.0, 0.5, 1.0])
        if "cfg" in inputs and node["class_type"] != "KSampler":
            inputs["cfg"] = rng.choice([1.0, 4.0, 7.5])
        if "filename_prefix" in inputs:
            inputs["filename_prefix"] = "soak/p"
    return api


def _frames(server, entry: dict) -> list[bytes]:
    return [server.view(f) for out in entry["outputs"].values() for f in out.get("images", [])]


def soak(server, prompts: int, seed: int = 0, on_record=None, rss_growth_mib: float = 120.0) -> SoakReport:
    from comfy_harness import ComfyError

    rng = random.Random(seed)
    flows = workflow_prompts(server)
    names = sorted(flows)
    fixed = _randomize(flows["tooncrafter_basic"], random.Random(12345))
    first = _frames(server, server.run(fixed, timeout=600))
    report = SoakReport(prompts, rss_growth_bound_mib=rss_growth_mib)
    for i in range(1, prompts + 1):
        name = names[(i - 1) % len(names)] if i <= len(names) else rng.choice(names)
        api = _randomize(flows[name], rng)
        expect = None
        roll = rng.random()
        if roll < 0.12:
            candidates = [b for b in BAD if any(n["class_type"] == b[0] for n in api.values())]
            if candidates:
                node_type, values, expect = rng.choice(candidates)
                for node in api.values():
                    if node["class_type"] == node_type:
                        node["inputs"].update(values)
        t0 = time.monotonic()
        try:
            prompt_id = server.queue_prompt(api)
        except ComfyError as e:  # refused by validation before running: a clean error too
            outcome, message = "error", str(e).splitlines()[0][:200]
        else:
            if expect is None and roll > 0.9:
                time.sleep(rng.uniform(0.0, 1.5))
                server.interrupt(prompt_id)
            entry = server.wait_for(prompt_id, timeout=900, check=False)
            status = entry["status"]
            events = {event: data for event, data in status.get("messages", [])}
            if status.get("status_str") == "success":
                outcome, message = "success", ""
            elif "execution_interrupted" in events:
                outcome, message = "interrupted", ""
            else:
                error = events.get("execution_error", {})
                outcome = "error"
                message = f"{error.get('node_type')}: {str(error.get('exception_message', '')).strip()}"
                if expect is None or expect not in message or "\n" in message or "Traceback" in message:
                    report.unexpected.append({"index": i, "workflow": name, "message": message[:500]})
        rss, fds = server_usage(server)
        record = Record(i, name, outcome, round(time.monotonic() - t0, 2), round(rss, 1), fds, message[:200])
        report.records.append(asdict(record))
        report.outcomes[outcome] = report.outcomes.get(outcome, 0) + 1
        if outcome == "error":
            kind = message.split(":")[0] or "validation"
            report.errors_by_kind[kind] = report.errors_by_kind.get(kind, 0) + 1
        if on_record is not None:
            on_record(record)
    last = _frames(server, server.run(fixed, timeout=600))
    report.same_frames_first_and_last = last == first
    for at in (20, prompts):
        if at <= prompts:
            report.rss_mib_at[at] = report.records[at - 1]["rss_mib"]
            report.open_files_at[at] = report.records[at - 1]["open_files"]
    report.peak_rss_mib = max((r["rss_mib"] for r in report.records), default=0.0)
    # Prompt 20, not prompt 1: by then every workflow has loaded its models once, so growth means a leak.
    base = report.records[min(20, len(report.records)) - 1] if report.records else None
    end = report.records[-1] if report.records else None
    report.within_bounds = base is not None and (end["rss_mib"] - base["rss_mib"] <= rss_growth_mib
                                                 and end["open_files"] - base["open_files"] <= OPEN_FILES_SLACK)
    return report


def plot(report: SoakReport, path: Path) -> Path:
    from tooncrafter_core.charts import line_chart

    points = [(r["index"], r["rss_mib"]) for r in report.records]
    return line_chart({"server RSS (ComfyUI + pack)": points}, path, f"Soak: {report.prompts} prompts in one ComfyUI",
                      "prompt", "MiB")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rss-growth", type=float, default=120.0,
                        help="most MiB the server's RSS may grow from prompt 20 to the last prompt")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--plot", type=Path, help="write the RSS-per-prompt chart here")
    args = parser.parse_args()
    from comfy_harness import ComfyServer
    from helpers import TINY_SKETCH_ENCODER, tiny_checkpoint, tiny_sketch_encoder

    server = ComfyServer(extra_args=("--fp32-text-enc",))
    tiny_checkpoint(server.tooncrafter_models_dir, stem="tooncrafter_tiny")
    from helpers import DC_I2V, DC_INTERP

    tiny_checkpoint(server.tooncrafter_models_dir, stem="dynamicrafter_tiny_i2v", case=DC_I2V)
    tiny_checkpoint(server.tooncrafter_models_dir, stem="dynamicrafter_tiny_interp", case=DC_INTERP)
    tiny_sketch_encoder(server.models_dir / "controlnet" / TINY_SKETCH_ENCODER)
    with server:
        report = soak(server, args.prompts, args.seed,
                      lambda r: log.info("%3d %-40s %-11s %6.1f s  %7.1f MiB  %3d files", r.index, r.workflow, r.outcome,
                                         r.seconds, r.rss_mib, r.open_files), args.rss_growth)
    summary = {k: v for k, v in asdict(report).items() if k != "records"}
    log.info("%s", json.dumps(summary, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(report), indent=1))
    if args.plot:
        plot(report, args.plot)
    ok = not report.unexpected and report.same_frames_first_and_last and report.within_bounds
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
