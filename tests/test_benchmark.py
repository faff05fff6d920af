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
        "--dtypes", "bf16", "--steps", "2", "--runs", "1", "--warmup-steps", "1", "--phase-steps", "1",
        "--weight-dtype", "fp8_e4m3fn", "--channels-last", "--decode-chunk", "2", "--cli", "--json", str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failed"] == {}
    assert report["settings"]["weight_dtype"] == "fp8_e4m3fn" and report["settings"]["channels_last"]
    for dtype in ("bf16",):  # fp32 runs in gpu_check.sh's dry run (test below)
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
             "comfy_native_ipndm_beta_4", "comfy_native_easycache", "comfy_native_torch_compile", "train_step"}
    for name in names:
        report = json.loads((tmp_path / f"dryrun_cpu_{name}.json").read_text())
        assert report, name
    native = json.loads((tmp_path / "dryrun_cpu_comfy_native_ipndm_beta_4.json").read_text())
    assert native["sampler"] == "ipndm" and native["scheduler"] == "beta" and native["steps"] == 4 and native["finite"]
    assert native["unet_passes_warm"] == 4
    cached = json.loads((tmp_path / "dryrun_cpu_comfy_native_easycache.json").read_text())
    compiled = json.loads((tmp_path / "dryrun_cpu_comfy_native_torch_compile.json").read_text())
    assert cached["easycache"] == 0.1 and cached["steps"] == 6 and 0 < cached["unet_passes_warm"] <= 6 and cached["finite"]
    assert compiled["torch_compile"] == "eager" and compiled["finite"]
    profile = json.loads((tmp_path / "dryrun_cpu_steps50.json").read_text())["results"]["fp32"]["profile"]
    shares = [o["share"] for o in profile["top_ops"]]
    assert profile["flops_per_step"] > 0 and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-6
    assert any("conv" in o["name"] for o in profile["top_ops"]) and any("mm" in o["name"] for o in profile["top_ops"])
    assert abs(profile["achieved_tflops"] - profile["flops_per_step"] / profile["timed_step_ms"] * 1e3 / 1e12) < 1e-9
    targets = json.loads((tmp_path / "dryrun_cpu_targets.json").read_text())
    measured = {t["target"]: t["measured"] for t in targets["targets"]}
    assert measured["3 steps fp32, end to end"] > 0 and measured["--lowvram time over normal mode"] > 0
    assert "| target | measured | limit | met |" in proc.stdout
    train = json.loads((tmp_path / "dryrun_cpu_train_step.json").read_text())
    assert set(train["runs"]) == {"64x64", "64x64_checkpointing", "128x128", "128x128_checkpointing"}
    estimate = train["estimate_320x512"]
    assert 0 < estimate["activations_with_gib"] < estimate["activations_without_gib"]


def _load_check_targets():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_targets", REPO / "benchmarks" / "check_targets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_targets_explains_each_miss_with_phases_profile_and_nodes(tmp_path):
    check_targets = _load_check_targets()
    phases = {"conditioning": {"seconds": 0.2, "peak_gib": 6.1}, "decode": {"seconds": 1.9, "peak_gib": 11.3}}
    profile = {"flops_per_step": 2.0e13, "achieved_tflops": 250.0, "fraction_of_peak": 0.25, "top_ops": [
        {"name": "aten::convolution_backward_or_so", "ms": 30.0, "share": 0.6, "calls": 10},
        {"name": "aten::mm", "ms": 10.0, "share": 0.2, "calls": 200}]}
    steps50 = {"settings": {"steps": 50}, "results": {
        "fp16": {"summary": {"total_s_min": 4.2, "step_ms_median": 45.0, "peak_run_gib": 11.3}, "phases": phases,
                 "profile": profile},
        "bf16": {"summary": {}, "phases": phases, "profile": profile}}}

    def nodes(cond, samp, dec, peak):
        return {"peak_gib": peak, "nodes": {"load": {"seconds": 9.0, "peak_gib": 0.0},
                                            "conditioning": {"seconds": cond, "peak_gib": 1.0},
                                            "sample (warm)": {"seconds": samp, "peak_gib": peak},
                                            "decode": {"seconds": dec, "peak_gib": 2.0}}}

    reports = {"steps50": steps50, "comfy_normal": nodes(0.1, 2.0, 0.4, 7.5), "comfy_6gib_lowvram": nodes(0.2, 4.0, 0.8, 4.5)}
    for name, report in reports.items():
        (tmp_path / f"card_{name}.json").write_text(json.dumps(report))
    (tmp_path / "card_comfy_native_ipndm_beta_16.json").write_text(json.dumps(
        {**nodes(0.1, 0.5, 0.3, 7.0), "sampler": "ipndm", "scheduler": "beta", "steps": 16}))

    report = check_targets.check(tmp_path, "card")
    met = {t["target"]: t["met"] for t in report["targets"]}
    assert met == {
        "50 steps fp16, end to end": False,  # 4.2 > 3.0
        "50 steps fp16, per step (median)": True,
        "50 steps fp16, peak memory of a run": False,  # 11.3 > 8
        "ComfyUI nodes, normal mode, peak VRAM": True,
        "native KSampler ipndm/beta 16 steps, one clip": True,  # 0.1 + 0.5 + 0.3, the load not counted
        "--lowvram with a 6 GiB budget, peak VRAM": True,
        "--lowvram time over normal mode": False,  # 5.0 / 2.5 = 2x
    }
    text = "\n".join(report["explanations"])
    assert "decode 1.900 s / 11.3 GiB" in text and "aten::mm" in text and "25.0% of the dense peak" in text
    assert text.count("phases (seconds, peak GiB)") == 1  # two misses of one run explained once
    assert "sample (warm) 4.00 s" in text  # the lowvram slowdown shows its nodes
    assert report["profiled_dtype"] == "bf16" and report["step_fraction_of_dense_peak"] == 0.25
    md = check_targets.markdown(report)
    assert "| 50 steps fp16, end to end | 4.2 s | ≤ 3 s | **no** |" in md and "25.0% of the card's dense peak" in md
