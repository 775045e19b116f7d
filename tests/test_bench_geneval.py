"""GenEval compatibility: its metadata lines become scenes and question graphs, its folders are
read, and its rule (an image is right when every clause holds; the score is the mean over
tasks) comes out of any judge."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vrl.bench.evaluate import evaluate_items
from vrl.bench.generate import GenEvalLayout
from vrl.bench.geneval import (
    geneval_scene,
    geneval_summary,
    load_geneval_folder,
    load_geneval_metadata,
)

# one line per GenEval task, in its own format
METADATA = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}],
     "prompt": "a photo of a bench"},
    {"tag": "two_object", "include": [{"class": "cup", "count": 1}, {"class": "dog", "count": 1}],
     "prompt": "a photo of a cup and a dog"},
    {"tag": "counting", "include": [{"class": "apple", "count": 3}],
     "exclude": [{"class": "apple", "count": 4}], "prompt": "a photo of three apples"},
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}],
     "prompt": "a photo of a red car"},
    {"tag": "position", "include": [{"class": "cup", "count": 1},
                                    {"class": "dog", "count": 1, "position": ["right of", 0]}],
     "prompt": "a photo of a dog right of a cup"},
    {"tag": "color_attr", "include": [{"class": "bus", "count": 1, "color": "blue"},
                                      {"class": "kite", "count": 1, "color": "pink"}],
     "prompt": "a photo of a blue bus and a pink kite"},
]  # fmt: skip


def write_metadata(path):
    path.write_text("".join(json.dumps(m) + "\n" for m in METADATA))
    return path


def test_metadata_becomes_scenes_and_question_graphs(tmp_path):
    items = load_geneval_metadata(write_metadata(tmp_path / "evaluation_metadata.jsonl"))
    assert [it.id for it in items] == ["00000", "00001", "00002", "00003", "00004", "00005"]
    assert [it.extra["tag"] for it in items] == [m["tag"] for m in METADATA]
    texts = {it.extra["tag"]: [q.text for q in it.questions] for it in items}
    assert texts["single_object"] == ["Is there a bench?"]
    assert texts["counting"] == ["Are there three apples?"]
    assert texts["colors"] == ["Is there a car?", "Is the car red?"]
    assert texts["position"] == [
        "Is there a cup?",
        "Is there a dog?",
        "Is the dog to the right of the cup?",
    ]
    position = items[4]
    (rel,) = position.questions[2:]
    assert rel.target.subjects == ("dog", "cup") and rel.parents == ("dog/exist", "cup/exist")
    counting = items[2].scene.subjects[0]
    assert counting.count == 3 and items[2].questions[0].target.count == 3
    assert items[5].subject_count == 2 and items[2].subject_count == 3


def test_unsupported_clauses_are_named():
    with pytest.raises(ValueError, match="exclude"):
        geneval_scene(
            {"include": [{"class": "cat", "count": 1}], "exclude": [{"class": "dog", "count": 1}]}
        )
    with pytest.raises(ValueError, match="include"):
        geneval_scene({"prompt": "x"})


def geneval_folder(tmp_path, n_images=2):
    """GenEval's image layout: <dir>/<index:05d>/{metadata.jsonl, samples/<k:04d>.png}."""
    folder = tmp_path / "outputs"
    for i, meta in enumerate(METADATA):
        samples = folder / f"{i:05d}" / "samples"
        samples.mkdir(parents=True)
        (folder / f"{i:05d}" / "metadata.jsonl").write_text(json.dumps(meta) + "\n")
        for k in range(n_images):
            Image.new("RGB", (16, 16), (k * 100, 0, 0)).save(samples / f"{k:04d}.png")
    (folder / "00000" / "grid.png").write_bytes(b"")  # optional in GenEval; ignored
    return folder


def test_folders_are_read_in_geneval_layout(tmp_path):
    folder = geneval_folder(tmp_path)
    items = load_geneval_folder(folder)
    assert [it.prompt for it in items] == [m["prompt"] for m in METADATA]
    found = GenEvalLayout(folder).find(items)
    assert all([p.name for p in found[it.id]] == ["0000.png", "0001.png"] for it in items)
    assert GenEvalLayout(folder).target(items[3], 2) == folder / "00003" / "samples" / "0002.png"


class RuleJudge:
    """Says yes to everything except the questions listed as failing (for image k of a prompt)."""

    name = "rules"

    def __init__(self, failing):
        self.failing = failing  # {(prompt text, image colour red level): [question texts]}

    def answer(self, images, scenes, questions):
        out = []
        for image, scene, qs in zip(images, scenes, questions, strict=True):
            k = image.getpixel((0, 0))[0] // 100
            bad = self.failing.get((scene.description, k), [])
            out.append({q.id: (0.0 if q.text in bad else 1.0) for q in qs})
        return out


def test_geneval_rule_and_scores_through_any_judge(tmp_path):
    folder = geneval_folder(tmp_path)
    items = load_geneval_folder(folder)
    judge = RuleJudge(
        {
            ("a photo of three apples", 0): ["Are there three apples?"],
            ("a photo of a red car", 1): ["Is the car red?"],
            ("a photo of a dog right of a cup", 0): ["Is there a cup?"],  # zeroes the relation
            ("a photo of a dog right of a cup", 1): ["Is the dog to the right of the cup?"],
        }
    )
    summary = evaluate_items(
        items, GenEvalLayout(folder).find(items), judge, tmp_path / "res", plots=False
    )
    g = summary["geneval"]
    assert g["tasks"] == {
        "single_object": 1.0, "two_object": 1.0, "counting": 0.5, "colors": 0.5,
        "position": 0.0, "color_attr": 1.0,
    }  # fmt: skip
    assert g["overall"] == pytest.approx(4 / 6) and g["unscored_images"] == 0
    assert "## GenEval" in (tmp_path / "res" / "summary.md").read_text()
    record = [
        json.loads(x) for x in (tmp_path / "res" / "per_prompt.jsonl").read_text().splitlines()
    ][4]
    assert [im["geneval_correct"] for im in record["images"]] == [False, False]
    assert record["images"][0]["answers"]["rel/0"] == 1.0  # judged yes, but its parent failed


def test_unjudged_questions_leave_an_image_unscored():
    assert geneval_summary(["colors", "colors", "position"], [[True, None], [False], [None]]) == {
        "tasks": {"colors": 0.5},
        "images": {"colors": 2},
        "overall": 0.5,
        "unscored_images": 2,
    }


def test_generation_writes_geneval_layout(tmp_path):
    items = load_geneval_metadata(write_metadata(tmp_path / "evaluation_metadata.jsonl"))
    layout = GenEvalLayout(tmp_path / "out")
    layout.prepare(items[4])
    meta = json.loads((tmp_path / "out" / "00004" / "metadata.jsonl").read_text())
    assert meta == METADATA[4] and (tmp_path / "out" / "00004" / "samples").is_dir()
    assert load_geneval_folder(tmp_path / "out")[0].prompt == METADATA[4]["prompt"]
