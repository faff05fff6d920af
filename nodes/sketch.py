"""Sketch guidance: Load ToonCrafter Sketch Encoder and ToonCrafter Apply Sketch."""

from comfy_api.latest import io

from ..tooncrafter_core import frames as tc_frames
from ..tooncrafter_core.errors import InputError
from ..tooncrafter_core.sketches import DEFAULT_SCALE
from ..tooncrafter_core.weights import catalog
from . import managed_model as tc_model
from .types import CATEGORY, FS_KEY, KEYFRAMES_KEY, SketchEncoderType


class LoadToonCrafterSketchEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ToonCrafterSketchEncoderLoader",
            display_name="Load ToonCrafter Sketch Encoder",
            category=CATEGORY,
            description="Loads ToonCrafter's sketch encoder (an SD 2.1-layout ControlNet) from models/controlnet, "
            "downloading a known release on first use.",
            inputs=[
                io.Combo.Input(
                    "encoder_name",
                    options=tc_model.sketch_encoder_choices(),
                    default=catalog.DEFAULT_SKETCH.name,
                    tooltip="Sketch encoder in models/controlnet. Released files not present yet are downloaded when "
                    "queued: " + "; ".join(f"{f.name} ({f.size}, {f.repo_id})" for f in catalog.SKETCH_ENCODERS),
                ),
            ],
            outputs=[SketchEncoderType.Output(display_name="sketch_encoder")],
        )

    @classmethod
    def validate_inputs(cls, encoder_name):
        if encoder_name not in tc_model.sketch_encoder_choices():
            return f"sketch encoder {encoder_name!r} is neither in models/controlnet nor a known release"
        return True

    @classmethod
    def execute(cls, encoder_name) -> io.NodeOutput:
        return io.NodeOutput(tc_model.load_sketch_encoder(encoder_name))


class ToonCrafterApplySketch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ToonCrafterApplySketch",
            display_name="ToonCrafter Apply Sketch",
            category=CATEGORY,
            description="Steers the in-between frames with drawn sketches (dark lines on light paper), one per frame "
            "or only on some frames. Goes between ToonCrafter Conditioning and ToonCrafter Sampler.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="From ToonCrafter Conditioning"),
                io.Conditioning.Input("negative", tooltip="From ToonCrafter Conditioning"),
                io.Latent.Input("latent", tooltip="The latent output of ToonCrafter Conditioning (frame count and size)"),
                SketchEncoderType.Input("sketch_encoder", tooltip="From Load ToonCrafter Sketch Encoder"),
                io.Image.Input("sketches", tooltip="The drawn frames as one IMAGE batch: one per frame (blank paper where "
                               "nothing is drawn), or only the drawn ones with frame_indices"),
                io.String.Input("frame_indices", default="",
                                tooltip="Which frame each sketch is for, e.g. '5, 10' (frames count from 0, keyframes "
                                "included); empty: the sketches are every frame in order. Frames without a sketch get "
                                "an empty one, which still goes through the sketch encoder and steers them too (as "
                                "in the reference)"),
                io.Float.Input("strength", default=DEFAULT_SCALE, min=0.0, max=2.0, step=0.05,
                               tooltip="How strongly the sketches steer: 0 = not at all (the unguided result exactly); "
                               "0.6 as the reference app"),
                io.Combo.Input("resize", options=list(tc_frames.FIT_METHODS), default="crop",
                               tooltip="How sketches of another size are fitted; use what the Conditioning uses"),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, latent, sketch_encoder, sketches, frame_indices, strength, resize) -> io.NodeOutput:
        if KEYFRAMES_KEY not in latent:
            raise InputError("latent must be the latent output of ToonCrafter Conditioning")
        control = tc_model.sketch_control(sketch_encoder, sketches, frame_indices, strength, resize, latent["samples"].shape)
        return io.NodeOutput(steered(positive, control, strength), steered(negative, control, strength))


def steered(conditioning, control, strength):
    """The conditioning entries, each steered by the sketch control (ComfyUI's `control` option, as
    ControlNets are applied); strength 0 leaves them as they are: the unguided result exactly."""
    if not conditioning or FS_KEY not in conditioning[0][1]:
        raise InputError("positive and negative must come from ToonCrafter Conditioning")
    if strength == 0:
        return conditioning
    out = []
    for context, options in conditioning:
        steer = control.copy()
        if "control" in options:
            steer.set_previous_controlnet(options["control"])
        out.append([context, {**options, "control": steer, "control_apply_to_uncond": False}])
    return out
