"""The released checkpoint files of the family we know (ToonCrafter, DynamiCrafter), and a resumable
download into a folder.

Downloads go through `huggingface_hub` (imported only when a download is asked for). Offline, a
download fails at once with a message naming the file, its source and the folder to put it in.
"""

from __future__ import annotations

import logging
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReleasedFile:
    name: str  # file name in the models folder
    repo_id: str
    filename: str  # file name in the repository
    revision: Optional[str]
    size: str  # approximate, as published
    encoders: bool  # holds the OpenCLIP text and image encoders
    note: str
    # The conditioning the release was trained with where its weights cannot tell (DynamiCrafter 512's
    # image-to-video and interpolation files share one layout), and its scripts' fs.
    tasks: tuple[str, ...] = ()
    fs_default: Optional[int] = None

    @property
    def url(self) -> str:
        rev = self.revision or "main"
        return f"https://huggingface.co/{self.repo_id}/resolve/{rev}/{self.filename}"


RELEASED: tuple[ReleasedFile, ...] = (
    ReleasedFile(
        "tooncrafter_512_interp-fp16.safetensors",
        "Kijai/DynamiCrafter_pruned",
        "tooncrafter_512_interp-fp16.safetensors",
        None,
        "5.3 GB",
        True,
        "all components in fp16 (recommended)",
    ),
    ReleasedFile(
        "tooncrafter_512_interp-pruned-fp16.safetensors",
        "Kijai/DynamiCrafter_pruned",
        "tooncrafter_512_interp-pruned-fp16.safetensors",
        None,
        "3.1 GB",
        False,
        "fp16 without text/image encoders: use ComfyUI's CLIP (SD2.1 / ViT-H text) and CLIP_VISION (ViT-H-14)",
    ),
    ReleasedFile(
        "tooncrafter_512_interp.safetensors",
        "Doubiiu/ToonCrafter",
        "model.safetensors",
        "refs/pr/4",
        "10.5 GB",
        True,
        "the original fp32 weights converted to safetensors",
    ),
    ReleasedFile(
        "tooncrafter_512_interp.ckpt",
        "Doubiiu/ToonCrafter",
        "model.ckpt",
        None,
        "10.5 GB",
        True,
        "the original release (pickle; loaded with weights_only)",
    ),
)

# DynamiCrafter (Xing et al. 2024), ToonCrafter's family: image-to-video at 256, 512 and 1024 and the 512
# interpolation model. The original releases are fp32 pickles with everything; the fp16 conversions
# lack the text and image encoders (use ComfyUI's CLIP and CLIP_VISION, as for ToonCrafter's pruned file).
DYNAMICRAFTER: tuple[ReleasedFile, ...] = (
    ReleasedFile(
        "dynamicrafter_512_fp16_pruned.safetensors", "Kijai/DynamiCrafter_pruned", "dynamicrafter_512_fp16_pruned.safetensors",
        None, "3.1 GB", False, "DynamiCrafter image-to-video 320x512, fp16, no text/image encoders",
        ("image_to_video",), 24,
    ),
    ReleasedFile(
        "dynamicrafter_512_interp_fp16_pruned.safetensors", "Kijai/DynamiCrafter_pruned",
        "dynamicrafter_512_interp_fp16_pruned.safetensors", None, "3.1 GB", False,
        "DynamiCrafter interpolation 320x512, fp16, no text/image encoders", ("interpolation",), 5,
    ),
    ReleasedFile(
        "dynamicrafter_1024_fp16_pruned.safetensors", "Kijai/DynamiCrafter_pruned", "dynamicrafter_1024_fp16_pruned.safetensors",
        None, "3.1 GB", False, "DynamiCrafter image-to-video 576x1024, fp16, no text/image encoders",
        ("image_to_video",), 10,
    ),
    ReleasedFile(
        "dynamicrafter_256.ckpt", "Doubiiu/DynamiCrafter", "model.ckpt", None, "10.4 GB", True,
        "DynamiCrafter image-to-video 256x256, the original release (fp32 pickle; loaded with weights_only)",
        ("image_to_video",), 3,
    ),
    ReleasedFile(
        "dynamicrafter_512.ckpt", "Doubiiu/DynamiCrafter_512", "model.ckpt", None, "10.4 GB", True,
        "DynamiCrafter image-to-video 320x512, the original release", ("image_to_video",), 24,
    ),
    ReleasedFile(
        "dynamicrafter_1024.ckpt", "Doubiiu/DynamiCrafter_1024", "model.ckpt", None, "10.4 GB", True,
        "DynamiCrafter image-to-video 576x1024, the original release", ("image_to_video",), 10,
    ),
    ReleasedFile(
        "dynamicrafter_512_interp.ckpt", "Doubiiu/DynamiCrafter_512_Interp", "model.ckpt", None, "10.4 GB", True,
        "DynamiCrafter interpolation 320x512, the original release", ("interpolation",), 5,
    ),
)

DEFAULT = RELEASED[0]
# What `animate` downloads when no checkpoint is given: the image-to-video release with its encoders.
DEFAULT_IMAGE_TO_VIDEO = DYNAMICRAFTER[4]
FAMILY = RELEASED + DYNAMICRAFTER

# The sketch encoder (sketch guidance, `sketch.py`): a separate file, same layout in all three.
SKETCH_ENCODERS: tuple[ReleasedFile, ...] = (
    ReleasedFile(
        "sketch_encoder-fp16.safetensors",
        "Kijai/DynamiCrafter_pruned",
        "sketch_encoder-fp16.safetensors",
        None,
        "728 MB",
        False,
        "the sketch encoder in fp16 (recommended)",
    ),
    ReleasedFile(
        "sketch_encoder.safetensors",
        "Doubiiu/ToonCrafter",
        "sketch_encoder.safetensors",
        "refs/pr/4",
        "1.46 GB",
        False,
        "the original fp32 sketch encoder converted to safetensors",
    ),
    ReleasedFile(
        "sketch_encoder.ckpt",
        "Doubiiu/ToonCrafter",
        "sketch_encoder.ckpt",
        None,
        "1.46 GB",
        False,
        "the original sketch encoder release (pickle; loaded with weights_only)",
    ),
)

DEFAULT_SKETCH = SKETCH_ENCODERS[0]


class DownloadError(RuntimeError):
    """A checkpoint could not be fetched; the message says where to get it and where to put it."""


def find(name: str, files: tuple[ReleasedFile, ...] = FAMILY) -> Optional[ReleasedFile]:
    return next((f for f in files if f.name == name), None)


def manual_instructions(entry: ReleasedFile, folder: Path) -> str:
    return f"download {entry.url} ({entry.size}) and save it as {Path(folder) / entry.name}"


def download(entry: ReleasedFile, folder: str | Path, tqdm_class=None) -> Path:
    """Fetch `entry` into `folder` (resumes a partial download); returns the file's path."""
    folder = Path(folder)
    target = folder / entry.name
    if target.is_file():
        return target
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise DownloadError(f"huggingface_hub is not installed; {manual_instructions(entry, folder)}") from None
    host = urlparse(entry.url).hostname
    try:
        # A quick probe: offline, huggingface_hub would retry for half a minute before giving up.
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as e:
        raise DownloadError(f"cannot reach {host} ({e}); {manual_instructions(entry, folder)}") from None
    folder.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s (%s) from %s", entry.name, entry.size, entry.repo_id)
    try:
        path = Path(
            hf_hub_download(
                entry.repo_id,
                entry.filename,
                revision=entry.revision,
                local_dir=folder,
                tqdm_class=tqdm_class,
                etag_timeout=5,
            )
        )
    except Exception as e:  # network, offline mode, auth, disk: all end in the same advice
        raise DownloadError(f"could not download {entry.name} ({type(e).__name__}: {e}); {manual_instructions(entry, folder)}") from e
    if path != target:
        shutil.move(str(path), target)
    return target
