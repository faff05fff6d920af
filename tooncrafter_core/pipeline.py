"""Two keyframes (+ prompt) -> in-between frames, in the order the data flows:

keyframes -> VAE encoder (latents + reference features) and CLIP encoders (context)
-> DDIM with classifier-free guidance over the UNet -> dual-reference VAE decoder -> frames.

Every stage is a function over explicit tensors so hosts (ComfyUI nodes, the replay tool) can run
stages separately, swap encoders, and pass in every random draw.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .models.config import DECODE_OVERLAP, ModelConfig, VisionEncoderConfig
from .models.encoders import (
    ImageEncoder,
    Resampler,
    TextEncoder,
    clip_pixels,
    zero_image,
)
from .models.schedule import Schedule
from .models.sketch_encoder import HINT_DOWNSAMPLE, SketchEncoder, controls
from .models.tooncrafter import ToonCrafter
from .models.unet import UNetModel
from .models.unet_call import NO_HOOKS, ControlResiduals, UNetHooks
from .models.vae import AutoencoderKLDualRef
from .noise_levels import NoiseLevels
from .runtime import prepare
from .sampling import GuidedModel, StepCallback, VDenoiser, ddim_plan, sample_ddim
from .settings import RuntimeOptions, SamplingConfig
from .sketches import SketchGuide

log = logging.getLogger(__name__)


class InputError(ValueError):
    """Inputs that cannot be interpolated; the message names the input and the fix."""


# ---------------------------------------------------------------------------------------------
# Conditioning


def encode_prompts(text_encoder: TextEncoder, prompts: Sequence[str], device, dtype) -> torch.Tensor:
    """-> (n 77 d) text context."""
    return text_encoder(prompts, device=device, dtype=dtype)


def image_context(image_encoder: ImageEncoder, resampler: Resampler, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images (b 3 H W) in [-1, 1] -> raw vision tokens (b n w), resampled context (b (t q) d)."""
    tokens = image_encoder(images)
    return tokens, resampler(tokens)


def unconditional_image_context(image_encoder: ImageEncoder, resampler: Resampler, n: int, device, dtype):
    """The original's negative image: an all-zero 224x224 input through the same encoder."""
    size = image_encoder.config.image_size
    return image_context(image_encoder, resampler, zero_image(n, size, device).to(dtype))


def join_context(text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """(b 77 d) text + (b (t q) d) image tokens -> the UNet's cross-attention context."""
    return torch.cat([text, image.to(text)], dim=1)


def external_text_context(hidden: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Token features from a host's own OpenCLIP ViT-H text encoder (penultimate layer + final
    LayerNorm, e.g. ComfyUI's SD2 CLIP) -> the (b 77 d) text context; longer prompts are cut to 77."""
    width = config.unet.context_dim
    if hidden.ndim != 3 or hidden.shape[-1] != width:
        raise InputError(
            f"the CLIP text encoder gives features of shape {tuple(hidden.shape)}, ToonCrafter needs width {width}: "
            "load the OpenCLIP ViT-H-14 text encoder (CLIPLoader, type stable_diffusion, an SD 2.x CLIP file)"
        )
    n = config.unet.text_tokens
    if hidden.shape[1] < n:
        raise InputError(f"the CLIP text encoder returned {hidden.shape[1]} tokens, ToonCrafter needs {n}")
    if hidden.shape[1] > n:
        log.warning("prompt longer than %d tokens: only the first %d are used, as in the original", n, n)
    return hidden[:, :n]


def negative_pixels(config: VisionEncoderConfig, device=None) -> torch.Tensor:
    """CLIP pixels (1 3 S S) of the original's unconditional all-zero image."""
    return clip_pixels(zero_image(1, config.image_size, device), config)


_NEGATIVE_CONTEXT = "_negative_context"  # on the model: {(device, dtype): context}


def clear_negative_context(model: "ToonCrafter") -> None:
    """Forget the cached negative context (after changing the encoders' weights; benchmarks)."""
    model.__dict__.pop(_NEGATIVE_CONTEXT, None)


def contexts(
    model: "ToonCrafter", start: torch.Tensor, prompts: Sequence[str], negative: bool, device, dtype
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The model's own encoders: (positive context, negative context or None). The negative is
    the original's: the empty prompt and the all-zero image, a constant of the weights, computed once
    per model, device and dtype. It goes through the encoders alone, never in a batch with positives,
    so a clip's context has the same bits whether it came first or later (batch composition changes
    the rounding of a batched matmul)."""
    n = len(prompts)
    encoder = model.embedder
    cache = model.__dict__.setdefault(_NEGATIVE_CONTEXT, {})
    key = (str(torch.device(device)), dtype)
    if negative and key not in cache:
        text = encode_prompts(model.cond_stage_model, [""], device, dtype)
        img = model.image_proj_model(encoder.model.visual(negative_pixels(encoder.config, start.device).to(dtype)))
        cache[key] = join_context(text, img)
    text = encode_prompts(model.cond_stage_model, list(prompts), device, dtype)
    positive = join_context(text, model.image_proj_model(encoder.model.visual(encoder.preprocess(start).to(dtype))))
    if not negative:
        return positive, None
    return positive, cache[key].expand(n, -1, -1)


def check_vision_tokens(tokens: torch.Tensor, config: ModelConfig) -> None:
    """Tokens from a host's CLIP vision model must be the ViT-H-14 ones the Resampler was trained on."""
    width, n = config.resampler.embedding_dim, config.vision.num_tokens
    if tokens.ndim != 3 or tokens.shape[-1] != width or tokens.shape[1] != n:
        raise InputError(
            f"the CLIP vision model gives tokens of shape {tuple(tokens.shape)}, ToonCrafter needs (batch, {n}, {width}): "
            "load the OpenCLIP ViT-H-14 vision model (CLIPVisionLoader, e.g. clip_vision_h.safetensors)"
        )


# ---------------------------------------------------------------------------------------------
# Keyframe latents


@dataclass
class KeyframeEncoding:
    mean: torch.Tensor  # (b 2 z h w): start, end
    logvar: torch.Tensor  # (b 2 z h w), clamped as the original
    refs: list[torch.Tensor]  # (b c 2 H W) per decoder level, then the full-resolution conv_in features


def encode_keyframes(vae: AutoencoderKLDualRef, start: torch.Tensor, end: torch.Tensor) -> KeyframeEncoding:
    """start, end (b 3 H W) in [-1, 1]. Only the two keyframes are encoded: the encoder works per
    frame, so this equals the original's encoding of the repeated 16-frame clip."""
    b = start.shape[0]
    mean, logvar, hidden = vae.encode(torch.cat([start, end]))
    split = lambda t: torch.stack([t[:b], t[b:]], dim=1)  # noqa: E731  ((2b) ...) -> (b 2 ...)
    refs = [split(h).transpose(1, 2) for h in hidden]  # (b c 2 H W)
    return KeyframeEncoding(split(mean), split(logvar), refs)


def clip_latents(enc: KeyframeEncoding, frames: int, scale_factor: float, noise: torch.Tensor) -> torch.Tensor:
    """Posterior sample of the clip [start x T/2, end x T/2]: noise (b z t h w) -> z (b z t h w), scaled."""
    which = (torch.arange(frames, device=noise.device) >= frames // 2).long()  # 0 start, 1 end
    mean = enc.mean[:, which].transpose(1, 2)  # (b z t h w)
    std = torch.exp(0.5 * enc.logvar[:, which].transpose(1, 2))
    return scale_factor * (mean + std * noise.to(mean))


def initial_latents(
    enc: KeyframeEncoding, frames: int, config: ModelConfig, generator: Optional[torch.Generator], device
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (concat condition, x_T), both (b z t h w) fp32. The random draws come in a fixed order, x_T
    first and then the keyframes' posterior noise, so every host reproduces a seed exactly: a host that
    draws its initial noise from the seed itself (ComfyUI's samplers) takes the posterior noise from
    `seeded_generator(seed, skip=...)` after it."""
    if frames < 2:
        raise InputError(f"frames must be at least 2 (the two keyframes), got {frames}")
    b, _, zc, h, w = enc.mean.shape
    x_T = _randn((b, config.unet.out_channels, frames, h, w), generator, device)
    vae_noise = _randn((b, zc, frames, h, w), generator, device)
    return keyframe_concat(enc, frames, config.vae.scale_factor, vae_noise), x_T


def keyframe_concat(enc: KeyframeEncoding, frames: int, scale_factor: float, noise: torch.Tensor) -> torch.Tensor:
    """The UNet's extra input channels (b z t h w) fp32 for posterior noise (b z t h w)."""
    return concat_condition(clip_latents(enc, frames, scale_factor, noise.to(enc.mean.device))).float()


def seeded_concat(enc: KeyframeEncoding, frames: int, scale_factor: float, seed: int, noise_shape: Sequence[int]) -> torch.Tensor:
    """The concat condition `interpolate` makes for `seed`, for a host that drew x_T (`noise_shape`)
    from the seed itself and needs the posterior noise after it."""
    b, _, zc, h, w = enc.mean.shape
    generator = seeded_generator(seed, skip=[noise_shape])
    noise = torch.randn((b, zc, frames, h, w), generator=generator)
    return keyframe_concat(enc, frames, scale_factor, noise)


def seeded_generator(seed: int, skip: Sequence[Sequence[int]] = ()) -> torch.Generator:
    """A CPU generator seeded `seed` that has already drawn normal tensors of the shapes in `skip`:
    the draws `interpolate` makes before the one a host needs next."""
    generator = torch.Generator("cpu").manual_seed(seed)
    for shape in skip:
        torch.randn(tuple(shape), generator=generator)
    return generator


def concat_condition(z: torch.Tensor) -> torch.Tensor:
    """Zeros except the first and last frame's latent: the UNet's extra input channels."""
    c = torch.zeros_like(z)
    c[:, :, 0] = z[:, :, 0]
    c[:, :, -1] = z[:, :, -1]
    return c


# ---------------------------------------------------------------------------------------------
# Denoising


def unet_v(
    unet: UNetModel,
    x: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    concat: torch.Tensor,
    fs: torch.Tensor,
    sketch: Optional[tuple[SketchEncoder, torch.Tensor, float]] = None,
) -> torch.Tensor:
    """One UNet call: noisy latent (b z t h w) + concat condition -> v prediction. `sketch`:
    (encoder, hint features ((b t) c h w), scale) adds the sketch encoder's residuals."""
    control = None
    if sketch is not None:
        encoder, features, scale = sketch
        control = controls(encoder, x, t, context, features, scale)
    return unet(torch.cat([x, concat.to(x)], dim=1), t, context, fs, control)


def level_denoised(
    network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    levels: NoiseLevels,
    sigma: torch.Tensor,
    x: torch.Tensor,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """One network call for a host that samples in noise levels (`NoiseLevels`): x (b z t h w) at levels
    sigma (b,) -> D, fp32. `network(x_t, t) -> v` sees the original's x_t in `dtype` and its timestep."""
    c = levels.coefficients(sigma)
    x_t = levels.model_input(sigma, x.float(), c).to(dtype or x.dtype)
    v = network(x_t, c.t.to(x.device, torch.float32))
    return levels.denoised(sigma, x.float(), v.float(), c)


def concat_network(
    unet: UNetModel,
    context: torch.Tensor,
    concat: torch.Tensor,
    fs: Optional[torch.Tensor],
    control: Optional[Sequence[torch.Tensor] | ControlResiduals] = None,
    hooks: UNetHooks = NO_HOOKS,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The UNet with its conditions bound: (x_t (b z t h w), t (b,)) -> v, the concat condition joined
    to x_t in x_t's dtype."""

    def network(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(torch.cat([x_t, concat.to(x_t)], dim=1), t, context.to(x_t.dtype), fs, control, hooks)

    return network


@dataclass
class Conditioning:
    context: torch.Tensor  # (b L d): text tokens then image tokens
    uncond_context: Optional[torch.Tensor]
    concat: torch.Tensor  # (b z t h w)
    fs: torch.Tensor  # (b,) long
    sketch: Optional[SketchGuide] = None  # the same sketches steer the conditional and unconditional pass


def guided_model(unet: UNetModel, cond: Conditioning, sampling: SamplingConfig) -> GuidedModel:
    guide = cond.sketch

    def net(x, t, context, concat, fs, sketch=None):
        return unet_v(unet, x, t, context, concat, fs, None if guide is None else (guide.encoder, sketch, guide.scale))

    c = {"context": cond.context, "concat": cond.concat, "fs": cond.fs}
    if guide is not None:
        check_sketch(guide.hint, cond.concat)
        # The hint block sees neither the timestep nor the context: its features are computed once.
        hint = guide.hint.expand(cond.concat.shape[0], -1, -1, -1, -1)  # one set of sketches for every pair
        c["sketch"] = guide.encoder.hint_features(hint.to(cond.concat))
    u = None
    if cond.uncond_context is not None:
        u = {**c, "context": cond.uncond_context}
    return GuidedModel(net, c, u, sampling.cfg_scale, sampling.guidance_rescale, sampling.cfg_batch)


def check_sketch(hint: torch.Tensor, concat: torch.Tensor) -> None:
    """Sketches (b 1 t H W) must cover every frame at the latents' pixel size."""
    b, _, t, h, w = concat.shape
    if hint.ndim != 5 or hint.shape[1] != 1 or hint.shape[2] != t:
        raise InputError(
            f"sketches must be one per frame, (batch, 1, {t}, H, W); got {tuple(hint.shape)}: give {t} frames "
            "(empty ones where nothing is drawn) or say which frames the sketches are for"
        )
    size = (h * HINT_DOWNSAMPLE, w * HINT_DOWNSAMPLE)
    if tuple(hint.shape[-2:]) != size or hint.shape[0] not in (1, b):
        raise InputError(
            f"sketches of size {tuple(hint.shape[-2:])} (batch {hint.shape[0]}) do not fit the frames: they must be "
            f"{size} like the keyframes, one set for all {b} pairs or one per pair"
        )


def sample(
    unet: UNetModel,
    schedule: Schedule,
    cond: Conditioning,
    sampling: SamplingConfig,
    x_T: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    noises: Optional[Sequence[torch.Tensor]] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """DDIM from x_T (b z t h w) -> clean latents."""
    plan = ddim_plan(schedule, sampling.steps, sampling.timestep_spacing, sampling.eta)
    denoiser = VDenoiser(guided_model(unet, cond, sampling), schedule)
    return sample_ddim(denoiser, x_T, plan, generator=generator, noises=noises, callback=callback)


# ---------------------------------------------------------------------------------------------
# Decoding


def decode_fitting(
    vae: AutoencoderKLDualRef,
    z: torch.Tensor,
    refs: Sequence[torch.Tensor],
    chunk: Optional[int] = None,
    overlap: int = DECODE_OVERLAP,
) -> tuple[torch.Tensor, Optional[int]]:
    """`vae.decode` of unscaled z (b z t h w), retried with half the chunk (down to one frame a call)
    while it runs out of memory -> (video (b 3 t H W), the chunk that fit; None: the whole clip)."""
    t = z.shape[2]
    while True:
        try:
            return vae.decode(z, refs, chunk, overlap), chunk
        except torch.OutOfMemoryError:
            frames = min(chunk or t, t)
            if frames <= 1:
                raise
        # Retried outside the except block, so the failed attempt's tensors (held by the
        # exception's traceback) are freed before the smaller attempt allocates.
        chunk = frames // 2
        log.warning(
            "out of memory decoding %d frames at a time: retrying with %d frames at a time (plus %d context "
            "frames on each side); set the decode chunk (ComfyUI: frames_per_chunk) to %d to start there",
            frames, chunk, overlap, chunk,
        )
        if z.device.type == "cuda":
            torch.cuda.empty_cache()  # hands the failed attempt's cached blocks back before retrying


def decode(
    vae: AutoencoderKLDualRef,
    latents: torch.Tensor,
    refs: Sequence[torch.Tensor],
    second_decode: bool = True,
    chunk: Optional[int] = None,
    overlap: int = DECODE_OVERLAP,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled latents (b z t h w) -> (first pass, final video), each (b 3 t H W) in about [-1, 1].

    The original decodes a second time without frames 1 and t-2 and takes the middle pair
    from that pass; `second_decode=False` skips it (final video = first pass). `chunk` and
    `overlap`: see `AutoencoderKLDualRef.decode`. Out of memory, the decode is retried in
    smaller chunks (`decode_fitting`).
    """
    z = latents / vae.config.scale_factor
    first, chunk = decode_fitting(vae, z, refs, chunk, overlap)
    t = z.shape[2]
    if not second_decode or t < 4:
        return first, first
    keep = [i for i in range(t) if i not in (1, t - 2)]
    second, _ = decode_fitting(vae, z[:, :, keep], refs, chunk, overlap)
    video = first.clone()
    mid = t // 2
    video[:, :, mid - 1 : mid + 1] = second[:, :, mid - 2 : mid]
    return first, video


# ---------------------------------------------------------------------------------------------
# The whole run


def size_multiple(config: ModelConfig) -> int:
    """Keyframe sides must be multiples of this: the VAE factor times the UNet's downsampling."""
    return config.vae.downsample_factor * 2 ** (len(config.unet.channel_mult) - 1)


def check_keyframes(start: torch.Tensor, end: torch.Tensor, multiple: int) -> None:
    """Shapes the model can take: (b 3 H W) pairs of equal size, sides multiples of `multiple`."""
    for name, img in (("start", start), ("end", end)):
        if img.ndim != 4 or img.shape[1] != 3:
            raise InputError(
                f"{name} keyframe must be (batch, 3, height, width) RGB, got {tuple(img.shape)}: "
                "add the batch dimension to a single image (image[None]) and convert gray or RGBA images to RGB"
            )
        if not torch.isfinite(img).all():
            raise InputError(f"{name} keyframe contains NaN or infinite values")
    if start.shape[0] != end.shape[0]:
        raise InputError(
            f"start has {start.shape[0]} keyframe(s) and end {end.shape[0]}: give as many of each (one clip per "
            "pair); to pair one keyframe with several, repeat it to the other batch's size"
        )
    if start.shape != end.shape:
        raise InputError(
            f"start and end keyframes differ in size: {tuple(start.shape)} vs {tuple(end.shape)}; "
            "resize both to the same size"
        )
    h, w = start.shape[-2:]
    if h % multiple or w % multiple:
        raise InputError(
            f"keyframe size {w}x{h} is not a multiple of {multiple}; resize or crop the keyframes "
            f"(e.g. to {max(multiple, w // multiple * multiple)}x{max(multiple, h // multiple * multiple)})"
        )


@dataclass
class PreparedClip:
    """A clip whose text and image encoders have run: what sampling it still needs. Small (contexts
    and keyframes), so a sequence can hold every segment's while the encoders are released."""

    context: torch.Tensor
    uncond: Optional[torch.Tensor]
    start: torch.Tensor  # (b 3 H W), the compute dtype
    end: torch.Tensor
    frames: int
    generator: Optional[torch.Generator]
    sketch: Optional[SketchGuide]


def condition_clip(
    model: ToonCrafter,
    start: torch.Tensor,
    end: torch.Tensor,
    prompt: str | Sequence[str],
    sampling: SamplingConfig = SamplingConfig(),
    options: RuntimeOptions = RuntimeOptions(),
    frames: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    sketch: Optional[SketchGuide] = None,
) -> PreparedClip:
    """The first half of `interpolate`: the inputs checked and the text and image encoders run."""
    if model.cond_stage_model is None or model.embedder is None:
        raise InputError(
            "this checkpoint has no text/image encoders (pruned file); encode the prompt and the start "
            "frame with separate OpenCLIP ViT-H-14 encoders and call the stage functions instead"
        )
    dev, dtype = options.device, options.dtype
    start = start.to(dev, torch.float32)
    end = end.to(dev, torch.float32)
    check_keyframes(start, end, size_multiple(model.config))
    b = start.shape[0]
    prompts = [prompt] * b if isinstance(prompt, str) else list(prompt)
    if len(prompts) != b:
        raise InputError(f"got {len(prompts)} prompts for {b} keyframe pairs")
    with torch.inference_mode():
        context, uncond = contexts(model, start.to(dtype), prompts, sampling.cfg_scale != 1.0, dev, dtype)
    return PreparedClip(context, uncond, start.to(dtype), end.to(dtype), frames or model.config.frames, generator, sketch)


def render_clip(
    model: ToonCrafter,
    clip: PreparedClip,
    sampling: SamplingConfig = SamplingConfig(),
    options: RuntimeOptions = RuntimeOptions(),
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """The second half of `interpolate`: VAE encode, initial draws, DDIM over the UNet and the decode
    -> video (b 3 t H W), fp32 on the CPU."""
    dev, dtype = options.device, options.dtype
    prepare(model, options)
    with torch.inference_mode():
        enc = encode_keyframes(model.vae, clip.start, clip.end)
        concat, x_T = initial_latents(enc, clip.frames, model.config, clip.generator, dev)
        fs = torch.full((clip.start.shape[0],), sampling.fs, dtype=torch.long, device=dev)
        cond = Conditioning(clip.context, clip.uncond, concat.to(dtype), fs, clip.sketch)
        samples = sample(model.unet, model.schedule, cond, sampling, x_T.to(dtype), generator=clip.generator,
                         callback=callback)
        _, video = decode(
            model.vae, samples, enc.refs, sampling.second_decode, options.decode_chunk, options.decode_overlap
        )
    video = video.float().cpu()
    if not torch.isfinite(video).all():
        raise FloatingPointError(
            f"the decoded video has NaN/inf values in {dtype}; run again with dtype float32 or bfloat16"
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
    clip = condition_clip(model, start, end, prompt, sampling, options, frames, generator, sketch)
    return render_clip(model, clip, sampling, options, callback)


def _randn(shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gen_dev, dtype=torch.float32).to(device)


# ---------------------------------------------------------------------------------------------
# Keyframe sequences


def segment_pairs(keyframes: int, loop: bool = False) -> list[tuple[int, int]]:
    """Keyframe index pairs interpolated for a sequence: (0, 1), (1, 2), ..., and (n-1, 0) with `loop`."""
    if keyframes < 2:
        raise InputError(f"a keyframe sequence needs at least 2 keyframes, got {keyframes}")
    pairs = [(i, i + 1) for i in range(keyframes - 1)]
    return pairs + [(keyframes - 1, 0)] if loop else pairs


def sequence_length(keyframes: int, frames: int, loop: bool = False) -> int:
    """Frames of a joined sequence: (n-1)(T-1)+1, or n(T-1) looped (the first keyframe not repeated)."""
    return len(segment_pairs(keyframes, loop)) * (frames - 1) + (0 if loop else 1)


def segment_prompts(prompts: str | Sequence[str], segments: int) -> list[str]:
    """One prompt per segment from one prompt for all, or exactly one per segment."""
    if isinstance(prompts, str):
        return [prompts] * segments
    prompts = list(prompts)
    if len(prompts) == 1:
        return prompts * segments
    if len(prompts) != segments:
        raise InputError(
            f"got {len(prompts)} prompts for {segments} segments: give one prompt for all, or one per segment "
            "(keyframe 1->2, 2->3, ..., and last->first when looping)"
        )
    return prompts


def join_segments(videos: Sequence[torch.Tensor], loop: bool = False) -> torch.Tensor:
    """Segment videos (b c t H W), consecutive ones sharing a keyframe -> one clip (b c T H W).

    Each shared keyframe is kept once, as the last frame of the segment that ends on it; looped, the
    last segment's final frame (the first keyframe again) is dropped so the clip repeats seamlessly.
    """
    clip = torch.cat([videos[0], *(v[:, :, 1:] for v in videos[1:])], dim=2)
    return clip[:, :, :-1] if loop else clip


def offset_callback(callback: StepCallback, offset: int) -> StepCallback:
    """`callback` with its step index shifted by `offset` (one progress count over several runs)."""

    def shifted(step: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        callback(offset + step, x, x0)

    return shifted


def interpolate_sequence(
    model: ToonCrafter,
    keyframes: torch.Tensor,
    prompts: str | Sequence[str],
    sampling: SamplingConfig = SamplingConfig(),
    options: RuntimeOptions = RuntimeOptions(),
    frames: Optional[int] = None,
    seed: int = 0,
    loop: bool = False,
    callback: Optional[StepCallback] = None,
    sketch: Optional[SketchGuide] = None,
    on_conditioned: Optional[Callable[[], None]] = None,
) -> torch.Tensor:
    """Keyframes (n 3 H W) in [-1, 1] -> one clip (3 T H W), T = `sequence_length(n, frames, loop)`.

    Segment i interpolates its pair exactly as `interpolate` does with a CPU generator seeded
    `seed + i`, so one segment can be redone alone and the others stay as they were. `callback`
    gets the step index counted over all segments (segment i's steps start at i * steps).
    Every segment's text and image encoders run before any segment is sampled; `on_conditioned()` runs
    in between (a host can release the encoders and load the UNet there).
    """
    if keyframes.ndim != 4:
        raise InputError(f"keyframes must be (n, 3, height, width), got {tuple(keyframes.shape)}")
    pairs = segment_pairs(keyframes.shape[0], loop)
    prompts = segment_prompts(prompts, len(pairs))
    if sketch is not None and len(pairs) > 1:
        raise InputError(f"sketches guide one keyframe pair; this sequence has {len(pairs)} segments")
    clips = []
    for i, (a, b) in enumerate(pairs):
        generator = torch.Generator("cpu").manual_seed(seed + i)
        clips.append(condition_clip(model, keyframes[a : a + 1], keyframes[b : b + 1], prompts[i], sampling, options,
                                    frames, generator, sketch))
    if on_conditioned is not None:
        on_conditioned()
    videos = []
    for i, ((a, b), clip) in enumerate(zip(pairs, clips)):
        on_step = None if callback is None else offset_callback(callback, i * sampling.steps)
        log.info("segment %d of %d: keyframe %d -> %d (seed %d)", i + 1, len(pairs), a + 1, b + 1, seed + i)
        videos.append(render_clip(model, clip, sampling, options, on_step))
    return join_segments(videos, loop)[0]
