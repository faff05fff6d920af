"""The original's noise process as noise levels σ, for samplers written like k-diffusion's (ComfyUI's).

The original noises a scaled latent as x_t = a_t·x0 + b_t·eps, with a_t = sqrt(ᾱ_t)·s_t (s_t: the
dynamic rescale `scale_arr`) and b_t = sqrt(1 - ᾱ_t), and its DDIM ends at t = 0, which still holds
b_0·eps of noise. Divided by k_t = a_t + b_t - a_t·σ_0 (σ_0 = b_0 / a_0), the latent becomes

    x = (1 - σ)·D + σ·eps,   D = x0 + σ_0·eps,   σ = (b_t - a_t·σ_0) / k_t,

a flow from σ = 1 (ᾱ = 0: pure noise, and still finite) to σ = 0 (the original's final state at
t = 0). In these terms a DDIM step with eta 0 is exactly an Euler step dx/dσ = (x - D)/σ, so the
stock samplers integrate the original's own ODE and end where it ends. The network still sees x_t
and the integer (or, between the trained levels, fractional) timestep it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .models.schedule import Schedule


def _per_sample(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample (b,) or scalar coefficient shaped to broadcast over `like` (b ...)."""
    value = value.to(like.device, torch.float32)
    if value.ndim == 0 or value.numel() == 1:
        return value.reshape(())
    return value.reshape(value.shape[0], *([1] * (like.ndim - 1)))


@dataclass(frozen=True)
class LevelCoefficients:
    """Everything the network and the samplers need at a noise level σ, each (n,) in float64."""

    t: torch.Tensor  # the network's timestep (fractional between trained levels)
    k: torch.Tensor  # x_t = k·x
    sqrt_alpha: torch.Tensor  # sqrt(ᾱ)
    sqrt_one_minus_alpha: torch.Tensor  # sqrt(1 - ᾱ)
    scale: torch.Tensor  # s, the dynamic rescale


class NoiseLevels:
    """σ <-> timestep, the network's input and output around σ, and the original's timesteps as σ."""

    def __init__(self, schedule: Schedule):
        ac = schedule.alphas_cumprod.double()
        self.num_timesteps = ac.shape[0]
        scale = schedule.scale_arr[: self.num_timesteps].double() if schedule.scale_arr is not None else torch.ones_like(ac)
        a, b = ac.sqrt() * scale, (1 - ac).sqrt()
        self.schedule = schedule
        self.scale = scale  # (T,) float64
        self.sigma_0 = float(b[0] / a[0])  # the original's residue at t = 0, in units of D
        # σ for t = 0 .. T-1, rounded to float32 once: hosts hand these values back, and a level read
        # from this table must map to its integer timestep exactly.
        table = (b - a * self.sigma_0) / (a + b - a * self.sigma_0)
        table[0] = 0.0  # exactly, not the rounding residue of b_0 - a_0·(b_0 / a_0)
        self.table = table.float()
        self._table64 = self.table.double()

    @property
    def sigma_min(self) -> float:
        """The smallest trained level above the final one (t = 1)."""
        return float(self.table[1])

    @property
    def sigma_max(self) -> float:
        return float(self.table[-1])

    def scheduler_table(self) -> torch.Tensor:
        """The levels of t = 0 .. T-1 for a host's schedulers, float32. The final level (t = 0) is σ = 0
        exactly; here it is one thousandth of t = 1's level instead, because schedulers that land on it
        append another 0 and an Euler step from 0 to 0 divides 0 by 0. The extra noise it stands for is
        1e-5 of the clip's scale."""
        table = self.table.clone()
        table[0] = table[1] * 1e-3
        return table

    # ------------------------------------------------------------------------------------------
    # σ <-> timestep

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Levels (n,) -> timesteps (n,) float64, integer on the trained levels, linear between them."""
        s = sigma.detach().to("cpu", torch.float64).reshape(-1).clamp(0.0, 1.0)
        table = self._table64
        hi = torch.searchsorted(table, s).clamp(1, self.num_timesteps - 1)
        lo = hi - 1
        frac = (s - table[lo]) / (table[hi] - table[lo])
        return (lo.double() + frac.clamp(0.0, 1.0)).reshape(sigma.shape)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Timesteps (n,) (fractional allowed) -> levels (n,) float32."""
        t = timestep.detach().to("cpu", torch.float64).clamp(0, self.num_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_timesteps - 2)
        frac = t - lo
        table = self._table64
        return ((1 - frac) * table[lo] + frac * table[lo + 1]).float().to(timestep.device)

    def coefficients(self, sigma: torch.Tensor) -> LevelCoefficients:
        """The process at levels σ (n,). Between trained levels s follows `scale_arr` linearly in t and
        ᾱ is the one that gives exactly σ, so the network always sees a correctly noised input."""
        s64 = sigma.detach().to("cpu", torch.float64).reshape(-1).clamp(0.0, 1.0)
        t = self.timestep(s64)
        lo = t.floor().long().clamp(max=self.num_timesteps - 2)
        frac = t - lo
        scale = (1 - frac) * self.scale[lo] + frac * self.scale[lo + 1]
        # With u = 1 - σ and w = (σ + σ_0·u)·s: sqrt(ᾱ) = u / r, sqrt(1 - ᾱ) = w / r, k = s / r,
        # r = sqrt(u² + w²); finite at σ = 1 (ᾱ = 0: u = 0, k = 1).
        u = 1.0 - s64
        w = (s64 + self.sigma_0 * u) * scale
        r = torch.sqrt(u * u + w * w)
        return LevelCoefficients(t, scale / r, u / r, w / r, scale)

    # ------------------------------------------------------------------------------------------
    # The network around a level

    def model_input(self, sigma: torch.Tensor, x: torch.Tensor, c: LevelCoefficients | None = None) -> torch.Tensor:
        """x at levels σ -> the original's noisy latent x_t the network takes."""
        c = c or self.coefficients(sigma)
        return x * _per_sample(c.k, x)

    def denoised(
        self, sigma: torch.Tensor, x: torch.Tensor, out: torch.Tensor, c: LevelCoefficients | None = None
    ) -> torch.Tensor:
        """The network's output (v or ε, the schedule's `Prediction`) at (x, σ) -> D = x0 + σ_0·eps, the
        point x flows to at σ = 0."""
        c = c or self.coefficients(sigma)
        x_t = x * _per_sample(c.k, x)
        sa, sb = _per_sample(c.sqrt_alpha, x), _per_sample(c.sqrt_one_minus_alpha, x)
        x0, eps = self.schedule.prediction.split(x_t, out, sa, sb)
        return x0 / _per_sample(c.scale, x) + self.sigma_0 * eps

    def output_from_denoised(self, sigma: torch.Tensor, x: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        """The inverse of `denoised`: the network output that gives `denoised` at (x, σ)."""
        c = self.coefficients(sigma)
        p, q, r, u = self.schedule.prediction.coefficients(c.sqrt_alpha, c.sqrt_one_minus_alpha)
        # denoised = (p·x_t + q·out)/s + σ_0·(r·x_t + u·out) = A·x + B·out with x_t = k·x. For v, B vanishes
        # only at σ = 0, where the network is never asked.
        a_coef = _per_sample(c.k * (p / c.scale + self.sigma_0 * r), x)
        b_coef = _per_sample(q / c.scale + self.sigma_0 * u, x)
        return (denoised - a_coef * x) / b_coef

    def split(self, sigma: torch.Tensor, x: torch.Tensor, denoised: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, D) at levels σ > 0 -> (x0, eps): the clean latent (before the dynamic rescale) and the noise."""
        s = _per_sample(sigma.double().reshape(-1).clamp(min=1e-12), x)
        eps = (x - (1 - s) * denoised) / s
        return denoised - self.sigma_0 * eps, eps

    def from_latent(self, sigma: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """The original's noisy latent x_t at levels σ -> x."""
        return x_t / _per_sample(self.coefficients(sigma).k, x_t)

    @staticmethod
    def noise_scaling(sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """A sampler's start at level σ from noise and a latent (σ = 1: the noise itself)."""
        s = _per_sample(sigma, noise)
        return s * noise + (1.0 - s) * latent

    @staticmethod
    def inverse_noise_scaling(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x at level σ < 1 -> the sampler's result (at σ = 0: D); `noise_scaling` with no noise gives x
        back, so a run stopped at σ can go on from it."""
        return x / (1.0 - _per_sample(sigma, x))

    @property
    def latent_scale(self) -> float:
        """k at σ = 0: a finished run's D times this is the original's final latent, what it decodes.
        Hosts hand latents on in those units (ComfyUI: the latent format's scale is its inverse)."""
        return float(self.coefficients(torch.zeros(1)).k)

    # ------------------------------------------------------------------------------------------
    # The original's timesteps

    def ddim_sigmas(self, timesteps: np.ndarray) -> torch.Tensor:
        """Ascending DDIM timesteps (`sampling.ddim_timesteps`) -> descending levels ending at 0 (t = 0),
        the original's sampling run as a host's SIGMAS."""
        ts = torch.as_tensor(np.asarray(timesteps), dtype=torch.long).flip(0)
        return torch.cat([self.table[ts], torch.zeros(1)])
