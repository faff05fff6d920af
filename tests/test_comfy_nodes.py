"""The node pack inside a real ComfyUI 0.3.64 server (CPU): schemas, shipped workflows, seeds, Cancel."""

from __future__ import annotations

import io
import itertools
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_harness import PACK_NAME, pack_import_errors, pack_node_types, workflow_to_api
from helpers import REPO, TINY_SKETCH_ENCODER, tiny_checkpoint
from PIL import Image

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
TINY_CKPT = "tooncrafter_tiny.safetensors"

# The node reference of README.md: every node, its inputs in order, and its outputs.
DOCUMENTED = {
    "ToonCrafterModelLoader": (["ckpt_name", "weight_dtype", "vae_dtype", "compile"], ["model", "MODEL", "CLIP"]),
    "ToonCrafterLoraLoader": (["model", "lora_name", "strength"], ["model"]),
    "ToonCrafterConditioning": (
        ["model", "start_image", "end_image", "prompt", "negative_prompt", "frame_stride", "width", "height",
         "resize", "frames", "clip", "clip_vision", "image_context_ratio"],
        ["positive", "negative", "latent"],
    ),
    "ToonCrafterSampler": (
        ["model", "positive", "negative", "latent", "seed", "steps", "cfg", "eta", "guidance_rescale", "timestep_spacing"],
        ["latent"],
    ),
    "ToonCrafterDecode": (["model", "latent", "frames_per_chunk", "second_decode"], ["frames"]),
    "ToonCrafterSequence": (
        ["model", "keyframes", "prompt", "negative_prompt", "frame_stride", "width", "height", "resize", "frames", "loop",
         "seed", "steps", "cfg", "eta", "guidance_rescale", "timestep_spacing", "frames_per_chunk", "second_decode",
         "clip", "clip_vision", "trim"],
        ["frames"],
    ),
    "ToonCrafterSketchEncoderLoader": (["encoder_name"], ["sketch_encoder"]),
    "ToonCrafterApplySketch": (
        ["positive", "negative", "latent", "sketch_encoder", "sketches", "frame_indices", "strength", "resize"],
        ["positive", "negative"],
    ),
    "ToonCrafterImageConditioning": (
        ["model", "positive", "negative", "start_image", "end_image", "frame_stride", "width", "height", "resize",
         "frames", "clip_vision"],
        ["positive", "negative", "latent"],
    ),
    "ToonCrafterDDIMSampler": (["eta"], ["sampler"]),
    "ToonCrafterSigmas": (["model", "steps", "timestep_spacing"], ["sigmas"]),
    "ToonCrafterGuidanceRescale": (["model", "multiplier"], ["MODEL"]),
    "ToonCrafterTrainLora": (
        ["model", "data_folder", "lora_name", "steps", "learning_rate", "rank", "alpha", "width", "height", "frames",
         "loss", "gradient_checkpointing", "seed", "prompt"],
        ["model", "lora_name"],
    ),
    "DynamiCrafterImageConditioning": (
        ["model", "image", "prompt", "negative_prompt", "frame_stride", "width", "height", "resize", "frames", "clip",
         "clip_vision"],
        ["positive", "negative", "latent"],
    ),
    "ToonCrafterLoadLineArt": (["folder"], ["line_art"]),
    "ToonCrafterColorize": (
        ["model", "sketch_encoder", "line_art", "keys", "key_frames", "prompt", "negative_prompt", "frame_stride",
         "width", "height", "resize", "seed", "steps", "cfg", "eta", "guidance_rescale", "timestep_spacing",
         "sketch_strength", "max_segment", "single_key", "line_overlay", "color_match", "frames_per_chunk",
         "second_decode", "clip", "clip_vision", "line_art_mask"],
        ["frames"],
    ),
}


def _inputs(info: dict) -> list[str]:
    order = info["input_order"]
    return order.get("required", []) + order.get("optional", [])


def test_pack_imports_and_lists_every_documented_node(comfy_server):
    assert pack_import_errors(comfy_server.log_text()) == []
    info = comfy_server.object_info()
    assert pack_node_types(info) == set(DOCUMENTED)
    for node, (inputs, outputs) in DOCUMENTED.items():
        entry = info[node]
        assert entry["category"] == "ToonCrafter"
        assert entry["display_name"] and entry["description"]
        assert _inputs(entry) == inputs, node
        assert entry["output_name"] == outputs, node
        for group in ("required", "optional"):
            for name, spec in entry["input"].get(group, {}).items():
                assert spec[1].get("tooltip"), f"{node}.{name} has no tooltip"


def test_loader_lists_present_files_and_known_releases_but_no_unfinished_download(comfy_server):
    staging = comfy_server.tooncrafter_models_dir / ".tooncrafter-download"
    staging.mkdir(exist_ok=True)
    (staging / "tooncrafter_512_interp-fp16.safetensors").write_bytes(b"half a download")
    try:
        info = comfy_server.object_info("ToonCrafterModelLoader")["ToonCrafterModelLoader"]
    finally:
        shutil.rmtree(staging)
    options = info["input"]["required"]["ckpt_name"][1]["options"]
    # Files present first, then the releases not downloaded yet; the staged file is neither.
    assert options.index(TINY_CKPT) < options.index("tooncrafter_512_interp-fp16.safetensors")
    assert "tooncrafter_512_interp-pruned-fp16.safetensors" in options
    assert not any(o.startswith(".") or "/." in o for o in options)


def test_loader_offers_the_documented_weight_dtypes(comfy_server):
    spec = comfy_server.object_info("ToonCrafterModelLoader")["ToonCrafterModelLoader"]["input"]["required"]["weight_dtype"][1]
    assert spec["options"] == ["auto", "fp32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"]
    assert spec["default"] == "auto"


def _api(comfy_server, workflow: Path) -> dict:
    return workflow_to_api(json.loads(workflow.read_text()), comfy_server.object_info())


def _set(api: dict, class_type: str, **values) -> None:
    """Override widget values by input name; a name the node does not have is a test failure."""
    nodes = [n for n in api.values() if n["class_type"] == class_type]
    assert nodes, f"no {class_type} in the workflow"
    for node in nodes:
        for name, value in values.items():
            assert name in node["inputs"], f"{class_type} has no input {name}"
            node["inputs"][name] = value


# The tiny model standing in for each workflow's checkpoint, its frame size (width, height) and frames.
TINY_FOR = {
    "dynamicrafter_i2v": ("dynamicrafter_tiny_i2v.safetensors", (64, 64), 4),
    "dynamicrafter_interp": ("dynamicrafter_tiny_interp.safetensors", (64, 64), 8),
}


def _tiny_settings(api: dict, workflow: str = "") -> None:
    ckpt, (width, height), _ = TINY_FOR.get(workflow, (TINY_CKPT, (64, 64), 4))
    _set(api, "ToonCrafterModelLoader", ckpt_name=ckpt)
    if any(n["class_type"] == "DynamiCrafterImageConditioning" for n in api.values()):
        _set(api, "DynamiCrafterImageConditioning", width=width, height=height)
        _set(api, "KSampler", steps=4)
        return
    if any(n["class_type"] == "ToonCrafterColorize" for n in api.values()):
        _set(api, "ToonCrafterSketchEncoderLoader", encoder_name=TINY_SKETCH_ENCODER)
        _set(api, "ToonCrafterColorize", width=64, height=64, steps=2)
        return
    if any(n["class_type"] == "ToonCrafterSequence" for n in api.values()):
        _set(api, "ToonCrafterSequence", width=64, height=64, steps=2)
        return
    _set(api, "ToonCrafterConditioning", width=width, height=height)
    if any(n["class_type"] == "KSampler" for n in api.values()):
        _set(api, "KSampler", steps=4)  # the workflow's own sampler and scheduler, fewer steps
    else:
        _set(api, "ToonCrafterSampler", steps=3)
    if any(n["class_type"] == "ToonCrafterApplySketch" for n in api.values()):
        _set(api, "ToonCrafterSketchEncoderLoader", encoder_name=TINY_SKETCH_ENCODER)
        _set(api, "ToonCrafterApplySketch", frame_indices="1, 2")  # the tiny model's 4 frames


def _video_frames(comfy_server, entry: dict) -> np.ndarray:
    import av

    files = [f for out in entry["outputs"].values() for f in out.get("images", []) if str(f.get("filename", "")).endswith(".mp4")]
    assert len(files) == 1, entry["outputs"]
    with av.open(io.BytesIO(comfy_server.view(files[0]))) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.parametrize("workflow", [w for w in WORKFLOWS if "pruned" not in w.name], ids=lambda p: p.stem)
def test_shipped_workflow_runs_with_the_tiny_model(comfy_server, workflow):
    api = _api(comfy_server, workflow)
    _tiny_settings(api, workflow.stem)
    entry = comfy_server.run(api, timeout=600)
    frames = _video_frames(comfy_server, entry)
    # The tiny model's frames at the requested size; the sequence joins 3 keyframes: 2 * (4 - 1) + 1; the
    # colorize shot has its line art's 25.
    _, (width, height), count = TINY_FOR.get(workflow.stem, (None, (64, 64), 4))
    count = {"tooncrafter_sequence": 7, "tooncrafter_colorize": 25}.get(workflow.stem, count)
    assert frames.shape == (count, height, width, 3)
    assert np.isfinite(frames).all() and frames.std() > 1.0
    assert not all(np.array_equal(frames[0], f) for f in frames[1:])


def test_pruned_workflow_runs_with_comfyui_clip_and_clip_vision(comfy_server):
    from pruned_fixtures import CLIP_VISION_NAME, PRUNED_STEM, TEXT_ENCODER_NAME, stage_pruned_models

    stage_pruned_models(comfy_server.models_dir)
    api = _api(comfy_server, REPO / "workflows" / "tooncrafter_pruned_fp16_with_comfy_clip.json")
    _set(api, "CLIPLoader", clip_name=TEXT_ENCODER_NAME, type="stable_diffusion")
    _set(api, "CLIPVisionLoader", clip_name=CLIP_VISION_NAME)
    _tiny_settings(api)
    _set(api, "ToonCrafterModelLoader", ckpt_name=f"{PRUNED_STEM}.safetensors")
    entry = comfy_server.run(api, timeout=600)
    frames = _video_frames(comfy_server, entry)
    assert frames.shape == (4, 64, 64, 3)
    assert frames.std() > 1.0


def test_pruned_checkpoint_without_clip_inputs_names_the_fix(comfy_server):
    from pruned_fixtures import PRUNED_STEM, stage_pruned_models

    stage_pruned_models(comfy_server.models_dir)
    prompt = _seed_prompt(seed=1)
    prompt["1"]["inputs"]["ckpt_name"] = f"{PRUNED_STEM}.safetensors"
    entry = comfy_server.wait_for(comfy_server.queue_prompt(prompt), timeout=300, check=False)
    errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert errors and "pruned file" in errors[0]["exception_message"]
    assert "CLIPLoader" in errors[0]["exception_message"]


def _seed_prompt(seed: int, steps: int = 3, start="tooncrafter_start.png", end="tooncrafter_end.png") -> dict:
    return {
        "1": {"class_type": "ToonCrafterModelLoader", "inputs": {"ckpt_name": TINY_CKPT, "weight_dtype": "auto"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": start}},
        "3": {"class_type": "LoadImage", "inputs": {"image": end}},
        "4": {"class_type": "ToonCrafterConditioning", "inputs": {
            "model": ["1", 0], "start_image": ["2", 0], "end_image": ["3", 0], "prompt": "a ball jumps",
            "negative_prompt": "", "frame_stride": 10, "width": 64, "height": 64, "resize": "crop", "frames": 0}},
        "5": {"class_type": "ToonCrafterSampler", "inputs": {
            "model": ["1", 0], "positive": ["4", 0], "negative": ["4", 1], "latent": ["4", 2], "seed": seed,
            "steps": steps, "cfg": 7.5, "eta": 1.0, "guidance_rescale": 0.7, "timestep_spacing": "uniform_trailing"}},
        "6": {"class_type": "ToonCrafterDecode", "inputs": {"model": ["1", 0], "latent": ["5", 0],
                                                           "frames_per_chunk": 0, "second_decode": True}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": f"seed{seed}"}},
    }


def _saved_images(comfy_server, entry: dict) -> np.ndarray:
    files = entry["outputs"]["7"]["images"]
    return np.stack([np.asarray(Image.open(io.BytesIO(comfy_server.view(f)))) for f in files]).astype(np.float32) / 255


def _core_frames(ckpt: Path, seed: int, lora=(), **load_options) -> np.ndarray:
    """What the core's `interpolate` draws for `_seed_prompt(seed)`, (t h w c) in [0, 1]; `lora`
    (LoraSpecs) merged into the weights."""
    from tooncrafter_core import frames as tc_frames
    from tooncrafter_core.pipeline import interpolate
    from tooncrafter_core.settings import SamplingConfig
    from tooncrafter_core.weights.checkpoint import load_model
    from tooncrafter_core.weights.lora import merge_specs

    if lora:
        # ComfyUI keeps the file's fp16 weights and patches them: merge into fp16, compute in fp32.
        model = load_model(ckpt, **load_options)
        merge_specs(model, lora)
        model.float()
    else:
        model = load_model(ckpt, dtype=torch.float32, **load_options)
    keyframes = REPO / "workflows" / "keyframes"
    start, end = (tc_frames.to_model(tc_frames.fit(tc_frames.load_image(keyframes / n), 64, 64, "crop"))
                  for n in ("tooncrafter_start.png", "tooncrafter_end.png"))
    video = interpolate(model, start, end, "a ball jumps", SamplingConfig(steps=3),
                        generator=torch.Generator().manual_seed(seed))
    return tc_frames.from_model(video[0]).permute(1, 2, 3, 0).numpy()


def test_comfyui_and_the_core_give_the_same_frames_for_a_seed(comfy_server, tmp_path):
    ours = _saved_images(comfy_server, comfy_server.run(_seed_prompt(seed=42), timeout=600))
    core = _core_frames(tiny_checkpoint(tmp_path), seed=42)
    assert ours.shape == core.shape == (4, 64, 64, 3)
    assert np.abs(ours - core).max() <= 1.5 / 255  # PNG quantisation only


def test_fp8_weights_compute_in_fp32_on_the_cpu_and_match_the_core(comfy_server, tmp_path):
    prompt = _seed_prompt(seed=42)
    prompt["1"]["inputs"]["weight_dtype"] = "fp8_e4m3fn"
    ours = _saved_images(comfy_server, comfy_server.run(prompt, timeout=600))
    # ComfyUI's choice for fp8 weights (unet_manual_cast): a real compute dtype, fp32 on the CPU.
    assert "weights torch.float8_e4m3fn, UNet compute torch.float32 on cpu" in comfy_server.log_text()
    # The same rounded UNet weights in the core, computed in fp32: the same frames. (The tiny
    # file is fp16, so ComfyUI's encoders and VAE, kept as in the file and cast, compute alike.)
    core = _core_frames(tiny_checkpoint(tmp_path), seed=42, unet_weight_dtype=torch.float8_e4m3fn)
    assert ours.shape == core.shape == (4, 64, 64, 3)
    assert np.abs(ours - core).max() <= 1.5 / 255


def test_two_queued_runs_reuse_the_loaded_model(comfy_server):
    marker = f"loaded {TINY_CKPT}"
    before = comfy_server.log_text().count(marker)
    first = _saved_images(comfy_server, comfy_server.run(_seed_prompt(seed=5), timeout=600))
    second = _saved_images(comfy_server, comfy_server.run(_seed_prompt(seed=6), timeout=600))
    assert comfy_server.log_text().count(marker) - before <= 1
    assert not np.array_equal(first, second)  # a new seed really ran again


def test_cancel_stops_sampling_within_a_step_and_the_next_run_works(comfy_server):
    # Time a short run first to know roughly what one step costs here.
    t0 = time.monotonic()
    comfy_server.run(_seed_prompt(seed=1, steps=4), timeout=600)
    short = time.monotonic() - t0
    prompt_id = comfy_server.queue_prompt(_seed_prompt(seed=2, steps=1000))
    deadline = time.monotonic() + 120
    while not _running(comfy_server, prompt_id):
        assert time.monotonic() < deadline, "the prompt never started"
        time.sleep(0.1)
    time.sleep(3.0)  # past model loading and conditioning (well under a second for the tiny model)
    t_interrupt = time.monotonic()
    comfy_server.interrupt()
    entry = comfy_server.wait_for(prompt_id, timeout=120, check=False)
    stopped_after = time.monotonic() - t_interrupt
    events = [event for event, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in events
    interrupted = dict(entry["status"]["messages"])["execution_interrupted"]
    assert interrupted["node_type"] == "ToonCrafterSampler"
    # 1000 steps would take minutes; stopping took about one step (plus polling).
    assert stopped_after < max(2.0, short), stopped_after
    after = _saved_images(comfy_server, comfy_server.run(_seed_prompt(seed=3), timeout=600))
    assert after.shape == (4, 64, 64, 3)


def _running(comfy_server, prompt_id: str) -> bool:
    queue = comfy_server._request("GET", "/queue")
    return any(item[1] == prompt_id for item in queue.get("queue_running", []))


def test_bad_latent_input_gets_a_clear_error(comfy_server):
    prompt = _seed_prompt(seed=1)
    prompt["8"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt["5"]["inputs"]["latent"] = ["8", 0]
    entry = comfy_server.wait_for(comfy_server.queue_prompt(prompt), timeout=300, check=False)
    errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert errors and "ToonCrafter Conditioning" in errors[0]["exception_message"]
    assert errors[0]["node_type"] == "ToonCrafterSampler"


def test_mismatched_keyframe_batches_are_named(comfy_server):
    prompt = _seed_prompt(seed=1)
    prompt["9"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 3}}
    prompt["10"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["3", 0], "amount": 2}}
    prompt["4"]["inputs"]["start_image"] = ["9", 0]
    prompt["4"]["inputs"]["end_image"] = ["10", 0]
    entry = comfy_server.wait_for(comfy_server.queue_prompt(prompt), timeout=300, check=False)
    errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert errors and "start_image has 3 images and end_image 2" in errors[0]["exception_message"]


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_frontend_loads_shipped_workflow_without_errors_and_no_node_covers_another(comfy_frontend, workflow):
    # The pruned workflow's CLIP files may be staged after the page read its node list.
    check_combos = "pruned" not in workflow.name
    assert comfy_frontend.load_workflow(workflow, check_combo_values=check_combos) == []
    boxes = comfy_frontend.node_boxes()
    assert len(boxes) == len(json.loads(workflow.read_text())["nodes"])
    overlaps = [
        (a, b) for (a, (ax, ay, aw, ah)), (b, (bx, by, bw, bh)) in itertools.combinations(boxes.items(), 2)
        if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah
    ]
    assert overlaps == [], f"nodes drawn over each other: {overlaps}"


def test_workflow_templates_are_served(comfy_server):
    templates = comfy_server._request("GET", "/workflow_templates")
    assert sorted(templates[PACK_NAME]) == sorted(w.stem for w in WORKFLOWS)
    thumb = comfy_server._request("GET", f"/api/workflow_templates/{PACK_NAME}/{WORKFLOWS[0].stem}.jpg")
    assert Image.open(io.BytesIO(thumb)).size[0] > 100



def test_missing_release_fails_at_once_offline_saying_where_to_put_it(comfy_server):
    # CI machines reach package registries only, so the download cannot start.
    name = "tooncrafter_512_interp-pruned-fp16.safetensors"
    prompt = _seed_prompt(seed=1)
    prompt["1"]["inputs"]["ckpt_name"] = name
    t0 = time.monotonic()
    entry = comfy_server.wait_for(comfy_server.queue_prompt(prompt), timeout=120, check=False)
    assert time.monotonic() - t0 < 20
    errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert errors and errors[0]["node_type"] == "ToonCrafterModelLoader"
    message = errors[0]["exception_message"]
    assert f"save it as {comfy_server.tooncrafter_models_dir / name}" in message
    assert "huggingface.co/Kijai/DynamiCrafter_pruned" in message


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_our_conversion_equals_the_frontends_own(comfy_server, comfy_frontend, workflow):
    assert comfy_frontend.load_workflow(workflow, check_combo_values=False) == []
    frontend = comfy_frontend.graph_to_prompt()
    ours = _api(comfy_server, workflow)
    assert {k: (v["class_type"], v["inputs"]) for k, v in ours.items()} == {
        k: (v["class_type"], v["inputs"]) for k, v in frontend.items()
    }


NEGATIVE_IMAGE_SCRIPT = """
    from tc_pack.tooncrafter_core import conditioning
    visual = handle.vision.model.model.visual
    zero, calls = conditioning.negative_pixels(handle.config.vision), []
    forward = visual.forward
    visual.forward = lambda x: calls.append("zero" if torch.allclose(x.float().cpu(), zero, atol=1e-2) else x.shape[0]) or forward(x)
    g = torch.Generator().manual_seed(0)
    one, two = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    first = tc_model.image_contexts(handle, one)
    second = tc_model.image_contexts(handle, two)
    again = tc_model.image_contexts(handle, one)
    assert calls == ["zero", 1, 2, 1], calls
    assert torch.equal(second[1][1], first[1][0]) and second[1].shape[0] == 2
    assert torch.equal(again[0], first[0]), "a repeated Queue must give the same bits"
    print("OK")
"""


def test_the_zero_images_context_goes_through_the_vision_model_once_per_loaded_model():
    """The all-zero image's context is a constant of the weights: computed on the first Queue, kept on the
    model for every later one (sequences, batches, repeated Queues)."""
    import subprocess
    import sys

    from comfy_harness import in_process_script

    proc = subprocess.run([sys.executable, "-c", in_process_script(NEGATIVE_IMAGE_SCRIPT)], capture_output=True,
                          text=True, cwd="/tmp", timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
