"""Noise schedule: scaled-linear betas, optionally rescaled to zero terminal SNR (Lin et al. 2023,
Alg. 1), the dynamic-rescale table `scale_arr`, and what the network predicts (`Prediction`: v or the
noise) with its conversions.

Computed in float64 and stored in float32, like the original's registered buffers, so half-precision
checkpoint files never degrade the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import ScheduleConfig

# Top-level checkpoint buffers that this module recomputes instead of loading.
SCHEDULE_KEYS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "scale_arr",
)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    alphas_bar_sqrt = np.sqrt(np.cumprod(1.0 - betas))
    first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1.0 - alphas


PREDICTIONS = ("v", "eps")


@dataclass(frozen=True)
class Prediction:
    """What the network outputs at a noisy latent x_t = sqrt(ᾱ)·x0 + sqrt(1-ᾱ)·ε: v = sqrt(ᾱ)·ε - sqrt(1-ᾱ)·x0
    (Salimans & Ho 2022; ToonCrafter, DynamiCrafter 512/1024) or ε itself (Ho et al. 2020; DynamiCrafter 256).
    Both x0 and ε are affine in the output: x0 = p·x_t + q·out, ε = r·x_t + u·out."""

    kind: str = "v"

    def __post_init__(self):
        if self.kind not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.kind!r}; the family predicts one of {', '.join(PREDICTIONS)}")

    def coefficients(self, sa, sb) -> tuple:
        """(p, q, r, u) at sqrt(ᾱ) = sa, sqrt(1-ᾱ) = sb (tensors or floats)."""
        if self.kind == "v":
            return sa, -sb, sb, sa
        return 1.0 / sa, -sb / sa, 0.0, 1.0

    def split(self, x_t: torch.Tensor, out: torch.Tensor, sa, sb) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (x0, ε): the original's pred_x0 (before any dynamic rescale) and the noise."""
        if self.kind == "v":
            return sa * x_t - sb * out, sb * x_t + sa * out
        return (x_t - sb * out) / sa, out

    def target(self, x0: torch.Tensor, eps: torch.Tensor, sa, sb) -> torch.Tensor:
        """The training target for clean latents x0 (already scaled) and noise ε."""
        return sa * eps - sb * x0 if self.kind == "v" else eps


@dataclass(frozen=True)
class Schedule:
    alphas_cumprod: torch.Tensor  # (T,) fp32
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    scale_arr: torch.Tensor | None  # (T + turning_step,) or None without dynamic rescale
    prediction: Prediction = Prediction()

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @classmethod
    def from_config(cls, cfg: ScheduleConfig) -> "Schedule":
        betas = np.linspace(cfg.linear_start**0.5, cfg.linear_end**0.5, cfg.timesteps, dtype=np.float64) ** 2
        if cfg.rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        ac = np.cumprod(1.0 - betas)
        # Explicit CPU: models are built under a meta-device context, the schedule must stay real.
        f32 = lambda a: torch.tensor(a, dtype=torch.float32, device="cpu")  # noqa: E731
        scale_arr = None
        if cfg.use_dynamic_rescale:
            scale_arr = f32(
                np.concatenate([np.linspace(1.0, cfg.base_scale, cfg.turning_step), np.full(cfg.timesteps, cfg.base_scale)])
            )
        return cls(f32(ac), f32(np.sqrt(ac)), f32(np.sqrt(1.0 - ac)), scale_arr, Prediction(cfg.parameterization))

    def buffers(self) -> dict[str, torch.Tensor]:
        """The schedule buffers that can be compared with a checkpoint's."""
        out = {
            "alphas_cumprod": self.alphas_cumprod,
            "sqrt_alphas_cumprod": self.sqrt_alphas_cumprod,
            "sqrt_one_minus_alphas_cumprod": self.sqrt_one_minus_alphas_cumprod,
        }
        if self.scale_arr is not None:
            out["scale_arr"] = self.scale_arr
        return out

    def _at(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        v = table.to(t.device)[t].to(like.dtype)
        return v.view(-1, *([1] * (like.ndim - 1)))

    def split(self, x: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's output at (x_t, integer t) -> (eps, x0), x0 before the dynamic rescale."""
        sa, sb = self._at(self.sqrt_alphas_cumprod, t, x), self._at(self.sqrt_one_minus_alphas_cumprod, t, x)
        x0, eps = self.prediction.split(x, out, sa, sb)
        return eps, x0

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output for scaled clean latents x0 and noise eps at t."""
        sa, sb = self._at(self.sqrt_alphas_cumprod, t, x0), self._at(self.sqrt_one_minus_alphas_cumprod, t, x0)
        return self.prediction.target(x0, eps, sa, sb)
