"""Format rewards: did the model answer in the shape the parser (and the benchmark) expects?

They teach the output layout before the task itself can be rewarded: without a parsable
<answer>, every accuracy reward is 0 and the group carries no signal.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .parsing import Completion
from .registry import Sample, register_reward

THINK_ANSWER_PATTERN = r"<think>.*?</think>\s*<answer>.*?</answer>"
"""The VLM-R1 format, matched (DOTALL) against the whole completion stripped of whitespace."""

_THINK_END_THEN_ANSWER = re.compile(r"</think>\s*<answer>")


def has_think_answer_format(completion: Completion) -> bool:
    """The whole completion (surrounding whitespace aside) matches ``THINK_ANSWER_PATTERN``.

    Decided in linear time rather than by ``re.fullmatch``, which backtracks over every
    </think> x </answer> pair and takes seconds on a degenerate completion full of tags. A full
    match needs the text to open with <think>, close with </answer>, and hold a
    "</think> <answer>" in between: the leftmost one is the one that leaves most room.
    """
    text = completion.text.strip()
    if not (text.startswith("<think>") and text.endswith("</answer>")):
        return False
    middle = _THINK_END_THEN_ANSWER.search(text, len("<think>"))
    return middle is not None and middle.end() <= len(text) - len("</answer>")


@register_reward("format")
def format_reward(
    completions: Sequence[Completion], samples: Sequence[Sample]
) -> list[float | None]:
    """1.0 iff the completion is exactly a think block followed by an answer block (VLM-R1)."""
    return [float(has_think_answer_format(c)) for c in completions]


@register_reward("format_rec")
def format_rec_reward(
    completions: Sequence[Completion], samples: Sequence[Sample]
) -> list[float | None]:
    """``format`` and the answer holds a box (a plain list or a bbox_2d object).

    An answer that says there is no object ("None") also counts as well formed: it is a valid REC
    answer for a no-object sample, and rewarding only boxes would push the model to invent one.
    """
    return [float(has_think_answer_format(c) and (bool(c.boxes) or c.is_none)) for c in completions]


@register_reward("format_answer")
def format_answer_reward(
    completions: Sequence[Completion], samples: Sequence[Sample]
) -> list[float | None]:
    """1.0 iff the completion has a non-empty <answer>...</answer>; no think block required.

    For tiny models that cannot yet afford to reason first. An empty answer earns nothing, or the
    cheapest way to collect this reward would be "<answer></answer>".
    """
    return [float(bool(c.answer)) for c in completions]


@register_reward("format_rec_answer")
def format_rec_answer_reward(
    completions: Sequence[Completion], samples: Sequence[Sample]
) -> list[float | None]:
    """1.0 iff the completion has an <answer> that holds a box (or says there is no object); no
    think block required: ``format_rec`` for the ``rec_answer_only`` template."""
    return [float(bool(c.answer) and (bool(c.boxes) or c.is_none)) for c in completions]
