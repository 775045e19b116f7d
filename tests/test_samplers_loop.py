"""The sampling loop on analytic velocity fields: shapes, ODE end points, preserved marginals,
reproducibility and exact re-scoring of stored steps."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from vrl.samplers import (
    ConstantNoise,
    DecayingNoise,
    WindowNoise,
    flow_match_sigmas,
    ode_step,
    sample,
    scheduler_sigmas,
    score_step,
)

TARGET = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.5, 0.25, -0.5, 3.0], [0.0, 1.0, 0.0, -2.0]])


def point_mass_velocity(x, sigma):
    """Exact velocity when all data sit at TARGET: v = (x - c) / s; Euler lands on c exactly."""
    assert sigma.shape == (x.shape[0],) and sigma.dtype == torch.float32
    s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return (x - TARGET.to(x.dtype)) / s


def gaussian_velocity(mu, tau):
    """Exact velocity for data ~ N(mu, tau^2): E[eps - x0 | x_s] (both jointly Gaussian)."""

    def velocity(x, sigma):
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        var = (1 - s) ** 2 * tau**2 + s**2  # Var(x_s)
        cov = s - (1 - s) * tau**2  # Cov(eps - x0, x_s)
        return -mu + cov / var * (x - (1 - s) * mu)

    return velocity


def _noise(shape=(3, 4), dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_shapes_log_probs_and_window():
    sigmas = flow_match_sigmas(6, shift=3.0)
    calls = []

    def velocity(x, sigma):
        calls.append(sigma[0].item())
        return point_mass_velocity(x, sigma)

    schedule = WindowNoise(ConstantNoise(0.7), size=2, start=1)
    noise = _noise()
    traj = sample(velocity, noise, sigmas, schedule=schedule, generator=torch.Generator())
    assert traj.latents.shape == (3, 7, 4) and traj.latents.dtype == torch.float32
    assert torch.equal(traj.latents[:, 0], noise) and torch.equal(traj.final, traj.latents[:, -1])
    assert traj.log_probs.shape == (3, 6) and traj.log_probs.dtype == torch.float32
    assert torch.equal(traj.noise_levels, schedule.levels(6)) and torch.equal(traj.sigmas, sigmas)
    assert calls == sigmas[:-1].tolist()  # one batched call per step, the schedule's sigmas
    noisy = traj.noise_levels > 0
    assert torch.equal(traj.log_probs[:, ~noisy], torch.zeros(3, 4))
    assert torch.isfinite(traj.log_probs).all() and (traj.log_probs[:, noisy] != 0).all()


def test_ode_reaches_the_analytic_end_point_and_equals_repeated_ode_step():
    sigmas = flow_match_sigmas(8, shift=3.0)
    noise = _noise()
    traj = sample(point_mass_velocity, noise, sigmas, schedule=None)
    assert torch.allclose(traj.final, TARGET, atol=1e-5)
    assert torch.equal(traj.log_probs, torch.zeros(3, 8))
    x = noise
    for i in range(8):
        v = point_mass_velocity(x, sigmas[i].expand(3))
        x = ode_step(v, sigmas[i], sigmas[i + 1], x).prev_sample
        assert torch.equal(traj.latents[:, i + 1], x)
    assert torch.equal(sample(point_mass_velocity, noise, sigmas, step="ode").final, x)


@pytest.mark.parametrize("step", ["sde", "cps"])
def test_seeded_generator_reproduces(step):
    sigmas = flow_match_sigmas(5)
    run = lambda seed: sample(  # noqa: E731
        point_mass_velocity, _noise(), sigmas, step=step, schedule=0.6,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.log_probs, b.log_probs)
    assert not torch.equal(a.latents, c.latents)
    # the random window start comes from the same generator: reproducible as well
    window = WindowNoise(DecayingNoise(1.0, 0.2), size=2, start="random")
    w = [
        sample(point_mass_velocity, _noise(), sigmas, step=step, schedule=window,
               generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]  # fmt: skip
    assert torch.equal(w[0].noise_levels, w[1].noise_levels)
    assert torch.equal(w[0].latents, w[1].latents)
    assert (w[0].noise_levels > 0).sum() == 2


@pytest.mark.parametrize("step", ["sde", "cps"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_score_step_reproduces_every_sampled_log_prob(step, dtype):
    sigmas = flow_match_sigmas(6, shift=3.0)
    noise = _noise((3, 2, 4, 4), dtype)
    target = torch.linspace(-1, 1, 32).reshape(2, 4, 4)

    def velocity(x, sigma):  # a bf16 "model": computes in the latents' dtype
        s = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        return (x - target.to(x.dtype)) / s

    schedule = DecayingNoise(1.0, 0.1) if step == "sde" else DecayingNoise(0.9, 0.0)
    traj = sample(velocity, noise, sigmas, step=step, schedule=schedule,
                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert traj.latents.dtype == dtype
    for i in range(6):
        v = velocity(traj.latents[:, i], traj.sigmas[i].expand(3))
        out = score_step(traj, i, v)
        assert torch.equal(out.log_prob, traj.log_probs[:, i])
    # a minibatch of the trajectory scores the same
    sub = traj.select([2, 0])
    v = velocity(sub.latents[:, 1], sub.sigmas[1].expand(2))
    assert torch.equal(score_step(sub, 1, v).log_prob, traj.log_probs[[2, 0], 1])


@pytest.mark.parametrize("level", [0.7, 1.0])
def test_sde_preserves_the_data_marginal(level):
    """Gaussian data N(2, 0.5^2) with the exact velocity: the SDE samples must end with the data's
    mean and std (a drift correction off by a factor 2 ends at std 0.35)."""
    mu, tau = 2.0, 0.5
    sigmas = flow_match_sigmas(40)
    noise = _noise((8000, 1), seed=1)
    traj = sample(gaussian_velocity(mu, tau), noise, sigmas, step="sde", schedule=level,
                  generator=torch.Generator().manual_seed(0), store_trajectory=False)  # fmt: skip
    final = traj.final.squeeze(1)
    assert abs(final.mean().item() - mu) < 0.03
    assert abs(final.std().item() - tau) < 0.03
    ode = sample(gaussian_velocity(mu, tau), noise, sigmas).final.squeeze(1)
    assert abs(ode.std().item() - tau) < 0.03
    # the noisy run really is a different sampler: per-sample end points move away from the ODE's
    assert (final - ode).abs().mean() > 0.1


def test_cps_keeps_the_mean_and_shrinks_the_spread_as_the_level_grows():
    """CPS's fresh noise is O(1) per step (s' sin(a pi / 2)), not O(sqrt(dt)): with an exact
    conditional-mean velocity it keeps the data mean but under-disperses, more so for larger a
    (documented in cps.py; measured std 0.48 / 0.45 / 0.34 for a = 0.2 / 0.5 / 1.0)."""
    mu, tau = 2.0, 0.5
    sigmas = flow_match_sigmas(40)
    noise = _noise((8000, 1), seed=1)
    stds = []
    for level in (0.0, 0.2, 0.5, 1.0):
        schedule = level if level > 0 else None
        final = sample(gaussian_velocity(mu, tau), noise, sigmas, step="cps", schedule=schedule,
                       generator=torch.Generator().manual_seed(0)).final  # fmt: skip
        assert abs(final.mean().item() - mu) < 0.03
        stds.append(final.std().item())
    assert abs(stds[0] - tau) < 0.03 and stds[0] > stds[1] > stds[2] > stds[3] > 0.25


def test_store_trajectory_false_keeps_final_and_log_probs():
    sigmas = flow_match_sigmas(5)
    kwargs = dict(schedule=0.7, step="sde")
    full = sample(point_mass_velocity, _noise(), sigmas,
                  generator=torch.Generator().manual_seed(4), **kwargs)  # fmt: skip
    light = sample(point_mass_velocity, _noise(), sigmas, store_trajectory=False,
                   generator=torch.Generator().manual_seed(4), **kwargs)  # fmt: skip
    assert light.latents.shape == (3, 1, 4)
    assert torch.equal(light.final, full.final) and torch.equal(light.log_probs, full.log_probs)
    with pytest.raises(ValueError, match="store_trajectory=False"):
        score_step(light, 0, torch.zeros(3, 4))


def test_explicit_scheduler_sigmas_dynamic_shift():
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    scheduler.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25], mu=1.1)
    sigmas = scheduler_sigmas(scheduler)
    assert torch.equal(sigmas, scheduler.sigmas) and sigmas[-1] == 0
    traj = sample(point_mass_velocity, _noise(), sigmas)
    assert torch.allclose(traj.final, TARGET, atol=1e-5)


def test_errors():
    sigmas = flow_match_sigmas(4)
    with pytest.raises(ValueError, match="ode"):
        sample(point_mass_velocity, _noise(), sigmas, step="ode", schedule=0.7)
    with pytest.raises(ValueError, match="valid steps"):
        sample(point_mass_velocity, _noise(), sigmas, step="euler")
    with pytest.raises(ValueError, match="decreasing"):
        sample(point_mass_velocity, _noise(), sigmas.flip(0))
    with pytest.raises(ValueError, match="shape"):
        sample(lambda x, s: x[:, :2], _noise(), sigmas)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        sample(point_mass_velocity, _noise(), sigmas, schedule=torch.ones(3))
