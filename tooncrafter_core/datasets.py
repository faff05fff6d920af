"""Folders of frames for evaluation and training: ATD-12K triplet folders and clip folders, found and
checked (every problem named with its file) before anything runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

FRAME_NAMES = ("frame1", "frame2", "frame3")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TRIPLET_LAYOUT = "one folder per triplet holding frame1, frame2 and frame3 (.png, .jpg or .jpeg), as in ATD-12K"
PROMPT_FILE = "prompt.txt"


class DatasetError(ValueError):
    """Data that cannot be used; the message lists every bad folder or file with the reason and the fix."""


@dataclass(frozen=True)
class Triplet:
    """One triplet: keyframes frame1 and frame3, the true middle frame2."""

    name: str
    frame1: Path
    frame2: Path
    frame3: Path


def frame_files(folder: Path) -> dict[str, Path]:
    """frame1/frame2/frame3 image files of a folder; .png wins over .jpg when both are there."""
    found: dict[str, Path] = {}
    by_name = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
    for stem in FRAME_NAMES:
        for suffix in IMAGE_SUFFIXES:
            if stem + suffix in by_name:
                found[stem] = by_name[stem + suffix]
                break
    return found


def find_triplets(root: str | Path, flag: str = "--triplets") -> list[Triplet]:
    """Sorted subfolders of `root` that hold frame1, frame2 and frame3 (.png, .jpg or .jpeg).

    Folders with none of the three are skipped; a folder with some but not all is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"triplet folder {root} does not exist; {flag} wants {TRIPLET_LAYOUT}")
    triplets, incomplete = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = frame_files(folder)
        if not files:
            log.debug("skipping %s: no frame1/frame2/frame3 images", folder)
            continue
        missing = [stem for stem in FRAME_NAMES if stem not in files]
        if missing:
            incomplete.append(f"{folder} has no {' or '.join(missing)}")
        else:
            triplets.append(Triplet(folder.name, **files))
    if incomplete:
        raise DatasetError(
            f"incomplete triplet folders: {'; '.join(incomplete)}. Each needs frame1, frame2 and frame3 "
            f"(.png, .jpg or .jpeg); add the missing frame or move the folder out of {root}"
        )
    if not triplets:
        raise DatasetError(f"no triplet folders in {root}; {flag} wants {TRIPLET_LAYOUT}")
    return triplets


# ---------------------------------------------------------------------------------------------
# Training items


@dataclass(frozen=True)
class TrainingItem:
    """A triplet (frame1, frame2, frame3: keyframes and the true middle frame) or a clip (frames in
    name order, windows of them with their ends as keyframes), with its prompt."""

    name: str
    kind: str  # "triplet" or "clip"
    frames: tuple[Path, ...]
    prompt: str = ""


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _item(folder: Path, default_prompt: str, problems: list[str]) -> Optional[TrainingItem]:
    prompt_file = folder / PROMPT_FILE
    prompt = default_prompt
    if prompt_file.is_file():
        try:
            prompt = prompt_file.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            problems.append(f"{prompt_file}: not UTF-8 text; save the prompt as UTF-8")
            return None
    triplet = frame_files(folder)
    if triplet:
        missing = [stem for stem in FRAME_NAMES if stem not in triplet]
        if missing:
            problems.append(f"{folder}: a triplet folder without {' and '.join(missing)} (it needs frame1, frame2 and frame3)")
            return None
        return TrainingItem(folder.name, "triplet", tuple(triplet[s] for s in FRAME_NAMES), prompt)
    images = _images(folder)
    if len(images) < 2:
        what = "no images" if not images else f"one image ({images[0].name})"
        problems.append(f"{folder}: {what}; a clip folder needs two or more frames ({', '.join(IMAGE_SUFFIXES)})")
        return None
    return TrainingItem(folder.name, "clip", tuple(images), prompt)


def _check_images(item: TrainingItem, problems: list[str]) -> None:
    """Every frame opens as an image, and all frames of the item have one size."""
    from PIL import Image

    sizes = {}
    for path in item.frames:
        try:
            with Image.open(path) as im:
                im.verify()
            with Image.open(path) as im:
                sizes[path] = im.size
        except Exception as e:  # PIL raises many kinds for broken files; each is a bad frame to name
            problems.append(f"{path}: not a readable image ({type(e).__name__}: {e}); replace or remove it")
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{p.name} {w}x{h}" for p, (w, h) in sizes.items())
        problems.append(f"{item.name}: frames of different sizes ({listed}); export the item's frames at one size")


def find_training_items(root: str | Path, flag: str = "--data", default_prompt: str = "") -> list[TrainingItem]:
    """Every subfolder of `root` as a triplet or clip folder (or `root` itself as one clip when it holds
    images and no subfolders), each frame checked. All problems are reported together."""
    root = Path(root)
    layout = f"{flag} wants subfolders that are {TRIPLET_LAYOUT}, or clips (two or more frames in name order)"
    if not root.is_dir():
        raise DatasetError(f"{flag} {root} is not a folder; {layout}")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        folders = [root] if _images(root) else []
    if not folders:
        raise DatasetError(f"{flag} {root} is empty; {layout}")
    problems: list[str] = []
    items = [item for folder in folders if (item := _item(folder, default_prompt, problems)) is not None]
    for item in items:
        _check_images(item, problems)
    if problems:
        raise DatasetError(f"{len(problems)} problem(s) in {root}, nothing was trained:\n  " + "\n  ".join(problems))
    return items


def window(item: TrainingItem, frames: int, start: int) -> tuple[list[int], list[int]]:
    """An item's frames for one clip of `frames` frames -> (frame indices, their positions in the clip).

    A triplet puts frame1, frame2, frame3 at 0, frames // 2 and frames - 1 (the frame `evaluate`
    scores); a clip of at least `frames` frames gives `frames` consecutive ones from `start`; a shorter
    clip spreads all its frames over the clip. Positions without a frame are not supervised.
    """
    n = len(item.frames)
    if item.kind == "triplet":
        return [0, 1, 2], [0, frames // 2, frames - 1]
    if n >= frames:
        return list(range(start, start + frames)), list(range(frames))
    positions = [round(i * (frames - 1) / (n - 1)) for i in range(n)]
    return list(range(n)), positions


def window_starts(item: TrainingItem, frames: int) -> int:
    """How many different windows `window` can take from the item."""
    return max(1, len(item.frames) - frames + 1) if item.kind == "clip" else 1

