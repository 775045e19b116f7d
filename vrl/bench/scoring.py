"""Davidsonian-Scene-Graph scoring of a question graph's answers (docs/algorithms.md, section 6).

A judge gives each question a value in [0, 1] (a probability of "yes", or 0/1), or None when it
cannot judge that question. Scoring, per image:

- a question *passes* when its value is at least `threshold` (0.5: the judge says "yes");
- with dependencies, a question is correct only if it passes and every ancestor (parents,
  their parents, ...) is correct: a failed parent zeroes its children, which stay in the
  denominator. Without dependencies a question is correct when it passes;
- a question the judge left unanswered (None) is left out of numerator and denominator; as a
  parent it does not zero its children (no evidence of failure);
- per level ("exist", "attribute", "relation") and over all questions, the accuracy is the
  fraction of correct judged questions; None when the image has no judged question there.

`soft` is the same with each correct question worth its value instead of 1 (a VLM's
confidence), for comparison with the hard accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vrl.hicogen.scene import Question

LEVELS = ("exist", "attribute", "relation")
ACC_KEYS = (*LEVELS, "all")


@dataclass(frozen=True)
class ImageScore:
    """One image's question scores and their per-level summaries."""

    correct: dict[str, float | None]  # question id -> 1.0 / 0.0 (None: not judged)
    accuracy: dict[str, float | None]  # "exist", "attribute", "relation", "all"
    soft: dict[str, float | None]


def score_questions(
    questions: Sequence[Question],
    answers: Mapping[str, float | None],
    *,
    dependencies: bool = True,
    threshold: float = 0.5,
) -> ImageScore:
    """Score one image's answers over its question graph (see the module docstring)."""
    ok: dict[str, bool | None] = {}  # None = not judged
    gated: dict[str, bool] = {}  # every judged ancestor is correct
    correct: dict[str, float | None] = {}
    soft_value: dict[str, float | None] = {}
    for q in questions:  # parents come before their children (check_question_graph)
        value = answers.get(q.id)
        if value is not None:
            value = float(value)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"answer to {q.id!r} must be in [0, 1], got {value}")
        parents_ok = all(gated.get(p, True) and ok.get(p) is not False for p in q.parents)
        gated[q.id] = parents_ok if dependencies else True
        ok[q.id] = None if value is None else value >= threshold
        if value is None:
            correct[q.id] = soft_value[q.id] = None
        else:
            keep = gated[q.id]
            correct[q.id] = 1.0 if ok[q.id] and keep else 0.0
            soft_value[q.id] = value if keep else 0.0
    level_of = {q.id: q.level for q in questions}
    return ImageScore(correct, _level_means(correct, level_of), _level_means(soft_value, level_of))


def _level_means(values: Mapping[str, float | None], level_of: Mapping[str, str]):
    out: dict[str, float | None] = {}
    for key in ACC_KEYS:
        judged = [v for qid, v in values.items() if v is not None and key in ("all", level_of[qid])]
        out[key] = sum(judged) / len(judged) if judged else None
    return out


def mean_accuracy(rows: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Per key, the mean over rows that have a value (None when no row has one)."""
    out: dict[str, float | None] = {}
    for key in ACC_KEYS:
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    return out
