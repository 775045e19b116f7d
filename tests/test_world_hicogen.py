"""The HiCoGen world half's pieces that need no training: the prompts it writes, and the noise
schedules its ablation compares at equal mean noise."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from vrl.samplers import from_config
from vrl.world import hicogen_rl


def _ablation():
    path = Path(__file__).parents[1] / "benchmarks" / "hicogen_world.py"
    spec = importlib.util.spec_from_file_location("hicogen_world", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_schedules_share_the_recipes_mean_noise_and_differ_in_where_it_goes():
    noise, steps = (
        hicogen_rl.RECIPE["sampling"]["noise"],
        hicogen_rl.RECIPE["sampling"]["num_steps"],
    )
    configs = _ablation().noise_configs(noise, steps, window=2)
    assert configs["decaying"] == noise
    schedules = {name: from_config(c) for name, c in configs.items()}
    means = {name: s.mean_level(steps) for name, s in schedules.items()}
    assert means["constant"] == pytest.approx(means["decaying"])
    assert means["window"] == pytest.approx(means["decaying"])
    decaying = schedules["decaying"].levels(steps)
    assert decaying[0] > decaying[-1]  # noise spent early
    assert len(set(schedules["constant"].levels(steps).tolist())) == 1
    window = schedules["window"].levels(steps, window=(3, 5))
    assert (window[:3] == 0).all() and (window[5:] == 0).all() and (window[3:5] > 0).all()


def test_prompts_fit_the_text_encoder_and_carry_their_scene(tmp_path):
    scenes = hicogen_rl.world_scenes(20, seed=3, split="test")
    assert all(len(s.subjects) == 2 and len(s.relations) == 1 for s in scenes)
    short = lambda text: len(text.split()) <= 9  # noqa: E731
    path = hicogen_rl.write_prompts(tmp_path / "a" / "p.jsonl", scenes, seed=3, fits=short)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["scene"] for r in rows] == [s.to_dict() for s in scenes]
    assert [r["id"] for r in rows] == [f"p-{i:05d}" for i in range(20)]  # vrl bench's image names
    for row, scene in zip(rows, scenes, strict=True):
        # a phrasing that fits, else the scene's own prompt
        assert short(row["prompt"]) or row["prompt"] == scene.prompt()
    again = hicogen_rl.write_prompts(tmp_path / "b" / "p.jsonl", scenes, seed=3, fits=short)
    assert again.read_text() == path.read_text()


def test_the_committed_checkpoints_tokenizer_decides_what_fits():
    from vrl.trainers.common import resolve_pipeline_path

    fits = hicogen_rl.token_fit(resolve_pipeline_path("world:t2i"))
    assert fits("a small red circle")
    assert not fits(" ".join(["a small red circle to the left of a large blue square"] * 2))
    assert hicogen_rl.token_fit("/nonexistent/folder") is None


def test_held_out_figures_are_what_vrl_bench_gives_from_its_command_line(tmp_path, capsys):
    """The half's per-level figures come from HiCoPrompt's evaluator, and the command the report
    prints redraws the same images and the same figures."""
    from vrl.cli import main
    from vrl.config import build_config
    from vrl.models.diffusion import FlowMatchingAdapter
    from vrl.trainers.common import resolve_pipeline_path
    from vrl.trainers.diffusion_config import DiffusionTrainConfig

    recipe = json.loads(json.dumps(hicogen_rl.RECIPE))
    recipe["run"].update(output_dir=str(tmp_path / "run"), seed=5)
    cfg = build_config(DiffusionTrainConfig, recipe, "test recipe")
    scenes = hicogen_rl.world_scenes(3, seed=5, split="test")
    prompts = hicogen_rl.write_prompts(tmp_path / "held_out.jsonl", scenes, seed=5)
    adapter = FlowMatchingAdapter.from_pretrained(resolve_pipeline_path(cfg.model.path))

    figures = hicogen_rl.bench_accuracy(adapter, prompts, tmp_path / "ours", cfg)
    assert set(figures) == set(hicogen_rl.LEVELS)
    assert all(0.0 <= v <= 1.0 for v in figures.values())
    images = sorted(p.name for p in (tmp_path / "ours" / "images").glob("*.png"))
    per_scene = range(hicogen_rl.SEEDS_PER_SCENE)
    assert images == [f"held_out-{i:05d}_{k}.png" for i in range(3) for k in per_scene]
    # the world model's images are flat colours but for soft edges (a texture reads 14-22%)
    assert 0.0 < hicogen_rl.off_palette(tmp_path / "ours" / "images") < 0.08
    with pytest.raises(FileNotFoundError, match="no PNG images"):
        hicogen_rl.off_palette(tmp_path)
    # the exist level split by the asked shape: every subject of every image counted once, and
    # (two subjects in every scene) the exist level is their mean
    by_shape = hicogen_rl.found_by_shape(prompts, tmp_path / "ours")
    asked = [s.name for scene in scenes for s in scene.subjects]
    assert {k: v["subjects"] for k, v in by_shape.items()} == {
        shape: asked.count(shape) * hicogen_rl.SEEDS_PER_SCENE for shape in set(asked)
    }
    found = sum(v["found"] * v["subjects"] for v in by_shape.values())
    assert found / (len(asked) * hicogen_rl.SEEDS_PER_SCENE) == pytest.approx(figures["exist"])

    command = hicogen_rl.bench_command(prompts, tmp_path / "cli", cfg)
    assert command[:4] == ["vrl", "bench", "eval", "hicoprompt"]
    assert main(command[1:]) == 0
    capsys.readouterr()
    cli = json.loads((tmp_path / "cli" / "exact" / "summary.json").read_text())
    assert {level: cli["dependencies"][level] for level in hicogen_rl.LEVELS} == figures
    for name in images:  # the very same pixels
        ours = (tmp_path / "ours" / "images" / name).read_bytes()
        assert (tmp_path / "cli" / "images" / name).read_bytes() == ours

    # a second evaluation into the same folder draws afresh (no image of an earlier model kept)
    stale = tmp_path / "ours" / "images" / images[0]
    stale.write_bytes(b"not an image")
    assert hicogen_rl.bench_accuracy(adapter, prompts, tmp_path / "ours", cfg) == figures
    assert stale.read_bytes() == (tmp_path / "cli" / "images" / images[0]).read_bytes()
