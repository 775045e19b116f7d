"""The shapes world: sampling, held-out split, layout, rendering, and the exact checker.

The checker must be right on every ground-truth render, and an altered image must fail exactly
the level that the alteration touches.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import numpy as np
import pytest
import torch
from PIL import ImageFilter

from vrl.geometry import relation_holds
from vrl.hicogen.scene import Question, QuestionTarget, Relation, Scene, Subject
from vrl.world import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_PAIRS,
    RELATIONS,
    SHAPES,
    SIZES,
    answer_questions,
    caption,
    captions,
    check,
    dependency_scores,
    detect,
    is_held_out,
    layout,
    level_accuracy,
    level_scores,
    off_palette_share,
    render,
    sample_scene,
)
from vrl.world.vocabulary import layout_gap

# (canvas px, min subjects, max subjects, scenes): the three canvases the world is used at
CANVASES = [(32, 1, 3, 40), (64, 1, 6, 20), (128, 4, 12, 12)]


def _scene(seed, size, low, high, **kwargs):
    defaults = dict(sub_attribute_prob=0.3, background="random", split="all", canvas=size)
    return sample_scene(seed, min_subjects=low, max_subjects=high, **{**defaults, **kwargs})


def _all_right(result) -> bool:
    return all(result.correct.values()) and result.background_ok and not result.extras


def _subject(sid, shape, size, colour, outline=None):
    return Subject(sid, shape, (size, colour), (f"outline: {outline}",) if outline else ())


# ---------------------------------------------------------------------- vocabulary


def test_palette_colours_are_far_apart_and_far_from_the_backgrounds():
    objects, grounds = list(COLOURS.values()), list(BACKGROUNDS.values())
    assert min(math.dist(a, b) for a, b in itertools.combinations(objects, 2)) >= 110
    assert min(math.dist(a, b) for a in objects for b in grounds) >= 100
    assert min(math.dist(a, b) for a, b in itertools.combinations(grounds, 2)) >= 70
    assert SHAPES == ("circle", "square", "triangle") and SIZES == ("small", "large")
    assert RELATIONS == ("left of", "right of", "above", "below", "larger than")


# ---------------------------------------------------------------------- sampling


def test_sample_scene_is_deterministic_and_reads_well():
    first = sample_scene(7, max_subjects=3, relation_prob=1.0)
    assert sample_scene(7, max_subjects=3, relation_prob=1.0) == first
    assert sample_scene(random.Random(7), max_subjects=3, relation_prob=1.0) == first
    rng = random.Random(0)
    assert sample_scene(rng) != sample_scene(rng)  # a Random is drawn from, not reseeded
    scene = Scene((_subject("s0", "circle", "small", "red", outline="blue"),))
    assert scene.prompt() == "A small red circle with a blue outline"
    assert [q.text for q in scene.questions()] == [
        "Is there a circle?",
        "Is the circle small?",
        "Is the circle red?",
        "Does the circle have a blue outline?",
    ]


def test_sampled_scenes_are_distinct_consistent_and_in_range():
    for seed in range(150):
        scene = sample_scene(seed, min_subjects=2, max_subjects=6, relation_prob=0.8)
        assert 2 <= len(scene.subjects) <= 6
        descriptions = [(s.name, s.attributes) for s in scene.subjects]
        assert len(set(descriptions)) == len(descriptions)  # every subject has a unique reference
        assert scene.background is None and scene.description == scene.prompt()
        assert len(scene.relations) <= len(scene.subjects) - 1  # a forest: always consistent
        for r in scene.relations:
            assert r.predicate in RELATIONS
            if r.predicate == "larger than":
                assert scene.subject(r.subject).attributes[0] == "large"
                assert scene.subject(r.object).attributes[0] == "small"
    named = sample_scene(0, background="random")
    assert named.background in BACKGROUNDS and "background" in named.prompt()
    assert sample_scene(0, background="dark grey").background == "dark grey"
    outlined = sample_scene(0, sub_attribute_prob=1.0)
    assert all(s.sub_attributes[0].startswith("outline: ") for s in outlined.subjects)


def test_sample_scene_rejects_bad_arguments():
    with pytest.raises(ValueError, match="min_subjects"):
        sample_scene(0, min_subjects=3, max_subjects=2)
    with pytest.raises(ValueError, match="split"):
        sample_scene(0, split="validation")
    with pytest.raises(ValueError, match="background"):
        sample_scene(0, background="plaid")
    with pytest.raises(ValueError, match="exceed"):
        sample_scene(0, max_subjects=13)


def test_held_out_pairs_never_appear_in_train_and_always_in_test():
    def pairs(scene):
        return {(s.attributes[1], s.name) for s in scene.subjects}

    train = [sample_scene(s, max_subjects=6, split="train") for s in range(300)]
    test = [sample_scene(s, max_subjects=6, split="test") for s in range(100)]
    assert not any(pairs(scene) & HELD_OUT_PAIRS for scene in train)
    assert not any(is_held_out(scene) for scene in train)
    assert all(pairs(scene) & HELD_OUT_PAIRS for scene in test)
    seen_in_train = set().union(*(pairs(scene) for scene in train))
    # every colour and every shape is still trained on, only not in the held-out combinations
    assert {c for c, _ in seen_in_train} == set(COLOURS)
    assert {s for _, s in seen_in_train} == set(SHAPES)


# ---------------------------------------------------------------------- layout


@pytest.mark.parametrize("size, low, high, n", CANVASES)
def test_layout_satisfies_every_relation_by_the_geneval_rule(size, low, high, n):
    gap = layout_gap(size)
    for seed in range(n):
        scene = _scene(seed, size, low, high, relation_prob=1.0)
        for layout_seed in (0, 1):
            boxes = layout(scene, size, layout_seed)
            assert list(boxes) == [s.id for s in scene.subjects]
            for r in scene.relations:
                assert relation_holds(boxes[r.subject], boxes[r.object], r.predicate), (seed, r)
            for x1, y1, x2, y2 in boxes.values():
                assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
            for a, b in itertools.combinations(boxes.values(), 2):
                assert (
                    a[2] + gap <= b[0]
                    or b[2] + gap <= a[0]
                    or a[3] + gap <= b[1]
                    or b[3] + gap <= a[1]
                ), "shapes overlap or touch"


def test_layout_is_deterministic_by_seed_and_varies_between_seeds_and_scenes():
    scene = sample_scene(3, min_subjects=3, max_subjects=3)
    assert layout(scene, 64, 5) == layout(scene, 64, 5)
    assert layout(scene, 64, 5) != layout(scene, 64, 6)
    other = sample_scene(4, min_subjects=3, max_subjects=3)
    firsts = {layout(sample_scene(s), 64, 0)["s0"] for s in range(10)}
    assert len(firsts) > 5, "seed 0 must not put every scene's first shape in the same place"
    assert layout(scene, 64, 0) != layout(other, 64, 0)


def test_sizes_at_32_px_are_the_measured_ones():
    sides = {"small": set(), "large": set()}
    for seed in range(30):
        scene = sample_scene(seed, max_subjects=3)
        for s in scene.subjects:
            x1, _, x2, _ = layout(scene, 32, 0)[s.id]
            sides[s.attributes[0]].add(x2 - x1)
    assert sides["small"] <= {7, 8, 9} and sides["large"] <= {12, 13, 14}


def test_layout_fails_clearly_when_impossible():
    four_large = tuple(_subject(f"s{i}", "square", "large", "red") for i in range(4))
    chain = tuple(Relation(f"s{i}", "left of", f"s{i + 1}") for i in range(3))
    with pytest.raises(ValueError, match="cannot place 4 shapes"):
        layout(Scene(four_large, chain), 32)
    pair = (_subject("a", "circle", "small", "red"), _subject("b", "square", "large", "blue"))
    cycle = (Relation("a", "left of", "b"), Relation("b", "left of", "a"))
    with pytest.raises(ValueError, match="contradict"):
        layout(Scene(pair, cycle), 64)
    with pytest.raises(ValueError, match="size relations"):
        layout(Scene(pair, (Relation("a", "larger than", "b"),)), 64)
    with pytest.raises(ValueError, match="predicate 'on'"):
        layout(Scene(pair, (Relation("a", "on", "b"),)), 64)
    with pytest.raises(ValueError, match="'pink'"):
        layout(Scene((Subject("a", "circle", ("pink",)),)), 64)
    with pytest.raises(ValueError, match="hexagon"):
        layout(Scene((Subject("a", "hexagon", ("red",)),)), 64)
    with pytest.raises(ValueError, match="count"):
        layout(Scene((Subject("a", "circle", ("red",), count=3),)), 64)
    with pytest.raises(ValueError, match="background"):
        layout(Scene(pair, background="plaid"), 64)


# ---------------------------------------------------------------------- render -> check


@pytest.mark.parametrize("size, low, high, n", CANVASES)
def test_every_question_is_right_on_ground_truth_renders(size, low, high, n):
    for seed in range(n):
        scene = _scene(seed, size, low, high)
        boxes = layout(scene, size, seed)
        image = render(scene, size, seed)
        assert image.size == (size, size) and image.mode == "RGB"
        result = check(scene, image)
        assert _all_right(result), (seed, scene.prompt(), result.answers, result.detections)
        assert level_accuracy(scene, image)["exist"] == 1.0
        for sid, detection in result.assignment.items():
            assert detection.box == boxes[sid]  # flat shapes fill their boxes exactly
        assert result.global_score == 1.0


def test_detections_on_a_hand_made_scene():
    scene = Scene(
        (
            _subject("a", "circle", "small", "red"),
            _subject("b", "square", "large", "blue", outline="yellow"),
            _subject("c", "triangle", "large", "green"),
        ),
        background="white",
    )
    found = {(d.shape, d.size, d.colour, d.outline) for d in detect(render(scene, 64, 1))}
    assert found == {
        ("circle", "small", "red", None),
        ("square", "large", "blue", "yellow"),
        ("triangle", "large", "green", None),
    }


def test_checker_accepts_pil_numpy_and_tensor_images():
    scene = _scene(11, 64, 3, 3, relation_prob=1.0)
    image = render(scene, 64, 0)
    array = np.array(image)  # (H, W, 3) uint8
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255  # (3, H, W) in [0, 1]
    expected = answer_questions(scene, image)
    assert all(expected.values())
    assert answer_questions(scene, array) == expected
    assert answer_questions(scene, array.astype(np.float32) / 255) == expected
    assert answer_questions(scene, tensor) == expected
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        answer_questions(scene, tensor[None])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        answer_questions(scene, array[..., 0])


def test_checker_survives_mild_noise_and_blur():
    for size, low, high, n in CANVASES:
        for seed in range(n // 2):
            scene = _scene(seed, size, low, high)
            image = render(scene, size, seed).filter(ImageFilter.GaussianBlur(0.6))
            noise = np.random.default_rng(seed).normal(0, 8, (size, size, 3))
            noisy = np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8)
            assert _all_right(check(scene, noisy)), (size, seed, scene.prompt())


def test_checker_ignores_specks_of_noise():
    scene = _scene(5, 64, 2, 2)
    array = np.asarray(render(scene, 64, 0)).copy()
    background = tuple(array[0, 0])
    free = [
        (y, x) for y in range(0, 64, 7) for x in range(0, 64, 7) if tuple(array[y, x]) == background
    ]
    for y, x in free[:5]:
        array[y, x] = COLOURS["red"]  # single stray pixels
    assert _all_right(check(scene, array))


def test_off_palette_share_is_zero_on_renders_and_rises_with_texture():
    scene = _scene(3, 32, 2, 2)
    clean = np.asarray(render(scene, 32, 0))
    assert off_palette_share(clean) == 0.0
    rng = np.random.default_rng(0)
    # the noise-textured images of a collapsed policy: every pixel pushed off its flat colour
    textured = np.clip(clean + rng.normal(0, 60, clean.shape), 0, 255).astype(np.uint8)
    mild = np.clip(clean + rng.normal(0, 8, clean.shape), 0, 255).astype(np.uint8)
    assert off_palette_share(mild) < 0.01
    assert off_palette_share(textured) > 0.15
    # the same figure whatever the image type
    as_tensor = torch.from_numpy(textured).permute(2, 0, 1).float() / 255
    assert off_palette_share(as_tensor) == off_palette_share(textured)


# ---------------------------------------------------------------------- altered images


def _scene_with_relations(seed: int, predicates: set[str], size: int = 64) -> Scene:
    """A sampled scene with at least one relation among ``predicates``."""
    for s in itertools.count(seed):
        scene = _scene(s, size, 2, 5, relation_prob=1.0, sub_attribute_prob=0.0)
        if any(r.predicate in predicates for r in scene.relations):
            return scene
    raise AssertionError("unreachable")


def test_removed_subject_fails_its_existence_and_everything_that_depends_on_it():
    for seed in range(8):
        scene = _scene_with_relations(seed, set(RELATIONS))
        removed = scene.relations[0].subject
        boxes = layout(scene, 64, seed)
        kept = tuple(s for s in scene.subjects if s.id != removed)
        altered = render(dataclasses.replace(scene, subjects=kept, relations=()), 64, boxes=boxes)
        result = check(scene, altered)
        for q in scene.questions():
            touches = removed in q.target.subjects
            assert result.correct[q.id] is (not touches), (seed, q.text)
        assert not result.answers[f"{removed}/exist"]
        assert result.object_score < 1.0 and result.background_ok


def test_recoloured_subject_fails_its_colour_question_but_still_exists():
    checked = 0
    for seed in range(8):
        scene = _scene(seed, 64, 1, 4, sub_attribute_prob=0.0)
        names = [s.name for s in scene.subjects]
        target = next((s for s in scene.subjects if names.count(s.name) == 1), None)
        if target is None:
            continue
        size, colour = target.attributes
        new = next(c for c in COLOURS if c != colour and (c, target.name) not in HELD_OUT_PAIRS)
        recoloured = dataclasses.replace(target, attributes=(size, new))
        subjects = tuple(recoloured if s.id == target.id else s for s in scene.subjects)
        boxes = layout(scene, 64, seed)
        altered = render(dataclasses.replace(scene, subjects=subjects), 64, boxes=boxes)
        result = check(scene, altered)
        wrong = {q.id for q in scene.questions() if not result.correct[q.id]}
        assert wrong == {f"{target.id}/attr/1"}, (seed, scene.prompt(), wrong)
        levels = level_accuracy(scene, altered)
        assert levels["exist"] == 1.0 and levels["attribute"] < 1.0
        checked += 1
    assert checked >= 6


def test_mirrored_layout_breaks_left_right_relations_only():
    for seed in range(8):
        scene = _scene_with_relations(seed, {"left of", "right of"})
        boxes = layout(scene, 64, seed)
        mirrored = {sid: (64 - x2, y1, 64 - x1, y2) for sid, (x1, y1, x2, y2) in boxes.items()}
        result = check(scene, render(scene, 64, boxes=mirrored))
        for q in scene.questions():
            flips = q.level == "relation" and q.target.predicate in ("left of", "right of")
            assert result.correct[q.id] is (not flips), (seed, q.text)
        levels = level_accuracy(scene, render(scene, 64, boxes=mirrored))
        assert levels["exist"] == 1.0 and levels["attribute"] in (1.0, None)  # None: all named
        assert levels["relation"] < 1.0


def test_changed_background_fails_the_global_part_only():
    scene = _scene(2, 64, 2, 4, background="light grey")
    boxes = layout(scene, 64, 0)
    altered = render(dataclasses.replace(scene, background="light blue"), 64, boxes=boxes)
    result = check(scene, altered)
    assert result.background == "light blue" and not result.background_ok
    assert all(result.correct.values()) and result.global_score == 0.5


def test_extra_shape_lowers_the_object_score_only():
    scene = Scene((_subject("a", "circle", "small", "red"),))
    extra = Scene((*scene.subjects, _subject("b", "square", "small", "blue")))
    boxes = layout(extra, 64, 0)
    result = check(scene, render(extra, 64, boxes=boxes))
    assert all(result.correct.values()) and len(result.extras) == 1
    assert result.object_score == 0.5 and result.global_score == 0.75


def test_shared_names_need_the_attributes_to_exist():
    # two circles: "Is there a small red circle?" is only yes for a small red one
    scene = Scene(
        (_subject("a", "circle", "small", "red"), _subject("b", "circle", "large", "blue")),
        (Relation("a", "left of", "b"),),
    )
    boxes = layout(scene, 64, 0)
    swapped = dataclasses.replace(
        scene, subjects=(_subject("a", "circle", "small", "green"), scene.subjects[1])
    )
    result = check(scene, render(swapped, 64, boxes=boxes))
    # the references name size and colour, so no attribute question repeats them
    assert result.correct == {"a/exist": False, "b/exist": True, "rel/0": False}
    assert len(result.extras) == 1  # the green circle is nobody


# ---------------------------------------------------------------------- DSG scoring


def test_dependency_scores_count_children_of_a_failed_parent_wrong():
    target = QuestionTarget(("a",))
    questions = [
        Question("a/exist", "", "exist", (), target),
        Question("a/attr/0", "", "attribute", ("a/exist",), target),
        Question("b/exist", "", "exist", (), target),
        Question("rel/0", "", "relation", ("a/exist", "b/exist"), target),
    ]
    answers = {"a/exist": False, "a/attr/0": True, "b/exist": True, "rel/0": True}
    correct = dependency_scores(questions, answers)
    assert correct == {"a/exist": False, "a/attr/0": False, "b/exist": True, "rel/0": False}
    assert level_scores(questions, correct) == {"exist": 0.5, "attribute": 0.0, "relation": 0.0}
    assert level_scores(questions, answers) == {"exist": 0.5, "attribute": 1.0, "relation": 1.0}
    assert level_scores(questions[:2], correct)["relation"] is None


def test_level_accuracy_is_none_for_a_level_without_questions():
    scene = Scene((_subject("a", "circle", "small", "red"),))
    image = render(scene, 32)
    assert level_accuracy(scene, image) == {"exist": 1.0, "attribute": 1.0, "relation": None}
    blank = render(Scene(scene.subjects, background="white"), 32, boxes={"a": (0, 0, 0, 0)})
    assert level_accuracy(scene, blank) == {"exist": 0.0, "attribute": 0.0, "relation": None}
    assert level_accuracy(scene, blank, dependencies=False)["attribute"] == 0.0


# ---------------------------------------------------------------------- captions


def test_captions_phrase_the_same_scene_several_ways():
    scene = Scene(
        (_subject("a", "circle", "small", "red"), _subject("b", "square", "large", "blue")),
        (Relation("a", "left of", "b"),),
        background="white",
    )
    texts = captions(scene)
    assert (
        texts[0]
        == scene.prompt()
        == ("A small red circle to the left of a large blue square on a white background")
    )
    assert "A large blue square to the right of a small red circle on a white background" in texts
    assert len(texts) == len(set(texts)) >= 4
    for text in texts:
        assert "small red circle" in text and "large blue square" in text and "white" in text
    assert caption(scene, 3) == caption(scene, random.Random(3)) and caption(scene, 3) in texts
    single = Scene((_subject("a", "triangle", "large", "green"),))
    assert captions(single)[0] == "A large green triangle" and len(captions(single)) >= 2
