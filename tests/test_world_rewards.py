"""The shapes world as rewards (the hierarchical levels) and as VLM-R1 task files."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from vrl.data.vlm_r1 import load_vlm_r1_jsonl
from vrl.hicogen.scene import Relation, Scene, Subject
from vrl.rewards import (
    HierarchicalReward,
    WeightedReward,
    get_reward,
    make_world_reward,
    parse_completion,
    reward_modality,
    world_global,
    world_relation,
    world_shape,
    world_subject,
)
from vrl.world import layout, render
from vrl.world.tasks import TASKS, referring_phrase, write_world_tasks

SCENE = Scene(
    (
        Subject("a", "circle", ("small", "red")),
        Subject("b", "square", ("large", "blue"), ("outline: yellow",)),
    ),
    (Relation("a", "left of", "b"),),
    background="white",
)


def _tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255  # (3, H, W)


def _batch(*images) -> torch.Tensor:
    return torch.stack([_tensor(image) for image in images])  # (B, 3, H, W) in [0, 1]


# ---------------------------------------------------------------------- rewards


def test_world_levels_score_truth_one_and_each_alteration_on_its_own_level():
    boxes = layout(SCENE, 64, 0)
    truth = render(SCENE, 64, boxes=boxes)
    no_square = render(dataclasses.replace(SCENE, subjects=SCENE.subjects[:1], relations=()), 64,
                       boxes=boxes)  # fmt: skip
    green = Subject("a", "circle", ("small", "green"))
    recoloured = render(dataclasses.replace(SCENE, subjects=(green, SCENE.subjects[1])), 64,
                        boxes=boxes)  # fmt: skip
    swapped = {"a": _moved(boxes["a"], boxes["b"]), "b": _moved(boxes["b"], boxes["a"])}
    moved = render(SCENE, 64, boxes=swapped)
    grey = render(dataclasses.replace(SCENE, background="dark grey"), 64, boxes=boxes)
    images = _batch(truth, no_square, recoloured, moved, grey)
    samples = [{"scene": SCENE}, {"scene": SCENE.to_dict()}, {"scene": SCENE.to_json()}] + [
        {"scene": SCENE}
    ] * 2
    assert world_global(images, samples) == [1.0, 0.75, 1.0, 1.0, 0.5]
    # subject level: 2 exist + 5 attribute questions; the missing square takes its 4 with it
    assert world_subject(images, samples) == [1.0, 3 / 7, 6 / 7, 1.0, 1.0]
    assert world_relation(images, samples) == [1.0, 0.0, 1.0, 0.0, 1.0]


def _moved(box, to):
    """``box`` with its centre moved to the centre of ``to`` (keeping its size)."""
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = (to[0] + to[2]) // 2, (to[1] + to[3]) // 2
    return (cx - w // 2, cy - h // 2, cx - w // 2 + w, cy - h // 2 + h)


def test_world_shape_grades_each_subject_blob_by_how_much_it_has_the_asked_shape():
    scene = Scene(
        (
            Subject("a", "circle", ("large", "red")),
            Subject("b", "square", ("large", "blue")),
            Subject("c", "triangle", ("large", "green")),
        ),
        (),
    )
    boxes = layout(scene, 64, 0)
    truth = render(scene, 64, boxes=boxes)
    shapes = {"a": "square", "b": "triangle", "c": "circle"}  # every colour drawn as another shape
    swapped = dataclasses.replace(
        scene, subjects=tuple(dataclasses.replace(s, name=shapes[s.id]) for s in scene.subjects)
    )
    wrong = render(swapped, 64, boxes=boxes)
    two = dataclasses.replace(scene, subjects=scene.subjects[:2])
    missing = render(two, 64, boxes=boxes)
    scores = world_shape(_batch(truth, wrong, missing), [{"scene": scene}] * 3)
    assert scores[0] >= 0.9 and scores[1] <= 0.35, scores
    (of_two,) = world_shape(_batch(missing), [{"scene": two}])
    assert of_two >= 0.9 and scores[2] == pytest.approx(of_two * 2 / 3)  # the triangle's third
    assert get_reward("world_shape") is world_shape and reward_modality("world_shape") == "image"


@pytest.mark.parametrize(
    "fill, taper, shape, expected",
    [
        (1.0, 1.0, "square", 1.0),  # a clean square
        (0.83, 1.0, "square", 0.5),  # half way up the fill ramp
        (1.0, 0.7, "square", 0.5),  # tapering: half a square
        (0.79, 1.0, "circle", 1.0),
        (0.94, 1.0, "circle", 0.0),  # square-full is not round
        (0.55, 0.3, "triangle", 1.0),
        (0.55, 0.65, "triangle", 0.5),
        (0.55, 1.0, "triangle", 0.0),
    ],
)
def test_shape_score_ramps(fill, taper, shape, expected):
    from vrl.rewards.world import shape_score

    assert shape_score(fill, taper, shape) == pytest.approx(expected)


def test_world_relation_is_none_without_relations_and_rewards_are_registered():
    plain = dataclasses.replace(SCENE, relations=())
    images = _batch(render(plain, 32, 0))
    assert world_relation(images, [{"scene": plain}]) == [None]
    for name in ("world", "world_global", "world_subject", "world_relation"):
        assert reward_modality(name) == "image"
    assert get_reward("world_subject") is world_subject
    result = WeightedReward({"world_global": 1.0, "world_relation": 2.0}, modality="image")(
        images, [{"scene": plain}]
    )
    assert result.total.tolist() == [1.0] and math.isnan(
        result.components["world_relation"][0].item()
    )


def test_make_world_reward_sums_the_levels_with_weights():
    reward = make_world_reward({"relation": 2.0})
    assert isinstance(reward, HierarchicalReward)
    images = _batch(render(SCENE, 64, 0), render(SCENE, 64, 0).rotate(180))
    samples = [{"scene": SCENE}] * 2
    parts = reward.breakdown(images, samples)
    assert parts["total"][0] == 1.0 + 1.0 + 2.0
    assert parts["relation"][1] == 0.0  # upside down: the circle is now right of the square
    unit = torch.tensor(parts["global"][1]) + parts["subject"][1] + parts["relation"][1]
    assert get_reward("world")(images, samples) == [
        3.0,
        unit.item(),
    ]  # with unit weights, in float32
    assert list(reward.components()) == ["world_relation", "world_global", "world_subject"]


def test_the_world_reward_object_goes_into_a_run_reward_level_by_level():
    images = _batch(render(SCENE, 64, 0), render(SCENE, 64, 0).rotate(180))
    samples = [{"scene": SCENE}] * 2
    reward = make_world_reward({"global": 0.5, "subject": 1.0, "relation": 1.0})
    run = WeightedReward({"world_shape": 0.5}, modality="image", components=reward.components())
    result = run(images, samples)
    assert list(result.components) == [
        "world_global", "world_subject", "world_relation", "world_shape",
    ]  # fmt: skip
    parts = reward.breakdown(images, samples)
    shape = result.components["world_shape"]
    assert torch.allclose(result.total, torch.tensor(parts["total"]) + 0.5 * shape)
    with pytest.raises(ValueError, match="'world_global' is given twice"):
        WeightedReward({"world_global": 1.0}, components=reward.components())


def test_world_rewards_refuse_bad_input():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        world_global(torch.zeros(3, 32, 32), [{"scene": SCENE}])
    with pytest.raises(KeyError, match="scene"):
        world_global(torch.zeros(1, 3, 32, 32), [{"prompt": "x"}])


# ---------------------------------------------------------------------- tasks

REWARD_OF = {
    "grounding": "rec_iou",
    "counting": "accuracy",
    "colour": "accuracy",
    "relation": "accuracy",
    "detection": "det_ap",
    "refer": "rec_iou",
}


@pytest.mark.parametrize("task", TASKS)
def test_task_files_load_and_their_truth_scores_one(tmp_path, task):
    path = write_world_tasks(tmp_path, task, 12, seed=3, size=112)
    samples = load_vlm_r1_jsonl(path)
    assert len(samples) == 12 and path.name == f"world_{task}_train.jsonl"
    rows = [{"solution": s.solution, "accu_reward_method": s.accu_reward_method} for s in samples]
    truth = [parse_completion(f"<answer>{s.solution}</answer>") for s in samples]
    assert get_reward(REWARD_OF[task])(truth, rows) == [1.0] * 12
    wrong = [parse_completion("<answer>[0, 0, 1, 1] none 99</answer>")] * 12
    assert max(get_reward(REWARD_OF[task])(wrong, rows)) < 1.0
    for sample in samples:
        scene = Scene.from_json(sample.extra["scene"])
        assert sample.extra["task"] == task and sample.images[0].is_file()
        assert sample.extra["split"] == "train" and scene.subjects


def test_task_answers_match_the_images(tmp_path):
    from PIL import Image

    from vrl.world import detect

    path = write_world_tasks(tmp_path, "detection", 6, seed=0, size=112)
    for sample in load_vlm_r1_jsonl(path):
        found = [
            {"bbox_2d": [round(v) for v in d.box], "label": f"{d.size} {d.colour} {d.shape}"}
            for d in detect(Image.open(sample.images[0]))
        ]
        assert found == json.loads(sample.solution)  # the checker reads back the exact truth
    counting = load_vlm_r1_jsonl(write_world_tasks(tmp_path, "counting", 30, seed=0))
    answers = {int(s.solution) for s in counting}
    assert len(answers) >= 3 and 0 in answers  # not a constant answer; "none" happens too
    relation = load_vlm_r1_jsonl(write_world_tasks(tmp_path, "relation", 30, seed=0))
    yes = sum(s.solution == "yes" for s in relation)
    assert 8 <= yes <= 22  # balanced, so "always yes" scores about half


def test_task_files_are_deterministic_and_respect_the_split(tmp_path):
    first = write_world_tasks(tmp_path / "a", "grounding", 5, seed=1, size=64).read_bytes()
    again = write_world_tasks(tmp_path / "b", "grounding", 5, seed=1, size=64).read_bytes()
    assert first == again
    assert (tmp_path / "a/images/world_grounding_train_00004.png").read_bytes() == (
        tmp_path / "b/images/world_grounding_train_00004.png"
    ).read_bytes()
    test = load_vlm_r1_jsonl(write_world_tasks(tmp_path, "colour", 10, seed=1, split="test"))
    from vrl.world import is_held_out

    assert all(is_held_out(Scene.from_json(s.extra["scene"])) for s in test)
    with pytest.raises(ValueError, match="unknown world task"):
        write_world_tasks(tmp_path, "captioning", 1)
    with pytest.raises(ValueError, match="at least 2 subjects"):
        write_world_tasks(tmp_path, "relation", 1, min_subjects=1)


def test_referring_phrases_are_the_shortest_unique_ones():
    scene = Scene(
        (
            Subject("a", "circle", ("small", "red")),
            Subject("b", "circle", ("large", "red")),
            Subject("c", "circle", ("small", "blue")),
            Subject("d", "square", ("small", "blue")),
        )
    )
    assert referring_phrase(scene, "d") == "square"
    assert referring_phrase(scene, "c") == "blue circle"
    assert referring_phrase(scene, "b") == "large circle"
    assert referring_phrase(scene, "a") == "small red circle"
    assert referring_phrase(scene, "a", use_colour=False) is None
