"""Keyframe fitting and frame conversion between pixel images and the model's [-1, 1] tensors."""

from __future__ import annotations

from pathlib import Path
import torch
import torch.nn.functional as F

FIT_METHODS = ("crop", "stretch", "pad")


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


def load_image(path: str | Path) -> torch.Tensor:
    """An image file -> (1 3 H W) in [0, 1]. Grayscale is repeated into RGB, alpha is dropped (the
    colour under transparent pixels is kept, not composited onto a background)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode.startswith("I"):
                # 16-bit grayscale (PNG opens as I;16 or I): PIL's RGB conversion clips it at 255,
                # which turns all but the darkest pixels white.
                gray = np.asarray(im, dtype=np.float32) / 65535.0
                arr = np.repeat(gray.clip(0, 1)[..., None], 3, axis=-1)
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (FileNotFoundError, UnidentifiedImageError) as e:
        raise ValueError(f"cannot read keyframe image {path}: {e}") from None
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]


def _pil_frames(frames: torch.Tensor) -> list:
    """(t 3 H W) in [0, 1] -> PIL images, rounded to 8 bits."""
    import numpy as np
    from PIL import Image

    arrays = (frames.permute(0, 2, 3, 1).cpu().numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    return [Image.fromarray(a) for a in arrays]


def save_frames(frames: torch.Tensor, out_dir: str | Path, fps: int = 8) -> list[Path]:
    """(t 3 H W) in [0, 1] -> frame_000.png ... and an animated preview.gif in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = _pil_frames(frames)
    paths = []
    for i, im in enumerate(images):
        paths.append(out_dir / f"frame_{i:03d}.png")
        im.save(paths[-1])
    return paths + [_save_gif(images, out_dir / "preview.gif", fps)]


def save_gif(frames: torch.Tensor, path: str | Path, fps: int = 8) -> Path:
    """(t 3 H W) in [0, 1] -> an animated GIF at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save_gif(_pil_frames(frames), path, fps)


def _save_gif(images: list, path: Path, fps: int) -> Path:
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path
