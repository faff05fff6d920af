"""ToonCrafter Sampler: the original's DDIM with classifier-free guidance, through ComfyUI's sampling
with the native model (progress bar, preview, Cancel, lowvram, LoRA patches)."""

import comfy.model_management as mm
import comfy.utils
import latent_preview
from comfy_api.latest import io

from ..tooncrafter_core.errors import InputError
from ..tooncrafter_core.settings import SamplingConfig
from . import managed_model as tc_model
from .types import CATEGORY, FS_KEY, KEYFRAMES_KEY, ToonCrafterModelType


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
            description="Draws the latents of the clip: DDIM with classifier-free guidance, on the model's own prediction (v or eps) and schedule.",
            inputs=[
                ToonCrafterModelType.Input("model", tooltip="From Load ToonCrafter Model"),
                io.Conditioning.Input("positive", tooltip="From ToonCrafter Conditioning"),
                io.Conditioning.Input("negative", tooltip="From ToonCrafter Conditioning"),
                io.Latent.Input("latent", tooltip="The latent output of ToonCrafter Conditioning"),
                *sampling_inputs("Seed of every random draw (initial noise, keyframe posterior, DDIM noise)",
                                 "DDIM steps; 50 as the original. Fewer cost quality: 25 had about twice 50's error in our measurements "
                                 "(docs/native-model.md); the KSampler with ipndm/beta matched 50 at 25"),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, steps, cfg, eta, guidance_rescale, timestep_spacing) -> io.NodeOutput:
        on_step = step_callback(model, steps)
        return io.NodeOutput(
            sample_latent(model, positive, negative, latent, seed, steps, cfg, eta, guidance_rescale, timestep_spacing, on_step)
        )


def step_callback(model, total: int, offset: int = 0):
    """A sampling callback (ComfyUI's: step, x0, x, steps) that honours Cancel and drives one progress
    bar of `total` steps from `offset`, with a preview of the middle frame."""
    pbar = comfy.utils.ProgressBar(total)
    previewer = latent_preview.get_previewer(model.unet.load_device, model.unet.model.latent_format)

    def on_step(i, x0, x, steps):
        mm.throw_exception_if_processing_interrupted()
        preview = None
        if previewer is not None:
            middle = x0[:1, :, x0.shape[2] // 2 : x0.shape[2] // 2 + 1]  # (1 c 1 h w): the previewer shows frame 0
            preview = previewer.decode_latent_to_preview_image("JPEG", middle)
        pbar.update_absolute(offset + i + 1, total, preview)

    return on_step


def sample_latent(model, positive, negative, latent, seed, steps, cfg, eta, guidance_rescale, timestep_spacing, on_step) -> dict:
    """What the Sampler node outputs for its inputs, reporting each step to `on_step` (ComfyUI's callback)."""
    keyframes = latent.get(KEYFRAMES_KEY)
    if keyframes is None:
        raise InputError("latent must be the latent output of ToonCrafter Conditioning (it has no keyframe features)")
    _single(positive, "positive")
    _single(negative, "negative")
    sampling = SamplingConfig(
        steps=steps, cfg_scale=cfg, eta=eta, guidance_rescale=guidance_rescale, timestep_spacing=timestep_spacing
    )
    samples = tc_model.sample(model, positive, negative, latent["samples"], sampling, seed, on_step)
    return {"samples": samples, KEYFRAMES_KEY: keyframes}
