"""Checkpoint loading: `.ckpt` (pickle, weights only), `.safetensors`, fp16 and pruned fp16 files.

The model is built on the meta device and loaded with `assign=True`, so no weight is initialised
or copied twice. Loading is strict except for the named table `CHECKPOINT_ONLY_KEYS`.
The UNet's Linear and Conv weights can be stored in fp8 (`unet_weight_dtype`); the UNet is then
built from casting layers and computes in the activations' dtype.
Architecture comes from an original-format yaml with the checkpoint's stem when one sits beside
it, else from the weight shapes (`infer_config`).
"""

from __future__ import annotations

import logging
import pickle
import re
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

import torch
from torch import nn

from ..models.config import (
    BASE_SCALE_1024,
    ConfigError,
    ModelConfig,
    ResamplerConfig,
    ScheduleConfig,
    TextEncoderConfig,
    UNetConfig,
    VAEConfig,
    VisionEncoderConfig,
    from_original_yaml,
    kind_fields,
)
from ..models.ops import CastWeights, Default
from ..models.schedule import SCHEDULE_KEYS, Schedule
from ..models.tooncrafter import ToonCrafter
from . import catalog, safetensors_file

log = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model."
VISION_PREFIX = "embedder."

# Keys a released checkpoint holds that no module of ours loads, and why.
CHECKPOINT_ONLY_KEYS: dict[str, str] = {
    **{k: "schedule buffer, recomputed in float64 from the config" for k in SCHEDULE_KEYS},
    **{
        VISION_PREFIX + "model." + k: "text-side leftover of the OpenCLIP image embedder, never used"
        for k in (
            "token_embedding.weight",
            "positional_embedding",
            "ln_final.weight",
            "ln_final.bias",
            "text_projection",
            "logit_scale",
        )
    },
}

# Keys a release names otherwise than our modules, renamed on loading as the original's loader does:
# DynamiCrafter 256 calls the frame-stride embedding `framestride_embed`.
RENAMED_KEYS: dict[str, str] = {"model.diffusion_model.framestride_embed.": "model.diffusion_model.fps_embedding."}


def rename_keys(state: dict) -> dict:
    """`state` with RENAMED_KEYS applied (the same tensors; shapes dicts work too)."""
    if not any(k.startswith(old) for k in state for old in RENAMED_KEYS):
        return state
    out = {}
    for key, value in state.items():
        for old, new in RENAMED_KEYS.items():
            if key.startswith(old):
                key = new + key[len(old):]
        out[key] = value
    return out


# Storage-only dtypes: no matmul or convolution takes them, so their layers must cast at run time.
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# The weight dtypes hosts offer by name (CLI --weight-dtype, the loader node, the benchmark).
WEIGHT_DTYPES = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message says which file and what to do."""


def read_state_dict(path: str | Path, keep: Optional[Callable[[str], bool]] = None) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file on the CPU (the `state_dict` entry of a Lightning .ckpt): all, or
    those whose key `keep` accepts. The others are never read into memory (safetensors is read tensor by
    tensor, a zip .ckpt is memory-mapped)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return safetensors_file.read_tensors(path, keep)
        except safetensors_file.SafetensorsError as e:
            raise CheckpointError(f"{path.name} is not a readable safetensors file ({e}); download it again") from None
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        if not _pickle_or_zip(path):
            raise CheckpointError(
                f"{path.name} is not a readable PyTorch checkpoint (neither a zip archive nor a pickle: the file is "
                "damaged or of another kind); download it again"
            ) from None
        raise CheckpointError(
            f"refusing to load {path.name}: its pickle wants to run code or build objects other than "
            f"tensors, which could be malicious. Use the .safetensors release of the model instead. ({_reason(e)})"
        ) from None
    except Exception as e:  # torch.load's parsers fail in many ways on a damaged file (struct.error, EOFError, ...)
        raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint ({_reason(e)}); download it again") from None
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path.name} does not hold a state dict of tensors")
    return {k: v for k, v in obj.items() if keep is None or keep(k)}


def _reason(error: BaseException) -> str:
    """torch.load's explanation in one line: the unpickler's own complaint where it gives one."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return lines[i + 1]
    return lines[0] if lines else type(error).__name__


def checkpoint_shapes(path: str | Path) -> dict[str, tuple]:
    """Every key of a checkpoint file with its shape, without reading the tensors."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        try:
            header, _ = safetensors_file.read_header(path)
        except safetensors_file.SafetensorsError as e:
            raise CheckpointError(f"{path.name} is not a readable safetensors file ({e}); download it again") from None
        return {k: tuple(info["shape"]) for k, info in header.items()}
    return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}


def _pickle_or_zip(path: Path) -> bool:
    """Whether a file starts as torch.save writes: a zip archive, or a pickle of protocol 2 or later."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head == b"PK" or head[:1] == b"\x80"


# Key prefixes of other model families, most specific first: (prefixes that must all be present, name).
_FOREIGN_FAMILIES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("conditioner.embedders.", "model.diffusion_model.input_blocks.1.0.time_stack."), "a Stable Video Diffusion (SVD) checkpoint"),
    (("conditioner.embedders.",), "an SDXL-style (sgm) checkpoint"),
    (("cond_stage_model.transformer.",), "a Stable Diffusion 1.x checkpoint"),
    (("cond_stage_model.model.transformer.", "model.diffusion_model."), "a Stable Diffusion 2.x checkpoint"),
    (("lora_unet_",), "a LoRA"),
    (("base_model.model.",), "a LoRA"),
)


def check_is_tooncrafter(keys: Iterable[str], name: str) -> None:
    """Refuse state dicts of other models: every file of the family (ToonCrafter or DynamiCrafter, full or
    pruned) holds the Resampler."""
    keys = list(keys)
    if any(k.startswith("image_proj_model.") for k in keys):
        return
    family = next(
        (what for prefixes, what in _FOREIGN_FAMILIES if all(any(k.startswith(p) for k in keys) for p in prefixes)),
        "another model",
    )
    fix = (
        "load it with --lora or the Load ToonCrafter LoRA node"
        if family == "a LoRA"
        else "use a ToonCrafter checkpoint, e.g. tooncrafter_512_interp-fp16.safetensors (see the README's Checkpoints)"
    )
    raise CheckpointError(
        f"{name} is not a ToonCrafter or DynamiCrafter checkpoint: its keys are those of {family} "
        f"(no image_proj_model.*, the Resampler every file of the family holds); {fix}"
    )


def _count(keys: Iterable[str], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def _infer_unet(shapes: Mapping[str, tuple], p: str = "model.diffusion_model.") -> UNetConfig:
    s = lambda k: shapes[p + k]  # noqa: E731
    keys = [k[len(p) :] for k in shapes if k.startswith(p)]
    mc, in_ch = s("input_blocks.0.0.weight")[:2]
    n_blocks = _count(keys, r"input_blocks\.(\d+)\.")
    downs = sorted(int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.weight$", k)))
    nrb = (downs[0] - 1) if downs else n_blocks - 1
    levels = len(downs) + 1
    mult, attn_res = [], []
    depth, temporal_attention, use_linear = 1, False, True
    for level in range(levels):
        idx = 1 + level * (nrb + 1)
        mult.append(s(f"input_blocks.{idx}.0.out_layers.3.weight")[0] // mc)
        if p + f"input_blocks.{idx}.1.norm.weight" in shapes:
            attn_res.append(2**level)
            depth = _count(keys, rf"input_blocks\.{idx}\.1\.transformer_blocks\.(\d+)\.")
            temporal_attention = p + f"input_blocks.{idx}.2.norm.weight" in shapes
            use_linear = len(s(f"input_blocks.{idx}.1.proj_in.weight")) == 2
    ip = [k for k in keys if k.endswith("attn2.to_k_ip.weight")]
    context_dim = s(ip[0])[1] if ip else s(next(k for k in keys if k.endswith("attn2.to_k.weight") and ".1.transformer" in k))[1]
    head_ch = s("init_attn.0.proj_in.weight")[0] // UNetConfig.init_attn_heads if p + "init_attn.0.proj_in.weight" in shapes else 64
    latents = shapes.get("image_proj_model.latents")
    return UNetConfig(
        in_channels=in_ch,
        out_channels=s("out.2.weight")[0],
        model_channels=mc,
        attention_resolutions=tuple(reversed(attn_res)),  # the yaml lists them deepest first
        num_res_blocks=nrb,
        channel_mult=tuple(mult),
        num_head_channels=head_ch,
        transformer_depth=depth,
        context_dim=context_dim,
        use_linear=use_linear,
        temporal_conv=any("temopral_conv" in k for k in keys),
        temporal_attention=temporal_attention,
        temporal_length=latents[1] // ResamplerConfig.num_queries if latents else 16,
        addition_attention=p + "init_attn.0.norm.weight" in shapes,
        image_cross_attention=bool(ip),
        image_cross_attention_scale_learnable=any(k.endswith("attn2.alpha") for k in keys),
        fs_condition=p + "fps_embedding.0.weight" in shapes,
    )


def _infer_vae(shapes: Mapping[str, tuple], p: str = "first_stage_model.") -> VAEConfig:
    s = lambda k: shapes[p + k]  # noqa: E731
    keys = [k[len(p) :] for k in shapes if k.startswith(p)]
    if any(re.match(r"encoder\.down\.\d+\.attn\.", k) for k in keys):
        raise ConfigError("VAE with attention blocks in the encoder levels: put the original yaml next to the checkpoint")
    ch = s("encoder.conv_in.weight")[0]
    levels = _count(keys, r"encoder\.down\.(\d+)\.")
    fusion = sorted(int(m.group(1)) for k in keys if (m := re.match(r"decoder\.attn_refinement\.(\d+)\.to_q\.weight$", k)))
    inner = s(f"decoder.attn_refinement.{fusion[0]}.to_q.weight")[0] if fusion else 512
    return VAEConfig(
        reference_decoder=bool(fusion),
        embed_dim=s("quant_conv.weight")[0] // 2,
        z_channels=s("decoder.conv_in.weight")[1],
        in_channels=s("encoder.conv_in.weight")[1],
        out_ch=s("decoder.conv_out.weight")[0],
        ch=ch,
        ch_mult=tuple(s(f"encoder.down.{i}.block.0.conv1.weight")[0] // ch for i in range(levels)),
        num_res_blocks=_count(keys, r"encoder\.down\.0\.block\.(\d+)\."),
        attn_levels=tuple(fusion),
        fusion_heads=inner // VAEConfig.fusion_dim_head,
    )


# OpenCLIP keeps head widths out of the weights; these are its conventions for the vision widths.
_VISION_HEAD_WIDTH = {1280: 80, 1664: 104}


def _infer_text(shapes: Mapping[str, tuple], p: str = "cond_stage_model.model.") -> TextEncoderConfig:
    vocab, width = shapes[p + "token_embedding.weight"]
    return TextEncoderConfig(
        context_length=shapes[p + "positional_embedding"][0],
        vocab_size=vocab,
        width=width,
        heads=width // 64,
        layers=_count(shapes, rf"{re.escape(p)}transformer\.resblocks\.(\d+)\."),
        mlp_ratio=shapes[p + "transformer.resblocks.0.mlp.c_fc.weight"][0] / width,
        embed_dim=shapes[p + "text_projection"][1],
    )


def _infer_vision(shapes: Mapping[str, tuple], p: str = "embedder.model.visual.") -> VisionEncoderConfig:
    width, _, patch, _ = shapes[p + "conv1.weight"]
    grid = round((shapes[p + "positional_embedding"][0] - 1) ** 0.5)
    return VisionEncoderConfig(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        head_width=_VISION_HEAD_WIDTH.get(width, 64),
        layers=_count(shapes, rf"{re.escape(p)}transformer\.resblocks\.(\d+)\."),
        mlp_ratio=shapes[p + "transformer.resblocks.0.mlp.c_fc.weight"][0] / width,
        embed_dim=shapes[p + "proj"][1],
    )


def _infer_resampler(shapes: Mapping[str, tuple], p: str = "image_proj_model.") -> ResamplerConfig:
    dim, emb = shapes[p + "proj_in.weight"]
    inner = shapes[p + "layers.0.0.to_q.weight"][0]
    return ResamplerConfig(
        dim=dim,
        depth=_count(shapes, rf"{re.escape(p)}layers\.(\d+)\."),
        dim_head=64,
        heads=inner // 64,
        embedding_dim=emb,
        output_dim=shapes[p + "proj_out.weight"][0],
        ff_mult=shapes[p + "layers.0.1.1.weight"][0] // dim,
        video_length=shapes[p + "latents"][1] // ResamplerConfig.num_queries,
    )


def infer_schedule(buffers: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple]) -> ScheduleConfig:
    """The noise process from the schedule buffers a release carries: zero terminal SNR (ᾱ at the last
    timestep is 0), the prediction (a v model's `sqrt_recip(m1)_alphas_cumprod` are all zero, as the
    original registers them), the dynamic rescale and its base (`scale_arr`). Without buffers: the
    frame-stride embedding marks DynamiCrafter 256 (ε, plain schedule), anything else is ToonCrafter's."""
    ac = buffers.get("alphas_cumprod")
    recip = buffers.get("sqrt_recip_alphas_cumprod")
    if ac is None or recip is None or ac.is_meta or recip.is_meta:
        if any(k.startswith("model.diffusion_model.framestride_embed.") for k in shapes):
            return ScheduleConfig(rescale_betas_zero_snr=False, parameterization="eps", use_dynamic_rescale=False)
        return ScheduleConfig()
    scale = buffers.get("scale_arr")
    return ScheduleConfig(
        timesteps=ac.shape[0],
        rescale_betas_zero_snr=float(ac[-1]) < 1e-6,
        parameterization="eps" if recip.float().abs().sum() > 0 else "v",
        use_dynamic_rescale=scale is not None,
        base_scale=round(float(scale[-1]), 6) if scale is not None else ScheduleConfig.base_scale,
        turning_step=scale.shape[0] - ac.shape[0] if scale is not None else ScheduleConfig.turning_step,
    )


def infer_config(shapes: Mapping[str, tuple], buffers: Optional[Mapping[str, torch.Tensor]] = None) -> ModelConfig:
    """Architecture from weight shapes and the kind from the schedule buffers (`infer_schedule`), for the
    released model family (head widths as released)."""
    shapes = {k: tuple(v) for k, v in rename_keys(dict(shapes)).items()}
    try:
        schedule = infer_schedule(buffers or {}, shapes)
        unet = _infer_unet(shapes)
        vae = _infer_vae(shapes)
        # The trained size and the UNet's own fs default of each release (the yaml's image_size, default_fs).
        if schedule.parameterization == "eps":
            latent_size, default_fs = (32, 32), 3
        elif schedule.use_dynamic_rescale and abs(schedule.base_scale - BASE_SCALE_1024) < 1e-6:
            latent_size, default_fs = (72, 128), 10
        else:
            latent_size, default_fs = (40, 64), 24
        unet = replace(unet, default_fs=default_fs)
        kind = kind_fields(vae.reference_decoder, schedule.parameterization, schedule.base_scale, False, default_fs)
        if schedule.parameterization == "eps":
            kind["fs_meaning"] = "frame stride"
        cfg = ModelConfig(
            unet=unet,
            vae=vae,
            resampler=_infer_resampler(shapes),
            schedule=schedule,
            latent_size=latent_size,
            **kind,
        )
        if TEXT_PREFIX + "model.token_embedding.weight" in shapes:
            cfg = replace(cfg, text=_infer_text(shapes))
        if VISION_PREFIX + "model.visual.conv1.weight" in shapes:
            cfg = replace(cfg, vision=_infer_vision(shapes))
    except (KeyError, IndexError, StopIteration) as e:
        raise ConfigError(
            f"cannot read a ToonCrafter architecture from these weights (no {e}); is this a ToonCrafter "
            "checkpoint? For a custom architecture put its original yaml next to it with the same name"
        ) from None
    return cfg


def config_for(path: str | Path, shapes: Mapping[str, tuple], buffers: Optional[Mapping[str, torch.Tensor]] = None) -> ModelConfig:
    """The yaml beside the checkpoint (same stem) if there is one, else the weights' architecture and kind;
    a released file's catalogue entry says which conditioning it was trained with (the weights of
    DynamiCrafter's 512 image-to-video and interpolation releases cannot tell)."""
    path = Path(path)
    for suffix in (".yaml", ".yml"):
        yaml = path.with_suffix(suffix)
        if yaml.is_file():
            log.info("architecture from %s", yaml.name)
            return from_original_yaml(yaml)
    config = infer_config(shapes, buffers)
    entry = catalog.find(path.name)
    if entry is not None and entry.tasks and set(entry.tasks) <= set(config.tasks):
        config = replace(config, tasks=entry.tasks, fs_default=entry.fs_default or config.fs_default)
    return config


def _check_schedule(state: Mapping[str, torch.Tensor], schedule: Schedule, name: str) -> None:
    for key, ours in schedule.buffers().items():
        theirs = state.get(key)
        if theirs is None:
            continue
        if theirs.shape != ours.shape:
            raise CheckpointError(f"{name}: schedule buffer {key} has shape {tuple(theirs.shape)}, expected {tuple(ours.shape)}")
        if theirs.is_meta:
            continue
        tol = 1e-3 if theirs.dtype in (torch.float16, torch.bfloat16) else 1e-5
        if not torch.allclose(theirs.float(), ours, atol=tol, rtol=tol):
            log.warning("%s: schedule buffer %s differs from the config's schedule; using the config's", name, key)


_TOONCRAFTER_HINT = (
    "is this the right file (tooncrafter_512_interp_v1 or a conversion of it), and if it is a custom model, "
    "is its yaml next to it?"
)


def _mismatch_message(name: str, missing: list[str], unexpected: list[str], what: str, hint: str) -> str:
    def show(keys):
        head = ", ".join(keys[:12])
        return head + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")

    parts = [f"{name} does not match {what}"]
    if missing:
        parts.append(f"missing keys: {show(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {show(unexpected)}")
    parts.append(hint)
    return "; ".join(parts)


# What reading an architecture from a file's names and shapes, and building it, raise when they describe none.
SHAPE_ERRORS = (KeyError, IndexError, StopIteration, ValueError, TypeError, ZeroDivisionError, RuntimeError)


def one_line(error: BaseException) -> str:
    """`Type: first line` of an exception, to quote inside a one-line message."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else 'no detail'}"


def check_keys(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    name: str,
    what: str = "the ToonCrafter architecture",
    hint: str = _TOONCRAFTER_HINT,
) -> None:
    """CheckpointError unless `state` has exactly the keys of `expected`, each of its shape, and floating-point
    tensors where `expected` has them (loading keeps a file's dtype when no dtype is asked for)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(_mismatch_message(name, missing, unexpected, what, hint))
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items() if state[k].shape != v.shape
    ]
    if wrong:
        raise CheckpointError(f"{name}: tensors of the wrong shape: {', '.join(wrong[:12])}")
    integer = [k for k, v in expected.items() if v.is_floating_point() and not state[k].is_floating_point()]
    if integer:
        raise CheckpointError(
            f"{name}: {len(integer)} of its tensors are not floating point ({', '.join(integer[:4])}) where {what} has "
            f"floating-point weights: the file is damaged or not this model's; {hint}"
        )


def unet_matrix_keys(model: ToonCrafter) -> set[str]:
    """State-dict keys of the UNet's Linear and Conv weights: the tensors `unet_weight_dtype` stores.

    Only these go to fp8: they are 99.93 % of the UNet's parameters, and their layers cast at run
    time. Biases, norm scales and the image-attention `alpha` keep the other weights' dtype: they
    are added to or multiply activations directly, with no dot product to average their rounding
    away, and storing them in fp8 would save under 1 MB.
    """
    return {
        f"{UNET_PREFIX}{name}.weight"
        for name, module in model.unet.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
    }


def _cast_in_place(state: dict[str, torch.Tensor], dtype: Optional[torch.dtype], overrides: dict[str, torch.dtype]) -> None:
    """Floating tensors of `state` to `overrides[key]`, else to `dtype` (None keeps theirs), replacing
    each entry so its source tensor is freed as soon as the copy exists (no second state dict)."""
    for key, tensor in state.items():
        target = overrides.get(key, dtype)
        if target is not None and tensor.is_floating_point() and tensor.dtype != target:
            # Trained weights are far inside fp8's range (e4m3fn saturates at +-448, e5m2 at 57344),
            # so a plain round-to-nearest cast is all ComfyUI does too.
            state[key] = tensor.to(target)


def load_state_into(
    model: ToonCrafter,
    state: dict[str, torch.Tensor],
    name: str = "checkpoint",
    dtype: Optional[torch.dtype] = None,
    unet_weight_dtype: Optional[torch.dtype] = None,
    part: Optional[Callable[[str], bool]] = None,
    vae_dtype: Optional[torch.dtype] = None,
) -> None:
    """Strict, assigning load of `state` into a (meta-built) model; CHECKPOINT_ONLY_KEYS are checked and dropped.

    `state` is consumed: CHECKPOINT_ONLY_KEYS are removed from it, its tensors are cast in place
    (`dtype`, `unet_weight_dtype` for the UNet's Linear and Conv weights, `vae_dtype` for the VAE's) and
    then belong to the model. `part` loads only the model's keys it accepts (strictly: exactly those).
    """
    _check_schedule(state, model.schedule, name)
    for key in CHECKPOINT_ONLY_KEYS:
        state.pop(key, None)
    renamed = rename_keys(state)
    if renamed is not state:
        state.clear()
        state.update(renamed)
    expected = {k: v for k, v in model.state_dict(keep_vars=True).items() if part is None or part(k)}
    check_keys(expected, state, name)
    overrides = dict.fromkeys(unet_matrix_keys(model), unet_weight_dtype) if unet_weight_dtype is not None else {}
    if vae_dtype is not None:
        overrides.update({k: vae_dtype for k in state if k.startswith(VAE_PREFIX)})
    _cast_in_place(state, dtype, overrides)
    model.load_state_dict(state, strict=part is None, assign=True)
    model.requires_grad_(False)
    model.eval()


def _is_unet(key: str) -> bool:
    return key.startswith(UNET_PREFIX)


def load_model(
    path: str | Path,
    dtype: Optional[torch.dtype] = None,
    config: Optional[ModelConfig] = None,
    operations=Default,
    unet_weight_dtype: Optional[torch.dtype] = None,
    defer_unet: bool = False,
    vae_dtype: Optional[torch.dtype] = None,
) -> ToonCrafter:
    """Build on the meta device and load a checkpoint file (any released layout) on the CPU.

    `dtype` None keeps the file's dtype (no fp32 copy of fp16 weights). A pruned file (no text and
    image encoders) gives a model whose `cond_stage_model` / `embedder` are None.
    `unet_weight_dtype` (e.g. `torch.float8_e4m3fn`) stores the UNet's Linear and Conv weights in
    that dtype instead; with the default `operations` the UNet is then built from `CastWeights`
    layers (a host's own `operations` must cast by themselves), and it computes in the dtype of
    its inputs. `defer_unet` leaves the UNet unread (on the meta device) until `load_deferred_unet`:
    a run can encode first, release the encoders, and only then hold the UNet.
    """
    path = Path(path)
    if defer_unet:
        shapes = checkpoint_shapes(path)
        check_is_tooncrafter(shapes, path.name)
        state = read_state_dict(path, keep=lambda k: not _is_unet(k))
    else:
        state = read_state_dict(path)
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        check_is_tooncrafter(shapes, path.name)
    has_text = any(k.startswith(TEXT_PREFIX) for k in shapes)
    has_vision = any(k.startswith(VISION_PREFIX + "model.visual.") for k in shapes)
    # Only the UNet takes the storage dtype: it holds 1.44 B of the 2.57 B parameters and stays
    # resident through every sampling step, while the encoders run once per clip (a host may
    # offload them) and the VAE is 0.1 B. The encoders and the Resampler also set the conditioning
    # every step depends on, so they keep full precision.
    unet_operations = CastWeights if unet_weight_dtype is not None and operations is Default else operations
    try:  # the architecture is read from the file's names and shapes: any that describe none end here, named
        config = config or config_for(path, shapes, {k: state[k] for k in SCHEDULE_KEYS if k in state})
        with torch.device("meta"):
            model = ToonCrafter(
                config, text_encoder=has_text, image_encoder=has_vision, operations=operations, unet_operations=unet_operations
            )
    except (CheckpointError, ConfigError):
        raise
    except SHAPE_ERRORS as e:
        raise CheckpointError(
            f"{path.name}: its tensors' names and shapes describe no ToonCrafter or DynamiCrafter architecture "
            f"({one_line(e)}); the file is damaged or another model's: download or convert it again"
        ) from None
    if defer_unet:
        expected = {k for k in model.state_dict() if _is_unet(k)}
        missing = [k for k in expected if k not in shapes]
        if missing:
            raise CheckpointError(_mismatch_message(path.name, missing, [], "the ToonCrafter architecture", _TOONCRAFTER_HINT))
        load_state_into(model, state, path.name, dtype, None, part=lambda k: not _is_unet(k), vae_dtype=vae_dtype)
        model.deferred_unet = (path, dtype, unet_weight_dtype)
        log.info("loaded %s without its UNet (read when the encoders are done)", path.name)
        return model
    load_state_into(model, state, path.name, dtype, unet_weight_dtype, vae_dtype=vae_dtype)
    log.info(
        "loaded %s (UNet weights %s, VAE weights %s, text encoder: %s, image encoder: %s)",
        path.name,
        model.unet.out[2].weight.dtype,
        model.vae.encoder.conv_in.weight.dtype,
        has_text,
        has_vision,
    )
    return model


def load_deferred_unet(model: ToonCrafter, device: Optional[torch.device | str] = None) -> None:
    """Read the UNet of a model loaded with `defer_unet` and move it to `device` (nothing to do for
    one loaded whole)."""
    if model.deferred_unet is None:
        return
    path, dtype, unet_weight_dtype = model.deferred_unet
    model.deferred_unet = None
    state = read_state_dict(path, keep=_is_unet)
    load_state_into(model, state, path.name, dtype, unet_weight_dtype, part=_is_unet)
    if device is not None:
        model.model.to(device)
    log.info(
        "loaded the UNet of %s (UNet weights %s, VAE weights %s)",
        path.name, model.unet.out[2].weight.dtype, model.vae.encoder.conv_in.weight.dtype,
    )


def move_model(model: ToonCrafter, device: torch.device | str) -> ToonCrafter:
    """`model.to(device)`, except that a UNet still unread (`defer_unet`) stays unread:
    `load_deferred_unet(model, device)` puts it there."""
    if model.deferred_unet is None:
        return model.to(device)
    for child in model.children():
        if child is not model.model:
            child.to(device)
    return model


def load_for(
    path: str | Path,
    dtype: torch.dtype,
    weight_dtype: Optional[torch.dtype] = None,
    defer_unet: bool = False,
    vae_dtype: Optional[torch.dtype] = None,
) -> ToonCrafter:
    """A model that computes in `dtype` with its weights stored in `weight_dtype` (None: `dtype`), its VAE
    in `vae_dtype` (None: like the rest).

    fp8 storage applies to the UNet's Linear and Conv weights (the rest is in `dtype`); any other
    storage dtype builds every layer as a casting layer that converts its weights at each call.
    `defer_unet`: see `load_model`.
    """
    if weight_dtype in FP8_DTYPES:
        return load_model(path, dtype=dtype, unet_weight_dtype=weight_dtype, defer_unet=defer_unet, vae_dtype=vae_dtype)
    if weight_dtype is None or weight_dtype == dtype:
        return load_model(path, dtype=dtype, defer_unet=defer_unet, vae_dtype=vae_dtype)
    return load_model(path, dtype=weight_dtype, operations=CastWeights, defer_unet=defer_unet, vae_dtype=vae_dtype)
