"""ToonCrafter Keyframe Sequence: an IMAGE batch of keyframes -> one continuous clip (or a loop)."""

from comfy_api.latest import io

from ..tooncrafter_core import frames as tc_frames
from ..tooncrafter_core.sequences import check_trim, join_segments, segment_pairs, segment_prompts
from ..tooncrafter_core.settings import segment_seed
from .conditioning import condition
from .decoder import decode_video, to_image
from .sampler import sample_latent, sampling_inputs, step_callback
from .types import CATEGORY, ToonCrafterModelType


class ToonCrafterSequence(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ToonCrafterSequence",
            display_name="ToonCrafter Keyframe Sequence",
            category=CATEGORY,
            description="Interpolates every consecutive pair of a keyframe batch (and the last back to the first "
            "when looping) and joins the segments into one clip, each shared keyframe once. Segment i is exactly "
            "what Conditioning -> Sampler (seed + i) -> Decode gives for that pair.",
            inputs=[
                ToonCrafterModelType.Input("model", tooltip="From Load ToonCrafter Model (or Load ToonCrafter LoRA)"),
                io.Image.Input("keyframes", tooltip="Two or more keyframes in clip order, as one IMAGE batch (e.g. "
                               "LoadImage nodes joined with Batch Images, or a folder loader)"),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="One line for every segment, or one line per segment (keyframe 1->2, 2->3, ..., "
                                "last->first when looping); empty lines are ignored"),
                io.String.Input("negative_prompt", multiline=True, default="", tooltip="For every segment; the original uses empty"),
                io.Int.Input("frame_stride", default=0, min=0, max=100,
                             tooltip="fs condition: smaller values give larger motion; 0 = the model's (10 ToonCrafter, 5 "
                             "DynamiCrafter interpolation)"),
                io.Int.Input("width", default=512, min=64, max=2048, step=64, tooltip="Output width; the model was trained at 512"),
                io.Int.Input("height", default=320, min=64, max=2048, step=64, tooltip="Output height; the model was trained at 320"),
                io.Combo.Input("resize", options=list(tc_frames.FIT_METHODS), default="crop",
                               tooltip="How keyframes of another size are fitted: crop, stretch or pad"),
                io.Int.Input("frames", default=0, min=0, max=64,
                             tooltip="Frames per segment, both keyframes included; 0 = the model's (16). The clip has "
                             "(N-1)*(frames-1)+1 frames, N*(frames-1) looped"),
                io.Boolean.Input("loop", default=False,
                                 tooltip="Also interpolate the last keyframe back to the first; the clip then repeats "
                                 "seamlessly (the first keyframe is not repeated at its end)"),
                *sampling_inputs("Segment i uses seed + i, so one segment can be redone alone with the two-keyframe nodes",
                                 "DDIM steps per segment"),
                io.Int.Input("frames_per_chunk", default=0, min=0, max=64,
                             tooltip="Decode: 0 = auto (whole segments when they fit in memory), N = N frames per call"),
                io.Boolean.Input("second_decode", default=True, tooltip="The original's second decode of each segment's middle pair"),
                io.Clip.Input("clip", optional=True, tooltip="OpenCLIP ViT-H text encoder, needed for the pruned checkpoint"),
                io.ClipVision.Input("clip_vision", optional=True, tooltip="OpenCLIP ViT-H-14 vision model, needed for the pruned checkpoint"),
                io.Int.Input("trim", default=0, min=0, max=16, optional=True,
                             tooltip="In-betweens cut on each side of every keyframe two segments share, where the model "
                             "tends to hold the keyframe and the joined clip pauses; 0 keeps every frame"),
            ],
            outputs=[io.Image.Output(display_name="frames", tooltip="The whole clip in order, as one IMAGE batch")],
        )

    @classmethod
    def execute(
        cls, model, keyframes, prompt, negative_prompt, frame_stride, width, height, resize, frames, loop, seed, steps,
        cfg, eta, guidance_rescale, timestep_spacing, frames_per_chunk, second_decode, clip=None, clip_vision=None,
        trim=0,
    ) -> io.NodeOutput:
        pairs = segment_pairs(keyframes.shape[0], loop)
        check_trim(frames or model.config.frames, trim)
        prompts = segment_prompts([line for line in prompt.splitlines() if line.strip()] or [""], len(pairs))
        # Stage by stage over all segments, so ComfyUI loads the encoders, the UNet and the VAE once each.
        conditioned = [
            condition(model, keyframes[a : a + 1], keyframes[b : b + 1], prompts[i], negative_prompt, frame_stride,
                      width, height, resize, frames, clip, clip_vision)
            for i, (a, b) in enumerate(pairs)
        ]
        latents = [
            sample_latent(model, positive, negative, latent, segment_seed(seed, i), steps, cfg, eta, guidance_rescale,
                          timestep_spacing, step_callback(model, steps * len(pairs), i * steps))
            for i, (positive, negative, latent) in enumerate(conditioned)
        ]
        videos = [decode_video(model, latent, frames_per_chunk, second_decode) for latent in latents]
        return io.NodeOutput(to_image(join_segments(videos, loop, trim)))
