"""ToonCrafter Load Line Art and ToonCrafter Colorize inside a real ComfyUI 0.3.64 server (CPU): a 3-key,
2-segment shot equals the core's colorize, keys come back bit-exact, and every bad input is named before
anything runs. (The shipped colorize workflow runs in test_comfy_nodes.py with the others.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_SKETCH_ENCODER, tiny_checkpoint, tiny_sketch_encoder
from PIL import Image
from test_colorize import draw
from test_comfy_nodes import _saved_images

FRAMES, KEYS, SEED = 9, (0, 4, 8), 11


@pytest.fixture(scope="module")
def input_dir(comfy_server):
    return comfy_server.root / "input"


@pytest.fixture(scope="module")
def shot(input_dir):
    """The line art (on a transparent layer, as inkers export it) and the coloured keys in ComfyUI's input folder."""
    folder = input_dir / "colorize_test_lines"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(FRAMES):
        draw(i, mode="RGBA").save(folder / f"line_{i:03d}.png")
    for k in KEYS:
        draw(k, colored=True).save(input_dir / f"colorize_test_key_{k}.png")
    return folder


def _prompt(keys=KEYS, key_frames=None, lines="colorize_test_lines", **inputs) -> dict:
    prompt = {
        "1": {"class_type": "ToonCrafterModelLoader", "inputs": {"ckpt_name": "tooncrafter_tiny.safetensors",
                                                                "weight_dtype": "auto"}},
        "2": {"class_type": "ToonCrafterLoadLineArt", "inputs": {"folder": lines}},
        "3": {"class_type": "ToonCrafterSketchEncoderLoader", "inputs": {"encoder_name": TINY_SKETCH_ENCODER}},
    }
    batch = None
    for i, k in enumerate(keys):
        prompt[f"k{i}"] = {"class_type": "LoadImage", "inputs": {"image": f"colorize_test_key_{k}.png"}}
        if batch is None:
            batch = [f"k{i}", 0]
        else:
            prompt[f"b{i}"] = {"class_type": "ImageBatch", "inputs": {"image1": batch, "image2": [f"k{i}", 0]}}
            batch = [f"b{i}", 0]
    prompt["5"] = {"class_type": "ToonCrafterColorize", "inputs": {
        "model": ["1", 0], "sketch_encoder": ["3", 0], "line_art": ["2", 0], "keys": batch,
        "key_frames": key_frames if key_frames is not None else ", ".join(map(str, keys)), "prompt": "a red ball",
        "negative_prompt": "", "frame_stride": 10, "width": 64, "height": 64, "resize": "crop", "seed": SEED,
        "steps": 2, "cfg": 7.5, "eta": 1.0, "guidance_rescale": 0.7, "timestep_spacing": "uniform_trailing",
        "sketch_strength": 1.0, "max_segment": 16, "single_key": False, "line_overlay": False, "color_match": False,
        "frames_per_chunk": 0, "second_decode": True, **inputs}}
    prompt["7"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "colorize"}}
    return prompt


def _core(tmp_path) -> np.ndarray:
    from test_colorize import keys_for, runner, to_tensor

    from tooncrafter_core import colorize
    from tooncrafter_core.weights.checkpoint import load_model
    from tooncrafter_core.weights.sketch_encoder import load_sketch_encoder

    model = load_model(tiny_checkpoint(tmp_path), dtype=torch.float32)
    encoder = load_sketch_encoder(tiny_sketch_encoder(tmp_path / "enc.safetensors"), torch.float32)
    art = colorize.prepare_line_art(torch.cat([to_tensor(draw(i, mode="RGBA")) for i in range(FRAMES)]))
    shot = colorize.colorize(runner(model, encoder), art, keys_for(KEYS), (64, 64), colorize.ColorizeOptions(seed=SEED))
    return shot.permute(0, 2, 3, 1).numpy()


def test_a_three_key_shot_is_the_cores_colorize_with_the_keys_bit_exact(comfy_server, shot, tmp_path):
    frames = _saved_images(comfy_server, comfy_server.run(_prompt(), timeout=600))
    assert frames.shape == (FRAMES, 64, 64, 3)
    for k in KEYS:
        assert np.array_equal(np.round(frames[k] * 255).astype(np.uint8), np.asarray(draw(k, colored=True))), k
    # PNG rounding and ComfyUI's casting layers, as for Apply Sketch (test_comfy_sketch.py).
    diff = np.abs(frames - _core(tmp_path))
    assert diff.max() <= 2.5 / 255 and diff.mean() <= 0.5 / 255
    assert not all(np.array_equal(frames[1], f) for f in frames[2:4])


@pytest.mark.parametrize(
    "prompt, message",
    [
        (dict(keys=(0,)), "colorize needs coloured keys at frame 0 and frame 8 (dual reference), got 1 key(s) [0]"),
        (dict(keys=(0, 4)), "the first and last frames must be coloured keys (dual reference), got keys [0, 4]: colour frame 8 too"),
        (dict(key_frames="0, 4, 9"), "key frame(s) [9] are outside the line art's frames 0..8"),
        (dict(key_frames="0, 8, 8"), "frame(s) [8] have more than one key"),
        (dict(key_frames="0, 7, 8"), "keys at frames 7 and 8 leave no frame between them to colour"),
        (dict(max_segment=4), "frames 0-4 make a 5-frame segment, longer than max_segment 4: add coloured keys at frame(s) 2"),
        (dict(key_frames="0, 8"), "keys has 3 image(s) but key_frames names 2 frame(s) ('0, 8')"),
        (dict(key_frames="0, four, 8"), "frame numbers must be whole numbers separated by commas"),
        (dict(single_key=True), "single_key takes exactly one coloured key, got 3"),
        (dict(lines="colorize_test_mixed"), "line-art frames differ in size: line_000.png is 64x64, line_001.png 32x32"),
        (dict(lines="colorize_test_dark"), "line art must be dark lines on light paper, but frame 0, frame 1 is mostly dark"),
    ],
    ids=["one-key", "no-last-key", "outside", "twice", "adjacent", "too-long", "count", "not-a-number", "single-key",
         "mixed-sizes", "inverted"],
)
def test_bad_inputs_are_named_before_anything_runs(comfy_server, shot, input_dir, prompt, message):
    (input_dir / "colorize_test_mixed").mkdir(exist_ok=True)
    draw(0).save(input_dir / "colorize_test_mixed" / "line_000.png")
    draw(1).resize((32, 32)).save(input_dir / "colorize_test_mixed" / "line_001.png")
    (input_dir / "colorize_test_dark").mkdir(exist_ok=True)
    for i in range(2):
        Image.eval(draw(i), lambda v: 255 - v).save(input_dir / "colorize_test_dark" / f"line_{i:03d}.png")
    entry = comfy_server.wait_for(comfy_server.queue_prompt(_prompt(**prompt)), timeout=300, check=False)
    errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert errors, entry["status"]
    assert message in errors[0]["exception_message"] and "Traceback" not in errors[0]["exception_message"]
    assert errors[0]["node_type"] in ("ToonCrafterColorize", "ToonCrafterLoadLineArt")
