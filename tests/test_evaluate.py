"""`python -m tooncrafter_core evaluate` on the tiny fixture: triplet folders drawn here, scores that
agree with direct computations on the saved files, the generated frame that a direct `interpolate`
call gives, multi-run comparisons, LoRA sweeps and the errors that come before any model load."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from helpers import random_lora, save_peft_lora, tiny_checkpoint
from PIL import Image, ImageDraw
from skimage.metrics import structural_similarity

from tooncrafter_core import datasets, frames, metrics
from tooncrafter_core.__main__ import main
from tooncrafter_core.commands import evaluate
from tooncrafter_core.pipeline import interpolate
from tooncrafter_core.settings import SamplingConfig
from tooncrafter_core.weights.checkpoint import UNET_PREFIX, load_for, read_state_dict

SIZE = 64  # the tiny model's pixel size
TINY_FRAMES = 4
STEPS = ["--steps", "2", "--device", "cpu"]
# name -> (width, height, suffix): b_wide is fitted (cropped) to 64x64, c_jpeg is read from JPEG.
TRIPLETS = {"a_disc": (64, 64, ".png"), "b_wide": (80, 64, ".png"), "c_jpeg": (64, 64, ".jpg")}
TWO = ("a_disc", "c_jpeg")


def _draw(width: int, height: int, x: float, hue: int) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, hue)], axis=-1).astype(np.uint8)
    im = Image.fromarray(background)
    r = height // 6
    ImageDraw.Draw(im).ellipse([x - r, height / 2 - r, x + r, height / 2 + r], fill=(255, 255 - hue, 40))
    return im


def _make_triplets(root: Path, names: tuple[str, ...] = tuple(TRIPLETS)) -> Path:
    """Triplet folders `names` of TRIPLETS under root: a disc moving left to right on a gradient."""
    for i, (name, (w, h, suffix)) in enumerate(TRIPLETS.items()):
        if name not in names:
            continue
        folder = root / name
        folder.mkdir(parents=True)
        for j, stem in enumerate(datasets.FRAME_NAMES):
            _draw(w, h, w * (0.25 + 0.25 * j), hue=60 * i).save(folder / (stem + suffix))
    return root


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _run(argv: list[str]) -> tuple[int, list[str]]:
    """main(argv) in-process -> (exit code, log messages of tooncrafter_core)."""
    handler = _Records()
    logger = logging.getLogger("tooncrafter_core")
    logger.addHandler(handler)
    try:
        return main(argv), handler.messages
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def triplets(tmp_path_factory):
    return _make_triplets(tmp_path_factory.mktemp("triplets"))


@pytest.fixture(scope="module")
def single(ckpt, triplets, tmp_path_factory):
    """One fp32 run written straight into its --out, and its log."""
    out = tmp_path_factory.mktemp("single")
    code, messages = _run(["evaluate", "--ckpt", str(ckpt), "--triplets", str(triplets), "--out", str(out),
                           "--dtype", "fp32", "--worst", "2", *STEPS])
    assert code == 0
    return out, messages


@pytest.fixture(scope="module")
def two_runs(ckpt, tmp_path_factory):
    """fp32 and bf16 runs of two triplets (fewer samplings: the runs are what this checks)."""
    triplets = _make_triplets(tmp_path_factory.mktemp("two_triplets"), TWO)
    out = tmp_path_factory.mktemp("two_runs")
    code, _ = _run(["evaluate", "--ckpt", str(ckpt), "--triplets", str(triplets), "--out", str(out),
                    "--dtype", "fp32", "bf16", "--worst", "2", *STEPS])
    assert code == 0
    return out


def test_scores_csv_has_the_columns_and_one_row_per_triplet(single):
    out, _ = single
    with open(out / "scores.csv") as f:
        assert f.readline().strip() == "triplet,psnr,ssim,lpips"
    assert [r["triplet"] for r in _csv(out / "scores.csv")] == sorted(TRIPLETS)
    for name in TRIPLETS:
        assert _pixels(out / name / "generated.png").shape == (SIZE, SIZE, 3)
        assert _pixels(out / name / "target.png").shape == (SIZE, SIZE, 3)


def test_psnr_and_ssim_agree_with_direct_computations_on_the_files(single, triplets):
    out, _ = single
    for row in _csv(out / "scores.csv"):
        generated = _pixels(out / row["triplet"] / "generated.png").astype(np.float64)
        target = _pixels(out / row["triplet"] / "target.png")
        mse = np.mean((generated - target) ** 2)
        assert float(row["psnr"]) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-6)
        ssim = structural_similarity(target, generated.astype(np.uint8), channel_axis=2, data_range=255)
        assert float(row["ssim"]) == pytest.approx(ssim, abs=1e-6)
        if TRIPLETS[row["triplet"]][:2] == (SIZE, SIZE):
            # Already at the model's size: the target is frame2 itself, bit for bit (JPEG included).
            frame2 = _pixels(next((triplets / row["triplet"]).glob("frame2.*")))
            assert np.array_equal(frame2, target)
            direct = 10 * math.log10(255**2 / np.mean((generated - frame2) ** 2))
            assert float(row["psnr"]) == pytest.approx(direct, abs=1e-6)


def test_wide_frame2_is_fitted_like_the_keyframes(single, triplets):
    out, _ = single
    fitted = frames.fit(frames.load_image(triplets / "b_wide" / "frame2.png"), SIZE, SIZE, "crop")
    expected = (fitted[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(_pixels(out / "b_wide" / "target.png"), expected)


def test_lpips_is_a_distance_or_unavailable_with_the_reason_logged(single):
    out, messages = single
    values = {r["lpips"] for r in _csv(out / "scores.csv")}
    if values == {metrics.UNAVAILABLE}:
        assert any(m.startswith("LPIPS unavailable: ") for m in messages)
        assert "LPIPS unavailable" in (out / "summary.md").read_text()
    else:
        assert all(0.0 <= float(v) <= 1.0 for v in values)


def test_generated_png_is_the_middle_frame_of_a_direct_interpolate_call(single, ckpt, triplets):
    out, _ = single
    model = load_for(ckpt, torch.float32)
    # b_wide: its keyframes are fitted (80x64 cropped to 64x64) before sampling.
    start, end = (
        frames.to_model(frames.fit(frames.load_image(triplets / "b_wide" / f"{stem}.png"), SIZE, SIZE, "crop"))
        for stem in ("frame1", "frame3")
    )
    video = interpolate(model, start, end, "", SamplingConfig(steps=2), generator=torch.Generator("cpu").manual_seed(123))
    assert video.shape[2] == TINY_FRAMES
    middle = frames.from_model(video[0, :, TINY_FRAMES // 2]).permute(1, 2, 0).numpy() * 255
    assert np.abs(_pixels(out / "b_wide" / "generated.png") - middle).max() <= 1.0


def test_summary_and_worst_strip(single):
    out, _ = single
    summary = (out / "summary.md").read_text()
    rows = _csv(out / "scores.csv")
    worst = sorted(rows, key=lambda r: float(r["psnr"]))
    assert f"| {len(rows)} | " in summary and worst[0]["triplet"] in summary
    strip = _pixels(out / "worst.png")
    assert strip.shape == (2 * SIZE, 5 * SIZE, 3)
    # Row 0 is the lowest-PSNR triplet: frame1 | frame2 | generated | frame3 | difference.
    assert np.array_equal(strip[:SIZE, 2 * SIZE : 3 * SIZE], _pixels(out / worst[0]["triplet"] / "generated.png"))
    assert np.array_equal(strip[SIZE:, SIZE : 2 * SIZE], _pixels(out / worst[1]["triplet"] / "target.png"))


def test_two_dtypes_make_two_runs_and_a_comparison(two_runs, single):
    out = two_runs
    for name in ("fp32", "bf16"):
        assert [r["triplet"] for r in _csv(out / name / "scores.csv")] == list(TWO)
        assert (out / name / "summary.md").is_file() and (out / name / "run.json").is_file()
    assert not (out / "scores.csv").exists()
    # The same settings in fp32 give the same frames whether one run or several.
    assert np.array_equal(_pixels(out / "fp32" / "a_disc" / "generated.png"), _pixels(single[0] / "a_disc" / "generated.png"))
    table = (out / "comparison.md").read_text()
    assert "| fp32 | fp32 |" in table and "| bf16 | bf16 |" in table
    strip = _pixels(out / "comparison_worst.png")
    assert strip.shape == (evaluate.LABEL_HEIGHT + 2 * SIZE, (2 + 2 + 1) * SIZE, 3)


def test_compare_rebuilds_the_comparison_from_run_folders(two_runs, tmp_path):
    runs = [str(two_runs / "fp32"), str(two_runs / "bf16")]
    code, _ = _run(["evaluate", "--compare", *runs, "--out", str(tmp_path), "--worst", "2"])
    assert code == 0
    assert (tmp_path / "comparison.md").read_text() == (two_runs / "comparison.md").read_text()
    assert np.array_equal(_pixels(tmp_path / "comparison_worst.png"), _pixels(two_runs / "comparison_worst.png"))


def test_missing_frame2_is_an_error_before_the_model_loads(tmp_path):
    broken = _make_triplets(tmp_path / "triplets")
    (broken / "b_wide" / "frame2.png").unlink()
    # The checkpoint does not exist either: the triplet error must come first.
    code, messages = _run(["evaluate", "--ckpt", str(tmp_path / "none.safetensors"), "--triplets", str(broken),
                           "--out", str(tmp_path / "out"), *STEPS])
    assert code == 2
    error = next(m for m in messages if m.startswith("error: "))
    assert str(broken / "b_wide") in error and "frame2" in error and "none.safetensors" not in error


def test_no_triplet_folders_is_an_error_naming_the_layout(tmp_path):
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    code, messages = _run(["evaluate", "--ckpt", "x.safetensors", "--triplets", str(tmp_path / "empty"),
                           "--out", str(tmp_path / "out")])
    assert code == 2
    error = next(m for m in messages if m.startswith("error: "))
    assert str(tmp_path / "empty") in error and "frame1, frame2 and frame3" in error


def test_lora_sweep_strength_zero_is_the_base_model(ckpt, single, tmp_path):
    unet_state = {k[len(UNET_PREFIX) :]: v for k, v in read_state_dict(ckpt).items() if k.startswith(UNET_PREFIX)}
    adapter = save_peft_lora(tmp_path / "peft", random_lora(unet_state, rank=4), alpha=8.0)
    out = tmp_path / "sweep"
    # One triplet: every triplet is sampled with the same seed, so the single run's a_disc is the base.
    triplets = _make_triplets(tmp_path / "triplets", ("a_disc",))
    # Strength 1 runs first, so strength 0 only matches the base if the weights were restored exactly.
    code, _ = _run(["evaluate", "--ckpt", str(ckpt), "--triplets", str(triplets), "--out", str(out), "--dtype", "fp32",
                    "--lora", f"{adapter}:1", "--lora-strengths", "1", "0", *STEPS])
    assert code == 0
    base, zero, one = single[0], out / "fp32-lora0", out / "fp32-lora1"
    assert np.array_equal(_pixels(zero / "a_disc" / "generated.png"), _pixels(base / "a_disc" / "generated.png"))
    assert not np.array_equal(_pixels(one / "a_disc" / "generated.png"), _pixels(base / "a_disc" / "generated.png"))
    assert "fp32-lora0" in (out / "comparison.md").read_text()


def test_lpips_offline_is_unavailable_with_a_reason(monkeypatch, caplog):
    import lpips

    def offline(**kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(lpips, "LPIPS", offline)
    with caplog.at_level(logging.WARNING, logger="tooncrafter_core"):
        metric = metrics.LpipsMetric()
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    assert metric(image, image) is None
    assert "AlexNet weights could not be loaded" in metric.reason and "URLError" in caplog.text


def test_lpips_gets_images_in_minus_one_to_one(monkeypatch):
    import lpips

    seen = []

    class Fake(torch.nn.Module):
        def forward(self, a, b):
            seen.append((a, b))
            return (a - b).abs().mean().reshape(1, 1, 1, 1)

    monkeypatch.setattr(lpips, "LPIPS", lambda **kwargs: Fake())
    black, white = np.zeros((SIZE, SIZE, 3), np.uint8), np.full((SIZE, SIZE, 3), 255, np.uint8)
    assert metrics.LpipsMetric()(black, white) == pytest.approx(2.0)
    a, b = seen[0]
    assert a.shape == (1, 3, SIZE, SIZE) and a.min() == -1.0 and b.max() == 1.0


def test_lora_strengths_without_a_lora_is_an_error():
    with pytest.raises(evaluate.EvaluationError, match="--lora"):
        evaluate.plan_runs(["fp32"], [], [0.0, 1.0])
