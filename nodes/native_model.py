"""ToonCrafter as a native ComfyUI MODEL: a `comfy.model_base.BaseModel` around the core's UNet whose
model-sampling object is the original's noise process in ComfyUI's terms (`tooncrafter_core.noise_levels`:
a flow from σ = 1, pure noise, to σ = 0, where the original's DDIM ends). KSampler, KSamplerAdvanced and
SamplerCustomAdvanced drive it with any sampler, scheduler and guider; ModelPatcher patches (LoRA
loaders), lowvram partial loading and previews work as for ComfyUI's own models.

Glue only: the process, the network call and the samplers' math are in the core.
"""

from __future__ import annotations

import logging

import comfy.conds
import comfy.hooks
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension
import comfy.samplers
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models_base
import folder_paths
import torch
from comfy.text_encoders.sd2_clip import SD2Tokenizer
from einops import rearrange

from ..tooncrafter_core import errors, guidance, keyframes
from ..tooncrafter_core.models.attention import TemporalTransformer
from ..tooncrafter_core.models.config import UNetConfig
from ..tooncrafter_core.models.encoders import TextEncoder
from ..tooncrafter_core.models.schedule import Schedule
from ..tooncrafter_core.models.unet import UNetModel
from ..tooncrafter_core.noise_levels import NoiseLevels
from ..tooncrafter_core.sampling import level_guidance, sample_ddim_levels
from . import model_options, unet_patches
from .controls import control_residuals, window_frames
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

    def __init__(self, unet: UNetConfig):
        # Read by nodes that size their patches from it (FreeU: model_channels); num_res_blocks stays out,
        # which keeps ComfyUI from deriving diffusers LoRA names for a layout it does not know.
        super().__init__({**self.unet_config, "model_channels": unet.model_channels, "in_channels": unet.in_channels,
                          "out_channels": unet.out_channels, "context_dim": unet.context_dim})

    latent_format = ToonCrafterLatentFormat
    # Calibrated on the H200 run: 16 frames 320x512 with cfg batched took about 1.8 GiB of
    # activations in fp16 over the weights.
    memory_usage_factor = 1.2


class ToonCrafterNativeModel(comfy.model_base.BaseModel):
    """The UNet as ComfyUI's diffusion model. Conditioning entries from ToonCrafter Conditioning carry
    the keyframes' posterior, the frame stride and the context; sketch guidance comes as `control`.
    Its UNet calls honour ComfyUI's attention and block patches (`unet_patches`), DIFFUSION_MODEL
    wrappers (EasyCache), context windows and stock controls (`controls.FramesControl`)."""

    def __init__(self, unet: UNetModel, schedule: Schedule, scale_factor: float, compute_dtype: torch.dtype, device=None):
        config = ToonCrafterConfig(unet.config)
        levels = NoiseLevels(schedule)
        config.latent_format = ToonCrafterLatentFormat(1.0 / levels.latent_scale)
        stored = _weight_dtype(unet)
        config.set_inference_dtype(stored, None if compute_dtype == stored else compute_dtype)
        super().__init__(config, comfy.model_base.ModelType.FLOW, device=device)
        self.diffusion_model = unet
        self.model_sampling = ToonCrafterSampling(levels)
        self.scale_factor = scale_factor  # the VAE's latent scale: the keyframes' posterior is drawn at it

    @property
    def levels(self) -> NoiseLevels:
        if not isinstance(self.model_sampling, ToonCrafterSampling):
            raise errors.InputError(model_options.REPLACED_SAMPLING)
        return self.model_sampling.levels

    @property
    def compute_dtype(self) -> torch.dtype:
        """What the UNet computes in: the loader's choice, or ModelComputeDtype's (ComfyUI's manual cast)."""
        return self.manual_cast_dtype or _weight_dtype(self.diffusion_model)

    def get_dtype(self):
        # The compute dtype, not the stored one: ComfyUI casts model patches (hypernetworks) to it.
        return self.compute_dtype

    def extra_conds(self, **kwargs):
        posterior = kwargs.get(POSTERIOR_KEY)
        if posterior is None or FS_KEY not in kwargs:
            raise errors.InputError(
                "ToonCrafter needs the keyframes in its conditioning: connect positive and negative from "
                "ToonCrafter Conditioning (or ToonCrafter Image Conditioning), not from CLIPTextEncode alone"
            )
        noise = kwargs["noise"]
        seed = kwargs.get("seed")
        if seed is None:
            seed = 0
            log.warning("ToonCrafter: the sampler passed no seed; the keyframes' posterior is drawn with seed 0")
        concat = keyframes.seeded_concat(posterior, noise.shape[2], self.scale_factor, seed, noise.shape)
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
        folded = x.ndim == 4
        if folded:
            x, t, c_concat, c_crossattn, fs = _unfold(x, t, c_concat, c_crossattn, fs, transformer_options)
        frames = window_frames(transformer_options, c_concat.shape[2])
        if len(frames) != x.shape[2]:
            raise errors.InputError(
                f"the latent has {x.shape[2]} frames and the keyframe conditioning {c_concat.shape[2]}: connect the "
                "latent output of the same ToonCrafter Conditioning node"
            )
        unet, levels, dtype = self.diffusion_model, self.levels, self.compute_dtype
        b, _, frame_count, h, w = x.shape
        options = {**transformer_options, "original_shape": [b * frame_count, unet.config.in_channels, h, w]}
        hooks = unet_patches.unet_hooks(options)
        residuals = control_residuals(control, len(unet.input_blocks))
        context = mm.cast_to_device(c_crossattn, x.device, dtype)
        concat = mm.cast_to_device(c_concat[:, :, frames], x.device, torch.float32)
        fs = None if fs is None else fs.to(x.device).long()

        def network(x_t, timesteps, context, control, transformer_options):
            return unet(torch.cat([x_t, concat.to(x_t)], dim=1), timesteps, context, fs, control, hooks)

        # DIFFUSION_MODEL wrappers (EasyCache) see the noisy latent alone, the shape of the prediction.
        wrappers = comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, options)
        executor = comfy.patcher_extension.WrapperExecutor.new_class_executor(network, unet, wrappers)
        denoised = guidance.level_denoised(
            lambda x_t, timesteps: executor.execute(x_t, timesteps, context, residuals, options), levels, t, x, dtype
        )
        return rearrange(denoised, "b c t h w -> (b t) c h w") if folded else denoised


def _unfold(x, t, c_concat, c_crossattn, fs, transformer_options):
    """A call with the frames in the batch ((n t) c h w, from a function written for image or SVD latents,
    see `model_options.FRAMES_IN_BATCH`) -> the clip's call (n c t h w), one clip per conditioning."""
    frames = len(window_frames(transformer_options, c_concat.shape[2]))
    conds = len(transformer_options.get("cond_or_uncond") or [None])
    if x.shape[0] != conds * frames:
        raise errors.InputError(
            "SelfAttentionGuidance and the video CFG nodes treat each frame as an image and take one clip at a "
            f"time; this batch holds {x.shape[0] // (conds * frames)} clips: sample the keyframe pairs one by one"
        )
    every = lambda v: None if v is None else v[::frames]  # noqa: E731  one row per clip of the repeated conds
    return rearrange(x, "(n t) c h w -> n c t h w", t=frames), t[::frames], every(c_concat), every(c_crossattn), every(fs)


def _weight_dtype(unet: UNetModel) -> torch.dtype:
    return unet.out[2].weight.dtype


# SVD's name for temporal layers, which nodes address weights by (UNetTemporalAttentionMultiply).
TEMPORAL_ALIAS = "time_stack."


class ToonCrafterPatcher(comfy.model_patcher.ModelPatcher):
    """ComfyUI's ModelPatcher for the native model. In `model_state_dict` the temporal transformers'
    weights carry SVD's `time_stack.` in their names (`...input_blocks.1.2.time_stack.transformer_blocks...`),
    so nodes that address temporal attention by name find ToonCrafter's; patches made under those names
    go to the real weights. The model's own state dict (LoRA key maps, saving) keeps the checkpoint's names."""

    def _temporal_prefixes(self) -> list[str]:
        if not hasattr(self, "_prefixes"):
            self._prefixes = [
                f"diffusion_model.{name}." for name, module in self.model.diffusion_model.named_modules()
                if isinstance(module, TemporalTransformer)
            ]
        return self._prefixes

    def _alias(self, key: str) -> str:
        for prefix in self._temporal_prefixes():
            if key.startswith(prefix):
                return prefix + TEMPORAL_ALIAS + key[len(prefix):]
        return key

    @staticmethod
    def _real(key):
        if isinstance(key, tuple):
            return (ToonCrafterPatcher._real(key[0]), *key[1:])
        return key.replace("." + TEMPORAL_ALIAS, ".")

    def model_state_dict(self, filter_prefix=None):
        sd = super().model_state_dict(filter_prefix)
        if getattr(self, "_real_names", False):
            return sd
        return {self._alias(k): v for k, v in sd.items()}

    def get_key_patches(self, filter_prefix=None):
        self._real_names = True
        try:
            patches = super().get_key_patches(filter_prefix)
        finally:
            self._real_names = False
        return {self._alias(k): v for k, v in patches.items()}

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        real = {self._real(k): v for k, v in patches.items()}
        self._check_merged_weights(real)
        # ComfyUI's add_patches reads the whole state dict to look the names up, and ModelMerge* call it once
        # per weight: on the full-size UNet that is 1516 reads of 1791 modules, ~22 s a merge node. The
        # names are the ones kept for the shape check, so the read is answered from them for this call.
        self.model.state_dict = self._weight_shapes
        try:
            return super().add_patches(real, strength_patch, strength_model)
        finally:
            del self.model.state_dict

    def _weight_shapes(self, *args, **kwargs) -> dict:
        if not hasattr(self, "_shapes"):  # the class's state_dict: add_patches has the instance's replaced
            self._shapes = {k: tuple(v.shape) for k, v in type(self.model).state_dict(self.model).items()}
        return self._shapes

    def _check_merged_weights(self, patches: dict) -> None:
        """Weights merged in from another model (ModelMerge*: a list starting with (weight, convert)) must be
        ToonCrafter's: ComfyUI itself skips unknown names and, with a warning, mismatched shapes."""
        shapes = self._weight_shapes()
        for key, value in patches.items():
            key = key[0] if isinstance(key, tuple) else key
            if not (isinstance(value, list) and value and isinstance(value[0], tuple) and torch.is_tensor(value[0][0])):
                continue
            shape = tuple(value[0][0].shape)
            if shapes.get(key) != shape:
                theirs = f"a {list(shape)} weight {key}" if key in shapes else f"a weight {key}"
                ours = f"ToonCrafter's is {list(shapes[key])}" if key in shapes else "ToonCrafter has none"
                raise errors.InputError(
                    f"the model merged in is not a ToonCrafter model: it has {theirs} ({ours}); merge ToonCrafter "
                    "checkpoints (or LoRA-patched ToonCrafter models) only"
                )


def native_patcher(
    unet: UNetModel, schedule: Schedule, scale_factor: float, compute_dtype: torch.dtype, load_device, offload_device
) -> comfy.model_patcher.ModelPatcher:
    """The MODEL output of the loader: the native model in a ModelPatcher, with the check that runs
    before every sampling run (`model_options.before_sampling`)."""
    model = ToonCrafterNativeModel(unet, schedule, scale_factor, compute_dtype, device=offload_device)
    patcher = ToonCrafterPatcher(model, load_device=load_device, offload_device=offload_device)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, model_options.WRAPPER_KEY,
                                 model_options.before_sampling)
    return patcher


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
        draws = keyframes.initial_draws(x.shape, native.diffusion_model.config)
        generator = keyframes.seeded_generator(extra_args.get("seed") or 0, skip=draws)

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
            raise errors.InputError(
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
