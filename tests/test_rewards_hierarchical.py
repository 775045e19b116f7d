"""Subject and relation levels of the hierarchical reward, and their sum, on tiny random models."""

import math

import pytest
import torch

from vrl.geometry import relation_holds
from vrl.rewards.hierarchical import HierarchicalReward
from vrl.rewards.hierarchical_detectors import Owlv2Detector
from vrl.rewards.hierarchical_global import CLIPScorer, build_global_reward
from vrl.rewards.hierarchical_relation import RelationReward
from vrl.rewards.hierarchical_subject import DinoSimilarity, SubjectReward, VLMYesProbability

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
OWL_VISION = dict(
    image_size=64,
    patch_size=16,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
)
OWL_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=16,
)
DINO = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    patch_size=8,
    image_size=32,
)

SCENE = {
    "description": "a red cube left of a blue ball",
    "subjects": [
        {"id": "cube", "name": "cube", "attributes": ["red"]},
        {"id": "ball", "name": "ball", "attributes": ["blue", "shiny"]},
    ],
    "relations": [{"subject": "cube", "predicate": "left of", "object": "ball"}],
}
NO_RELATIONS = {"subjects": [{"id": "cat", "name": "cat"}]}


def images(batch=2, height=40, width=48, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def samples(batch=2, scene=SCENE, with_references=True):
    refs = images(2, 24, 20, seed=7)
    out = []
    for _ in range(batch):
        sample = {"prompt": SCENE["description"], "scene": scene}
        if with_references:
            sample["references"] = {"cube": refs[0], "ball": refs[1]}
        out.append(sample)
    return out


@pytest.fixture(scope="module")
def detector():
    return Owlv2Detector.from_config(OWL_VISION, OWL_TEXT)


@pytest.fixture(scope="module")
def dino():
    return DinoSimilarity.from_config(**DINO)


@pytest.fixture(scope="module")
def vlm():
    from vrl.models.tiny import build_tiny_vlm
    from vrl.models.vlm import VLMAdapter

    model, processor = build_tiny_vlm("qwen2_5_vl")
    return VLMYesProbability(VLMAdapter(model, processor))


@pytest.fixture(scope="module")
def global_reward():
    torch.manual_seed(0)
    return build_global_reward(CLIPScorer.from_config(TINY_CLIP), None)


class StubDetector:
    """Hand-made boxes by query phrase; unknown phrases are not found."""

    def __init__(self, boxes):
        self.boxes = boxes

    def detect(self, images, queries):
        return [[(self.boxes[q], 0.9) if q in self.boxes else None for q in qs] for qs in queries]


def finite_batch(scores, n=2):
    return len(scores) == n and all(isinstance(s, float) and math.isfinite(s) for s in scores)


# ---------------------------------------------------------------------- models


def test_detector_one_box_per_query_inside_the_image(detector):
    x = [images(1, 40, 48)[0], images(1, 56, 30, seed=1)[0]]  # a list may mix sizes
    queries = [["a red cube", "a ball", "a dog"], ["a cat"]]
    out = detector.detect(x, queries)
    assert [len(o) for o in out] == [3, 1]
    for img, dets in zip(x, out, strict=True):
        height, width = img.shape[-2:]
        for box, score in dets:
            x1, y1, x2, y2 = box
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
            assert 0.0 <= score <= 1.0  # a sigmoid; random logits may saturate it
    # a threshold above every possible score reports "not found"
    strict = Owlv2Detector(detector.model, detector.processor, threshold=1.01)
    assert strict.detect(x, queries) == [[None] * 3, [None]]


def test_dino_similarity_is_one_with_itself_and_less_for_another(dino):
    x = images(2, 40, 48)
    crop = x[0, :, 5:30, 10:40]
    same = dino.similarity([crop, crop], [crop.clone(), x[1]])
    assert same.shape == (2,)
    assert same[0].item() == pytest.approx(1.0, abs=1e-5)
    assert same[1].item() < 1.0 - 1e-4


def test_vlm_yes_probability(vlm):
    x = images(2, 40, 48)
    questions = ["Is the cube red?", "Is there a ball?"]
    batched = vlm.prob_yes(x, questions)
    assert batched.shape == (2,)
    assert ((batched > 0) & (batched < 1)).all()
    again = vlm.prob_yes(x.clone(), list(questions))
    assert torch.equal(batched, again)
    one_by_one = torch.cat([vlm.prob_yes(x[i : i + 1], questions[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=0)
    # identical inputs in one batch get identical answers
    twin = vlm.prob_yes(torch.stack([x[0], x[0]]), [questions[0]] * 2)
    assert twin[0].item() == pytest.approx(twin[1].item(), abs=1e-6)
    other = vlm.prob_yes(x[:1], ["Is the ball to the left of the cube?"])
    assert abs(other.item() - batched[0].item()) > 1e-6
    assert vlm.yes_id != vlm.no_id


# ---------------------------------------------------------------------- levels


def test_subject_reward_scores_and_breakdown(detector, dino, vlm):
    reward = SubjectReward(detector, dino, vlm, w_dino=1.0, w_vlm=2.0)
    x = images()
    scores = reward(x, samples())
    assert finite_batch(scores)
    rows = reward.last_breakdown
    assert [[r.subject for r in image_rows] for image_rows in rows] == [["cube", "ball"]] * 2
    for image_rows, score in zip(rows, scores, strict=True):
        for r in image_rows:
            assert r.dino is not None and -1 <= r.dino <= 1 and 0 < r.vlm < 1
            assert r.score == pytest.approx(1.0 * r.dino + 2.0 * r.vlm)
        assert score == pytest.approx(sum(r.score for r in image_rows) / 2)


def test_subject_reward_without_references_renormalises_to_vlm(detector, dino, vlm):
    reward = SubjectReward(detector, dino, vlm, w_dino=1.0, w_vlm=2.0)
    scores = reward(images(), samples(with_references=False))
    assert finite_batch(scores)
    for image_rows in reward.last_breakdown:
        for r in image_rows:
            assert r.dino is None
            assert r.score == pytest.approx(3.0 * r.vlm)


def test_relation_reward_scores_and_no_relations(detector, vlm):
    reward = RelationReward(vlm, detector)
    scores = reward(images(), samples())
    assert finite_batch(scores)
    (row,) = reward.last_breakdown[0]
    assert row.relation == "cube left of ball" and row.geometry in (0.0, 1.0)
    assert reward(images(), samples(scene=NO_RELATIONS)) == [None, None]


@pytest.mark.parametrize(
    ("cube_box", "expected"),
    [((0, 10, 10, 20), 1.0), ((30, 10, 40, 20), 0.0)],
)
def test_relation_geometry_follows_relation_holds(vlm, cube_box, expected):
    ball_box = (20, 10, 30, 20)
    stub = StubDetector({"cube": cube_box, "ball": ball_box})
    assert float(relation_holds(cube_box, ball_box, "left of")) == expected
    reward = RelationReward(vlm, stub, w_vlm=1.0, w_geometry=3.0)
    scores = reward(images(), samples())
    for image_rows, score in zip(reward.last_breakdown, scores, strict=True):
        (row,) = image_rows
        assert row.geometry == expected and row.boxes == (cube_box, ball_box)
        assert score == pytest.approx(row.vlm + 3.0 * expected)
    # geometry only: the score is the rule's verdict scaled to the total weight
    geometric = RelationReward(None, stub, w_vlm=1.0, w_geometry=3.0)
    assert geometric(images(), samples()) == [4.0 * expected] * 2
    # a subject the detector misses leaves the VLM term alone
    missing = RelationReward(vlm, StubDetector({"ball": ball_box}))
    missing(images(), samples())
    assert all(rows[0].geometry is None for rows in missing.last_breakdown)


def test_hierarchical_total_is_weighted_sum_and_missing_level_counts_zero(
    global_reward, detector, dino, vlm
):
    subject = SubjectReward(detector, dino, vlm)
    relation = RelationReward(vlm, StubDetector({"cube": (0, 0, 5, 5), "ball": (30, 0, 40, 5)}))
    weights = {"global": 0.5, "subject": 2.0, "relation": 1.5}
    full = HierarchicalReward(global_reward, subject, relation, weights=weights)
    x, batch = images(), samples()
    parts = full.breakdown(x, batch)
    assert set(parts) == {"global", "subject", "relation", "total"}
    for level in ("global", "subject", "relation"):
        assert finite_batch(parts[level])
    for i in range(2):
        expected = sum(weights[k] * parts[k][i] for k in weights)
        assert parts["total"][i] == pytest.approx(expected, abs=1e-6)
    assert full(x, batch) == pytest.approx(parts["total"])

    partial = HierarchicalReward(subject=subject, weights={"subject": 2.0})
    alone = partial.breakdown(x, batch)
    assert alone["global"] == [None, None] and alone["relation"] == [None, None]
    assert alone["total"] == pytest.approx([2.0 * s for s in parts["subject"]])
    # a scene without relations: that level answers None and counts 0
    no_rel = full.breakdown(x, samples(scene=NO_RELATIONS, with_references=False))
    assert no_rel["relation"] == [None, None]
    assert no_rel["total"] == pytest.approx(
        [0.5 * g + 2.0 * s for g, s in zip(no_rel["global"], no_rel["subject"], strict=True)]
    )
    with pytest.raises(ValueError, match="unknown level"):
        HierarchicalReward(weights={"subjects": 1.0})
