"""Parsing, format and REC rewards, and the registry / weighted sum (hand-computed values)."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from vrl.rewards import (
    UnknownRewardError,
    WeightedReward,
    available_rewards,
    extract_answer,
    get_reward,
    grid_to_original,
    iou,
    parse_boxes,
    parse_completion,
    parse_solution,
    register_reward,
    resized_to_original,
    unregister_reward,
)
from vrl.rewards.parsing import answer_scope


def score(name: str, text: str, solution: str = "", **sample) -> float | None:
    """One reward on one raw completion (no box transform)."""
    return get_reward(name)([parse_completion(text)], [{"solution": solution, **sample}])[0]


# ---- parsing -----------------------------------------------------------------------------------


def test_iou_of_hand_made_boxes():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert iou((0, 0, 10, 10), (0, 0, 5, 10)) == pytest.approx(0.5)
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 0, 10), (0, 0, 0, 10)) == 0.0  # degenerate, even against itself


def test_extract_answer_takes_the_first_answer_stripped():
    assert extract_answer("<think>x</think><answer> [1, 2, 3, 4] </answer>") == "[1, 2, 3, 4]"
    assert extract_answer("<answer>a</answer><answer>b</answer>") == "a"
    assert extract_answer("<answer>\nmulti\nline\n</answer>") == "multi\nline"
    assert extract_answer("no tags") is None
    assert extract_answer("<answer>unclosed") is None


@pytest.mark.parametrize(
    "text, boxes",
    [
        ("[10, 20, 30, 40]", [(10, 20, 30, 40)]),
        ("[1.5,2.25 , 3e2, 4E1]", [(1.5, 2.25, 300, 40)]),
        ("[-5, -2.5, 10, 1e1]", [(-5, -2.5, 10, 10)]),
        ("[30, 40, 10, 20]", [(10, 20, 30, 40)]),  # corners swapped by the model
        ("boxes [0,0,1,1] and [2, 2, 3, 3]", [(0, 0, 1, 1), (2, 2, 3, 3)]),
        ("[[0,0,1,1],[2,2,3,3]]", [(0, 0, 1, 1), (2, 2, 3, 3)]),
        ("[1, 2, 3] [1, 2, 3, 4, 5]", []),  # not four numbers
        ("[nan, 0, 1, 1] [inf, 0, 1, 1] [1e999, 0, 1, 1] [0, 0, 1e7, 1]", []),
        ("[1e999, 0, 1, 1] [0, 0, 2, 2]", [(0, 0, 2, 2)]),  # the bad box alone is dropped
    ],
)
def test_parse_boxes_plain_lists(text, boxes):
    parsed, labels = parse_boxes(text)
    assert parsed == boxes
    assert labels == [None] * len(boxes)


def test_parse_boxes_json_objects_keep_labels_and_order():
    text = (
        "```json\n"
        '[{"bbox_2d": [1, 2, 3, 4], "label": "cat"},\n'
        ' {"label": "big dog", "bbox": [5, 6, 7, 8]},\n'
        ' {"box": [9, 10, 11, 12]}]\n'
        "```"
    )
    boxes, labels = parse_boxes(text)
    assert boxes == [(1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12)]
    assert labels == ["cat", "big dog", None]


def test_parse_boxes_python_style_dict_and_escaped_label():
    assert parse_boxes("{'bbox_2d': [1, 2, 3, 4], 'label': 'cup'}") == ([(1, 2, 3, 4)], ["cup"])
    assert parse_boxes('{"bbox_2d": [1,2,3,4], "label": "say \\"hi\\""}')[1] == ['say "hi"']


def test_parse_boxes_labels_only_boxes_inside_their_object():
    text = (
        '[0,0,1,1] {"bbox_2d": [1,1,2,2], "label": "a"} [2,2,3,3] '
        '{"label": "b", "boxes": [[3,3,4,4], [4,4,5,5]]} [5,5,6,6]'
    )
    boxes, labels = parse_boxes(text)
    assert boxes == [(i, i, i + 1, i + 1) for i in range(6)]  # in written order
    assert labels == [None, "a", None, "b", "b", None]


def test_completion_boxes_come_from_the_answer_not_the_reasoning():
    text = "<think>maybe [0, 0, 5, 5]?</think><answer>[10, 10, 20, 20]</answer>"
    completion = parse_completion(text)
    assert completion.think == "maybe [0, 0, 5, 5]?"
    assert completion.boxes == ((10, 10, 20, 20),)
    # Without an answer tag the whole text is searched (answer-only tiny models).
    assert parse_completion("the box is [1, 2, 3, 4]").boxes == ((1, 2, 3, 4),)


# Issue 20, item 10: a box stated only in the reasoning of a cut-off rollout is not the answer.
BOX_IN_THINK_ANSWER_CUT = "<think>the box is [50, 60, 200, 220]</think><answer>[50, 6"
BOX = "[50, 60, 200, 220]"


@pytest.mark.parametrize(
    "text, scope",
    [
        (BOX_IN_THINK_ANSWER_CUT, "[50, 6"),  # cut answer: its own content only
        ("<think>t</think><answer> [1, 2, 3, 4] </answer> [5, 6, 7, 8]", "[1, 2, 3, 4]"),
        ("<think>t</think><answer>[1, 2, 3, 4]", "[1, 2, 3, 4]"),  # cut after a whole box
        ("<think>the box is [1, 2, 3, 4]</think> [5, 6, 7, 8]", ""),  # tags, no answer
        ("<think>the box is [1, 2, 3, 4]", ""),  # cut inside the reasoning
        ("the box is [1, 2, 3, 4]</think>", ""),  # reasoning opened by the prompt
        ("[1, 2, 3, 4]</answer>", ""),
        ("  the box is [1, 2, 3, 4]\n", "the box is [1, 2, 3, 4]"),  # no tags: the whole text
    ],
)
def test_answer_scope(text, scope):
    assert answer_scope(text) == scope
    assert parse_completion(text).scope == scope
    assert parse_completion(text).boxes == tuple(parse_boxes(scope)[0])


def test_a_box_only_in_the_reasoning_of_a_cut_rollout_scores_zero():
    assert parse_completion(BOX_IN_THINK_ANSWER_CUT).boxes == ()
    assert score("rec_iou", BOX_IN_THINK_ANSWER_CUT, BOX) == 0.0
    assert score("rec_iou_50", BOX_IN_THINK_ANSWER_CUT, BOX) == 0.0
    for name in ("det_ap", "det_ap50", "det_od_length", "det_weighted_sum"):
        assert score(name, BOX_IN_THINK_ANSWER_CUT, BOX) == 0.0, name  # unlabelled: one class
    # Guards: the same box scores 1.0 when it is the answer, tagged, cut or untagged.
    for answered in (BOX, f"<answer>{BOX}</answer>", f"<think>t</think><answer>{BOX}"):
        assert score("rec_iou", answered, BOX) == 1.0, answered
        assert score("det_ap", answered, BOX) == 1.0, answered


def test_none_in_the_reasoning_is_not_a_no_object_answer():
    assert not parse_completion("<think>None here?</think><answer>").is_none
    assert parse_completion("<think>t</think><answer>None").is_none  # cut after the answer
    assert score("rec_iou", "<think>None of them</think>", "None") == 0.0


@pytest.mark.parametrize(
    "answer", ["None", "none", "None.", "no object", "No objects found", "[]", "null", '"None"']
)
def test_no_object_answers(answer):
    assert parse_completion(f"<answer>{answer}</answer>").is_none
    assert parse_solution(answer).is_none
    assert parse_completion(f"<answer>```json\n{answer}\n```</answer>").is_none


@pytest.mark.parametrize("answer", ["[1, 2, 3, 4]", "", "a cat", "no", "nonexistent"])
def test_answers_that_are_not_no_object(answer):
    assert not parse_completion(f"<answer>{answer}</answer>").is_none


def test_solution_with_or_without_answer_tags():
    assert parse_solution("[1, 2, 3, 4]").boxes == ((1, 2, 3, 4),)
    assert parse_solution("<answer>[1, 2, 3, 4]</answer>").boxes == ((1, 2, 3, 4),)


def test_box_transform_is_applied_and_its_overflow_dropped():
    double = parse_completion("[1, 2, 3, 4]", lambda b: tuple(2 * v for v in b))
    assert double.boxes == ((2, 4, 6, 8),)
    huge = parse_completion("[1, 2, 3, 4]", lambda b: tuple(v * 1e308 * 10 for v in b))
    assert huge.boxes == () and huge.labels == ()


def test_transform_factories_reject_bad_sizes():
    with pytest.raises(ValueError, match="width, height"):
        resized_to_original((0, 84), (448, 336))
    with pytest.raises(ValueError, match="width, height"):
        grid_to_original((448, -1))


# ---- REC ---------------------------------------------------------------------------------------

# Original image 448x336, the model saw it resized to 112x84 (Qwen2.5-VL-like) or answered on a
# 0..1000 grid (Qwen2-VL-like). Ground truth (56, 42, 224, 168) in original pixels; the prediction
# (56, 42, 280, 210) contains it: IoU = (168 * 126) / (224 * 168) = 9 / 16.
ORIGINAL_SIZE = (448, 336)
GROUND_TRUTH = "[56, 42, 224, 168]"
PREDICTION_IN = {
    "original": ("[56, 42, 280, 210]", None),
    "resized": ("[14, 10.5, 70, 52.5]", resized_to_original((112, 84), ORIGINAL_SIZE)),
    "grid": ("[125, 125, 625, 625]", grid_to_original(ORIGINAL_SIZE)),
}


@pytest.mark.parametrize("convention", sorted(PREDICTION_IN))
def test_rec_iou_is_the_same_in_every_coordinate_convention(convention):
    box, transform = PREDICTION_IN[convention]
    completion = parse_completion(f"<think>t</think><answer>{box}</answer>", transform)
    scores = get_reward("rec_iou")([completion], [{"solution": GROUND_TRUTH}])
    assert scores == [pytest.approx(9 / 16)]


def test_rec_iou_without_the_transform_is_wrong():
    # Guards the test above: the model-space box alone overlaps the truth by 14 x 10.5 only.
    union = 168 * 126 + 56 * 42 - 14 * 10.5
    expected = 14 * 10.5 / union
    assert score("rec_iou", "<answer>[14, 10.5, 70, 52.5]</answer>", GROUND_TRUTH) == pytest.approx(
        expected
    )


def test_rec_iou_uses_first_boxes_and_threshold_variant():
    text = "<answer>[0, 0, 10, 10] [100, 100, 200, 200]</answer>"
    assert score("rec_iou", text, "<answer>[0, 0, 10, 5]</answer>") == pytest.approx(0.5)
    assert score("rec_iou_50", text, "[0, 0, 10, 5]") == 0.0  # IoU 0.5 is not > 0.5
    assert score("rec_iou_50", text, "[0, 0, 10, 6]") == 1.0


def test_rec_no_object_case():
    assert score("rec_iou", "<answer>None</answer>", "None") == 1.0
    assert score("rec_iou_50", "<answer>None</answer>", "None") == 1.0
    assert score("rec_iou", "<answer>[0, 0, 1, 1]</answer>", "None") == 0.0
    assert score("rec_iou", "<answer>None</answer>", "[0, 0, 1, 1]") == 0.0


def test_rec_is_not_applicable_to_a_text_sample():
    assert score("rec_iou", "<answer>[0, 0, 1, 1]</answer>", "a red car") is None
    assert score("rec_iou_50", "<answer>[0, 0, 1, 1]</answer>", "a red car") is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "<answer>",
        "<answer></answer>",
        "<answer>[1e999, 0, 10, 10]</answer>",
        "<answer>[99999999999999999999, 0, 10, 10]</answer>",
        '<answer>{"bbox_2d": [0, 0, nan, 10]}</answer>',
        "<answer>[0, 0, 10]</answer>",
    ],
)
def test_malformed_completions_score_zero(text):
    for name in ("rec_iou", "rec_iou_50", "format", "format_rec"):
        assert score(name, text, "[0, 0, 10, 10]") == 0.0


# ---- format ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>a</think><answer>b</answer>", 1.0),
        ("  \n<think>a\nb</think>\n\n<answer>\nc\n</answer>\n ", 1.0),
        ("<think>a</think><answer>b</answer> trailing", 0.0),
        ("preamble <think>a</think><answer>b</answer>", 0.0),
        ("<answer>b</answer>", 0.0),
        ("<answer>b</answer><think>a</think>", 0.0),
        ("<think>a</think>", 0.0),
        ("", 0.0),
    ],
)
def test_format(text, expected):
    assert score("format", text) == expected


def test_format_rec_needs_a_box_inside_the_answer():
    assert score("format_rec", "<think>a</think><answer>[1, 2, 3, 4]</answer>") == 1.0
    obj = '<think>a</think><answer>{"bbox_2d": [1, 2, 3, 4], "label": "x"}</answer>'
    assert score("format_rec", obj) == 1.0
    assert score("format_rec", "<think>[1, 2, 3, 4]</think><answer>left</answer>") == 0.0
    assert score("format_rec", "<answer>[1, 2, 3, 4]</answer>") == 0.0  # no think
    # "None" is a well-formed REC answer (no-object samples).
    assert score("format_rec", "<think>a</think><answer>None</answer>") == 1.0


def test_format_answer():
    assert score("format_answer", "<answer>x</answer>") == 1.0
    assert score("format_answer", "<think>t</think> blah <answer>x</answer> more") == 1.0
    assert score("format_answer", "<answer>  </answer>") == 0.0
    assert score("format_answer", "x") == 0.0


# ---- registry and WeightedReward ---------------------------------------------------------------


@pytest.fixture
def temporary_reward():
    """Register throwaway rewards and remove them afterwards, even when the test fails."""
    names: list[str] = []

    def register(name, fn):
        register_reward(name)(fn)
        names.append(name)
        return fn

    yield register
    for name in names:
        unregister_reward(name)


def test_expected_rewards_are_registered():
    expected = {"format", "format_rec", "format_answer", "rec_iou", "rec_iou_50", "accuracy"}
    expected |= {"det_ap", "det_ap50", "det_od_length", "det_weighted_sum"}
    assert expected <= set(available_rewards())


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="'format' is already registered"):
        register_reward("format")(lambda completions, samples: [])


def test_unknown_name_lists_the_valid_names():
    for error in (KeyError, ValueError):
        with pytest.raises(error) as info:
            get_reward("rec_iuo")
        message = str(info.value)
        assert "rec_iuo" in message
        assert all(name in message for name in available_rewards())
    with pytest.raises(UnknownRewardError, match="valid names: .*format"):
        WeightedReward({"formatt": 1.0})


def test_weighted_reward_config_errors():
    with pytest.raises(ValueError, match="no rewards"):
        WeightedReward({})
    with pytest.raises(ValueError, match="finite"):
        WeightedReward({"format": float("nan")})
    with pytest.raises(ValueError, match="number"):
        WeightedReward({"format": "1"})
    reward = WeightedReward({"format": 1.0})
    with pytest.raises(TypeError, match="parse_completion"):
        reward(["<answer>x</answer>"], [{"solution": "x"}])
    with pytest.raises(ValueError, match="2 completions but 1 samples"):
        reward([parse_completion("a"), parse_completion("b")], [{"solution": "x"}])


def test_weighted_reward_applies_weights_and_marks_none_as_nan():
    completions = [
        parse_completion("<think>t</think><answer>[56, 42, 280, 210]</answer>"),  # IoU 9/16
        parse_completion("<answer>[56, 42, 224, 168]</answer>"),  # bad format, IoU 1
        parse_completion("<think>t</think><answer>red</answer>"),  # rec_iou not applicable
    ]
    samples = [{"solution": GROUND_TRUTH}, {"solution": GROUND_TRUTH}, {"solution": "red"}]
    result = WeightedReward({"format": 0.5, "rec_iou": 2.0})(completions, samples)

    assert result.total.dtype == torch.float32 and result.total.shape == (3,)
    assert result.total.tolist() == pytest.approx([0.5 + 2 * 9 / 16, 2.0, 0.5])
    assert result.components["format"].tolist() == [1.0, 0.0, 1.0]
    rec = result.components["rec_iou"]
    assert rec[:2].tolist() == pytest.approx([9 / 16, 1.0]) and math.isnan(rec[2])
    assert result.num_errors == 0


def test_a_raising_reward_does_not_kill_the_batch(temporary_reward, caplog):
    def fragile(completions, samples):
        if any("boom" in c.text for c in completions):
            raise RuntimeError("cannot score boom")
        return [1.0] * len(completions)

    temporary_reward("_test_fragile", fragile)
    completions = [parse_completion(t) for t in ("<think>a</think><answer>b</answer>", "boom", "x")]
    samples = [{"solution": "b"}] * 3
    with caplog.at_level(logging.WARNING, logger="vrl.rewards.registry"):
        result = WeightedReward({"_test_fragile": 3.0, "format": 1.0})(completions, samples)

    # The batch call failed; one-by-one scoring saved samples 0 and 2, sample 1 got 0.0.
    assert result.components["_test_fragile"].tolist() == [1.0, 0.0, 1.0]
    assert result.total.tolist() == [4.0, 0.0, 3.0]
    assert result.num_errors == 1
    assert "_test_fragile" in caplog.text and "cannot score boom" in caplog.text


def test_a_reward_returning_the_wrong_length_is_named(temporary_reward):
    temporary_reward("_test_short", lambda completions, samples: [1.0])
    with pytest.raises(ValueError, match="'_test_short' returned 1 scores for 2 samples"):
        WeightedReward({"_test_short": 1.0})([parse_completion("a")] * 2, [{"solution": ""}] * 2)


def test_non_finite_scores_become_zero_and_count_as_errors(temporary_reward):
    temporary_reward("_test_nan", lambda completions, samples: [float("nan"), 0.25])
    result = WeightedReward({"_test_nan": 2.0})([parse_completion("a")] * 2, [{"solution": ""}] * 2)
    assert result.total.tolist() == [0.0, 0.5]
    assert result.num_errors == 1


def test_unregister_unknown_name_is_an_error():
    with pytest.raises(KeyError, match="valid names"):
        unregister_reward("_never_registered")


def test_image_rewards_by_hand_and_through_weighted_reward():
    import torch

    from vrl.rewards import WeightedReward

    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    cyan = 1.0 - red
    grey = torch.full((1, 3, 4, 4), 0.5)
    images = torch.cat([red, cyan, grey])
    result = WeightedReward({"redness": 2.0, "brightness": 1.0})(images, [{}] * 3)
    assert result.components["redness"].tolist() == [1.0, -1.0, 0.0]
    assert result.components["brightness"].tolist() == pytest.approx([1 / 3, 2 / 3, 0.5])
    assert result.total.tolist() == pytest.approx([2 + 1 / 3, -2 + 2 / 3, 0.5])


def test_a_trainer_refuses_rewards_of_the_other_modality():
    from vrl.rewards import WeightedReward, available_rewards, reward_modality

    assert reward_modality("redness") == "image" and reward_modality("rec_iou") == "text"
    assert "redness" in available_rewards("image") and "redness" not in available_rewards("text")
    with pytest.raises(ValueError, match="rewards.redness scores image outputs") as err:
        WeightedReward({"accuracy": 1.0, "redness": 1.0}, modality="text")
    assert "rec_iou" in str(err.value)  # the message lists what would fit
    with pytest.raises(ValueError, match="modality"):
        register_reward("x", modality="audio")
