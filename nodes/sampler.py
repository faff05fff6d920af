"""ToonCrafter Sampler: DDIM with classifier-free guidance, progress bar, preview and Cancel."""

import comfy.latent_formats
import comfy.model_management as mm
import comfy.utils
import latent_preview
from comfy_api.latest import io

from ..tooncrafter_core.pipeline import Conditioning, InputError
from ..tooncrafter_core.settings import SamplingConfig
from . import managed_model as tc_model
from .types import CATEGORY, FS_KEY, KEYFRAMES_KEY, SKETCH_KEY, ToonCrafterModelType


def _single(conditioning, name: str):
    if not conditioning or FS_KEY not in conditioning[0][1]:
        raise InputError(f"{name} must come from ToonCrafter Conditioning (it carries the keyframe conditions)")
    if len(conditioning) > 1:
        raise InputError(f"{name} holds {len(conditioning)} conditionings; ToonCrafter takes exactly one (no combine/concat)")
    return conditioning[0]


def sampling_inputs(seed_tooltip: str, steps_tooltip: str) -> list:
    """The sampler's settings, in order: seed, steps, cfg, eta, guidance_rescale, timestep_spacing."""
    return [
        io.Int.Input("seed", default=123, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=seed_tooltip),
        io.Int.Input("steps", default=50, min=1, max=1000, tooltip=steps_tooltip),
        io.Float.Input("cfg", default=7.5, min=1.0, max=30.0, step=0.1, round=0.01,
                       tooltip="Classifier-free guidance scale; 1 disables the negative pass (twice as fast)"),
        io.Float.Input("eta", default=1.0, min=0.0, max=1.0, step=0.05, tooltip="DDIM eta: 0 deterministic, 1 as the original"),
        io.Float.Input("guidance_rescale", default=0.7, min=0.0, max=1.0, step=0.05,
                       tooltip="Rescales guided predictions towards the conditional one's std (0.7 in the 512 app)"),
        io.Combo.Input("timestep_spacing", options=["uniform_trailing", "uniform"], default="uniform_trailing",
                       tooltip="uniform_trailing starts at the last timestep (the 512 app); uniform as the 256 app"),
    ]


class ToonCrafterSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ToonCrafterSampler",
            display_name="ToonCrafter Sampler",
            category=CATEGORY,
            description="Draws the in-between latents (DDIM, v-prediction, zero-terminal-SNR schedule).",
            inputs=[
                ToonCrafterModelType.Input("model", tooltip="From Load ToonCrafter Model"),
                io.Conditioning.Input("positive", tooltip="From ToonCrafter Conditioning"),
                io.Conditioning.Input("negative", tooltip="From ToonCrafter Conditioning"),
                io.Latent.Input("latent", tooltip="The latent output of ToonCrafter Conditioning"),
                *sampling_inputs("Seed of every random draw (posterior, initial noise, DDIM noise)",
                                 "DDIM steps; 50 as the original, 20-30 is often enough"),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, steps, cfg, eta, guidance_rescale, timestep_spacing) -> io.NodeOutput:
        on_step = step_callback(model, steps, latent["samples"].shape[2])
        return io.NodeOutput(
            sample_latent(model, positive, negative, latent, seed, steps, cfg, eta, guidance_rescale, timestep_spacing, on_step)
        )


def step_callback(model, total: int, frames: int):
    """A sampling callback that honours Cancel and drives one progress bar of `total` steps, with a
    preview of the middle frame."""
    pbar = comfy.utils.ProgressBar(total)
    previewer = latent_preview.get_previewer(model.unet.load_device, comfy.latent_formats.SD15())

    def on_step(i, x, x0):
        mm.throw_exception_if_processing_interrupted()
        preview = None
        if previewer is not None:
            preview = previewer.decode_latent_to_preview_image("JPEG", x0[:1, :, frames // 2])
        pbar.update_absolute(i + 1, total, preview)

    return on_step


def sample_latent(model, positive, negative, latent, seed, steps, cfg, eta, guidance_rescale, timestep_spacing, on_step) -> dict:
    """What the Sampler node outputs for its inputs, reporting each step to `on_step(i, x, x0)`."""
    keyframes = latent.get(KEYFRAMES_KEY)
    if keyframes is None:
        raise InputError("latent must be the latent output of ToonCrafter Conditioning (it has no keyframe features)")
    pos_ctx, pos_opts = _single(positive, "positive")
    neg_ctx, _ = _single(negative, "negative")
    sampling = SamplingConfig(
        steps=steps, cfg_scale=cfg, eta=eta, fs=int(pos_opts[FS_KEY][0]),
        guidance_rescale=guidance_rescale, timestep_spacing=timestep_spacing,
    )
    cond = Conditioning(pos_ctx, neg_ctx if cfg != 1.0 else None, None, pos_opts[FS_KEY])
    frames = latent["samples"].shape[2]
    samples = tc_model.sample(model, cond, keyframes, frames, sampling, seed, on_step, pos_opts.get(SKETCH_KEY))
    return {"samples": samples, KEYFRAMES_KEY: keyframes}
