"""fp8 weight storage (fp8_e4m3fn, fp8_e5m2) against the plain fp32 path: the tiny fixture, the
full-size UNet with random weights, and the CLI. (The ComfyUI loader is in test_comfy_nodes.py.)

Errors are relative, ||fp8 - fp32|| / ||fp32||, computing in fp32 so only the weight storage
differs. Bounds are the measured values (in the comments) with a margin for other CPUs' kernels.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, TINY, full_size_unet_uninitialised, gradient_keyframes, relative_error, tiny_checkpoint
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from tooncrafter_core.guidance import unet_output
from tooncrafter_core.models.config import ModelConfig
from tooncrafter_core.models.ops import CastWeights
from tooncrafter_core.models.tooncrafter import ToonCrafter
from tooncrafter_core.models.unet import UNetModel
from tooncrafter_core.pipeline import interpolate
from tooncrafter_core.settings import SamplingConfig
from tooncrafter_core.weights.checkpoint import UNET_PREFIX, load_model, load_state_into, read_state_dict

log = logging.getLogger(__name__)

FORMATS = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}

# Measured on the tiny fixture (torch 2.14, CPU): UNet output at the recorded step, then a 4-step
# 64x64 `interpolate`. e4m3fn: 0.159 / 0.306; e5m2: 0.295 / 0.387. For scale, bf16 for the same
# UNet matrices gives 0.010 / 0.021. Bounds are about 1.5x the measured values.
TINY_BOUNDS = {"fp8_e4m3fn": (0.24, 0.46), "fp8_e5m2": (0.45, 0.58)}
# Measured on the full-size UNet with random fan-in-scaled weights (one forward, 8x8 latent,
# 2 frames): e4m3fn 0.156, e5m2 0.267.
FULL_SIZE_BOUNDS = {"fp8_e4m3fn": 0.24, "fp8_e5m2": 0.40}


# ---------------------------------------------------------------------------------------------
# Tiny fixture


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))



def _run(model: ToonCrafter) -> tuple[torch.Tensor, torch.Tensor]:
    """(UNet output at the recorded inputs of the tiny case, a 4-step interpolate), fp32 compute."""
    ref = load_file(str(TINY / "reference.safetensors"))
    with torch.inference_mode():
        v = unet_output(model.unet, ref["unet_x"], ref["unet_t"].long(), ref["context_cond"], ref["c_concat"], torch.tensor([10]))
    start, end = gradient_keyframes()
    video = interpolate(model, start, end, "a cat waves", SamplingConfig(steps=4), generator=torch.Generator().manual_seed(3))
    return v, video


@pytest.fixture(scope="module")
def fp32_outputs(tiny_ckpt):
    return _run(load_model(tiny_ckpt, dtype=torch.float32))


@pytest.mark.parametrize("fmt", FORMATS)
def test_fp8_keeps_the_unet_matrices_in_one_byte_and_the_rest_in_the_compute_dtype(tiny_ckpt, fmt):
    model = load_model(tiny_ckpt, dtype=torch.float32, unet_weight_dtype=FORMATS[fmt])
    unet = list(model.unet.named_parameters())
    # Every matrix / conv kernel is fp8; vectors (biases, norm scales) and the scalar alphas are not.
    assert all((p.dtype == FORMATS[fmt]) == (p.ndim >= 2) for _, p in unet), [(n, p.dtype) for n, p in unet]
    matrices = sum(p.numel() for _, p in unet if p.ndim >= 2)
    others = sum(p.numel() for _, p in unet if p.ndim < 2)
    assert sum(p.numel() * p.element_size() for _, p in unet) == matrices + 4 * others
    for part in (model.vae, model.cond_stage_model, model.embedder, model.image_proj_model):
        assert {p.dtype for p in part.parameters()} == {torch.float32}
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("fmt", FORMATS)
def test_fp8_unet_computes_exactly_what_fp32_computes_with_the_rounded_weights(tiny_ckpt, fmt):
    # Isolates the casting layers from the rounding: a layer that skipped its cast, cast the wrong
    # tensor or rounded a bias as well would differ here, whatever the error bounds below allow.
    stored = load_model(tiny_ckpt, dtype=torch.float32, unet_weight_dtype=FORMATS[fmt])
    state = read_state_dict(tiny_ckpt)
    for key, value in state.items():
        if key.startswith(UNET_PREFIX) and value.ndim >= 2:
            state[key] = value.to(FORMATS[fmt]).float()
    with torch.device("meta"):
        rounded = ToonCrafter(stored.config)
    load_state_into(rounded, state, "rounded", torch.float32)
    ref = load_file(str(TINY / "reference.safetensors"))
    args = (ref["unet_x"], ref["unet_t"].long(), ref["context_cond"], ref["c_concat"], torch.tensor([10]))
    with torch.inference_mode():
        torch.testing.assert_close(unet_output(stored.unet, *args), unet_output(rounded.unet, *args), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fp8_error_against_fp32_on_the_tiny_fixture_is_bounded(tiny_ckpt, fp32_outputs, fmt):
    v, video = _run(load_model(tiny_ckpt, dtype=torch.float32, unet_weight_dtype=FORMATS[fmt]))
    assert torch.isfinite(v).all() and torch.isfinite(video).all()
    unet_err, video_err = relative_error(v, fp32_outputs[0]), relative_error(video, fp32_outputs[1])
    log.info("tiny %s: UNet %.4f, interpolate %.4f", fmt, unet_err, video_err)
    unet_bound, video_bound = TINY_BOUNDS[fmt]
    assert 0 < unet_err < unet_bound
    assert 0 < video_err < video_bound


# ---------------------------------------------------------------------------------------------
# CLI


@pytest.mark.parametrize("weight_dtype,stored", [("fp8_e4m3fn", "torch.float8_e4m3fn"), ("fp16", "torch.float16")])
def test_cli_stores_weights_in_the_weight_dtype_and_computes_in_fp32(tmp_path, tiny_ckpt, weight_dtype, stored):
    for name, color, box in (("a.png", (220, 30, 30), (5, 5, 40, 40)), ("b.png", (30, 30, 220), (30, 20, 60, 55))):
        im = Image.new("RGB", (64, 64), "white")
        im.paste(color, box)
        im.save(tmp_path / name)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "tooncrafter_core", "interpolate", "--ckpt", str(tiny_ckpt), "--start", str(tmp_path / "a.png"),
         "--end", str(tmp_path / "b.png"), "--prompt", "a square moves", "--steps", "2", "--seed", "7",
         "--device", "cpu", "--dtype", "fp32", "--weight-dtype", weight_dtype, "--out", str(out)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    # fp16 storage is the file's precision computed in fp32 through casting layers everywhere;
    # fp8 is the UNet's matrices only, the VAE in the compute dtype.
    vae = stored if weight_dtype == "fp16" else "torch.float32"
    assert f"UNet weights {stored}, VAE weights {vae}" in proc.stderr
    frames = [np.asarray(Image.open(p)) for p in sorted(out.glob("frame_*.png"))]
    assert len(frames) == 4 and all(f.shape == (64, 64, 3) and f.std() > 1.0 for f in frames)


# ---------------------------------------------------------------------------------------------
# Full-size UNet (1.44 B parameters) with random weights: last in the module, so its 5.8 GB of fp32
# weights (a module fixture) are freed as soon as possible.


def _fill_(unet: UNetModel, seed: int = 0) -> None:
    """Seeded weights: matrices N(0, 1/fan_in) so activations stay O(1) through every level,
    biases N(0, 0.02), norms identity. Each tensor is a window of one 32 M-value normal pool:
    drawing 1.44 B fresh normals takes 5x as long (~10 s here), and windows round to fp8 just
    like fresh draws."""
    pool = torch.randn(1 << 25, generator=torch.Generator().manual_seed(seed))
    params = [(m, name, p) for m in unet.modules() for name, p in m.named_parameters(recurse=False)]
    with torch.no_grad():
        for i, (module, name, p) in enumerate(params):
            if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
                p.fill_(1.0 if name == "weight" else 0.0)
                continue
            start = (i * 104_729) % (pool.numel() - p.numel() + 1)
            p.copy_(pool[start : start + p.numel()].view_as(p))
            p.mul_(1 / math.sqrt(p[0].numel()) if p.ndim >= 2 else 0.02)


@pytest.fixture(scope="module")
def full_size():
    """The fp32 UNet, its inputs (8x8 latent, 2 frames: the smallest the 3 downsamplings take) and its output."""
    unet = full_size_unet_uninitialised()
    cfg = unet.config
    _fill_(unet)
    unet.requires_grad_(False).eval()
    gen = torch.Generator().manual_seed(1)
    frames = 2
    inputs = (
        torch.randn(1, cfg.in_channels, frames, 8, 8, generator=gen),
        torch.tensor([500]),
        torch.randn(1, cfg.text_tokens + frames * cfg.image_tokens_per_frame, cfg.context_dim, generator=gen),
        torch.tensor([10]),
    )
    with torch.inference_mode():
        out = unet(*inputs)
    return unet, inputs, out


@pytest.mark.parametrize("fmt", FORMATS)
def test_full_size_unet_fp8_error_against_fp32_is_bounded(full_size, fmt):
    unet32, inputs, out32 = full_size
    assert torch.isfinite(out32).all() and out32.std() > 0.1  # the random UNet carries signal to its output
    with torch.device("meta"):
        model = ToonCrafter(ModelConfig(), unet_operations=CastWeights)
    # The real loading path: the other components stay on meta, the UNet's fp32 tensors are cast
    # to fp8 by `load_state_into` (vectors are shared with the fp32 UNet, not copied).
    state = {k: v.to("meta") for k, v in model.state_dict().items()}
    state.update({UNET_PREFIX + k: v for k, v in unet32.state_dict().items()})
    load_state_into(model, state, "random full-size", unet_weight_dtype=FORMATS[fmt])
    del state
    unet8 = model.unet
    n_bytes = sum(p.numel() * p.element_size() for p in unet8.parameters())
    n_params = sum(p.numel() for p in unet8.parameters())
    assert 1.40e9 < n_params < 1.45e9 and n_bytes < 1.01 * n_params  # 1.44 GB instead of 5.76 GB
    with torch.inference_mode():
        out8 = unet8(*inputs)
    assert torch.isfinite(out8).all()
    err = relative_error(out8, out32)
    log.info("full size %s: UNet %.4f", fmt, err)
    assert 0 < err < FULL_SIZE_BOUNDS[fmt]
