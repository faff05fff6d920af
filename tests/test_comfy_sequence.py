"""ToonCrafter Keyframe Sequence inside a real ComfyUI 0.3.64 server (CPU): frame counts, loops, and
each segment equal to the two-keyframe nodes run with seed + i. (The shipped workflow runs in
test_comfy_nodes.py with the others.)"""

from __future__ import annotations

import numpy as np
from test_comfy_nodes import _saved_images, _seed_prompt

NAMES = ("tooncrafter_start.png", "tooncrafter_middle.png", "tooncrafter_end.png")
T = 4  # the tiny model's frames per segment


def _sequence_prompt(seed: int, names=NAMES, loop: bool = False, prompt: str = "a ball jumps") -> dict:
    prompt_api = {"1": {"class_type": "ToonCrafterModelLoader", "inputs": {"ckpt_name": "tooncrafter_tiny.safetensors",
                                                                          "weight_dtype": "auto"}}}
    batch = None
    for i, name in enumerate(names):
        prompt_api[f"l{i}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
        if batch is None:
            batch = [f"l{i}", 0]
        else:
            prompt_api[f"b{i}"] = {"class_type": "ImageBatch", "inputs": {"image1": batch, "image2": [f"l{i}", 0]}}
            batch = [f"b{i}", 0]
    prompt_api["5"] = {"class_type": "ToonCrafterSequence", "inputs": {
        "model": ["1", 0], "keyframes": batch, "prompt": prompt, "negative_prompt": "", "frame_stride": 10,
        "width": 64, "height": 64, "resize": "crop", "frames": 0, "loop": loop, "seed": seed, "steps": 3, "cfg": 7.5,
        "eta": 1.0, "guidance_rescale": 0.7, "timestep_spacing": "uniform_trailing", "frames_per_chunk": 0,
        "second_decode": True}}
    prompt_api["7"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": f"seq{seed}"}}
    return prompt_api


def _run(comfy_server, prompt: dict) -> np.ndarray:
    return _saved_images(comfy_server, comfy_server.run(prompt, timeout=600))


def test_three_keyframes_give_one_clip_of_plain_segments_with_seed_plus_i(comfy_server):
    clip = _run(comfy_server, _sequence_prompt(seed=20, prompt="a ball jumps\na ball lands"))
    assert clip.shape == (2 * (T - 1) + 1, 64, 64, 3)
    first = _run(comfy_server, {**_seed_prompt(20, start=NAMES[0], end=NAMES[1])})
    second_prompt = _seed_prompt(21, start=NAMES[1], end=NAMES[2])
    second_prompt["4"]["inputs"]["prompt"] = "a ball lands"
    second = _run(comfy_server, second_prompt)
    assert np.array_equal(clip[:T], first)
    assert np.array_equal(clip[T:], second[1:])  # keyframe 2 once, as the first segment drew it


def test_a_looped_pair_has_no_repeated_first_keyframe(comfy_server):
    clip = _run(comfy_server, _sequence_prompt(seed=30, names=NAMES[:2], loop=True))
    assert clip.shape == (2 * (T - 1), 64, 64, 3)
    back = _run(comfy_server, _seed_prompt(31, start=NAMES[1], end=NAMES[0]))
    assert np.array_equal(clip[T:], back[1:-1])
    assert np.isfinite(clip).all() and clip.std() > 0.01


def test_a_single_keyframe_and_a_prompt_count_mismatch_are_named(comfy_server):
    for prompt, message in (
        (_sequence_prompt(seed=1, names=NAMES[:1]), "at least 2 keyframes, got 1"),
        (_sequence_prompt(seed=1, prompt="one\ntwo\nthree"), "got 3 prompts for 2 segments"),
    ):
        entry = comfy_server.wait_for(comfy_server.queue_prompt(prompt), timeout=300, check=False)
        errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
        assert errors and message in errors[0]["exception_message"]
