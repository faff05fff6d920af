"""ToonCrafter as a native ComfyUI MODEL: a `comfy.model_base.BaseModel` around the core's UNet whose
model-sampling object is the original's noise process in ComfyUI's terms (`tooncrafter_core.noise_levels`:
a flow from σ = 1, pure noise, to σ = 0, where the original's DDIM ends). KSampler, KSamplerAdvanced and
SamplerCustomAdvanced drive it with any sampler, scheduler and guider; ModelPatcher patches (LoRA
loaders), lowvram partial loading and previews work as for ComfyUI's own models.

Glue only: the process, the network call and the samplers' math are in the core.
"""

from __future__ import annotations

import logging
from typing import Optional

import comfy.conds
import comfy.controlnet
import comfy.hooks
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.model_sampling
import comfy.samplers
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models_base
import folder_paths
import torch
from comfy.text_encoders.sd2_clip import SD2Tokenizer

from ..tooncrafter_core import pipeline
from ..tooncrafter_core.models.encoders import TextEncoder
from ..tooncrafter_core.models.schedule import Schedule
from ..tooncrafter_core.models.sketch_encoder import SketchEncoder, controls
from ..tooncrafter_core.models.unet import UNetModel
from ..tooncrafter_core.noise_levels import NoiseLevels
from ..tooncrafter_core.sampling import level_guidance, sample_ddim_levels
from .types import FS_KEY, POSTERIOR_KEY

log = logging.getLogger(__name__)


class ToonCrafterLatentFormat(comfy.latent_formats.LatentFormat):
    """LATENTs hold the original's latents (SD's KL-f8 VAE latents times its scale factor, one per
    frame; a finished run's as the original's DDIM ends them). The sampler works on them divided by
    `NoiseLevels.latent_scale`."""

    latent_channels = 4
    latent_dimensions = 3

    def __init__(self, scale_factor: float = 1.0):
        self.scale_factor = scale_factor
        # The VAE is SD's, so SD 1.x's latent-to-RGB preview factors apply.
        self.latent_rgb_factors = comfy.latent_formats.SD15().latent_rgb_factors


class ToonCrafterSampling(torch.nn.Module, comfy.model_sampling.CONST):
    """ComfyUI's model-sampling interface over `NoiseLevels`. A flow (CONST) for ComfyUI, which picks
    the rectified-flow variants of its ancestral samplers for it."""

    def __init__(self, levels: NoiseLevels):
        super().__init__()
        self.levels = levels
        self.sigma_data = 1.0
        self.register_buffer("sigmas", levels.scheduler_table())
        self.register_buffer("log_sigmas", self.sigmas.log())

    @property
    def sigma_min(self):
        return self.sigmas[1]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        return self.levels.timestep(sigma).to(sigma.device, torch.float32)

    def sigma(self, timestep):
        return self.levels.sigma(timestep)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(self.levels.sigma(torch.tensor((1.0 - percent) * (self.levels.num_timesteps - 1))))

    def calculate_input(self, sigma, noise):
        return self.levels.model_input(sigma, noise)

    def calculate_denoised(self, sigma, model_output, model_input):
        return self.levels.denoised(sigma, model_input, model_output)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return self.levels.noise_scaling(sigma, noise, latent_image)

    def inverse_noise_scaling(self, sigma, latent):
        return self.levels.inverse_noise_scaling(sigma, latent)


class ToonCrafterConfig(comfy.supported_models_base.BASE):
    # The UNet is the core's, built and loaded by the core's loader.
    unet_config = {"disable_unet_model_creation": True}
    unet_extra_config = {}

    def __init__(self):
        super().__init__(self.unet_config)
    latent_format = ToonCrafterLatentFormat
    # Calibrated on the H200 run: 16 frames 320x512 with cfg batched took about 1.8 GiB of
    # activations in fp16 over the weights.
    memory_usage_factor = 1.2


class ToonCrafterNativeModel(comfy.model_base.BaseModel):
    """The UNet as ComfyUI's diffusion model. Conditioning entries from ToonCrafter Conditioning carry
    the keyframes' posterior, the frame stride and the context; sketch guidance comes as `control`."""

    def __init__(self, unet: UNetModel, schedule: Schedule, scale_factor: float, compute_dtype: torch.dtype, device=None):
        config = ToonCrafterConfig()
        levels = NoiseLevels(schedule)
        config.latent_format = ToonCrafterLatentFormat(1.0 / levels.latent_scale)
        stored = _weight_dtype(unet)
        config.set_inference_dtype(stored, None if compute_dtype == stored else compute_dtype)
        super().__init__(config, comfy.model_base.ModelType.FLOW, device=device)
        self.diffusion_model = unet
        self.model_sampling = ToonCrafterSampling(levels)
        self.compute_dtype = compute_dtype
        self.scale_factor = scale_factor  # the VAE's latent scale: the keyframes' posterior is drawn at it

    @property
    def levels(self) -> NoiseLevels:
        return self.model_sampling.levels

    def get_dtype(self):
        return _weight_dtype(self.diffusion_model)

    def extra_conds(self, **kwargs):
        posterior = kwargs.get(POSTERIOR_KEY)
        if posterior is None or FS_KEY not in kwargs:
            raise pipeline.InputError(
                "ToonCrafter needs the keyframes in its conditioning: connect positive and negative from "
                "ToonCrafter Conditioning (or ToonCrafter Image Conditioning), not from CLIPTextEncode alone"
            )
        noise = kwargs["noise"]
        seed = kwargs.get("seed")
        if seed is None:
            seed = 0
            log.warning("ToonCrafter: the sampler passed no seed; the keyframes' posterior is drawn with seed 0")
        concat = pipeline.seeded_concat(posterior, noise.shape[2], self.scale_factor, seed, noise.shape)
        out = {
            "c_concat": comfy.conds.CONDNoiseShape(concat),
            "fs": comfy.conds.CONDRegular(kwargs[FS_KEY].long()),
        }
        cross_attn = kwargs.get("cross_attn")
        if cross_attn is not None:
            out["c_crossattn"] = comfy.conds.CONDCrossAttn(cross_attn)
        return out

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        fs = kwargs.get("fs")
        residuals = None if control is None else _sketch_residuals(control)
        return pipeline.level_denoised(
            self.diffusion_model,
            self.levels,
            t,
            x,
            mm.cast_to_device(c_crossattn, x.device, self.compute_dtype),
            mm.cast_to_device(c_concat, x.device, torch.float32),
            None if fs is None else fs.to(x.device).long(),
            residuals,
            self.compute_dtype,
        )


def _weight_dtype(unet: UNetModel) -> torch.dtype:
    return unet.out[2].weight.dtype


def native_patcher(
    unet: UNetModel, schedule: Schedule, scale_factor: float, compute_dtype: torch.dtype, load_device, offload_device
) -> comfy.model_patcher.ModelPatcher:
    """The MODEL output of the loader: the native model in a ModelPatcher."""
    model = ToonCrafterNativeModel(unet, schedule, scale_factor, compute_dtype, device=offload_device)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


# ---------------------------------------------------------------------------------------------
# Guidance rescale and the original's DDIM as ComfyUI pieces


def with_guidance_rescale(patcher: comfy.model_patcher.ModelPatcher, factor: float) -> comfy.model_patcher.ModelPatcher:
    """A clone whose classifier-free guidance is the original's, with its guidance rescale (std matching
    of v, the network's own output)."""
    levels = patcher.model.levels
    patched = patcher.clone()

    def cfg(args):
        x = args["input"]
        denoised = level_guidance(
            levels, args["sigma"], x, args["cond_denoised"], args["uncond_denoised"], args["cond_scale"], factor
        )
        return x - denoised

    patched.set_model_sampler_cfg_function(cfg, disable_cfg1_optimization=False)
    return patched


def _ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=0.0):
    """ComfyUI sampler function: the original's DDIM (`sampling.sample_ddim_levels`). Like the
    original, a run from an empty latent starts from the noise itself whatever the first level; its
    per-step noise is the one `interpolate` draws for the same seed."""
    extra_args = extra_args or {}
    native = model.inner_model.inner_model
    levels = native.levels
    latent = getattr(model, "latent_image", None)
    if latent is not None and not latent.any() and float(sigmas[0]) < 1.0:
        x = levels.from_latent(sigmas[:1], model.noise.to(x))
    generator = None
    if eta > 0:
        cfg = native.diffusion_model.config
        posterior = (x.shape[0], cfg.in_channels - cfg.out_channels, *x.shape[2:])
        generator = pipeline.seeded_generator(extra_args.get("seed") or 0, skip=[x.shape, posterior])

    def denoiser(x, sigma):
        return model(x, sigma, **extra_args)

    def on_step(i, x, denoised):
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})

    return sample_ddim_levels(denoiser, x, sigmas, levels, eta, generator, on_step)


def ddim_sampler(eta: float) -> comfy.samplers.KSAMPLER:
    """A SAMPLER for SamplerCustomAdvanced / SamplerCustom."""
    return comfy.samplers.KSAMPLER(_ddim, extra_options={"eta": eta})


# ---------------------------------------------------------------------------------------------
# Sketch guidance as a ComfyUI control


class SketchControl(comfy.controlnet.ControlBase):
    """The sketch encoder on the conditioning, as ComfyUI's ControlNets are: ComfyUI loads its patcher
    with the model and asks it for residuals at every UNet call (both guidance passes)."""

    def __init__(self, encoder: comfy.model_patcher.ModelPatcher, hint: torch.Tensor, scale: float):
        super().__init__()
        self.encoder = encoder
        self.hint = hint  # (1 1 t H W) in [0, 1]
        self.scale = scale
        self.levels: Optional[NoiseLevels] = None
        self.dtype = torch.float32
        self.features = None

    def pre_run(self, model, percent_to_timestep_function):
        super().pre_run(model, percent_to_timestep_function)
        self.levels, self.dtype = model.levels, model.compute_dtype

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        prev = None
        if self.previous_controlnet is not None:
            prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        net: SketchEncoder = self.encoder.model
        if self.features is None or self.features.device != x_noisy.device:
            pipeline.check_sketch(self.hint, x_noisy)
            # The hint block sees neither the timestep nor the context: one set of features a run.
            self.features = net.hint_features(self.hint.to(x_noisy.device, self.dtype))
        c = self.levels.coefficients(t)
        x_t = self.levels.model_input(t, x_noisy.float(), c).to(self.dtype)
        features = self.features.repeat(x_noisy.shape[0], 1, 1, 1)  # ((b t) c h w), the same sketches for every entry
        context = mm.cast_to_device(cond["c_crossattn"], x_noisy.device, self.dtype)
        residuals = controls(net, x_t, c.t.to(x_noisy.device, torch.float32), context, features, self.scale)
        out = {"input": [], "middle": [residuals[-1]], "output": residuals[:-1]}
        return self.control_merge(out, prev, output_dtype=None)

    def get_models(self):
        return super().get_models() + [self.encoder]

    def copy(self):
        c = SketchControl(self.encoder, self.hint, self.scale)
        self.copy_to(c)
        return c

    def cleanup(self):
        self.features = None
        self.levels = None
        super().cleanup()


def _sketch_residuals(control: dict) -> list[torch.Tensor]:
    """ComfyUI's control dict -> the core UNet's residual list (skips in order, then the middle block)."""
    skips, middle = control.get("output", []), control.get("middle", [])
    if control.get("input") or len(middle) != 1 or any(r is None for r in skips):
        raise pipeline.InputError(
            "only ToonCrafter Apply Sketch can steer the ToonCrafter model; SD ControlNets do not fit its UNet"
        )
    return [*skips, middle[0]]


# ---------------------------------------------------------------------------------------------
# The checkpoint's text encoder as a ComfyUI CLIP


class ToonCrafterTextClip(torch.nn.Module, comfy.sd1_clip.ClipTokenWeightEncoder):
    """The checkpoint's OpenCLIP ViT-H text tower behind ComfyUI's CLIP interface: ComfyUI's SD 2.x
    tokens (prompt weights included) in, the original's features out (the penultimate layer and the
    final LayerNorm; CLIPSetLastLayer picks another layer)."""

    special_tokens = {"start": 49406, "end": 49407, "pad": 0}

    def __init__(self, encoder: TextEncoder, dtype: torch.dtype):
        super().__init__()
        self.encoder = encoder
        self.dtype = dtype
        self.dtypes = {dtype}
        self.layer_idx = None

    def set_clip_options(self, options):
        self.layer_idx = options.get("layer", self.layer_idx)

    def reset_clip_options(self):
        self.layer_idx = None

    def encode_token_weights(self, token_weight_pairs):
        return comfy.sd1_clip.ClipTokenWeightEncoder.encode_token_weights(self, token_weight_pairs["h"])

    def encode(self, tokens):
        if any(not isinstance(t, int) for row in tokens for t in row):
            raise pipeline.InputError(
                "textual-inversion embeddings (embedding:...) are not supported by ToonCrafter's text encoder; "
                "remove them from the prompt"
            )
        device = next(self.encoder.parameters()).device
        skip = None if self.layer_idx is None else -self.layer_idx - 1
        ids = torch.tensor(tokens, dtype=torch.long, device=device)
        return self.encoder.model(ids, self.dtype, skip_last=skip).float(), None


def checkpoint_clip(encoder: TextEncoder, dtype: torch.dtype, load_device, offload_device) -> comfy.sd.CLIP:
    """A CLIP for CLIPTextEncode around the checkpoint's own text encoder (no second copy): its
    patcher is the one ComfyUI manages the text encoder with."""
    clip = comfy.sd.CLIP(no_init=True)
    clip.cond_stage_model = ToonCrafterTextClip(encoder, dtype)
    clip.tokenizer = SD2Tokenizer(embedding_directory=folder_paths.get_folder_paths("embeddings"))
    clip.patcher = comfy.model_patcher.ModelPatcher(clip.cond_stage_model, load_device=load_device, offload_device=offload_device)
    clip.patcher.hook_mode = comfy.hooks.EnumHookMode.MinVram
    clip.patcher.is_clip = True
    clip.apply_hooks_to_conds = None
    clip.layer_idx = None
    clip.use_clip_schedule = False
    clip.tokenizer_options = {}
    return clip
