"""Chunked decode with overlap against the whole-clip decode, and the decode's memory estimate.

The decoder couples frames through its temporal convolutions and through the GroupNorm of its
temporal blocks (statistics over all frames of a call), so a chunked decode is never exact; the
overlap keeps the window borders away from the kept frames. Bounds are the measured errors
(CPU, fp32) with about 1.5x margin, and the decode without overlap must be far worse.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest
import torch
from comfy_harness import COMFYUI_SOURCE
from helpers import REFERENCE, REPO, tiny_checkpoint
from safetensors.torch import load_file
from torch import nn
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from tooncrafter_core.models.config import DECODE_OVERLAP, ModelConfig
from tooncrafter_core.models.vae import AutoencoderKLDualRef, auto_decode_chunk, decode_memory_bytes, decode_windows
from tooncrafter_core.weights.checkpoint import load_model

log = logging.getLogger(__name__)

TINY16 = REFERENCE / "tiny-16f-32x64"


def _relative_errors(x: torch.Tensor, whole: torch.Tensor) -> tuple[float, float]:
    """(max |error| / max |whole|, rms error / rms whole)."""
    err = (x - whole).abs()
    return float(err.max() / whole.abs().max()), float(err.pow(2).mean().sqrt() / whole.pow(2).mean().sqrt())


@pytest.fixture(scope="module")
def tiny16(tmp_path_factory):
    """The 16-frame tiny fixture's VAE with its recorded sampled latents and reference features."""
    model = load_model(tiny_checkpoint(tmp_path_factory.mktemp("tiny16"), case=TINY16), dtype=torch.float32)
    rec = load_file(TINY16 / "reference.safetensors")
    refs = [rec[f"ref_hidden_{i}"] for i in range(5)]
    z = rec["samples"] / model.config.vae.scale_factor
    with torch.inference_mode():
        whole = model.vae.decode(z, refs)
    return model.vae, z, refs, whole


@pytest.fixture(scope="module")
def full_vae():
    """The full-size VAE (`ModelConfig().vae`, 100 M parameters) with random weights, as the
    benchmarks build it: N(0, 0.02^2), norm layers weight 1 and bias 0."""
    with torch.device("meta"):
        vae = AutoencoderKLDualRef(ModelConfig().vae)
    vae.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in vae.modules():
            norm = isinstance(module, nn.GroupNorm)
            for name, p in module.named_parameters(recurse=False):
                if norm:
                    p.fill_(1.0 if name == "weight" else 0.0)
                else:
                    p.normal_(0.0, 0.02, generator=gen)
    return vae.eval().requires_grad_(False)


def _full_inputs(vae, frames: int, height: int, width: int, seed: int = 1):
    """Random unscaled latents (1 4 t h w) and the reference features of two random keyframes."""
    gen = torch.Generator().manual_seed(seed)
    f = vae.config.downsample_factor
    with torch.inference_mode():
        _, _, hidden = vae.encode(torch.rand(2, 3, height, width, generator=gen) * 2 - 1)
    refs = [h.unsqueeze(0).transpose(1, 2) for h in hidden]  # (1 c 2 H W): start, end
    return torch.randn(1, vae.config.z_channels, frames, height // f, width // f, generator=gen), refs


def test_windows_keep_every_frame_once_with_clamped_context():
    assert decode_windows(16, None, 4) == [(0, 0, 16, 16)]
    assert decode_windows(16, 16, 4) == decode_windows(16, 40, 0) == [(0, 0, 16, 16)]
    for frames, chunk, overlap in ((16, 4, 4), (16, 3, 2), (14, 5, 4), (7, 1, 0), (16, 1, 15)):
        windows = decode_windows(frames, chunk, overlap)
        kept = [i for _, start, stop, _ in windows for i in range(start, stop)]
        assert kept == list(range(frames))
        for lo, start, stop, hi in windows:
            assert stop - start <= chunk
            assert lo == max(0, start - overlap) and hi == min(frames, stop + overlap)


def test_a_chunk_covering_the_clip_is_exactly_the_whole_decode(tiny16):
    vae, z, refs, whole = tiny16
    with torch.inference_mode():
        assert torch.equal(vae.decode(z, refs, chunk=16), whole)
        assert torch.equal(vae.decode(z, refs, chunk=64, overlap=0), whole)
        # Four calls, every window the whole clip: a window starting at frame 0 must get the start
        # reference (and one ending at the last frame the end reference) whichever frames it keeps.
        assert torch.equal(vae.decode(z, refs, chunk=4, overlap=12), whole)


@pytest.mark.parametrize("chunk", [1, 4])
def test_overlapping_chunks_are_close_to_the_whole_decode_on_the_tiny_fixture(tiny16, chunk):
    vae, z, refs, whole = tiny16
    with torch.inference_mode():
        overlapped = vae.decode(z, refs, chunk, DECODE_OVERLAP)
        hard = vae.decode(z, refs, chunk, 0)
    max_err, rms_err = _relative_errors(overlapped, whole)
    hard_max, hard_rms = _relative_errors(hard, whole)
    log.info("tiny 16f chunk %d: overlap %d %.4f max / %.4f rms, no overlap %.4f / %.4f",
             chunk, DECODE_OVERLAP, max_err, rms_err, hard_max, hard_rms)
    # Measured: overlap 4 0.012 / 0.0093 (chunk 1), 0.012 / 0.0070 (chunk 4); no overlap 0.93 / 0.79, 0.58 / 0.33.
    assert max_err < 0.02 and rms_err < 0.015
    assert hard_max > 20 * max_err and hard_rms > 20 * rms_err


def test_overlapping_chunks_are_close_to_the_whole_decode_on_the_full_size_vae(full_vae):
    z, refs = _full_inputs(full_vae, frames=16, height=32, width=32)
    with torch.inference_mode():
        whole = full_vae.decode(z, refs)
        overlapped = full_vae.decode(z, refs, 8, DECODE_OVERLAP)
        hard = full_vae.decode(z, refs, 8, 0)
    max_err, rms_err = _relative_errors(overlapped, whole)
    hard_max, hard_rms = _relative_errors(hard, whole)
    log.info("full-size 16f 32x32 chunk 8: overlap %d %.4f max / %.4f rms, no overlap %.4f / %.4f",
             DECODE_OVERLAP, max_err, rms_err, hard_max, hard_rms)
    # Measured: overlap 4 0.033 / 0.016; no overlap 0.71 / 0.22 (chunk 4 at 64x64: README).
    assert max_err < 0.05 and rms_err < 0.025
    assert hard_max > 8 * max_err and hard_rms > 6 * rms_err


def _peak_allocated(fn) -> int:
    """Peak bytes the CPU allocator held above its level at the start of `fn` (kernel workspaces
    included), from the profiler's allocation events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("frames,height,width,chunk", [(4, 32, 64, None), (16, 32, 32, 8)])
def test_memory_estimate_bounds_the_measured_peak(full_vae, frames, height, width, chunk):
    z, refs = _full_inputs(full_vae, frames, height, width)
    with torch.inference_mode():
        peak = _peak_allocated(lambda: full_vae.decode(z, refs, chunk))
    inputs = z.nbytes + sum(r.nbytes for r in refs)
    estimate = decode_memory_bytes(full_vae.config, 1, frames, height, width, torch.float32, chunk)
    log.info("%d frames %dx%d chunk %s: measured %.1f MiB + inputs %.1f MiB, estimate %.1f MiB",
             frames, height, width, chunk, peak / 2**20, inputs / 2**20, estimate / 2**20)
    assert peak + inputs <= estimate <= 2 * peak


def test_memory_estimate_follows_the_largest_window():
    cfg = ModelConfig().vae
    need = lambda chunk: decode_memory_bytes(cfg, 1, 16, 320, 512, torch.float16, chunk)  # noqa: E731
    # At least the whole-clip decode's activations measured on an H200 (fp16, 16 frames 320x512:
    # 11.35 GiB peak with 4.79 GiB of weights resident), and under 8 GiB less the VAE's weights
    # and ComfyUI's reserve, so an 8 GiB card decodes the whole clip once the UNet is offloaded.
    assert 6.56 * 2**30 <= need(None) < 7.4 * 2**30
    assert need(None) == need(16) == need(12)  # chunk 12 + overlap: a window of all 16 frames
    assert need(1) < need(2) < need(4) < need(None)
    assert decode_memory_bytes(cfg, 2, 16, 320, 512, torch.float16) > 1.9 * need(None)
    assert decode_memory_bytes(cfg, 1, 16, 320, 512, torch.float32) > 1.9 * need(None)


def test_auto_chunk_is_the_whole_clip_when_it_fits_else_the_largest_chunk_that_fits():
    cfg = ModelConfig().vae
    shape = (cfg, 1, 16, 320, 512, torch.float16)
    need = lambda chunk: decode_memory_bytes(*shape, chunk)  # noqa: E731
    assert auto_decode_chunk(*shape, 64 * 2**30) is None
    assert auto_decode_chunk(*shape, need(None)) is None
    for free in (need(None) - 1, need(4), need(3), need(3) - 1, need(1)):
        chunk = auto_decode_chunk(*shape, free)
        assert need(chunk) <= free and not any(need(c) <= free for c in range(chunk + 1, 16)), (free, chunk)
    assert auto_decode_chunk(*shape, need(None) - 1) == 11  # windows 0-14 and 7-15
    assert auto_decode_chunk(*shape, need(3)) == 3
    assert auto_decode_chunk(*shape, 1) == 1  # nothing fits: one frame a call, the least memory


# ---------------------------------------------------------------------------------------------
# The Decode node inside ComfyUI's model management


NODE_SCRIPT = textwrap.dedent(
    """
    import importlib.util, logging, shutil, sys, tempfile
    from pathlib import Path
    sys.path.insert(0, {comfy!r})
    import torch
    from safetensors.torch import load_file
    from comfy.cli_args import args
    args.cpu = True
    import folder_paths
    import comfy.model_management as mm

    spec = importlib.util.spec_from_file_location("tc_pack", {repo!r} + "/__init__.py",
                                                  submodule_search_locations=[{repo!r}])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["tc_pack"] = pack
    spec.loader.exec_module(pack)
    from tc_pack.nodes import managed_model as tc_model
    from tc_pack.nodes.decoder import ToonCrafterDecode
    from tc_pack.nodes.types import KEYFRAMES_KEY
    from tc_pack.tooncrafter_core import decoding, frames, keyframes
    from tc_pack.tooncrafter_core.models.vae import decode_memory_bytes

    case = Path({case!r})
    folder = Path(tempfile.mkdtemp())
    for src, dst in (("model.safetensors", "tiny16.safetensors"), ("config.yaml", "tiny16.yaml"), ("TC-Tiny.json", "TC-Tiny.json")):
        shutil.copy(case / src, folder / dst)
    folder_paths.add_model_folder_path("tooncrafter", str(folder), is_default=True)
    handle = tc_model.load("tiny16.safetensors", "auto")
    assert handle.vae_dtype == torch.float32
    rec = load_file(case / "reference.safetensors")
    refs = [rec[f"ref_hidden_{{i}}"] for i in range(5)]
    latent = {{"samples": rec["samples"], KEYFRAMES_KEY: keyframes.KeyframeEncoding(rec["vae_mean"], rec["vae_logvar"], refs)}}
    shape = (handle.config.vae, 1, 16, 32, 64, torch.float32)

    requests = []
    load_models_gpu = mm.load_models_gpu
    def recording_load(models, **kwargs):
        requests.append(kwargs)
        return load_models_gpu(models, **kwargs)
    mm.load_models_gpu = recording_load
    messages = []
    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())
    logging.getLogger("tc_pack.nodes.managed_model").addHandler(Collect())
    logging.getLogger("tc_pack.nodes.managed_model").setLevel(logging.INFO)

    def node_frames():
        return ToonCrafterDecode.execute(handle, latent, 0, True).result[0]

    # Plenty of memory: the whole clip in one call, as the core decodes it.
    auto = node_frames()
    with torch.inference_mode():
        _, video = decoding.decode(handle.vae.model, rec["samples"], refs, True)
    core = frames.from_model(video)[0].permute(1, 2, 3, 0)
    assert torch.equal(auto, core), (auto - core).abs().max()
    assert requests[-1] == {{"memory_required": decode_memory_bytes(*shape), "minimum_memory_required": decode_memory_bytes(*shape, 1)}}, requests[-1]
    assert not any("at a time" in m for m in messages), messages

    # Short of memory: ComfyUI reports room for windows of 12 frames (8 kept + 4 context).
    mm.get_free_memory = lambda dev=None, torch_free_too=False: mm.extra_reserved_memory() + decode_memory_bytes(*shape, 8)
    short = node_frames()
    assert any("decoding 8 frames at a time" in m for m in messages), messages
    assert short.shape == auto.shape and torch.isfinite(short).all()
    err = (short - auto).abs()
    print("OK", float(err.max()), float(err.mean()))
    """
)


def test_decode_node_decodes_the_whole_clip_or_chunks_when_memory_is_short():
    code = NODE_SCRIPT.format(comfy=str(COMFYUI_SOURCE), repo=str(REPO), case=str(TINY16))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/tmp")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ok, max_err, mean_err = proc.stdout.split()[-3:]
    log.info("node, eight frames a call vs the whole clip (IMAGE in [0, 1]): max %s, mean %s", max_err, mean_err)
    assert ok == "OK"
    # Measured: 0.012 max, 0.0010 mean (frames in [0, 1]); without overlap 0.42 and 0.0081.
    assert 0 < float(max_err) < 0.02 and float(mean_err) < 0.0016


def test_decode_with_auto_chunks_in_a_real_comfyui(comfy_server):
    from test_comfy_nodes import _seed_prompt  # the shared 4-frame 64x64 prompt, frames_per_chunk 0

    prompt = _seed_prompt(seed=11, steps=2)
    assert prompt["6"]["inputs"]["frames_per_chunk"] == 0
    entry = comfy_server.run(prompt, timeout=600)
    assert len(entry["outputs"]["7"]["images"]) == 4
    # The CPU has memory to spare for 64x64: no chunking.
    assert "frames at a time" not in comfy_server.log_text()
