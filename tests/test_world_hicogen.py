"""The HiCoGen world half's pieces that need no training: the prompts it writes, and the noise
schedules its ablation compares at equal mean noise."""

from __future__ import annotations

import json

import pytest

from vrl.errors import ConfigError
from vrl.quickstart import hicogen as hicogen_rl
from vrl.samplers import equal_mean, from_config


def test_ablation_schedules_share_the_recipes_mean_noise_and_differ_in_where_it_goes():
    noise, steps = (
        hicogen_rl.RECIPE["sampling"]["noise"],
        hicogen_rl.RECIPE["sampling"]["num_steps"],
    )
    mean = from_config(noise).mean_level(steps)
    schedules = {
        "decaying": from_config(noise),
        "constant": equal_mean("constant", mean, steps),
        "window": equal_mean("window", mean, steps, size=2, start="random"),
    }
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


def test_three_subject_scenes_are_drawn_again_until_every_prompt_of_their_chain_fits():
    from vrl.hicogen.chain import plan_chain
    from vrl.world import captions

    fits = lambda text: len(text.split()) <= 17  # noqa: E731
    scenes = hicogen_rl.world_scenes(30, seed=4, split="test", subjects=(2, 3), fits=fits)
    assert 8 <= sum(len(s.subjects) == 3 for s in scenes) <= 22  # the count is drawn first
    for scene in scenes:
        assert len(scene.relations) == len(scene.subjects) - 1
        assert any(fits(t) for t in captions(scene))
        assert all(fits(t) for t in plan_chain(scene, scene.prompt()).unit_prompts)
    # without the test some scenes of the same draw have a prompt that does not fit
    unfit = hicogen_rl.world_scenes(30, seed=4, split="test", subjects=(2, 3))
    assert any(
        not all(fits(t) for t in plan_chain(s, s.prompt()).unit_prompts)
        or not any(fits(t) for t in captions(s))
        for s in unfit
    )
    with pytest.raises(ValueError, match="no 3-subject test scene in 50 draws"):
        hicogen_rl.world_scenes(2, 4, "test", (3, 3), fits=lambda text: len(text) < 20, tries=50)


def test_carried_counts_the_subjects_a_unit_drew_that_the_final_image_kept(tmp_path):
    """Exact renders stand in for a chain: unit images that draw their subjects, a final image
    that keeps them all (image 0) or loses unit 1's subject (image 1)."""
    from vrl.bench.data import load_items
    from vrl.bench.generate import unit_path
    from vrl.hicogen.chain import plan_chain
    from vrl.hicogen.scene import Scene
    from vrl.world import layout, render

    scenes = hicogen_rl.world_scenes(3, seed=8, split="test")
    prompts = hicogen_rl.write_prompts(tmp_path / "held_out.jsonl", scenes, seed=8)
    images = tmp_path / "images"
    (images / "units").mkdir(parents=True)
    for item in load_items(prompts):
        plan = plan_chain(item.scene, item.prompt)
        boxes = layout(item.scene, 32, 0)
        for k in range(2):
            for j in range(len(plan.units)):
                unit = render(plan.partial_scene(j), 32, boxes=boxes)
                unit.save(unit_path(images, item.id, k, j + 1))
        render(item.scene, 32, boxes=boxes).save(images / f"{item.id}_0.png")
        later = Scene(
            subjects=tuple(s for s in item.scene.subjects if s.id not in plan.units[0].subjects)
        )
        render(later, 32, boxes=boxes).save(images / f"{item.id}_1.png")
    result = hicogen_rl.carried(prompts, images)
    # every unit drew its one subject: 2 subjects x 2 images x 3 scenes; image 1 lost 3 of them
    assert result == {"carried": 9 / 12, "drawn": 12}


def test_relation_if_found_reads_only_the_relations_whose_subjects_were_drawn(tmp_path):
    scenes = hicogen_rl.world_scenes(2, seed=8, split="test", subjects=(3, 3))
    prompts = hicogen_rl.write_prompts(tmp_path / "held_out.jsonl", scenes, seed=8)
    rows = [json.loads(line) for line in prompts.read_text().splitlines()]
    (tmp_path / "exact").mkdir()

    def image(found: set[str], right: set[int], scene) -> dict:
        answers = {f"{s.id}/exist": float(s.id in found) for s in scene.subjects}
        answers |= {f"rel/{i}": float(i in right) for i in range(len(scene.relations))}
        return {"answers": answers}

    a, b = scenes
    # scene a: all found, relation 0 right, 1 wrong; then s0 missing (no relation of s0 counted)
    images_a = [image({"s0", "s1", "s2"}, {0}, a), image({"s1", "s2"}, {0, 1}, a)]
    with_s0 = [i for i, r in enumerate(a.relations) if "s0" in (r.subject, r.object)]
    images_b = [image(set(), set(), b)]  # nothing drawn: nothing asked
    lines = [{"id": rows[0]["id"], "images": images_a}, {"id": rows[1]["id"], "images": images_b}]
    (tmp_path / "exact" / "per_prompt.jsonl").write_text("\n".join(map(json.dumps, lines)))
    asked = 2 + (2 - len(with_s0))
    right = 1 + sum(1 for i in (0, 1) if i not in with_s0)
    assert hicogen_rl.relation_if_found(prompts, tmp_path) == {
        "relation_if_found": right / asked, "found_pairs": asked,
    }  # fmt: skip


def test_the_committed_checkpoints_tokenizer_decides_what_fits():
    from vrl.models.paths import resolve_pipeline_path

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
    from vrl.models.paths import resolve_pipeline_path
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

    # the flat pass and the image-to-image chain, the table's other rows: the same holds
    for condition in ("flat", "img2img"):
        row = hicogen_rl.bench_accuracy(adapter, prompts, tmp_path / condition, cfg, condition)
        command = hicogen_rl.bench_command(prompts, tmp_path / f"{condition}-cli", cfg,
                                           condition=condition)  # fmt: skip
        assert ("--chain" in command) == (condition != "flat")
        assert main(command[1:]) == 0
        capsys.readouterr()
        cli = json.loads((tmp_path / f"{condition}-cli" / "exact" / "summary.json").read_text())
        assert {level: cli["dependencies"][level] for level in hicogen_rl.LEVELS} == row
    assert (tmp_path / "flat" / "images" / images[0]).read_bytes() != (
        tmp_path / "ours" / "images" / images[0]
    ).read_bytes()

    # chains with cumulative unit prompts: the command carries the setting, and draws the same
    cumulative = build_config(
        DiffusionTrainConfig, {**recipe, "chain": {**recipe["chain"], "cumulative_prompts": True}}
    )
    told = hicogen_rl.bench_accuracy(adapter, prompts, tmp_path / "told", cumulative)
    command = hicogen_rl.bench_command(prompts, tmp_path / "told-cli", cumulative)
    assert command[command.index("--unit-prompts") + 1] == "cumulative"
    assert main(command[1:]) == 0
    capsys.readouterr()
    cli = json.loads((tmp_path / "told-cli" / "exact" / "summary.json").read_text())
    assert {level: cli["dependencies"][level] for level in hicogen_rl.LEVELS} == told
    differ = [
        (tmp_path / "told" / "images" / n).read_bytes()
        != (tmp_path / "ours" / "images" / n).read_bytes()
        for n in images
    ]
    assert any(differ)  # unit 2 told both subjects draws other images

    # a second evaluation into the same folder draws afresh (no image of an earlier model kept)
    stale = tmp_path / "ours" / "images" / images[0]
    stale.write_bytes(b"not an image")
    assert hicogen_rl.bench_accuracy(adapter, prompts, tmp_path / "ours", cfg) == figures
    assert stale.read_bytes() == (tmp_path / "cli" / "images" / images[0]).read_bytes()


@pytest.mark.slow
def test_chain_stages_show_a_unit_pass_erasing_what_the_unit_before_drew(tmp_path):
    """On world:t2i-shapes, unit 2's pass told only its own subject redraws the canvas without
    unit 1's subject (docs/experiments/2026-12-06-chain-stages.md, 512 chains: found in 79% of
    unit-1 images, 23% of unit-2 ones); told both (cumulative prompts) it keeps it (71%). Unit 1 and the flat pass are the
    same draws either way: the same prompt and initial noise."""
    import random

    from vrl.models.diffusion import FlowMatchingAdapter
    from vrl.models.paths import resolve_pipeline_path
    from vrl.world import sample_scene

    path = resolve_pipeline_path("world:t2i-shapes")
    adapter = FlowMatchingAdapter.from_pretrained(path)
    scenes = hicogen_rl.world_scenes(8, seed=10_000, split="test")
    prompts = hicogen_rl.write_prompts(
        tmp_path / "p.jsonl", scenes, 10_000, hicogen_rl.token_fit(path)
    )
    rows = [json.loads(line) for line in prompts.read_text().splitlines()]
    smp = hicogen_rl.RECIPE["sampling"]
    common = dict(
        images_per_scene=4, num_steps=smp["eval_num_steps"],
        guidance_scale=smp["guidance_scale"], strength=hicogen_rl.RECIPE["chain"]["strength"],
    )  # fmt: skip
    own = hicogen_rl.chain_stages(adapter, rows, **common)
    cumulative = hicogen_rl.chain_stages(adapter, rows, prompt_form="cumulative", **common)
    assert own["chains"] == cumulative["chains"] == 32
    assert len(own["first_unit_found"]) == 3  # unit 1, unit 2, final
    assert own["first_unit_found"][0] == cumulative["first_unit_found"][0] >= 0.5
    assert own["flat"] == cumulative["flat"]
    assert own["first_unit_found"][1] < own["first_unit_found"][0] - 0.3  # unit 2 erased it
    assert cumulative["first_unit_found"][1] > own["first_unit_found"][1] + 0.25
    assert set(own["final"]) == set(hicogen_rl.LEVELS)

    single = sample_scene(random.Random(1), min_subjects=1, max_subjects=1, split="test", canvas=32)
    mixed = [rows[0], {"id": "one", "prompt": single.prompt(), "scene": single.to_dict()}]
    with pytest.raises(ValueError, match=r"row 1 \(one\) makes 1 units, the rows before it 2"):
        hicogen_rl.chain_stages(adapter, mixed, **common)


def test_chain_stages_compare_the_two_contexts_from_the_same_first_unit(tmp_path):
    """In context and image-to-image, unit 1 is the same draw (its prompt from the same noise,
    no reference yet) and so is the flat pass; a model without reference inputs is refused."""
    from vrl.models.diffusion import FlowMatchingAdapter
    from vrl.models.paths import resolve_pipeline_path

    path = resolve_pipeline_path("tiny-random:flux_kontext")
    adapter = FlowMatchingAdapter.from_pretrained(path)
    scenes = hicogen_rl.world_scenes(2, seed=10_000, split="test")
    prompts = hicogen_rl.write_prompts(
        tmp_path / "p.jsonl", scenes, 10_000, hicogen_rl.token_fit(path)
    )
    rows = [json.loads(line) for line in prompts.read_text().splitlines()]
    common = dict(images_per_scene=2, num_steps=2, guidance_scale=1.0, strength=0.7)
    stages = {
        context: hicogen_rl.chain_stages(adapter, rows, context=context, **common)
        for context in ("img2img", "in_context")
    }
    img2img, in_context = stages["img2img"], stages["in_context"]
    assert img2img["first_unit_found"][0] == in_context["first_unit_found"][0]
    assert img2img["flat"] == in_context["flat"]
    assert len(in_context["first_unit_found"]) == 3 and in_context["chains"] == 4
    with pytest.raises(ConfigError, match="sd3 does not"):
        sd3 = FlowMatchingAdapter.from_pretrained(resolve_pipeline_path("tiny-random:sd3"))
        hicogen_rl.chain_stages(sd3, rows, context="in_context", **common)
