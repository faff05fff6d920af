"""Load ToonCrafter LoRA: a LoRA for the UNet, as ModelPatcher patches (stackable, bypassable)."""

import folder_paths
from comfy_api.latest import io

from . import managed_model as tc_model
from .types import CATEGORY, ToonCrafterModelType


class LoadToonCrafterLora(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ToonCrafterLoraLoader",
            display_name="Load ToonCrafter LoRA",
            category=CATEGORY,
            description="Applies a LoRA from models/loras to the ToonCrafter UNet. Chain several for several LoRAs; "
            "bypass or remove the node to get the base model back.",
            inputs=[
                ToonCrafterModelType.Input("model", tooltip="From Load ToonCrafter Model or another Load ToonCrafter LoRA"),
                io.Combo.Input(
                    "lora_name",
                    options=folder_paths.get_filename_list("loras"),
                    tooltip="A LoRA for the ToonCrafter UNet: a PEFT adapter_model.safetensors (with its "
                    "adapter_config.json beside it, e.g. in a subfolder) or a kohya/ComfyUI-style file. A LoRA for "
                    "another model is refused with the keys it could not place",
                ),
                io.Float.Input(
                    "strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                    tooltip="Multiplies the LoRA's update (W + strength * alpha/rank * B·A). The published ToonCrafter "
                    "LoRAs recommend about 0.15; check the LoRA's notes",
                ),
            ],
            outputs=[ToonCrafterModelType.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, lora_name, strength) -> io.NodeOutput:
        return io.NodeOutput(tc_model.with_lora(model, lora_name, strength))
