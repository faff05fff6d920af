"""Sketch guidance: the released sketch encoder (an SD 2.1-layout ControlNet) and its sketches.

The encoder is a 2-D copy of the UNet's encoder half and middle block, with an `input_hint_block`
that brings a 1-channel sketch per frame down to latent size. It sees the noisy latent (without
the keyframe concat), the timestep and the whole cross-attention context, frame by frame, and
returns one residual per skip connection plus one for the middle block; the UNet adds them, times
a control scale. A frame without a sketch is an all-zero hint that still runs through the encoder
(so it still steers that frame), as in the reference implementation. The module tree is the
released file's key layout (`sketch_encoder.ckpt`, no prefix).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from einops import rearrange
from torch import nn

from . import frames as tc_frames
from .attention import FrameContext, SpatialTransformer
from .ops import Default
from .unet import Downsample, ResBlock, TimestepEmbedSequential, timestep_embedding

log = logging.getLogger(__name__)

# The hint block's fixed widths in the released encoder (and in every SD ControlNet): three
# stride-2 convolutions take the sketch from pixel to latent resolution.
HINT_CHANNELS = (16, 16, 32, 32, 96, 96, 256)
HINT_STRIDES = (1, 1, 2, 1, 2, 1, 2, 1)
HINT_DOWNSAMPLE = 2 ** HINT_STRIDES.count(2)  # sketch pixels per latent pixel: the VAE's factor
DEFAULT_SCALE = 0.6  # the reference app's and both ComfyUI packs' default
# ITU-R BT.601 luma, as OpenCV's BGR2GRAY in the reference preprocessing.
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class SketchEncoderConfig:
    """The released encoder (configs/cldm_v21.yaml of the reference implementation) by default."""

    in_channels: int = 4
    hint_channels: int = 1
    model_channels: int = 320
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_res_blocks: int = 2
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_head_channels: int = 64
    transformer_depth: int = 1
    context_dim: int = 1024
    use_linear: bool = True

    def heads_and_dim(self, channels: int) -> tuple[int, int]:
        return channels // self.num_head_channels, self.num_head_channels


class SketchEncoder(nn.Module):
    """Noisy latent + sketch hint -> control residuals (one per UNet skip, then the middle block)."""

    def __init__(self, config: SketchEncoderConfig = SketchEncoderConfig(), dtype=None, device=None, operations=Default):
        super().__init__()
        self.config = cfg = config
        kw = dict(dtype=dtype, device=device)
        okw = dict(kw, operations=operations)
        mc, emb_dim = cfg.model_channels, cfg.model_channels * 4
        self.time_embed = nn.Sequential(operations.Linear(mc, emb_dim, **kw), nn.SiLU(), operations.Linear(emb_dim, emb_dim, **kw))

        hint: list[nn.Module] = []
        widths = (cfg.hint_channels, *HINT_CHANNELS, mc)
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            hint.append(operations.Conv2d(c_in, c_out, 3, stride=HINT_STRIDES[i], padding=1, **kw))
            if i < len(widths) - 2:
                hint.append(nn.SiLU())

        def attention(ch: int) -> SpatialTransformer:
            heads, dim_head = cfg.heads_and_dim(ch)
            return SpatialTransformer(ch, heads, dim_head, cfg.transformer_depth, cfg.context_dim, cfg.use_linear,
                                      False, False, 0, **okw)

        def zero_conv(ch: int) -> nn.Sequential:
            return nn.Sequential(operations.Conv2d(ch, ch, 1, **kw))

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(operations.Conv2d(cfg.in_channels, mc, 3, padding=1, **kw))])
        self.zero_convs = nn.ModuleList([zero_conv(mc)])
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * mc, **okw)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                self.zero_convs.append(zero_conv(ch))
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch, **okw)))
                self.zero_convs.append(zero_conv(ch))
                ds *= 2
        # Registered here, not where it is built: the released file's keys follow this order.
        self.input_hint_block = nn.Sequential(*hint)
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, emb_dim, **okw), attention(ch), ResBlock(ch, emb_dim, **okw))
        self.middle_block_out = zero_conv(ch)

    def hint_features(self, hint: torch.Tensor) -> torch.Tensor:
        """Sketches (b 1 t H W) in [0, 1] -> ((b t) c h w) features at latent size. They depend on
        neither the timestep nor the context: computed once per run."""
        return self.input_hint_block(rearrange(hint, "b c t h w -> (b t) c h w"))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, features: torch.Tensor) -> list[torch.Tensor]:
        """x (b c t h w) noisy latent (no concat), timesteps (b,), context (b l d), features from
        `hint_features` -> residuals ((b t) c' h' w'), skip connections first, the middle block last."""
        b, _, t, _, _ = x.shape
        dtype = x.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        emb = emb.repeat_interleave(t, dim=0)
        # Every frame cross-attends to the whole context (text and all frames' image tokens) through
        # one key/value projection: the clip's context, shared by its frames.
        ctx = FrameContext(context.to(dtype).contiguous(), context.new_zeros(0), t)
        h = rearrange(x, "b c t h w -> (b t) c h w")
        outs = []
        for i, (block, zero) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, ctx, b)
            if i == 0:
                h = h + features.to(h)
            outs.append(zero(h))
        h = self.middle_block(h, emb, ctx, b)
        outs.append(self.middle_block_out(h))
        return outs


@dataclass
class SketchGuide:
    """What sampling needs for sketch guidance: the encoder, the sketches (b 1 t H W) and the scale."""

    encoder: SketchEncoder
    hint: torch.Tensor
    scale: float = DEFAULT_SCALE


def controls(encoder: SketchEncoder, x, timesteps, context, features, scale: float) -> Optional[list[torch.Tensor]]:
    """The encoder's residuals times `scale`; None at scale 0 (the unguided UNet, exactly)."""
    if scale == 0:
        return None
    return [r * scale for r in encoder(x, timesteps, context, features)]


# ---------------------------------------------------------------------------------------------
# Sketch images


def sketch_hint(images: torch.Tensor, height: int, width: int, resize: str = "crop") -> torch.Tensor:
    """Drawn sketches (t 3 H' W') in [0, 1], dark lines on light paper -> hints (1 1 t height width):
    luma, inverted (lines 1, paper 0, as the encoder was trained), fitted like the keyframes."""
    luma = torch.tensordot(torch.tensor(LUMA, dtype=images.dtype, device=images.device), images[:, :3], dims=([0], [1]))
    fitted = tc_frames.fit(luma[:, None], height, width, resize)  # (t 1 h w)
    return rearrange(1.0 - fitted, "t c h w -> 1 c t h w")


def place_sketches(hints: torch.Tensor, indices: Optional[Sequence[int]], frames: int) -> torch.Tensor:
    """Hints (1 1 k H W) of drawn frames -> (1 1 frames H W): frame `indices[i]` gets hint i, every
    other frame an empty (all-zero) sketch. `indices` None: the k hints are all `frames` frames."""
    k = hints.shape[2]
    if indices is None:
        if k != frames:
            raise ValueError(
                f"{k} sketches for {frames} frames: give one per frame (blank paper for frames without one), "
                "or say which frames the sketches are for"
            )
        return hints
    indices = list(indices)
    if len(indices) != k:
        raise ValueError(f"{k} sketches but {len(indices)} frame numbers ({indices}): give one frame number per sketch")
    bad = [i for i in indices if not 0 <= i < frames]
    if bad or len(set(indices)) != k:
        raise ValueError(f"sketch frame numbers must be distinct and in 0..{frames - 1}, got {indices}")
    out = hints.new_zeros(hints.shape[0], hints.shape[1], frames, *hints.shape[3:])
    out[:, :, indices] = hints
    return out


def parse_frame_indices(text: str) -> Optional[list[int]]:
    """'0, 5, 10' -> [0, 5, 10]; '' -> None."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    if not parts:
        return None
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"frame numbers must be whole numbers separated by commas, got {text!r}") from None


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def sketch_files(paths: Sequence[Path]) -> tuple[list[Path], list[int]]:
    """Files (folders expanded to their images) and the frame each is for, by the number in its name."""
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"sketch file or folder not found: {path}")
    if not files:
        raise ValueError(f"no sketch images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    indices = [frame_number(f) for f in files]
    taken: dict[int, Path] = {}
    for f, i in zip(files, indices):
        if i in taken:
            raise ValueError(f"{taken[i].name} and {f.name} are both for frame {i}: keep one sketch per frame")
        taken[i] = f
    return files, indices


def frame_number(path: Path) -> int:
    """The frame a sketch file is for: the last number in its name (sketch_05.png -> 5)."""
    numbers = re.findall(r"\d+", path.stem)
    if not numbers:
        raise ValueError(f"cannot tell which frame {path.name} is for: put the frame number in its name (e.g. sketch_05.png)")
    return int(numbers[-1])


# ---------------------------------------------------------------------------------------------
# Loading


def infer_config(shapes: Mapping[str, tuple]) -> SketchEncoderConfig:
    """Architecture from weight shapes. Head widths are not in the weights: 64 as released, or the
    narrowest attention width when that is narrower (small test models)."""
    keys = list(shapes)
    mc, in_ch = shapes["input_blocks.0.0.weight"][:2]
    downs = sorted(int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.weight$", k)))
    blocks = len({int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.", k))})
    nrb = downs[0] - 1 if downs else blocks - 1
    mult, attn = [], []
    for level in range(len(downs) + 1):
        idx = 1 + level * (nrb + 1)
        mult.append(shapes[f"input_blocks.{idx}.0.out_layers.3.weight"][0] // mc)
        if f"input_blocks.{idx}.1.norm.weight" in shapes:
            attn.append(2**level)
    to_k = next(k for k in keys if k.endswith("attn2.to_k.weight"))
    widths = [shapes[k][0] for k in keys if k.endswith("attn2.to_q.weight")]
    return SketchEncoderConfig(
        num_head_channels=min([SketchEncoderConfig.num_head_channels, *widths]),
        in_channels=in_ch,
        hint_channels=shapes["input_hint_block.0.weight"][1],
        model_channels=mc,
        attention_resolutions=tuple(reversed(attn)),
        num_res_blocks=nrb,
        channel_mult=tuple(mult),
        context_dim=shapes[to_k][1],
        use_linear=len(shapes[next(k for k in keys if k.endswith(".1.proj_in.weight"))]) == 2,
    )


def load_sketch_encoder(
    path: str | Path,
    dtype: Optional[torch.dtype] = None,
    config: Optional[SketchEncoderConfig] = None,
    operations=Default,
) -> SketchEncoder:
    """The released `sketch_encoder.ckpt` (weights only) or `.safetensors` (fp32 or fp16), built on
    the meta device and loaded strictly; `dtype` None keeps the file's."""
    from .loading import CheckpointError, check_keys, read_state_dict

    path = Path(path)
    state = read_state_dict(path)
    state = {k.removeprefix("control_model."): v for k, v in state.items()}
    if "input_hint_block.0.weight" not in state:
        raise CheckpointError(
            f"{path.name} is not a ToonCrafter sketch encoder (no input_hint_block); use sketch_encoder.ckpt "
            "from Doubiiu/ToonCrafter or sketch_encoder-fp16.safetensors from Kijai/DynamiCrafter_pruned"
        )
    config = config or infer_config({k: tuple(v.shape) for k, v in state.items()})
    with torch.device("meta"):
        encoder = SketchEncoder(config, operations=operations)
    check_keys(
        encoder.state_dict(), state, path.name, "the sketch encoder",
        "use the released sketch_encoder.ckpt / sketch_encoder-fp16.safetensors or a conversion of them",
    )
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    encoder.load_state_dict(state, strict=True, assign=True)
    encoder.requires_grad_(False).eval()
    log.info("loaded sketch encoder %s (%s)", path.name, next(encoder.parameters()).dtype)
    return encoder

