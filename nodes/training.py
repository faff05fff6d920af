"""ToonCrafter Train LoRA: `train-lora` of the core inside ComfyUI, saving into models/loras."""

import os
import shutil
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..tooncrafter_core import files
from ..tooncrafter_core.commands import train_lora
from ..tooncrafter_core.training.adapters import KOHYA_WEIGHTS, PEFT_WEIGHTS
from ..tooncrafter_core.training.lora import LOSSES
from . import managed_model as tc_model
from .types import CATEGORY, ToonCrafterModelType

RUNS = "tooncrafter_training"  # training runs (logs, checkpoints, cache) under ComfyUI's output folder


class ToonCrafterTrainLora(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ToonCrafterTrainLora",
            display_name="ToonCrafter Train LoRA",
            category=CATEGORY,
            description="Trains a LoRA on your own triplet or clip folders (the same training as the train-lora "
            "command) and saves it into models/loras/<lora_name>/. Needs the train extra (peft). The run's log, "
            "loss.png and checkpoints go to output/tooncrafter_training/<lora_name>/.",
            inputs=[
                ToonCrafterModelType.Input("model", tooltip="From Load ToonCrafter Model: the checkpoint to adapt"),
                io.String.Input("data_folder", default="tooncrafter_training_data",
                                tooltip="Folder of items (absolute, or inside ComfyUI's input folder): triplet folders "
                                "(frame1/frame2/frame3) or clip folders (two or more frames in name order); an "
                                "optional prompt.txt per item"),
                io.String.Input("lora_name", default="my_tooncrafter_lora",
                                tooltip="Saved as models/loras/<lora_name>/ (a PEFT adapter and a kohya copy)"),
                io.Int.Input("steps", default=500, min=1, max=100000, tooltip="Optimizer steps"),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-5, tooltip="AdamW learning rate"),
                io.Int.Input("rank", default=16, min=1, max=256, tooltip="LoRA rank (the published LoRAs: 16)"),
                io.Float.Input("alpha", default=16.0, min=0.01, max=1024.0, step=0.5, tooltip="LoRA alpha (update alpha/rank * B·A)"),
                io.Int.Input("width", default=512, min=64, max=2048, step=64, tooltip="Training width"),
                io.Int.Input("height", default=320, min=64, max=2048, step=64, tooltip="Training height"),
                io.Int.Input("frames", default=0, min=0, max=64, tooltip="Frames per training clip; 0 = the model's (16)"),
                io.Combo.Input("loss", options=list(LOSSES), default="v",
                               tooltip="v: the v-prediction MSE the model was trained with; kdq: L1 on the noise + LPIPS"),
                io.Boolean.Input("gradient_checkpointing", default=True,
                                 tooltip="Recompute activations in the backward pass: much less memory, about a third slower"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, tooltip="Data order, noise and timesteps"),
                io.String.Input("prompt", default="", tooltip="Prompt of the items without a prompt.txt"),
            ],
            outputs=[
                ToonCrafterModelType.Output(display_name="model", tooltip="The model with the new LoRA at strength 1"),
                io.String.Output(display_name="lora_name",
                                 tooltip="The LoRA's name in models/loras (for Load ToonCrafter LoRA); the kohya copy "
                                 "beside it works with LoraLoaderModelOnly"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, data_folder, lora_name, steps, learning_rate, rank, alpha, width, height, frames, loss,
                gradient_checkpointing, seed, prompt) -> io.NodeOutput:
        # The name becomes two folders: it must stay one plain entry of each (no .., no absolute path, no link out).
        name = lora_name.strip()
        target = files.child(folder_paths.get_folder_paths("loras")[0], name, "lora_name")
        out = str(files.child(os.path.join(folder_paths.get_output_directory(), RUNS), name, "lora_name"))
        data = data_folder if os.path.isabs(data_folder) else os.path.join(folder_paths.get_input_directory(), data_folder)
        options = dict(
            ckpt=Path(tc_model.resolve_checkpoint(model.name)), steps=steps, lr=learning_rate, rank=rank, alpha=alpha,
            width=width, height=height, frames=frames or None, loss=loss, seed=seed, prompt=prompt,
            device=str(mm.get_torch_device()), grad_checkpointing=gradient_checkpointing,
            # the same name again continues that run (more steps) instead of failing
            resume=os.path.isdir(os.path.join(out, "checkpoints")),
        )
        pbar = comfy.utils.ProgressBar(steps)

        def on_step(step, total, value):
            pbar.update_absolute(step, total)
            if mm.processing_interrupted():
                raise KeyboardInterrupt  # the training loop saves a checkpoint on it

        mm.unload_all_models()  # training holds its own copy of the model
        try:
            # ComfyUI runs nodes in inference mode; training loads and differentiates its own model.
            with torch.inference_mode(False), torch.enable_grad():
                train_lora.train(Path(data), Path(out), on_step=on_step, **options)
        except KeyboardInterrupt:
            mm.throw_exception_if_processing_interrupted()
            raise
        # models/loras/<name> appears whole or not at all: a LoRA list never shows a half-copied adapter.
        with files.atomic_path(target) as partial:
            partial.mkdir()
            for file in (PEFT_WEIGHTS, "adapter_config.json", KOHYA_WEIGHTS):
                shutil.copyfile(os.path.join(out, file), partial / file)
        lora = f"{name}/{PEFT_WEIGHTS}"
        return io.NodeOutput(tc_model.with_lora(model, lora, 1.0), lora)
