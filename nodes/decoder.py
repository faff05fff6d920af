"""ToonCrafter Decode: latents -> IMAGE frames with the dual-reference decoder."""

from comfy_api.latest import io

from ..tooncrafter_core.errors import InputError
from ..tooncrafter_core.models.config import DECODE_OVERLAP
from . import managed_model as tc_model
from .types import CATEGORY, KEYFRAMES_KEY, ToonCrafterModelType


class ToonCrafterDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ToonCrafterDecode",
            display_name="ToonCrafter Decode",
            category=CATEGORY,
            description="Decodes ToonCrafter latents to frames, using the keyframes' encoder features.",
            inputs=[
                ToonCrafterModelType.Input("model", tooltip="From Load ToonCrafter Model"),
                io.Latent.Input("latent", tooltip="The latent output of ToonCrafter Sampler"),
                io.Int.Input(
                    "frames_per_chunk", default=0, min=0, max=64,
                    tooltip="0 = auto: all frames at once (exact) when they fit in memory after ComfyUI offloads "
                    "the sampler's model, else chunks sized to the free memory. N decodes N frames per call (less "
                    f"memory, close to exact: each call adds {DECODE_OVERLAP} context frames on either side)",
                ),
                io.Boolean.Input(
                    "second_decode", default=True,
                    tooltip="The original decodes twice and takes the middle pair from the second pass; off is faster",
                ),
            ],
            outputs=[io.Image.Output(display_name="frames", tooltip="All frames, keyframes included, as an IMAGE batch")],
        )

    @classmethod
    def execute(cls, model, latent, frames_per_chunk, second_decode) -> io.NodeOutput:
        return io.NodeOutput(to_image(decode_video(model, latent, frames_per_chunk, second_decode)))


def decode_video(model, latent, frames_per_chunk, second_decode):
    """Latents from ToonCrafter Sampler -> video (b 3 t H W) in [0, 1]."""
    keyframes = latent.get(KEYFRAMES_KEY)
    if keyframes is None:
        raise InputError("latent must come from ToonCrafter Sampler (it carries the keyframe reference features)")
    return tc_model.decode(model, latent["samples"], keyframes.refs, second_decode, frames_per_chunk or None)


def to_image(video):
    """(b 3 t H W) -> IMAGE (b*t H W 3), clips one after another."""
    b, c, t, h, w = video.shape
    return video.permute(0, 2, 3, 4, 1).reshape(b * t, h, w, c)
