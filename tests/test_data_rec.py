"""VLM-R1's own REC data as-is: the REC form, .json arrays, and data configs with sampling.

Files are written in VLM-R1's layout: ``rec_jsons_processed/*.json`` arrays (``json.dump`` of a
list, all on line 1) and ``.jsonl`` lines of ``{"image", "problem", "solution": [x1, y1, x2, y2],
"normal_caption"}``, listed by a ``data_config/rec.yaml`` of ``datasets: - json_path: ...``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from PIL import Image

from vrl.data import DataError, build_messages, load_vlm_r1_jsonl
from vrl.data.data_config import parse_sampling, read_data_config
from vrl.rewards.grounding import rec_iou_score
from vrl.rewards.parsing import parse_completion, resized_to_original

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 48)  # (width, height) of every image


def _rec(i: int, **fields) -> dict:
    record = {
        "image": f"train2014/img_{i % 3}.jpg",
        "problem": f"the object number {i}",
        "solution": [i, 2, i + 10, 20],
        "normal_caption": f"object {i}",
    }
    record.update(fields)
    return {key: value for key, value in record.items() if value is not None}


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    """VLM-R1's --image_root: COCO train2014 images under train2014/."""
    root = tmp_path / "coco"
    (root / "train2014").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", SIZE, "red").save(root / "train2014" / f"img_{i}.jpg")
    return root


def _json(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records), encoding="utf-8")  # as json.dump writes: one line
    return path


def _jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _config(path: Path, *entries: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"datasets": list(entries)}), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# the REC form, in a .json array and in JSONL


def test_a_json_array_of_rec_records_loads_with_its_box_in_original_pixels(tmp_path, coco):
    data = _json(tmp_path / "rec_jsons_processed" / "refcoco_train.json", [_rec(0), _rec(1)])
    first, second = load_vlm_r1_jsonl(data, coco)

    assert (first.line, second.line) == (0, 1)  # the index in the array
    assert first.id == "refcoco_train.json:0"
    assert first.images == ((coco / "train2014" / "img_0.jpg").absolute(),)
    assert first.question == "the object number 0"
    assert first.solution == "[0, 2, 10, 20]" and first.box == (0.0, 2.0, 10.0, 20.0)
    assert first.extra == {"normal_caption": "object 0"}  # problem/solution are not extras
    assert first.accu_reward_method is None
    # the prompt is VLM-R1's: the image, then its REC question template on the problem
    (message,) = build_messages(first, "rec")
    assert message["content"] == [
        {"type": "image"},
        {
            "type": "text",
            "text": "the object number 0 First output the thinking process in <think> </think> "
            "tags and then output the final answer in <answer> </answer> tags. Output the final "
            "answer in JSON format.",
        },
    ]


def test_the_solution_box_reaches_the_iou_reward_in_original_pixels(tmp_path, coco):
    data = _jsonl(tmp_path / "d.jsonl", [_rec(4, solution=[16, 12, 48, 36.5])])
    (sample,) = load_vlm_r1_jsonl(data, coco)
    # a Qwen2.5-VL answer in pixels of its input, resized 64x48 -> 128x96: twice the numbers
    transform = resized_to_original((128, 96), SIZE)
    exact = parse_completion("<answer>[32, 24, 96, 73]</answer>", transform)
    assert rec_iou_score(exact, sample.solution) == pytest.approx(1.0)
    unscaled = parse_completion("<answer>[16, 12, 48, 36.5]</answer>", transform)
    assert rec_iou_score(unscaled, sample.solution) < 0.3


def test_both_forms_mix_in_one_file_and_a_string_solution_is_a_raw_ground_truth(tmp_path, coco):
    conversation = {
        "image": "train2014/img_0.jpg",
        "conversations": [{"from": "human", "value": "<image>Q?"}, {"from": "gpt", "value": "A"}],
        "problem": "kept as an extra, as before",
    }
    text_rec = {"problem": "What is 2 + 2?", "solution": "<answer>4</answer>", "id": 9}
    data = _jsonl(tmp_path / "d.jsonl", [_rec(0), conversation, text_rec])
    rec, conv, text = load_vlm_r1_jsonl(data, coco)
    assert rec.box is not None and conv.box is None and text.box is None
    assert conv.question == "Q?" and conv.extra == {"problem": "kept as an extra, as before"}
    assert text.images == () and text.solution == "<answer>4</answer>" and text.id == "9"


REC_DEFECTS = {
    # index in the array -> (record, what its problem must contain after "file:index: ")
    0: (["not", "an", "object"], "expected a JSON object, got list"),
    1: ({"image": "train2014/img_0.jpg"}, 'field "conversations" is missing (a record in'),
    2: (_rec(2, problem=None), 'field "problem" is missing'),
    3: (_rec(3, problem=" "), 'field "problem": expected the question as a non-empty string'),
    4: (_rec(4, solution=None), 'field "solution" is missing'),
    5: (_rec(5, solution=[1, 2, 3]), 'field "solution": expected a box [x1, y1, x2, y2]'),
    6: (_rec(6, solution=[1, 2, True, 4]), "got a list of 4 (int, int, bool, int)"),
    7: (_rec(7, solution={"bbox": [1, 2, 3, 4]}), "in pixels of the original image (or a string)"),
    8: (_rec(8, solution=[10, 2, 5, 20]), "needs x1 < x2 and y1 < y2"),
    9: (_rec(9, solution=[1, 2, 10**400, 4]), "is not finite"),
    10: (_rec(10, solution=[0, 0, 100, 20]), "reaches past the image (64x48)"),
    11: (_rec(11, image=None), 'the box "solution" needs one image, got 0'),
    12: (_rec(12, image="train2014/missing.jpg"), 'image "train2014/missing.jpg" not found'),
    13: (_rec(13, solution=""), 'field "solution" (the ground truth) is empty'),
}


def test_every_rec_defect_is_one_line_naming_file_index_and_field(tmp_path, coco):
    records = [record for record, _ in REC_DEFECTS.values()] + [_rec(14)]
    data = _json(tmp_path / "refcoco_train.json", records)
    with pytest.raises(DataError) as caught:
        load_vlm_r1_jsonl(data, coco)
    problems = caught.value.problems
    assert f"{len(REC_DEFECTS)} bad lines in {data}" in str(caught.value).splitlines()[0]
    for index, (_, expected) in REC_DEFECTS.items():
        mine = [p for p in problems if p.startswith(f"{data}:{index}: ")]
        assert mine and expected in mine[0], (index, mine)
        assert all(len(p.splitlines()) == 1 for p in mine)

    kept = load_vlm_r1_jsonl(data, coco, skip_bad_lines=True)
    assert [s.line for s in kept] == [14]


def test_a_box_within_a_pixel_of_the_edge_is_kept(tmp_path, coco):
    data = _jsonl(tmp_path / "d.jsonl", [_rec(0, solution=[-0.5, 0, 64.8, 48])])
    (sample,) = load_vlm_r1_jsonl(data, coco)
    assert sample.box == (-0.5, 0.0, 64.8, 48.0)
    data = _jsonl(tmp_path / "e.jsonl", [_rec(0, solution=[0, 0, 1000, 20])])
    (unchecked,) = load_vlm_r1_jsonl(data, coco, check_images=False)  # no size known: kept
    assert unchecked.box == (0.0, 0.0, 1000.0, 20.0)


@pytest.mark.parametrize("skip", [False, True])
def test_a_json_array_that_does_not_parse_fails_the_whole_file(tmp_path, coco, skip):
    data = tmp_path / "refcoco_train.json"
    data.write_text('[\n{"problem": "a", "solution": [1, 2, 3, 4]},\n{"problem": }\n]\n')
    with pytest.raises(DataError) as caught:
        load_vlm_r1_jsonl(data, coco, skip_bad_lines=skip)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{data}: invalid JSON at line 3, column 13: ")
    assert "read as one JSON array" in problem


def test_a_json_file_of_lines_is_read_line_by_line_and_a_jsonl_array_gets_a_hint(tmp_path, coco):
    lines = _jsonl(tmp_path / "refcoco_train.json", [_rec(0), _rec(1)])  # JSONL named .json
    assert [s.line for s in load_vlm_r1_jsonl(lines, coco)] == [1, 2]
    array = _json(tmp_path / "refcoco_train.jsonl", [_rec(0)])
    with pytest.raises(DataError, match=r"jsonl:1: expected a JSON object, got list \(a JSON arr"):
        load_vlm_r1_jsonl(array, coco)


# ---------------------------------------------------------------------------------------------
# the data config and its sampling strategies


@pytest.fixture
def rec_files(tmp_path, coco):
    """VLM-R1's three REC files: refcoco as a .json array (10), refcoco+ and g as JSONL (10)."""
    folder = tmp_path / "rec_jsons_processed"
    return {
        "refcoco": _json(folder / "refcoco_train.json", [_rec(i) for i in range(10)]),
        "refcocop": _jsonl(folder / "refcocop_train.jsonl", [_rec(i) for i in range(10, 20)]),
        "refcocog": _jsonl(folder / "refcocog_train.jsonl", [_rec(i) for i in range(20, 30)]),
    }


def _problems_numbers(samples) -> list[int]:
    return [int(s.question.rsplit(" ", 1)[1]) for s in samples]


def test_a_data_config_lists_its_files_in_order_under_one_image_root(tmp_path, coco, rec_files):
    config = _config(tmp_path / "data_config" / "rec.yaml", *[
        {"json_path": str(path)} for path in rec_files.values()
    ])  # fmt: skip
    samples = load_vlm_r1_jsonl(config, coco)
    assert _problems_numbers(samples) == list(range(30))
    assert {s.source for s in samples} == {str(p) for p in rec_files.values()}
    assert all(s.images[0].parent == (coco / "train2014").absolute() for s in samples)


def test_every_sampling_strategy(tmp_path, coco, rec_files):
    def sampled(strategy: str, seed: int = 0, name: str = "refcocop") -> list[int]:
        config = _config(
            tmp_path / "rec.yaml",
            {"json_path": str(rec_files[name]), "sampling_strategy": strategy},
        )
        return _problems_numbers(load_vlm_r1_jsonl(config, coco, seed=seed))

    assert sampled("all") == list(range(10, 20))
    assert sampled("first:3") == [10, 11, 12]
    assert sampled("end:3") == [17, 18, 19]
    assert sampled("first:3", name="refcoco") == [0, 1, 2]  # a .json array, by index
    assert sampled("end:2", name="refcoco") == [8, 9]
    assert sampled("first:25%") == [10, 11, 12]  # 2.5 rounds up, as VLM-R1's math.ceil
    assert sampled("end:10%") == [19]
    assert sampled("first:12.5%") == [10, 11]  # 1.25 -> 2
    assert sampled("first:100%") == list(range(10, 20))

    drawn = sampled("random:4", seed=7)
    assert len(drawn) == 4 and drawn == sorted(drawn) and set(drawn) <= set(range(10, 20))
    assert sampled("random:4", seed=7) == drawn  # the run's seed decides
    assert {tuple(sampled("random:4", seed=s)) for s in range(8)} != {tuple(drawn)}
    assert len(sampled("random:30%", seed=7)) == 3


def test_a_count_above_the_file_takes_it_all_with_a_warning(tmp_path, coco, rec_files, caplog):
    config = _config(
        tmp_path / "rec.yaml",
        {"json_path": str(rec_files["refcoco"]), "sampling_strategy": "first:50"},
        {"json_path": str(rec_files["refcocog"]), "sampling_strategy": "end:11"},
        {"json_path": str(rec_files["refcocop"]), "sampling_strategy": "random:99"},
    )
    with caplog.at_level(logging.WARNING):
        samples = load_vlm_r1_jsonl(config, coco)
    assert len(samples) == 30
    assert "first:50 asks for 50 records but" in caplog.text


def test_random_draws_differ_between_entries_of_one_config(tmp_path, coco, rec_files):
    path = str(rec_files["refcocop"])
    config = _config(
        tmp_path / "rec.yaml",
        {"json_path": path, "sampling_strategy": "random:5"},
        {"json_path": path, "sampling_strategy": "random:5"},
    )
    samples = load_vlm_r1_jsonl(config, coco, seed=3)
    assert _problems_numbers(samples[:5]) != _problems_numbers(samples[5:])


def test_only_the_records_picked_are_validated(tmp_path, coco):
    data = _jsonl(tmp_path / "d.jsonl", [_rec(0), _rec(1), {"broken": True}])
    config = _config(
        tmp_path / "rec.yaml", {"json_path": str(data), "sampling_strategy": "first:2"}
    )
    assert len(load_vlm_r1_jsonl(config, coco)) == 2
    config = _config(tmp_path / "rec.yaml", {"json_path": str(data), "sampling_strategy": "end:1"})
    with pytest.raises(DataError, match=r"d\.jsonl:3: field \"conversations\" is missing"):
        load_vlm_r1_jsonl(config, coco)


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("first", "expected all, first:N, end:N or random:N"),  # VLM-R1 would take all
        ("last:5", "expected all, first:N"),  # VLM-R1 would take all
        ("first:-1", "expected all, first:N"),
        ("first:abc", "expected all, first:N"),
        ("first:0", "'first:0' takes no record"),
        ("end:0", "'end:0' takes no record"),  # VLM-R1's [-0:] takes everything
        ("random:0%", "a percentage must be above 0%"),
        ("end:150%", "at most 100%"),
        (5, "got int"),
    ],
)
def test_a_bad_sampling_strategy_names_the_config_and_entry(tmp_path, strategy, message):
    config = _config(
        tmp_path / "rec.yaml",
        {"json_path": "a.json"},
        {"json_path": "b.json", "sampling_strategy": strategy},
    )
    with pytest.raises(DataError) as caught:
        load_vlm_r1_jsonl(config)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{config}: datasets[1]: sampling_strategy: ")
    assert message in problem


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("datasets: [}", "not a readable YAML data config"),
        ("- json_path: a.json", 'expected a "datasets" list'),
        ("dataset: []", "got no datasets list"),
        ("datasets: []", "the datasets list is empty"),
        ("datasets: [a.json]", "datasets[0]: expected a mapping with json_path, got str"),
        ("datasets: [{sampling_strategy: all}]", "datasets[0]: json_path: expected the path"),
        ("datasets: [{json_path: a.json, sampling: all}]", "unknown key(s) sampling"),
        ("datasets: [{json_path: other.yaml}]", "is a data config, not a data file"),
    ],
)
def test_a_malformed_data_config_is_one_line_naming_it(tmp_path, content, message):
    config = tmp_path / "rec.yaml"
    config.write_text(content)
    for skip in (False, True):  # a problem with the config itself is never skipped
        with pytest.raises(DataError) as caught:
            load_vlm_r1_jsonl(config, skip_bad_lines=skip)
        (problem,) = caught.value.problems
        assert problem.startswith(f"{config}: ") and message in problem


def test_a_missing_file_names_its_config_entry(tmp_path, coco, rec_files):
    config = _config(
        tmp_path / "rec.yaml",
        {"json_path": str(rec_files["refcoco"])},
        {"json_path": str(tmp_path / "nowhere.jsonl")},
    )
    with pytest.raises(DataError) as caught:
        load_vlm_r1_jsonl(config, coco)
    assert caught.value.problems == [
        f"{config}: datasets[1]: {tmp_path / 'nowhere.jsonl'}: data file not found"
    ]


def test_image_folders_pair_with_train_files_and_default_to_each_data_file(tmp_path, coco):
    beside = _json(coco / "refcoco_train.json", [_rec(0)])  # images beside the file
    config = _config(tmp_path / "cfg" / "rec.yaml", {"json_path": str(beside)})
    other = tmp_path / "other_images"
    (other / "train2014").mkdir(parents=True)
    Image.new("RGB", SIZE).save(other / "train2014" / "img_1.jpg")
    extra = _jsonl(tmp_path / "extra.jsonl", [_rec(1)])

    (sample,) = load_vlm_r1_jsonl(config)  # no folder: the listed file's own directory
    assert sample.images[0] == (coco / "train2014" / "img_0.jpg").absolute()
    first, second = load_vlm_r1_jsonl(f"{config}:{extra}", f"{coco}:{other}")
    assert first.images[0].parent.parent == coco.absolute()
    assert second.images[0].parent.parent == other.absolute()


def test_the_trainer_reads_a_data_config_with_the_runs_seed(tmp_path, coco, rec_files):
    from vrl.config import load_config
    from vrl.data.sources import load_vlm_dataset
    from vrl.trainers.vlm_config import VLMTrainConfig

    config = _config(
        tmp_path / "rec.yaml",
        {"json_path": str(rec_files["refcoco"]), "sampling_strategy": "random:3"},
    )

    def loaded(seed: int) -> list[int]:
        overrides = [f"data.train_files={config}", f"data.image_folders={coco}"]
        overrides += [f"run.seed={seed}", f"run.output_dir={tmp_path / 'run'}"]
        cfg = load_config(VLMTrainConfig, None, overrides)
        return _problems_numbers(load_vlm_dataset(cfg))

    assert loaded(1) == loaded(1) and len(loaded(1)) == 3
    assert any(loaded(1) != loaded(seed) for seed in range(2, 6))


def test_the_rec_recipes_point_at_a_data_config_in_vlm_r1s_layout():
    for recipe in ("vlm_qwen2_5_vl_3b_rec.yaml", "vlm_qwen2_5_vl_3b_rec_lora.yaml"):
        data = yaml.safe_load((ROOT / "configs" / recipe).read_text())["data"]
        assert data["train_files"] == "configs/data/rec.yaml" and data["template"] == "rec"
    entries = read_data_config(ROOT / "configs" / "data" / "rec.yaml")
    assert [e.path.name for e in entries] == [
        "refcoco_train.json",
        "refcocop_train.json",
        "refcocog_train.json",
    ]
    assert all(e.sampling is None for e in entries)


def test_parse_sampling_reads_vlm_r1s_strategies():
    assert parse_sampling("all") is None
    assert parse_sampling(" random : 10% ").size(95) == 10  # 9.5 rounds up
    assert parse_sampling("first:7").size(3) == 7  # pick() then takes the 3 there are
    assert str(parse_sampling("end:12.5%")) == "end:12.5%"
