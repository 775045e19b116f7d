"""The reward registry and the weighted sum the trainer optimises.

A reward is a plain callable over a batch, ``fn(outputs, samples) -> list[float | None]``,
where None means "not applicable to this sample" (a detection reward on a REC sample). For a
vision-language model the outputs are parsed ``Completion`` objects and ``samples`` the dataset
rows; for a text-to-image model the outputs are an image tensor (B, 3, H, W) in [0, 1] and
``samples`` are ``vrl.data.t2i.ImageSample``s (the prompt, its scene, the chain's reference
images and the prompt line's other fields, read as ``sample.scene`` or ``sample["scene"]``).
Rewards are registered by name, once, at import, and looked up from the run's config, which also
gives their weights: the reference VLM-R1 code read the weights but never applied them;
``WeightedReward`` does.

One faulty reward must not end a run that has been training for hours, so ``WeightedReward``
catches a component's exception, warns, rescores the batch sample by sample, and gives 0.0 to
the samples that still fail, counting them in ``RewardResult.num_errors``. Contract violations
(a wrong number of scores, a non-numeric score) are bugs and raise at once.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .parsing import Completion

logger = logging.getLogger(__name__)

Sample = Mapping[str, Any]
"""A dataset row (VLM: at least "solution"), or an ``ImageSample``, which reads like one."""

RewardFn = Callable[[Sequence[Completion], Sequence[Sample]], list[float | None]]

_REGISTRY: dict[str, RewardFn] = {}
_MODALITY: dict[str, str] = {}
MODALITIES = ("text", "image")
"""What a reward scores: parsed VLM completions ("text") or generated images ("image")."""


class UnknownRewardError(KeyError, ValueError):
    """A reward name that is not registered; catchable as KeyError or ValueError."""

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0]) if self.args else ""


def register_reward(name: str, *, modality: str = "text") -> Callable[[RewardFn], RewardFn]:
    """Decorator: register ``fn`` under ``name``; a name that is taken is refused.

    ``modality`` says what it scores ("text": parsed completions, "image": an image batch), so a
    trainer can refuse a reward of the other kind when the config is read, not mid-run.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a reward name is a non-empty string, got {name!r}")
    if modality not in MODALITIES:
        raise ValueError(f"reward modality must be one of {MODALITIES}, got {modality!r}")

    def decorator(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY:
            owner = _REGISTRY[name]
            where = f"{getattr(owner, '__module__', '?')}.{getattr(owner, '__qualname__', owner)}"
            raise ValueError(
                f"reward {name!r} is already registered (by {where}); choose another name "
                "or unregister_reward() the old one first"
            )
        _REGISTRY[name] = fn
        _MODALITY[name] = modality
        return fn

    return decorator


def unregister_reward(name: str) -> None:
    """Remove a reward (tests and notebooks that register throwaway rewards)."""
    if name not in _REGISTRY:
        raise _unknown(name)
    del _REGISTRY[name]
    del _MODALITY[name]


def available_rewards(modality: str | None = None) -> list[str]:
    """The registered reward names, sorted; only those of ``modality`` when given."""
    return sorted(n for n in _REGISTRY if modality is None or _MODALITY[n] == modality)


def reward_modality(name: str) -> str:
    if name not in _REGISTRY:
        raise _unknown(name)
    return _MODALITY[name]


def get_reward(name: str) -> RewardFn:
    """The reward registered under ``name``; the error lists the valid names."""
    if name not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY[name]


def check_reward_weights(weights: Mapping[str, Any], modality: str, where: str) -> None:
    """Refuse a ``{name: weight}`` table that names an unknown reward or one scoring another
    modality, or gives a weight that is not a finite number; ``where`` names the table in the
    message (e.g. ``grpo.rewards``). Configs call it so that a typo fails before any model loads."""
    for name, weight in weights.items():
        if name not in _REGISTRY:
            valid = ", ".join(available_rewards(modality)) or "(none registered)"
            raise ValueError(f"{where}.{name}: no such reward; {modality} rewards: {valid}")
        if _MODALITY[name] != modality:
            raise ValueError(
                f"{where}.{name} scores {_MODALITY[name]} outputs, but this trainer produces "
                f"{modality}; {modality} rewards: {', '.join(available_rewards(modality))}"
            )
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise ValueError(f"{where}.{name}: the weight must be a number, got {weight!r}")
        if not math.isfinite(weight):
            raise ValueError(f"{where}.{name}: the weight must be finite, got {weight!r}")


def _unknown(name: str) -> UnknownRewardError:
    valid = ", ".join(available_rewards()) or "(none registered)"
    return UnknownRewardError(f"unknown reward {name!r}; valid names: {valid}")


@dataclass
class RewardResult:
    """Scores of one batch of N completions."""

    total: torch.Tensor
    """(N,) float32: sum of weight * score over the components, a None score counting 0."""
    components: dict[str, torch.Tensor]
    """name -> (N,) float32 unweighted scores, NaN where the reward did not apply (log nan-mean)."""
    num_errors: int = 0
    """Samples that a component failed to score even alone (they got 0.0)."""


FLOAT32_MAX = torch.finfo(torch.float32).max


def score_tensor(scores: Sequence[float | None]) -> torch.Tensor:
    """(N,) float32 scores, NaN where a reward did not apply (None)."""
    return torch.tensor([math.nan if s is None else s for s in scores], dtype=torch.float32)


def weighted_sum(
    components: Mapping[str, torch.Tensor], weights: Mapping[str, float], n: int
) -> torch.Tensor:
    """(N,) float32 sum of weight * score over the components in order, a NaN score counting 0:
    the one formula of a run's reward (`WeightedReward`) and of the hierarchical reward."""
    total = torch.zeros(n, dtype=torch.float32)
    for name, values in components.items():
        total += weights[name] * torch.nan_to_num(values, nan=0.0)
    return total


class WeightedReward:
    """The config's ``{name: weight}`` turned into one callable scoring a batch.

    ``components`` adds rewards that are not looked up in the registry, name -> (reward, weight),
    scored first: a ``HierarchicalReward``'s levels (``.components()``), each logged on its own.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        modality: str | None = None,
        *,
        components: Mapping[str, tuple[RewardFn, float]] | None = None,
    ):
        components = dict(components or {})
        if not weights and not components:
            raise ValueError(
                f"no rewards given; name at least one, e.g. {{'format': 1.0}}. "
                f"Valid names: {', '.join(available_rewards())}"
            )
        self.weights: dict[str, float] = {}
        self.fns: dict[str, RewardFn] = {}
        for name, (fn, weight) in components.items():
            self.fns[name] = fn
            self.weights[name] = _checked_weight(name, weight)
        if modality is not None:
            check_reward_weights(weights, modality, "rewards")
        for name, weight in weights.items():
            if name in self.fns:
                raise ValueError(f"reward {name!r} is given twice")
            self.fns[name] = get_reward(name)  # fail at config time, not mid-run
            self.weights[name] = _checked_weight(name, weight)

    def __repr__(self) -> str:
        return f"WeightedReward({self.weights!r})"

    def __call__(
        self, completions: Sequence[Completion], samples: Sequence[Sample]
    ) -> RewardResult:
        if len(completions) != len(samples):
            raise ValueError(f"{len(completions)} completions but {len(samples)} samples")
        if not isinstance(completions, torch.Tensor) and any(
            isinstance(c, str) for c in completions
        ):
            raise TypeError(
                "rewards take parsed Completion objects, not raw strings; "
                "use vrl.rewards.parse_completion(text, box_transform) first"
            )
        components: dict[str, torch.Tensor] = {}
        num_errors = 0
        for name, fn in self.fns.items():
            scores, errors = _score_component(name, fn, completions, samples)
            num_errors += errors
            components[name] = score_tensor(scores)  # (N,)
        total = weighted_sum(components, self.weights, len(completions))
        overflowed = ~total.isfinite()  # finite scores whose weighted sum passes float32's range
        if overflowed.any():
            logger.warning(
                "the weighted reward overflowed float32 on %d samples, scored 0.0",
                int(overflowed.sum()),
            )
            total[overflowed] = 0.0
            num_errors += int(overflowed.sum())
        return RewardResult(total=total, components=components, num_errors=num_errors)


def _checked_weight(name: str, weight: Any) -> float:
    if not isinstance(weight, numbers.Real):
        raise ValueError(f"weight of reward {name!r} must be a number, got {weight!r}")
    if not math.isfinite(weight):
        raise ValueError(f"weight of reward {name!r} must be finite, got {weight!r}")
    return float(weight)


def _score_component(
    name: str, fn: RewardFn, completions: Sequence[Completion], samples: Sequence[Sample]
) -> tuple[list[float | None], int]:
    """Scores of one reward over the batch, and how many samples it failed on."""
    try:
        raw = fn(completions, samples)
    except Exception as exc:  # noqa: BLE001 - one faulty reward must not end the run
        logger.warning(
            "reward %r raised %s: %s; scoring the %d samples one at a time",
            name,
            type(exc).__name__,
            exc,
            len(completions),
        )
        return _score_one_by_one(name, fn, completions, samples)
    return _checked_scores(name, raw, len(completions))


def _score_one_by_one(
    name: str, fn: RewardFn, completions: Sequence[Completion], samples: Sequence[Sample]
) -> tuple[list[float | None], int]:
    scores: list[float | None] = []
    failed: list[str] = []
    for i in range(len(samples)):
        try:  # slicing keeps the batch type: a list of completions or an image tensor (1, 3, H, W)
            raw = fn(completions[i : i + 1], samples[i : i + 1])
        except Exception as exc:  # noqa: BLE001
            failed.append(f"#{i} ({type(exc).__name__}: {exc})")
            scores.append(0.0)
            continue
        scores.extend(_checked_scores(name, raw, 1)[0])
    if failed:
        logger.warning(
            "reward %r failed on %d of %d samples, scored 0.0: %s",
            name,
            len(failed),
            len(completions),
            "; ".join(failed[:5]) + (" ..." if len(failed) > 5 else ""),
        )
    return scores, len(failed)


def _checked_scores(name: str, raw: Any, expected: int) -> tuple[list[float | None], int]:
    """Validate a reward's output: one float-or-None per sample. Scores that are not finite in
    float32, the dtype rewards are trained in (1e39 is a finite Python float), become 0.0."""
    try:
        scores = list(raw)
    except TypeError:
        raise TypeError(f"reward {name!r} returned {type(raw).__name__}, not a list") from None
    if len(scores) != expected:
        raise ValueError(f"reward {name!r} returned {len(scores)} scores for {expected} samples")
    checked: list[float | None] = []
    non_finite = 0
    for score in scores:
        if score is None:
            checked.append(None)
            continue
        if not isinstance(score, numbers.Real):
            raise TypeError(f"reward {name!r} returned a {type(score).__name__} score: {score!r}")
        if not abs(float(score)) <= FLOAT32_MAX:  # inf once stored as float32 (NaN fails too)
            non_finite += 1
            checked.append(0.0)
        else:
            checked.append(float(score))
    if non_finite:
        logger.warning("reward %r returned %d non-finite scores, scored 0.0", name, non_finite)
    return checked, non_finite
