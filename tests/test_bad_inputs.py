"""The bad-input catalogue (issue #9) for the core and the CLI: one test per entry, each asserting
the message (the input it names and the fix) or the documented behaviour, and that the model
still works afterwards. The same entries through a real ComfyUI: test_comfy_bad_inputs.py.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, tiny_checkpoint
from PIL import Image
from safetensors.torch import load_file, save_file

from tooncrafter_core import decoding, sequences
from tooncrafter_core import frames as tc_frames
from tooncrafter_core import keyframes as tc_keyframes
from tooncrafter_core.__main__ import main
from tooncrafter_core.errors import InputError
from tooncrafter_core.models.unet import UNetModel
from tooncrafter_core.pipeline import interpolate
from tooncrafter_core.settings import RuntimeOptions, SamplingConfig
from tooncrafter_core.weights.checkpoint import CheckpointError, load_model

PROMPT_500_WORDS = " ".join((["a", "red", "ball", "bounces", "over", "the", "green", "hill"] * 63)[:500])
STAGES = ["text encoder", "image encoder", "resampler", "vae encode", "unet (second step)", "decode (second pass)",
          "sampling callback"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def tiny_model(ckpt):
    return load_model(ckpt, dtype=torch.float32)


@pytest.fixture(scope="module")
def keyframes(tmp_path_factory) -> tuple[Path, Path]:
    """A start and an end PNG of different sizes, neither the tiny model's 64x64."""
    folder = tmp_path_factory.mktemp("keyframes")
    start, end = Image.new("RGB", (96, 80), "white"), Image.new("RGB", (50, 120), "white")
    start.paste((220, 30, 30), (5, 5, 40, 40))
    end.paste((30, 30, 220), (10, 60, 45, 110))
    start.save(folder / "start.png")
    end.save(folder / "end.png")
    return folder / "start.png", folder / "end.png"


def _cli(caplog, *args: str, ckpt: Path | None = None, keyframes=None, out: Path | None = None, steps: str = "1"):
    """Run `python -m tooncrafter_core interpolate` in-process -> (exit code, its error lines).
    Frames are 32x32 unless `args` say otherwise (the tiny model's smallest size: fast)."""
    argv = ["interpolate", "--steps", steps, "--out", str(out or Path("/nonexistent/out"))]
    if "--height" not in args:
        argv += ["--height", "32", "--width", "32"]
    if ckpt is not None:
        argv += ["--ckpt", str(ckpt)]
    if keyframes is not None:
        argv += ["--start", str(keyframes[0]), "--end", str(keyframes[1])]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = main([*argv, *args])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    return code, errors


def _user_error(caplog, *args, **kw) -> str:
    """A CLI user error: exit code 2 and exactly one `error: ...` line (no traceback: main returned)."""
    code, errors = _cli(caplog, *args, **kw)
    assert code == 2, (code, errors)
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    return errors[0]


def _frames_written(out: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(out.glob("frame_*.png"))]


# ---------------------------------------------------------------------------------------------
# Keyframes


def test_keyframes_of_different_sizes_are_fitted_to_the_requested_size(caplog, ckpt, keyframes, tmp_path):
    code, errors = _cli(caplog, "--height", "48", "--width", "64", ckpt=ckpt, keyframes=keyframes, out=tmp_path)
    assert code == 0, errors
    written = _frames_written(tmp_path)
    assert len(written) == 4 and all(f.shape == (48, 64, 3) for f in written)


def test_core_refuses_keyframes_of_different_sizes(tiny_model):
    # The CLI and the nodes fit both keyframes first; the core itself takes them as they are.
    with pytest.raises(InputError, match=r"differ in size: \(1, 3, 64, 64\) vs \(1, 3, 32, 64\); resize both"):
        interpolate(tiny_model, torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 32, 64), "x", SamplingConfig(steps=1))


def test_size_not_a_multiple_names_the_option_and_a_valid_size(caplog, ckpt, keyframes):
    # The tiny model needs multiples of 16 (VAE 8 x UNet 2); the released one of 64.
    message = _user_error(caplog, "--height", "60", "--width", "64", ckpt=ckpt, keyframes=keyframes)
    assert message == "error: --width x --height 64x60 is not a multiple of 16 for this model: use e.g. 64x64"


def test_core_size_not_a_multiple_names_a_valid_size(tiny_model):
    with pytest.raises(InputError, match=r"keyframe size 64x60 is not a multiple of 16 for this model: use e\.g\. 64x64"):
        interpolate(tiny_model, torch.zeros(1, 3, 60, 64), torch.zeros(1, 3, 60, 64), "x", SamplingConfig(steps=1))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "I;16"])
def test_rgba_and_grayscale_images_are_read_as_rgb(tmp_path, mode):
    """Documented: grayscale is repeated into RGB, alpha is dropped (the colour under it is kept)."""
    gray = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64)
    rgb = np.stack([gray, 1 - gray, np.full_like(gray, 0.5)], axis=-1)
    if mode == "I;16":
        image = Image.fromarray((gray * 65535).round().astype(np.uint16))
        expected = np.repeat(gray[..., None], 3, axis=-1)
        tol = 1 / 65535
    elif mode in ("L", "LA"):
        image = Image.fromarray((gray * 255).round().astype(np.uint8), "L").convert(mode)
        expected = np.repeat(((gray * 255).round() / 255)[..., None], 3, axis=-1)
        tol = 1e-6
    else:
        image = Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB")
        expected = (rgb * 255).round() / 255
        if mode == "RGBA":
            image.putalpha(Image.fromarray((gray * 255).astype(np.uint8)))
            tol = 1e-6
        else:
            levels = (rgb * 3).round().astype(np.uint8)  # 64 colours: a palette holds them exactly
            indices = levels[..., 0] * 16 + levels[..., 1] * 4 + levels[..., 2]
            palette = np.array([[r, g, b] for r in range(4) for g in range(4) for b in range(4)], dtype=np.uint8) * 85
            image = Image.fromarray(indices, "P")
            image.putpalette(palette.flatten().tolist())
            expected = palette[indices] / 255
            tol = 1e-6
    image.save(tmp_path / "k.png")
    with Image.open(tmp_path / "k.png") as reread:
        assert reread.mode == mode
    loaded = tc_frames.load_image(tmp_path / "k.png")
    assert loaded.shape == (1, 3, 48, 64) and loaded.dtype == torch.float32
    assert np.abs(loaded[0].permute(1, 2, 0).numpy() - expected).max() <= tol


def test_rgba_and_grayscale_keyframes_run_through_the_cli(caplog, ckpt, tmp_path):
    Image.new("RGBA", (64, 64), (0, 200, 0, 40)).save(tmp_path / "rgba.png")
    Image.new("L", (80, 64), 90).save(tmp_path / "gray.png")
    code, errors = _cli(caplog, ckpt=ckpt, keyframes=(tmp_path / "rgba.png", tmp_path / "gray.png"), out=tmp_path / "o")
    assert code == 0, errors
    written = _frames_written(tmp_path / "o")
    assert len(written) == 4 and all(f.shape == (32, 32, 3) for f in written)


def test_core_names_the_fix_for_a_gray_or_rgba_tensor(tiny_model):
    for channels in (1, 4):
        k = torch.zeros(1, channels, 64, 64)
        with pytest.raises(InputError, match=r"must be \(batch, 3, height, width\) RGB, got .*convert gray or RGBA images to RGB"):
            interpolate(tiny_model, k, k, "x", SamplingConfig(steps=1))


def test_one_image_where_a_batch_is_expected_and_the_reverse(tiny_model):
    one, three = torch.zeros(1, 3, 64, 64), torch.zeros(3, 3, 64, 64)
    s = SamplingConfig(steps=1)
    with pytest.raises(InputError, match=r"start keyframe has 1 image\(s\) and end keyframe 3: give as many of each .* repeat it"):
        interpolate(tiny_model, one, three, "x", s)
    with pytest.raises(InputError, match=r"start keyframe has 3 image\(s\) and end keyframe 1"):
        interpolate(tiny_model, three, one, "x", s)
    # A single image without its batch dimension.
    with pytest.raises(InputError, match=r"got \(3, 64, 64\): add the batch dimension to a single image \(image\[None\]\)"):
        interpolate(tiny_model, one[0], one[0], "x", s)
    # One prompt per pair, or one string for all.
    with pytest.raises(InputError, match="got 2 prompts for 1 keyframe pairs"):
        interpolate(tiny_model, one, one, ["a", "b"], s)
    # A sequence needs a batch of at least two keyframes.
    with pytest.raises(InputError, match="a keyframe sequence needs at least 2 keyframes, got 1"):
        sequences.interpolate_sequence(tiny_model, one, "x", s)


# ---------------------------------------------------------------------------------------------
# Prompt and sampling settings


def test_empty_prompt_runs(caplog, ckpt, keyframes, tmp_path):
    code, errors = _cli(caplog, "--prompt", "", ckpt=ckpt, keyframes=keyframes, out=tmp_path)
    assert code == 0, errors
    assert len(_frames_written(tmp_path)) == 4


def test_500_word_prompt_runs_and_warns_that_only_77_tokens_are_used(caplog, ckpt, keyframes, tmp_path):
    assert len(PROMPT_500_WORDS.split()) == 500
    code, errors = _cli(caplog, "--prompt", PROMPT_500_WORDS, ckpt=ckpt, keyframes=keyframes, out=tmp_path)
    assert code == 0, errors
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("is longer than the text encoder's 77: only its first 77 tokens are used" in w for w in warnings), warnings
    assert len(_frames_written(tmp_path)) == 4


@pytest.mark.parametrize("steps", ["0", "1001"])
def test_steps_out_of_range_is_refused_before_loading(caplog, ckpt, keyframes, steps):
    message = _user_error(caplog, ckpt=ckpt, keyframes=keyframes, steps=steps)
    assert message.startswith(f"error: steps must be between 1 and 1000 (one DDIM step per timestep of the noise schedule at most), got {steps}")
    assert "the original uses 50" in message
    assert not any("loaded" in r.getMessage() for r in caplog.records)  # refused before the checkpoint load
    SamplingConfig(steps=1000)  # the largest valid count


@pytest.mark.parametrize("fs", ["0", "-3"])
def test_frame_stride_below_1_is_refused_before_loading(caplog, ckpt, keyframes, fs):
    message = _user_error(caplog, "--fs", fs, ckpt=ckpt, keyframes=keyframes)
    assert message.startswith(f"error: the frame stride (fs) must be at least 1, got {fs}")
    assert "the original uses 10" in message
    assert not any("loaded" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="frame stride"):
        SamplingConfig(fs=0)
    SamplingConfig(fs=1)  # the smallest valid stride


@pytest.mark.parametrize("verb", ["interpolate", "batch", "evaluate"])
def test_out_naming_an_existing_file_is_one_line_before_any_work(caplog, ckpt, keyframes, tmp_path, verb):
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"not a folder")
    shots = tmp_path / "shots.jsonl"
    shots.write_text('{"id": "a", "start": "s.png", "end": "e.png"}\n')
    argv = {
        "interpolate": ["interpolate", "--ckpt", str(ckpt), "--start", str(keyframes[0]), "--end", str(keyframes[1])],
        "batch": ["batch", str(shots), "--ckpt", str(ckpt)],
        "evaluate": ["evaluate", "--ckpt", str(ckpt), "--triplets", str(tmp_path)],
    }[verb]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = main([*argv, "--out", str(taken)])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert code == 2 and errors == [f"error: --out {taken} is a file, not a folder: give a folder (it is created if missing)"]
    assert taken.read_bytes() == b"not a folder"  # nothing written over it
    assert not any("loaded" in r.getMessage() for r in caplog.records)


def test_sketch_help_says_frames_without_a_sketch_are_still_steered(capsys):
    with pytest.raises(SystemExit):
        main(["interpolate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "left free" not in help_text
    assert "frames without one get an empty sketch, which still goes through the encoder and steers them too" in help_text


@pytest.mark.parametrize("cfg,batch", [("1", 1), ("7.5", 2)])
def test_cfg_1_skips_the_negative_pass(caplog, ckpt, keyframes, tmp_path, monkeypatch, cfg, batch):
    batches = []
    forward = UNetModel.forward

    def counting(self, x, *args, **kwargs):
        batches.append(x.shape[0])
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(UNetModel, "forward", counting)
    code, errors = _cli(caplog, "--cfg", cfg, ckpt=ckpt, keyframes=keyframes, out=tmp_path, steps="2")
    assert code == 0, errors
    # One UNet call a step; cfg 1 runs only the conditional batch, otherwise cond and uncond together.
    assert batches == [batch, batch]


# ---------------------------------------------------------------------------------------------
# Device


def test_device_cuda_without_cuda_names_the_option_and_the_fix(caplog, ckpt, keyframes, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = _user_error(caplog, "--device", "cuda", ckpt=ckpt, keyframes=keyframes)
    assert message.startswith("error: --device cuda: ")
    assert "run with --device cpu" in message
    assert not any("loaded" in r.getMessage() for r in caplog.records)


def test_device_that_is_not_a_device_name(caplog, ckpt, keyframes):
    message = _user_error(caplog, "--device", "gpu", ckpt=ckpt, keyframes=keyframes)
    assert message.startswith("error: --device 'gpu' is not a device name") and "use cpu, cuda or cuda:N" in message


def test_device_cuda_without_cuda_prints_no_traceback_in_a_real_process(ckpt, keyframes, tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU visible, also on a machine that has one
    proc = subprocess.run(
        [sys.executable, "-m", "tooncrafter_core", "interpolate", "--ckpt", str(ckpt), "--start", str(keyframes[0]),
         "--end", str(keyframes[1]), "--device", "cuda", "--out", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: --device cuda: ") and "--device cpu" in errors[0]


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _damaged(ckpt: Path, folder: Path, kind: str) -> Path:
    """A copy of the tiny checkpoint damaged in one way (without its yaml: a downloaded file alone)."""
    data = ckpt.read_bytes()
    if kind.endswith(".ckpt"):
        torch.save({"state_dict": load_file(str(ckpt))}, folder / "whole.ckpt")
        data = (folder / "whole.ckpt").read_bytes()
    if kind.startswith("truncated"):
        data = data[: len(data) // 2]
    elif kind.startswith("garbage"):
        data = bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))
    elif kind.startswith("header-flipped"):
        b = bytearray(data)
        b[12:40] = bytes(x ^ 0xFF for x in b[12:40])
        data = bytes(b)
    path = folder / f"tooncrafter-{kind.replace('.', '_')}{Path(kind).suffix}"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "kind,what",
    [
        ("truncated.safetensors", "is not a readable safetensors file"),
        ("truncated.ckpt", "is not a readable PyTorch checkpoint"),
        ("garbage.safetensors", "is not a readable safetensors file"),
        ("garbage.ckpt", "is not a readable PyTorch checkpoint (neither a zip archive nor a pickle"),
        ("header-flipped.safetensors", "is not a readable safetensors file"),
    ],
)
def test_truncated_or_corrupt_checkpoint_names_the_file_and_says_download_again(caplog, ckpt, keyframes, tmp_path, kind, what):
    path = _damaged(ckpt, tmp_path, kind)
    message = _user_error(caplog, ckpt=path, keyframes=keyframes)
    assert message.startswith(f"error: {path.name} {what}")
    assert message.endswith("download it again")


def _sd15_like() -> dict[str, torch.Tensor]:
    """A few keys of a Stable Diffusion 1.5 checkpoint with their shapes (the large ones left out)."""
    shapes = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
        "first_stage_model.decoder.conv_out.weight": (3, 128, 3, 3),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
        "alphas_cumprod": (1000,),
    }
    return {k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}


def _svd_like() -> dict[str, torch.Tensor]:
    """A few keys of a Stable Video Diffusion checkpoint with their shapes."""
    shapes = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 8, 3, 3),
        "model.diffusion_model.input_blocks.1.0.time_stack.in_layers.0.weight": (320,),
        "model.diffusion_model.input_blocks.1.1.time_stack.0.norm1.weight": (320,),
        "conditioner.embedders.0.open_clip.model.visual.ln_pre.weight": (1280,),
        "conditioner.embedders.3.encoder.encoder.conv_in.weight": (128, 3, 3, 3),
        "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
        "first_stage_model.decoder.up.0.block.0.time_stack.in_layers.2.weight": (128, 128, 3, 1, 1),
    }
    return {k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}


@pytest.mark.parametrize(
    "name,state,family",
    [
        ("v1-5-pruned-emaonly.safetensors", _sd15_like, "a Stable Diffusion 1.x checkpoint"),
        ("svd_xt.safetensors", _svd_like, "a Stable Video Diffusion (SVD) checkpoint"),
        ("sd15.ckpt", _sd15_like, "a Stable Diffusion 1.x checkpoint"),
    ],
)
def test_checkpoint_of_another_model_is_not_taken_for_tooncrafter(caplog, keyframes, tmp_path, name, state, family):
    path = tmp_path / name
    if path.suffix == ".ckpt":
        torch.save({"state_dict": state(), "global_step": 1}, path)
    else:
        save_file(state(), str(path))
    message = _user_error(caplog, ckpt=path, keyframes=keyframes)
    assert message.startswith(f"error: {name} is not a ToonCrafter or DynamiCrafter checkpoint: its keys are those of {family}")
    assert "use a ToonCrafter checkpoint, e.g. tooncrafter_512_interp-fp16.safetensors" in message


def test_lora_given_as_a_checkpoint_points_to_the_lora_option(tmp_path):
    path = tmp_path / "style.safetensors"
    save_file({"lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.zeros(4, 320)}, str(path))
    with pytest.raises(CheckpointError, match="its keys are those of a LoRA .* load it with --lora or the Load ToonCrafter LoRA node"):
        load_model(path)


def test_yaml_naming_a_missing_architecture_json_says_where_to_put_it(caplog, keyframes, tmp_path):
    path = tiny_checkpoint(tmp_path)
    (tmp_path / "TC-Tiny.json").unlink()
    message = _user_error(caplog, ckpt=path, keyframes=keyframes)
    assert message.startswith("error: OpenCLIP architecture 'TC-Tiny' not found: put TC-Tiny.json next to the checkpoint")
    assert f"looked in: {tmp_path / 'TC-Tiny.json'}" in message


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned-marker",))


def test_ckpt_whose_pickle_runs_code_is_refused(caplog, keyframes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _RunsCode()}, path)
    message = _user_error(caplog, ckpt=path, keyframes=keyframes)
    assert message.startswith("error: refusing to load evil.ckpt: its pickle wants to run code")
    assert "Use the .safetensors release" in message
    assert not (tmp_path / "pwned-marker").exists()


# ---------------------------------------------------------------------------------------------
# Out of memory during decode


@pytest.fixture(scope="module")
def latents(tiny_model):
    """Random scaled latents of a 4-frame 32x32 clip (1 4 4 4 4) and two keyframes' reference features."""
    gen = torch.Generator().manual_seed(0)
    start, end = (torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1 for _ in range(2))
    with torch.inference_mode():
        enc = tc_keyframes.encode_keyframes(tiny_model.vae, start, end)
    return torch.randn(1, 4, 4, 4, 4, generator=gen) * tiny_model.config.vae.scale_factor, enc.refs


def _oom_above(vae, limit: int, calls: list):
    """Make `vae`'s decoder run out of memory when asked for more than `limit` frames at once."""
    forward = vae.decoder.forward

    def decoder(z, refs, frames, *args):
        calls.append(frames)
        if frames > limit:
            raise torch.OutOfMemoryError(f"simulated: {frames} frames do not fit")
        return forward(z, refs, frames, *args)

    vae.decoder.forward = decoder


def _decode_out_of_memory_above(limit: int, vae, z, refs, second_decode: bool, overlap: int):
    """The decode left to choose its chunks while more than `limit` frames a call run out of memory:
    (its result, the frames of each decoder call)."""
    calls = []
    _oom_above(vae, limit, calls)
    try:
        with torch.inference_mode():
            return decoding.decode(vae, z, refs, second_decode, chunk=None, overlap=overlap), calls
    finally:
        del vae.decoder.forward


def test_out_of_memory_during_decode_retries_in_halved_chunks(tiny_model, latents, caplog):
    z, refs = latents
    vae = tiny_model.vae
    with torch.inference_mode():
        expected = decoding.decode(vae, z, refs, True, chunk=1, overlap=0)
    with caplog.at_level(logging.WARNING):
        got, calls = _decode_out_of_memory_above(1, vae, z, refs, True, overlap=0)
    # The whole clip (4 frames) and chunks of 2 fail, one frame a call fits; the second pass (the
    # clip without frames 1 and 2) starts at that chunk.
    assert calls == [4, 2, 1, 1, 1, 1, 1, 1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0].startswith("out of memory decoding 4 frames at a time: retrying with 2 frames at a time")
    assert warnings[1].startswith("out of memory decoding 2 frames at a time: retrying with 1 frames at a time")
    assert "set the decode chunk (ComfyUI: frames_per_chunk) to 1" in warnings[1]
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_out_of_memory_with_context_frames_counts_the_whole_window(tiny_model, latents):
    z, refs = latents
    vae = tiny_model.vae
    with torch.inference_mode():
        expected = decoding.decode(vae, z, refs, False, chunk=2, overlap=1)
    got, calls = _decode_out_of_memory_above(3, vae, z, refs, False, overlap=1)
    assert calls == [4, 3, 3]  # chunks of 2 with one context frame on each side: windows of 3
    assert torch.equal(got[1], expected[1])


def test_out_of_memory_at_one_frame_a_call_is_raised(tiny_model, latents):
    z, refs = latents
    vae = tiny_model.vae
    calls = []
    _oom_above(vae, 0, calls)
    try:
        with torch.inference_mode(), pytest.raises(torch.OutOfMemoryError):
            decoding.decode(vae, z, refs, True, chunk=None, overlap=0)
    finally:
        del vae.decoder.forward
    assert calls == [4, 2, 1]


def test_out_of_memory_during_interpolate_retries_and_equals_the_chunked_run(tiny_model):
    s = SamplingConfig(steps=1)
    k = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    chunked = RuntimeOptions(decode_chunk=1, decode_overlap=0)
    expected = interpolate(tiny_model, k[:1], k[1:], "x", s, chunked, generator=torch.Generator().manual_seed(2))
    _oom_above(tiny_model.vae, 1, [])
    try:
        got = interpolate(tiny_model, k[:1], k[1:], "x", s, RuntimeOptions(decode_overlap=0),
                          generator=torch.Generator().manual_seed(2))
    finally:
        del tiny_model.vae.decoder.forward
    assert torch.equal(got, expected)


# ---------------------------------------------------------------------------------------------
# Interrupts


def _stage_modules(model) -> dict[str, torch.nn.Module]:
    return {
        "text encoder": model.cond_stage_model,
        "image encoder": model.embedder.model.visual,
        "resampler": model.image_proj_model,
        "vae encode": model.vae.encoder,
        "unet (second step)": model.unet,
        "decode (second pass)": model.vae.decoder,
    }


def _fingerprint(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("stage", STAGES)
def test_interrupt_at_every_stage_leaves_the_model_working(tiny_model, stage):
    k = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    s = SamplingConfig(steps=2)

    def run(callback=None):
        return interpolate(tiny_model, k[:1], k[1:], "x", s, generator=torch.Generator().manual_seed(4), callback=callback)

    before = run()
    weights = _fingerprint(tiny_model)
    callback = None
    if stage == "sampling callback":  # how a host stops (ComfyUI's Cancel raises from the step callback)
        def stop_at_the_second_step(i, x, x0):
            if i == 1:
                raise KeyboardInterrupt

        callback = stop_at_the_second_step
    else:
        module = _stage_modules(tiny_model)[stage]
        forward, calls = module.forward, []

        def interrupted(*args, **kwargs):
            calls.append(1)
            if len(calls) == (2 if "second" in stage else 1):
                raise KeyboardInterrupt
            return forward(*args, **kwargs)

        module.forward = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            run(callback)
    finally:
        if callback is None:
            del module.forward
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
    assert all(not (m._forward_hooks or m._forward_pre_hooks) for m in tiny_model.modules())
    after = _fingerprint(tiny_model)
    assert all(torch.equal(after[key], weights[key]) for key in weights)
    assert torch.equal(run(), before)


def test_ctrl_c_in_the_cli_exits_130_with_one_line(caplog, ckpt, keyframes, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sequences, "interpolate_sequence", interrupted)
    code, errors = _cli(caplog, ckpt=ckpt, keyframes=keyframes)
    assert code == 130 and errors == ["interrupted"]


def test_ctrl_c_in_a_real_process_prints_no_traceback(ckpt, keyframes, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tooncrafter_core", "interpolate", "--ckpt", str(ckpt), "--start", str(keyframes[0]),
         "--end", str(keyframes[1]), "--steps", "1000", "--out", str(tmp_path / "o")],
        cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
    )
    seen = b""
    deadline = time.monotonic() + 120
    try:
        while b"sampling:" not in seen:  # the progress bar: the model is loaded and sampling runs
            assert time.monotonic() < deadline and proc.poll() is None, seen.decode(errors="replace")
            seen += os.read(proc.stderr.fileno(), 4096)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = (seen + rest).decode(errors="replace")
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert stderr.rstrip().endswith("interrupted")
    assert not (tmp_path / "o").exists()
