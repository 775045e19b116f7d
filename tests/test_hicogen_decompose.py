"""Prompt -> Scene: template and structured rules, LLM output recovery with recorded replies,
the tiny Qwen2 loaded through `from_pretrained`, and the OpenAI path with a fake opener."""

import io
import json

import pytest

from vrl.hicogen.decompose import (
    LLMDecomposer,
    decompose_structured,
    decompose_template,
    extract_json_object,
)
from vrl.hicogen.scene import Relation, Scene, SceneValidationError

VALID = {
    "description": "a cat on a sofa",
    "subjects": [
        {"id": "cat", "name": "cat", "attributes": ["orange"]},
        {"id": "sofa", "name": "sofa", "attributes": ["leather"]},
    ],
    "relations": [{"subject": "cat", "predicate": "on", "object": "sofa"}],
}


def subjects(scene: Scene) -> list[tuple]:
    return [(s.name, s.attributes, s.sub_attributes, s.count) for s in scene.subjects]


# ---------------------------------------------------------------- rules


def test_template_outline_relation_background():
    scene = decompose_template(
        "A red circle with a blue outline to the left of a small green square on a white background."
    )
    assert scene is not None
    assert subjects(scene) == [
        ("circle", ("red",), ("outline: blue",), None),
        ("square", ("small", "green"), (), None),
    ]
    assert scene.relations == (Relation("circle", "left of", "square"),)
    assert scene.background == "white"


def test_template_and_joins_unrelated_subjects_and_counts():
    scene = decompose_template("two red circles and a blue star above a yellow triangle")
    assert subjects(scene) == [
        ("circle", ("red",), (), 2),
        ("star", ("blue",), (), None),
        ("triangle", ("yellow",), (), None),
    ]
    assert scene.relations == (Relation("star", "above", "triangle"),)


def test_template_chains_relations_and_dedupes_ids():
    scene = decompose_template(
        "a red square on top of a blue square, a green star inside a black circle"
    )
    assert scene is None  # a bare comma is not a connector: the parse must consume every word
    scene = decompose_template("a red square on top of a blue square next to a green star")
    assert [s.id for s in scene.subjects] == ["square", "square_2", "star"]
    assert scene.relations == (
        Relation("square", "on", "square_2"),
        Relation("square_2", "next to", "star"),
    )
    assert [r.category for r in scene.relations] == ["support", "spatial"]


def test_template_size_relation_and_striped_part():
    scene = decompose_template("a purple hexagon with stripes larger than an orange triangle")
    assert subjects(scene) == [
        ("hexagon", ("purple",), ("stripes",), None),
        ("triangle", ("orange",), (), None),
    ]
    assert scene.relations[0].predicate == "larger than" and scene.relations[0].category == "size"


@pytest.mark.parametrize(
    "text",
    [
        "a cat sleeping on a sofa",
        "red circle",
        "a red circle to the left of",
        "a circle dancing with a square",
        "",
    ],
)
def test_template_returns_none_for_free_text(text):
    assert decompose_template(text) is None


def test_structured_accepts_schema_and_simple_form():
    assert decompose_structured(VALID) == Scene.from_json(VALID)
    scene = decompose_structured(
        {"subjects": ["small red circle", "wooden chair"], "relations": [[0, "to the right of", 1]]}
    )
    assert subjects(scene)[0] == ("circle", ("small", "red"), (), None)
    assert subjects(scene)[1] == ("wooden chair", (), (), None)
    assert scene.relations == (Relation("circle", "right of", "wooden_chair"),)
    with pytest.raises(SceneValidationError, match=r"relations\[0\]\.object"):
        decompose_structured({"subjects": ["cat"], "relations": [["cat", "on", "mat"]]})


# ---------------------------------------------------------------- JSON extraction


def test_extract_json_tolerates_fences_prose_trailing_commas_and_single_quotes():
    assert extract_json_object('Sure!\n```json\n{"a": [1, 2,],}\n```\nDone {x}') == {"a": [1, 2]}
    assert extract_json_object("Here: {'name': 'it\\'s', 'ok': True} bye") == {
        "name": "it's",
        "ok": True,
    }
    assert extract_json_object('{broken} then {"b": "}"}') == {"b": "}"}
    with pytest.raises(ValueError, match="no JSON object"):
        extract_json_object("no braces at all")


# ---------------------------------------------------------------- LLM with recorded replies


class Recorded:
    """A fake generator that replays canned replies and remembers the requests it got."""

    def __init__(self, *replies):
        self.replies = list(replies)
        self.requests: list[str] = []

    def __call__(self, request: str) -> str:
        self.requests.append(request)
        reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
        if isinstance(reply, Exception):
            raise reply
        return reply


def test_llm_valid_json():
    fake = Recorded(json.dumps(VALID))
    result = LLMDecomposer(fake)("a cat on a sofa")
    assert result.source == "llm" and result.attempts == 1 and result.errors == []
    assert result.scene == Scene.from_json(VALID)
    assert "Prompt: a cat on a sofa" in fake.requests[0] and "Example answer" in fake.requests[0]


def test_llm_json_in_fence_with_prose():
    reply = f"Here is the scene graph you asked for:\n```json\n{json.dumps(VALID, indent=2)}\n```\nHope it helps!"
    result = LLMDecomposer(Recorded(reply))("a cat on a sofa")
    assert result.source == "llm" and result.scene.relations == (Relation("cat", "on", "sofa"),)


def test_llm_retry_feeds_the_error_back():
    bad = json.dumps(
        {**VALID, "relations": [{"subject": "cat", "predicate": "on", "object": "rug"}]}
    )
    fake = Recorded("{ this is not json", bad, json.dumps(VALID))
    result = LLMDecomposer(fake, max_retries=2)("a cat on a sofa")
    assert result.source == "llm" and result.attempts == 3
    assert len(result.errors) == 2
    assert result.errors[0].startswith("attempt 1:") and "JSON" in result.errors[0]
    assert "relations[0].object: unknown subject id 'rug'" in result.errors[1]
    assert "relations[0].object: unknown subject id 'rug'" in fake.requests[2]


def test_llm_second_attempt_succeeds():
    result = LLMDecomposer(Recorded("oops", json.dumps(VALID)))("a cat on a sofa")
    assert result.source == "llm" and result.attempts == 2 and len(result.errors) == 1


def test_llm_always_wrong_falls_back_to_template_then_single_subject():
    wrong = json.dumps({"subjects": [{"label": "cat"}]})
    templated = "a red circle above a blue square"
    fake = Recorded(wrong)
    result = LLMDecomposer(fake, max_retries=2)(templated)
    assert result.source == "template" and result.attempts == 3 and len(fake.requests) == 3
    assert all("subjects[0].name" in e for e in result.errors)
    assert result.scene == decompose_template(templated)

    free = "a cozy cabin in a snowy forest at dusk"
    result = LLMDecomposer(Recorded(wrong), max_retries=1)(free)
    assert result.source == "fallback" and result.attempts == 2
    assert len(result.scene.subjects) == 1 and result.scene.subjects[0].name == free
    assert [result.scene.unit_prompt(u) for u in result.scene.default_units()] == [free]


def test_llm_exception_in_generate_fn_never_raises():
    result = LLMDecomposer(Recorded(RuntimeError("CUDA out of memory")), max_retries=0)("a dog")
    assert result.source == "fallback" and result.attempts == 1
    assert result.errors == ["attempt 1: RuntimeError: CUDA out of memory"]


# ---------------------------------------------------------------- real backends, offline


def test_tiny_qwen2_through_from_pretrained(tmp_path):
    from vrl.hicogen.tiny_llm import save_tiny_causal_lm

    folder = save_tiny_causal_lm(tmp_path / "tiny-qwen2")
    decomposer = LLMDecomposer.from_pretrained(folder, max_new_tokens=16, max_retries=1)
    result = decomposer("a green star next to a white heart")
    # an untrained model cannot produce a scene, so the template rules take over
    assert result.source == "template" and result.attempts == 2 and len(result.errors) == 2
    assert [s.name for s in result.scene.subjects] == ["star", "heart"]


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_openai_path_with_fake_opener():
    seen = {}

    def opener(request, timeout):
        seen.update(
            url=request.full_url,
            timeout=timeout,
            body=json.loads(request.data),
            headers=dict(request.headers),
        )
        reply = {
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "content": "```json\n" + json.dumps(VALID) + "\n```",
                    }
                }
            ]
        }
        return FakeResponse(json.dumps(reply).encode())

    decomposer = LLMDecomposer.from_openai(
        "http://localhost:8000/v1/", "qwen", api_key="k", timeout=5, opener=opener
    )
    result = decomposer("a cat on a sofa")
    assert result.source == "llm" and result.scene == Scene.from_json(VALID)
    assert seen["url"] == "http://localhost:8000/v1/chat/completions" and seen["timeout"] == 5
    assert seen["body"]["model"] == "qwen" and seen["body"]["temperature"] == 0
    assert "a cat on a sofa" in seen["body"]["messages"][0]["content"]
    assert seen["headers"]["Authorization"] == "Bearer k"
