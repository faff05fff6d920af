"""DDIM sampling as plain functions, with classifier-free guidance as a model wrapper.

`sample_ddim(denoiser, x, plan, ...)` never touches the network: a denoiser maps (x, t) to
(eps, x0); `Denoiser` adapts a v- or eps-predicting model to that and `GuidedModel` adds CFG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .models.schedule import Schedule
from .noise_levels import NoiseLevels

# A network with its conditions bound: (x_t, t) -> its output (v or eps, the schedule's `Prediction`).
Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_timesteps(steps: int, spacing: str, num_train: int = 1000) -> np.ndarray:
    """Ascending DDIM timesteps: 'uniform' (0, c, 2c, ... + 1) or 'uniform_trailing' (ending at T-1)."""
    if steps > num_train:
        raise ValueError(f"steps must be at most {num_train}, got {steps}")
    if spacing == "uniform":
        # As the original: when steps does not divide num_train this yields a few extra steps.
        ts = np.arange(0, num_train, num_train // steps) + 1
        if ts[-1] >= num_train:
            raise ValueError(
                f"'uniform' spacing cannot take {steps} steps over {num_train} timesteps "
                f"(the last one would be {ts[-1]}); choose another step count or 'uniform_trailing'"
            )
        return ts
    if spacing == "uniform_trailing":
        c = num_train / steps
        return np.flip(np.round(np.arange(num_train, 0, -c))).astype(np.int64) - 1
    raise ValueError(f"unknown timestep spacing {spacing!r}; use 'uniform' or 'uniform_trailing'")


@dataclass(frozen=True)
class DDIMStep:
    t: int
    alpha: float  # alpha-bar at t
    alpha_prev: float  # alpha-bar at the next (lower) step
    sigma: float
    rescale: float  # dynamic rescale of x0: scale_arr[prev] / scale_arr[t]
    dir_coef: float  # sqrt(1 - alpha_prev - sigma^2), the weight of eps in x_prev


def ddim_plan(schedule: Schedule, steps: int, spacing: str, eta: float) -> list[DDIMStep]:
    """The steps in sampling order (highest t first), with the original's arithmetic: sigma in
    float64 from the float32 alpha-bars, then everything a step uses rounded to float32."""
    ts = ddim_timesteps(steps, spacing, schedule.num_timesteps)
    ac = schedule.alphas_cumprod
    alphas_prev = torch.cat([ac[:1], ac[ts[:-1]]])
    if schedule.scale_arr is not None:
        scale = schedule.scale_arr[ts]
        # As the original: the lowest timestep's "previous" scale is its own, so the last step keeps
        # x0 at that scale instead of bringing it to t = 0's (1.0).
        scale_prev = torch.cat([scale[:1], scale[:-1]])
        rescale = scale_prev / scale
    else:
        rescale = torch.ones(len(ts))
    return ddim_steps(torch.as_tensor(ts), ac[ts], alphas_prev, rescale, eta)[::-1]


def ddim_steps(
    ts: torch.Tensor, alphas: torch.Tensor, alphas_prev: torch.Tensor, rescale: torch.Tensor, eta: float
) -> list[DDIMStep]:
    """DDIM steps from float32 alpha-bars at each step's timestep and at the one it goes to."""
    alphas, alphas_prev = alphas.float().double(), alphas_prev.float().double()
    sigmas = (eta * torch.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))).float()
    # The original evaluates 1 - a_prev - sigma^2 in float32 at every step. At zero terminal SNR
    # the first step's exact value is 0, but its rounding leaves +-2^-24 depending on the step
    # count (50 or 6 trailing steps: +5.96e-8, so 2.44e-4 * eps is kept). Reproduce that, and
    # clamp only where it went negative (the original's sqrt would give NaN there).
    dir_coefs = (1.0 - alphas_prev.float() - sigmas**2).clamp(min=0.0).sqrt()
    return [
        DDIMStep(
            int(round(float(ts[i]))), float(alphas[i]), float(alphas_prev[i]), float(sigmas[i]), float(rescale[i]),
            float(dir_coefs[i]),
        )
        for i in range(len(ts))
    ]


class Denoiser:
    """Adapts a model (x, t) -> its output (v or eps) to the sampler's (x, t) -> (eps, x0)."""

    def __init__(self, model: Network, schedule: Schedule):
        self.model = model
        self.schedule = schedule

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.schedule.split(x, t, self.model(x, t))


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, factor: float) -> torch.Tensor:
    """Match the guided prediction's std to the conditional one (Lin et al. 2023, Sec. 3.4)."""
    dims = list(range(1, cond.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return factor * rescaled + (1 - factor) * guided


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float, rescale: float) -> torch.Tensor:
    """Classifier-free guidance with the original's guidance rescale, on the network's own output (v or
    eps), as the original applies both."""
    guided = uncond + scale * (cond - uncond)
    return rescale_guidance(guided, cond, rescale) if rescale > 0 else guided


def level_guidance(
    levels: NoiseLevels,
    sigma: torch.Tensor,
    x: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scale: float,
    rescale: float,
) -> torch.Tensor:
    """Classifier-free guidance with the original's guidance rescale for a host that guides the
    denoised predictions D of `NoiseLevels` (cond, uncond) -> guided D. The rescale matches standard
    deviations of the network's output, which D is not proportional to, so it runs on the outputs each D
    comes from."""
    if scale == 1.0:
        return cond
    out_cond = levels.output_from_denoised(sigma, x, cond)
    out_uncond = levels.output_from_denoised(sigma, x, uncond)
    return levels.denoised(sigma, x, guide(out_cond, out_uncond, scale, rescale))


class GuidedModel:
    """Classifier-free guidance over a conditional model `net(x, t, cond) -> output`.

    With `batch`, cond and uncond share one network call (2b inputs); `cond`/`uncond` are
    per-call keyword dicts whose tensors are concatenated along the batch dim.
    """

    def __init__(
        self,
        net: Callable[..., torch.Tensor],
        cond: dict,
        uncond: Optional[dict],
        scale: float,
        rescale: float = 0.0,
        batch: bool = True,
    ):
        self.net, self.cond, self.uncond = net, cond, uncond
        self.scale, self.rescale, self.batch = scale, rescale, batch

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.uncond is None or self.scale == 1.0:
            return self.net(x, t, **self.cond)
        if self.batch:
            both = {k: torch.cat([self.cond[k], self.uncond[k]]) for k in self.cond}
            v_cond, v_uncond = self.net(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
        else:
            v_cond = self.net(x, t, **self.cond)
            v_uncond = self.net(x, t, **self.uncond)
        return guide(v_cond, v_uncond, self.scale, self.rescale)


def ddim_update(
    x: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, step: DDIMStep, noise: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update (Song et al. 2021, Eq. 12) with the original's dynamic rescale of x0."""
    x0 = x0 * step.rescale
    x_prev = step.alpha_prev**0.5 * x0 + step.dir_coef * eps
    if step.sigma > 0:
        if noise is None:
            raise ValueError("a stochastic DDIM step (eta > 0) needs noise")
        x_prev = x_prev + step.sigma * noise
    return x_prev, x0


StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]

# Steps between checks for NaN/inf: each check waits for the device, so not at every step.
FINITE_CHECK_EVERY = 5


class SamplingOverflowError(FloatingPointError):
    """The denoiser's output overflowed (NaN/inf) during sampling; the message names the fix."""

    def __init__(self, step: int, steps: int, dtype: torch.dtype):
        self.step, self.steps, self.dtype = step, steps, dtype
        if dtype == torch.float16:
            # fp16 tops out at 65504; bf16 has fp32's exponent range at fp16's memory and speed.
            fix = "compute in bfloat16 or float32 instead"
        else:
            fix = (
                "with this much range the weights themselves are off: lower the LoRA strength, or "
                "convert or download the checkpoint again"
            )
        super().__init__(
            f"sampling produced NaN/inf values by step {step} of {steps} while computing in "
            f"{str(dtype).removeprefix('torch.')}; {fix}"
        )


def sample_ddim(
    denoiser: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    plan: Sequence[DDIMStep],
    generator: Optional[torch.Generator] = None,
    noises: Optional[Sequence[torch.Tensor]] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, Alg. in Sec. 4.1) from x = x_T along `plan`.

    Per-step noise comes from `noises[i]` or is drawn with `generator` (only when eta > 0).
    `callback(i, x, x0)` runs after every step; raising from it stops sampling. Non-finite values
    stop sampling with SamplingOverflowError (checked at the first step, every FINITE_CHECK_EVERY
    steps and at the last).
    """
    check = FiniteCheck(len(plan))
    for i, step in enumerate(plan):
        t = torch.full((x.shape[0],), step.t, device=x.device, dtype=torch.long)
        eps, x0 = denoiser(x, t)
        noise = None
        if step.sigma > 0:
            noise = noises[i].to(x) if noises is not None else _draw(x, generator)
        x, x0 = ddim_update(x, eps, x0, step, noise)
        check(i, x)
        if callback is not None:
            callback(i, x, x0)
    return x


def level_plan(levels: NoiseLevels, sigmas: torch.Tensor, eta: float) -> list[DDIMStep]:
    """The original's DDIM steps between consecutive noise levels (descending, `NoiseLevels` terms).

    On the trained levels (timesteps the original can visit) the steps use its float32 alpha-bars,
    and a run that ends at level 0 (t = 0) keeps its last x0 at the scale of the level it came from,
    as the original's last step does; that is `ddim_plan` exactly. Between trained levels the
    alpha-bars and scales are the ones `NoiseLevels` gives there."""
    sigmas = sigmas.detach().float().cpu()
    ts = levels.timestep(sigmas)
    schedule = levels.schedule
    trained = bool((ts - ts.round()).abs().max() < 1e-6)
    if trained:
        alphas = schedule.alphas_cumprod[ts.round().long()]
        scales = levels.scale[ts.round().long()]
    else:
        c = levels.coefficients(sigmas)
        alphas, scales = (c.sqrt_alpha**2).float(), c.scale
    rescale = scales[1:] / scales[:-1]
    if float(sigmas[-1]) == 0.0:
        rescale[-1] = 1.0
    return ddim_steps(ts[:-1], alphas[:-1], alphas[1:], rescale, eta)


def sample_ddim_levels(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    levels: NoiseLevels,
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """The original's DDIM (`level_plan`) for a sampler host that works in noise levels: x at level
    `sigmas[0]` (`NoiseLevels` terms, e.g. ComfyUI's sampler input) -> x at `sigmas[-1]`.

    `denoiser(x, sigma (b,)) -> D` is the host's guided model. Each step splits D into x0 and eps,
    takes the original's step on the noisy latent x_t and goes back to the host's terms, so with
    eta 0 it is an Euler step and with eta > 0 it draws its noise from `generator` like `sample_ddim`.
    `callback(i, x, D)` runs after every step.
    """
    plan = level_plan(levels, sigmas, eta)
    check = FiniteCheck(len(plan))
    for i, step in enumerate(plan):
        sigma = sigmas[i].expand(x.shape[0]).to(x.device)
        denoised = denoiser(x, sigma)
        x0, eps = levels.split(sigma, x, denoised)
        scale = levels.coefficients(sigma).scale
        pred_x0 = x0 * scale.to(x).reshape(-1, *([1] * (x.ndim - 1)))  # the original's x0, at its scale
        noise = _draw(x, generator) if step.sigma > 0 else None
        x_prev, _ = ddim_update(x, eps, pred_x0, step, noise)
        x = levels.from_latent(sigmas[i + 1].expand(x.shape[0]), x_prev)
        check(i, x)
        if callback is not None:
            callback(i, x, denoised)
    return x


class FiniteCheck:
    """Raises SamplingOverflowError once sampling produced NaN/inf: checked at the first step, every
    FINITE_CHECK_EVERY steps and at the last (each check waits for the device)."""

    def __init__(self, steps: int):
        self.steps, self.bad = steps, None

    def __call__(self, i: int, x: torch.Tensor) -> None:
        nonfinite = ~torch.isfinite(x).all()
        self.bad = nonfinite if self.bad is None else self.bad | nonfinite
        if (i % FINITE_CHECK_EVERY == 0 or i == self.steps - 1) and self.bad.item():
            raise SamplingOverflowError(i + 1, self.steps, x.dtype)


def draw_normal(shape, generator: Optional[torch.Generator], device=None) -> torch.Tensor:
    """A standard normal fp32 draw of `shape` on the generator's device (the CPU without one), moved to
    `device`: every random draw of a run goes through here, so a seed gives the same draws on any device."""
    noise = torch.randn(tuple(shape), generator=generator, device=_gen_device(generator), dtype=torch.float32)
    return noise if device is None else noise.to(device)


def _draw(like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    return _to_like(draw_normal(like.shape, generator), like)


def _to_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t` on `like`'s device and dtype. A CPU draw goes to a GPU through pinned memory without
    blocking: a plain copy from pageable memory would wait for every queued kernel at each step."""
    if t.device.type == "cpu" and like.device.type == "cuda":
        t = t.pin_memory().to(like.device, non_blocking=True)
    return t.to(like)


def _gen_device(generator: Optional[torch.Generator]) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")
