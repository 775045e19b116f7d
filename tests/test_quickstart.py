"""`vrl quickstart`, the README's main job: both halves run, and the report says what they measured."""

import functools
import json
import re
import shlex
from pathlib import Path

import pytest

from vrl.cli import main
from vrl.quickstart import _vlm_rows
from vrl.quickstart import hicogen as hicogen_rl

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_held_out(monkeypatch):
    """Few held-out items so the pipeline runs in about a minute; the figures are not the point."""
    from vrl.quickstart import hicogen as hicogen_rl
    from vrl.quickstart import vlm as vlm_rl

    monkeypatch.setattr(hicogen_rl, "HELD_OUT_SCENES", 4)
    monkeypatch.setattr(hicogen_rl, "TRAIN_SCENES", 8)
    monkeypatch.setattr(vlm_rl, "run", functools.partial(vlm_rl.run, per_set=8))


@pytest.mark.slow
def test_quickstart_runs_both_halves_and_reports_what_it_measured(tmp_path, capsys, small_held_out):
    argv = ["quickstart", "--out", str(tmp_path), "--steps", "2", "--hicogen-steps", "1"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    report = (tmp_path / "report.md").read_text()
    printed = capsys.readouterr().out
    vlm, hico = summary["vlm"], summary["hicogen"]
    assert vlm["steps"] == 2 and len(vlm["rewards"]) == 2
    assert hico["steps"] == 1
    assert hico["held_out_images"] == 4 * hicogen_rl.SEEDS_PER_SCENE
    # image integrity beside the levels: the share of off-palette pixels of the bench images
    assert all(0.0 <= hico["off_palette"][when] < 0.5 for when in ("before", "after"))
    assert set(hico["before"]) == {"exist", "attribute", "relation"}
    assert_vlm_table(vlm, report, printed)
    # HiCoGen: four ways of drawing the held-out scenes, each through vrl bench, each in the
    # report's table with the command that redraws its images
    table = hico["table"]
    assert list(table) == ["flat", "img2img", "in_context", "in_context_rl"]
    assert hico["before"] == {k: table["in_context"][k] for k in hico["before"]}
    assert hico["after"] == {k: table["in_context_rl"][k] for k in hico["after"]}
    for name, row in table.items():
        bench = json.loads(
            (tmp_path / "hicogen" / "bench" / name / "exact" / "summary.json").read_text()
        )
        assert {k: bench["dependencies"][k] for k in hico["before"]} == {
            k: row[k] for k in hico["before"]
        }
        assert row["command"][:4] == ["vrl", "bench", "eval", "hicoprompt"]
        assert shlex.join(row["command"]) in report
        assert ("--chain" in row["command"]) == (name != "flat")
        assert ("--lora" in row["command"]) == (name == "in_context_rl")
        assert ("carried" in row) == (name != "flat")
        if name != "flat":
            assert row["drawn"] > 0 and 0.0 <= row["carried"] <= 1.0
            units = tmp_path / "hicogen" / "bench" / name / "images" / "units"
            assert len(list(units.glob("*_unit1.png"))) == hico["held_out_images"]
        carried = f"{row['carried']:.1%}" if "carried" in row else "-"
        placed = f"{row['relation_if_found']:.1%} of {row['found_pairs']}"
        line = (f"{row['exist']:.1%} | {row['attribute']:.1%} | {row['relation']:.1%} | "
                f"{carried} | {row['off_palette']:.1%} | {placed} |")  # fmt: skip
        assert line in report, line
    assert re.search(r"chain in context, after RL +\d+\.\d%", printed)
    off = hico["off_palette"]
    assert f"{off['before']:.1%} before, {off['after']:.1%} after." in report
    # the exist level split by the asked shape, printed and in the report
    by = hico["found_by_shape"]
    assert set(by["before"]) == set(by["after"]) and set(by["before"]) <= {
        "circle", "square", "triangle",
    }  # fmt: skip
    for shape, b in by["before"].items():
        a = by["after"][shape]
        assert b["subjects"] == a["subjects"] > 0
        assert f"{shape} {b['found']:.1%} -> {a['found']:.1%}" in printed
        change = a["found"] - b["found"]
        row = f"| {shape} | {b['subjects']} | {b['found']:.1%} | {a['found']:.1%} | {change:+.1%} |"
        assert row in report, row
    pngs = ("reward_curves.png", "hicogen_img2img.png", "hicogen_before.png", "hicogen_after.png")
    for png in pngs:
        assert (tmp_path / png).stat().st_size > 1000, png
        assert png in report
    # the chain grids are upscaled: a row per held-out scene, each tile STRIP_SCALE x 32 px
    from PIL import Image

    from vrl.quickstart import STRIP_SCALE

    with Image.open(tmp_path / "hicogen_before.png") as grid:
        assert grid.height == 4 * (32 * STRIP_SCALE + 2) + 2


def assert_vlm_table(vlm: dict, report: str, printed: str) -> None:
    """The VLM half's table: before SFT, after SFT and after RL, Acc@0.5 and mean IoU, on each
    evaluation set and the out-of-domain ones pooled, in the report and printed; and its grid."""
    from PIL import Image

    from vrl.pretrain.grounding import OUT_OF_DOMAIN, SETS
    from vrl.quickstart import GROUNDING_GRID, OUT_OF_DOMAIN_ROW
    from vrl.quickstart.vlm import GRID_PER_SET, GRID_SCALE, grid_size

    rows = _vlm_rows(vlm)
    assert [(name, metric) for name, metric, *_ in rows] == [
        (name, metric) for name in [*SETS, OUT_OF_DOMAIN_ROW] for metric in ("Acc@0.5", "mean IoU")
    ]
    assert set(vlm["scores"]) == {"before", "sft", "rl"}
    for name, metric, before, sft, rl in rows:
        assert all(0.0 <= x <= 1.0 for x in (before, sft, rl))
        line = f"| {name} | {metric} | {before:.1%} | {sft:.1%} | {rl:.1%} | {rl - sft:+.1%} |"
        assert line in report, line
        assert re.search(
            rf"{re.escape(name)} +{metric} +{before:.1%} +{sft:.1%} +{rl:.1%}", printed
        )
    pooled = [r for r in rows if r[0] == OUT_OF_DOMAIN_ROW and r[1] == "Acc@0.5"][0]
    for arm, value in zip(("before", "sft", "rl"), pooled[2:], strict=True):
        mean = sum(vlm["scores"][arm][name]["acc"] for name in OUT_OF_DOMAIN) / 3
        assert value == pytest.approx(mean)
    # the grid: a column per held-out image (GRID_PER_SET of each set), a row per model
    assert (
        vlm["grid"].endswith(GROUNDING_GRID) and f"![grounding boxes]({GROUNDING_GRID})" in report
    )
    assert len(vlm["grid_questions"]) == GRID_PER_SET * len(SETS)
    with Image.open(vlm["grid"]) as grid:
        assert grid.size == grid_size(GRID_PER_SET * len(SETS))
        assert grid.height > 3 * 32 * GRID_SCALE


def test_one_half_runs_alone_and_the_report_has_only_its_table(tmp_path, capsys, small_held_out):
    """The fast tier's run of the quickstart driver (the whole job is in the slow tier): the
    VLM half from the committed grounding checkpoint, one GRPO step."""
    argv = ["quickstart", "--out", str(tmp_path), "--only", "vlm", "--steps", "1"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    report = (tmp_path / "report.md").read_text()
    assert "hicogen" not in summary and summary["vlm"]["steps"] == 1
    assert summary["vlm"]["model"] == "world:vlm-rec" and summary["vlm"]["per_set"] == 8
    assert_vlm_table(summary["vlm"], report, capsys.readouterr().out)
    assert "## VLM-R1: referring-expression grounding" in report and "## HiCoGen" not in report
    assert (tmp_path / "reward_curves.png").stat().st_size > 1000
    # the SFT checkpoint grounds and the untrained init does not (8 questions per set)
    scores = summary["vlm"]["scores"]
    assert scores["sft"]["in domain"]["iou"] > scores["before"]["in domain"]["iou"]


def test_the_quickstart_recipe_is_grounding_grpo_from_the_committed_checkpoint():
    import yaml

    from vrl.config import load_config
    from vrl.models.paths import resolve_model_path
    from vrl.pretrain.grounding import REWARDS, TEMPLATE, WEIGHTS_DIR
    from vrl.quickstart import vlm as vlm_rl
    from vrl.trainers.vlm_config import VLMTrainConfig

    path = ROOT / "configs" / "quickstart_vlm.yaml"
    assert vlm_rl.RECIPE == yaml.safe_load(path.read_text())
    cfg = load_config(VLMTrainConfig, path)
    assert cfg.model.path == "world:vlm-rec"
    assert resolve_model_path(cfg.model.path) == str(WEIGHTS_DIR)
    assert cfg.data.train_files == "world:refer" and cfg.data.template == TEMPLATE
    assert cfg.grpo.rewards == REWARDS
    # one pass over the training scenes
    assert cfg.data.synthetic_size == cfg.run.max_steps * cfg.grpo.prompts_per_step


def test_an_unknown_half_is_refused(tmp_path):
    from vrl.quickstart import run_quickstart

    with pytest.raises(ValueError, match="unknown quickstart halves"):
        run_quickstart(tmp_path, halves=("vlm", "sd3"))


def test_a_folder_holding_a_quickstart_is_refused_before_any_work(tmp_path):
    from vrl.errors import RunError
    from vrl.quickstart import run_quickstart

    (tmp_path / "hicogen" / "run").mkdir(parents=True)
    (tmp_path / "hicogen" / "run" / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RunError, match=r"already holds a quickstart \(hicogen/run\)"):
        run_quickstart(tmp_path, halves=("vlm", "hicogen"))
    assert not (tmp_path / "vlm").exists()  # the VLM half did not start


def test_the_report_calls_a_change_a_gain_only_beyond_sampling_noise():
    from vrl.quickstart import _verdict

    before, after = {"a": 0.5, "b": 0.5, "c": 0.5}, {"a": 0.8, "b": 0.53, "c": 0.3}
    text = _verdict(before, after, n=100)  # noise: 2 * sqrt(0.25 / 100) = 10 points
    assert text.startswith("Improved: a (+30.0%, noise +-10.0%)")
    assert "unchanged (within sampling noise): b (+3.0%" in text
    assert "worse: c (-20.0%" in text
    # the same +3 points measured on 10,000 items is a gain
    assert _verdict({"b": 0.5}, {"b": 0.53}, n=10_000).startswith("Improved: b")
