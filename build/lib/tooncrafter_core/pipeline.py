"""One clip from end to end, in the order the data flows:

keyframes -> VAE encoder (latents + reference features) and CLIP encoders (context)
-> DDIM with classifier-free guidance over the UNet -> the model's decoder -> frames.

`interpolate` draws the in-betweens of two keyframes (ToonCrafter, DynamiCrafter's interpolation model),
`animate` a clip from one image (DynamiCrafter image-to-video). Each is a conditioning half and a
rendering half (`condition_clip`, `render_clip`) so a host can release the encoders between them; the
stages themselves are `conditioning`, `keyframes`, `guidance` and `decoding`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .conditioning import contexts
from .decoding import decode
from .errors import InputError
from .guidance import Conditioning, sample
from .keyframes import encode_keyframes, initial_latents
from .models.config import IMAGE_TO_VIDEO, INTERPOLATION, TASK_NAMES, ModelConfig
from .models.tooncrafter import ToonCrafter
from .runtime import prepare
from .sampling import StepCallback
from .settings import RuntimeOptions, SamplingConfig
from .sketches import SketchGuide

# The CLI's verb for each task, for the message a model of the other kind gets.
OTHER_VERB = {INTERPOLATION: "`interpolate` (two keyframes)", IMAGE_TO_VIDEO: "`animate` (one image)"}


def size_multiple(config: ModelConfig) -> int:
    """Frame sides must be multiples of this: the VAE factor times the UNet's downsampling."""
    return config.vae.downsample_factor * 2 ** (len(config.unet.channel_mult) - 1)


def check_size(height: int, width: int, config: ModelConfig, what: str = "keyframe size") -> None:
    """InputError unless height and width are multiples of `size_multiple`; `what` names the input."""
    multiple = size_multiple(config)
    if height % multiple or width % multiple:
        w, h = (max(multiple, round(n / multiple) * multiple) for n in (width, height))
        raise InputError(f"{what} {width}x{height} is not a multiple of {multiple} for this model: use e.g. {w}x{h}")


def check_task(config: ModelConfig, task: str, use: dict[str, str] = OTHER_VERB) -> None:
    """InputError unless the model was trained for `task` (interpolation or image-to-video); `use` names,
    by task, what a host offers for it (the CLI's verbs by default)."""
    if task not in config.tasks:
        other = next(t for t in config.tasks if t != task)
        raise InputError(
            f"this checkpoint is a {config.kind_name} model, not one for {TASK_NAMES[task]}: use it with "
            f"{use[other]}, or pick a checkpoint made for {TASK_NAMES[task]}"
        )


def check_keyframes(images: Sequence[tuple[str, torch.Tensor]], config: ModelConfig) -> None:
    """Shapes the model can take: named (b 3 H W) images of equal size, sides multiples of `size_multiple`."""
    for name, img in images:
        if img.ndim != 4 or img.shape[1] != 3:
            raise InputError(
                f"{name} must be (batch, 3, height, width) RGB, got {tuple(img.shape)}: "
                "add the batch dimension to a single image (image[None]) and convert gray or RGBA images to RGB"
            )
        if not torch.isfinite(img).all():
            raise InputError(f"{name} contains NaN or infinite values")
    (first_name, first), *others = images
    for name, img in others:
        if img.shape[0] != first.shape[0]:
            raise InputError(
                f"{first_name} has {first.shape[0]} image(s) and {name} {img.shape[0]}: give as many of each (one clip "
                "per pair); to pair one keyframe with several, repeat it to the other batch's size"
            )
        if img.shape != first.shape:
            raise InputError(
                f"{first_name} and {name} differ in size: {tuple(first.shape)} vs {tuple(img.shape)}; "
                "resize both to the same size"
            )
    check_size(first.shape[-2], first.shape[-1], config)


@dataclass
class PreparedClip:
    """A clip whose text and image encoders have run: what sampling it still needs. Small (contexts
    and keyframes), so a sequence can hold every segment's while the encoders are released."""

    context: torch.Tensor
    uncond: Optional[torch.Tensor]
    keyframes: tuple[torch.Tensor, ...]  # (b 3 H W) each, the compute dtype: start and end, or the one image
    frames: int
    generator: Optional[torch.Generator]
    sketch: Optional[SketchGuide]


def condition_clip(
    model: ToonCrafter,
    keyframes: Sequence[torch.Tensor],
    prompt: str | Sequence[str],
    sampling: SamplingConfig = SamplingConfig(),
    options: RuntimeOptions = RuntimeOptions(),
    frames: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    sketch: Optional[SketchGuide] = None,
) -> PreparedClip:
    """The first half of `interpolate` (keyframes: start, end) and `animate` (the one image): the inputs
    checked against the model's kind and the text and image encoders run."""
    task = INTERPOLATION if len(keyframes) == 2 else IMAGE_TO_VIDEO
    check_task(model.config, task)
    if model.cond_stage_model is None or model.embedder is None:
        raise InputError(
            "this checkpoint has no text/image encoders (pruned file); encode the prompt and the start "
            "frame with separate OpenCLIP ViT-H-14 encoders and call the stage functions instead"
        )
    dev, dtype = options.device, options.dtype
    keyframes = tuple(k.to(dev, torch.float32) for k in keyframes)
    names = ("start keyframe", "end keyframe") if task == INTERPOLATION else ("image",)
    check_keyframes(list(zip(names, keyframes)), model.config)
    b = keyframes[0].shape[0]
    prompts = [prompt] * b if isinstance(prompt, str) else list(prompt)
    if len(prompts) != b:
        raise InputError(f"got {len(prompts)} prompts for {b} keyframe pairs" if task == INTERPOLATION else f"got {len(prompts)} prompts for {b} images")
    end = keyframes[-1].to(dtype) if task == INTERPOLATION else None
    with torch.inference_mode():
        context, uncond = contexts(
            model, keyframes[0].to(dtype), prompts, sampling.cfg_scale != 1.0, dev, dtype, end, sampling.image_context_ratio
        )
    return PreparedClip(context, uncond, tuple(k.to(dtype) for k in keyframes), frames or model.config.frames, generator,
                        sketch)


def render_clip(
    model: ToonCrafter,
    clip: PreparedClip,
    sampling: SamplingConfig = SamplingConfig(),
    options: RuntimeOptions = RuntimeOptions(),
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """The second half of `interpolate` / `animate`: VAE encode, initial draws, DDIM over the UNet and
    the decode -> video (b 3 t H W), fp32 on the CPU."""
    dev, dtype = options.device, options.dtype
    vae_dtype = options.vae_dtype or dtype
    prepare(model, options)
    with torch.inference_mode():
        enc = encode_keyframes(model.vae, *(k.to(vae_dtype) for k in clip.keyframes))
        concat, x_T = initial_latents(enc, clip.frames, model.config, clip.generator, dev)
        fs = torch.full((clip.keyframes[0].shape[0],), sampling.fs, dtype=torch.long, device=dev)
        cond = Conditioning(clip.context, clip.uncond, concat.to(dtype), fs, clip.sketch)
        samples = sample(model.unet, model.schedule, cond, sampling, x_T.to(dtype), generator=clip.generator,
                         callback=callback)
        _, video = decode(
            model.vae, samples.to(vae_dtype), [r.to(vae_dtype) for r in enc.refs], sampling.second_decode,
            options.decode_chunk, options.decode_overlap,
        )
    video = video.float().cpu()
    if not torch.isfinite(video).all():
        raise FloatingPointError(
            f"the decoded video has NaN/inf values in {vae_dtype}; run again with dtype float32 or bfloat16"
        )
    return video


def interpolate(
    model: ToonCrafter,
    start: torch.Tensor,
    end: torch.Tensor,
    prompt: str | Sequence[str],
    sampling: SamplingConfig = SamplingConfig(),
    options: RuntimeOptions = RuntimeOptions(),
    frames: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    callback: Optional[StepCallback] = None,
    sketch: Optional[SketchGuide] = None,
) -> torch.Tensor:
    """Keyframes (b 3 H W) in [-1, 1] -> video (b 3 t H W) in [-1, 1], fp32 on the CPU.

    Random draws (x_T, posterior noise, per-step noise) come from `generator` in that order.
    `sketch`: sketch guidance (hints (1 1 t H W), see `sketches.sketch_hint` and `place_sketches`).
    """
    clip = condition_clip(model, (start, end), prompt, sampling, options, frames, generator, sketch)
    return render_clip(model, clip, sampling, options, callback)


def animate(
    model: ToonCrafter,
    image: torch.Tensor,
    prompt: str | Sequence[str],
    sampling: SamplingConfig = SamplingConfig(),
    options: RuntimeOptions = RuntimeOptions(),
    frames: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """An image-to-video model (DynamiCrafter): the first frame (b 3 H W) in [-1, 1] -> video (b 3 t H W)
    in [-1, 1], fp32 on the CPU. Random draws as `interpolate`'s."""
    clip = condition_clip(model, (image,), prompt, sampling, options, frames, generator)
    return render_clip(model, clip, sampling, options, callback)
