"""Sampler steps: Euler equivalence with diffusers, hand-checked log-probs, exact re-scoring."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from vrl.samplers import (
    StepOutput,
    cps_step,
    flow_match_sigmas,
    gaussian_kl_mean,
    ode_step,
    sde_step,
)


def _inputs(dtype=torch.float32, shape=(3, 4, 5, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    v = torch.randn(shape, generator=g).to(dtype)
    return x, v


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_level_zero_sde_equals_euler_and_diffusers_scheduler(shift):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(6)
    x, _ = _inputs()
    for i, t in enumerate(scheduler.timesteps):  # every timestep, including the first (s = 1)
        v = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        expected = scheduler.step(v, t, x).prev_sample
        sigma, sigma_next = scheduler.sigmas[i], scheduler.sigmas[i + 1]
        sde = sde_step(v, sigma, sigma_next, x, noise_level=0.0, generator=torch.Generator())
        ode = ode_step(v, sigma, sigma_next, x)
        assert torch.equal(sde.prev_sample, expected)
        assert torch.equal(ode.prev_sample, expected)
        assert torch.equal(sde.mean, ode.mean)
        assert torch.equal(sde.log_prob, torch.zeros(3)) and torch.equal(sde.std, ode.std)
        # python floats work too (scheduler sigmas are float32, so .item() is exact)
        as_floats = sde_step(v, sigma.item(), sigma_next.item(), x, noise_level=0.0)
        assert torch.equal(as_floats.prev_sample, expected)
        x = expected


def test_sde_hand_formula_including_first_step():
    x, v = _inputs()
    a = 0.7
    # s = 1: the denominator uses the next sigma
    s, s1 = 1.0, 0.8
    out = sde_step(v, s, s1, x, noise_level=a, noise=torch.zeros_like(x))
    sigma_t = a * math.sqrt(s / (1 - s1))
    mean = x + (v + sigma_t**2 / (2 * s) * (x + (1 - s) * v)) * (s1 - s)
    assert torch.allclose(out.mean, mean, atol=1e-6)
    assert out.std.shape == (3, 1, 1, 1)
    assert torch.allclose(out.std, torch.full((3, 1, 1, 1), sigma_t * math.sqrt(s - s1)))
    assert torch.equal(out.prev_sample, out.mean)  # zero noise
    # interior step
    s, s1 = 0.6, 0.4
    out = sde_step(v, s, s1, x, noise_level=a, noise=torch.zeros_like(x))
    sigma_t = a * math.sqrt(s / (1 - s))
    mean = x + (v + sigma_t**2 / (2 * s) * (x + (1 - s) * v)) * (s1 - s)
    assert torch.allclose(out.mean, mean, atol=1e-6)
    assert math.isclose(out.std[0].item(), sigma_t * math.sqrt(s - s1), rel_tol=1e-6)


def test_sde_last_step_is_stochastic_and_finite():
    x, v = _inputs()
    out = sde_step(v, 0.1, 0.0, x, noise_level=0.7, generator=torch.Generator().manual_seed(0))
    expected_std = 0.7 * 0.1 / math.sqrt(0.9)  # a * s / sqrt(1 - s)
    assert torch.allclose(out.std, torch.full_like(out.std, expected_std))
    assert torch.isfinite(out.log_prob).all() and not torch.equal(out.prev_sample, out.mean)


def test_cps_deterministic_and_full_noise_values():
    x, v = _inputs()
    s, s1 = 0.7, 0.5
    out = cps_step(v, s, s1, x, noise_level=0.0, generator=torch.Generator())
    deterministic = (1 - s1) * (x - s * v) + s1 * (x + (1 - s) * v)
    assert torch.allclose(out.prev_sample, deterministic, atol=1e-6)
    assert torch.allclose(out.prev_sample, x + v * (s1 - s), atol=1e-6)  # == Euler up to rounding
    assert torch.equal(out.log_prob, torch.zeros(3)) and torch.equal(
        out.std, torch.zeros(3, 1, 1, 1)
    )
    # a = 1 replaces the noise estimate by fresh noise: diffusers' stochastic_sampling step
    scheduler = FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)
    scheduler.set_timesteps(4)
    t, s, s1 = scheduler.timesteps[1], scheduler.sigmas[1], scheduler.sigmas[2]
    expected = scheduler.step(v, t, x, generator=torch.Generator().manual_seed(5)).prev_sample
    out = cps_step(v, s, s1, x, noise_level=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out.prev_sample, expected, atol=1e-6)
    assert torch.allclose(out.std, s1.expand(3, 1, 1, 1))
    # last step: std 0, x' = x0_hat, log-prob 0
    out = cps_step(v, 0.2, 0.0, x, noise_level=0.8, generator=torch.Generator())
    assert torch.allclose(out.prev_sample, x - 0.2 * v) and torch.equal(
        out.log_prob, torch.zeros(3)
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cps_step(v, 0.5, 0.4, x, noise_level=1.5)


def test_log_prob_is_average_gaussian_density_one_element():
    x = torch.tensor([[0.3]])
    v = torch.tensor([[-0.5]])
    s, s1, a = 0.5, 0.25, 0.8
    prev = torch.tensor([[0.9]])
    out = sde_step(v, s, s1, x, noise_level=a, prev_sample=prev)
    sigma_t = a * math.sqrt(s / (1 - s))
    mean = 0.3 + (-0.5 + sigma_t**2 / (2 * s) * (0.3 + (1 - s) * -0.5)) * (s1 - s)
    std = sigma_t * math.sqrt(s - s1)
    log_density = -((0.9 - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    assert out.log_prob.shape == (1,) and out.log_prob.dtype == torch.float32
    assert math.isclose(out.log_prob.item(), log_density, rel_tol=1e-5)
    assert torch.equal(out.prev_sample, prev)
    # averaged, not summed, over non-batch dims: 4 copies of the element give the same value
    out4 = sde_step(
        v.expand(1, 4), s, s1, x.expand(1, 4), noise_level=a, prev_sample=prev.expand(1, 4)
    )
    assert torch.allclose(out4.log_prob, out.log_prob)


@pytest.mark.parametrize("step", [sde_step, cps_step])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scoring_stored_transition_reproduces_sampling_log_prob(step, dtype):
    x, v = _inputs(dtype)
    sampled = step(v, 0.8, 0.6, x, noise_level=0.7, generator=torch.Generator().manual_seed(3))
    assert sampled.prev_sample.dtype == dtype
    assert sampled.log_prob.dtype == sampled.mean.dtype == torch.float32
    scored = step(v, 0.8, 0.6, x, noise_level=0.7, prev_sample=sampled.prev_sample)
    assert torch.equal(scored.log_prob, sampled.log_prob)
    assert torch.equal(scored.mean, sampled.mean)
    # a different model output gives a different (lower on average) log-prob
    other = step(v + 0.5, 0.8, 0.6, x, noise_level=0.7, prev_sample=sampled.prev_sample)
    assert (other.log_prob < sampled.log_prob).all()


def test_log_prob_is_differentiable_wrt_model_output():
    x, v = _inputs()
    sampled = sde_step(v, 0.8, 0.6, x, noise_level=0.7, generator=torch.Generator().manual_seed(0))
    v = v.clone().requires_grad_(True)
    scored = sde_step(v, 0.8, 0.6, x, noise_level=0.7, prev_sample=sampled.prev_sample)
    scored.log_prob.sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def test_prev_sample_with_generator_or_noise_is_an_error():
    x, v = _inputs()
    for step in (sde_step, cps_step):
        with pytest.raises(ValueError, match="not both"):
            step(v, 0.8, 0.6, x, noise_level=0.7, prev_sample=x, generator=torch.Generator())
        with pytest.raises(ValueError, match="not both"):
            step(v, 0.8, 0.6, x, noise_level=0.7, prev_sample=x, noise=torch.zeros_like(x))
        with pytest.raises(ValueError, match="not both"):
            step(v, 0.8, 0.6, x, noise_level=0.7, generator=torch.Generator(), noise=x)
    with pytest.raises(ValueError, match=">= 0"):
        sde_step(v, 0.8, 0.6, x, noise_level=-0.1)


def test_per_sample_sigmas_and_levels():
    x, v = _inputs()
    sigma = torch.tensor([1.0, 0.6, 0.3])
    sigma_next = torch.tensor([0.8, 0.4, 0.0])
    level = torch.tensor([0.7, 0.0, 0.9])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    out = sde_step(v, sigma, sigma_next, x, noise_level=level, noise=noise)
    assert out.std.shape == (3, 1, 1, 1) and out.log_prob.shape == (3,)
    for b in range(3):
        single = sde_step(
            v[b : b + 1], sigma[b].item(), sigma_next[b].item(), x[b : b + 1],
            noise_level=level[b].item(), noise=noise[b : b + 1],
        )  # fmt: skip
        assert torch.equal(out.prev_sample[b], single.prev_sample[0])
        assert torch.equal(out.log_prob[b], single.log_prob[0])
    assert out.log_prob[1] == 0 and torch.isfinite(out.log_prob).all()
    with pytest.raises(ValueError, match="sigma"):
        sde_step(v, torch.tensor([0.5, 0.4]), 0.3, x, noise_level=0.7)


def test_generator_reproducible_and_step_output_type():
    x, v = _inputs()
    a = cps_step(v, 0.8, 0.6, x, noise_level=0.5, generator=torch.Generator().manual_seed(9))
    b = cps_step(v, 0.8, 0.6, x, noise_level=0.5, generator=torch.Generator().manual_seed(9))
    assert isinstance(a, StepOutput) and torch.equal(a.prev_sample, b.prev_sample)


def test_gaussian_kl_mean_hand_checked():
    mean_a = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 3.0]])
    mean_b = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    std = torch.tensor([2.0, 1.0, 0.0]).reshape(3, 1)
    kl = gaussian_kl_mean(mean_a, mean_b, std)
    # row 0: (1 + 4) / (2 * 4) / 2 dims = 0.3125; row 1: equal means; row 2: std 0 -> 0
    assert torch.allclose(kl, torch.tensor([0.3125, 0.0, 0.0]))
    assert torch.equal(gaussian_kl_mean(mean_a, mean_a.clone(), 0.5), torch.zeros(3))
    assert math.isclose(gaussian_kl_mean(mean_a[:1], mean_b[:1], 2.0).item(), 0.3125)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("num_steps", [1, 10, 28])
def test_flow_match_sigmas_match_diffusers(shift, num_steps):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(num_steps)
    sigmas = flow_match_sigmas(num_steps, shift=shift)
    assert sigmas.shape == (num_steps + 1,) and sigmas.dtype == torch.float32
    assert torch.equal(sigmas, scheduler.sigmas)
    assert sigmas[0] == 1 and sigmas[-1] == 0
