"""Referring-expression comprehension (REC) rewards: one box for one referring phrase.

The predicted box is already in original-image pixels (``parse_completion`` applied the model's
box transform), so it compares directly with the ground truth. A ground truth that says "None"
(no such object) is scored too: the reference code had no negative case, so a model trained on it
learns to always draw a box.
"""

from __future__ import annotations

from collections.abc import Sequence

from .parsing import Completion, iou, parse_solution
from .registry import Sample, register_reward


def rec_iou_score(completion: Completion, solution: str) -> float | None:
    """IoU of the first predicted box with the first ground-truth box.

    No-object ground truth: 1.0 iff the prediction also says none. A ground truth with neither a
    box nor a "none" answer is not a REC sample: None (not applicable).
    """
    truth = parse_solution(solution)
    if truth.is_none:
        return float(completion.is_none)
    if not truth.boxes:
        return None
    if not completion.boxes:
        return 0.0
    return iou(completion.boxes[0], truth.boxes[0])


@register_reward("rec_iou")
def rec_iou_reward(
    completions: Sequence[Completion], samples: Sequence[Sample]
) -> list[float | None]:
    """Continuous IoU with the ground-truth box (current VLM-R1)."""
    return [rec_iou_score(c, s["solution"]) for c, s in zip(completions, samples, strict=True)]


@register_reward("rec_iou_50")
def rec_iou_50_reward(
    completions: Sequence[Completion], samples: Sequence[Sample]
) -> list[float | None]:
    """1.0 if IoU > 0.5 else 0.0 (the earliest VLM-R1): a sparser signal than the IoU itself."""
    scores = rec_iou_reward(completions, samples)
    return [None if s is None else float(s > 0.5) for s in scores]
