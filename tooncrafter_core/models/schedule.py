"""Noise schedule: scaled-linear betas rescaled to zero terminal SNR (Lin et al. 2023, Alg. 1),
v-prediction conversions, and the dynamic-rescale table `scale_arr`.

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


@dataclass(frozen=True)
class Schedule:
    alphas_cumprod: torch.Tensor  # (T,) fp32
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    scale_arr: torch.Tensor | None  # (T + turning_step,) or None without dynamic rescale

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
        return cls(f32(ac), f32(np.sqrt(ac)), f32(np.sqrt(1.0 - ac)), scale_arr)

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

    def v_to_eps(self, x: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._at(self.sqrt_alphas_cumprod, t, x) * v + self._at(self.sqrt_one_minus_alphas_cumprod, t, x) * x

    def v_to_x0(self, x: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._at(self.sqrt_alphas_cumprod, t, x) * x - self._at(self.sqrt_one_minus_alphas_cumprod, t, x) * v
