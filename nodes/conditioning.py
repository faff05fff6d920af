"""ToonCrafter Conditioning (two keyframes, interpolation) and DynamiCrafter Image Conditioning (one image,
image-to-video): images + prompt -> positive/negative CONDITIONING and the keyframe LATENT."""

import torch
from comfy_api.latest import io

from ..tooncrafter_core import frames as tc_frames
from ..tooncrafter_core.conditioning import blend_image_contexts, join_context
from ..tooncrafter_core.errors import InputError
from ..tooncrafter_core.models.config import IMAGE_TO_VIDEO, INTERPOLATION
from ..tooncrafter_core.pipeline import check_size, check_task
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


# The node for each task, for the message a model of the other kind gets.
NODE_FOR = {
    INTERPOLATION: "ToonCrafter Conditioning (two keyframes)",
    IMAGE_TO_VIDEO: "DynamiCrafter Image Conditioning (one image)",
}


def clip_inputs() -> list:
    """The clip's settings, in order: frame_stride, width, height, resize, frames."""
    return [
        io.Int.Input(
            "frame_stride", default=0, min=0, max=100,
            tooltip="fs condition: the frame rate (a smaller one gives larger motion), or for DynamiCrafter 256 the "
            "frame stride (a larger one gives larger motion); 0 = the model's: 10 ToonCrafter, 5 DynamiCrafter "
            "interpolation, 24 / 10 / 3 DynamiCrafter 512 / 1024 / 256",
        ),
        io.Int.Input("width", default=512, min=64, max=2048, step=64, tooltip="Output width: ToonCrafter and DynamiCrafter 512 were trained at 512, "
                     "DynamiCrafter 1024 at 1024, DynamiCrafter 256 at 256"),
        io.Int.Input("height", default=320, min=64, max=2048, step=64, tooltip="Output height: ToonCrafter and DynamiCrafter 512 were trained at 320, "
                     "DynamiCrafter 1024 at 576, DynamiCrafter 256 at 256"),
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
                *prompt_inputs("What happens between the keyframes"),
                *clip_inputs(),
                *encoder_inputs(),
                io.Float.Input(
                    "image_context_ratio", default=0.0, min=0.0, max=1.0, step=0.05, optional=True,
                    tooltip="The image context from the start keyframe (0, the original's) to the end keyframe's (1); "
                    "between, a blend",
                ),
            ],
            outputs=conditioning_outputs("Keyframe latents and their reference features"),
        )

    @classmethod
    def execute(
        cls, model, start_image, end_image, prompt, negative_prompt, frame_stride, width, height, resize, frames,
        clip=None, clip_vision=None, image_context_ratio=0.0,
    ) -> io.NodeOutput:
        return io.NodeOutput(
            *condition(model, start_image, end_image, prompt, negative_prompt, frame_stride, width, height, resize,
                       frames, clip, clip_vision, image_context_ratio)
        )


class DynamiCrafterImageConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DynamiCrafterImageConditioning",
            display_name="DynamiCrafter Image Conditioning",
            category=CATEGORY,
            description="Encodes one image and the prompt for an image-to-video model of the family (DynamiCrafter "
            "256/512/1024): the clip starts from the image. For ToonCrafter Sampler, or KSampler / SamplerCustomAdvanced "
            "with the loader's MODEL; decode with ToonCrafter Decode.",
            inputs=[
                ToonCrafterModelType.Input("model", tooltip="From Load ToonCrafter Model, with an image-to-video checkpoint"),
                io.Image.Input("image", tooltip="The first frame (a batch gives one clip per image)"),
                *prompt_inputs("What happens in the clip"),
                *clip_inputs(),
                *encoder_inputs(),
            ],
            outputs=conditioning_outputs("Empty latents of the clip's size, with the image's latent"),
        )

    @classmethod
    def execute(
        cls, model, image, prompt, negative_prompt, frame_stride, width, height, resize, frames, clip=None, clip_vision=None,
    ) -> io.NodeOutput:
        check_task(model.config, IMAGE_TO_VIDEO, NODE_FOR)
        first = fitted(model, [(tc_model.rgb(image, "image"), "image")], width, height, resize)[0]
        text, text_neg = prompt_contexts(model, prompt, negative_prompt, first.shape[0], clip)
        return io.NodeOutput(*condition_keyframes(model, (first,), text, text_neg, frame_stride, frames, clip_vision))


def prompt_inputs(what: str) -> list:
    """The prompt and negative prompt inputs; `what` is the prompt's tooltip."""
    return [
        io.String.Input("prompt", multiline=True, default="", tooltip=what),
        io.String.Input("negative_prompt", multiline=True, default="", tooltip="Guidance away from this; the original uses empty"),
    ]


def conditioning_outputs(latent: str) -> list:
    """positive, negative and the latent (whose tooltip is `latent`), as every conditioning node outputs."""
    return [
        io.Conditioning.Output(display_name="positive"),
        io.Conditioning.Output(display_name="negative"),
        io.Latent.Output(display_name="latent", tooltip=latent),
    ]


def encoder_inputs() -> list:
    """The optional CLIP and CLIP_VISION inputs for checkpoints without their encoders."""
    return [
        io.Clip.Input("clip", optional=True, tooltip="OpenCLIP ViT-H text encoder, needed for pruned checkpoints"),
        io.ClipVision.Input("clip_vision", optional=True, tooltip="OpenCLIP ViT-H-14 vision model, needed for pruned checkpoints"),
    ]


def condition(
    model, start_image, end_image, prompt, negative_prompt, frame_stride, width, height, resize, frames,
    clip=None, clip_vision=None, image_context_ratio=0.0,
) -> tuple[list, list, dict]:
    """What the Conditioning node outputs: (positive, negative, latent) for IMAGE keyframe batches."""
    check_task(model.config, INTERPOLATION, NODE_FOR)
    start, end = fitted_keyframes(model, start_image, end_image, width, height, resize)
    text, text_neg = prompt_contexts(model, prompt, negative_prompt, start.shape[0], clip)
    return condition_keyframes(model, (start, end), text, text_neg, frame_stride, frames, clip_vision,
                               image_context_ratio=image_context_ratio)


def prompt_contexts(model, prompt: str, negative_prompt: str, b: int, clip=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The text contexts of the prompt and the negative prompt, each repeated for a batch of b."""
    texts = tc_model.text_context(model, [prompt] * b + [negative_prompt] * b, clip)
    return texts[:b], texts[b:]


def fitted(model, images: list, width: int, height: int, resize: str) -> list[torch.Tensor]:
    """(b 3 H W) images in [0, 1] with their input names -> (b 3 height width) in [-1, 1]."""
    check_size(height, width, model.config, "width x height")
    return [tc_frames.to_model(tc_frames.fit(image, height, width, resize)) for image, _ in images]


def fitted_keyframes(model, start_image, end_image, width, height, resize) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE keyframe batches -> (b 3 H W) pairs in [-1, 1] at the requested size."""
    start, end = _pairs(start_image, end_image)
    return tuple(fitted(model, [(start, "start_image"), (end, "end_image")], width, height, resize))


def condition_keyframes(
    model, keyframes, text, text_neg, frame_stride, frames, clip_vision=None, options=(None, None), image_context_ratio=0.0,
) -> tuple[list, list, dict]:
    """(positive, negative, latent) from fitted keyframes (b 3 H W each: start and end, or the one image)
    and text contexts (b 77 d). The conditioning entries carry what the native model's extra_conds reads;
    `options` are entries' own options to keep (e.g. from CLIPTextEncode)."""
    start = keyframes[0]
    b = start.shape[0]
    frames = frames or model.config.frames
    if frames < 2:
        raise InputError("frames must be 0 (the model's) or at least 2")
    image, image_neg = tc_model.image_contexts(model, start, clip_vision)
    if image_context_ratio > 0:
        image = blend_image_contexts(image, tc_model.image_contexts(model, keyframes[-1], clip_vision)[0], image_context_ratio)
    encoding = tc_model.encode_keyframes(model, *keyframes)

    fs = frame_stride or model.config.fs_default
    ours = {FS_KEY: torch.full((b,), fs, dtype=torch.long), POSTERIOR_KEY: encoding}
    positive = [[join_context(text, image), {**(options[0] or {}), **ours}]]
    negative = [[join_context(text_neg, image_neg), {**(options[1] or {}), **ours}]]
    h, w = (n // model.config.vae.downsample_factor for n in start.shape[-2:])
    latent = {
        "samples": torch.zeros(b, model.config.vae.z_channels, frames, h, w),
        KEYFRAMES_KEY: encoding,
    }
    return positive, negative, latent


def with_keyframes(model, conditioned: tuple[list, list, dict], keyframes) -> tuple[list, list, dict]:
    """(positive, negative, latent) with other keyframes ((b 3 H W) in [-1, 1]) in the concat and the
    decoder's references; the contexts stay those the conditioning made."""
    positive, negative, latent = conditioned
    encoding = tc_model.encode_keyframes(model, *keyframes)
    entries = [[[context, {**options, POSTERIOR_KEY: encoding}] for context, options in c] for c in (positive, negative)]
    return entries[0], entries[1], {**latent, KEYFRAMES_KEY: encoding}
