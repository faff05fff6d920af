"""The original's process as noise levels (`tooncrafter_core.noise_levels`) and the DDIM over them
(`sampling.sample_ddim_levels`): exact against the core's own DDIM on the tiny fixture."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import gradient_keyframes, relative_error, tiny_checkpoint

from tooncrafter_core import conditioning, guidance, keyframes
from tooncrafter_core.models.config import ScheduleConfig
from tooncrafter_core.models.schedule import Schedule
from tooncrafter_core.noise_levels import NoiseLevels
from tooncrafter_core.sampling import (
    Denoiser,
    ddim_plan,
    ddim_timesteps,
    level_guidance,
    rescale_guidance,
    sample_ddim,
    sample_ddim_levels,
)
from tooncrafter_core.settings import SamplingConfig
from tooncrafter_core.weights.checkpoint import load_model

LEVELS = NoiseLevels(Schedule.from_config(ScheduleConfig()))


def test_levels_run_from_pure_noise_at_1_to_the_original_end_at_0():
    table = LEVELS.table
    assert table[0] == 0.0 and table[-1] == 1.0
    assert bool((table[1:] > table[:-1]).all())
    # every trained level maps back to its integer timestep, and between levels linearly
    t = LEVELS.timestep(table)
    assert torch.equal(t, torch.arange(1000, dtype=torch.float64))
    mid = (table[500:501].double() + table[501:502].double()) / 2
    assert 500 < float(LEVELS.timestep(mid)) < 501
    ts = torch.tensor([123.0, 998.5, 0.25])
    assert torch.allclose(LEVELS.timestep(LEVELS.sigma(ts)), ts.double(), atol=1e-4)
    # at σ = 1 the network sees the noise itself; the schedulers' table never holds an exact 0
    x = torch.randn(2, 4, 3, 4, 4)
    assert torch.equal(LEVELS.model_input(torch.ones(2), x), x)
    assert LEVELS.scheduler_table()[0] > 0 and torch.equal(LEVELS.scheduler_table()[1:], table[1:])


@pytest.mark.parametrize("t", [1, 250, 399, 400, 700, 999])
def test_coefficients_on_trained_levels_are_the_originals(t):
    schedule = LEVELS.schedule
    c = LEVELS.coefficients(LEVELS.table[t : t + 1])
    ac = float(schedule.alphas_cumprod[t])
    assert float(c.t) == t
    assert abs(float(c.sqrt_alpha) - ac**0.5) <= 2e-5 * max(ac**0.5, 1e-3)
    assert abs(float(c.sqrt_one_minus_alpha) - (1 - ac) ** 0.5) <= 1e-6
    assert float(c.scale) == float(schedule.scale_arr[t])


def test_denoised_and_v_are_inverse_and_split_gives_x0_and_eps():
    g = torch.Generator().manual_seed(0)
    sigma = LEVELS.table[[50, 600]]
    x, v = torch.randn(2, 4, 3, 4, 4, generator=g), torch.randn(2, 4, 3, 4, 4, generator=g)
    d = LEVELS.denoised(sigma, x, v)
    assert relative_error(LEVELS.output_from_denoised(sigma, x, d), v) < 1e-5
    x0, eps = LEVELS.split(sigma, x, d)
    # the original's relations: x_t = sqrt(ᾱ)·s·x0 + sqrt(1-ᾱ)·eps with eps = sqrt(1-ᾱ)·x_t + sqrt(ᾱ)·v
    c = LEVELS.coefficients(sigma)
    x_t = LEVELS.model_input(sigma, x)
    shape = (-1, 1, 1, 1, 1)
    sa, sb, s = (getattr(c, k).float().view(shape) for k in ("sqrt_alpha", "sqrt_one_minus_alpha", "scale"))
    assert relative_error(eps, sb * x_t + sa * v) < 1e-5
    assert relative_error(sa * s * x0 + sb * eps, x_t) < 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = load_model(tiny_checkpoint(tmp_path_factory.mktemp("ckpt")), dtype=torch.float32)
    start, end = gradient_keyframes()
    with torch.inference_mode():
        context, uncond = conditioning.contexts(model, start, ["a ball"], True, "cpu", torch.float32)
        enc = keyframes.encode_keyframes(model.vae, start, end)
    return model, context, uncond, enc


def _core_and_levels(tiny, steps, spacing, eta, rescale=0.7, seed=5):
    """The core's DDIM and the same run over noise levels, both from one seed's draws."""
    model, context, uncond, enc = tiny
    levels = NoiseLevels(model.schedule)
    generator = torch.Generator().manual_seed(seed)
    concat, x_T = keyframes.initial_latents(enc, model.config.frames, model.config, generator, "cpu")
    cond = guidance.Conditioning(context, uncond, concat, torch.tensor([10]))
    sampling = SamplingConfig(steps=steps, eta=eta, guidance_rescale=rescale, timestep_spacing=spacing)
    guided = guidance.guided_model(model.unet, cond, sampling)
    plan = ddim_plan(model.schedule, steps, spacing, eta)
    state = torch.Generator()
    state.set_state(generator.get_state())
    with torch.inference_mode():
        core = sample_ddim(Denoiser(guided, model.schedule), x_T, plan, generator=generator)

        def denoiser(x, sigma):
            both = torch.cat([x, x])
            network = guidance.concat_network(model.unet, torch.cat([context, uncond]), torch.cat([concat, concat]),
                                              torch.tensor([10, 10]))
            d = guidance.level_denoised(network, levels, torch.cat([sigma, sigma]), both)
            return level_guidance(levels, sigma, x, *d.chunk(2), sampling.cfg_scale, rescale)

        sigmas = levels.ddim_sigmas(ddim_timesteps(steps, spacing))
        x = levels.from_latent(sigmas[:1], x_T)
        ours = sample_ddim_levels(denoiser, x, sigmas, levels, eta, generator=state)
    return core, ours * levels.latent_scale, plan, (model, levels, denoiser, sigmas, x_T)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("steps,spacing", [(50, "uniform_trailing"), (6, "uniform_trailing"), (10, "uniform")])
def test_ddim_over_levels_is_the_cores_ddim(tiny, steps, spacing, eta):
    core, ours, _, _ = _core_and_levels(tiny, steps, spacing, eta)
    assert relative_error(ours, core) < 2e-5


def test_euler_over_levels_is_ddim_eta_0_ending_at_t0s_scale(tiny):
    """Euler steps dx/dσ = (x - D)/σ are the original's DDIM except for its last step, which keeps the
    previous level's scale instead of t = 0's."""
    core, _, plan, (model, levels, denoiser, sigmas, x_T) = _core_and_levels(tiny, 6, "uniform_trailing", 0.0)
    x = levels.from_latent(sigmas[:1], x_T)
    with torch.inference_mode():
        for i in range(len(sigmas) - 1):
            d = denoiser(x, sigmas[i : i + 1])
            x = d if sigmas[i + 1] == 0 else x + (x - d) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    euler = x * levels.latent_scale
    scale = model.schedule.scale_arr
    plan[-1] = dataclasses.replace(plan[-1], rescale=float(scale[0] / scale[plan[-1].t]))
    _, context, uncond, enc = tiny
    generator = torch.Generator().manual_seed(5)
    concat, x_T = keyframes.initial_latents(enc, model.config.frames, model.config, generator, "cpu")
    guided = guidance.guided_model(model.unet, guidance.Conditioning(context, uncond, concat, torch.tensor([10])),
                                   SamplingConfig(steps=6, eta=0.0))
    with torch.inference_mode():
        to_t0 = sample_ddim(Denoiser(guided, model.schedule), x_T, plan)
    assert relative_error(euler, to_t0) < 2e-5
    assert relative_error(euler, core) > 0.01  # the original's last step is not an Euler step (6 steps: s = 0.87)


def test_level_guidance_rescales_the_v_of_the_guided_prediction():
    g = torch.Generator().manual_seed(1)
    sigma = LEVELS.table[[300, 800]]
    x = torch.randn(2, 4, 3, 4, 4, generator=g)
    v_c, v_u = torch.randn(2, 4, 3, 4, 4, generator=g), torch.randn(2, 4, 3, 4, 4, generator=g)
    d = level_guidance(LEVELS, sigma, x, LEVELS.denoised(sigma, x, v_c), LEVELS.denoised(sigma, x, v_u), 7.5, 0.7)
    expected = rescale_guidance(v_u + 7.5 * (v_c - v_u), v_c, 0.7)
    assert relative_error(LEVELS.output_from_denoised(sigma, x, d), expected) < 1e-5
    cond = LEVELS.denoised(sigma, x, v_c)
    assert torch.equal(level_guidance(LEVELS, sigma, x, cond, cond * 0, 1.0, 0.7), cond)
