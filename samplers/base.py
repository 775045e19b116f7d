"""What every sampler step shares: the output dataclass, float32 Gaussian log-densities, noise.

Conventions (flow matching, as in diffusers' ``FlowMatchEulerDiscreteScheduler``):
``x_s = (1 - s) x_0 + s * eps``, the model predicts the velocity ``v = eps - x_0``, and sampling
runs from ``s = 1`` (pure noise) towards ``s = 0`` with ``dt = sigma_next - sigma < 0``.

All step math runs in float32 whatever the model dtype, so that scoring a stored transition
reproduces the sampling-time log-prob bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class StepOutput:
    """Output of one sampler step (``sde_step``, ``cps_step``, ``ode_step``)."""

    prev_sample: torch.Tensor
    """(B, ...) the next latent x', in the dtype of the input sample."""
    log_prob: torch.Tensor
    """(B,) float32 log p(x' | x) averaged over all non-batch dims; 0 where std == 0."""
    mean: torch.Tensor
    """(B, ...) float32 mean of the Gaussian transition."""
    std: torch.Tensor
    """(B, 1, ..., 1) float32 standard deviation of the transition (0 for the ODE step)."""


def per_sample(value: float | torch.Tensor, sample: torch.Tensor, name: str) -> torch.Tensor:
    """A float, a 0-d tensor or a (B,) tensor as a (B, 1, ..., 1) float32 tensor on sample's device."""
    batch = sample.shape[0]
    t = torch.as_tensor(value, dtype=torch.float32, device=sample.device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    elif t.numel() != batch:
        raise ValueError(f"{name} must be a float or a ({batch},) tensor, got {t.numel()} values")
    return t.reshape(batch, *([1] * (sample.ndim - 1)))  # (B, 1, ..., 1)


def noise_level_per_sample(noise_level: float | torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """(B, 1, ..., 1) float32 noise level; negative levels are an error (they give std < 0)."""
    a = per_sample(noise_level, sample, "noise_level")
    if bool((a < 0).any()) or not bool(torch.isfinite(a).all()):
        raise ValueError(f"noise_level must be finite and >= 0, got {noise_level}")
    return a


def check_sampling_args(
    sample: torch.Tensor,
    prev_sample: torch.Tensor | None,
    generator: torch.Generator | None,
    noise: torch.Tensor | None,
) -> None:
    if prev_sample is not None and (generator is not None or noise is not None):
        raise ValueError(
            "pass prev_sample to score a stored transition, or generator/noise to sample one, not both"
        )
    if generator is not None and noise is not None:
        raise ValueError("pass generator or noise, not both")
    for name, t in (("prev_sample", prev_sample), ("noise", noise)):
        if t is not None and t.shape != sample.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, sample has {tuple(sample.shape)}")


def draw_noise(
    sample: torch.Tensor, generator: torch.Generator | None, noise: torch.Tensor | None
) -> torch.Tensor:
    """(B, ...) float32 standard normal noise; drawn on the generator's device, then moved."""
    if noise is not None:
        return noise.to(device=sample.device, dtype=torch.float32)
    device = generator.device if generator is not None else sample.device
    eps = torch.randn(sample.shape, generator=generator, device=device, dtype=torch.float32)
    return eps.to(sample.device)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B,) float32 log N(x; mean, std^2) averaged over all non-batch dims; 0 where std == 0.

    A zero std is a point mass (ODE step, level 0, CPS's last step): the density is undefined there
    and the trainer never trains on such steps, so 0 is returned instead of inf/NaN. The std is
    replaced by 1 in the masked-out branch so that no NaN can reach a gradient either.
    """
    batch = x.shape[0]
    x = x.detach().to(torch.float32)
    positive = std > 0  # (B, 1, ..., 1)
    safe_std = torch.where(positive, std, torch.ones_like(std))
    log_density = -((x - mean) ** 2) / (2 * safe_std**2) - torch.log(safe_std) - _LOG_SQRT_2PI
    log_prob = log_density.reshape(batch, -1).mean(dim=1)  # (B,)
    return torch.where(positive.reshape(batch), log_prob, torch.zeros_like(log_prob))


def finish_gaussian_step(
    sample: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    prev_sample: torch.Tensor | None,
    generator: torch.Generator | None,
    noise: torch.Tensor | None,
) -> StepOutput:
    """Sample x' = mean + std * noise (unless prev_sample is given) and score it.

    The log-prob is always computed from x' *after* the cast to the sample's dtype, i.e. from what
    a trajectory stores, so that scoring it later gives the identical float32 value.
    """
    if prev_sample is None:
        eps = draw_noise(sample, generator, noise)  # (B, ...) float32
        prev_sample = (mean + std * eps).to(sample.dtype)
    log_prob = gaussian_log_prob(prev_sample, mean, std)
    return StepOutput(prev_sample=prev_sample, log_prob=log_prob, mean=mean, std=std)


def gaussian_kl_mean(mean_a: torch.Tensor, mean_b: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B,) float32 KL between two Gaussians sharing ``std``: ||mean_a - mean_b||^2 / (2 std^2),
    averaged over the non-batch dims (docs/algorithms.md, section 3.6). 0 where std == 0.

    ``std`` may be a float, a (B,) tensor or the (B, 1, ..., 1) ``StepOutput.std``.
    """
    batch = mean_a.shape[0]
    s = per_sample(std, mean_a, "std")  # (B, 1, ..., 1)
    positive = s > 0
    safe_std = torch.where(positive, s, torch.ones_like(s))
    diff = mean_a.to(torch.float32) - mean_b.to(torch.float32)  # (B, ...)
    kl = (diff**2 / (2 * safe_std**2)).reshape(batch, -1).mean(dim=1)  # (B,)
    return torch.where(positive.reshape(batch), kl, torch.zeros_like(kl))
