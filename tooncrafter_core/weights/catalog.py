"""The released checkpoint files of the family we know (ToonCrafter, DynamiCrafter), and a resumable
download into a folder.

Downloads go through `huggingface_hub` (imported only when a download is asked for). Offline, a
download fails at once with a message naming the file, its source and the folder to put it in.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
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


# Unfinished and unverified downloads live in this hidden folder of the models folder; a file reaches its
# name there only once complete and checked (loaders list the models folder, never this one).
STAGING = ".tooncrafter-download"
HASH_CHUNK = 16 << 20


def download(entry: ReleasedFile, folder: str | Path, tqdm_class=None) -> Path:
    """Fetch `entry` into `folder` (resumes a partial download), check it against the size and sha256
    the hub publishes, and only then give it its name; returns the file's path."""
    folder = Path(folder)
    target = folder / entry.name
    if target.is_file():
        return target
    try:
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
    except ImportError:
        raise DownloadError(f"huggingface_hub is not installed; {manual_instructions(entry, folder)}") from None
    if constants.HF_HUB_OFFLINE:
        raise DownloadError(f"HF_HUB_OFFLINE is set, so nothing is downloaded: {manual_instructions(entry, folder)}")
    endpoint = urlparse(constants.ENDPOINT)
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        # A quick probe: offline, huggingface_hub would retry for half a minute before giving up.
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        raise DownloadError(f"cannot reach {host} ({e}); {manual_instructions(entry, folder)}") from None
    staging = folder / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s (%s) from %s", entry.name, entry.size, entry.repo_id)
    try:
        published = get_hf_file_metadata(hf_hub_url(entry.repo_id, entry.filename, revision=entry.revision), timeout=10)
        path = Path(hf_hub_download(entry.repo_id, entry.filename, revision=entry.revision, local_dir=staging,
                                    tqdm_class=tqdm_class, etag_timeout=5))
    except Exception as e:  # network, offline mode, auth, disk: all end in the same advice
        raise DownloadError(f"could not download {entry.name} ({type(e).__name__}: {e}); {manual_instructions(entry, folder)}") from e
    unverified = staging / f"{entry.name}.unverified"
    os.replace(path, unverified)
    problem = _mismatch(unverified, published.size, published.etag)
    if problem:
        unverified.unlink()
        raise DownloadError(f"the downloaded {entry.name} is not the file {entry.repo_id} publishes ({problem}): deleted it; "
                            f"run again to download it again, or {manual_instructions(entry, folder)}")
    os.replace(unverified, target)
    return target


def _mismatch(path: Path, size: Optional[int], etag: Optional[str]) -> Optional[str]:
    """What differs between the file and the hub's size and (for large files, whose etag is it) sha256."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"{actual} bytes, the hub says {size}"
    expected = (etag or "").strip('"').removeprefix("W/").strip('"').lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        return None  # a small file's etag is a git hash, not its sha256; its size matched
    log.info("checking the sha256 of %s", path.name)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        return f"sha256 {digest.hexdigest()[:12]}…, the hub says {expected[:12]}…"
    return None
