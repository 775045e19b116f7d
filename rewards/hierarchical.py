"""The HiCoGen hierarchical reward: R = w_g * R_global + w_s * R_subject + w_r * R_relation.

``HierarchicalReward`` is one object holding its three levels (each a plain image reward:
``GlobalReward``, ``SubjectReward``, ``RelationReward`` on models loaded once by
``build_hierarchical_reward``, or the shapes world's exact checks, ``rewards/world.py``) and its
level weights. A trainer takes its ``components()``, each level under its own name
(``hier_global``, ..., or ``world_global``, ...) with its weight, and sums them with the run's
other rewards in ``WeightedReward``, so each level is logged on its own::

    reward = build_hierarchical_reward(weights={"global": 1.0, "subject": 1.0}, models=...)
    WeightedReward({}, modality="image", components=reward.components())

Called alone it is a plain image reward (its total); ``breakdown`` gives each level's scores
beside the total. The total is ``registry.weighted_sum``, the formula a run's reward uses: a
level that is missing, or that answers None for an image (a scene without relations), counts 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .registry import score_tensor, weighted_sum

LEVELS = ("global", "subject", "relation")
LevelFn = Callable[[torch.Tensor, Sequence[Mapping]], list[float | None]]


class HierarchicalReward:
    """Its levels, their weights (default 1) and the models behind them (``models``, when built
    by ``build_hierarchical_reward``); ``prefix`` names the levels in a run's logs."""

    def __init__(
        self,
        global_reward: LevelFn | None = None,
        subject: LevelFn | None = None,
        relation: LevelFn | None = None,
        weights: Mapping[str, float] | None = None,
        *,
        prefix: str = "hier",
    ):
        weights = dict(weights or {})
        unknown = set(weights) - set(LEVELS)
        if unknown:
            raise ValueError(f"unknown level weights {sorted(unknown)}; valid: {list(LEVELS)}")
        self.levels: dict[str, LevelFn | None] = {
            "global": global_reward,
            "subject": subject,
            "relation": relation,
        }
        # the levels in the order their weights were given, then the others: the order of the sum
        order = [*weights, *(level for level in LEVELS if level not in weights)]
        self.weights = {level: float(weights.get(level, 1.0)) for level in order}
        self.prefix = prefix
        self.models: dict[str, Any] = {}
        self.last_breakdown: dict[str, list[float | None]] = {}

    def name(self, level: str) -> str:
        return f"{self.prefix}_{level}"

    def components(self) -> dict[str, tuple[LevelFn, float]]:
        """{name: (level reward, weight)} of the levels present, for ``WeightedReward``."""
        return {
            self.name(level): (fn, weight)
            for level, weight in self.weights.items()
            if (fn := self.levels[level]) is not None
        }

    def breakdown(
        self, images: torch.Tensor, samples: Sequence[Mapping]
    ) -> dict[str, list[float | None]]:
        """{"global", "subject", "relation", "total"}: one entry per image; None = not scored."""
        n = len(images)
        parts: dict[str, list[float | None]] = {}
        for level in LEVELS:
            fn = self.levels[level]
            scores = [None] * n if fn is None else list(fn(images, samples))
            if len(scores) != n:
                raise ValueError(f"level {level!r} returned {len(scores)} scores for {n} images")
            parts[level] = scores
        present = {self.name(level): score_tensor(parts[level]) for level in self.weights
                   if self.levels[level] is not None}  # fmt: skip
        weights = {self.name(level): w for level, w in self.weights.items()}
        parts["total"] = weighted_sum(present, weights, n).tolist()
        return parts

    def __call__(self, images: torch.Tensor, samples: Sequence[Mapping]) -> list[float]:
        self.last_breakdown = self.breakdown(images, samples)
        return list(self.last_breakdown["total"])

    def __repr__(self) -> str:
        terms = [f"{w} * {self.name(k)}" for k, w in self.weights.items() if self.levels[k]]
        return f"HierarchicalReward({' + '.join(terms) or '0'})"
