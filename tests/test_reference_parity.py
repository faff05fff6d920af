"""Our core against the tensors recorded from the original ToonCrafter (fp32, CPU, < 1e-4)."""

import subprocess
import sys

import pytest
import torch
from helpers import REPO, reference_cases
from safetensors.torch import load_file

from tooncrafter_core.commands import replay

CASES = reference_cases()


def test_cases_are_found():
    assert len(CASES) >= 2, "expected the recorded cases in ../shared/reference"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_replay_cli_passes_compare(case, tmp_path):
    out = tmp_path / "ours.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "tooncrafter_core", "replay", str(case), str(out), "--compare"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stderr + proc.stdout
    ours = load_file(str(out))
    errors = replay.compare(ours, case)
    # Every stage the reference records (other than our inputs) was written and compared.
    reference_names = set(load_file(str(case / "reference.safetensors"))) - set(replay.INPUT_KEYS)
    assert set(errors) == reference_names
    worst = max(errors, key=errors.get)
    assert errors[worst] < replay.TOLERANCE, f"{worst}: {errors[worst]:.3e}"


@pytest.mark.parametrize("dtype,bound", [(torch.bfloat16, 0.3), (torch.float16, 0.05)], ids=["bf16", "fp16"])
def test_half_precision_replay_is_finite_and_close(dtype, bound):
    case = CASES[0]
    ours = replay.run_case(case, dtype)
    for name, t in ours.items():
        assert torch.isfinite(t).all(), name
    errors = replay.compare(ours, case)
    assert max(errors.values()) < bound, errors


def test_compare_detects_a_wrong_stage():
    case = CASES[0]
    ours = replay.run_case(case)
    ours["unet_out"] = ours["unet_out"] * 1.001
    assert replay.compare(ours, case)["unet_out"] > replay.TOLERANCE
