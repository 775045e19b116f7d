"""DSG scoring, checked by hand: a failed parent zeroes its children, which stay counted."""

from __future__ import annotations

import pytest

from vrl.bench.scoring import mean_accuracy, score_questions
from vrl.hicogen.scene import Question, QuestionTarget, Scene

SCENE = Scene.from_json(
    {
        "subjects": [
            {"id": "cup", "name": "cup", "attributes": ["red", "ceramic"]},
            {"id": "table", "name": "table", "attributes": ["wooden"]},
        ],
        "relations": [{"subject": "cup", "predicate": "on", "object": "table"}],
    }
)
QUESTIONS = SCENE.questions()
# cup exists, is red, is not ceramic; the table is missing, though "wooden" and "on" say yes
ANSWERS = {
    "cup/exist": 0.9,
    "cup/attr/0": 0.8,
    "cup/attr/1": 0.2,
    "table/exist": 0.1,
    "table/attr/0": 0.7,
    "rel/0": 0.6,
}


def test_the_question_graph_used_here():
    assert [(q.id, q.level, q.parents) for q in QUESTIONS] == [
        ("cup/exist", "exist", ()),
        ("cup/attr/0", "attribute", ("cup/exist",)),
        ("cup/attr/1", "attribute", ("cup/exist",)),
        ("table/exist", "exist", ()),
        ("table/attr/0", "attribute", ("table/exist",)),
        ("rel/0", "relation", ("cup/exist", "table/exist")),
    ]


def test_dependencies_zero_the_children_of_a_failed_parent():
    s = score_questions(QUESTIONS, ANSWERS)
    assert s.correct == {
        "cup/exist": 1.0,
        "cup/attr/0": 1.0,
        "cup/attr/1": 0.0,
        "table/exist": 0.0,
        "table/attr/0": 0.0,  # said yes, but the table is not there
        "rel/0": 0.0,  # likewise
    }
    assert s.accuracy == pytest.approx(
        {"exist": 1 / 2, "attribute": 1 / 3, "relation": 0.0, "all": 2 / 6}
    )
    # soft: each correct question is worth its probability; gated ones 0
    assert s.soft == pytest.approx(
        {"exist": (0.9 + 0.1) / 2, "attribute": (0.8 + 0.2 + 0) / 3, "relation": 0.0,
         "all": (0.9 + 0.8 + 0.2 + 0.1) / 6}
    )  # fmt: skip


def test_without_dependencies_every_question_stands_alone():
    s = score_questions(QUESTIONS, ANSWERS, dependencies=False)
    assert s.accuracy == pytest.approx(
        {"exist": 1 / 2, "attribute": 2 / 3, "relation": 1.0, "all": 4 / 6}
    )


def test_unjudged_questions_leave_the_denominator_and_do_not_gate():
    answers = {**ANSWERS, "table/exist": None, "cup/attr/1": None}
    s = score_questions(QUESTIONS, answers)
    assert s.correct["table/exist"] is None and s.correct["cup/attr/1"] is None
    assert s.correct["table/attr/0"] == 1.0 and s.correct["rel/0"] == 1.0
    assert s.accuracy == pytest.approx(
        {"exist": 1.0, "attribute": 1.0, "relation": 1.0, "all": 1.0}
    )
    empty = score_questions(QUESTIONS, {})
    assert empty.accuracy == {"exist": None, "attribute": None, "relation": None, "all": None}


def test_failure_propagates_through_grandparents_and_threshold_is_inclusive():
    t = QuestionTarget(subjects=("a",))
    chain = [
        Question("a", "a?", "exist", (), t),
        Question("b", "b?", "attribute", ("a",), t),
        Question("c", "c?", "relation", ("b",), t),
    ]
    s = score_questions(chain, {"a": 0.5, "b": 0.49, "c": 1.0})
    assert s.correct == {"a": 1.0, "b": 0.0, "c": 0.0}
    s = score_questions(chain, {"a": 0.0, "b": None, "c": 1.0})
    assert s.correct == {"a": 0.0, "b": None, "c": 0.0}  # a's failure reaches c through b
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        score_questions(chain, {"a": 1.5})


def test_mean_accuracy_skips_missing_levels():
    rows = [
        {"exist": 1.0, "attribute": 0.0, "relation": None, "all": 0.5},
        {"exist": 0.0, "attribute": None, "relation": None, "all": 0.0},
    ]
    assert mean_accuracy(rows) == {"exist": 0.5, "attribute": 0.0, "relation": None, "all": 0.25}
