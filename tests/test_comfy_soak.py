"""A short soak in the test ComfyUI (benchmarks/soak_comfy.py runs the long one): 30 prompts mixing every
shipped workflow, bad inputs and Cancels end in success, a clean one-line error or an interruption; the
server's memory after prompt 30 stays within a bound of prompt 10's, its open files do not grow, and a fixed
prompt gives the same frames first and last."""

from __future__ import annotations

import sys

from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import soak_comfy  # noqa: E402

PROMPTS = 30
# Measured growth from prompt 10 to 30 on the CPU: see the closing note of issue #24; the bound leaves
# room for allocator noise but not for a leak of a model copy (the tiny model is ~60 MiB per copy).
RSS_GROWTH_MIB = 120
OPEN_FILES_GROWTH = soak_comfy.OPEN_FILES_SLACK


def test_thirty_mixed_prompts_end_cleanly_with_flat_memory_and_the_same_frames(comfy_server):
    report = soak_comfy.soak(comfy_server, PROMPTS, seed=1)
    assert report.unexpected == [], report.unexpected
    assert sum(report.outcomes.values()) == PROMPTS and set(report.outcomes) <= {"success", "error", "interrupted"}
    assert report.outcomes.get("success", 0) >= PROMPTS // 2 and report.outcomes.get("error", 0) >= 1
    assert report.same_frames_first_and_last
    early, late = report.records[9], report.records[-1]
    assert late["rss_mib"] - early["rss_mib"] <= RSS_GROWTH_MIB, (early, late)
    assert late["open_files"] - early["open_files"] <= OPEN_FILES_GROWTH, (early, late)
