"""Noise-level schedules: the noise level a used at each sampling step.

Step 0 is the first sampling step (sigma = 1, pure noise), step ``num_steps - 1`` the last one
(to sigma = 0). A level of 0 means that step runs as the deterministic ODE (Euler) step.

    ConstantNoise(0.7)                                   Flow-GRPO: the same a at every step
    DecayingNoise(eta_max=1.0, eta_min=0.1)              HiCoGen: cosine decay, noise spent early
    WindowNoise(ConstantNoise(0.7), 4, start="random")   Flow-GRPO-Fast: noise only in a window

Build from a config with ``from_config``; ``equal_mean`` gives schedules of different kinds with the
same mean noise level (for diversity comparisons at equal noise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, Literal

import torch


def _check_num_steps(num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")


def _check_level(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return float(value)


class NoiseSchedule:
    """Interface: the noise level of each of ``num_steps`` sampling steps."""

    kind: ClassVar[str]

    def levels(self, num_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(num_steps,) float32 CPU tensor, step 0 first (sigma = 1)."""
        raise NotImplementedError

    def mean_level(self, num_steps: int) -> float:
        """Mean of ``levels(num_steps)`` over the steps (deterministic for every schedule here)."""
        return float(self.levels(num_steps).double().mean())

    def window(self, num_steps: int, generator: torch.Generator | None = None) -> tuple[int, int]:
        """(start, stop) of the steps that may carry noise; all steps unless windowed."""
        _check_num_steps(num_steps)
        return 0, num_steps

    def to_config(self) -> dict[str, Any]:
        """The dict ``from_config`` turns back into this schedule."""
        config: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            config[f.name] = value.to_config() if isinstance(value, NoiseSchedule) else value
        return config


@dataclass(frozen=True)
class ConstantNoise(NoiseSchedule):
    """The same noise level at every step (Flow-GRPO: 0.7 for SD3.5-M, 0.9 for FLUX)."""

    kind: ClassVar[str] = "constant"
    level: float
    """Noise level a at every step, >= 0 (0 = ODE everywhere)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", _check_level("level", self.level))

    def levels(self, num_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_num_steps(num_steps)
        return torch.full((num_steps,), self.level, dtype=torch.float32)  # (T,)


@dataclass(frozen=True)
class DecayingNoise(NoiseSchedule):
    """HiCoGen's decaying stochasticity schedule: cosine from ``eta_max`` down to ``eta_min``.

    HiCoGen writes eta(t) = eta_min + 0.5 (eta_max - eta_min) (1 + cos(pi (T - t) / T)) over the
    sampling time t in [0, T], t = T being pure noise. Here the N sampling steps i = 0 .. N - 1 are
    placed evenly on that interval, step 0 at t = T and the last step at t = 0:
    t_i = T (1 - i / (N - 1)), so (T - t_i) / T = i / (N - 1) and

        eta_i = eta_min + 0.5 (eta_max - eta_min) (1 + cos(pi * i / (N - 1)))

    which is eta_max at the first step, eta_min at the last (exactly), non-increasing, and the
    midpoint (eta_max + eta_min) / 2 at i = (N - 1) / 2. The step index is used, not the step's
    sigma, so the shape does not depend on the sigma shift. A single step gets eta_max.
    """

    kind: ClassVar[str] = "decaying"
    eta_max: float = 1.0
    """Level at the first step (HiCoGen: 1.0)."""
    eta_min: float = 0.0
    """Level at the last step (not published: a setting); <= eta_max."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "eta_max", _check_level("eta_max", self.eta_max))
        object.__setattr__(self, "eta_min", _check_level("eta_min", self.eta_min))
        if self.eta_min > self.eta_max:
            raise ValueError(f"eta_min ({self.eta_min}) must be <= eta_max ({self.eta_max})")

    def levels(self, num_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_num_steps(num_steps)
        progress = torch.arange(num_steps, dtype=torch.float64) / max(num_steps - 1, 1)  # (T,)
        weight = 0.5 * (1 + torch.cos(math.pi * progress))  # (T,) 1 -> 0
        # written as a convex combination so that both ends are exact
        levels = self.eta_max * weight + self.eta_min * (1 - weight)
        return levels.to(torch.float32)


@dataclass(frozen=True)
class WindowNoise(NoiseSchedule):
    """The inner schedule inside a window of ``size`` consecutive steps, 0 (ODE) elsewhere.

    The inner schedule is evaluated over the window's own length: ``inner.levels(size)`` fills
    steps start .. start + size - 1, so ``WindowNoise(DecayingNoise(1.0, 0.1), 4)`` decays from
    1.0 to 0.1 across the 4 window steps, wherever the window sits.

    ``start="random"`` draws the start uniformly over the valid starts 0 .. num_steps - size from
    the generator (Flow-GRPO-Fast); the trainer trains only the steps in the window. To get the
    window and the matching levels from one draw, call ``window(...)`` then
    ``levels(num_steps, window=...)``; ``levels(num_steps, generator)`` draws on its own.
    """

    kind: ClassVar[str] = "window"
    inner: NoiseSchedule
    """Schedule used inside the window (a NoiseSchedule or its config dict)."""
    size: int
    """Number of consecutive noisy steps, >= 1 and <= num_steps."""
    start: int | Literal["random"] = 0
    """First step of the window, or "random" (uniform over the valid starts)."""

    def __post_init__(self) -> None:
        if not isinstance(self.inner, NoiseSchedule):
            object.__setattr__(self, "inner", from_config(self.inner))
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"window size must be an int >= 1, got {self.size!r}")
        if self.start != "random" and (
            isinstance(self.start, bool) or not isinstance(self.start, int) or self.start < 0
        ):
            raise ValueError(f"window start must be an int >= 0 or 'random', got {self.start!r}")

    def window(self, num_steps: int, generator: torch.Generator | None = None) -> tuple[int, int]:
        _check_num_steps(num_steps)
        if self.size > num_steps:
            raise ValueError(f"window size {self.size} exceeds num_steps {num_steps}")
        if self.start == "random":
            device = generator.device if generator is not None else "cpu"
            high = num_steps - self.size + 1
            start = int(torch.randint(0, high, (1,), generator=generator, device=device).item())
        else:
            start = self.start
            if start + self.size > num_steps:
                raise ValueError(
                    f"window [{start}, {start + self.size}) does not fit in {num_steps} steps"
                )
        return start, start + self.size

    def levels(
        self,
        num_steps: int,
        generator: torch.Generator | None = None,
        *,
        window: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        if window is None:
            window = self.window(num_steps, generator)
        start, stop = window
        if stop - start != self.size or start < 0 or stop > num_steps:
            raise ValueError(f"window {window} is not {self.size} steps within {num_steps} steps")
        levels = torch.zeros(num_steps, dtype=torch.float32)  # (T,)
        levels[start:stop] = self.inner.levels(self.size, generator)
        return levels

    def mean_level(self, num_steps: int) -> float:
        # the same values wherever the window sits (the inner schedule spans the window only)
        _check_num_steps(num_steps)
        return float(self.levels(num_steps, window=(0, self.size)).double().mean())


SCHEDULES: dict[str, type[NoiseSchedule]] = {
    cls.kind: cls for cls in (ConstantNoise, DecayingNoise, WindowNoise)
}


def from_config(config: Mapping[str, Any] | str | NoiseSchedule) -> NoiseSchedule:
    """Build a schedule from ``{"kind": ..., **fields}`` or a bare kind name (defaults only).

    Examples: ``{"kind": "constant", "level": 0.7}``, ``{"kind": "decaying", "eta_max": 1.0,
    "eta_min": 0.1}``, ``{"kind": "window", "size": 4, "start": "random", "inner": {...}}``.
    """
    if isinstance(config, NoiseSchedule):
        return config
    if isinstance(config, str):
        config = {"kind": config}
    if not isinstance(config, Mapping):
        raise ValueError(f"noise schedule config must be a dict or a kind name, got {config!r}")
    valid_kinds = ", ".join(SCHEDULES)
    params = dict(config)
    kind = params.pop("kind", None)
    if kind is None:
        raise ValueError(f"noise schedule config needs a 'kind' key; valid kinds: {valid_kinds}")
    if kind not in SCHEDULES:
        raise ValueError(f"unknown noise schedule kind {kind!r}; valid kinds: {valid_kinds}")
    cls = SCHEDULES[kind]
    cls_fields = fields(cls)  # type: ignore[arg-type]
    valid_keys = [f.name for f in cls_fields]
    for key in params:
        if key not in valid_keys:
            raise ValueError(
                f"noise schedule {kind!r}: unknown key {key!r}; valid keys: {', '.join(valid_keys)}"
            )
    for f in cls_fields:
        if f.default is MISSING and f.name not in params:
            raise ValueError(f"noise schedule {kind!r}: missing key {f.name!r}")
    return cls(**params)


def equal_mean(
    kind: str,
    target_mean: float,
    num_steps: int,
    *,
    size: int | None = None,
    start: int | Literal["random"] = "random",
    inner: str = "constant",
) -> NoiseSchedule:
    """A schedule of ``kind`` whose mean level over ``num_steps`` steps is ``target_mean``.

    - "constant": level = target_mean.
    - "decaying": eta_min = 0 and eta_max scaled to the target (eta_max = 2 * target for N >= 2).
    - "window": ``size`` steps (required) at ``start``; the inner schedule (``inner`` =
      "constant" or "decaying", built by this same rule) carries target * num_steps / size.
    Levels above 1 are allowed (a is a scale), except that CPS steps refuse them.
    """
    _check_num_steps(num_steps)
    target = _check_level("target_mean", target_mean)
    if kind == "constant":
        return ConstantNoise(target)
    if kind == "decaying":
        return DecayingNoise(eta_max=target / DecayingNoise(1.0, 0.0).mean_level(num_steps))
    if kind == "window":
        if size is None:
            raise ValueError("equal_mean('window', ...) needs size=")
        if inner not in ("constant", "decaying"):
            raise ValueError(f"inner must be 'constant' or 'decaying', got {inner!r}")
        if size > num_steps:
            raise ValueError(f"window size {size} exceeds num_steps {num_steps}")
        inner_schedule = equal_mean(inner, target * num_steps / size, size)
        return WindowNoise(inner_schedule, size=size, start=start)
    raise ValueError(f"unknown noise schedule kind {kind!r}; valid kinds: {', '.join(SCHEDULES)}")
