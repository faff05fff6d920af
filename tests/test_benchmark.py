"""The benchmark is how speed is measured: its flags and JSON keys must keep working (tiny model)."""

import json
import subprocess
import sys

from helpers import REPO, TINY


def test_bench_interpolate_runs_with_its_flags_and_writes_its_keys(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "bench_interpolate.py"), "--tiny", str(TINY), "--device", "cpu",
        "--dtypes", "fp32,bf16", "--steps", "2", "--runs", "1", "--warmup-steps", "1", "--phase-steps", "1",
        "--weight-dtype", "fp8_e4m3fn", "--channels-last", "--decode-chunk", "2", "--json", str(out),
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
