"""Frozen configuration of a model of the ToonCrafter / DynamiCrafter family: its networks, its noise
schedule and its kind (what it predicts, which conditioning it was trained with, which decoder it has).

Defaults describe the released `tooncrafter_512_interp_v1` checkpoint. `from_original_yaml` maps
an original-format config (`configs/inference_512_v1.0.yaml` schema) onto these dataclasses in
one place; `weights.checkpoint.infer_config` reads the same values from the weights.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

# Token layout of the cross-attention context: 77 text tokens, then 16 image tokens per frame.
TEXT_TOKENS = 77
IMAGE_TOKENS_PER_FRAME = 16

# Context frames a chunked decode adds on each side of its chunk (see `vae.decode_windows`).
DECODE_OVERLAP = 4

# The conditioning a model was trained with: the start and end keyframes in the concat channels' first
# and last frame (interpolation), or the first image's latent on every frame (image-to-video).
INTERPOLATION, IMAGE_TO_VIDEO = "interpolation", "image_to_video"
TASK_NAMES = {INTERPOLATION: "interpolation", IMAGE_TO_VIDEO: "image-to-video"}


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 8
    out_channels: int = 4
    model_channels: int = 320
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_res_blocks: int = 2
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_head_channels: int = 64
    num_heads: int = -1
    transformer_depth: int = 1
    context_dim: int = 1024
    use_linear: bool = True
    temporal_conv: bool = True
    temporal_attention: bool = True
    temporal_length: int = 16
    addition_attention: bool = True
    # init_attn uses a fixed head count in the original, independent of the level's width.
    init_attn_heads: int = 8
    image_cross_attention: bool = True
    image_cross_attention_scale_learnable: bool = False
    default_fs: int = 24
    fs_condition: bool = True
    text_tokens: int = TEXT_TOKENS
    image_tokens_per_frame: int = IMAGE_TOKENS_PER_FRAME

    def heads_and_dim(self, channels: int) -> tuple[int, int]:
        if self.num_head_channels != -1:
            return channels // self.num_head_channels, self.num_head_channels
        return self.num_heads, channels // self.num_heads


@dataclass(frozen=True)
class VAEConfig:
    embed_dim: int = 4
    z_channels: int = 4
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    resolution: int = 256
    # Decoder levels whose reference fusion is cross-attention; the others use a 1x1 Combiner.
    attn_levels: tuple[int, ...] = (2, 3)
    fusion_heads: int = 8
    fusion_dim_head: int = 64
    video_kernel_size: tuple[int, int, int] = (3, 1, 1)
    scale_factor: float = 0.18215
    # ToonCrafter's video decoder that fuses the keyframes' encoder features back in; DynamiCrafter's
    # is the plain per-frame decoder.
    reference_decoder: bool = True

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class TextEncoderConfig:
    """OpenCLIP text tower (ViT-H-14 by default); the penultimate layer feeds ln_final."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 1024
    heads: int = 16
    layers: int = 24
    mlp_ratio: float = 4.0
    embed_dim: int = 1024
    layers_skipped: int = 1
    quick_gelu: bool = False  # OpenCLIP's `quick_gelu` architectures (OpenAI-style activation)


@dataclass(frozen=True)
class VisionEncoderConfig:
    """OpenCLIP vision tower (ViT-H-14 by default); all tokens, no ln_post, no projection."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1280
    head_width: int = 80
    layers: int = 32
    mlp_ratio: float = 4.0
    embed_dim: int = 1024
    quick_gelu: bool = False
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @property
    def heads(self) -> int:
        return self.width // self.head_width

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass(frozen=True)
class ResamplerConfig:
    dim: int = 1024
    depth: int = 4
    dim_head: int = 64
    heads: int = 12
    num_queries: int = IMAGE_TOKENS_PER_FRAME
    embedding_dim: int = 1280
    output_dim: int = 1024
    ff_mult: int = 4
    video_length: Optional[int] = 16


@dataclass(frozen=True)
class ScheduleConfig:
    timesteps: int = 1000
    linear_start: float = 0.00085
    linear_end: float = 0.012
    rescale_betas_zero_snr: bool = True
    parameterization: str = "v"
    use_dynamic_rescale: bool = True
    base_scale: float = 0.7
    turning_step: int = 400


@dataclass(frozen=True)
class ModelConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    vision: VisionEncoderConfig = field(default_factory=VisionEncoderConfig)
    resampler: ResamplerConfig = field(default_factory=ResamplerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # Latent size the model was trained at (h, w), 320x512 pixels for the 512 model.
    latent_size: tuple[int, int] = (40, 64)
    family: str = "ToonCrafter"
    tasks: tuple[str, ...] = (INTERPOLATION,)
    # What the fs condition measures ("fps", or "frame stride" for DynamiCrafter 256) and the value the
    # original's inference scripts pass for this kind.
    fs_meaning: str = "fps"
    fs_default: int = 10

    @property
    def frames(self) -> int:
        return self.unet.temporal_length

    @property
    def default_spacing(self) -> str:
        """The original scripts' DDIM spacing for this kind: trailing for the zero-SNR v models (512, 1024,
        ToonCrafter), uniform for DynamiCrafter 256's plain schedule."""
        return "uniform_trailing" if self.schedule.rescale_betas_zero_snr else "uniform"

    @property
    def default_guidance_rescale(self) -> float:
        """The original scripts' guidance rescale for this kind (0.7 with zero SNR, else none)."""
        return 0.7 if self.schedule.rescale_betas_zero_snr else 0.0

    @property
    def kind_name(self) -> str:
        """E.g. "ToonCrafter 512 interpolation", "DynamiCrafter 256 image-to-video"."""
        tasks = " or ".join(TASK_NAMES[t] for t in self.tasks)
        return f"{self.family} {self.pixel_size[1]} {tasks}"

    @property
    def pixel_size(self) -> tuple[int, int]:
        f = self.vae.downsample_factor
        return self.latent_size[0] * f, self.latent_size[1] * f


class ConfigError(ValueError):
    """The model configuration is unsupported or inconsistent."""


def open_clip_file(name: str) -> Path:
    """A file of the installed open_clip package, found without importing the package (its import
    pulls in its model zoo: about 0.25 GB and seconds of start-up, for a tokenizer and some json)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip is not installed: pip install open_clip_torch")
    return Path(spec.submodule_search_locations[0]) / name


def _openclip_arch(name: str, search_dir: Optional[Path]) -> tuple[TextEncoderConfig, VisionEncoderConfig]:
    """Read an OpenCLIP architecture json: next to the checkpoint first, then open_clip's bundled ones."""
    candidates = []
    if search_dir is not None:
        candidates.append(Path(search_dir) / f"{name}.json")
    try:
        candidates.append(open_clip_file(f"model_configs/{name}.json"))
    except ModuleNotFoundError:  # the tokenizer needs open_clip anyway; the error comes later with context
        pass
    for path in candidates:
        if path.is_file():
            arch = json.loads(path.read_text())
            break
    else:
        raise ConfigError(
            f"OpenCLIP architecture {name!r} not found: put {name}.json next to the checkpoint "
            f"(looked in: {', '.join(str(c) for c in candidates)})"
        )
    t, v = arch["text_cfg"], arch["vision_cfg"]
    for part, cfg in (("text_cfg", t), ("vision_cfg", v)):
        unsupported = [k for k in ("ls_init_value", "no_ln_pre", "attentional_pool", "embed_cls") if cfg.get(k)]
        if unsupported:
            raise ConfigError(f"OpenCLIP architecture {name!r}: {part} options {unsupported} are not supported")
    quick_gelu = bool(arch.get("quick_gelu", False))
    # Defaults are OpenCLIP's CLIPTextCfg / CLIPVisionCfg defaults, for jsons that omit a field.
    text = TextEncoderConfig(
        context_length=t.get("context_length", 77),
        vocab_size=t.get("vocab_size", 49408),
        width=t.get("width", 512),
        heads=t.get("heads", 8),
        layers=t.get("layers", 12),
        mlp_ratio=t.get("mlp_ratio", 4.0),
        embed_dim=arch["embed_dim"],
        quick_gelu=quick_gelu,
    )
    vision = VisionEncoderConfig(
        image_size=v.get("image_size", 224),
        patch_size=v.get("patch_size", 16),
        width=v.get("width", 768),
        head_width=v.get("head_width", 64),
        layers=v.get("layers", 12),
        mlp_ratio=v.get("mlp_ratio", 4.0),
        embed_dim=arch["embed_dim"],
        quick_gelu=quick_gelu,
    )
    return text, vision


# The 1024 model's dynamic-rescale base; the 512 models' is 0.7.
BASE_SCALE_1024 = 0.3


def kind_fields(
    reference_decoder: bool, parameterization: str, base_scale: float, interpolation_only: bool, default_fs: int
) -> dict:
    """ModelConfig's kind fields for a member of the family, from what its yaml or its weights say:
    ToonCrafter has the reference decoder and interpolates (its scripts' fs 10); DynamiCrafter 256
    (eps-prediction, frame stride 3) and 1024 (rescale base 0.3) animate an image; the 512 layout is
    both the image-to-video and the interpolation release (fs 5 for interpolation, as its scripts)."""
    if reference_decoder:
        return dict(family="ToonCrafter", tasks=(INTERPOLATION,), fs_meaning="fps", fs_default=10)
    if parameterization == "eps":
        return dict(family="DynamiCrafter", tasks=(IMAGE_TO_VIDEO,), fs_meaning="frame stride", fs_default=default_fs)
    if interpolation_only:
        return dict(family="DynamiCrafter", tasks=(INTERPOLATION,), fs_meaning="fps", fs_default=5)
    if abs(base_scale - BASE_SCALE_1024) < 1e-6:
        return dict(family="DynamiCrafter", tasks=(IMAGE_TO_VIDEO,), fs_meaning="fps", fs_default=default_fs)
    return dict(family="DynamiCrafter", tasks=(IMAGE_TO_VIDEO, INTERPOLATION), fs_meaning="fps", fs_default=default_fs)


_UNSUPPORTED_UNET = {
    "use_relative_position": False,
    "use_causal_attention": False,
    "use_scale_shift_norm": False,
    "resblock_updown": False,
    "tempspatial_aware": False,
}


def from_original_yaml(path: str | Path) -> ModelConfig:
    """Map an original-format ToonCrafter yaml (and the OpenCLIP arch json it names) onto ModelConfig;
    a file that is not YAML or not laid out as the original's is a ConfigError naming the problem."""
    path = Path(path)
    try:
        return _from_original_yaml(path)
    except ConfigError:
        raise
    except Exception as e:  # YAML syntax, a value of the wrong type, a section that is not a mapping
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ConfigError(f"{path}: not an original ToonCrafter config ({type(e).__name__}: {reason[:300]}); "
                          "use the yaml that came with the checkpoint, or remove it to read the architecture "
                          "from the weights") from None


def _from_original_yaml(path: Path) -> ModelConfig:
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    try:
        params = raw["model"]["params"]
        unet_p = params["unet_config"]["params"]
        vae_p = params["first_stage_config"]["params"]
        dd = vae_p["ddconfig"]
        res_p = params["image_proj_stage_config"]["params"]
    except KeyError as e:
        raise ConfigError(f"{path}: not an original ToonCrafter config, missing {e}") from None

    for key, supported in _UNSUPPORTED_UNET.items():
        if unet_p.get(key, supported) != supported:
            raise ConfigError(f"{path}: unet_config.{key}={unet_p[key]} is not supported")
    parameterization = params.get("parameterization", "eps")
    if parameterization not in ("v", "eps"):
        raise ConfigError(f"{path}: parameterization {parameterization!r} is not supported (v or eps)")

    unet = UNetConfig(
        in_channels=unet_p["in_channels"],
        out_channels=unet_p["out_channels"],
        model_channels=unet_p["model_channels"],
        attention_resolutions=tuple(unet_p["attention_resolutions"]),
        num_res_blocks=unet_p["num_res_blocks"],
        channel_mult=tuple(unet_p.get("channel_mult", (1, 2, 4, 8))),
        num_head_channels=unet_p.get("num_head_channels", -1),
        num_heads=unet_p.get("num_heads", -1),
        transformer_depth=unet_p.get("transformer_depth", 1),
        context_dim=unet_p["context_dim"],
        use_linear=unet_p.get("use_linear", False),
        temporal_conv=unet_p.get("temporal_conv", False),
        temporal_attention=unet_p.get("temporal_attention", True),
        temporal_length=unet_p.get("temporal_length", 16),
        addition_attention=unet_p.get("addition_attention", False),
        image_cross_attention=unet_p.get("image_cross_attention", False),
        image_cross_attention_scale_learnable=unet_p.get("image_cross_attention_scale_learnable", False),
        default_fs=unet_p.get("default_fs", 4),
        fs_condition=unet_p.get("fs_condition", False),
    )
    vae = VAEConfig(
        embed_dim=vae_p["embed_dim"],
        z_channels=dd["z_channels"],
        in_channels=dd["in_channels"],
        out_ch=dd["out_ch"],
        ch=dd["ch"],
        ch_mult=tuple(dd["ch_mult"]),
        num_res_blocks=dd["num_res_blocks"],
        attn_resolutions=tuple(dd.get("attn_resolutions", ())),
        resolution=dd.get("resolution", 256),
        scale_factor=params.get("scale_factor", 1.0),
        reference_decoder=params["first_stage_config"].get("target", "").endswith("_Dualref"),
    )
    resampler = ResamplerConfig(
        dim=res_p.get("dim", 1024),
        depth=res_p.get("depth", 8),
        dim_head=res_p.get("dim_head", 64),
        heads=res_p.get("heads", 16),
        num_queries=res_p.get("num_queries", 8),
        embedding_dim=res_p.get("embedding_dim", 768),
        output_dim=res_p.get("output_dim", 1024),
        ff_mult=res_p.get("ff_mult", 4),
        video_length=res_p.get("video_length"),
    )
    schedule = ScheduleConfig(
        timesteps=params.get("timesteps", 1000),
        linear_start=params.get("linear_start", 1e-4),
        linear_end=params.get("linear_end", 2e-2),
        rescale_betas_zero_snr=params.get("rescale_betas_zero_snr", False),
        parameterization=parameterization,
        use_dynamic_rescale=params.get("use_dynamic_rescale", False),
        base_scale=params.get("base_scale", 0.7),
        turning_step=params.get("turning_step", 400),
    )
    text_arch = params.get("cond_stage_config", {}).get("params", {}).get("arch", "ViT-H-14")
    vision_arch = params.get("img_cond_stage_config", {}).get("params", {}).get("arch", "ViT-H-14")
    layer = params.get("cond_stage_config", {}).get("params", {}).get("layer", "last")
    text, _ = _openclip_arch(text_arch, path.parent)
    _, vision = _openclip_arch(vision_arch, path.parent)
    text = dataclasses.replace(text, layers_skipped=1 if layer == "penultimate" else 0)
    image_size = params.get("image_size", [40, 64])
    if isinstance(image_size, int):
        image_size = [image_size, image_size]
    kind = kind_fields(vae.reference_decoder, parameterization, schedule.base_scale, bool(params.get("interp_mode")),
                       unet.default_fs)
    if params.get("fps_condition_type", "fs") == "fs":
        kind["fs_meaning"] = "frame stride"
    return ModelConfig(
        unet=unet,
        vae=vae,
        text=text,
        vision=vision,
        resampler=resampler,
        schedule=schedule,
        latent_size=(int(image_size[0]), int(image_size[1])),
        **kind,
    )
