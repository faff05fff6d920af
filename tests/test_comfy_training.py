"""Training inside a real ComfyUI 0.3.64 (CPU, tiny fixture): ToonCrafter Train LoRA saves into
models/loras and its model draws with the LoRA; a distilled student loads in the ComfyUI loader."""

from __future__ import annotations

import os
import shutil

import numpy as np
from helpers import make_clips
from safetensors.torch import load_file
from test_comfy_nodes import _saved_images, _seed_prompt

from tooncrafter_core.__main__ import main


def test_train_lora_node_saves_the_lora_and_its_model_draws_with_it(comfy_server):
    make_clips(comfy_server.root / "input" / "tc_train", clips=2)
    base = _saved_images(comfy_server, comfy_server.run(_seed_prompt(seed=51), timeout=600))
    prompt = _seed_prompt(seed=51)
    prompt["30"] = {"class_type": "ToonCrafterTrainLora", "inputs": {
        "model": ["1", 0], "data_folder": "tc_train", "lora_name": "node_trained", "steps": 6, "learning_rate": 1e-2,
        "rank": 4, "alpha": 4.0, "width": 64, "height": 64, "frames": 0, "loss": "v", "gradient_checkpointing": True,
        "seed": 0, "prompt": ""}}
    for node in ("4", "5", "6"):
        prompt[node]["inputs"]["model"] = ["30", 0]
    trained = _saved_images(comfy_server, comfy_server.run(prompt, timeout=900))
    folder = comfy_server.models_dir / "loras" / "node_trained"
    for name in ("adapter_model.safetensors", "adapter_config.json", "lora_kohya.safetensors"):
        assert (folder / name).is_file(), name
    assert any(k.endswith("attn2.to_q.lora_A.weight") for k in load_file(str(folder / "adapter_model.safetensors")))
    assert np.abs(trained - base).max() > 2 / 255  # the LoRA is applied to the node's model output
    log = comfy_server.root / "output" / "tooncrafter_training" / "node_trained" / "train_log.csv"
    assert log.is_file() and len(log.read_text().splitlines()) == 1 + 6
    # The same LoRA file through Load ToonCrafter LoRA gives the node's frames.
    again = _seed_prompt(seed=51)
    again["31"] = {"class_type": "ToonCrafterLoraLoader",
                   "inputs": {"model": ["1", 0], "lora_name": "node_trained/adapter_model.safetensors", "strength": 1.0}}
    for node in ("4", "5", "6"):
        again[node]["inputs"]["model"] = ["31", 0]
    assert np.array_equal(_saved_images(comfy_server, comfy_server.run(again, timeout=600)), trained)


def test_a_lora_name_that_would_write_outside_models_loras_is_refused(comfy_server):
    loras = comfy_server.models_dir / "loras"
    (loras / "linked_out").symlink_to(comfy_server.root, target_is_directory=True)
    for name, message in (("../../evil", "lora_name '../../evil' cannot name a folder inside"),
                          ("/tmp/evil", "lora_name '/tmp/evil' cannot name a folder inside"),
                          ("linked_out", "lora_name 'linked_out': ")):
        prompt = _seed_prompt(seed=52)
        prompt["30"] = {"class_type": "ToonCrafterTrainLora", "inputs": {
            "model": ["1", 0], "data_folder": "tc_train", "lora_name": name, "steps": 1, "learning_rate": 1e-2,
            "rank": 4, "alpha": 4.0, "width": 64, "height": 64, "frames": 0, "loss": "v", "gradient_checkpointing": True,
            "seed": 0, "prompt": ""}}
        for node in ("4", "5", "6"):
            prompt[node]["inputs"]["model"] = ["30", 0]
        entry = comfy_server.wait_for(comfy_server.queue_prompt(prompt), timeout=300, check=False)
        errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
        assert errors and errors[0]["exception_message"].startswith(message), errors
        assert "\n" not in errors[0]["exception_message"].strip()
    assert not (comfy_server.root.parent / "evil").exists() and not os.path.exists("/tmp/evil")
    (loras / "linked_out").unlink()


def test_a_distilled_student_runs_in_the_comfyui_loader(comfy_server, tmp_path):
    from helpers import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    yaml = (tmp_path / "ckpt" / "tiny.yaml").read_text()
    student_yaml = tmp_path / "ckpt" / "student.yaml"
    student_yaml.write_text(yaml.replace("        - 1\n        - 2\n        dropout", "        - 1\n        - 1\n        dropout"))
    out = tmp_path / "distill"
    assert main(["distill", "--teacher", str(ckpt), "--student-config", str(student_yaml), "--data",
                 str(make_clips(tmp_path / "data", clips=2)), "--out", str(out), "--steps", "2", "--w-lpips", "0",
                 "--height", "64", "--width", "64"]) == 0
    for name in ("student.safetensors", "student.yaml", "TC-Tiny.json"):
        shutil.copy(out / name, comfy_server.tooncrafter_models_dir / name)
    prompt = _seed_prompt(seed=52)
    prompt["1"]["inputs"]["ckpt_name"] = "student.safetensors"
    frames = _saved_images(comfy_server, comfy_server.run(prompt, timeout=600))
    assert frames.shape == (4, 64, 64, 3) and np.isfinite(frames).all()
