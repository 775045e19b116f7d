"""Coefficients-preserving sampling (CPS) step: the next latent keeps the exact flow-matching
coefficients (1 - s') on the clean estimate and s' on the total noise (docs/algorithms.md §3.5).

With sigma s, next sigma s' and noise level a in [0, 1]:

    s_n    = s' * sin(a * pi / 2)                  (the std of the fresh noise)
    x0_hat = x - s v                               (clean-image estimate)
    x1_hat = x + (1 - s) v                         (noise estimate)
    mean   = (1 - s') x0_hat + sqrt(s'^2 - s_n^2) x1_hat
    x'     = mean + s_n * noise

a = 0 is the deterministic step (1 - s') x0_hat + s' x1_hat, which equals the Euler step
x + v (s' - s) up to rounding; a = 1 replaces all predicted noise by fresh noise (diffusers'
``stochastic_sampling``). The last step (s' = 0) is always deterministic: x' = x0_hat, std 0,
log-prob 0.

Unlike the SDE step, the fresh noise here is O(1) per step, not O(sqrt(dt)), so with an exact
conditional-mean velocity the samples keep the data mean but are under-dispersed, more so for
larger a (Gaussian data with std 0.5, 40 steps: std 0.48 / 0.45 / 0.34 for a = 0.2 / 0.5 / 1.0;
see tests/test_samplers_loop.py). Prefer small levels when sample fidelity matters.
"""

from __future__ import annotations

import math

import torch

from .base import (
    StepOutput,
    check_sampling_args,
    finish_gaussian_step,
    noise_level_per_sample,
    per_sample,
)


def cps_step(
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
    """One CPS step from ``sample`` at ``sigma`` to ``sigma_next``.

    Arguments as for ``sde_step``; ``noise_level`` must lie in [0, 1]. ``log_prob`` is 0 where
    std == 0 (a = 0 or sigma_next = 0), where it is undefined.
    """
    check_sampling_args(sample, prev_sample, generator, noise)
    x = sample.to(torch.float32)  # (B, ...)
    v = model_output.to(torch.float32)  # (B, ...)
    s = per_sample(sigma, sample, "sigma")  # (B, 1, ..., 1)
    s_next = per_sample(sigma_next, sample, "sigma_next")  # (B, 1, ..., 1)
    a = noise_level_per_sample(noise_level, sample)  # (B, 1, ..., 1)
    if bool((a > 1).any()):
        raise ValueError(f"cps_step needs noise_level in [0, 1], got {noise_level}")

    std = s_next * torch.sin(a * (math.pi / 2))  # (B, 1, ..., 1)
    x0_hat = x - s * v  # (B, ...)
    x1_hat = x + (1 - s) * v  # (B, ...)
    # clamp: at a = 1, s'^2 - s_n^2 can round to a tiny negative number
    kept_noise = torch.sqrt(torch.clamp(s_next**2 - std**2, min=0))  # (B, 1, ..., 1)
    mean = (1 - s_next) * x0_hat + kept_noise * x1_hat  # (B, ...)
    return finish_gaussian_step(sample, mean, std, prev_sample, generator, noise)
