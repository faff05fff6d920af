"""Keyframe fitting and frame conversion between pixel images and the model's [-1, 1] tensors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from . import files

FIT_METHODS = ("crop", "stretch", "pad")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def fit(images: torch.Tensor, height: int, width: int, method: str = "crop") -> torch.Tensor:
    """(b 3 H W) in [0, 1] -> (b 3 height width).

    crop: scale to cover, then centre-crop (the original app's Resize + CenterCrop);
    stretch: scale each side independently; pad: scale to fit inside, pad with the edge colour.
    """
    if method not in FIT_METHODS:
        raise ValueError(f"resize method must be one of {', '.join(FIT_METHODS)}, got {method!r}")
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    if method == "stretch":
        return _resize(images, height, width)
    scale = max(height / h, width / w) if method == "crop" else min(height / h, width / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    x = _resize(images, nh, nw)
    if method == "crop":
        top, left = (nh - height) // 2, (nw - width) // 2
        return x[..., top : top + height, left : left + width]
    pad_h, pad_w = height - nh, width - nw
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), mode="replicate")


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    antialias = h < x.shape[-2] or w < x.shape[-1]
    return F.interpolate(x.float(), size=(h, w), mode="bicubic", align_corners=False, antialias=antialias).clamp(0, 1)


def to_model(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return images * 2.0 - 1.0


def from_model(video: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((video.float() + 1.0) / 2.0).clamp(0, 1)


# Far above any keyframe (8192x8192); a header claiming more is a decompression bomb or a mistake, refused
# before a byte is decoded.
MAX_PIXELS = 8192 * 8192


def load_image(path: str | Path, paper: bool = False) -> torch.Tensor:
    """An image file -> (1 3 H W) in [0, 1]. Grayscale, 1-bit, palette, CMYK and 16-bit images become RGB;
    an EXIF rotation is applied (photos stored sideways come upright); an animated file gives its first
    frame. Alpha is dropped (the colour under transparent pixels is kept, as ComfyUI's LoadImage does),
    or with `paper` composited onto white paper (line art exported as lines on a transparent layer).
    Anything unreadable is a ValueError naming the file."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if width * height > MAX_PIXELS or min(width, height) < 1:
                raise ValueError(f"it is {width}x{height} pixels; this reads up to {MAX_PIXELS // 1_000_000} "
                                 "megapixels: scale it down")
            im = _upright(opened)
            if im.mode.startswith("I"):
                # 16-bit grayscale (PNG opens as I;16 or I): PIL's RGB conversion clips it at 255,
                # which turns all but the darkest pixels white.
                gray = np.asarray(im, dtype=np.float32) / 65535.0
                arr = np.repeat(gray.clip(0, 1)[..., None], 3, axis=-1)
            elif paper and (im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info):
                arr = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
                arr = arr[..., :3] * arr[..., 3:] + (1.0 - arr[..., 3:])
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError, EOFError) as e:
        # OSError covers missing and truncated files; PIL raises ValueError/SyntaxError on malformed chunks.
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"cannot read image {path}: {reason}") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"cannot read image {path}: it holds NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]


# EXIF orientation -> the turn that shows the image upright (as ImageOps.exif_transpose).
_TURNS = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
          7: "TRANSVERSE", 8: "ROTATE_90"}


def _upright(opened):
    """The image turned by its EXIF orientation. Pillow's TIFF reader reports the turned size before it
    loads and the stored pixels after, and keeps the tag for some modes only: its raw tags decide."""
    from PIL import Image, ImageOps

    if opened.format != "TIFF":
        return ImageOps.exif_transpose(opened)
    tags = getattr(opened, "tag_v2", {})
    stored, orientation = (tags.get(256), tags.get(257)), tags.get(274)
    opened.load()
    if orientation in _TURNS and opened.size == stored:
        return opened.transpose(getattr(Image.Transpose, _TURNS[orientation]))
    return opened


def on_paper(images: torch.Tensor) -> torch.Tensor:
    """(b 3|4 H W) in [0, 1] -> (b 3 H W): RGBA composited onto white paper, RGB as it is."""
    if images.shape[1] == 4:
        alpha = images[:, 3:]
        return images[:, :3] * alpha + (1.0 - alpha)
    return images


def _pil_frames(frames: torch.Tensor) -> list:
    """(t 3 H W) in [0, 1] -> PIL images, rounded to 8 bits."""
    import numpy as np
    from PIL import Image

    arrays = (frames.permute(0, 2, 3, 1).cpu().numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    return [Image.fromarray(a) for a in arrays]


def save_frames(frames: torch.Tensor, out_dir: str | Path, fps: int = 8) -> list[Path]:
    """(t 3 H W) in [0, 1] -> frame_000.png ... and an animated preview.gif in out_dir."""
    out_dir = Path(out_dir)
    paths = save_images(frames, [out_dir / frame_name(i) for i in range(len(frames))])
    return paths + [save_gif(frames, out_dir / "preview.gif", fps)]


def frame_name(index: int) -> str:
    return f"frame_{index:03d}.png"


def save_images(frames: torch.Tensor, paths: Sequence[Path]) -> list[Path]:
    """(t 3 H W) in [0, 1] -> one 8-bit PNG per frame at `paths`."""
    for im, path in zip(_pil_frames(frames), paths):
        with files.atomic_path(path) as partial:  # a killed run leaves no truncated PNG under the name
            im.save(partial, format="PNG")
    return list(paths)


def save_strip(rows: Sequence[torch.Tensor], path: str | Path, height: int = 128) -> Path:
    """Clips of one length and size (t 3 H W each, in [0, 1]) -> one PNG, a row per clip of its frames
    side by side, each scaled to `height` pixels high (or kept if smaller): a sheet to compare them."""
    t, _, h, w = rows[0].shape
    th = min(height, h)
    tw = max(1, round(w * th / h))
    sheet = torch.cat([torch.cat(list(_resize(clip, th, tw)), dim=-1) for clip in rows], dim=-2)  # (3 rows*th t*tw)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _pil_frames(sheet[None])[0].save(path)
    return path


def save_gif(frames: torch.Tensor, path: str | Path, fps: int = 8) -> Path:
    """(t 3 H W) in [0, 1] -> an animated GIF at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save_gif(_pil_frames(frames), path, fps)


def _save_gif(images: list, path: Path, fps: int) -> Path:
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def image_files(paths: Sequence[Path], what: str) -> list[Path]:
    """Image files in the order given, each folder expanded to its images sorted by name; `what` names
    them in errors (e.g. "line-art")."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{what} file or folder not found: {path}")
    if not files:
        raise ValueError(f"no {what} images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    return files


def numbered_files(paths: Sequence[Path], what: str) -> tuple[list[Path], list[int]]:
    """`image_files` and the frame each is for: the last number in its name (sketch_05.png -> 5)."""
    files = image_files(paths, what)
    taken: dict[int, Path] = {}
    for f in files:
        numbers = re.findall(r"\d+", f.stem)
        if not numbers:
            raise ValueError(f"cannot tell which frame {f.name} is for: put the frame number in its name "
                             f"(e.g. {what.replace(' ', '_')}_05.png)")
        frame = int(numbers[-1])
        if frame in taken:
            raise ValueError(f"{taken[frame].name} and {f.name} are both for frame {frame}: keep one {what} per frame")
        taken[frame] = f
    return files, list(taken)
