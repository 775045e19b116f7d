"""Object-detection rewards: many labelled boxes against many labelled ground-truth boxes.

The solution is a JSON list of ``{"bbox_2d": [...], "label": ...}`` objects, or "None" when the
image holds none of the asked-for objects. Predictions carry no confidence, so every score is 1.0
and the order the model wrote its boxes in is their rank. Plain AP does not punish extra boxes of
classes absent from the ground truth, and a model learns to emit many boxes; ``det_od_length`` and
``det_weighted_sum`` close that hole.

Labels are compared casefolded. If the ground truth lacks labels, everything is one class; if it
has them, a predicted box without a label matches nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .parsing import Box, Completion, iou, parse_solution
from .registry import Sample, register_reward

COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""0.50:0.05:0.95, the thresholds COCO mAP averages over."""
RECALL_POINTS = 101
"""COCO interpolates precision at recall 0, 0.01, ..., 1."""
MATCH_IOU = 0.5
"""Greedy matching of det_weighted_sum stops below this IoU."""
POSITION_WEIGHT, COMPLETENESS_WEIGHT = 0.7, 0.3

_ONE_CLASS = ""  # the class of every box when the ground truth has no labels


def _class_keys(completion: Completion, truth: Completion) -> tuple[list[str | None], list[str]]:
    """Comparable class keys of predicted and ground-truth boxes (see module docstring)."""
    if any(label is None for label in truth.labels):
        return [_ONE_CLASS] * len(completion.boxes), [_ONE_CLASS] * len(truth.boxes)

    def key(label: str) -> str:
        return " ".join(label.casefold().split())

    predicted = [None if label is None else key(label) for label in completion.labels]
    return predicted, [key(str(label)) for label in truth.labels]


def average_precision(
    predicted: Sequence[Box], truth: Sequence[Box], iou_threshold: float
) -> float:
    """COCO-style AP of one class at one IoU threshold, predictions ranked in the given order."""
    ious = [[iou(p, g) for g in truth] for p in predicted]
    return _average_precision(ious, len(truth), iou_threshold)


def _average_precision(ious: list[list[float]], n_truth: int, iou_threshold: float) -> float:
    """AP from the (n_pred, n_truth) IoU matrix, rows in rank order.

    Each prediction takes the unmatched ground truth of highest IoU >= threshold; precision is
    made monotone (the max precision at any higher recall) and read at 101 recall points.
    """
    if n_truth == 0:
        return 0.0
    matched = [False] * n_truth
    precisions: list[float] = []
    recalls: list[float] = []
    true_positives = 0
    for rank, row in enumerate(ious, start=1):
        best, best_iou = -1, 0.0
        for j, overlap in enumerate(row):
            if not matched[j] and overlap >= iou_threshold and overlap > best_iou:
                best, best_iou = j, overlap
        if best >= 0:
            matched[best] = True
            true_positives += 1
        precisions.append(true_positives / rank)
        recalls.append(true_positives / n_truth)
    for k in range(len(precisions) - 2, -1, -1):  # monotone envelope, right to left
        precisions[k] = max(precisions[k], precisions[k + 1])

    total, k = 0.0, 0
    for i in range(RECALL_POINTS):
        recall_level = i / (RECALL_POINTS - 1)
        while k < len(recalls) and recalls[k] < recall_level:
            k += 1
        if k == len(recalls):
            break  # this recall is never reached, nor any higher one: precision 0
        total += precisions[k]
    return total / RECALL_POINTS


def mean_average_precision(
    completion: Completion,
    truth: Completion,
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
) -> float:
    """AP averaged over the ground-truth classes and over ``iou_thresholds``."""
    predicted_keys, truth_keys = _class_keys(completion, truth)
    per_class = []
    for cls in sorted(set(truth_keys)):
        predicted = [b for b, k in zip(completion.boxes, predicted_keys, strict=True) if k == cls]
        expected = [b for b, k in zip(truth.boxes, truth_keys, strict=True) if k == cls]
        ious = [[iou(p, g) for g in expected] for p in predicted]  # once for all thresholds
        aps = [_average_precision(ious, len(expected), t) for t in iou_thresholds]
        per_class.append(sum(aps) / len(aps))
    return sum(per_class) / len(per_class)


def od_length_score(completion: Completion, truth: Completion) -> float:
    """mAP scaled down by min(1, n_gt / n_pred): extra boxes cost reward."""
    ratio = min(1.0, len(truth.boxes) / len(completion.boxes))
    return mean_average_precision(completion, truth) * ratio


def weighted_sum_score(completion: Completion, truth: Completion) -> float:
    """0.7 * position + 0.3 * completeness.

    Boxes are paired greedily by highest IoU, stopping below ``MATCH_IOU``. A pair whose labels
    differ is not a hit: it adds 0 to position (sum of hit IoUs / n_gt) and counts as a miss and
    a false alarm in completeness = 1 - (miss_rate + false_alarm_rate) / 2.
    """
    predicted_keys, truth_keys = _class_keys(completion, truth)
    pairs = sorted(
        (
            (iou(p, g), i, j)
            for i, p in enumerate(completion.boxes)
            for j, g in enumerate(truth.boxes)
        ),
        key=lambda pair: (-pair[0], pair[1], pair[2]),
    )
    used_predicted: set[int] = set()
    used_truth: set[int] = set()
    hit_ious: list[float] = []
    for overlap, i, j in pairs:
        if overlap < MATCH_IOU:
            break
        if i in used_predicted or j in used_truth:
            continue
        used_predicted.add(i)
        used_truth.add(j)
        if predicted_keys[i] == truth_keys[j]:
            hit_ious.append(overlap)
    n_pred, n_gt = len(completion.boxes), len(truth.boxes)
    position = sum(hit_ious) / n_gt
    miss_rate = 1.0 - len(hit_ious) / n_gt
    false_alarm_rate = 1.0 - len(hit_ious) / n_pred
    completeness = 1.0 - (miss_rate + false_alarm_rate) / 2
    return POSITION_WEIGHT * position + COMPLETENESS_WEIGHT * completeness


def detection_score(
    completion: Completion, solution: str, metric: Callable[[Completion, Completion], float]
) -> float | None:
    """``metric`` on the non-empty case; the empty cases are decided here.

    No-object ground truth: 1.0 iff the prediction has no box. No prediction for a real object:
    0.0. A ground truth with neither boxes nor "None" is not a detection sample: None.
    """
    truth = parse_solution(solution)
    if truth.is_none:
        return float(not completion.boxes)
    if not truth.boxes:
        return None
    if not completion.boxes:
        return 0.0
    return metric(completion, truth)


def _score_batch(
    completions: Sequence[Completion],
    samples: Sequence[Sample],
    metric: Callable[[Completion, Completion], float],
) -> list[float | None]:
    return [
        detection_score(c, s["solution"], metric) for c, s in zip(completions, samples, strict=True)
    ]


def ap50_score(completion: Completion, truth: Completion) -> float:
    """mAP at IoU 0.5 alone."""
    return mean_average_precision(completion, truth, iou_thresholds=(0.5,))


@register_reward("det_ap")
def det_ap_reward(
    completions: Sequence[Completion], samples: Sequence[Sample]
) -> list[float | None]:
    """COCO mAP over IoU 0.50:0.95: rewards tight boxes, not just found objects."""
    return _score_batch(completions, samples, mean_average_precision)


@register_reward("det_ap50")
def det_ap50_reward(
    completions: Sequence[Completion], samples: Sequence[Sample]
) -> list[float | None]:
    """mAP at IoU 0.5: rewards finding the objects; looser on box placement."""
    return _score_batch(completions, samples, ap50_score)


@register_reward("det_od_length")
def det_od_length_reward(
    completions: Sequence[Completion], samples: Sequence[Sample]
) -> list[float | None]:
    """mAP * min(1, n_gt / n_pred) (VLM-R1 "odLength"): stops the many-boxes hack."""
    return _score_batch(completions, samples, od_length_score)


@register_reward("det_weighted_sum")
def det_weighted_sum_reward(
    completions: Sequence[Completion], samples: Sequence[Sample]
) -> list[float | None]:
    """0.7 * position + 0.3 * completeness (VLM-R1 "weighted_sum")."""
    return _score_batch(completions, samples, weighted_sum_score)
