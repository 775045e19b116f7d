"""Property tests: no string makes the parser or a reward raise, and their outputs stay sane.

A reward runs on whatever a policy in the middle of RL emits (half-written JSON, runs of digits,
tags in any order), so "never raises, always in [0, 1]" is checked on arbitrary text and on text
assembled from the fragments that break naive parsers.
"""

from __future__ import annotations

import math
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from vrl.rewards import (
    ACCURACY_METHODS,
    WeightedReward,
    available_rewards,
    extract_answer,
    get_reward,
    grid_to_original,
    iou,
    parse_boxes,
    parse_completion,
    resized_to_original,
)
from vrl.rewards.format import THINK_ANSWER_PATTERN, has_think_answer_format
from vrl.rewards.parsing import MAX_ABS_COORD

FRAGMENTS = [
    "<answer>", "</answer>", "<think>", "</think>", "[", "]", "{", "}", ",", ", ", " ", "\n",
    '{"bbox_2d":', '"label":', '"cat"', "'label': 'dog'", "```json", "```", "nan", "inf", "-inf",
    "1e999", "-1e999", "1e308", "1e-400", "0", "-", ".", "e", "E", "+", "None", "none", "null",
    "[]", "no object", "\\frac{", "\\sqrt{", "\\boxed{", "^", "**", "(", ")", "A", "(B)",
    "Answer:", "yes", "no", "=", "$", "\\", '"', "'",
]  # fmt: skip

numbers = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
fragment_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), numbers, st.text(max_size=3)), max_size=40
).map("".join)
any_text = st.one_of(st.text(max_size=200), fragment_text)
transforms = st.sampled_from(
    [None, resized_to_original((112, 84), (448, 336)), grid_to_original((448, 336))]
)
methods = st.one_of(st.none(), st.sampled_from(ACCURACY_METHODS), st.just("not_a_method"))

FUZZ = settings(max_examples=250, deadline=None)


def assert_valid_boxes(boxes) -> None:
    for box in boxes:
        assert len(box) == 4
        assert all(math.isfinite(v) and abs(v) <= MAX_ABS_COORD for v in box)
        assert box[0] <= box[2] and box[1] <= box[3]


@FUZZ
@given(any_text)
def test_extract_answer_never_raises(text):
    answer = extract_answer(text)
    assert answer is None or (isinstance(answer, str) and answer in text)


@FUZZ
@given(any_text)
def test_parse_boxes_returns_only_valid_boxes(text):
    boxes, labels = parse_boxes(text)
    assert len(boxes) == len(labels)
    assert_valid_boxes(boxes)


@FUZZ
@given(any_text, transforms)
def test_parse_completion_is_consistent(text, transform):
    completion = parse_completion(text, transform)
    assert completion.text == text
    assert completion.scope in text
    if completion.answer is not None:
        assert completion.scope == completion.answer
    assert len(completion.boxes) == len(completion.labels)
    assert_valid_boxes(completion.boxes)
    assert not (completion.is_none and completion.boxes)


box_coordinates = st.floats(-1e5, 1e5, allow_nan=False)


@FUZZ
@given(st.tuples(box_coordinates, box_coordinates, box_coordinates, box_coordinates))
def test_a_written_box_parses_back_exactly(box):
    text = f"<answer>[{box[0]!r}, {box[1]!r}, {box[2]!r}, {box[3]!r}]</answer>"
    expected = (min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3]))
    assert parse_completion(text).boxes == (expected,)


@FUZZ
@given(
    st.tuples(box_coordinates, box_coordinates, box_coordinates, box_coordinates),
    st.tuples(box_coordinates, box_coordinates, box_coordinates, box_coordinates),
)
def test_iou_is_symmetric_and_bounded(a, b):
    a = parse_boxes(str(list(a)))[0][0]
    b = parse_boxes(str(list(b)))[0][0]
    assert iou(a, b) == iou(b, a)
    assert 0.0 <= iou(a, b) <= 1.0


@FUZZ
@given(any_text, any_text, methods, transforms)
def test_every_reward_scores_any_text_in_unit_interval(text, solution, method, transform):
    completions = [parse_completion(text, transform)]
    samples = [{"solution": solution, "accu_reward_method": method}]
    for name in available_rewards("text"):
        scores = get_reward(name)(completions, samples)
        assert len(scores) == 1, name
        assert scores[0] is None or 0.0 <= scores[0] <= 1.0, (name, scores)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(any_text, any_text), min_size=1, max_size=4))
def test_weighted_sum_of_all_rewards_never_hits_an_error(pairs):
    reward = WeightedReward(dict.fromkeys(available_rewards("text"), 1.0))
    completions = [parse_completion(text) for text, _ in pairs]
    samples = [{"solution": solution} for _, solution in pairs]
    result = reward(completions, samples)
    assert result.num_errors == 0  # no built-in reward raised, even inside the fallback
    assert result.total.isfinite().all()


format_text = st.lists(
    st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "x", "<", ">"]),
    max_size=12,
).map("".join)


@FUZZ
@given(st.one_of(format_text, any_text))
def test_linear_format_check_agrees_with_the_regex(text):
    expected = re.fullmatch(THINK_ANSWER_PATTERN, text.strip(), re.DOTALL) is not None
    assert has_think_answer_format(parse_completion(text)) == expected
