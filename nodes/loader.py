"""Load ToonCrafter Model: any checkpoint of the family (ToonCrafter, DynamiCrafter)."""

from comfy_api.latest import io

from ..tooncrafter_core.weights import catalog
from . import managed_model as tc_model
from .types import CATEGORY, ToonCrafterModelType


def _released_table() -> str:
    return "; ".join(f"{f.name} ({f.size}, {f.repo_id}): {f.note}" for f in catalog.FAMILY)


class LoadToonCrafterModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ToonCrafterModelLoader",
            display_name="Load ToonCrafter Model",
            category=CATEGORY,
            description="Loads a ToonCrafter or DynamiCrafter checkpoint from models/tooncrafter (downloading a known "
            "release on first use). Interpolation models (ToonCrafter, DynamiCrafter 512 interp) go to ToonCrafter "
            "Conditioning, image-to-video models (DynamiCrafter 256/512/1024) to DynamiCrafter Image Conditioning.",
            inputs=[
                io.Combo.Input(
                    "ckpt_name",
                    options=tc_model.checkpoint_choices(),
                    default=catalog.DEFAULT.name,
                    tooltip="Checkpoint in models/tooncrafter. Released files not present yet are downloaded when "
                    "queued: " + _released_table(),
                ),
                io.Combo.Input(
                    "weight_dtype",
                    options=list(tc_model.WEIGHT_DTYPES),
                    default="auto",
                    tooltip="Precision the weights are kept in: auto keeps the file's (fp16 files stay fp16); "
                    "fp16/bf16 halve the memory of an fp32 file; fp8_e4m3fn/fp8_e5m2 store the UNet's weights "
                    "in 8 bits (2.9 GB -> 1.4 GB, less exact; e4m3fn is the closer of the two) and compute in "
                    "fp16/bf16 (fp32 on the CPU), the rest as in the file. Computation precision follows "
                    "ComfyUI's device settings.",
                ),
                io.Combo.Input(
                    "vae_dtype",
                    options=list(tc_model.VAE_DTYPES),
                    default="auto",
                    optional=True,
                    tooltip="Precision the VAE encodes and decodes in, apart from the UNet's: auto lets ComfyUI pick "
                    "(bf16 where the device has it, else fp32); fp32 is the most exact, bf16/fp16 half its memory",
                ),
                io.Boolean.Input(
                    "compile",
                    default=False,
                    optional=True,
                    tooltip="torch.compile the UNet and the VAE decoder. The first Queue of each size compiles "
                    "(minutes, more on the CPU); later runs and every sampling step reuse it. For GPUs.",
                ),
            ],
            outputs=[
                ToonCrafterModelType.Output(
                    display_name="model",
                    tooltip="UNet, VAE, Resampler and, in full checkpoints, the OpenCLIP text and image encoders",
                ),
                io.Model.Output(
                    display_name="MODEL",
                    tooltip="The UNet as a native ComfyUI model for KSampler, SamplerCustomAdvanced and the LoRA "
                    "loaders; its conditioning comes from ToonCrafter Conditioning, its latents go to ToonCrafter Decode",
                ),
                io.Clip.Output(
                    display_name="CLIP",
                    tooltip="The checkpoint's OpenCLIP ViT-H text encoder for CLIPTextEncode (then ToonCrafter Image "
                    "Conditioning); none in the pruned checkpoint",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name, weight_dtype, vae_dtype="auto", compile=False):
        if ckpt_name not in tc_model.checkpoint_choices():
            return f"checkpoint {ckpt_name!r} is neither in models/tooncrafter nor a known release; pick one from the list"
        return True

    @classmethod
    def execute(cls, ckpt_name, weight_dtype, vae_dtype="auto", compile=False) -> io.NodeOutput:
        handle = tc_model.load(ckpt_name, weight_dtype, compile, vae_dtype)
        return io.NodeOutput(handle, handle.unet, handle.clip)
