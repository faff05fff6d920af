"""Sketch guidance: the encoder's key layout against the released file's, fp32 parity with tensors
recorded from the public reimplementation (tests/data/sketch_tiny, RECIPE.md there), scale 0, the
file formats, sketch preprocessing and the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REFERENCE, REPO, TINY, gradient_keyframes, relative_error, tiny_checkpoint
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

from tooncrafter_core.errors import InputError
from tooncrafter_core.guidance import Conditioning, sample
from tooncrafter_core.models.config import from_original_yaml
from tooncrafter_core.models.sketch_encoder import SketchEncoder, SketchEncoderConfig, controls
from tooncrafter_core.pipeline import interpolate
from tooncrafter_core.settings import SamplingConfig
from tooncrafter_core.sketches import SketchGuide, place_sketches, sketch_hint
from tooncrafter_core.weights import catalog
from tooncrafter_core.weights.checkpoint import CheckpointError, load_model
from tooncrafter_core.weights.sketch_encoder import infer_config, load_sketch_encoder

DATA = REPO / "tests" / "data"
SKETCH = DATA / "sketch_tiny"
TOLERANCE = 1e-4


def _released_manifest() -> dict[str, tuple]:
    return {k: tuple(shape) for k, (shape, _) in json.loads((DATA / "sketch_encoder_keys.json").read_text()).items()}


def test_encoder_has_exactly_the_released_keys_and_shapes():
    with torch.device("meta"):
        encoder = SketchEncoder()
    ours = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    released = _released_manifest()
    assert sorted(set(ours) - set(released)) == [] and sorted(set(released) - set(ours)) == []
    assert ours == released
    assert sum(v.numel() for v in encoder.state_dict().values()) == 364_227_952  # 1.46 GB in fp32, as published


def test_architecture_read_from_the_released_shapes_is_the_default():
    assert infer_config(_released_manifest()) == SketchEncoderConfig()


def _tiny_config() -> SketchEncoderConfig:
    raw = json.loads((SKETCH / "reference.json").read_text())["encoder_config"]
    shapes = {k: tuple(v.shape) for k, v in load_file(str(SKETCH / "encoder.safetensors")).items()}
    # Head width is not in the weights: the recorded config's.
    return dataclasses.replace(infer_config(shapes), num_head_channels=raw["num_head_channels"])


@pytest.fixture(scope="module")
def encoder():
    return load_sketch_encoder(SKETCH / "encoder.safetensors", torch.float32, _tiny_config())


@pytest.fixture(scope="module")
def reference():
    return load_file(str(SKETCH / "reference.safetensors"))


def _unet(case: str):
    return load_model(REFERENCE / case / "model.safetensors", dtype=torch.float32,
                      config=from_original_yaml(REFERENCE / case / "config.yaml")).unet


def test_residuals_and_guided_unet_match_the_reference_in_fp32(encoder, reference):
    r = {k.split(".", 1)[1]: v for k, v in reference.items() if k.startswith("tiny4f.")}
    unet = _unet("tiny-4f-64x64")
    scale = json.loads((SKETCH / "reference.json").read_text())["control_scale"]
    with torch.inference_mode():
        features = encoder.hint_features(r["hint"].float())
        for i, residual in enumerate(encoder(r["x"], r["t"], r["context"], features)):
            assert relative_error(residual, r[f"control_{i}"]) < TOLERANCE, i
        for context, key in ((r["context"], "unet_out_control"), (r["uncond_context"], "unet_out_control_uncond")):
            control = controls(encoder, r["x"], r["t"], context, features, scale)
            v = unet(torch.cat([r["x"], r["concat"]], 1), r["t"], context, r["fs"], control)
            assert relative_error(v, r[key]) < TOLERANCE, key
        # Scale 0 is the unguided UNet, bit for bit.
        plain = unet(torch.cat([r["x"], r["concat"]], 1), r["t"], r["context"], r["fs"])
        assert controls(encoder, r["x"], r["t"], r["context"], features, 0.0) is None
        assert relative_error(plain, r["unet_out"]) < TOLERANCE


def test_sixteen_frames_with_sparse_sketches_match_the_unpatched_reference(encoder, reference):
    fixture = load_file(str(REFERENCE / "tiny-16f-32x64" / "reference.safetensors"))
    settings = json.loads((REFERENCE / "tiny-16f-32x64" / "reference.json").read_text())
    unet = _unet("tiny-16f-32x64")
    hint = reference["tiny16f.hint"].float()
    assert hint[0, 0, [0, 2, 4, 6, 8, 10, 12, 14, 15]].abs().sum() == 0  # frames without a sketch: empty
    x, t = fixture["unet_x"], fixture["unet_t"].long().reshape(1)
    fs = torch.tensor([settings["fs"]])
    with torch.inference_mode():
        features = encoder.hint_features(hint)
        for context, key in ((fixture["context_cond"], "unet_out_control"), (fixture["context_uncond"], "unet_out_control_uncond")):
            v = unet(torch.cat([x, fixture["c_concat"]], 1), t, context, fs, controls(encoder, x, t, context, features, 0.6))
            assert relative_error(v, reference[f"tiny16f.{key}"]) < TOLERANCE, key


def test_guided_ddim_trajectory_matches_the_reference(encoder, reference):
    r = {k.split(".", 1)[1]: v for k, v in reference.items() if k.startswith("tiny4f.")}
    case = json.loads((SKETCH / "reference.json").read_text())["cases"]["tiny4f"]
    model = load_model(TINY / "model.safetensors", dtype=torch.float32, config=from_original_yaml(TINY / "config.yaml"))
    sampling = SamplingConfig(steps=case["steps"], cfg_scale=case["cfg_scale"], eta=case["eta"],
                              guidance_rescale=case["guidance_rescale"], timestep_spacing=case["timestep_spacing"])
    cond = Conditioning(r["context"], r["uncond_context"], r["concat"], r["fs"], SketchGuide(encoder, r["hint"].float(), 0.6))
    steps = [r["x_T"]]
    with torch.inference_mode():
        sample(model.unet, model.schedule, cond, sampling, r["x_T"], callback=lambda i, x, x0: steps.append(x.clone()))
    trajectory = r["ddim_trajectory_control"]
    assert len(steps) == trajectory.shape[0]
    for i, (ours, ref) in enumerate(zip(steps, trajectory)):
        assert relative_error(ours, ref) < TOLERANCE, i



def test_scale_zero_gives_the_unguided_clip_exactly_and_sketches_change_it(encoder, reference, tmp_path):
    model = load_model(tiny_checkpoint(tmp_path), dtype=torch.float32)
    start, end = gradient_keyframes()
    hint = reference["tiny4f.hint"].float()

    def run(guide):
        return interpolate(model, start, end, "a ball", SamplingConfig(steps=2), generator=torch.Generator().manual_seed(4),
                           sketch=guide)

    plain = run(None)
    assert torch.equal(run(SketchGuide(encoder, hint, 0.0)), plain)
    assert relative_error(run(SketchGuide(encoder, hint, 0.6)), plain) > 1e-2
    with pytest.raises(InputError, match="one per frame"):
        run(SketchGuide(encoder, hint[:, :, :3], 0.6))
    with pytest.raises(InputError, match=r"sketches of size \(32, 64\) .* must be \(64, 64\)"):
        run(SketchGuide(encoder, hint[:, :, :, :32], 0.6))


@pytest.mark.parametrize("layout", ["ckpt", "ckpt_state_dict", "fp16_safetensors"])
def test_released_file_formats_load(tmp_path, layout):
    state = {k: v.float() for k, v in load_file(str(SKETCH / "encoder.safetensors")).items()}
    if layout == "fp16_safetensors":
        path = tmp_path / "sketch_encoder-fp16.safetensors"
        save_file({k: v.half() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "sketch_encoder.ckpt"
        torch.save({"state_dict": state} if layout == "ckpt_state_dict" else state, path)
    encoder = load_sketch_encoder(path, config=_tiny_config())
    expected = torch.float16 if layout == "fp16_safetensors" else torch.float32
    assert encoder.input_hint_block[0].weight.dtype == expected
    for key, value in encoder.state_dict().items():
        assert torch.equal(value.float(), state[key].to(expected).float()), key


def test_a_model_checkpoint_is_not_taken_for_a_sketch_encoder(tmp_path):
    with pytest.raises(CheckpointError, match="not a ToonCrafter sketch encoder"):
        load_sketch_encoder(tiny_checkpoint(tmp_path))
    # The tiny encoder's file against the released architecture: its keys are named.
    with pytest.raises(CheckpointError, match=r"encoder.safetensors does not match the sketch encoder; missing keys: input_blocks\.2\.0\.in_layers.*\(226 in all\); unexpected keys: input_blocks\.2\.0\.op"):
        load_sketch_encoder(SKETCH / "encoder.safetensors", config=SketchEncoderConfig())


def test_sketches_are_inverted_luma_fitted_like_keyframes_and_placed_on_their_frames():
    paper = torch.ones(1, 3, 80, 64)
    paper[:, :, 40, :] = 0.0  # a black line across
    hint = sketch_hint(paper, 64, 64, "crop")  # (1 1 1 64 64); crop takes 8 rows off each side
    assert hint.shape == (1, 1, 1, 64, 64)
    assert hint[0, 0, 0, 32].min() > 0.9 and hint[0, 0, 0, :20].max() < 1e-3
    placed = place_sketches(torch.cat([hint, hint * 0.5], dim=2), [1, 3], 4)
    assert placed.shape == (1, 1, 4, 64, 64)
    assert placed[0, 0, [0, 2]].abs().sum() == 0 and torch.equal(placed[0, 0, 3], hint[0, 0, 0] * 0.5)
    for indices, message in (([1], "2 sketches but 1 frame numbers"), ([1, 9], "in 0..3"), ([2, 2], "distinct")):
        with pytest.raises(ValueError, match=message):
            place_sketches(torch.cat([hint, hint], dim=2), indices, 4)
    with pytest.raises(ValueError, match="2 sketches for 4 frames"):
        place_sketches(torch.cat([hint, hint], dim=2), None, 4)


def test_sketch_encoders_are_in_the_catalogue():
    assert catalog.DEFAULT_SKETCH.name == "sketch_encoder-fp16.safetensors"
    assert {f.name for f in catalog.SKETCH_ENCODERS} == {
        "sketch_encoder-fp16.safetensors", "sketch_encoder.safetensors", "sketch_encoder.ckpt"}
    assert catalog.find("sketch_encoder.ckpt", catalog.SKETCH_ENCODERS).repo_id == "Doubiiu/ToonCrafter"


def _draw_sketch(path: Path, offset: int) -> None:
    im = Image.new("RGB", (64, 64), "white")
    d = ImageDraw.Draw(im)
    d.ellipse((10 + offset, 10, 40 + offset, 40), outline="black", width=2)
    d.line((0, 50, 63, 30 + offset), fill="black", width=2)
    im.save(path)


def test_cli_sketches_steer_the_clip_and_scale_zero_does_not(tmp_path):
    from tooncrafter_core.__main__ import main

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    # The CLI reads the architecture from the weights: the tiny encoder then gets one 32-wide head
    # where the recording used two of 16, which is fine for steering but not for parity.
    for name, color in (("a.png", (240, 60, 60)), ("b.png", (60, 60, 240))):
        Image.new("RGB", (64, 64), color).save(tmp_path / name)
    (tmp_path / "sk").mkdir()
    _draw_sketch(tmp_path / "sk" / "sketch_01.png", 0)
    _draw_sketch(tmp_path / "sk" / "sketch_02.png", 10)
    common = ["interpolate", "--ckpt", str(ckpt), "--start", str(tmp_path / "a.png"), "--end", str(tmp_path / "b.png"),
              "--steps", "2", "--device", "cpu", "--height", "64", "--width", "64", "--seed", "3"]
    encoder_file = tmp_path / "tiny_sketch_encoder.safetensors"
    save_file({k: v.float() for k, v in load_file(str(SKETCH / "encoder.safetensors")).items()}, str(encoder_file))
    outs = {}
    for label, extra in (("plain", []), ("zero", ["--sketch-scale", "0"]), ("guided", [])):
        sketches = [] if label == "plain" else ["--sketches", str(tmp_path / "sk"), "--sketch-encoder", str(encoder_file)]
        assert main([*common, "--out", str(tmp_path / label), *sketches, *extra]) == 0
        outs[label] = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / label).glob("frame_*.png"))])
    assert np.array_equal(outs["zero"], outs["plain"])
    assert np.abs(outs["guided"].astype(int) - outs["plain"]).max() > 5
    _draw_sketch(tmp_path / "sk" / "sketch_9.png", 5)  # frame 9 of a 4-frame clip
    assert main([*common, "--out", str(tmp_path / "bad"), "--sketches", str(tmp_path / "sk"),
                 "--sketch-encoder", str(encoder_file)]) == 2
