"""ToonCrafter inside ComfyUI's model management: each component in its own ModelPatcher,
built from `comfy.ops.manual_cast` layers so lowvram partial loading and weight casting work,
loaded with `load_models_gpu` right before use.
"""

from __future__ import annotations

import logging
import os
import shutil
import weakref
from dataclasses import dataclass, field, replace
from typing import Optional

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.sample
import comfy.sd
import folder_paths
import torch
from comfy.weight_adapter import LoRAAdapter
from torch import nn

from ..tooncrafter_core import conditioning, decoding, errors, frames, keyframes, sketches
from ..tooncrafter_core.models import encoders
from ..tooncrafter_core.models.config import DECODE_OVERLAP, ModelConfig
from ..tooncrafter_core.models.schedule import Schedule
from ..tooncrafter_core.models.sketch_encoder import HINT_DOWNSAMPLE
from ..tooncrafter_core.models.vae import auto_decode_chunk, decode_memory_bytes
from ..tooncrafter_core.runtime import prepare
from ..tooncrafter_core.sampling import SamplingOverflowError, ddim_timesteps
from ..tooncrafter_core.settings import RuntimeOptions, SamplingConfig
from ..tooncrafter_core.weights import catalog, checkpoint, lora
from ..tooncrafter_core.weights.checkpoint import FP8_DTYPES, load_model
from ..tooncrafter_core.weights.sketch_encoder import load_sketch_encoder as load_sketch_encoder_file
from . import native_model
from .controls import SketchControl

log = logging.getLogger(__name__)

FOLDER = "tooncrafter"
EXTENSIONS = {".safetensors", ".ckpt", ".pt", ".pth"}
WEIGHT_DTYPES = {"auto": None, **checkpoint.WEIGHT_DTYPES}
# The UNet's keys in the native model's state dict (ComfyUI's LoRA loaders map onto these).
UNET_KEY_PREFIX = "diffusion_model."


def register_folder() -> None:
    """`models/tooncrafter` first, keeping any paths extra_model_paths.yaml added before us."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths, exts = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    if default not in paths:
        paths.insert(0, default)
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(exts) | EXTENSIONS)


EXAMPLE_KEYFRAMES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflows", "keyframes")


def install_example_keyframes() -> None:
    """Copy the example workflows' keyframes (and the colorize workflow's line-art folder) into ComfyUI's
    input folder so LoadImage and ToonCrafter Load Line Art find them; files already there are kept."""
    target = folder_paths.get_input_directory()
    for folder, _, names in os.walk(EXAMPLE_KEYFRAMES):
        out = os.path.join(target, os.path.relpath(folder, EXAMPLE_KEYFRAMES))
        for name in sorted(names):
            dst = os.path.join(out, name)
            if name.endswith(".png") and not os.path.exists(dst):
                os.makedirs(out, exist_ok=True)
                shutil.copyfile(os.path.join(folder, name), dst)


def _choices(folder: str, released) -> list[str]:
    """Files in a model folder, then the released files not downloaded yet."""
    # Hidden folders hold unfinished downloads (catalog.STAGING) and other tools' leftovers.
    present = [f for f in folder_paths.get_filename_list(folder) if os.path.splitext(f)[1] in EXTENSIONS
               and not any(part.startswith(".") for part in f.replace("\\", "/").split("/"))]
    return present + [f.name for f in released if f.name not in present]


def _resolve(folder: str, name: str, released, what: str) -> str:
    """Path of a choice of `_choices`; a known release that is missing is downloaded first."""
    path = folder_paths.get_full_path(folder, name)
    if path is not None:
        return path
    entry = catalog.find(name, released)
    if entry is None:
        raise FileNotFoundError(
            f"{what} {name!r} is not in {', '.join(folder_paths.get_folder_paths(folder))}; "
            "put it there (or pick another file in the loader)"
        )
    return str(catalog.download(entry, folder_paths.get_folder_paths(folder)[0], tqdm_class=_comfy_tqdm()))


def checkpoint_choices() -> list[str]:
    """Files in the tooncrafter folders, then the family's released files not downloaded yet."""
    return _choices(FOLDER, catalog.FAMILY)


def resolve_checkpoint(name: str) -> str:
    """Path of a checkpoint choice; a known release that is missing is downloaded first."""
    return _resolve(FOLDER, name, catalog.FAMILY, "checkpoint")


def _comfy_tqdm():
    """A tqdm class that also drives ComfyUI's progress bar (for downloads)."""
    import comfy.utils
    from tqdm import tqdm

    class ComfyTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._pbar = comfy.utils.ProgressBar(max(1, int(self.total or 1)))

        def update(self, n=1):
            super().update(n)
            self._pbar.update_absolute(int(self.n), int(self.total or self.n or 1))

    return ComfyTqdm


@dataclass
class ToonCrafterModel:
    """What the TOONCRAFTER_MODEL socket carries."""

    name: str
    config: ModelConfig
    schedule: Schedule
    unet: comfy.model_patcher.ModelPatcher  # the native MODEL: ToonCrafterNativeModel around the UNet
    vae: comfy.model_patcher.ModelPatcher
    image_proj: comfy.model_patcher.ModelPatcher  # the Resampler, always in the file
    text: Optional[comfy.model_patcher.ModelPatcher]  # None for the pruned file; the `clip`'s patcher
    vision: Optional[comfy.model_patcher.ModelPatcher]
    unet_dtype: torch.dtype
    vae_dtype: torch.dtype
    encoder_dtype: torch.dtype
    clip: Optional[comfy.sd.CLIP] = None  # the text encoder for CLIPTextEncode (None for the pruned file)
    # The all-zero image's resampled context per dtype, with a weak reference to the vision model it
    # came from: a constant of those weights.
    negative_images: dict = field(default_factory=dict)

    @property
    def text_encoder(self):
        """The core's text encoder inside the `text` patcher."""
        return self.text.model.encoder

    @property
    def has_encoders(self) -> bool:
        return self.text is not None and self.vision is not None


def _patcher(module: nn.Module, load_device, offload_device) -> comfy.model_patcher.ModelPatcher:
    return comfy.model_patcher.ModelPatcher(module, load_device=load_device, offload_device=offload_device)


# The VAE's compute dtype by name; auto lets ComfyUI pick (bf16 where the device has it, else fp32).
VAE_DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load(name: str, weight_dtype: str = "auto", compile: bool = False, vae_dtype: str = "auto") -> ToonCrafterModel:
    path = resolve_checkpoint(name)
    dtype = WEIGHT_DTYPES[weight_dtype]
    if dtype in FP8_DTYPES:
        # fp8 is for the UNet's Linear and Conv weights; the rest keeps the file's precision (auto).
        model = load_model(path, unet_weight_dtype=dtype, operations=comfy.ops.manual_cast)
    else:
        model = load_model(path, dtype=dtype, operations=comfy.ops.manual_cast)
    stored = model.unet.input_blocks[0][0].weight.dtype
    if compile:
        prepare(model, RuntimeOptions(compile=True))

    unet_device = mm.get_torch_device()
    supported = [torch.float16, torch.bfloat16, torch.float32]
    if stored == torch.bfloat16:
        # ComfyUI tries fp16 first; weights chosen as bf16 ask for bf16's range, the fix for fp16
        # overflow, so bf16 goes first where the device has it.
        supported = [torch.bfloat16, torch.float16, torch.float32]
    if stored in FP8_DTYPES:
        # As ComfyUI does for its own fp8 diffusion models: the weights stay fp8 and the manual_cast
        # layers compute in what unet_manual_cast picks (fp16 or bf16 on a GPU, fp32 on the CPU).
        unet_dtype = mm.unet_manual_cast(stored, unet_device, supported)
    else:
        unet_dtype = mm.unet_dtype(
            unet_device,
            model_params=sum(p.numel() for p in model.unet.parameters()),
            supported_dtypes=supported,
            weight_dtype=stored,
        )
    vae_device = mm.vae_device()
    enc_device = mm.text_encoder_device()
    encoder_dtype = mm.text_encoder_dtype(enc_device)
    clip = None
    if model.cond_stage_model is not None:
        clip = native_model.checkpoint_clip(model.cond_stage_model, encoder_dtype, enc_device, mm.text_encoder_offload_device())
    handle = ToonCrafterModel(
        name=name,
        config=model.config,
        schedule=model.schedule,
        unet=native_model.native_patcher(
            model.unet, model.schedule, model.config.vae.scale_factor, unet_dtype, unet_device, mm.unet_offload_device()
        ),
        vae=_patcher(model.vae, vae_device, mm.vae_offload_device()),
        image_proj=_patcher(model.image_proj_model, enc_device, mm.text_encoder_offload_device()),
        text=clip.patcher if clip is not None else None,
        vision=_patcher(model.embedder, enc_device, mm.text_encoder_offload_device()) if model.embedder else None,
        unet_dtype=unet_dtype,
        vae_dtype=VAE_DTYPES[vae_dtype] or mm.vae_dtype(vae_device, [torch.bfloat16, torch.float32]),
        encoder_dtype=encoder_dtype,
        clip=clip,
    )
    log.info(
        "%s (%s) loaded: weights %s, UNet compute %s on %s, encoders %s",
        name,
        model.config.kind_name,
        stored,
        unet_dtype,
        unet_device,
        "in the file" if handle.has_encoders else "not in the file (use CLIP / CLIP_VISION inputs)",
    )
    return handle


def rgb(images: torch.Tensor, name: str) -> torch.Tensor:
    """IMAGE (b H W c) -> (b 3 H W): alpha dropped, one gray channel repeated; `name` is the input's."""
    return pixels(images, name)[:, :3]


def pixels(images: torch.Tensor, name: str) -> torch.Tensor:
    """IMAGE (b H W c) -> (b 3 H W), or (b 4 H W) where it has alpha; one gray channel repeated."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise errors.InputError(f"{name} must be an IMAGE batch (batch, height, width, 1/3/4 channels), got {tuple(images.shape)}")
    images = images.movedim(-1, 1)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


# ---------------------------------------------------------------------------------------------
# Running the core's stages on ComfyUI-managed devices. Glue only: the math is in tooncrafter_core.


def _out(t: torch.Tensor) -> torch.Tensor:
    return t.to(mm.intermediate_device())


def text_context(handle: ToonCrafterModel, prompts: list[str], clip=None) -> torch.Tensor:
    """(n 77 d) from our OpenCLIP text tower, or from a ComfyUI CLIP (SD 2.x / OpenCLIP ViT-H)."""
    if clip is not None:
        hidden = torch.cat([clip.encode_from_tokens(clip.tokenize(p)) for p in prompts])
        return _out(conditioning.external_text_context(hidden, handle.config))
    if handle.text is None:
        raise errors.InputError(
            f"{handle.name} has no text encoder (pruned file): connect a CLIP (CLIPLoader with an SD 2.x / "
            "OpenCLIP ViT-H text encoder, type stable_diffusion) to the clip input"
        )
    mm.load_models_gpu([handle.text])
    with torch.inference_mode():
        ctx = conditioning.encode_prompts(handle.text_encoder, prompts, handle.text.load_device, handle.encoder_dtype)
    return _out(ctx)


def conditioning_text(handle: ToonCrafterModel, entries: list, name: str, batch: int) -> tuple[torch.Tensor, dict]:
    """A CLIPTextEncode CONDITIONING (one entry, OpenCLIP ViT-H) -> ((batch 77 d) text context, its options)."""
    if not entries:
        raise errors.InputError(f"{name} is empty: connect a CLIPTextEncode with the OpenCLIP ViT-H text encoder")
    if len(entries) > 1:
        raise errors.InputError(f"{name} holds {len(entries)} conditionings; ToonCrafter takes one (no combine/concat)")
    hidden, options = entries[0]
    context = conditioning.external_text_context(hidden, handle.config)
    if context.shape[0] not in (1, batch):
        raise errors.InputError(f"{name} has a batch of {context.shape[0]} prompts for {batch} keyframe pairs")
    return _out(context.expand(batch, -1, -1)), {k: v for k, v in options.items() if k != "pooled_output"}


def _vision_tokens(handle: ToonCrafterModel, pixels: torch.Tensor, clip_vision=None) -> torch.Tensor:
    if clip_vision is not None:
        mm.load_models_gpu([clip_vision.patcher])
        tokens = clip_vision.model(pixel_values=pixels.to(clip_vision.load_device), intermediate_output=-2)[0]
        conditioning.check_vision_tokens(tokens, handle.config)
        mm.load_models_gpu([handle.image_proj])
        return tokens
    mm.load_models_gpu([handle.vision, handle.image_proj])
    return handle.vision.model.model.visual(pixels.to(handle.image_proj.load_device, handle.encoder_dtype))


def image_contexts(handle: ToonCrafterModel, images: torch.Tensor, clip_vision=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Resampled image contexts (n (t q) d) of `images` (n 3 H W, [-1, 1]) and of the original's
    unconditional all-zero image. The latter is a constant of the vision model: it goes through it once
    (alone: a batch with the images would change their rounding between the first Queue and the next)
    and is kept on the handle, per vision model and dtype."""
    device, dtype = handle.image_proj.load_device, handle.encoder_dtype
    if clip_vision is None and handle.vision is None:
        raise errors.InputError(
            f"{handle.name} has no image encoder (pruned file): connect a CLIP_VISION "
            "(CLIPVisionLoader with clip_vision_h.safetensors, OpenCLIP ViT-H-14) to the clip_vision input"
        )
    vision = handle.vision if clip_vision is None else clip_vision.model
    owner, negative = handle.negative_images.get(dtype, (None, None))
    with torch.inference_mode():
        # A weak reference: the entry must not keep a replaced CLIP_VISION (1.2 GB) alive, nor be taken
        # for the context of another one that reuses its address.
        if negative is None or owner() is not vision:
            _, negative = conditioning.negative_image_context(
                lambda pixels: _vision_tokens(handle, pixels, clip_vision), handle.image_proj.model, handle.config.vision,
                device, dtype,
            )
            negative = _out(negative)
            handle.negative_images[dtype] = (weakref.ref(vision), negative)
        tokens = _vision_tokens(handle, encoders.clip_pixels(images, handle.config.vision), clip_vision)
        ctx = _out(handle.image_proj.model(tokens.to(device, dtype)))
    return ctx, negative.expand(images.shape[0], -1, -1)


def encode_keyframes(handle: ToonCrafterModel, *images: torch.Tensor) -> keyframes.KeyframeEncoding:
    """Keyframes (b 3 H W) in [-1, 1] (start and end, or the one image of image-to-video) -> their encoding."""
    mm.load_models_gpu([handle.vae])
    device = handle.vae.load_device
    with torch.inference_mode():
        enc = keyframes.encode_keyframes(handle.vae.model, *(im.to(device, handle.vae_dtype) for im in images))
    return keyframes.KeyframeEncoding(_out(enc.mean.float()), _out(enc.logvar.float()), [_out(r) for r in enc.refs])


def sample(
    handle: ToonCrafterModel, positive: list, negative: list, latent: torch.Tensor, sampling: SamplingConfig, seed: int, callback
) -> torch.Tensor:
    """The original's DDIM through ComfyUI's sampling with the native model: the conditioning as
    ToonCrafter Conditioning made it (keyframes, context, frame stride, sketch controls), the
    original's timesteps, guidance and rescale. The same seed gives the same draws as the core's
    `interpolate`. `callback(step, x0, x, total)` as ComfyUI's. -> the finished run's latent."""
    model = native_model.with_guidance_rescale(handle.unet, sampling.guidance_rescale)
    sigmas = model.model.levels.ddim_sigmas(ddim_timesteps(sampling.steps, sampling.timestep_spacing))
    noise = comfy.sample.prepare_noise(latent, seed)
    try:
        return comfy.sample.sample_custom(
            model, noise, sampling.cfg_scale, native_model.ddim_sampler(sampling.eta), sigmas, positive, negative,
            latent, callback=callback, disable_pbar=True, seed=seed,
        )
    except SamplingOverflowError as e:
        raise FloatingPointError(
            f"{e}. In ComfyUI: set weight_dtype to bf16 in Load ToonCrafter Model, or start ComfyUI with "
            "--bf16-unet or --fp32-unet; with a Load ToonCrafter LoRA, lower its strength"
        ) from None


def with_lora(handle: ToonCrafterModel, name: str, strength: float) -> ToonCrafterModel:
    """A handle whose UNet patcher is a clone carrying the LoRA as ModelPatcher patches: ComfyUI
    adds them when it loads the UNet (partially loaded layers too) and takes them off again for a
    patcher without them, so the base weights come back when the node is bypassed or removed."""
    if strength == 0:
        return handle
    path = folder_paths.get_full_path_or_raise("loras", name)
    adapter = lora.load_lora(path, lora.adaptable_shapes(handle.unet.model.diffusion_model.state_dict(keep_vars=True)))
    # ComfyUI's LoRA math is `strength * (alpha / rank) * up @ down`: alpha carries our scale.
    patches = {
        UNET_KEY_PREFIX + key: LoRAAdapter(set(), (layer.up, layer.down, layer.scale * layer.rank, None, None, None))
        for key, layer in adapter.layers.items()
    }
    unet = handle.unet.clone()
    applied = unet.add_patches(patches, strength)
    log.info("ToonCrafter LoRA %s at strength %g: %d UNet layers", adapter.name, strength, len(applied))
    return replace(handle, unet=unet)


def decode(handle: ToonCrafterModel, latents: torch.Tensor, refs, second_decode: bool, chunk: Optional[int]) -> torch.Tensor:
    """-> frames (b 3 t H W) in [0, 1] on the intermediate device. `chunk` None: the whole clip when
    it fits in the memory left after ComfyUI makes room for it, else the largest chunk that fits."""
    b, _, t, h, w = latents.shape
    f = handle.config.vae.downsample_factor
    device, dtype = handle.vae.load_device, handle.vae_dtype
    shape = (handle.config.vae, b, t, h * f, w * f, dtype)
    # ComfyUI offloads other models (the UNet) until the whole decode fits, or at least one chunk.
    mm.load_models_gpu(
        [handle.vae],
        memory_required=decode_memory_bytes(*shape, chunk, DECODE_OVERLAP),
        minimum_memory_required=decode_memory_bytes(*shape, chunk or 1, DECODE_OVERLAP),
    )
    if chunk is None:
        free = mm.get_free_memory(device) - mm.extra_reserved_memory()
        chunk = auto_decode_chunk(*shape, free, DECODE_OVERLAP)
        if chunk is not None:
            need = decode_memory_bytes(*shape, chunk, DECODE_OVERLAP)
            log.info(
                "ToonCrafter decode: %.2f GiB free on %s, the whole clip needs about %.2f GiB: decoding %d frames "
                "at a time with %d context frames on each side (about %.2f GiB)",
                free / 2**30, device, decode_memory_bytes(*shape) / 2**30, chunk, DECODE_OVERLAP, need / 2**30,
            )
            if need > free:
                log.warning("ToonCrafter decode: even one frame at a time may not fit; it may run out of memory")
    with torch.inference_mode():
        _, video = decoding.decode(
            handle.vae.model,
            latents.to(device, dtype),
            [r.to(device, dtype) for r in refs],
            second_decode,
            chunk,
            DECODE_OVERLAP,
        )
    return _out(frames.from_model(video))


# ---------------------------------------------------------------------------------------------
# Sketch guidance


SKETCH_FOLDER = "controlnet"


def sketch_encoder_choices() -> list[str]:
    """Files in models/controlnet, then the released sketch encoders not downloaded yet."""
    return _choices(SKETCH_FOLDER, catalog.SKETCH_ENCODERS)


def load_sketch_encoder(name: str) -> comfy.model_patcher.ModelPatcher:
    path = _resolve(SKETCH_FOLDER, name, catalog.SKETCH_ENCODERS, "sketch encoder")
    encoder = load_sketch_encoder_file(path, operations=comfy.ops.manual_cast)
    return _patcher(encoder, mm.get_torch_device(), mm.unet_offload_device())


def sketch_control(encoder, drawn: torch.Tensor, frame_indices: str, strength: float, resize: str, latent_shape):
    """IMAGE sketches (k H W c) -> the control that steers latents of `latent_shape` (b z t h w)."""
    _, _, t, h, w = latent_shape
    f = HINT_DOWNSAMPLE
    try:
        hint = sketches.place_sketches(
            sketches.sketch_hint(rgb(drawn, "sketches").float(), h * f, w * f, resize),
            sketches.parse_frame_indices(frame_indices),
            t,
        )
    except ValueError as e:
        raise errors.InputError(f"ToonCrafter Apply Sketch: {e} (sketches input / frame_indices)") from None
    return SketchControl(encoder, hint, strength)
