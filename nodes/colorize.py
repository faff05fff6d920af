"""Line-art colorization: ToonCrafter Load Line Art and ToonCrafter Colorize."""

import hashlib
import os
from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..tooncrafter_core import colorize as tc_colorize
from ..tooncrafter_core import frames as tc_frames
from ..tooncrafter_core.errors import InputError
from ..tooncrafter_core.models.config import INTERPOLATION
from ..tooncrafter_core.pipeline import check_size, check_task
from ..tooncrafter_core.sketches import parse_frame_indices
from . import managed_model as tc_model
from .conditioning import NODE_FOR, condition, encoder_inputs, with_keyframes
from .controls import SketchControl
from .decoder import decode_video
from .sampler import sample_latent, sampling_inputs, step_callback
from .sketch import steered
from .types import CATEGORY, SketchEncoderType, ToonCrafterModelType


def _folders() -> list[str]:
    return sorted(folder_paths.get_input_subfolders())


class LoadToonCrafterLineArt(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ToonCrafterLoadLineArt",
            display_name="ToonCrafter Load Line Art",
            category=CATEGORY,
            description="Loads a folder of line-art frames from ComfyUI's input folder in name order (frame_000.png, "
            "frame_001.png, ...) as one IMAGE batch; lines on a transparent layer are put on white paper.",
            inputs=[io.Combo.Input("folder", options=_folders(),
                                   tooltip="A folder inside ComfyUI's input folder holding the shot's line art, one image "
                                   "per frame, all of one size")],
            outputs=[io.Image.Output(display_name="line_art", tooltip="The frames in name order, on white paper")],
        )

    @classmethod
    def _files(cls, folder) -> list[Path]:
        return tc_frames.image_files([Path(folder_paths.get_input_directory()) / folder], "line-art")

    @classmethod
    def validate_inputs(cls, folder):
        if not (Path(folder_paths.get_input_directory()) / folder).is_dir():
            return f"line-art folder {folder!r} is not in ComfyUI's input folder"
        return True

    @classmethod
    def fingerprint_inputs(cls, folder):
        # Rerun when a frame is added, replaced or redrawn.
        stats = [(f.name, os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in cls._files(folder)]
        return hashlib.sha256(repr(stats).encode()).hexdigest()

    @classmethod
    def execute(cls, folder) -> io.NodeOutput:
        try:
            files = cls._files(folder)
            batch = tc_colorize.stack_line_art([tc_frames.load_image(f, paper=True) for f in files], [f.name for f in files])
        except ValueError as e:
            raise InputError(f"ToonCrafter Load Line Art: {e} (folder input)") from None
        return io.NodeOutput(batch.movedim(1, -1))


class ToonCrafterColorize(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ToonCrafterColorize",
            display_name="ToonCrafter Colorize",
            category=CATEGORY,
            description="Colours a line-art shot from coloured keys: between two keys, ToonCrafter interpolates them "
            "with the line art of every frame as sketches (segment i uses seed + i). Keys come back exactly as given; "
            "N line-art frames in, N coloured frames out.",
            inputs=[
                ToonCrafterModelType.Input("model", tooltip="From Load ToonCrafter Model (an interpolation checkpoint)"),
                SketchEncoderType.Input("sketch_encoder", tooltip="From Load ToonCrafter Sketch Encoder"),
                io.Image.Input("line_art", tooltip="The shot's line art as one IMAGE batch, frame 0 first (e.g. from "
                               "ToonCrafter Load Line Art): dark lines on white or off-white paper"),
                io.Image.Input("keys", tooltip="The coloured keys as one IMAGE batch (LoadImage nodes joined with Batch "
                               "Images), in the order of key_frames"),
                io.String.Input("key_frames", default="0, 15",
                                tooltip="The line-art frame each key colours, e.g. '0, 8, 15' (counting from 0): at "
                                "least the first and the last frame, at most max_segment frames apart"),
                io.String.Input("prompt", multiline=True, default="", tooltip="What the shot shows"),
                io.String.Input("negative_prompt", multiline=True, default="", tooltip="The original uses empty"),
                io.Int.Input("frame_stride", default=0, min=0, max=100,
                             tooltip="fs condition: smaller values give larger motion; 0 = the model's (10 ToonCrafter)"),
                io.Int.Input("width", default=512, min=64, max=2048, step=64, tooltip="Output width; the model was trained at 512"),
                io.Int.Input("height", default=320, min=64, max=2048, step=64, tooltip="Output height; the model was trained at 320"),
                io.Combo.Input("resize", options=list(tc_frames.FIT_METHODS), default="crop",
                               tooltip="How line art and keys of another size are fitted: crop, stretch or pad"),
                *sampling_inputs("Segment i (between key i and key i+1) uses seed + i", "DDIM steps per segment"),
                io.Float.Input("sketch_strength", default=tc_colorize.DEFAULT_SCALE, min=0.0, max=2.0, step=0.05,
                               tooltip="How strongly the line art steers; 1.0: every frame's lines are final (Apply "
                               "Sketch's 0.6 suits rough sketches on a few frames)"),
                io.Int.Input("max_segment", default=tc_colorize.DEFAULT_MAX_SEGMENT, min=3, max=64,
                             tooltip="Most frames between two keys, both included; 16 is what the model was trained on"),
                io.Boolean.Input("single_key", default=False,
                                 tooltip="Exploratory, not validated: colour from one key, segment by segment outwards"),
                io.Boolean.Input("line_overlay", default=False,
                                 tooltip="Multiply the line art over the coloured frames so lines stay crisp"),
                io.Boolean.Input("color_match", default=False,
                                 tooltip="Match each coloured frame's colours to its keys' (needs the color-matcher "
                                 "package); fixes drift in brightness and tone"),
                io.Int.Input("frames_per_chunk", default=0, min=0, max=64,
                             tooltip="Decode: 0 = auto (whole segments when they fit in memory), N = N frames per call"),
                io.Boolean.Input("second_decode", default=True, tooltip="The original's second decode of each segment's middle pair"),
                *encoder_inputs(),
                io.Mask.Input("line_art_mask", optional=True,
                              tooltip="LoadImage's MASK of transparent line art: the lines are put on white paper "
                              "(without it, transparent pixels keep the colour stored under them)"),
            ],
            outputs=[io.Image.Output(display_name="frames", tooltip="The coloured shot, one frame per line-art frame")],
        )

    @classmethod
    def execute(
        cls, model, sketch_encoder, line_art, keys, key_frames, prompt, negative_prompt, frame_stride, width, height,
        resize, seed, steps, cfg, eta, guidance_rescale, timestep_spacing, sketch_strength, max_segment, single_key,
        line_overlay, color_match, frames_per_chunk, second_decode, clip=None, clip_vision=None, line_art_mask=None,
    ) -> io.NodeOutput:
        check_task(model.config, INTERPOLATION, NODE_FOR)
        check_size(height, width, model.config, "width x height")
        try:
            indices = parse_frame_indices(key_frames) or []
        except ValueError as e:
            raise InputError(f"ToonCrafter Colorize: {e} (key_frames input)") from None
        key_images = tc_model.pixels(keys, "keys")
        if len(indices) != key_images.shape[0]:
            raise InputError(f"keys has {key_images.shape[0]} image(s) but key_frames names {len(indices)} frame(s) "
                             f"({key_frames!r}): give one frame number per key, in the keys' order")
        art = tc_colorize.prepare_line_art(tc_colorize.with_alpha(tc_model.pixels(line_art, "line_art"), line_art_mask))
        options = tc_colorize.ColorizeOptions(seed, sketch_strength, max_segment, single_key, line_overlay, color_match)
        segments = tc_colorize.plan_segments(art.shape[0], indices, options)
        sampler = (steps, cfg, eta, guidance_rescale, timestep_spacing)
        runner = _NodeRunner(model, sketch_encoder, sketch_strength, (prompt, negative_prompt, frame_stride, clip, clip_vision),
                             sampler, (frames_per_chunk, second_decode), len(segments))
        shot = tc_colorize.colorize(runner, art, dict(zip(indices, key_images.split(1))), (height, width), options, resize)
        return io.NodeOutput(shot.movedim(1, -1))


class _NodeRunner:
    """Colorize's runs through the pack's nodes: Conditioning, Apply Sketch, Sampler and Decode, each
    model loaded by ComfyUI; one progress bar over every segment's steps."""

    def __init__(self, model, encoder, strength, conditioning, sampler, decoding, segments):
        self.model, self.encoder, self.strength = model, encoder, strength
        self.conditioning, self.sampler, self.decoding = conditioning, sampler, decoding
        self.total, self.rendered = sampler[0] * segments, 0

    def condition(self, segment, start, end):
        prompt, negative_prompt, frame_stride, clip, clip_vision = self.conditioning
        height, width = start.shape[-2:]
        return condition(self.model, start.movedim(1, -1), end.movedim(1, -1), prompt, negative_prompt, frame_stride,
                         width, height, "crop", len(segment.frames), clip, clip_vision)

    def conditioned(self):
        pass  # ComfyUI frees the encoders when the UNet needs the memory

    def render(self, segment, conditioned, hint, keyframes):
        if keyframes is not None:
            conditioned = with_keyframes(self.model, conditioned, [tc_frames.to_model(k) for k in keyframes])
        positive, negative, latent = conditioned
        control = SketchControl(self.encoder, hint, self.strength)
        steps = self.sampler[0]
        on_step = step_callback(self.model, self.total, self.rendered * steps)
        self.rendered += 1
        sampled = sample_latent(self.model, steered(positive, control, self.strength),
                                steered(negative, control, self.strength), latent, segment.seed, *self.sampler, on_step)
        return decode_video(self.model, sampled, *self.decoding)[0].transpose(0, 1).cpu()
