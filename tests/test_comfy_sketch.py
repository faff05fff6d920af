"""Sketch guidance inside a real ComfyUI 0.3.64 server (CPU): Apply Sketch steers the frames like
the core does, strength 0 gives the unguided frames exactly, bad sketch inputs are named. (The
shipped sketch workflow runs in test_comfy_nodes.py with the others.)"""

from __future__ import annotations

import numpy as np
import torch
from helpers import REPO, TINY_SKETCH_ENCODER, tiny_checkpoint, tiny_sketch_encoder
from test_comfy_nodes import _saved_images, _seed_prompt

SKETCHES = ("tooncrafter_sketch_05.png", "tooncrafter_sketch_10.png")


def _sketch_prompt(seed: int, strength: float, indices: str = "1, 2") -> dict:
    prompt = _seed_prompt(seed)
    prompt["20"] = {"class_type": "ToonCrafterSketchEncoderLoader", "inputs": {"encoder_name": TINY_SKETCH_ENCODER}}
    prompt["21"] = {"class_type": "LoadImage", "inputs": {"image": SKETCHES[0]}}
    prompt["22"] = {"class_type": "LoadImage", "inputs": {"image": SKETCHES[1]}}
    prompt["23"] = {"class_type": "ImageBatch", "inputs": {"image1": ["21", 0], "image2": ["22", 0]}}
    prompt["24"] = {"class_type": "ToonCrafterApplySketch", "inputs": {
        "positive": ["4", 0], "negative": ["4", 1], "latent": ["4", 2], "sketch_encoder": ["20", 0],
        "sketches": ["23", 0], "frame_indices": indices, "strength": strength, "resize": "crop"}}
    prompt["5"]["inputs"]["positive"] = ["24", 0]
    prompt["5"]["inputs"]["negative"] = ["24", 1]
    return prompt


def _core_frames(tmp_path, seed: int, strength: float) -> np.ndarray:
    from tooncrafter_core import frames as tc_frames
    from tooncrafter_core import sketches
    from tooncrafter_core.pipeline import interpolate
    from tooncrafter_core.settings import SamplingConfig
    from tooncrafter_core.weights.checkpoint import load_model
    from tooncrafter_core.weights.sketch_encoder import load_sketch_encoder

    model = load_model(tiny_checkpoint(tmp_path), dtype=torch.float32)
    encoder = load_sketch_encoder(tiny_sketch_encoder(tmp_path / "enc.safetensors"), torch.float32)
    keyframes = REPO / "workflows" / "keyframes"
    start, end = (tc_frames.to_model(tc_frames.fit(tc_frames.load_image(keyframes / n), 64, 64, "crop"))
                  for n in ("tooncrafter_start.png", "tooncrafter_end.png"))
    hints = torch.cat([sketches.sketch_hint(tc_frames.load_image(keyframes / n), 64, 64, "crop") for n in SKETCHES], dim=2)
    guide = sketches.SketchGuide(encoder, sketches.place_sketches(hints, [1, 2], 4), strength)
    video = interpolate(model, start, end, "a ball jumps", SamplingConfig(steps=3),
                        generator=torch.Generator().manual_seed(seed), sketch=guide)
    return tc_frames.from_model(video[0]).permute(1, 2, 3, 0).numpy()


def test_apply_sketch_steers_the_frames_as_the_core_does(comfy_server, tmp_path):
    guided = _saved_images(comfy_server, comfy_server.run(_sketch_prompt(40, 0.6), timeout=600))
    base = _saved_images(comfy_server, comfy_server.run(_seed_prompt(40), timeout=600))
    assert guided.shape == base.shape == (4, 64, 64, 3)
    assert np.abs(guided - base).max() > 0.05
    # PNG quantisation (half a level) and ComfyUI's casting layers' rounding: measured 1.5 levels at
    # most, 0.3 on average, against the 10-level change the sketches make.
    diff = np.abs(guided - _core_frames(tmp_path, 40, 0.6))
    assert diff.max() <= 2.5 / 255 and diff.mean() <= 0.5 / 255
    # Strength 0: the unguided frames, bit for bit.
    assert np.array_equal(_saved_images(comfy_server, comfy_server.run(_sketch_prompt(40, 0.0), timeout=600)), base)


def test_bad_frame_indices_are_named(comfy_server):
    for indices, message in (("1", "2 sketches but 1 frame numbers"), ("1, 7", "in 0..3"), ("a, b", "whole numbers")):
        entry = comfy_server.wait_for(comfy_server.queue_prompt(_sketch_prompt(41, 0.6, indices)), timeout=300, check=False)
        errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
        assert errors and message in errors[0]["exception_message"], indices
        assert "frame_indices" in errors[0]["exception_message"]


def test_apply_sketch_tooltip_says_frames_without_a_sketch_are_still_steered(comfy_server):
    spec = comfy_server.object_info("ToonCrafterApplySketch")["ToonCrafterApplySketch"]["input"]["required"]
    tooltip = spec["frame_indices"][1]["tooltip"]
    assert "left to the model" not in tooltip
    assert "get an empty one, which still goes through the sketch encoder and steers them too" in tooltip
