"""Keyframe sequences: N keyframes -> one clip, each consecutive pair interpolated as its own run (and
the last back to the first for a loop), the segments joined on their shared keyframes.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import torch

from .errors import InputError
from .models.tooncrafter import ToonCrafter
from .pipeline import condition_clip, render_clip
from .sampling import StepCallback
from .settings import RuntimeOptions, SamplingConfig, segment_seed
from .sketches import SketchGuide

log = logging.getLogger(__name__)


def segment_pairs(keyframes: int, loop: bool = False) -> list[tuple[int, int]]:
    """Keyframe index pairs interpolated for a sequence: (0, 1), (1, 2), ..., and (n-1, 0) with `loop`
    (one keyframe looped: (0, 0), a clip that starts and ends on it)."""
    if keyframes < 2 and not (loop and keyframes == 1):
        raise InputError(
            f"a keyframe sequence needs at least 2 keyframes, got {keyframes} (one keyframe makes a clip only looped)"
        )
    pairs = [(i, i + 1) for i in range(keyframes - 1)]
    return pairs + [(keyframes - 1, 0)] if loop else pairs


def shared_keyframes(segments: int, loop: bool = False) -> int:
    """Keyframes two segments share: between consecutive segments, and the first one again when looped."""
    return segments if loop else segments - 1


def check_trim(frames: int, trim: int) -> None:
    """A segment keeps at least one in-between after `trim` frames are cut next to each of its keyframes."""
    if trim < 0 or frames - 2 - 2 * trim < 1:
        raise InputError(
            f"trim {trim} would cut every in-between of a {frames}-frame segment: use 0 to {max(0, (frames - 3) // 2)}"
        )


def sequence_length(keyframes: int, frames: int, loop: bool = False, trim: int = 0) -> int:
    """Frames of a joined sequence: (n-1)(T-1)+1, or n(T-1) looped (the first keyframe not repeated), less
    `trim` frames on each side of every shared keyframe."""
    segments = len(segment_pairs(keyframes, loop))
    return segments * (frames - 1) + (0 if loop else 1) - 2 * trim * shared_keyframes(segments, loop)


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


def join_segments(videos: Sequence[torch.Tensor], loop: bool = False, trim: int = 0) -> torch.Tensor:
    """Segment videos (b c t H W), consecutive ones sharing a keyframe -> one clip (b c T H W).

    Each shared keyframe is kept once, as the last frame of the segment that ends on it; looped, the
    last segment's final frame (the first keyframe again) is dropped so the clip repeats seamlessly.
    `trim` cuts that many in-betweens on each side of every shared keyframe: the model tends to hold a
    keyframe for a frame or two at both ends of a segment, which a joined clip shows as a pause.
    """
    n, t = len(videos), videos[0].shape[2]
    parts = []
    for i, video in enumerate(videos):
        keep = [0] if i == 0 else []  # the first keyframe, once
        after_start = trim if i > 0 or loop else 0
        before_end = trim if i < n - 1 or loop else 0
        keep += range(1 + after_start, t - 1 - before_end)
        if not (loop and i == n - 1):  # the segment's end keyframe (looped, the last one is the first again)
            keep.append(t - 1)
        parts.append(video[:, :, keep])
    return torch.cat(parts, dim=2)


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
    trim: int = 0,
) -> torch.Tensor:
    """Keyframes (n 3 H W) in [-1, 1] -> one clip (3 T H W), T = `sequence_length(n, frames, loop, trim)`.

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
    check_trim(frames or model.config.frames, trim)
    if sketch is not None and len(pairs) > 1:
        raise InputError(f"sketches guide one keyframe pair; this sequence has {len(pairs)} segments")
    clips = []
    for i, (a, b) in enumerate(pairs):
        generator = torch.Generator("cpu").manual_seed(segment_seed(seed, i))
        pair = (keyframes[a : a + 1], keyframes[b : b + 1])
        clips.append(condition_clip(model, pair, prompts[i], sampling, options, frames, generator, sketch))
    if on_conditioned is not None:
        on_conditioned()
    videos = []
    for i, ((a, b), clip) in enumerate(zip(pairs, clips)):
        on_step = None if callback is None else offset_callback(callback, i * sampling.steps)
        log.info("segment %d of %d: keyframe %d -> %d (seed %d)", i + 1, len(pairs), a + 1, b + 1, segment_seed(seed, i))
        videos.append(render_clip(model, clip, sampling, options, on_step))
    return join_segments(videos, loop, trim)[0]
