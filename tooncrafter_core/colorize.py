"""Reference-based line-art colorization: a line-art clip and coloured keys -> the clip in colour.

Between two coloured keys this is sketch-guided interpolation: the keys are the run's start and end
keyframes and the line art of every frame of the segment (the keys' own included) goes through the
sketch encoder. A shot splits at its keys into such segments; segment i samples with seed + i, so one
can be redone alone. The keys come back exactly as given (fitted to the output size): they are final
art, not something to redraw.

How a run executes is the host's: `PipelineRunner` here (the CLI and the library), the ComfyUI node's
own stages there. Both go through `colorize`, which plans, prepares, orders and finishes the runs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Optional, Protocol, Sequence

import torch

from . import frames as tc_frames
from .errors import InputError
from .models.tooncrafter import ToonCrafter
from .pipeline import PreparedClip, condition_clip, render_clip
from .sampling import StepCallback
from .settings import RuntimeOptions, SamplingConfig, segment_seed
from .sketches import SketchGuide, luma, sketch_hint

log = logging.getLogger(__name__)

# Every frame carries its final line art, which should fix the drawing completely; the sketch path's
# 0.6 suits rough sketches on a few frames.
DEFAULT_SCALE = 1.0
# The clip length ToonCrafter was trained on: longer runs leave what the model has seen.
DEFAULT_MAX_SEGMENT = 16
MIN_SEGMENT = 3  # two keys and at least one frame to colour between them
# Paper darker than this (median luma) is taken for inverted or unreadable line art, not off-white paper.
DARKEST_PAPER = 0.5
COLOR_MATCH_METHOD = "mkl"  # one linear colour transform (mean and covariance): keeps flat fills flat


@dataclass(frozen=True)
class Segment:
    """One run: the line-art frames it covers in run order (its coloured start first) and its seed."""

    index: int
    frames: tuple[int, ...]
    seed: int

    @property
    def first(self) -> int:
        return self.frames[0]

    @property
    def last(self) -> int:
        return self.frames[-1]

    def name(self) -> str:
        return f"segment {self.index + 1} (frames {self.first}-{self.last})"


@dataclass(frozen=True)
class ColorizeOptions:
    """The choices of a colorization besides the sampler's (see docs/colorization.md)."""

    seed: int = 0
    scale: float = DEFAULT_SCALE  # the sketch encoder's strength
    max_segment: int = DEFAULT_MAX_SEGMENT
    single_key: bool = False  # exploratory: one key, propagated segment by segment
    line_overlay: bool = False  # multiply the line art over the colours of the coloured frames
    color_match: bool = False  # match each coloured frame's colours to its keys' (color-matcher, MKL)


class Runner(Protocol):
    """How a host runs segments. `condition` runs the text and image encoders for a run from `start` to
    `end` ((1 3 H W) in [0, 1], at the output size); `conditioned` says every run is conditioned (the
    encoders may go); `render` samples and decodes a conditioned run steered by `hint` (1 1 t H W),
    its keyframes replaced by `keyframes` where given, -> frames (t 3 H W) in [0, 1] on the CPU."""

    def condition(self, segment: Segment, start: torch.Tensor, end: torch.Tensor) -> object: ...

    def conditioned(self) -> None: ...

    def render(self, segment: Segment, conditioned: object, hint: torch.Tensor,
               keyframes: Optional[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor: ...


# ---------------------------------------------------------------------------------------------
# Planning: every check that needs only the frame count and the keys, before anything runs


def plan_segments(frames: int, keys: Sequence[int], options: ColorizeOptions = ColorizeOptions()) -> list[Segment]:
    """The runs that colour `frames` line-art frames from coloured `keys` (frame indices)."""
    keys = list(keys)
    if options.max_segment < MIN_SEGMENT:
        raise InputError(f"max_segment must be at least {MIN_SEGMENT} (two keys and a frame between), got {options.max_segment}")
    if frames < MIN_SEGMENT:
        raise InputError(f"the line art has {frames} frame(s): colorize needs at least {MIN_SEGMENT} (two keys and a frame between)")
    outside = [k for k in keys if not 0 <= k < frames]
    if outside:
        raise InputError(f"key frame(s) {outside} are outside the line art's frames 0..{frames - 1}: "
                         "number each key by the line-art frame it colours, counting from 0")
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise InputError(f"frame(s) {twice} have more than one key: keep one coloured key per frame")
    keys = sorted(keys)
    if options.single_key:
        return _single_key_segments(frames, keys, options)
    last = frames - 1
    if len(keys) < 2:
        raise InputError(f"colorize needs coloured keys at frame 0 and frame {last} (dual reference), got "
                         f"{len(keys)} key(s) {keys}: colour both ends, or try single_key (exploratory)")
    if keys[0] != 0 or keys[-1] != last:
        missing = " and ".join(f"frame {k}" for k in (0, last) if k not in keys)
        raise InputError(f"the first and last frames must be coloured keys (dual reference), got keys {keys}: colour "
                         f"{missing} too, or cut the line art to the keyed frames")
    segments = []
    for i, (a, b) in enumerate(zip(keys, keys[1:])):
        _check_length(a, b, options.max_segment)
        segments.append(Segment(i, tuple(range(a, b + 1)), segment_seed(options.seed, i)))
    return segments


def _check_length(a: int, b: int, max_segment: int) -> None:
    length = abs(b - a) + 1
    if length < MIN_SEGMENT:
        raise InputError(f"keys at frames {a} and {b} leave no frame between them to colour: drop one of the two keys")
    if length > max_segment:
        add = _keys_to_add(min(a, b), max(a, b), max_segment)
        raise InputError(f"frames {min(a, b)}-{max(a, b)} make a {length}-frame segment, longer than max_segment "
                         f"{max_segment}: add coloured keys at frame(s) {', '.join(map(str, add))}")


def _keys_to_add(a: int, b: int, max_segment: int) -> list[int]:
    """Evenly spaced frames that cut a..b into runs of at most `max_segment` frames."""
    pieces = math.ceil((b - a) / (max_segment - 1))
    return [a + round(j * (b - a) / pieces) for j in range(1, pieces)]


def _single_key_segments(frames: int, keys: list[int], options: ColorizeOptions) -> list[Segment]:
    """Runs from the one key outwards, to the last frame and then to frame 0, each starting on the
    frame the run before it coloured; the pieces of each side are of even length."""
    if len(keys) != 1:
        raise InputError(f"single_key takes exactly one coloured key, got {len(keys)} ({keys}): "
                         "turn single_key off to colour between keys")
    key = keys[0]
    segments: list[Segment] = []
    for end in (frames - 1, 0):
        if end == key:
            continue
        if abs(end - key) + 1 < MIN_SEGMENT:
            raise InputError(f"single_key: the key at frame {key} leaves only frame {end} on that side: put the key "
                             f"at an end of the line art or at least 2 frames from it")
        step = 1 if end > key else -1
        pieces = math.ceil(abs(end - key) / (options.max_segment - 1))
        cuts = [key + step * round(j * abs(end - key) / pieces) for j in range(pieces + 1)]
        if any(abs(b - a) + 1 < MIN_SEGMENT for a, b in zip(cuts, cuts[1:])):  # an odd distance with runs of 3
            raise InputError(f"single_key: the {abs(end - key)} frames from the key at frame {key} to frame {end} cannot "
                             f"be split into runs of {MIN_SEGMENT} to {options.max_segment} frames: raise max_segment "
                             f"to {MIN_SEGMENT + 1} or more")
        for a, b in zip(cuts, cuts[1:]):
            segments.append(Segment(len(segments), tuple(range(a, b + step, step)),
                                    segment_seed(options.seed, len(segments))))
    return segments


# ---------------------------------------------------------------------------------------------
# Inputs as artists export them


def prepare_line_art(images: torch.Tensor | Sequence[torch.Tensor], names: Optional[Sequence[str]] = None) -> torch.Tensor:
    """Line-art frames -> (N 3 H W) in [0, 1], lines on white paper.

    `images`: one (N 3|4 H W) batch or (1 3|4 H W) frames, with `names` for messages (files). Alpha is
    composited onto white paper (lines on a transparent layer); off-white paper is levelled to white
    (each frame divided by its paper tone, the median luma), so paper steers no frame.
    """
    if not isinstance(images, torch.Tensor):
        images = stack_line_art(images, names)
    labels = list(names) if names is not None else [f"frame {i}" for i in range(images.shape[0])]
    if images.ndim != 4 or images.shape[1] not in (3, 4):
        raise InputError(f"line art must be (frames, 3 or 4, height, width) images, got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise InputError("the line art contains NaN or infinite values")
    rgb = tc_frames.on_paper(images.float().clamp(0, 1))
    paper = luma(rgb).flatten(1).median(dim=1).values  # most of a line-art frame is paper
    dark = [labels[i] for i in torch.nonzero(paper < DARKEST_PAPER).flatten().tolist()]
    if dark:
        raise InputError(
            f"line art must be dark lines on light paper, but {', '.join(dark[:3])}{' ...' if len(dark) > 3 else ''} "
            "is mostly dark: invert it (white lines on black), or composite transparent line art onto white"
        )
    return (rgb / paper[:, None, None, None]).clamp(0, 1)


def stack_line_art(frames: Sequence[torch.Tensor], names: Optional[Sequence[str]] = None) -> torch.Tensor:
    """Line-art frames (1 c H W) each, named for messages -> one (N c H W) batch; frames must share a size."""
    frames = list(frames)
    names = list(names) if names is not None else [f"frame {i}" for i in range(len(frames))]
    first = frames[0].shape[-2:]
    for name, frame in zip(names, frames):
        if frame.shape[-2:] != first:
            raise InputError(
                f"line-art frames differ in size: {names[0]} is {first[1]}x{first[0]}, {name} "
                f"{frame.shape[-1]}x{frame.shape[-2]}: export every frame of the shot at one size"
            )
    return torch.cat([f if f.ndim == 4 else f[None] for f in frames])


def with_alpha(images: torch.Tensor, transparency: Optional[torch.Tensor]) -> torch.Tensor:
    """(N 3 H W) images and a (N|1 H W) transparency mask (1 = transparent, as ComfyUI's LoadImage gives)
    -> (N 4 H W) RGBA; no mask, or an all-zero one (LoadImage's for images without alpha): the images."""
    if transparency is None or not transparency.any():
        return images
    mask = transparency if transparency.ndim == 3 else transparency[None]
    if mask.shape[-2:] != images.shape[-2:] or mask.shape[0] not in (1, images.shape[0]):
        raise InputError(f"the line art's mask is {tuple(mask.shape)} for {images.shape[0]} frames of "
                         f"{images.shape[-1]}x{images.shape[-2]}: connect the MASK of the loader the line art comes from")
    alpha = 1.0 - mask.to(images).expand(images.shape[0], -1, -1)
    return torch.cat([images, alpha[:, None]], dim=1)


def segment_hint(line_art: torch.Tensor, segment: Segment, height: int, width: int, resize: str) -> torch.Tensor:
    """The sketch encoder's input for a run (1 1 t height width), as the sketch-guidance path prepares it."""
    return sketch_hint(line_art[list(segment.frames)], height, width, resize)


def fit_keys(keys: Mapping[int, torch.Tensor], height: int, width: int, resize: str) -> dict[int, torch.Tensor]:
    """Coloured keys ((3|4 H W) or (1 3|4 H W) in [0, 1]) -> (1 3 height width), fitted like keyframes;
    alpha is composited onto white."""
    out = {}
    for index, image in keys.items():
        image = image if image.ndim == 4 else image[None]
        if image.ndim != 4 or image.shape[:2] not in ((1, 3), (1, 4)):
            raise InputError(f"the key for frame {index} must be one RGB image, got shape {tuple(image.shape)}")
        if not torch.isfinite(image).all():
            raise InputError(f"the key for frame {index} contains NaN or infinite values")
        out[index] = tc_frames.fit(tc_frames.on_paper(image.float().clamp(0, 1)), height, width, resize)
    return out


# ---------------------------------------------------------------------------------------------
# Finishing, off by default


def check_color_match():
    """color-matcher's ColorMatcher, or an InputError saying how to install it."""
    try:
        from color_matcher import ColorMatcher
    except ImportError:
        raise InputError("color_match needs the color-matcher package: pip install color-matcher (or the pack's "
                         "`color` extra), or turn color_match off") from None
    return ColorMatcher


def match_colors(image: torch.Tensor, references: Sequence[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """(3 H W) in [0, 1] -> the same with its colours matched to each (3 H W) reference by color-matcher's
    MKL transfer, the results blended by their weights."""
    import numpy as np

    ColorMatcher = check_color_match()

    src = image.permute(1, 2, 0).double().numpy()
    out = np.zeros_like(src)
    for reference, weight in references:
        if weight > 0:
            ref = reference.permute(1, 2, 0).double().numpy()
            out += weight * ColorMatcher().transfer(src=src, ref=ref, method=COLOR_MATCH_METHOD)
    return torch.from_numpy(out).permute(2, 0, 1).float().clamp(0, 1)


def finish_segment(segment: Segment, frames: torch.Tensor, ends: tuple[torch.Tensor, Optional[torch.Tensor]],
                   line: torch.Tensor, options: ColorizeOptions) -> torch.Tensor:
    """A run's frames (t 3 H W) -> the segment as it goes out: the coloured start (and end key) exactly as
    given, the frames the model coloured colour-matched to the keys and the lines laid over, as asked.
    `ends`: the start and end keys (1 3 H W), end None for a single-key run; `line`: the segment's line
    art (t 3 H W) at the output size."""
    start, end = ends
    out = frames.clone()
    made = range(1, len(out) - 1) if end is not None else range(1, len(out))
    t = len(out) - 1
    for j in made:
        if options.color_match:
            refs = [(start[0], 1.0)] if end is None else [(start[0], 1.0 - j / t), (end[0], j / t)]
            out[j] = match_colors(out[j], refs)
        if options.line_overlay:
            out[j] = out[j] * line[j]
    out[0] = start[0]
    if end is not None:
        out[-1] = end[0]
    return out


# ---------------------------------------------------------------------------------------------
# The whole shot


def colorize(
    runner: Runner,
    line_art: torch.Tensor,
    keys: Mapping[int, torch.Tensor],
    size: tuple[int, int],
    options: ColorizeOptions = ColorizeOptions(),
    resize: str = "crop",
    finished: Mapping[int, torch.Tensor] = {},
    on_segment: Optional[Callable[[Segment, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Line art (N 3 H W, from `prepare_line_art`) and coloured keys by frame -> the shot in colour
    (N 3 height width) in [0, 1]; `size` is (height, width).

    Every run is planned and checked first. With two or more keys each segment is conditioned before
    any is sampled (`runner.conditioned()` in between: a host can swap the encoders for the UNet); with
    one key (`single_key`) the key's conditioning is reused and each run starts from the last frame the
    run before it coloured. `finished` holds segments already made (by index, frames in run order,
    e.g. read back from disk): they are not run again. `on_segment(segment, frames)` gets each new one.
    """
    height, width = size
    segments = plan_segments(line_art.shape[0], list(keys), options)
    if options.color_match:
        check_color_match()
    colored = fit_keys(keys, height, width, resize)
    out = torch.zeros(line_art.shape[0], 3, height, width)
    for segment in segments:
        if segment.index in finished:
            out[list(segment.frames)] = finished[segment.index]
    todo = [s for s in segments if s.index not in finished]
    if options.single_key:  # one conditioning, of the key, shared by every run
        (key,) = colored
        shared = runner.condition(todo[0], colored[key], colored[key]) if todo else None
    else:
        conditioning = {s.index: runner.condition(s, colored[s.first], colored[s.last]) for s in todo}
    runner.conditioned()
    for segment in todo:
        log.info("%s of %d (seed %d)", segment.name(), len(segments), segment.seed)
        hint = segment_hint(line_art, segment, height, width, resize)
        line = tc_frames.fit(line_art[list(segment.frames)], height, width, resize)
        if options.single_key:
            start = out[segment.first : segment.first + 1] if segment.first != key else colored[key]
            ends, conditioned, keyframes = (start, None), shared, (start, start)
        else:
            ends, conditioned, keyframes = (colored[segment.first], colored[segment.last]), conditioning.pop(segment.index), None
        try:
            made = runner.render(segment, conditioned, hint, keyframes)
        except (InputError, FloatingPointError, torch.OutOfMemoryError) as e:
            # The same kind of error (hosts treat out-of-memory specially), naming the segment.
            raise type(e)(f"{segment.name()}: {e}") from e
        if made.shape != (len(segment.frames), 3, height, width):
            raise RuntimeError(f"{segment.name()}: the run made {tuple(made.shape)} frames, expected "
                               f"{(len(segment.frames), 3, height, width)}")
        done = finish_segment(segment, made, ends, line, options)
        out[list(segment.frames)] = done
        if on_segment is not None:
            on_segment(segment, done)
    return out


class PipelineRunner:
    """Runs segments through `pipeline.condition_clip` / `render_clip`: each is exactly `interpolate`
    with the segment's keys, its line art as sketches on every frame and its seed.

    `on_conditioned()` runs once every segment is conditioned (the CLI drops the encoders and reads the
    UNet there); `progress(segment)` may return a step callback for that run."""

    def __init__(self, model: ToonCrafter, encoder, prompt: str, sampling: SamplingConfig = SamplingConfig(),
                 options: RuntimeOptions = RuntimeOptions(), scale: float = DEFAULT_SCALE,
                 on_conditioned: Optional[Callable[[], None]] = None,
                 progress: Optional[Callable[[Segment], Optional[StepCallback]]] = None):
        self.model, self.encoder, self.prompt = model, encoder, prompt
        self.sampling, self.options, self.scale = sampling, options, scale
        self.on_conditioned, self.progress = on_conditioned, progress

    def condition(self, segment: Segment, start: torch.Tensor, end: torch.Tensor) -> PreparedClip:
        keyframes = (tc_frames.to_model(start), tc_frames.to_model(end))
        return condition_clip(self.model, keyframes, self.prompt, self.sampling, self.options, len(segment.frames))

    def conditioned(self) -> None:
        if self.on_conditioned is not None:
            self.on_conditioned()

    def render(self, segment: Segment, conditioned: PreparedClip, hint: torch.Tensor,
               keyframes: Optional[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        dev, dtype = self.options.device, self.options.dtype
        guide = SketchGuide(self.encoder, hint.to(dev, dtype), self.scale)
        clip = replace(conditioned, frames=len(segment.frames), sketch=guide,
                       generator=torch.Generator("cpu").manual_seed(segment.seed))
        if keyframes is not None:
            clip = replace(clip, keyframes=tuple(tc_frames.to_model(k).to(dev, dtype) for k in keyframes))
        callback = self.progress(segment) if self.progress is not None else None
        video = render_clip(self.model, clip, self.sampling, self.options, callback)
        return tc_frames.from_model(video[0]).transpose(0, 1)
