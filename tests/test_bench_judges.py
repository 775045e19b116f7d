"""Judges behind one protocol: tiny real models give per-question values in [0, 1] of the right
shape; the detector rules are checked by hand; the OpenAI client talks to a local HTTP server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch
from PIL import Image

from vrl.bench.judge_openai import OpenAIJudge, parse_yes_no
from vrl.bench.judges import (
    FirstAnswerJudge,
    GeometryJudge,
    VLMJudge,
    build_judge,
    load_detector,
)
from vrl.hicogen.scene import Scene

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
SCENES = [
    Scene.from_json(
        {
            "subjects": [
                {"id": "cup", "name": "cup", "attributes": ["red", "ceramic"]},
                {
                    "id": "box",
                    "name": "box",
                    "attributes": ["blue"],
                    "sub_attributes": ["lid: red"],
                },
            ],
            "relations": [
                {"subject": "cup", "predicate": "left of", "object": "box"},
                {"subject": "cup", "predicate": "on", "object": "box"},
            ],
        }
    ),
    Scene.from_json({"subjects": [{"id": "cat", "name": "cat", "attributes": ["black"]}]}),
]


def images(n=2, size=(48, 40), seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = (torch.rand(size[1], size[0], 3, generator=g) * 255).byte().numpy()
        out.append(Image.fromarray(x))
    return out


def ask(judge, scenes=SCENES):
    questions = [sc.questions() for sc in scenes]
    answers = judge.answer(images(len(scenes)), scenes, questions)
    assert len(answers) == len(scenes)
    for ans, qs in zip(answers, questions, strict=True):
        assert list(ans) == [q.id for q in qs]  # every question, in graph order
    return answers


@pytest.fixture(scope="module")
def vlm_judge():
    # the path the CLI takes (--vlm tiny-random:qwen2_5_vl); the tiny model is cached per session
    return VLMJudge.from_pretrained("tiny-random:qwen2_5_vl", batch_size=4)


@pytest.fixture(scope="module")
def tiny_clip():
    from vrl.rewards.hierarchical_global import CLIPScorer

    torch.manual_seed(0)
    return CLIPScorer.from_config(TINY_CLIP)


def test_vlm_judge_gives_a_probability_per_question(vlm_judge):
    answers = ask(vlm_judge)
    values = [v for ans in answers for v in ans.values()]
    assert len(values) == 8 + 2 and all(isinstance(v, float) and 0.0 < v < 1.0 for v in values)


def test_geometry_judge_on_tiny_owlv2(tiny_clip):
    detector = load_detector("tiny-random:owlv2")
    judge = GeometryJudge.from_detector(detector, threshold=0.0, clip=tiny_clip)
    cup, cat = ask(judge)
    # threshold 0 keeps every box: both subjects exist; colours by CLIP, relations by the rule
    assert cup["cup/exist"] == 1.0 and cup["box/exist"] == 1.0 and cat["cat/exist"] == 1.0
    assert cup["cup/attr/0"] in (0.0, 1.0) and cup["box/attr/0"] in (0.0, 1.0)
    assert cup["rel/0"] in (0.0, 1.0)  # "left of": the GenEval rule
    # a detector cannot tell materials, parts or support
    assert cup["cup/attr/1"] is None and cup["box/sub/0"] is None and cup["rel/1"] is None
    strict = GeometryJudge.from_detector(detector, threshold=1.01)
    cup, cat = ask(strict)
    assert cup["cup/exist"] == 0.0 and cup["rel/0"] == 0.0 and cat["cat/exist"] == 0.0


class StubDetections:
    """Hand-placed boxes by query phrase (every query gets its listed boxes)."""

    def __init__(self, boxes):
        self.boxes = boxes

    def __call__(self, images, queries):
        return [[[(b, 0.9) for b in self.boxes.get(q, [])] for q in qs] for qs in queries]


def geneval_like(include):
    from vrl.bench.geneval import geneval_scene

    return geneval_scene({"prompt": "x", "include": include})


@pytest.mark.parametrize(
    ("dog_box", "holds"),
    [((0, 10, 10, 20), True), ((30, 10, 40, 20), False), ((12, 10, 22, 20), False)],
)
def test_geometry_position_rule_by_hand(dog_box, holds):
    scene = geneval_like(
        [{"class": "cup", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}]
    )
    judge = GeometryJudge(StubDetections({"cup": [(20, 10, 30, 20)], "dog": [dog_box]}))
    (ans,) = judge.answer(images(1), [scene], [scene.questions()])
    # (12..22) vs (20..30): centres 10 apart, shrunk by 0.1 * (10 + 10) = 2 -> 8 / 10 > 0.5? yes
    expected = holds or dog_box == (12, 10, 22, 20)
    assert ans == {"cup/exist": 1.0, "dog/exist": 1.0, "rel/0": float(expected)}


def test_geometry_counts_are_exact_and_a_missing_object_fails_its_relation():
    scene = geneval_like([{"class": "apple", "count": 3}, {"class": "cat", "count": 1}])
    three = [(0, 0, 5, 5), (10, 0, 15, 5), (20, 0, 25, 5)]
    for boxes, expected in ((three, 1.0), (three[:2], 0.0), (three + [(30, 0, 35, 5)], 0.0)):
        judge = GeometryJudge(StubDetections({"apples": boxes, "cat": []}))
        (ans,) = judge.answer(images(1), [scene], [scene.questions()])
        assert ans["apple/exist"] == expected and ans["cat/exist"] == 0.0
    scene = geneval_like(
        [{"class": "cup", "count": 1}, {"class": "dog", "count": 1, "position": ["above", 0]}]
    )
    judge = GeometryJudge(StubDetections({"cup": [(0, 20, 10, 30)]}))
    (ans,) = judge.answer(images(1), [scene], [scene.questions()])
    assert ans == {"cup/exist": 1.0, "dog/exist": 0.0, "rel/0": 0.0}


class ConstantJudge:
    name = "constant"

    def __init__(self, value):
        self.value = value
        self.asked: list[list[str]] = []

    def answer(self, images, scenes, questions):
        self.asked.append([q.id for qs in questions for q in qs])
        return [{q.id: self.value for q in qs} for qs in questions]


def test_first_answer_judge_falls_back_only_where_needed():
    geometry = GeometryJudge(StubDetections({"cup": [(0, 0, 5, 5)], "box": [(20, 0, 30, 10)]}))
    fallback = ConstantJudge(0.7)
    judge = FirstAnswerJudge([geometry, fallback])
    assert judge.name == "geometry+constant"
    cup, cat = ask(judge)
    assert cup["cup/exist"] == 1.0 and cup["rel/0"] == 1.0  # geometry answered these
    assert cup["cup/attr/0"] == cup["rel/1"] == cup["box/sub/0"] == 0.7  # the fallback those
    assert cat["cat/exist"] == 0.0 and cat["cat/attr/0"] == 0.7
    assert "cup/exist" not in fallback.asked[0] and "rel/1" in fallback.asked[0]


def test_build_judge_by_name_and_clear_errors():
    with pytest.raises(ValueError, match="unknown judge 'gpt'"):
        build_judge("gpt")
    with pytest.raises(ValueError, match="--vlm"):
        build_judge("vlm")
    with pytest.raises(ValueError, match="--detector"):
        build_judge("exact+geometry")
    from vrl.bench.judges import JudgeOptions

    judge = build_judge("openai", JudgeOptions(openai_base_url="http://127.0.0.1:9/v1"))
    assert judge.url == "http://127.0.0.1:9/v1/chat/completions"


# ---------------------------------------------------------------------- OpenAI-compatible


class FakeAPI(BaseHTTPRequestHandler):
    """Answers "yes" to odd-numbered questions and "no" to even ones; fails on demand."""

    requests: list[dict] = []
    replies: list[str | int] = []  # queued: a status code to fail with, or a raw content

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeAPI.requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        reply = FakeAPI.replies.pop(0) if FakeAPI.replies else None
        if isinstance(reply, int):
            self.send_response(reply)
            self.end_headers()
            return
        if reply is None:
            text = body["messages"][0]["content"][0]["text"]
            n = sum(1 for line in text.splitlines() if line[:1].isdigit())
            answers = {str(k): "yes" if k % 2 else "no" for k in range(1, n + 1)}
            reply = "Here you go:\n```json\n" + json.dumps(answers) + "\n```"
        data = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_api():
    FakeAPI.requests, FakeAPI.replies = [], []
    server = HTTPServer(("127.0.0.1", 0), FakeAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def test_openai_judge_against_a_local_server(fake_api):
    judge = OpenAIJudge(fake_api, "gpt-4o", api_key="test-key", timeout=10)
    cup, cat = ask(judge)
    ids = [q.id for q in SCENES[0].questions()]
    assert cup == {qid: 1.0 if k % 2 == 0 else 0.0 for k, qid in enumerate(ids)}
    assert cat == {"cat/exist": 1.0, "cat/attr/0": 0.0}
    first = FakeAPI.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer test-key"
    body = first["body"]
    assert body["model"] == "gpt-4o" and body["temperature"] == 0
    text, image = body["messages"][0]["content"]
    assert "1. Is there a cup?" in text["text"] and image["image_url"]["url"].startswith(
        "data:image/png;base64,"
    )
    assert judge.last_errors == [None, None]


def test_openai_judge_retries_then_gives_none(fake_api):
    judge = OpenAIJudge(fake_api, "m", api_key="", timeout=10, max_retries=1)
    FakeAPI.replies = [500]  # one failure, then a good reply
    (ans,) = judge.answer(images(1), SCENES[1:], [SCENES[1].questions()])
    assert ans == {"cat/exist": 1.0, "cat/attr/0": 0.0} and judge.last_errors == [None]
    FakeAPI.replies = ["I cannot see an image.", "still no JSON"]
    (ans,) = judge.answer(images(1), SCENES[1:], [SCENES[1].questions()])
    assert ans == {"cat/exist": None, "cat/attr/0": None} and "ValueError" in judge.last_errors[0]
    assert FakeAPI.requests[-1]["auth"] is None  # no key, no header


def test_parse_yes_no():
    assert [parse_yes_no(v) for v in ("Yes.", "no", True, 0.25, 2, "maybe", None)] == [
        1.0, 0.0, 1.0, 0.25, None, None, None
    ]  # fmt: skip


def test_clip_and_hps_scores_reach_the_summary(tmp_path, tiny_clip):
    from vrl.bench.data import BenchItem
    from vrl.bench.evaluate import evaluate_items
    from vrl.rewards.hierarchical_global import PreferenceScorer

    torch.manual_seed(1)
    hps = PreferenceScorer.from_config(TINY_CLIP)
    items = [
        BenchItem(f"p{i}", f"prompt {i}", sc, tuple(sc.questions()), len(sc.subjects))
        for i, sc in enumerate(SCENES)
    ]
    paths = {}
    for item, image in zip(items, images(2), strict=True):
        paths[item.id] = [tmp_path / f"{item.id}.png"]
        image.save(paths[item.id][0])
    summary = evaluate_items(
        items, paths, ConstantJudge(1.0), tmp_path / "res", clip=tiny_clip, hps=hps, plots=False
    )
    assert 0.0 <= summary["clip_score"] <= 2.5 and -1.0 <= summary["hps"] <= 1.0
    assert summary["dependencies"]["all"] == 1.0
    row = (tmp_path / "res" / "summary.md").read_text().splitlines()[6]
    assert row.startswith("| with dependencies (DSG) | 1.000") and "n/a" not in row
