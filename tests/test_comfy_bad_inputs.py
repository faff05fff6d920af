"""The bad-input catalogue (issue #9) through ComfyUI, where the input comes from a node: a real
server (the session's `comfy_server`), and the node glue in a fresh process with ComfyUI imported
for what a server cannot time (an exception inside each stage, out of memory during decode).

After each failing prompt a normal prompt must still give the base frames: nothing leaves the
loaded model broken. The core and CLI entries are in test_bad_inputs.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from itertools import count
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_harness import ComfyError, in_process_script
from helpers import DC_I2V_256, REPO, TINY, tiny_checkpoint
from PIL import Image
from safetensors.torch import save_file
from test_comfy_nodes import _saved_images, _seed_prompt

SEED = 2024
KEYFRAMES = REPO / "workflows" / "keyframes"
PROMPT_500_WORDS = " ".join((["a", "red", "ball", "bounces", "over", "the", "green", "hill"] * 63)[:500])
_unique = count()


@pytest.fixture(scope="module")
def input_dir(comfy_server) -> Path:
    folder = comfy_server.root / "input"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def base(comfy_server, input_dir) -> np.ndarray:
    """The frames of the normal prompt, (4 64 64 3) in [0, 1]."""
    return _normal_run(comfy_server, input_dir)


def _normal_run(comfy_server, input_dir: Path) -> np.ndarray:
    """The normal prompt, made to run again: its keyframes under new names (same pixels) change
    every node's inputs after the loader, whose cached model is reused."""
    n = next(_unique)
    names = []
    for which in ("start", "end"):
        name = f"catalogue_{which}_{n}.png"
        shutil.copyfile(KEYFRAMES / f"tooncrafter_{which}.png", input_dir / name)
        names.append(name)
    return _saved_images(comfy_server, comfy_server.run(_seed_prompt(SEED, start=names[0], end=names[1]), timeout=600))


def _still_works(comfy_server, input_dir: Path, base: np.ndarray) -> None:
    assert np.array_equal(_normal_run(comfy_server, input_dir), base), "the loaded model no longer gives the base frames"


def _execution_error(comfy_server, prompt: dict) -> dict:
    entry = comfy_server.wait_for(comfy_server.queue_prompt(prompt), timeout=300, check=False)
    errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert len(errors) == 1, entry["status"]
    return errors[0]


def _image_node(prompt: dict, node: str, image: Path, input_dir: Path) -> None:
    """Point LoadImage `node` at `image` (copied into ComfyUI's input folder)."""
    shutil.copyfile(image, input_dir / image.name)
    prompt[node]["inputs"]["image"] = image.name


# ---------------------------------------------------------------------------------------------
# Keyframes


def test_keyframes_of_different_sizes_are_fitted(comfy_server, input_dir, tmp_path):
    start, end = Image.new("RGB", (96, 80), "white"), Image.new("RGB", (50, 120), "white")
    start.paste((220, 30, 30), (5, 5, 40, 40))
    end.paste((30, 30, 220), (10, 60, 45, 110))
    start.save(tmp_path / "catalogue_96x80.png")
    end.save(tmp_path / "catalogue_50x120.png")
    prompt = _seed_prompt(SEED)
    _image_node(prompt, "2", tmp_path / "catalogue_96x80.png", input_dir)
    _image_node(prompt, "3", tmp_path / "catalogue_50x120.png", input_dir)
    frames = _saved_images(comfy_server, comfy_server.run(prompt, timeout=600))
    assert frames.shape == (4, 64, 64, 3) and frames.std() > 0.01


@pytest.mark.parametrize("width,height", [(72, 64), (64, 100)])
def test_width_or_height_not_a_multiple_is_named(comfy_server, input_dir, base, width, height):
    # The widgets step by 64, but the API (or a converted workflow) can send any integer.
    prompt = _seed_prompt(SEED)
    prompt["4"]["inputs"].update(width=width, height=height)
    error = _execution_error(comfy_server, prompt)
    assert error["node_type"] == "ToonCrafterConditioning"
    # The tiny model needs multiples of 16; the released one of 64.
    assert f"width x height {width}x{height} is not a multiple of 16 for this model: use e.g." in error["exception_message"]
    _still_works(comfy_server, input_dir, base)


def test_rgba_image_drops_its_alpha(comfy_server, input_dir, base, tmp_path):
    """An IMAGE with an alpha channel (JoinImageWithAlpha: 4 channels) gives the RGB image's frames."""
    with Image.open(KEYFRAMES / "tooncrafter_start.png") as im:
        rgba = im.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    rgba.save(tmp_path / "catalogue_rgba.png")
    prompt = _seed_prompt(SEED)
    _image_node(prompt, "2", tmp_path / "catalogue_rgba.png", input_dir)
    prompt["8"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["2", 0], "alpha": ["2", 1]}}
    prompt["4"]["inputs"]["start_image"] = ["8", 0]
    frames = _saved_images(comfy_server, comfy_server.run(prompt, timeout=600))
    assert np.array_equal(frames, base)


def test_grayscale_image_runs(comfy_server, input_dir, tmp_path):
    """ComfyUI's IMAGEs are RGB (or RGBA): LoadImage repeats a gray PNG into three channels."""
    with Image.open(KEYFRAMES / "tooncrafter_end.png") as im:
        im.convert("L").save(tmp_path / "catalogue_gray.png")
    prompt = _seed_prompt(SEED)
    _image_node(prompt, "3", tmp_path / "catalogue_gray.png", input_dir)
    frames = _saved_images(comfy_server, comfy_server.run(prompt, timeout=600))
    assert frames.shape == (4, 64, 64, 3) and np.isfinite(frames).all()


def test_one_start_image_pairs_with_each_of_three_end_images(comfy_server):
    prompt = _seed_prompt(SEED)
    prompt["8"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["3", 0], "amount": 3}}
    prompt["4"]["inputs"]["end_image"] = ["8", 0]
    frames = _saved_images(comfy_server, comfy_server.run(prompt, timeout=600))
    assert frames.shape == (12, 64, 64, 3)  # three clips of four frames, one after another
    clips = frames.reshape(3, 4, 64, 64, 3)
    assert not np.array_equal(clips[0], clips[1])  # each pair draws its own noise


def test_three_start_images_with_two_end_images_are_named(comfy_server, input_dir, base):
    prompt = _seed_prompt(SEED)
    prompt["8"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 3}}
    prompt["9"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["3", 0], "amount": 2}}
    prompt["4"]["inputs"].update(start_image=["8", 0], end_image=["9", 0])
    error = _execution_error(comfy_server, prompt)
    assert "start_image has 3 images and end_image 2: give one of each, or the same number of both" in error["exception_message"]
    _still_works(comfy_server, input_dir, base)


# ---------------------------------------------------------------------------------------------
# Prompt and sampling settings


def test_empty_prompt_runs(comfy_server):
    prompt = _seed_prompt(SEED)
    prompt["4"]["inputs"]["prompt"] = ""
    frames = _saved_images(comfy_server, comfy_server.run(prompt, timeout=600))
    assert frames.shape == (4, 64, 64, 3)


def test_500_word_prompt_runs_and_warns_in_the_log(comfy_server):
    prompt = _seed_prompt(SEED)
    prompt["4"]["inputs"]["prompt"] = PROMPT_500_WORDS
    log_before = len(comfy_server.log_text())
    frames = _saved_images(comfy_server, comfy_server.run(prompt, timeout=600))
    assert frames.shape == (4, 64, 64, 3)
    assert "only its first 77 tokens are used" in comfy_server.log_text()[log_before:]


@pytest.mark.parametrize("steps,kind", [(0, "value_smaller_than_min"), (1001, "value_bigger_than_max")])
def test_steps_out_of_range_are_refused_by_validation(comfy_server, steps, kind):
    prompt = _seed_prompt(SEED, steps=steps)
    with pytest.raises(ComfyError) as refused:
        comfy_server.queue_prompt(prompt)
    message = str(refused.value)
    assert f'"type": "{kind}"' in message
    assert re.search(r'"input_name": "steps"', message), message


def test_cfg_1_runs_and_matches_the_core_without_the_negative_pass(comfy_server, base, tmp_path):
    from tooncrafter_core import frames as tc_frames
    from tooncrafter_core.pipeline import interpolate
    from tooncrafter_core.settings import SamplingConfig
    from tooncrafter_core.weights.checkpoint import load_model

    prompt = _seed_prompt(SEED)
    prompt["5"]["inputs"]["cfg"] = 1.0
    ours = _saved_images(comfy_server, comfy_server.run(prompt, timeout=600))
    model = load_model(tiny_checkpoint(tmp_path), dtype=torch.float32)
    start, end = (tc_frames.to_model(tc_frames.fit(tc_frames.load_image(KEYFRAMES / f"tooncrafter_{n}.png"), 64, 64, "crop"))
                  for n in ("start", "end"))
    video = interpolate(model, start, end, "a ball jumps", SamplingConfig(steps=3, cfg_scale=1.0),
                        generator=torch.Generator().manual_seed(SEED))
    core = tc_frames.from_model(video[0]).permute(1, 2, 3, 0).numpy()
    assert np.abs(ours - core).max() <= 1.5 / 255  # PNG quantisation only
    assert not np.array_equal(ours, base)


# ---------------------------------------------------------------------------------------------
# Interrupts (POST /interrupt while a node of the prompt runs)


async def _interrupt_when_running(comfy_server, prompt: dict, node: str) -> str:
    """Queue `prompt` and interrupt it as soon as the server reports that `node` started."""
    import aiohttp

    client = uuid.uuid4().hex
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{comfy_server.port}/ws?clientId={client}") as ws:
            async with session.post(f"{comfy_server.base_url}/prompt", json={"prompt": prompt, "client_id": client}) as r:
                prompt_id = (await r.json())["prompt_id"]
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue  # binary previews
                event = json.loads(message.data)
                data = event.get("data", {})
                if event["type"] == "executing" and data.get("prompt_id") == prompt_id and data.get("node") == node:
                    comfy_server.interrupt(prompt_id)
                    return prompt_id
                if event["type"] in ("execution_success", "execution_error") and data.get("prompt_id") == prompt_id:
                    raise AssertionError(f"node {node} never ran: {event}")
    raise AssertionError("the websocket closed before the node ran")


# node id -> the nodes that may report the interrupt. ComfyUI checks for it as each node starts (so
# mostly the node itself reports it) and the sampler at each step; an interrupt that comes once the
# loader, conditioning or decode is past that check stops the graph before the next node.
STAGES = {
    "1": ("loader", {"ToonCrafterModelLoader", "LoadImage", "ToonCrafterConditioning", "ToonCrafterSampler"}),
    "4": ("conditioning", {"ToonCrafterConditioning", "ToonCrafterSampler"}),
    "5": ("sampler", {"ToonCrafterSampler"}),
    "6": ("decode", {"ToonCrafterDecode", "SaveImage"}),
}


@pytest.mark.parametrize("node", list(STAGES), ids=[name for name, _ in STAGES.values()])
def test_interrupt_at_each_stage_then_the_next_run_gives_the_same_frames(comfy_server, input_dir, base, node):
    name, reported = STAGES[node]
    # Still running when the interrupt arrives: 1000 steps after the loader and the conditioning,
    # a decode of six windows (one frame kept from each) instead of two.
    prompt = _seed_prompt(SEED + 1, steps=3 if name == "decode" else 1000)
    if name == "loader":
        prompt["1"]["inputs"]["weight_dtype"] = "fp32"  # another load than the cached one, so it runs
    if name == "decode":
        prompt["6"]["inputs"]["frames_per_chunk"] = 1
    # In a thread of its own: the frontend tests' Playwright keeps an event loop running in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        prompt_id = pool.submit(asyncio.run, _interrupt_when_running(comfy_server, prompt, node)).result()
    entry = comfy_server.wait_for(prompt_id, timeout=300, check=False)
    messages = dict(entry["status"]["messages"])
    assert "execution_interrupted" in messages, entry["status"]
    assert messages["execution_interrupted"]["node_type"] in reported
    _still_works(comfy_server, input_dir, base)


# ---------------------------------------------------------------------------------------------
# Checkpoints


@pytest.fixture()
def staged(comfy_server):
    """Put files into the server's models/tooncrafter for one test (other tests list that folder)."""
    paths = []

    def stage(name: str, data: bytes | None = None, state: dict | None = None) -> str:
        path = comfy_server.tooncrafter_models_dir / name
        if state is not None:
            save_file(state, str(path))
        else:
            path.write_bytes(data)
        paths.append(path)
        return name

    yield stage
    for path in paths:
        path.unlink(missing_ok=True)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "header-flipped"])
def test_truncated_or_corrupt_checkpoint_names_the_file_and_says_download_again(comfy_server, input_dir, base, staged, kind):
    data = (TINY / "model.safetensors").read_bytes()
    if kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "garbage":
        data = bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))
    else:
        data = data[:12] + bytes(x ^ 0xFF for x in data[12:40]) + data[40:]
    name = staged(f"zz_catalogue_{kind}.safetensors", data)
    prompt = _seed_prompt(SEED)
    prompt["1"]["inputs"]["ckpt_name"] = name
    error = _execution_error(comfy_server, prompt)
    assert error["node_type"] == "ToonCrafterModelLoader"
    assert error["exception_message"].startswith(f"{name} is not a readable safetensors file")
    assert error["exception_message"].rstrip().endswith("download it again")
    _still_works(comfy_server, input_dir, base)


def test_checkpoint_of_another_model_is_not_taken_for_tooncrafter(comfy_server, input_dir, base, staged):
    sd15 = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3, dtype=torch.float16),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3, dtype=torch.float16),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(768, dtype=torch.float16),
    }
    name = staged("zz_catalogue_sd15.safetensors", state=sd15)
    prompt = _seed_prompt(SEED)
    prompt["1"]["inputs"]["ckpt_name"] = name
    error = _execution_error(comfy_server, prompt)
    assert error["node_type"] == "ToonCrafterModelLoader"
    assert error["exception_message"].startswith(
        f"{name} is not a ToonCrafter or DynamiCrafter checkpoint: its keys are those of a Stable Diffusion 1.x checkpoint"
    )
    _still_works(comfy_server, input_dir, base)


def test_a_checkpoint_of_the_other_kind_names_what_it_is_and_the_node_it_needs(comfy_server, input_dir, base, staged):
    # ToonCrafter (interpolation only) in the image-to-video node.
    prompt = _seed_prompt(SEED)
    prompt["4"] = {"class_type": "DynamiCrafterImageConditioning", "inputs": {
        "model": ["1", 0], "image": ["2", 0], "prompt": "a ball", "negative_prompt": "", "frame_stride": 0,
        "width": 64, "height": 64, "resize": "crop", "frames": 0}}
    error = _execution_error(comfy_server, prompt)
    assert error["node_type"] == "DynamiCrafterImageConditioning"
    assert error["exception_message"].rstrip() == (
        "this checkpoint is a ToonCrafter 64 interpolation model, not one for image-to-video: use it with "
        "ToonCrafter Conditioning (two keyframes), or pick a checkpoint made for image-to-video"
    )
    # DynamiCrafter 256 (image-to-video only: eps, frame stride) in the interpolation node.
    name = staged("zz_catalogue_dc256.safetensors", (DC_I2V_256 / "model.safetensors").read_bytes())
    staged("zz_catalogue_dc256.yaml", (DC_I2V_256 / "config.yaml").read_bytes())
    prompt = _seed_prompt(SEED)
    prompt["1"]["inputs"]["ckpt_name"] = name
    error = _execution_error(comfy_server, prompt)
    assert error["node_type"] == "ToonCrafterConditioning"
    message = error["exception_message"].rstrip()
    assert re.fullmatch(
        r"this checkpoint is a DynamiCrafter \d+ image-to-video model, not one for interpolation: use it with "
        r"DynamiCrafter Image Conditioning \(one image\), or pick a checkpoint made for interpolation", message
    ), message
    _still_works(comfy_server, input_dir, base)


def test_yaml_naming_a_missing_architecture_json_says_where_to_put_it(comfy_server, input_dir, base, staged):
    name = staged("zz_catalogue_nojson.safetensors", (TINY / "model.safetensors").read_bytes())
    yaml = (TINY / "config.yaml").read_text().replace("arch: TC-Tiny", "arch: TC-Missing")
    staged("zz_catalogue_nojson.yaml", yaml.encode())
    prompt = _seed_prompt(SEED)
    prompt["1"]["inputs"]["ckpt_name"] = name
    error = _execution_error(comfy_server, prompt)
    assert error["node_type"] == "ToonCrafterModelLoader"
    assert error["exception_message"].startswith(
        "OpenCLIP architecture 'TC-Missing' not found: put TC-Missing.json next to the checkpoint "
        f"(looked in: {comfy_server.tooncrafter_models_dir / 'TC-Missing.json'}"
    )
    _still_works(comfy_server, input_dir, base)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned-marker",))


def test_ckpt_whose_pickle_runs_code_is_refused(comfy_server, input_dir, base, staged, tmp_path):
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _RunsCode()}, tmp_path / "evil.ckpt")
    name = staged("zz_catalogue_evil.ckpt", (tmp_path / "evil.ckpt").read_bytes())
    prompt = _seed_prompt(SEED)
    prompt["1"]["inputs"]["ckpt_name"] = name
    error = _execution_error(comfy_server, prompt)
    assert error["exception_message"].startswith(f"refusing to load {name}: its pickle wants to run code")
    assert not (comfy_server.root / "pwned-marker").exists()
    _still_works(comfy_server, input_dir, base)


# ---------------------------------------------------------------------------------------------
# The node glue in a fresh process: an exception inside each stage, out of memory during decode

# Runs after comfy_harness.IN_PROCESS_PRELUDE (ComfyUI and the pack imported, the tiny model loaded as `handle`).
NODE_SCRIPT = """
    from tc_pack.nodes.conditioning import ToonCrafterConditioning
    from tc_pack.nodes.decoder import ToonCrafterDecode
    from tc_pack.nodes.sampler import ToonCrafterSampler
    g = torch.Generator().manual_seed(0)
    start, end = torch.rand(1, 32, 32, 3, generator=g), torch.rand(1, 32, 32, 3, generator=g)

    def run(frames=0, steps=2, chunk=0):
        pos, neg, lat = ToonCrafterConditioning.execute(handle, start, end, "a ball", "", 10, 32, 32, "crop", frames).result
        (lat,) = ToonCrafterSampler.execute(handle, pos, neg, lat, 7, steps, 7.5, 1.0, 0.7, "uniform_trailing").result
        return ToonCrafterDecode.execute(handle, lat, chunk, True).result[0]

    def fail_on_call(module, n, action):
        forward, calls = module.forward, []
        def patched(*a, **k):
            calls.append(1)
            if len(calls) == n:
                action()
            return forward(*a, **k)
        module.forward = patched

    def interrupt():
        raise mm.InterruptProcessingException()

    before = run()
    stages = {{
        "text encoder": (handle.text.model.encoder, 1, interrupt),
        "image encoder": (handle.vision.model.model.visual, 1, interrupt),
        "resampler": (handle.image_proj.model, 1, interrupt),
        "vae encode": (handle.vae.model.encoder, 1, interrupt),
        "cancel during sampling": (handle.unet.model.diffusion_model, 1, lambda: mm.interrupt_current_processing(True)),
        "unet": (handle.unet.model.diffusion_model, 2, interrupt),
        "decode": (handle.vae.model.decoder, 2, interrupt),
    }}
    for name, (module, n, action) in stages.items():
        fail_on_call(module, n, action)
        try:
            run()
        except mm.InterruptProcessingException:
            pass
        else:
            raise AssertionError(name + ": not interrupted")
        finally:
            del module.forward
        assert torch.equal(run(), before), name + ": the next run differs"
        print("interrupted", name)

    # Out of memory when the decoder is asked for more than 12 frames at once: 16 frames decode in
    # chunks of 8 (windows of 12 with the node's 4 context frames a side), as frames_per_chunk=8 does.
    expected = run(frames=16, steps=1, chunk=8)
    def oom_above_12(forward=handle.vae.model.decoder.forward):
        def decoder(z, refs, frames, *a):
            if frames > 12:
                raise torch.OutOfMemoryError("simulated")
            return forward(z, refs, frames, *a)
        return decoder
    handle.vae.model.decoder.forward = oom_above_12()
    warnings = []
    logging.getLogger("tc_pack").addHandler(logging.Handler())
    logging.getLogger("tc_pack").handlers[-1].emit = lambda record: warnings.append(record.getMessage())
    got = run(frames=16, steps=1, chunk=0)
    print(*warnings, sep="\\n")
    del handle.vae.model.decoder.forward
    assert torch.equal(got, expected), (got - expected).abs().max()
    assert torch.equal(run(), before)
    print("OK")
"""


def test_node_glue_survives_an_exception_in_each_stage_and_retries_decode_out_of_memory():
    code = in_process_script(NODE_SCRIPT)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/tmp", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line for line in lines if line.startswith("interrupted ")] == [
        "interrupted text encoder", "interrupted image encoder", "interrupted resampler", "interrupted vae encode",
        "interrupted cancel during sampling", "interrupted unet", "interrupted decode",
    ]
    assert any(line.startswith("out of memory decoding 16 frames at a time: retrying with 8 frames at a time") for line in lines)
    assert lines[-1] == "OK"
