"""Accuracy methods and detection rewards on hand-computed cases."""

from __future__ import annotations

import json
import logging
import types

import pytest

from vrl.rewards import (
    ACCURACY_METHODS,
    average_precision,
    check_accuracy_method,
    get_reward,
    parse_completion,
)
from vrl.rewards import accuracy as accuracy_module


def score(name: str, text: str, solution: str, method: str | None = None) -> float | None:
    sample = {"solution": solution, "accu_reward_method": method}
    return get_reward(name)([parse_completion(text)], [sample])[0]


def accuracy(answer: str, solution: str, method: str | None) -> float | None:
    return score("accuracy", f"<answer>{answer}</answer>", solution, method)


# ---- accuracy ----------------------------------------------------------------------------------


def test_accuracy_methods_are_exposed_and_validated():
    assert set(ACCURACY_METHODS) == {"default", "exact", "numeric", "mc", "yes_no", "math", "fuzzy"}
    assert check_accuracy_method(None) == "default"
    assert check_accuracy_method("mc") == "mc"
    with pytest.raises(ValueError, match="valid: default, exact"):
        check_accuracy_method("multiple_choice")


def test_unknown_method_at_reward_time_scores_zero_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert accuracy("cat", "cat", "bogus") == 0.0
    assert "bogus" in caplog.text


@pytest.mark.parametrize(
    "method, answer, solution, expected",
    [
        ("exact", "  The  Cat. ", "the cat", 1.0),
        ("exact", "CAFÉ!", "café", 1.0),
        ("exact", "the cat", "a cat", 0.0),
        ("numeric", "There are 3 cats, so 4.0", "4", 1.0),
        ("numeric", "1,000", "1000", 1.0),
        ("numeric", "0.1", "1e-1", 1.0),
        ("numeric", "4", "5", 0.0),
        ("numeric", "no number", "5", 0.0),
        ("mc", "B", "B", 1.0),
        ("mc", "(c)", "C", 1.0),
        ("mc", "B.", "(B) Paris", 1.0),
        ("mc", "Answer: D", "D", 1.0),
        ("mc", "The answer is (A).", "A", 1.0),
        ("mc", "C) red", "B", 0.0),
        ("mc", "nothing", "B", 0.0),
        ("mc", "Bus", "B", 0.0),
        ("mc", "the answer is b.", "B", 1.0),
        ("yes_no", "Yes, it is.", "yes", 1.0),
        ("yes_no", "No. There is no dog.", "<answer>no</answer>", 1.0),
        ("yes_no", "Not sure, yes", "yes", 1.0),  # "not" is not "no"
        ("yes_no", "no", "yes", 0.0),
        ("yes_no", "maybe", "yes", 0.0),
        ("math", "\\frac{1}{2}", "0.5", 1.0),
        ("math", "$\\boxed{\\dfrac{\\sqrt{2}}{2}}$", "\\frac{1}{\\sqrt{2}}", 1.0),
        ("math", "x = 2^{10}", "1024", 1.0),
        ("math", "2\\sqrt{3}", "\\sqrt{12}", 1.0),
        ("math", "\\frac{1}{3}", "0.333", 0.0),
        ("math", "\\sqrt{2}", "1.41421356", 0.0),
        ("math", "the answer is 7", "7", 1.0),  # numeric fallback
        ("math", "9^9^9^9", "1", 0.0),  # refused, not evaluated
        ("fuzzy", "kitten", "sitting", pytest.approx(8 / 13)),  # indel ratio 1 - 5 / 13
        ("fuzzy", "A Red Car", "a red car.", 1.0),
        ("fuzzy", "", "car", 0.0),
        ("default", "Paris.", "paris", 1.0),
        ("default", "3.0", "3", 1.0),
        ("default", "3.5", "3", 0.0),  # both numbers: no partial credit
        ("default", "kitten", "sitting", pytest.approx(8 / 13)),
        (None, "Paris", "paris", 1.0),  # None means default
    ],
)
def test_accuracy_methods(method, answer, solution, expected):
    assert accuracy(answer, solution, method) == expected


def test_accuracy_compares_the_answer_or_the_whole_completion():
    sample = [{"solution": "<answer>blue</answer>", "accu_reward_method": "exact"}]
    reward = get_reward("accuracy")
    assert reward([parse_completion("<think>red</think><answer>blue</answer>")], sample) == [1.0]
    assert reward([parse_completion("blue")], sample) == [1.0]
    assert reward([parse_completion("<think>blue</think><answer>red</answer>")], sample) == [0.0]


def test_accuracy_never_reads_the_reasoning_as_the_answer():
    def numeric(text: str) -> float | None:
        return score("accuracy", text, "42", "numeric")

    assert numeric("<think>so 42</think>") == 0.0  # no answer at all
    assert numeric("<think>so 42</think><answer>") == 0.0  # cut right after the tag
    assert numeric("<think>so 42</think><answer>4") == 0.0  # cut inside the answer
    assert numeric("<think>so 4</think><answer>42") == 1.0  # cut after a whole answer
    assert numeric("so 42") == 1.0  # no tags: the whole text


# ---- the default method: VLM-R1's cascade (issue 20, item 11) ---------------------------------


@pytest.mark.parametrize(
    "answer, solution",
    [
        ("There are 42", "42"),  # vrl scored 0.29, VLM-R1 1.0
        ("B. Paris", "B"),  # 0.22
        ("1/2", "0.5"),  # 0.0
        ("(B)", "B"),  # 0.5
    ],
)
def test_default_scores_the_issue_cases_like_vlm_r1(answer, solution):
    assert accuracy(answer, solution, None) == 1.0
    assert accuracy(answer, solution, "default") == 1.0


CHOICE_ANSWERS = ["B", "(B)", "B.", "B)", "B. Paris", "(B) Paris", "The answer is B", "Answer: (B)"]
CHOICE_ANSWERS_LOWER = ["b", "(b)", "b)", "b) paris", "the answer is b.", "My choice is b"]


@pytest.mark.parametrize("solution", ["B", "(B)", "B.", "B. Paris", "<answer> B </answer>"])
@pytest.mark.parametrize("answer", CHOICE_ANSWERS + CHOICE_ANSWERS_LOWER + ["I think it is B."])
def test_default_reads_the_choice_letter_in_its_usual_spellings(answer, solution):
    assert accuracy(answer, solution, None) == 1.0


@pytest.mark.parametrize(
    "answer, solution, expected",
    [
        ("A", "B", 0.0),
        ("(C)", "B. Paris", 0.0),
        ("C. Paris", "B. Paris", 0.0),  # same text, other letter: fuzzy would say 0.88
        ("Bus", "B", 0.0),  # a capital inside a word is no letter
        ("A cat", "A", 0.0),  # an article
        ("the answer is a dog", "A", 0.0),
        ("I think so", "I", 0.0),  # a pronoun
        ("A or B", "A", 0.0),  # undecided
        ("(A) is wrong, (B) is right", "B", 0.0),
        ("Paris", "B", 0.0),
        ("Paris", "B. Paris", 1.0),  # no letter, but the option's own text
        ("London", "B. Paris", 0.0),
    ],
)
def test_default_choice_letter_negatives(answer, solution, expected):
    assert accuracy(answer, solution, None) == expected


@pytest.mark.parametrize(
    "answer, solution, expected",
    [
        ("0.5", "1/2", 1.0),
        ("\\frac{1}{2}", "0.5", 1.0),
        ("It is 0.5.", "\\frac{1}{2}", 1.0),
        ("The answer is $\\frac{1}{2}$", "0.5", 1.0),
        ("\\boxed{42}", "42", 1.0),
        ("1,000 people", "1000", 1.0),
        ("-3 degrees", "-3", 1.0),
        ("The answer is 42, not 3", "42", 1.0),  # "answer is" names the number
        ("3 cats and 42 dogs", "42", 1.0),  # else the last number, as math-verify reads it
        ("42 cats and 3 dogs", "42", 0.0),  # not any number that happens to match
        ("There are 41", "42", 0.0),  # a wrong number earns no partial credit
        ("43", "42", 0.0),
        ("0.333", "\\frac{1}{3}", 0.0),  # exact, not rounded
        ("1.41421356", "\\sqrt{2}", 0.0),
        ("H2O", "2", 0.0),  # digits inside a word
        ("COVID-19", "19", 0.0),
        ("12/25/2024", "2024", 0.0),  # a date
        ("no number here", "42", 0.0),
    ],
)
def test_default_numbers_fractions_and_a_number_in_a_sentence(answer, solution, expected):
    assert accuracy(answer, solution, None) == expected


def test_default_uses_math_verify_when_installed(monkeypatch):
    calls = []

    def verify(gold, target):
        calls.append((gold, target))
        return True

    fake = types.SimpleNamespace(parse=lambda text: text, verify=verify)
    monkeypatch.setattr(accuracy_module, "_load_math_verify", lambda: fake)
    assert accuracy("pi", "\\pi", None) == 1.0  # the sympy path cannot read \\pi
    assert calls == [("\\pi", "pi")]
    assert accuracy("A", "B", None) == 0.0  # a choice is decided before math
    assert calls == [("\\pi", "pi")]


def test_default_without_math_verify_falls_back_to_sympy_then_fuzzy(monkeypatch):
    monkeypatch.setattr(accuracy_module, "_load_math_verify", lambda: None)
    assert accuracy("pi", "\\pi", None) == pytest.approx(2 * 2 / 5)  # fuzzy "pi" vs "\\pi"
    assert accuracy("1/2", "0.5", None) == 1.0


# ---- detection ---------------------------------------------------------------------------------

CAT = [0, 0, 10, 10]
DOG = [20, 20, 30, 30]
FAR = [100, 100, 110, 110]


def objects(*pairs: tuple[list[float], str | None]) -> str:
    return json.dumps([{"bbox_2d": box, "label": label} for box, label in pairs])


def detect(name: str, predicted: str, truth: str) -> float | None:
    return score(name, f"<think>t</think><answer>{predicted}</answer>", truth)


DETECTION = ("det_ap", "det_ap50", "det_od_length", "det_weighted_sum")


def test_average_precision_single_class():
    assert average_precision([CAT], [CAT], 0.5) == 1.0
    assert average_precision([CAT], [CAT, DOG], 0.5) == pytest.approx(51 / 101)  # recall 0..0.5
    assert average_precision([FAR, CAT], [CAT], 0.5) == pytest.approx(0.5)  # false positive first
    assert average_precision([], [CAT], 0.5) == 0.0


@pytest.mark.parametrize("name", DETECTION)
def test_perfect_detection_scores_one(name):
    truth = objects((CAT, "cat"), (DOG, "dog"))
    assert detect(name, objects((DOG, "Dog "), (CAT, "CAT")), truth) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("det_ap", 51 / 101),
        ("det_ap50", 51 / 101),
        ("det_od_length", 51 / 101),  # fewer boxes than truth: no length penalty
        ("det_weighted_sum", 0.7 * 0.5 + 0.3 * (1 - (0.5 + 0.0) / 2)),
    ],
)
def test_one_of_two_boxes_found(name, expected):
    truth = objects((CAT, "cat"), (DOG, "cat"))
    assert detect(name, objects((CAT, "cat")), truth) == pytest.approx(expected)


def test_one_of_two_classes_found_averages_over_classes():
    truth = objects((CAT, "cat"), (DOG, "dog"))
    assert detect("det_ap", objects((CAT, "cat")), truth) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("det_ap", 1.0),  # the false box is ranked after the hit: precision stays 1
        ("det_ap50", 1.0),
        ("det_od_length", 0.5),  # ... but the extra box halves odLength
        ("det_weighted_sum", 0.7 * 1.0 + 0.3 * (1 - (0.0 + 0.5) / 2)),
    ],
)
def test_an_extra_false_box(name, expected):
    predicted = objects((CAT, "cat"), (FAR, "cat"))
    assert detect(name, predicted, objects((CAT, "cat"))) == pytest.approx(expected)


def test_false_box_ranked_first_lowers_ap():
    predicted = objects((FAR, "cat"), (CAT, "cat"))
    assert detect("det_ap", predicted, objects((CAT, "cat"))) == pytest.approx(0.5)


def test_partial_overlap_counts_only_at_low_thresholds():
    # IoU 0.62 passes the thresholds 0.50, 0.55, 0.60 of ten.
    predicted = objects(([0, 0, 10, 6.2], "cat"))
    assert detect("det_ap", predicted, objects((CAT, "cat"))) == pytest.approx(0.3)
    assert detect("det_ap50", predicted, objects((CAT, "cat"))) == pytest.approx(1.0)
    assert detect("det_weighted_sum", predicted, objects((CAT, "cat"))) == pytest.approx(
        0.7 * 0.62 + 0.3
    )


@pytest.mark.parametrize("name", DETECTION)
def test_label_mismatch_scores_zero(name):
    assert detect(name, objects((CAT, "dog")), objects((CAT, "cat"))) == 0.0


@pytest.mark.parametrize("name", DETECTION)
def test_missing_predicted_label_matches_nothing_when_truth_is_labelled(name):
    assert detect(name, "[0, 0, 10, 10]", objects((CAT, "cat"))) == 0.0


@pytest.mark.parametrize("name", DETECTION)
def test_unlabelled_truth_is_one_class(name):
    assert detect(name, objects((CAT, "anything")), "[[0, 0, 10, 10]]") == pytest.approx(1.0)


@pytest.mark.parametrize("name", DETECTION)
def test_none_cases(name):
    assert detect(name, "None", "None") == 1.0
    assert detect(name, "", "None") == 1.0  # no boxes counts as "none"
    assert detect(name, objects((CAT, "cat")), "None") == 0.0
    assert detect(name, "None", objects((CAT, "cat"))) == 0.0
    assert detect(name, "garbage", objects((CAT, "cat"))) == 0.0
    assert detect(name, objects((CAT, "cat")), "a sunny day") is None  # not a detection sample
