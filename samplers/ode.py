"""Deterministic Euler step of the flow ODE: x' = x + v * dt, dt = sigma_next - sigma.

Identical (bit for bit, float32) to diffusers' ``FlowMatchEulerDiscreteScheduler.step`` and to
``sde_step`` with noise level 0. Its transition is a point mass: std 0 and log-prob 0.
"""

from __future__ import annotations

import torch

from .base import StepOutput, check_sampling_args, per_sample


def ode_step(
    model_output: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    sample: torch.Tensor,
    *,
    prev_sample: torch.Tensor | None = None,
) -> StepOutput:
    """One Euler step; given ``prev_sample``, returns it unchanged (log-prob 0, nothing to score)."""
    check_sampling_args(sample, prev_sample, None, None)
    x = sample.to(torch.float32)  # (B, ...)
    v = model_output.to(torch.float32)  # (B, ...)
    s = per_sample(sigma, sample, "sigma")  # (B, 1, ..., 1)
    s_next = per_sample(sigma_next, sample, "sigma_next")  # (B, 1, ..., 1)
    mean = x + v * (s_next - s)  # (B, ...)
    if prev_sample is None:
        prev_sample = mean.to(sample.dtype)
    batch = sample.shape[0]
    return StepOutput(
        prev_sample=prev_sample,
        log_prob=torch.zeros(batch, dtype=torch.float32, device=sample.device),
        mean=mean,
        std=torch.zeros_like(s),
    )
