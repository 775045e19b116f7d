"""GroundingDINO beside OWLv2 behind one detector interface, on a tiny random GroundingDINO built
offline and loaded from its folder as a real checkpoint would be; picked by the hierarchical
reward's config and by the geometry judge's folder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vrl.models.paths import resolve_detector_path
from vrl.rewards.hierarchical_detectors import (
    GroundingDinoDetector,
    Owlv2Detector,
    detector_kind,
    grounding_text,
    load_detector,
    phrase_of_tokens,
)
from vrl.rewards.hierarchical_models import build_hierarchical_reward, check_hierarchical

SCENE = {
    "description": "a red cube left of a blue ball",
    "subjects": [
        {"id": "cube", "name": "cube", "attributes": ["red"]},
        {"id": "ball", "name": "ball", "attributes": ["blue"]},
    ],
    "relations": [{"subject": "cube", "predicate": "left of", "object": "ball"}],
}


def images(batch=2, height=40, width=48, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def inside(box, image):
    height, width = image.shape[-2:]
    x1, y1, x2, y2 = box
    return 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height


@pytest.fixture(scope="module")
def folder() -> Path:
    return Path(resolve_detector_path("tiny-random:grounding_dino"))


@pytest.fixture(scope="module")
def gdino(folder) -> GroundingDinoDetector:
    return load_detector(folder)  # picked by the folder's config model_type


def test_tiny_grounding_dino_is_a_checkpoint_folder(folder, gdino):
    assert json.loads((folder / "config.json").read_text())["model_type"] == "grounding-dino"
    assert {"model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert isinstance(gdino, GroundingDinoDetector) and detector_kind(folder) == "grounding_dino"
    assert resolve_detector_path("tiny-random:grounding_dino") == str(folder)  # built once
    # GroundingDINO reads [CLS], [SEP], "." and "?" by real BERT's ids
    tok = gdino.processor.tokenizer
    assert tok.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?"]) == [101, 102, 1012, 1029]
    from vrl.models.tiny_detector import build_tiny_grounding_dino

    fresh, _ = build_tiny_grounding_dino(seed=0)
    for name, value in fresh.state_dict().items():
        assert torch.equal(gdino.model.state_dict()[name], value), name


def test_query_text_and_phrase_spans(gdino):
    assert grounding_text(["A Red Cube", "st. bernard?", " "]) == "a red cube. st bernard. object."
    ids = gdino.processor.tokenizer(grounding_text(["a red cube", "a ball"]))["input_ids"]
    # [CLS] a red cube . a ball . [SEP] (+ padding)
    assert phrase_of_tokens(ids + [0, 0], gdino.delimiters) == [
        -1,
        0,
        0,
        0,
        -1,
        1,
        1,
        -1,
        -1,
        -1,
        -1,
    ]


class HandMade(torch.nn.Module):
    """Set logits and boxes whatever the input: the processor and post-processing are real."""

    def __init__(self, logits, boxes):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.logits, self.boxes = logits, boxes

    def forward(self, input_ids, **_):
        return SimpleNamespace(logits=self.logits, pred_boxes=self.boxes, input_ids=input_ids)


def test_each_box_goes_to_the_phrase_of_its_best_token_in_original_pixels(gdino):
    # text: [CLS]0 a1 red2 cube3 .4 a5 ball6 .7 [SEP]8
    logits = torch.full((1, 3, 64), -10.0)
    logits[0, 0, 3] = 5.0  # slot 0: "cube"
    logits[0, 1, 6], logits[0, 1, 2] = 3.0, 1.0  # slot 1: "ball" over "red"
    logits[0, 2, 4] = 8.0  # slot 2: a delimiter only: no phrase
    boxes = torch.tensor([[[0.25, 0.5, 0.2, 0.4], [0.75, 0.5, 0.2, 0.2], [0.5, 0.5, 1.0, 1.0]]])
    model = HandMade(logits, boxes)
    image = torch.rand(3, 40, 80)  # H 40, W 80: no square padding, unlike OWLv2
    queries = [["a red cube", "a ball"]]
    det = GroundingDinoDetector(model, gdino.processor, box_threshold=0.3)
    (found,) = det.detect([image], queries)
    assert found[0][0] == pytest.approx((12.0, 12.0, 28.0, 28.0))
    assert found[1][0] == pytest.approx((52.0, 16.0, 68.0, 24.0))
    assert found[0][1] == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item())
    assert found[1][1] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    (every,) = det.detect_all([image], queries, threshold=0.3)
    assert [len(boxes) for boxes in every] == [1, 1]  # slot 2 belongs to no phrase
    # the text threshold: "ball" (0.95) misses 0.99, "cube" (0.993) passes it
    picky = GroundingDinoDetector(model, gdino.processor, text_threshold=0.99)
    (found,) = picky.detect([image], queries)
    assert found[0] is not None and found[1] is None


def test_detection_batched_in_pixels_for_each_phrase_or_none(gdino):
    x = [images(1, 40, 48)[0], images(1, 56, 30, seed=1)[0]]  # a list may mix sizes
    queries = [["a red cube", "a ball", "a dog"], ["a cat"]]
    out = gdino.detect(x, queries)
    assert [len(o) for o in out] == [3, 1]
    for image, dets in zip(x, out, strict=True):
        for det in dets:
            assert det is None or (inside(det[0], image) and 0.0 <= det[1] <= 1.0)
    every = gdino.detect_all(x, queries, threshold=0.0)
    for image, dets, per_query in zip(x, out, every, strict=True):
        for det, boxes in zip(dets, per_query, strict=True):
            assert all(inside(box, image) for box, _ in boxes)
            scores = [s for _, s in boxes]
            assert scores == sorted(scores, reverse=True)
            if det is not None:
                assert boxes[0][1] == pytest.approx(det[1])  # the best box leads
    strict = GroundingDinoDetector(gdino.model, gdino.processor, box_threshold=1.01)
    assert strict.detect(x, queries) == [[None] * 3, [None]]
    assert gdino.detect([x[0], x[1]], [["a cat"], []])[1] == []
    # texts of different lengths are padded in one batch: each image answers as on its own
    same = [images(1, 40, 48, seed=2)[0], images(1, 40, 48, seed=3)[0]]
    pair = [["a red cube", "a ball"], ["a cat"]]
    alone = [gdino.detect([im], [q])[0] for im, q in zip(same, pair, strict=True)]
    for batched, single in zip(gdino.detect(same, pair), alone, strict=True):
        for a, b in zip(batched, single, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                assert a[0] == pytest.approx(b[0], abs=1e-3) and a[1] == pytest.approx(
                    b[1], abs=1e-4
                )


def test_detector_choice_in_the_config_is_validated(folder, tmp_path):
    def check(detector):
        check_hierarchical(
            weights={"subject": 1.0}, models={"detector": detector, "dino": {"path": "tiny-random"}}
        )

    check({"kind": "grounding_dino", "path": "x", "box_threshold": 0.35, "text_threshold": 0.25})
    check({"kind": "owlv2", "path": "x", "threshold": 0.1})
    check({"path": "x", "threshold": 0.1})  # kind from the checkpoint, at load
    field = r"hierarchical\.models\.detector"
    with pytest.raises(ValueError, match=rf"{field}\.kind: 'yolo' is not a detector; valid: owlv2"):
        check({"kind": "yolo", "path": "x"})
    with pytest.raises(ValueError, match=rf"{field}\.threshold: not an option of the grounding_"):
        check({"kind": "grounding_dino", "path": "x", "threshold": 0.1})
    with pytest.raises(ValueError, match=rf"{field}\.box_threshold: not an option of the owlv2"):
        check({"path": "tiny-random:owlv2", "box_threshold": 0.3})
    with pytest.raises(ValueError, match=rf"{field}\.path: 'tiny-random:yolo' is no tiny detector"):
        check({"path": "tiny-random:yolo"})
    with pytest.raises(
        ValueError, match=rf"{field}\.kind: 'owlv2' but .* grounding_dino checkpoint"
    ):
        load_detector(folder, kind="owlv2", field="hierarchical.models.detector")
    with pytest.raises(ValueError, match=rf"{field}\.threshold: not an option of the grounding_"):
        load_detector(folder, threshold=0.1, field="hierarchical.models.detector")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match=r"--detector: .* a 'bert' checkpoint; detectors: owlv2"):
        load_detector(tmp_path, field="--detector")
    assert isinstance(load_detector("tiny-random"), Owlv2Detector)  # as before: OWLv2


def test_subject_level_end_to_end_on_tiny_grounding_dino():
    models = {
        "detector": {"kind": "grounding_dino", "path": "tiny-random", "box_threshold": 0.0},
        "dino": {"path": "tiny-random"},
        "vlm": {"path": "tiny-random"},
    }
    reward = build_hierarchical_reward(weights={"subject": 1.0, "relation": 1.0}, models=models)
    subject, relation = reward.levels["subject"], reward.levels["relation"]
    assert isinstance(reward.models["detector"], GroundingDinoDetector)
    assert subject.detector is relation.detector  # built once
    x = images(2, 40, 48)
    refs = images(2, 24, 20, seed=7)
    batch = [{"scene": SCENE, "references": {"cube": refs[0], "ball": refs[1]}} for _ in range(2)]
    scores = subject(x, batch)
    assert len(scores) == 2 and all(isinstance(s, float) and math.isfinite(s) for s in scores)
    for image, rows in zip(x, subject.last_breakdown, strict=True):
        assert [r.subject for r in rows] == ["cube", "ball"]
        for row in rows:
            assert row.box is None or inside(row.box, image)
            assert row.vlm is not None and row.dino is not None
    totals = reward(x, batch)
    assert len(totals) == 2 and all(math.isfinite(t) for t in totals)


def test_geometry_judge_picks_grounding_dino_from_a_folder(folder):
    from vrl.bench.judges import JudgeOptions, build_judge
    from vrl.hicogen.scene import Scene

    judge = build_judge("geometry", JudgeOptions(detector=str(folder), detection_threshold=0.0))
    assert isinstance(judge.detector, GroundingDinoDetector)
    scene = Scene.from_json(SCENE)
    questions = scene.questions()
    (answers,) = judge.answer([images(1, 40, 48)[0]], [scene], [questions])
    assert list(answers) == [q.id for q in questions]
    assert all(answers[q.id] in (0.0, 1.0) for q in questions if q.level == "exist")
    tiny = build_judge("geometry", JudgeOptions(detector="tiny-random:grounding_dino"))
    assert isinstance(tiny.detector, GroundingDinoDetector)
