"""The exact judge on shapes-world renders: ground truth scores 1.0 on every level; removing,
recolouring or moving one subject drops the right level and zeroes that subject's children."""

from __future__ import annotations

import dataclasses
import json

import pytest

import vrl.world as world
from vrl.bench.build import build_hicoprompt
from vrl.bench.data import load_items
from vrl.bench.judges import ExactJudge
from vrl.bench.scoring import score_questions
from vrl.geometry import position_relations
from vrl.hicogen.scene import Scene, Subject

SCENE = Scene.from_json(
    {
        "subjects": [
            {"id": "circle", "name": "circle", "attributes": ["small", "red"]},
            {"id": "square", "name": "square", "attributes": ["large", "blue"],
             "sub_attributes": ["outline: yellow"]},
            {"id": "triangle", "name": "triangle", "attributes": ["large", "green"]},
        ],
        "relations": [
            {"subject": "circle", "predicate": "left of", "object": "square"},
            {"subject": "triangle", "predicate": "larger than", "object": "circle"},
        ],
    }
)  # fmt: skip
SIZE = 64


def judge_one(scene, image, truth=SCENE):
    """Ask about `truth` on an image drawn from `scene`; returns (answers, dependency scores)."""
    questions = truth.questions()
    (answers,) = ExactJudge().answer([image], [truth], [questions])
    return answers, score_questions(questions, answers)


def test_ground_truth_scores_one_on_every_level():
    answers, scored = judge_one(SCENE, world.render(SCENE, SIZE, seed=0))
    assert all(v == 1.0 for v in answers.values()) and len(answers) == 12
    assert scored.accuracy == {"exist": 1.0, "attribute": 1.0, "relation": 1.0, "all": 1.0}


def test_removed_subject_fails_existence_and_zeroes_its_children():
    boxes = world.layout(SCENE, SIZE, seed=0)
    without = Scene(
        subjects=tuple(s for s in SCENE.subjects if s.id != "circle"), background=SCENE.background
    )
    image = world.render(without, SIZE, boxes={k: v for k, v in boxes.items() if k != "circle"})
    answers, scored = judge_one(without, image)
    zeroed = {"circle/exist", "circle/attr/0", "circle/attr/1", "rel/0", "rel/1"}
    assert {q for q, c in scored.correct.items() if c == 0.0} == zeroed
    assert scored.accuracy == pytest.approx(
        {"exist": 2 / 3, "attribute": 5 / 7, "relation": 0.0, "all": 7 / 12}
    )


def test_recoloured_subject_fails_only_its_colour():
    recoloured = dataclasses.replace(
        SCENE,
        subjects=tuple(
            Subject(s.id, s.name, ("large", "purple"), s.sub_attributes) if s.id == "square" else s
            for s in SCENE.subjects
        ),
    )
    image = world.render(recoloured, SIZE, boxes=world.layout(SCENE, SIZE, seed=0))
    _, scored = judge_one(recoloured, image)
    assert [q for q, c in scored.correct.items() if c == 0.0] == ["square/attr/1"]
    assert scored.accuracy["attribute"] == pytest.approx(6 / 7)
    assert scored.accuracy["exist"] == scored.accuracy["relation"] == 1.0


def test_moved_subject_fails_only_its_relation():
    boxes = world.layout(SCENE, SIZE, seed=0)
    moved = dict(boxes)
    moved["circle"] = free_box_right_of(boxes, "circle", "square")
    image = world.render(SCENE, SIZE, boxes=moved)
    _, scored = judge_one(SCENE, image)
    assert [q for q, c in scored.correct.items() if c == 0.0] == ["rel/0"]
    assert scored.accuracy == pytest.approx(
        {"exist": 1.0, "attribute": 1.0, "relation": 0.5, "all": 11 / 12}
    )


def free_box_right_of(boxes, sid, target, gap=3):
    """A place for `sid`'s box (same size) clear of the others where it is not left of `target`."""
    x1, y1, x2, y2 = boxes[sid]
    w, h = x2 - x1, y2 - y1
    others = [b for k, b in boxes.items() if k != sid]
    for top in range(1, SIZE - int(h)):
        for left in range(SIZE - int(w) - 1, 0, -1):
            box = (left, top, left + w, top + h)
            clear = all(
                box[2] + gap <= o[0]
                or o[2] + gap <= box[0]
                or box[3] + gap <= o[1]
                or o[3] + gap <= box[1]
                for o in others
            )
            if clear and "left of" not in position_relations(box, boxes[target]):
                return box
    raise AssertionError("no free place")


def test_world_vocabulary_benchmark_renders_score_one(tmp_path):
    splits = {"test": (18, 4, 12), "test_1-3": (9, 1, 3)}
    build_hicoprompt(tmp_path, seed=3, vocab="world", splits=splits, workers=1)
    items = load_items(tmp_path / "world" / "test.jsonl") + load_items(
        tmp_path / "world" / "test_1-3.jsonl"
    )
    assert sorted({it.subject_count for it in items}) == list(range(1, 13))
    judge = ExactJudge()
    for item in items:
        assert world.is_held_out(item.scene)  # test prompts use the held-out pairs
        image = world.render(item.scene, world.canvas_for(item.subject_count), seed=1)
        (answers,) = judge.answer([image], [item.scene], [list(item.questions)])
        assert set(answers) == {q.id for q in item.questions}
        scored = score_questions(item.questions, answers)
        assert all(v in (1.0, None) for v in scored.accuracy.values()), item.id
    lines = [json.loads(x) for x in (tmp_path / "world" / "test.jsonl").read_text().splitlines()]
    assert all(d["scene"]["background"] for d in lines)  # the global scene: a named background
