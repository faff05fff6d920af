"""Image metrics and their score file: PSNR and SSIM (scikit-image) and LPIPS-AlexNet (the lpips package),
which `evaluate` scores runs with and training weighs its losses with; both packages come with the `eval`
extra."""

from __future__ import annotations

import csv
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install scikit-image lpips (or, in the pack\'s folder, pip install ".[eval]")'
CSV_COLUMNS = ("triplet", "psnr", "ssim", "lpips")
UNAVAILABLE = "unavailable"


class MetricUnavailable(ValueError):
    """A metric whose package or weights cannot be had; the message says why and how to get it."""


def image_metrics() -> tuple[Callable, Callable]:
    """scikit-image's PSNR and SSIM functions, or an error that says how to install them."""
    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    except ImportError as e:
        raise MetricUnavailable(f"PSNR and SSIM need scikit-image ({e}): {INSTALL_HINT}") from None
    return peak_signal_noise_ratio, structural_similarity


def psnr_ssim(generated: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(h w 3) uint8 pair -> (PSNR in dB, SSIM), both over a data range of 255."""
    psnr, ssim = image_metrics()
    with np.errstate(divide="ignore"):  # identical images: PSNR is inf
        p = psnr(truth, generated, data_range=255)
    return float(p), float(ssim(truth, generated, channel_axis=2, data_range=255))


def lpips_network(device: torch.device | str = "cpu") -> torch.nn.Module:
    """LPIPS-AlexNet, frozen, in eval mode; it takes images in [-1, 1]. torchvision downloads the AlexNet
    weights on first use, so offline this fails (MetricUnavailable, with where to put the file)."""
    try:
        import lpips
    except ImportError as e:
        raise MetricUnavailable(f"the lpips package cannot be imported ({e}); {INSTALL_HINT}") from None
    try:
        with warnings.catch_warnings():
            # lpips asks torchvision for AlexNet with the deprecated `pretrained=`: not the user's to fix.
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            net = lpips.LPIPS(net="alex", verbose=False)
    # torch.hub raises URLError (an OSError) offline and RuntimeError for a damaged download.
    except (OSError, RuntimeError) as e:
        raise MetricUnavailable(
            f"torchvision's AlexNet weights could not be loaded ({type(e).__name__}: {e}); connect once "
            f"to download them, or put alexnet-owt-7be5be79.pth into {Path(torch.hub.get_dir()) / 'checkpoints'}"
        ) from None
    return net.to(device).eval().requires_grad_(False)


class LpipsMetric:
    """LPIPS distance of uint8 images on the CPU, or None for every pair when it cannot be had (`reason`
    says why, once, as a warning)."""

    def __init__(self):
        self.net: Optional[torch.nn.Module] = None
        self.reason: Optional[str] = None
        try:
            self.net = lpips_network()
        except MetricUnavailable as e:
            self.reason = str(e)
            log.warning("LPIPS unavailable: %s", self.reason)

    def __call__(self, generated: np.ndarray, truth: np.ndarray) -> Optional[float]:
        """(h w 3) uint8 pair -> LPIPS distance (lower is closer), or None."""
        if self.net is None:
            return None
        a, b = (torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1.0 for x in (generated, truth))
        with torch.inference_mode():
            return float(self.net(a, b).item())


@dataclass(frozen=True)
class Score:
    """Metrics of one triplet's generated middle frame against frame2; lpips None: unavailable."""

    triplet: str
    psnr: float
    ssim: float
    lpips: Optional[float]


def write_scores(path: Path, scores: Sequence[Score]) -> None:
    """scores.csv: CSV_COLUMNS, metrics with 6 decimals, `unavailable` for a missing LPIPS."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for s in scores:
            lp = UNAVAILABLE if s.lpips is None else f"{s.lpips:.6f}"
            w.writerow([s.triplet, f"{s.psnr:.6f}", f"{s.ssim:.6f}", lp])


def read_scores(path: Path) -> list[Score]:
    """The scores `write_scores` wrote."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        Score(r["triplet"], float(r["psnr"]), float(r["ssim"]), None if r["lpips"] == UNAVAILABLE else float(r["lpips"]))
        for r in rows
    ]
