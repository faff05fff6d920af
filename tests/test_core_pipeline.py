"""End-to-end runs of the tiny model through the CLI and the library, sampling math, bad inputs."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, gradient_keyframes, tiny_checkpoint
from PIL import Image

from tooncrafter_core import frames
from tooncrafter_core.errors import InputError
from tooncrafter_core.models.config import ScheduleConfig
from tooncrafter_core.models.schedule import Schedule
from tooncrafter_core.pipeline import interpolate
from tooncrafter_core.sampling import GuidedModel, ddim_plan, ddim_timesteps, ddim_update
from tooncrafter_core.settings import SamplingConfig
from tooncrafter_core.weights.checkpoint import load_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return load_model(tiny_checkpoint(tmp_path_factory.mktemp("ckpt")), dtype=torch.float32)


def _draw(path, color, box):
    im = Image.new("RGB", (96, 80), "white")
    im.paste(color, box)
    im.save(path)


def test_cli_writes_frames_from_the_tiny_fixture(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "models")
    _draw(tmp_path / "a.png", (220, 30, 30), (5, 5, 40, 40))
    _draw(tmp_path / "b.png", (30, 30, 220), (50, 30, 90, 75))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "tooncrafter_core", "interpolate", "--ckpt", str(ckpt), "--start", str(tmp_path / "a.png"),
         "--end", str(tmp_path / "b.png"), "--prompt", "a square moves", "--steps", "3", "--seed", "7", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    pngs = sorted(out.glob("frame_*.png"))
    assert len(pngs) == 4  # the tiny model's 4 frames
    arrays = [np.asarray(Image.open(p)) for p in pngs]
    assert all(a.shape == (64, 64, 3) for a in arrays)
    assert all(a.std() > 1.0 for a in arrays), "constant frames"
    with Image.open(out / "preview.gif") as gif:
        assert gif.n_frames == 4


def test_cli_reports_a_missing_keyframe_clearly(tmp_path):
    ckpt = tiny_checkpoint(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "tooncrafter_core", "interpolate", "--ckpt", str(ckpt), "--start", str(tmp_path / "no.png"),
         "--end", str(tmp_path / "no.png"), "--out", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "cannot read image" in proc.stderr and "Traceback" not in proc.stderr


def test_interpolate_is_seeded_and_keeps_the_keyframes_apart(tiny_model):
    start, end = gradient_keyframes()
    s = SamplingConfig(steps=3, cfg_scale=7.5, guidance_rescale=0.7)
    a = interpolate(tiny_model, start, end, "x", s, generator=torch.Generator().manual_seed(1))
    b = interpolate(tiny_model, start, end, "x", s, generator=torch.Generator().manual_seed(1))
    c = interpolate(tiny_model, start, end, "x", s, generator=torch.Generator().manual_seed(2))
    assert a.shape == (1, 3, 4, 64, 64) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_cfg_batched_equals_two_calls(tiny_model):
    start, end = gradient_keyframes()
    kw = dict(steps=2, eta=0.0, cfg_scale=5.0, guidance_rescale=0.5)
    a = interpolate(tiny_model, start, end, "x", SamplingConfig(cfg_batch=True, **kw), generator=torch.Generator().manual_seed(3))
    b = interpolate(tiny_model, start, end, "x", SamplingConfig(cfg_batch=False, **kw), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_guidance_scale_one_skips_the_unconditional_call():
    calls = []

    def net(x, t, context):
        calls.append(context)
        return x * 0 + context

    g = GuidedModel(net, {"context": torch.ones(1, 1)}, {"context": torch.zeros(1, 1)}, scale=1.0)
    g(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long))
    assert len(calls) == 1
    g = GuidedModel(net, {"context": torch.ones(1, 1)}, {"context": torch.zeros(1, 1)}, scale=3.0, batch=False)
    assert g(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long)).item() == 3.0


def test_timestep_spacings():
    assert list(ddim_timesteps(4, "uniform")) == [1, 251, 501, 751]
    assert list(ddim_timesteps(4, "uniform_trailing")) == [249, 499, 749, 999]
    assert len(ddim_timesteps(50, "uniform_trailing")) == 50
    with pytest.raises(ValueError, match="uniform"):
        ddim_timesteps(3, "uniform")
    with pytest.raises(ValueError, match="spacing"):
        ddim_timesteps(4, "linear")


def test_zero_terminal_snr_and_dynamic_rescale():
    sched = Schedule.from_config(ScheduleConfig())
    assert sched.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-9)
    assert sched.scale_arr.shape == (1400,)
    plan = ddim_plan(sched, 4, "uniform_trailing", eta=0.0)
    assert [s.t for s in plan] == [999, 749, 499, 249]
    assert all(s.sigma == 0 for s in plan)
    assert plan[0].rescale > 1.0 or plan[0].rescale == pytest.approx(1.0)


def _original_step_coefficients(sched, steps, spacing, eta):
    """The original's arithmetic, written as it is there: make_ddim_sampling_parameters mixes a
    float32 tensor with a float64 array, and each step re-creates its scalars as float32 tensors."""
    ac = sched.alphas_cumprod
    ts = ddim_timesteps(steps, spacing)
    alphas = ac[ts]
    alphas_prev = np.asarray([ac[0].item()] + ac[ts[:-1]].tolist())
    sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas.numpy().astype(np.float64)) * (1 - alphas.numpy().astype(np.float64) / alphas_prev))
    out = []
    for i in reversed(range(len(ts))):
        a_prev = torch.full((1,), alphas_prev[i])
        sigma_t = torch.full((1,), sigmas[i])
        out.append(((1.0 - a_prev - sigma_t**2).item(), sigma_t.item()))
    return out


@pytest.mark.parametrize("steps,spacing,eta", [(50, "uniform_trailing", 1.0), (6, "uniform_trailing", 1.0),
                                               (25, "uniform_trailing", 1.0), (4, "uniform", 1.0), (50, "uniform_trailing", 0.5)])
def test_ddim_coefficients_follow_the_originals_float32_arithmetic(steps, spacing, eta):
    sched = Schedule.from_config(ScheduleConfig())
    plan = ddim_plan(sched, steps, spacing, eta)
    for step, (dir_var, sigma) in zip(plan, _original_step_coefficients(sched, steps, spacing, eta)):
        assert step.sigma == sigma
        assert step.dir_coef == pytest.approx(max(dir_var, 0.0) ** 0.5, rel=1e-6, abs=0.0)


def test_first_zero_snr_step_keeps_the_originals_rounding_residue():
    sched = Schedule.from_config(ScheduleConfig())
    # 50 and 6 trailing steps leave +2^-24 in float32: 2.44e-4 of eps stays in x_prev.
    for steps in (50, 6):
        assert ddim_plan(sched, steps, "uniform_trailing", 1.0)[0].dir_coef == pytest.approx(2 ** -12, rel=1e-6)
    # 25 steps round to -2^-24, where the original's sqrt gives NaN: clamped to 0.
    assert ddim_plan(sched, 25, "uniform_trailing", 1.0)[0].dir_coef == 0.0
    step = ddim_plan(sched, 50, "uniform_trailing", 1.0)[0]
    eps, x0, noise = torch.ones(1, 2), torch.zeros(1, 2), torch.zeros(1, 2)
    x_prev, _ = ddim_update(torch.zeros(1, 2), eps, x0, step, noise)
    assert x_prev[0, 0].item() == pytest.approx(2 ** -12, rel=1e-6)


@pytest.mark.parametrize(
    "start,end,match",
    [
        (torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 32, 64), "differ in size"),
        (torch.zeros(1, 3, 60, 64), torch.zeros(1, 3, 60, 64), "multiple of 16"),
        (torch.full((1, 3, 64, 64), float("nan")), torch.zeros(1, 3, 64, 64), "NaN"),
        (torch.zeros(1, 4, 64, 64), torch.zeros(1, 4, 64, 64), r"\(batch, 3, height, width\)"),
    ],
)
def test_bad_keyframes_are_named(tiny_model, start, end, match):
    with pytest.raises(InputError, match=match):
        interpolate(tiny_model, start, end, "x", SamplingConfig(steps=1))


def test_pruned_model_asks_for_external_encoders(tiny_model):
    tiny_model.cond_stage_model, saved = None, tiny_model.cond_stage_model
    try:
        with pytest.raises(InputError, match="pruned"):
            interpolate(tiny_model, *gradient_keyframes(), "x", SamplingConfig(steps=1))
    finally:
        tiny_model.cond_stage_model = saved


def test_bad_sampling_settings_are_named():
    with pytest.raises(ValueError, match="steps"):
        SamplingConfig(steps=0)
    with pytest.raises(ValueError, match="guidance_rescale"):
        SamplingConfig(guidance_rescale=2.0)


def test_fit_methods_produce_the_requested_size():
    img = torch.rand(1, 3, 90, 160)
    for method in frames.FIT_METHODS:
        out = frames.fit(img, 64, 64, method)
        assert out.shape == (1, 3, 64, 64)
        assert 0 <= out.min() and out.max() <= 1
    # crop keeps the centre: a centred dot survives; stretch changes aspect.
    with pytest.raises(ValueError, match="resize method"):
        frames.fit(img, 64, 64, "zoom")


def test_decode_chunking_is_exact_with_one_chunk(tiny_model):
    vae = tiny_model.vae
    start, end = gradient_keyframes()
    from tooncrafter_core.keyframes import encode_keyframes

    with torch.inference_mode():
        enc = encode_keyframes(vae, start, end)
        z = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        full = vae.decode(z, enc.refs)
        same = vae.decode(z, enc.refs, chunk=4)
        halves = vae.decode(z, enc.refs, chunk=2)
    assert torch.equal(full, same)
    assert halves.shape == full.shape and torch.isfinite(halves).all()


def test_core_imports_no_host_or_heavy_framework():
    code = (
        "import sys, pkgutil, importlib, tooncrafter_core\n"
        "for m in pkgutil.walk_packages(tooncrafter_core.__path__, 'tooncrafter_core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [n for n in ('comfy', 'comfy_api', 'folder_paths', 'nodes', 'pytorch_lightning', 'lightning', 'xformers', 'kornia', 'diffusers')\n"
        "       if n in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_batches_of_pairs_and_other_frame_counts(tiny_model):
    start, end = gradient_keyframes()
    s = SamplingConfig(steps=2)
    two = interpolate(tiny_model, torch.cat([start, end]), torch.cat([end, start]), "x", s,
                      generator=torch.Generator().manual_seed(0))
    assert two.shape == (2, 3, 4, 64, 64) and torch.isfinite(two).all()
    assert not torch.allclose(two[0], two[1])
    # More frames than the model was trained with: the context is shared by all frames (as the original).
    six = interpolate(tiny_model, start, end, "x", s, frames=6, generator=torch.Generator().manual_seed(0))
    assert six.shape == (1, 3, 6, 64, 64) and torch.isfinite(six).all()
    with pytest.raises(InputError, match="at least 2"):
        interpolate(tiny_model, start, end, "x", s, frames=1)


def test_cli_reads_the_unet_after_dropping_the_encoders_and_draws_what_interpolate_draws(tmp_path, monkeypatch):
    """The CLI conditions first, drops the text and image encoders, and only then reads the UNet
    (peak memory: never both); the frames are still `interpolate`'s with the same seed."""
    from tooncrafter_core.__main__ import main
    from tooncrafter_core.commands import common as command

    ckpt = tiny_checkpoint(tmp_path / "models")
    _draw(tmp_path / "a.png", (220, 30, 30), (5, 5, 40, 40))
    _draw(tmp_path / "b.png", (30, 30, 220), (50, 30, 90, 75))
    seen = []
    load_unet = command.load_deferred_unet

    def watching(model, device=None):
        seen.append((model.cond_stage_model, model.embedder, all(p.is_meta for p in model.unet.parameters())))
        load_unet(model, device)

    monkeypatch.setattr(command, "load_deferred_unet", watching)
    args = ["interpolate", "--ckpt", str(ckpt), "--start", str(tmp_path / "a.png"), "--end", str(tmp_path / "b.png"),
            "--prompt", "a square moves", "--steps", "3", "--seed", "7", "--cfg", "7.5", "--height", "64", "--width", "64",
            "--dtype", "fp32", "--device", "cpu", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    assert seen == [(None, None, True)]
    ours = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "out").glob("frame_*.png"))])
    model = load_model(ckpt, dtype=torch.float32)
    keys = torch.cat([frames.to_model(frames.fit(frames.load_image(tmp_path / n), 64, 64, "crop")) for n in ("a.png", "b.png")])
    video = interpolate(model, keys[:1], keys[1:], "a square moves", SamplingConfig(steps=3, cfg_scale=7.5),
                        generator=torch.Generator("cpu").manual_seed(7))
    expected = (frames.from_model(video[0]).permute(1, 2, 3, 0) * 255).round().byte().numpy()
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1
