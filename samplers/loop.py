"""The sampling loop: run a velocity field from noise to data, storing the trajectory and the
per-step log-probs that the RL trainer needs, plus the sigma schedule of diffusers' flow-matching
Euler scheduler.

    sigmas = flow_match_sigmas(10, shift=3.0)                      # (11,) 1 -> 0
    traj = sample(velocity_fn, noise, sigmas, step="sde",
                  schedule=ConstantNoise(0.7), generator=g)
    traj.latents    # (B, 11, C, H, W)   traj.log_probs  # (B, 10)
    out = score_step(traj, i, velocity_of_policy)        # re-score step i for the loss

``velocity_fn(latents, sigma)`` gets the whole batch once per step: classifier-free guidance is the
model adapter's business (one batched forward of [uncond, cond] inside ``velocity_fn``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .base import StepOutput
from .cps import cps_step
from .ode import ode_step
from .schedules import ConstantNoise, NoiseSchedule, from_config
from .sde import sde_step

StepKind = Literal["sde", "cps", "ode"]
_STOCHASTIC_STEPS = {"sde": sde_step, "cps": cps_step}


@dataclass
class Trajectory:
    """A batch of sampled trajectories."""

    latents: torch.Tensor
    """(B, T+1, ...) x_0 .. x_T as sampled (x_0 = the initial noise), in the model's dtype.
    With ``store_trajectory=False`` only the final latent: (B, 1, ...)."""
    log_probs: torch.Tensor
    """(B, T) float32 log p(x_{i+1} | x_i); 0 on steps with std 0 (ODE steps, level 0)."""
    sigmas: torch.Tensor
    """(T+1,) float32 sigmas, from 1 towards 0."""
    noise_levels: torch.Tensor
    """(T,) float32 noise level used at each step (0 = the step ran as ODE)."""
    step: StepKind = "sde"
    """Which step function produced the noisy steps (the trainer must score with the same)."""

    @property
    def final(self) -> torch.Tensor:
        """(B, ...) the last latent."""
        return self.latents[:, -1]

    @property
    def num_steps(self) -> int:
        return self.noise_levels.shape[0]

    def select(self, index: torch.Tensor | slice | list[int]) -> Trajectory:
        """The trajectories of a subset of the batch (e.g. a training minibatch)."""
        return Trajectory(
            latents=self.latents[index],
            log_probs=self.log_probs[index],
            sigmas=self.sigmas,
            noise_levels=self.noise_levels,
            step=self.step,
        )


def flow_match_sigmas(
    num_steps: int,
    *,
    shift: float = 1.0,
    num_train_timesteps: int = 1000,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(num_steps + 1,) float32 sigmas of ``FlowMatchEulerDiscreteScheduler(shift=shift,
    num_train_timesteps=...)`` after ``set_timesteps(num_steps)``, terminal 0 appended.

    The scheduler's layout (diffusers 0.35+), reproduced exactly:
    1. at construction it shifts its training sigmas t / N (t = 1..N) in float32, so its
       smallest sigma is shift(1 / N), not 1 / N; the largest stays 1;
    2. ``set_timesteps`` spaces the timesteps linearly (float64) from 1000 * sigma_max to
       1000 * sigma_min, divides by N and applies shift(s) = shift * s / (1 + (shift - 1) s)
       *again*, casts to float32 and appends a terminal 0.
    So for shift != 1 the last nonzero sigma is shifted twice: that is what SD3 pipelines use.
    Schedulers with dynamic shifting (FLUX: ``mu``), Karras or other sigmas: pass
    ``scheduler_sigmas(scheduler)`` instead.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")
    n = num_train_timesteps
    # step 1: the training schedule's ends, in float32 exactly as the scheduler computes them
    train_ends = torch.tensor([float(n), 1.0], dtype=torch.float32) / n
    train_ends = shift * train_ends / (1 + (shift - 1) * train_ends)
    sigma_max, sigma_min = train_ends.tolist()
    # step 2: inference sigmas in float64 numpy, shifted again, then float32
    sigmas = np.linspace(sigma_max * n, sigma_min * n, num_steps) / n
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    sigmas = torch.from_numpy(sigmas).to(torch.float32)
    return torch.cat([sigmas, torch.zeros(1)]).to(device)  # (T+1,)


def scheduler_sigmas(scheduler) -> torch.Tensor:
    """(T+1,) float32 sigmas of a diffusers flow-matching scheduler after ``set_timesteps``."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None:
        raise ValueError(f"{type(scheduler).__name__} has no sigmas; call set_timesteps first")
    return check_sigmas(torch.as_tensor(sigmas).to(torch.float32).clone())


def check_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Validate a (T+1,) sigma schedule: finite, strictly decreasing, within [0, 1]."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or sigmas.shape[0] < 2:
        shape = tuple(sigmas.shape) if isinstance(sigmas, torch.Tensor) else type(sigmas).__name__
        raise ValueError(f"sigmas must be a 1-d tensor of T+1 >= 2 values, got {shape}")
    if not bool(torch.isfinite(sigmas).all()):
        raise ValueError("sigmas must be finite")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError(f"sigmas must be strictly decreasing (from 1 towards 0), got {sigmas}")
    if sigmas[0] > 1 or sigmas[-1] < 0:
        raise ValueError(f"sigmas must lie in [0, 1], got {sigmas[0]:.4g} .. {sigmas[-1]:.4g}")
    return sigmas


def _resolve_levels(
    schedule: NoiseSchedule | dict | str | float | torch.Tensor | None,
    num_steps: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """(T,) float32 CPU noise levels from a schedule, a config, a constant or explicit levels."""
    if schedule is None:
        return torch.zeros(num_steps, dtype=torch.float32)
    if isinstance(schedule, torch.Tensor):
        levels = schedule.detach().to("cpu", torch.float32)
        if levels.shape != (num_steps,):
            raise ValueError(
                f"noise levels must have shape ({num_steps},), got {tuple(levels.shape)}"
            )
        if not bool(torch.isfinite(levels).all()) or bool((levels < 0).any()):
            raise ValueError("noise levels must be finite and >= 0")
        return levels
    if isinstance(schedule, (int, float)) and not isinstance(schedule, bool):
        schedule = ConstantNoise(schedule)
    return from_config(schedule).levels(num_steps, generator)


@torch.no_grad()
def sample(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    initial_noise: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    step: StepKind = "sde",
    schedule: NoiseSchedule | dict | str | float | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    store_trajectory: bool = True,
) -> Trajectory:
    """Integrate ``velocity_fn`` from ``initial_noise`` along ``sigmas``, with log-probs.

    Args:
        velocity_fn: ``(latents (B, ...), sigma (B,) float32) -> velocity (B, ...)``, called once
            per step with the whole batch.
        initial_noise: (B, ...) x_0; its dtype and device are the model's and are kept.
        sigmas: (T+1,) from ``flow_match_sigmas`` or ``scheduler_sigmas``.
        step: the stochastic step for noisy steps ("sde": Flow-GRPO, "cps") or "ode".
        schedule: noise levels: a ``NoiseSchedule``, its config, a float (constant) or a (T,)
            tensor; None = ODE everywhere. Steps whose level is 0 run as ``ode_step`` (log-prob 0).
        generator: draws a random window start (if any), then each step's noise, in that order.
        store_trajectory: False keeps only the final latent (evaluation); log-probs are kept.

    Runs under ``torch.no_grad()`` (rollouts); the trainer re-scores steps with ``score_step``.
    With step="sde" the last step (to sigma 0) is stochastic unless its level is 0; with "cps"
    it is deterministic (see sde.py and cps.py).
    """
    if step not in ("sde", "cps", "ode"):
        raise ValueError(f"unknown step {step!r}; valid steps: sde, cps, ode")
    sigmas = check_sigmas(sigmas).to(device=initial_noise.device, dtype=torch.float32)
    num_steps = sigmas.shape[0] - 1
    levels = _resolve_levels(schedule, num_steps, generator)  # (T,)
    if step == "ode" and bool((levels > 0).any()):
        raise ValueError("step='ode' takes no noise schedule (pass schedule=None)")
    batch = initial_noise.shape[0]

    x = initial_noise  # (B, ...)
    latents = [x] if store_trajectory else []
    log_probs = []
    for i, level in enumerate(levels.tolist()):
        sigma = sigmas[i].expand(batch).clone()  # (B,) float32
        v = velocity_fn(x, sigma)  # (B, ...)
        if v.shape != x.shape:
            raise ValueError(
                f"velocity_fn returned shape {tuple(v.shape)} for latents {tuple(x.shape)}"
            )
        if level == 0:
            out = ode_step(v, sigmas[i], sigmas[i + 1], x)
        else:
            stochastic_step = _STOCHASTIC_STEPS[step]
            out = stochastic_step(
                v, sigmas[i], sigmas[i + 1], x, noise_level=level, generator=generator
            )
        x = out.prev_sample
        if store_trajectory:
            latents.append(x)
        log_probs.append(out.log_prob)

    return Trajectory(
        latents=torch.stack(latents if store_trajectory else [x], dim=1),  # (B, T+1 or 1, ...)
        log_probs=torch.stack(log_probs, dim=1),  # (B, T)
        sigmas=sigmas,
        noise_levels=levels.to(initial_noise.device),
        step=step,
    )


def score_step(trajectory: Trajectory, index: int, model_output: torch.Tensor) -> StepOutput:
    """Score stored transition ``index`` (x_index -> x_index+1) for a new velocity prediction.

    Uses exactly the step function, sigmas and noise level of sampling, so the log-prob equals
    ``trajectory.log_probs[:, index]`` bit for bit when ``model_output`` is the sampling one.
    ``model_output`` is the velocity at (``trajectory.latents[:, index]``, sigma_index).
    """
    if trajectory.latents.shape[1] != trajectory.num_steps + 1:
        raise ValueError("the trajectory was sampled with store_trajectory=False: nothing to score")
    if not 0 <= index < trajectory.num_steps:
        raise ValueError(f"step index {index} out of range for {trajectory.num_steps} steps")
    x = trajectory.latents[:, index]  # (B, ...)
    x_next = trajectory.latents[:, index + 1]  # (B, ...)
    sigma, sigma_next = trajectory.sigmas[index], trajectory.sigmas[index + 1]
    level = float(trajectory.noise_levels[index])
    if level == 0:
        return ode_step(model_output, sigma, sigma_next, x, prev_sample=x_next)
    stochastic_step = _STOCHASTIC_STEPS[trajectory.step]
    return stochastic_step(
        model_output, sigma, sigma_next, x, noise_level=level, prev_sample=x_next
    )
