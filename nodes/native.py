"""Nodes for the native MODEL: the original's DDIM as a SAMPLER, its timesteps as SIGMAS, its guidance
rescale as a model patch, and keyframe conditioning on text from CLIPTextEncode."""

from comfy_api.latest import io

from ..tooncrafter_core.errors import InputError
from ..tooncrafter_core.models.config import INTERPOLATION
from ..tooncrafter_core.pipeline import check_task
from ..tooncrafter_core.sampling import ddim_timesteps
from . import managed_model as tc_model
from . import native_model
from .conditioning import NODE_FOR, clip_inputs, condition_keyframes, conditioning_outputs, fitted_keyframes
from .types import CATEGORY, ToonCrafterModelType

SPACINGS = ["uniform_trailing", "uniform"]


def _native(model, name: str = "model"):
    """The ToonCrafter model inside a MODEL input, or a clear error for another model."""
    inner = getattr(model, "model", None)
    if not isinstance(inner, native_model.ToonCrafterNativeModel):
        raise InputError(f"{name} must be the MODEL output of Load ToonCrafter Model, got {type(inner).__name__}")
    return inner


class ToonCrafterDDIM(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ToonCrafterDDIMSampler",
            display_name="ToonCrafter DDIM",
            category=CATEGORY,
            description="The original's DDIM sampler (its step arithmetic, dynamic rescale and last step) for "
            "SamplerCustomAdvanced with the ToonCrafter MODEL; with ToonCrafter Sigmas it gives the frames of "
            "ToonCrafter Sampler for the same seed.",
            inputs=[io.Float.Input("eta", default=1.0, min=0.0, max=1.0, step=0.05,
                                   tooltip="0 deterministic (an Euler step); 1 as the original")],
            outputs=[io.Sampler.Output(display_name="sampler")],
        )

    @classmethod
    def execute(cls, eta) -> io.NodeOutput:
        return io.NodeOutput(native_model.ddim_sampler(eta))


class ToonCrafterSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ToonCrafterSigmas",
            display_name="ToonCrafter Sigmas",
            category=CATEGORY,
            description="The original's DDIM timesteps as noise levels of the ToonCrafter MODEL, ending where the "
            "original ends. uniform_trailing equals the stock 'simple' scheduler.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL output of Load ToonCrafter Model"),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="DDIM steps; 50 as the original"),
                io.Combo.Input("timestep_spacing", options=SPACINGS, default="uniform_trailing",
                               tooltip="uniform_trailing starts at the last timestep (the 512 app); uniform as the 256 app"),
            ],
            outputs=[io.Sigmas.Output(display_name="sigmas")],
        )

    @classmethod
    def execute(cls, model, steps, timestep_spacing) -> io.NodeOutput:
        levels = _native(model).levels
        return io.NodeOutput(levels.ddim_sigmas(ddim_timesteps(steps, timestep_spacing, levels.num_timesteps)))


class ToonCrafterGuidanceRescale(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ToonCrafterGuidanceRescale",
            display_name="ToonCrafter Guidance Rescale",
            category=CATEGORY,
            description="The original's guidance rescale (0.7 in the 512 app) for any sampler: the guided v "
            "prediction's std matched to the conditional one's. ComfyUI's RescaleCFG assumes a plain VP model "
            "and computes a different v for ToonCrafter.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL output of Load ToonCrafter Model (LoRAs applied or not)"),
                io.Float.Input("multiplier", default=0.7, min=0.0, max=1.0, step=0.05,
                               tooltip="0 = plain classifier-free guidance; 0.7 as the original"),
            ],
            outputs=[io.Model.Output(display_name="MODEL")],
        )

    @classmethod
    def execute(cls, model, multiplier) -> io.NodeOutput:
        _native(model)
        return io.NodeOutput(native_model.with_guidance_rescale(model, multiplier))


class ToonCrafterImageConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ToonCrafterImageConditioning",
            display_name="ToonCrafter Image Conditioning",
            category=CATEGORY,
            description="Adds the keyframes to text conditioning from CLIPTextEncode (OpenCLIP ViT-H, e.g. an SD 2.x "
            "text encoder), as ComfyUI's image-to-video conditioning nodes do, for KSampler with the ToonCrafter MODEL.",
            inputs=[
                ToonCrafterModelType.Input("model", tooltip="From Load ToonCrafter Model: its VAE, Resampler and image encoder"),
                io.Conditioning.Input("positive", tooltip="CLIPTextEncode of what happens between the keyframes"),
                io.Conditioning.Input("negative", tooltip="CLIPTextEncode of the negative prompt; the original uses empty"),
                io.Image.Input("start_image", tooltip="First keyframe (a batch gives one in-between per pair)"),
                io.Image.Input("end_image", tooltip="Last keyframe"),
                *clip_inputs(),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="OpenCLIP ViT-H-14 vision model, needed for the pruned checkpoint"),
            ],
            outputs=conditioning_outputs("Empty latents of the clip's size, with the keyframes' features"),
        )

    @classmethod
    def execute(cls, model, positive, negative, start_image, end_image, frame_stride, width, height, resize, frames,
                clip_vision=None) -> io.NodeOutput:
        check_task(model.config, INTERPOLATION, NODE_FOR)
        start, end = fitted_keyframes(model, start_image, end_image, width, height, resize)
        b = start.shape[0]
        text, pos_options = tc_model.conditioning_text(model, positive, "positive", b)
        text_neg, neg_options = tc_model.conditioning_text(model, negative, "negative", b)
        return io.NodeOutput(*condition_keyframes(
            model, (start, end), text, text_neg, frame_stride, frames, clip_vision, (pos_options, neg_options)
        ))
