"""Flow-matching samplers with per-step log-probs for RL fine-tuning (``vrl.samplers``).

Steps (one algorithm per file): ``sde_step`` (Flow-GRPO SDE), ``cps_step`` (coefficients-
preserving), ``ode_step`` (Euler); each returns a ``StepOutput``. Noise-level schedules:
``ConstantNoise``, ``DecayingNoise`` (HiCoGen), ``WindowNoise``. The loop: ``sample`` ->
``Trajectory``, ``score_step`` to re-score a stored step, ``flow_match_sigmas``.
"""

from .base import StepOutput, gaussian_kl_mean
from .cps import cps_step
from .loop import Trajectory, flow_match_sigmas, sample, scheduler_sigmas, score_step
from .ode import ode_step
from .schedules import (
    SCHEDULES,
    ConstantNoise,
    DecayingNoise,
    NoiseSchedule,
    WindowNoise,
    equal_mean,
    from_config,
)
from .sde import sde_step

__all__ = [
    "SCHEDULES",
    "ConstantNoise",
    "DecayingNoise",
    "NoiseSchedule",
    "StepOutput",
    "Trajectory",
    "WindowNoise",
    "cps_step",
    "equal_mean",
    "flow_match_sigmas",
    "from_config",
    "gaussian_kl_mean",
    "ode_step",
    "sample",
    "scheduler_sigmas",
    "score_step",
    "sde_step",
]
