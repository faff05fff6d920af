"""ToonCrafter Conditioning: keyframes + prompt -> positive/negative CONDITIONING and the keyframe LATENT."""

import torch
from comfy_api.latest import io

from ..tooncrafter_core import frames as tc_frames
from ..tooncrafter_core.pipeline import InputError, join_context, size_multiple
from . import managed_model as tc_model
from .types import CATEGORY, FS_KEY, KEYFRAMES_KEY, POSTERIOR_KEY, ToonCrafterModelType


def _pairs(start: torch.Tensor, end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE batches -> equal-size (b 3 H W) batches; a single image pairs with every image of the other."""
    if start.shape[0] != end.shape[0] and 1 not in (start.shape[0], end.shape[0]):
        raise InputError(
            f"start_image has {start.shape[0]} images and end_image {end.shape[0]}: give one of each, "
            "or the same number of both (one in-between per pair)"
        )
    b = max(start.shape[0], end.shape[0])
    return tc_model.rgb(start, "start_image").expand(b, -1, -1, -1), tc_model.rgb(end, "end_image").expand(b, -1, -1, -1)


def clip_inputs() -> list:
    """The clip's settings, in order: frame_stride, width, height, resize, frames."""
    return [
        io.Int.Input(
            "frame_stride", default=10, min=1, max=100, tooltip="fs condition: smaller values give larger motion (5-30 recommended)"
        ),
        io.Int.Input("width", default=512, min=64, max=2048, step=64, tooltip="Output width; the model was trained at 512"),
        io.Int.Input("height", default=320, min=64, max=2048, step=64, tooltip="Output height; the model was trained at 320"),
        io.Combo.Input(
            "resize",
            options=list(tc_frames.FIT_METHODS),
            default="crop",
            tooltip="How keyframes of another size are fitted: crop (cover, centre crop), stretch, or pad",
        ),
        io.Int.Input("frames", default=0, min=0, max=64, tooltip="Frames to generate, keyframes included; 0 = the model's (16)"),
    ]


class ToonCrafterConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ToonCrafterConditioning",
            display_name="ToonCrafter Conditioning",
            category=CATEGORY,
            description="Encodes the two keyframes and the prompt for ToonCrafter Sampler, or for KSampler / "
            "SamplerCustomAdvanced with the loader's MODEL.",
            inputs=[
                ToonCrafterModelType.Input("model", tooltip="From Load ToonCrafter Model"),
                io.Image.Input("start_image", tooltip="First keyframe (a batch gives one in-between per pair)"),
                io.Image.Input("end_image", tooltip="Last keyframe"),
                io.String.Input("prompt", multiline=True, default="", tooltip="What happens between the keyframes"),
                io.String.Input(
                    "negative_prompt", multiline=True, default="", tooltip="Guidance away from this; the original uses empty"
                ),
                *clip_inputs(),
                io.Clip.Input("clip", optional=True, tooltip="OpenCLIP ViT-H text encoder, needed for the pruned checkpoint"),
                io.ClipVision.Input("clip_vision", optional=True, tooltip="OpenCLIP ViT-H-14 vision model, needed for the pruned checkpoint"),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
                io.Latent.Output(display_name="latent", tooltip="Keyframe latents and their reference features"),
            ],
        )

    @classmethod
    def execute(
        cls, model, start_image, end_image, prompt, negative_prompt, frame_stride, width, height, resize, frames,
        clip=None, clip_vision=None,
    ) -> io.NodeOutput:
        return io.NodeOutput(
            *condition(model, start_image, end_image, prompt, negative_prompt, frame_stride, width, height, resize,
                       frames, clip, clip_vision)
        )


def condition(
    model, start_image, end_image, prompt, negative_prompt, frame_stride, width, height, resize, frames,
    clip=None, clip_vision=None,
) -> tuple[list, list, dict]:
    """What the Conditioning node outputs: (positive, negative, latent) for IMAGE keyframe batches."""
    start, end = fitted_keyframes(model, start_image, end_image, width, height, resize)
    b = start.shape[0]
    texts = tc_model.text_context(model, [prompt] * b + [negative_prompt] * b, clip)
    return condition_keyframes(model, start, end, texts[:b], texts[b:], frame_stride, frames, clip_vision)


def fitted_keyframes(model, start_image, end_image, width, height, resize) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE keyframe batches -> (b 3 H W) pairs in [-1, 1] at the requested size."""
    multiple = size_multiple(model.config)
    if width % multiple or height % multiple:
        near = [max(multiple, round(n / multiple) * multiple) for n in (width, height)]
        raise InputError(
            f"width and height must be multiples of {multiple}, got {width}x{height}: use e.g. {near[0]}x{near[1]}"
        )
    start, end = _pairs(start_image, end_image)
    return (
        tc_frames.to_model(tc_frames.fit(start, height, width, resize)),
        tc_frames.to_model(tc_frames.fit(end, height, width, resize)),
    )


def condition_keyframes(
    model, start, end, text, text_neg, frame_stride, frames, clip_vision=None, options=(None, None)
) -> tuple[list, list, dict]:
    """(positive, negative, latent) from fitted keyframes (b 3 H W) and text contexts (b 77 d). The
    conditioning entries carry what the native model's extra_conds reads; `options` are entries' own
    options to keep (e.g. from CLIPTextEncode)."""
    b = start.shape[0]
    frames = frames or model.config.frames
    if frames < 2:
        raise InputError("frames must be 0 (the model's) or at least 2")
    image, image_neg = tc_model.image_contexts(model, start, clip_vision)
    keyframes = tc_model.encode_keyframes(model, start, end)

    ours = {FS_KEY: torch.full((b,), frame_stride, dtype=torch.long), POSTERIOR_KEY: keyframes}
    positive = [[join_context(text, image), {**(options[0] or {}), **ours}]]
    negative = [[join_context(text_neg, image_neg), {**(options[1] or {}), **ours}]]
    h, w = (n // model.config.vae.downsample_factor for n in start.shape[-2:])
    latent = {
        "samples": torch.zeros(b, model.config.vae.z_channels, frames, h, w),
        KEYFRAMES_KEY: keyframes,
    }
    return positive, negative, latent
