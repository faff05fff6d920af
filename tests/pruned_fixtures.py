"""Random-weight stand-ins for the files the pruned-checkpoint workflow loads, built in the test.

- `make_vit_h_text_encoder`: an OpenCLIP ViT-H-14 text tower (SD 2.x CLIP) that ComfyUI's
  `CLIPLoader` (type `stable_diffusion`) loads as its SD2 text encoder.
- `make_vit_h_clip_vision`: an OpenCLIP ViT-H-14 vision tower that `CLIPVisionLoader` loads
  with `clip_vision_config_h.json`.
- `make_wide_tiny_pruned`: a tiny ToonCrafter with the real context widths (1024 text, 1280
  vision tokens) and no encoders inside, whose architecture `loading.infer_config` reads back.

Both ViT-H files use ComfyUI's own (Hugging Face) key layout, so ComfyUI loads them without
conversion; sizes are the full ViT-H ones because ComfyUI picks its json config by key names.
Files are written atomically and reused when present (generation is deterministic).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from safetensors.torch import save_file
from torch import nn

from tooncrafter_core.models.config import (
    ModelConfig,
    ResamplerConfig,
    TextEncoderConfig,
    UNetConfig,
    VAEConfig,
    VisionEncoderConfig,
)
from tooncrafter_core.models.schedule import Schedule
from tooncrafter_core.models.tooncrafter import ToonCrafter

log = logging.getLogger(__name__)

# Bump when what a generator writes changes, so cached files from older versions are not reused.
FIXTURE_VERSION = "1"
SEED = 20240601
STD = 0.02

# Names the shipped workflow (workflows/tooncrafter_pruned_fp16_with_comfy_clip.json) selects.
TEXT_ENCODER_NAME = "open_clip_vit_h_text.safetensors"  # under models/text_encoders (or models/clip)
CLIP_VISION_NAME = "clip_vision_h.safetensors"  # under models/clip_vision
PRUNED_STEM = "tooncrafter_wide_tiny_pruned"  # under models/tooncrafter

# The ViT-H-14 towers: the same sizes as comfy/text_encoders/sd2_clip_config.json and
# comfy/clip_vision_config_h.json, which ComfyUI picks by key names and not by shapes.
VIT_H_TEXT = TextEncoderConfig()
VIT_H_VISION = VisionEncoderConfig()

# Latent size cannot be read from weights (infer_config gives the default), so it stays the default
# here; every other field is chosen so infer_config recovers it exactly (Resampler dim_head 64,
# VAE fusion heads of width 64, init_attn heads 8 x num_head_channels).
WIDE_TINY_CONFIG = ModelConfig(
    unet=UNetConfig(
        model_channels=32,
        attention_resolutions=(2, 1),
        num_res_blocks=1,
        channel_mult=(1, 2),
        num_head_channels=16,
        temporal_length=4,
        context_dim=VIT_H_TEXT.width,
    ),
    vae=VAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1),
    resampler=ResamplerConfig(
        dim=64,
        depth=1,
        dim_head=64,
        heads=1,
        embedding_dim=VIT_H_VISION.width,
        output_dim=VIT_H_TEXT.width,
        video_length=4,
    ),
)

Spec = tuple[str, tuple[int, ...], str]  # key, shape, init: "normal" | "ones" | "zeros"


def default_cache_dir() -> Path:
    """Where the test suite keeps generated fixtures between runs on one machine."""
    return Path(tempfile.gettempdir()) / f"tooncrafter-test-fixtures-v{FIXTURE_VERSION}"


def _generator(key: str) -> torch.Generator:
    # Seeded per key, so every tensor is the same whatever order or subset is generated.
    return torch.Generator().manual_seed(SEED ^ zlib.crc32(key.encode()))


def spec_tensor(key: str, shape: tuple[int, ...], init: str, std: float = STD, dtype=torch.float16) -> torch.Tensor:
    """The tensor a generator writes for `key`: ones, zeros or N(0, std) seeded by the key."""
    if init == "ones":
        return torch.ones(shape, dtype=dtype)
    if init == "zeros":
        return torch.zeros(shape, dtype=dtype)
    # normal_ fills fp16 in place: no fp32 copy of the largest (50 M) tensors.
    return torch.empty(shape, dtype=dtype).normal_(0.0, std, generator=_generator(key))


def _write_atomic(path: Path, build: Callable[[], dict[str, torch.Tensor]]) -> Path:
    """Write `build()` to `path` unless it exists; a crash mid-write never leaves a partial file."""
    path = Path(path)
    if path.is_file():
        log.info("reusing %s", path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = build()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.chmod(0o644)  # safetensors creates 0600; a ComfyUI run as another user must read it
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s (%d tensors, %.0f MB)", path, len(tensors), path.stat().st_size / 1e6)
    return path


def _hf_encoder_layers(prefix: str, layers: int, width: int, hidden: int) -> Iterator[Spec]:
    """Keys of ComfyUI's `comfy.clip_model.CLIPEncoder` (Hugging Face CLIP names)."""
    for i in range(layers):
        p = f"{prefix}encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            yield p + norm + ".weight", (width,), "ones"
            yield p + norm + ".bias", (width,), "zeros"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield p + f"self_attn.{proj}.weight", (width, width), "normal"
            yield p + f"self_attn.{proj}.bias", (width,), "normal"
        yield p + "mlp.fc1.weight", (hidden, width), "normal"
        yield p + "mlp.fc1.bias", (hidden,), "normal"
        yield p + "mlp.fc2.weight", (width, hidden), "normal"
        yield p + "mlp.fc2.bias", (width,), "normal"


def vit_h_text_specs(cfg: TextEncoderConfig = VIT_H_TEXT) -> list[Spec]:
    """Keys of `comfy.clip_model.CLIPTextModel` for the SD2 (OpenCLIP ViT-H) text tower."""
    w = cfg.width
    return [
        ("text_model.embeddings.token_embedding.weight", (cfg.vocab_size, w), "normal"),
        ("text_model.embeddings.position_embedding.weight", (cfg.context_length, w), "normal"),
        *_hf_encoder_layers("text_model.", cfg.layers, w, int(w * cfg.mlp_ratio)),
        ("text_model.final_layer_norm.weight", (w,), "ones"),
        ("text_model.final_layer_norm.bias", (w,), "zeros"),
        # ComfyUI keeps OpenCLIP's projection as a Linear (out, in); unused for the token features.
        ("text_projection.weight", (cfg.embed_dim, w), "normal"),
    ]


def vit_h_vision_specs(cfg: VisionEncoderConfig = VIT_H_VISION) -> list[Spec]:
    """Keys of `comfy.clip_model.CLIPVisionModelProjection` for OpenCLIP ViT-H-14."""
    w, p = cfg.width, cfg.patch_size
    return [
        ("vision_model.embeddings.class_embedding", (w,), "normal"),
        ("vision_model.embeddings.patch_embedding.weight", (w, 3, p, p), "normal"),
        ("vision_model.embeddings.position_embedding.weight", (cfg.num_tokens, w), "normal"),
        # "layrnorm" is ComfyUI's (and Hugging Face's) spelling.
        ("vision_model.pre_layrnorm.weight", (w,), "ones"),
        ("vision_model.pre_layrnorm.bias", (w,), "zeros"),
        *_hf_encoder_layers("vision_model.", cfg.layers, w, int(w * cfg.mlp_ratio)),
        ("vision_model.post_layernorm.weight", (w,), "ones"),
        ("vision_model.post_layernorm.bias", (w,), "zeros"),
        ("visual_projection.weight", (cfg.embed_dim, w), "normal"),
    ]


def _from_specs(specs: list[Spec]) -> dict[str, torch.Tensor]:
    return {key: spec_tensor(key, shape, init) for key, shape, init in specs}


def make_vit_h_text_encoder(path: str | Path) -> Path:
    """SD2 / OpenCLIP ViT-H text encoder, fp16, random (354 M parameters, 708 MB); cached at `path`."""
    return _write_atomic(Path(path), lambda: _from_specs(vit_h_text_specs()))


def make_vit_h_clip_vision(path: str | Path) -> Path:
    """OpenCLIP ViT-H-14 vision model, fp16, random (632 M parameters, 1.26 GB); cached at `path`."""
    return _write_atomic(Path(path), lambda: _from_specs(vit_h_vision_specs()))


def _norm_keys(model: nn.Module) -> set[str]:
    return {
        f"{name}.{p}"
        for name, m in model.named_modules()
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm))
        for p in ("weight", "bias")
        if getattr(m, p, None) is not None
    }


def tooncrafter_state(config: ModelConfig, text_encoder: bool = False, image_encoder: bool = False) -> dict[str, torch.Tensor]:
    """Deterministic fp16 weights for every entry of the model's state dict (raw `torch.empty`
    parameters included), plus the schedule buffers a released file carries."""
    with torch.device("meta"):
        model = ToonCrafter(config, text_encoder=text_encoder, image_encoder=image_encoder)
    norms = _norm_keys(model)
    state = {}
    for key, meta in model.state_dict().items():
        shape = tuple(meta.shape)
        if key in norms:
            state[key] = spec_tensor(key, shape, "ones" if key.endswith(".weight") else "zeros")
        elif len(shape) >= 2:
            # Fan-in scaling keeps activations O(1) through the tiny UNet and VAE, so fp16 stays finite.
            state[key] = spec_tensor(key, shape, "normal", std=1.0 / math.sqrt(math.prod(shape[1:])))
        else:
            state[key] = spec_tensor(key, shape, "normal")
    for key, value in Schedule.from_config(config.schedule).buffers().items():
        state[key] = value.to(torch.float16)
    return state


def make_wide_tiny_pruned(folder: str | Path, stem: str = PRUNED_STEM, config: ModelConfig = WIDE_TINY_CONFIG) -> Path:
    """`<folder>/<stem>.safetensors`: tiny ToonCrafter, context width 1024, Resampler on 1280-wide
    ViT-H tokens, no `cond_stage_model.*` / `embedder.*` keys (pruned), fp16, no yaml."""
    return _write_atomic(Path(folder) / f"{stem}.safetensors", lambda: tooncrafter_state(config))


def _link(source: Path, target: Path) -> Path:
    """A hard link (a symlink across file systems): staging must not copy 2 GB."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        target.symlink_to(source)
    return target


def stage_pruned_models(models_dir: str | Path, cache_dir: Optional[Path] = None, stem: str = PRUNED_STEM) -> dict[str, Path]:
    """Generate (or reuse) the three files and place them in a ComfyUI `models/` folder under the
    names the pruned workflow's CLIPLoader / CLIPVisionLoader / ToonCrafter loader select."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    models = Path(models_dir)
    return {
        "text_encoder": _link(make_vit_h_text_encoder(cache / TEXT_ENCODER_NAME), models / "text_encoders" / TEXT_ENCODER_NAME),
        "clip_vision": _link(make_vit_h_clip_vision(cache / CLIP_VISION_NAME), models / "clip_vision" / CLIP_VISION_NAME),
        "tooncrafter": _link(make_wide_tiny_pruned(cache, stem), models / "tooncrafter" / f"{stem}.safetensors"),
    }
