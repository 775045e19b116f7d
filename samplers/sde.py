"""Flow-GRPO SDE step: an Euler-Maruyama step of the reverse SDE that shares the flow ODE's
marginals, with a Gaussian log-prob per transition (docs/algorithms.md, section 3.4).

With sigma s, next sigma s', dt = s' - s < 0 and noise level a:

    sigma_t = a * sqrt(s / (1 - s))          (at s = 1: a * sqrt(s / (1 - s')))
    mean    = x + [v + sigma_t^2 / (2 s) * (x + (1 - s) v)] * dt
    std     = sigma_t * sqrt(-dt)
    x'      = mean + std * noise

a = 0 gives exactly the Euler step x + v * dt (bit for bit, the same as diffusers'
``FlowMatchEulerDiscreteScheduler.step``).

The last step (s' = 0) is *not* deterministic here: std = a * s / sqrt(1 - s) > 0, so the final
sample keeps a little noise of that size and the step has a (very sharp) log-prob. Trainers skip
it; a schedule whose level is 0 at the last step (e.g. ``DecayingNoise(eta_min=0)``) avoids it.
"""

from __future__ import annotations

import torch

from .base import (
    StepOutput,
    check_sampling_args,
    finish_gaussian_step,
    noise_level_per_sample,
    per_sample,
)


def sde_step(
    model_output: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    sample: torch.Tensor,
    *,
    noise_level: float | torch.Tensor,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> StepOutput:
    """One Flow-GRPO SDE step from ``sample`` at ``sigma`` to ``sigma_next``.

    Args:
        model_output: (B, ...) predicted velocity v at (sample, sigma); any float dtype.
        sigma, sigma_next: current and next sigma, floats or (B,) tensors (per-sample timesteps);
            0 < sigma <= 1 and sigma_next < sigma.
        sample: (B, ...) current latent x.
        noise_level: a, a float or a (B,) tensor, >= 0.
        prev_sample: (B, ...) a stored x' to score instead of sampling one.
        generator, noise: where the (B, ...) standard normal noise comes from when sampling
            (``noise`` given explicitly wins; neither -> torch's global RNG).

    Returns:
        ``StepOutput``; ``log_prob`` is 0 where std == 0 (a = 0), where it is undefined.
    """
    check_sampling_args(sample, prev_sample, generator, noise)
    x = sample.to(torch.float32)  # (B, ...)
    v = model_output.to(torch.float32)  # (B, ...)
    s = per_sample(sigma, sample, "sigma")  # (B, 1, ..., 1)
    s_next = per_sample(sigma_next, sample, "sigma_next")  # (B, 1, ..., 1)
    a = noise_level_per_sample(noise_level, sample)  # (B, 1, ..., 1)

    dt = s_next - s  # (B, 1, ..., 1), < 0
    # at s = 1 the ratio s / (1 - s) is infinite: Flow-GRPO uses the next sigma there instead
    sigma_t = a * torch.sqrt(s / (1 - torch.where(s == 1, s_next, s)))
    drift_correction = sigma_t**2 / (2 * s)  # exactly 0 when a = 0, so mean == x + v * dt
    mean = x + (v + drift_correction * (x + (1 - s) * v)) * dt  # (B, ...)
    std = sigma_t * torch.sqrt(-dt)  # (B, 1, ..., 1)
    return finish_gaussian_step(sample, mean, std, prev_sample, generator, noise)
