"""The demo's reward: which backends score the images, and the per-level report the page shows.

A builder takes the launch settings and returns a `HierarchicalReward` (or None: no scores). It is
pluggable: add a function to `REWARD_BUILDERS`. Two exist:

- "world": the shapes world's exact checkers (`vrl.rewards.world`: world_global, world_subject,
  world_relation), the natural reward for the shapes-world model;
- "tiny-random": the HiCoGen hierarchical reward (CLIPScore, OWLv2 + DINOv2 + VLM subject checks,
  VLM + GenEval-geometry relations) on tiny random backbones built offline. It runs the real
  scoring code end to end but its numbers mean nothing; the page says so.

"auto" picks "world" when `vrl.rewards.world` can be imported, else "tiny-random".
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vrl.data.t2i import ImageSample
from vrl.demo.settings import DemoSettings
from vrl.rewards.hierarchical import LEVELS, HierarchicalReward

RewardBuilder = Callable[[DemoSettings], HierarchicalReward | None]


@dataclass
class RewardReport:
    """Scores of one batch of images: per level, and the rows behind the subject and relation levels."""

    levels: dict[str, list[float | None]]
    """{"global", "subject", "relation", "total"}: one entry per image, None = not scored."""
    subjects: list[list[dict[str, Any]]] = field(default_factory=list)
    """Per image, one row per subject (the subject level's own fields, e.g. dino, vlm, score)."""
    relations: list[list[dict[str, Any]]] = field(default_factory=list)
    """Per image, one row per relation."""


def score_images(
    reward: HierarchicalReward, images: torch.Tensor, samples: Sequence[ImageSample]
) -> RewardReport:
    """Score (B, 3, H, W) images in [0, 1] and collect each level's per-row breakdown.

    The rows come from the reward's own `rows(images, samples)` when it has one, else from each
    level's `last_breakdown` right after the call (so the caller must not score two batches at
    once with the same reward: the demo holds a lock).
    """
    levels = reward.breakdown(images, samples)
    if hasattr(reward, "rows"):  # a reward that lays out its own rows (WorldReward)
        subjects, relations = reward.rows(images, samples)
        return RewardReport(levels, subjects, relations)
    rows: dict[str, list[list[dict[str, Any]]]] = {}
    for level in ("subject", "relation"):
        last = getattr(reward.levels.get(level), "last_breakdown", None)
        if isinstance(last, list) and len(last) == len(images):
            rows[level] = [[_row_dict(r) for r in image_rows] for image_rows in last]
        else:
            rows[level] = [[] for _ in range(len(images))]
    return RewardReport(levels, rows["subject"], rows["relation"])


def _row_dict(row: Any) -> dict[str, Any]:
    """A breakdown row as {field: scalar}; boxes and other structures are left out of the table."""
    if dataclasses.is_dataclass(row):
        items = {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}
    elif isinstance(row, Mapping):
        items = dict(row)
    else:
        return {"value": str(row)}
    return {k: v for k, v in items.items() if v is None or isinstance(v, str | int | float | bool)}


# ---------------------------------------------------------------------- builders


def world_reward_available() -> bool:
    """True once the shapes world's exact-checker reward (vrl.rewards.world) is installed."""
    try:
        return importlib.util.find_spec("vrl.rewards.world") is not None
    except ModuleNotFoundError:
        return False


class WorldReward(HierarchicalReward):
    """The shapes world's three levels (`vrl.rewards.world.make_world_reward`), plus a row per
    subject and per relation read from the same exact checks (cached by the world reward, so
    each image is checked once)."""

    def __init__(self):
        world = importlib.import_module("vrl.rewards.world")
        summed = world.make_world_reward()
        super().__init__(
            summed.levels["global"],
            summed.levels["subject"],
            summed.levels["relation"],
            summed.weights,
            prefix=summed.prefix,
        )
        self._world_checks = world.world_checks

    def rows(self, images: torch.Tensor, samples: Sequence[ImageSample]) -> tuple[list, list]:
        """Per image: one row per subject (found, its questions right) and per relation."""
        from vrl.rewards.hierarchical_subject import scene_of

        subjects, relations = [], []
        for check, sample in zip(self._world_checks(images, samples), samples, strict=True):
            scene = scene_of(sample)
            image_subjects = []
            for subject in scene.subjects:
                asked = [
                    q.id
                    for q in check.questions
                    if q.level in ("exist", "attribute") and q.target.subjects == (subject.id,)
                ]
                right = sum(check.correct[q] for q in asked)
                image_subjects.append(
                    {
                        "subject": subject.id,
                        "found": check.assignment.get(subject.id) is not None,
                        "questions right": f"{right}/{len(asked)}",
                        "score": right / len(asked) if asked else None,
                    }
                )
            subjects.append(image_subjects)
            relations.append(
                [
                    {
                        "relation": " ".join(
                            (q.target.subjects[0], q.target.predicate or "", q.target.subjects[1])
                        ),
                        "question": q.text,
                        "checker says": check.answers[q.id],
                        "score": float(check.correct[q.id]),
                    }
                    for q in check.questions
                    if q.level == "relation"
                ]
            )
        return subjects, relations


def build_world_reward(settings: DemoSettings) -> HierarchicalReward:
    """The shapes world's exact checkers as the three levels (vrl.rewards.world)."""
    if not world_reward_available():
        raise RuntimeError(
            "reward 'world' needs vrl.rewards.world (the shapes world's exact checkers), which is "
            "not installed in this version; use --reward tiny-random or none"
        )
    return WorldReward()


def build_tiny_random_reward(settings: DemoSettings) -> HierarchicalReward:
    """All three levels on tiny random models (CLIP, OWLv2, DINOv2, Qwen2.5-VL) built offline:
    the real code paths, meaningless scores. Seeded, so a page scores the same every launch."""
    from vrl.rewards.hierarchical_models import TINY, build_hierarchical_reward

    models = {name: {"path": TINY} for name in ("clip", "detector", "dino", "vlm")}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_hierarchical_reward(weights=dict.fromkeys(LEVELS, 1.0), models=models)


REWARD_BUILDERS: dict[str, RewardBuilder] = {
    "world": build_world_reward,
    "tiny-random": build_tiny_random_reward,
    "none": lambda settings: None,
}

REWARD_NOTES = {
    "world": "the shapes world's exact checkers",
    "tiny-random": "tiny random backbones: the real scoring code, but the numbers mean nothing",
    "none": "no reward",
}


def resolve_reward_name(settings: DemoSettings) -> str:
    if settings.reward != "auto":
        return settings.reward
    return "world" if world_reward_available() else "tiny-random"


def build_reward(settings: DemoSettings) -> tuple[str, HierarchicalReward | None]:
    """(name, reward) for the settings; "auto" resolved."""
    name = resolve_reward_name(settings)
    return name, REWARD_BUILDERS[name](settings)


def format_score(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.3f}" if isinstance(value, float) else str(value)


__all__ = [
    "LEVELS",
    "REWARD_BUILDERS",
    "RewardReport",
    "build_reward",
    "format_score",
    "score_images",
    "world_reward_available",
]
