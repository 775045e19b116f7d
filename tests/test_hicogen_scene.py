"""Scene schema: exact JSON round-trip, path-naming validation errors, rendering and DSG questions."""

import json

import pytest

from vrl.hicogen.scene import (
    Relation,
    Scene,
    SceneValidationError,
    SynthesisUnit,
    predicate_category,
)


def three_subject_scene_json() -> dict:
    return {
        "description": "a wooden table with two red apples on it and a cat left of the table",
        "background": "white",
        "style": "watercolor",
        "subjects": [
            {
                "id": "table",
                "name": "table",
                "attributes": ["wooden", "large"],
                "sub_attributes": ["legs: metal"],
            },
            {
                "id": "apple",
                "name": "apple",
                "attributes": ["red"],
                "sub_attributes": {"stem": "green"},
                "count": 2,
            },
            {"id": "cat", "name": "cat", "attributes": ["black"], "sub_attributes": ["stripes"]},
        ],
        "relations": [
            {"subject": "apple", "predicate": "On top of", "object": "table"},
            {"subject": 2, "predicate": "to the left of", "object": "table"},
            {"subject": "cat", "predicate": "staring at", "object": "apple"},
        ],
        "units": [
            {"subjects": ["table"], "prompt": "a large wooden table"},
            {"subjects": ["apple", "cat"]},
        ],
    }


def test_round_trip_is_exact_and_inputs_are_normalised():
    scene = Scene.from_json(three_subject_scene_json())
    assert Scene.from_json(scene.to_json()) == scene
    assert Scene.from_json(json.loads(scene.to_json(indent=2))) == scene
    # normalisation happened once, on the way in
    assert scene.subject("apple").sub_attributes == ("stem: green",)
    assert scene.subject("apple").count == 2
    assert scene.relations[0] == Relation("apple", "on", "table")
    assert scene.relations[1] == Relation("cat", "left of", "table")  # index 2 resolved to the id
    assert [r.category for r in scene.relations] == ["support", "spatial", "other"]
    assert scene.units[1] == SynthesisUnit(("apple", "cat"), "")


def test_ids_default_to_unique_slugs_and_default_units_follow_subject_order():
    scene = Scene.from_json(
        {"subjects": [{"name": "Red Car"}, {"name": "red car"}, {"name": "tree"}]}
    )
    assert [s.id for s in scene.subjects] == ["red_car", "red_car_2", "tree"]
    assert scene.units == ()
    assert [u.subjects for u in scene.default_units()] == [("red_car",), ("red_car_2",), ("tree",)]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["subjects"][2].pop("name"), "subjects[2].name: expected a non-empty string"),
        (
            lambda d: d["relations"][0].update(object="cup"),
            "relations[0].object: unknown subject id 'cup'",
        ),
        (
            lambda d: d["subjects"][0].update(attributes="wooden"),
            "subjects[0].attributes: expected a list",
        ),
        (
            lambda d: d["subjects"][1].update(count="two"),
            "subjects[1].count: expected a positive integer",
        ),
        (
            lambda d: d["relations"][1].update(predicate=3),
            "relations[1].predicate: expected a non-empty string",
        ),
        (
            lambda d: d["units"][1].update(subjects=["apple", "dog"]),
            "units[1].subjects[1]: unknown subject id 'dog'",
        ),
        (
            lambda d: d["units"][1].update(subjects="apple"),
            "units[1].subjects: expected a non-empty list",
        ),
        (
            lambda d: d["units"][1].update(subjects=["table"]),
            "units[1].subjects[0]: subject 'table' is already introduced",
        ),
        (
            lambda d: d["subjects"][1].update(id="table"),
            "subjects[1].id: duplicate subject id 'table'",
        ),
        (lambda d: d.update(subjects=[]), "subjects: expected a non-empty list"),
        (lambda d: d.update(background=5), "background: expected a string or null"),
    ],
)
def test_validation_errors_name_the_field_path(mutate, expected):
    data = three_subject_scene_json()
    mutate(data)
    with pytest.raises(SceneValidationError) as info:
        Scene.from_json(data)
    assert any(e.startswith(expected) for e in info.value.errors), info.value.errors


def test_validation_collects_every_error_and_rejects_non_objects():
    data = three_subject_scene_json()
    data["subjects"][0]["name"] = ""
    data["relations"][0]["subject"] = 9
    with pytest.raises(SceneValidationError) as info:
        Scene.from_json(data)
    assert len(info.value.errors) == 2
    assert "relations[0].subject: subject index 9 out of range" in str(info.value)
    for bad in ("[1, 2]", "{not json", 42):
        with pytest.raises(SceneValidationError, match="<root>"):
            Scene.from_json(bad)


def test_predicate_vocabulary():
    assert predicate_category("Left of") == "spatial"
    assert predicate_category("bigger than") == "size"
    assert predicate_category("inside") == "support"
    assert predicate_category("dancing with") == "other"


def example_scene() -> Scene:
    return Scene.from_json(
        {
            "background": "white",
            "subjects": [
                {
                    "id": "c",
                    "name": "circle",
                    "attributes": ["red"],
                    "sub_attributes": ["outline: blue"],
                },
                {"id": "s", "name": "square", "attributes": ["small", "green"]},
                {"id": "t", "name": "triangle", "count": 3},
            ],
            "relations": [{"subject": "c", "predicate": "left of", "object": "s"}],
        }
    )


def test_prompt_rendering():
    scene = example_scene()
    assert scene.prompt() == (
        "A red circle with a blue outline to the left of a small green square and three triangles"
        " on a white background"
    )
    units = scene.default_units()
    # every unit keeps the scene's background: the canvas each pass draws on
    assert scene.unit_prompt(units[1]) == "A small green square on a white background"
    assert scene.unit_prompt(units[1], "cumulative") == (
        "A red circle with a blue outline to the left of a small green square on a white background"
    )
    # relational: the new subject first, placed against the earlier one named by reference
    assert scene.unit_prompt(units[1], "relational") == (
        "A small green square to the right of the red circle on a white background"
    )
    assert scene.unit_prompt(units[0], "relational") == scene.unit_prompt(units[0])
    with pytest.raises(ValueError, match="unit prompt form must be one of"):
        scene.unit_prompt(units[1], "told")
    plain = Scene(scene.subjects, scene.relations)
    assert plain.unit_prompt(plain.default_units()[1]) == "A small green square"
    explicit = SynthesisUnit(("c",), "a crimson disc")
    assert scene.unit_prompt(explicit) == "a crimson disc"


def test_questions_levels_parents_and_targets():
    scene = example_scene()
    questions = {q.id: q for q in scene.questions()}
    levels = [q.level for q in scene.questions()]
    assert (
        levels.count("exist") == 3
        and levels.count("attribute") == 4
        and levels.count("relation") == 1
    )

    exist_c = questions["c/exist"]
    assert exist_c.text == "Is there a circle?" and exist_c.parents == ()
    assert questions["t/exist"].text == "Are there three triangles?"
    assert questions["t/exist"].target.count == 3

    red = questions["c/attr/0"]
    assert red.text == "Is the circle red?" and red.parents == ("c/exist",)
    assert red.target.subjects == ("c",) and red.target.attribute == "red"
    outline = questions["c/sub/0"]
    assert outline.text == "Does the circle have a blue outline?" and outline.parents == (
        "c/exist",
    )
    assert all(questions[q].parents == ("s/exist",) for q in ("s/attr/0", "s/attr/1"))

    rel = questions["rel/0"]
    assert rel.text == "Is the circle to the left of the square?"
    assert rel.parents == ("c/exist", "s/exist")
    assert rel.target.subjects == ("c", "s") and rel.target.predicate == "left of"
    # every parent id exists
    assert all(p in questions for q in questions.values() for p in q.parents)


def test_questions_disambiguate_subjects_that_share_a_name():
    scene = Scene.from_json(
        {
            "subjects": [
                {"name": "circle", "attributes": ["red"]},
                {"name": "circle", "attributes": ["blue"]},
            ],
            "relations": [{"subject": 0, "predicate": "above", "object": 1}],
        }
    )
    texts = [q.text for q in scene.questions()]
    assert "Is there a red circle?" in texts and "Is there a blue circle?" in texts
    assert "Is the red circle above the blue circle?" in texts
