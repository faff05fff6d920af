"""The benchmark is how speed is measured: its flags and JSON keys must keep working (tiny model)."""

import json
import os
import subprocess
import sys

from helpers import REPO, SHARED, TINY


def test_bench_interpolate_runs_with_its_flags_and_writes_its_keys(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "bench_interpolate.py"), "--tiny", str(TINY), "--device", "cpu",
        "--dtypes", "fp32,bf16", "--steps", "2", "--runs", "1", "--warmup-steps", "1", "--phase-steps", "1",
        "--weight-dtype", "fp8_e4m3fn", "--channels-last", "--decode-chunk", "2", "--cli", "--json", str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failed"] == {}
    assert report["settings"]["weight_dtype"] == "fp8_e4m3fn" and report["settings"]["channels_last"]
    for dtype in ("fp32", "bf16"):
        result = report["results"][dtype]
        summary = result["summary"]
        assert summary["total_s_mean"] > 0 and summary["step_ms_median"] > 0 and summary["all_finite"]
        assert set(result["phases"]) == {"conditioning", "vae_encode", "sampling", "decode"}
        assert all(p["seconds"] > 0 for p in result["phases"].values())
        assert result["process_peak_rss_gb"] > 0
        assert result["runs"][0]["video_shape"] == [1, 3, report["settings"]["frames"], 64, 64]
        # --cli: the same clip through the CLI in its own process, which reports its own peak
        assert result["cli"]["frames_written"] == report["settings"]["frames"]
        assert 0 < result["cli"]["peak_rss_gb"] and result["cli"]["seconds"] > 0


def test_ode_error_benchmark_measures_samplers_against_its_reference_and_resumes(tmp_path):
    out, md, png = tmp_path / "ode.json", tmp_path / "ode.md", tmp_path / "ode.png"
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "ode_error.py"), "--comfy", str(SHARED / "comfyui"),
        "--model", "tiny", "--tiny", str(TINY), "--samplers", "euler", "heun", "--schedulers", "simple",
        "--steps", "4", "8", "--reference-steps", "50", "--json", str(out), "--markdown", str(md), "--plot", str(png),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd="/tmp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert set(runs) == {f"{s}|simple|{n}" for s in ("euler", "heun") for n in (4, 8)} | {
        f"original_ddim|trailing|{n}" for n in (4, 8)}
    # Euler is first order, Heun second: more steps, less error; Heun pays two passes a step but the last
    assert runs["euler|simple|8"]["error"] < runs["euler|simple|4"]["error"]
    assert runs["heun|simple|8"]["error"] < runs["euler|simple|8"]["error"]
    assert runs["euler|simple|8"]["passes"] == 8 and runs["heun|simple|8"]["passes"] == 15
    assert report["reference"]["passes"] == 50
    assert "| euler | " in md.read_text() and png.stat().st_size > 1000
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd="/tmp")
    assert again.returncode == 0 and "steps:" not in again.stderr  # everything was done: nothing reruns


def test_gpu_check_runs_every_command_on_the_cpu_in_its_dry_run(tmp_path):
    env = {**os.environ, "COMFY": str(SHARED / "comfyui"), "OUT": str(tmp_path), "TINY": str(TINY)}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "dry-run"], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0 and "failed runs: 0" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = {"steps50", "steps25", "fp8_e4m3fn", "channels_last", "comfy_normal", "comfy_6gib_lowvram",
             "comfy_native_ipndm_beta_4", "train_step"}
    for name in names:
        report = json.loads((tmp_path / f"dryrun_cpu_{name}.json").read_text())
        assert report, name
    native = json.loads((tmp_path / "dryrun_cpu_comfy_native_ipndm_beta_4.json").read_text())
    assert native["sampler"] == "ipndm" and native["scheduler"] == "beta" and native["steps"] == 4 and native["finite"]
    train = json.loads((tmp_path / "dryrun_cpu_train_step.json").read_text())
    assert set(train["runs"]) == {"64x64", "64x64_checkpointing", "128x128", "128x128_checkpointing"}
    estimate = train["estimate_320x512"]
    assert 0 < estimate["activations_with_gib"] < estimate["activations_without_gib"]
