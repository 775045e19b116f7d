"""The HiCoGen hierarchical reward: R = w_g * R_global + w_s * R_subject + w_r * R_relation.

Each level is a registry reward on its own (``GlobalReward``, ``SubjectReward``,
``RelationReward``); ``HierarchicalReward`` sums them for a caller that wants one number. For
training, register the levels as separate rewards so the trainer logs each one and weights them
from the config::

    register_reward("hier_global")(global_reward)
    register_reward("hier_subject")(subject_reward)
    register_reward("hier_relation")(relation_reward)
    # config.rewards = {"hier_global": 1.0, "hier_subject": 1.0, "hier_relation": 1.0}

A level that is missing, or that answers None for an image (a scene without relations), counts 0
in the total.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

LEVELS = ("global", "subject", "relation")
LevelFn = Callable[[torch.Tensor, Sequence[Mapping]], list[float | None]]


class HierarchicalReward:
    """Weighted sum of the three levels; ``breakdown`` gives each level's unweighted scores."""

    def __init__(
        self,
        global_reward: LevelFn | None = None,
        subject: LevelFn | None = None,
        relation: LevelFn | None = None,
        weights: Mapping[str, float] | None = None,
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
        self.weights = {level: float(weights.get(level, 1.0)) for level in LEVELS}
        self.last_breakdown: dict[str, list[float | None]] = {}

    def breakdown(
        self, images: torch.Tensor, samples: Sequence[Mapping]
    ) -> dict[str, list[float | None]]:
        """{"global", "subject", "relation", "total"}: one entry per image; None = not scored."""
        n = len(images)
        parts: dict[str, list[float | None]] = {}
        total = [0.0] * n
        for level in LEVELS:
            fn = self.levels[level]
            scores = [None] * n if fn is None else list(fn(images, samples))
            if len(scores) != n:
                raise ValueError(f"level {level!r} returned {len(scores)} scores for {n} images")
            parts[level] = scores
            for i, score in enumerate(scores):
                if score is not None:
                    total[i] += self.weights[level] * float(score)
        parts["total"] = total
        return parts

    def __call__(self, images: torch.Tensor, samples: Sequence[Mapping]) -> list[float]:
        self.last_breakdown = self.breakdown(images, samples)
        return list(self.last_breakdown["total"])

    def __repr__(self) -> str:
        terms = [f"{self.weights[k]} * {k}" for k, fn in self.levels.items() if fn is not None]
        return f"HierarchicalReward({' + '.join(terms) or '0'})"
