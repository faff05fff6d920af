"""Load ToonCrafter LoRA inside a real ComfyUI 0.3.64 server (CPU): it applies, it matches the
core's merge, it stacks, and the base frames come back once it is bypassed."""

from __future__ import annotations

import numpy as np
import torch
from helpers import TINY_LORA, tiny_checkpoint
from test_comfy_nodes import _core_frames, _saved_images, _seed_prompt

LORA_NODE = "8"


def _with_lora(seed: int, *strengths: float) -> dict:
    """`_seed_prompt` with a chain of Load ToonCrafter LoRA nodes feeding every ToonCrafter node."""
    prompt = _seed_prompt(seed)
    source = ["1", 0]
    for i, strength in enumerate(strengths):
        node = str(int(LORA_NODE) + i)
        prompt[node] = {"class_type": "ToonCrafterLoraLoader",
                        "inputs": {"model": source, "lora_name": TINY_LORA, "strength": strength}}
        source = [node, 0]
    for node in ("4", "5", "6"):
        prompt[node]["inputs"]["model"] = source
    return prompt


def test_lora_node_applies_and_bypassing_it_gives_the_base_frames_again(comfy_server, tmp_path):
    lora_dir = comfy_server.models_dir / "loras" / TINY_LORA
    base = _saved_images(comfy_server, comfy_server.run(_seed_prompt(seed=11), timeout=600))
    lora = _saved_images(comfy_server, comfy_server.run(_with_lora(11, 1.0), timeout=600))
    assert np.abs(lora - base).max() > 0.05  # the LoRA really changes the frames
    # The same LoRA merged by the core: the same frames (ComfyUI rounds the patched weights back
    # to the file's fp16, as a merge into the fp16 weights does).
    from tooncrafter_core.weights.lora import LoraSpec

    core = _core_frames(tiny_checkpoint(tmp_path), seed=11, lora=[LoraSpec(lora_dir, 1.0)])
    assert np.abs(lora - core).max() <= 1.5 / 255
    # Bypassing the node (the frontend then links the loader straight through): the base frames,
    # bit for bit, from the same cached loader output whose weights ComfyUI patched and restored.
    again = _saved_images(comfy_server, comfy_server.run(_seed_prompt(seed=11), timeout=600))
    assert np.array_equal(again, base)


def test_stacked_lora_nodes_add_their_strengths(comfy_server):
    twice = _saved_images(comfy_server, comfy_server.run(_with_lora(12, 0.25, 0.25), timeout=600))
    once = _saved_images(comfy_server, comfy_server.run(_with_lora(12, 0.5), timeout=600))
    base = _saved_images(comfy_server, comfy_server.run(_seed_prompt(seed=12), timeout=600))
    assert np.abs(twice - once).max() <= 1.5 / 255
    assert np.abs(once - base).max() > 0.02


def test_a_lora_for_another_model_is_refused_with_its_keys(comfy_server):
    from safetensors.torch import save_file

    path = comfy_server.models_dir / "loras" / "sd15_style.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)}, str(path))
    base = _saved_images(comfy_server, comfy_server.run(_seed_prompt(seed=13), timeout=600))
    prompt = _with_lora(13, 1.0)
    prompt[LORA_NODE]["inputs"]["lora_name"] = path.name
    entry = comfy_server.wait_for(comfy_server.queue_prompt(prompt), timeout=300, check=False)
    errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert errors and "match no layer of the ToonCrafter UNet" in errors[0]["exception_message"]
    assert "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight" in errors[0]["exception_message"]
    # Nothing was left half-applied: the next plain run gives the base frames.
    again = _saved_images(comfy_server, comfy_server.run(_seed_prompt(seed=13), timeout=600))
    assert np.array_equal(again, base)


def test_loader_reads_a_converted_checkpoint_with_the_lora_merged_in(comfy_server, tmp_path):
    from tooncrafter_core.weights.convert import convert
    from tooncrafter_core.weights.lora import LoraSpec

    lora_file = comfy_server.models_dir / "loras" / TINY_LORA
    merged = comfy_server.tooncrafter_models_dir / "tooncrafter_tiny_merged.safetensors"
    # fp16 like the file, so the merge rounds once into fp16 exactly as ComfyUI's patching does.
    convert(tiny_checkpoint(tmp_path), merged, torch.float16, lora_specs=[LoraSpec(lora_file, 0.6)])
    prompt = _seed_prompt(seed=14)
    prompt["1"]["inputs"]["ckpt_name"] = merged.name
    try:
        from_file = _saved_images(comfy_server, comfy_server.run(prompt, timeout=600))
    finally:  # the session's server is shared: leave its model folder as the other tests expect it
        merged.unlink()
        merged.with_suffix(".yaml").unlink(missing_ok=True)
    from_node = _saved_images(comfy_server, comfy_server.run(_with_lora(14, 0.6), timeout=600))
    base = _saved_images(comfy_server, comfy_server.run(_seed_prompt(seed=14), timeout=600))
    assert np.abs(from_file - from_node).max() <= 1.5 / 255
    assert np.abs(from_file - base).max() > 0.02
