"""HiCoGen through `vrl train diffusion`: scene metadata -> units -> chain rollout -> levels."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vrl.config import ConfigError, load_config
from vrl.data.t2i import ImageSample, load_prompts
from vrl.data.vlm_r1 import DataError
from vrl.hicogen.chain import plan_chain
from vrl.hicogen.decompose import DecompositionResult, LLMDecomposer
from vrl.hicogen.scene import Scene
from vrl.rewards import available_rewards
from vrl.rewards.hierarchical_models import build_hierarchical_reward, build_level_rewards
from vrl.trainers.common import read_metrics
from vrl.trainers.diffusion_config import DiffusionTrainConfig
from vrl.trainers.diffusion_grpo import attach_scenes, train, unit_advantages

ROOT = Path(__file__).resolve().parents[1]
SCENE = {
    "subjects": [
        {"id": "c", "name": "circle", "attributes": ["red"]},
        {"id": "s", "name": "square", "attributes": ["blue"]},
    ],
    "relations": [{"subject": "c", "predicate": "left of", "object": "s"}],
}
# the global level on a tiny CLIP; subject: detector + DINO of the crop vs the unit image;
# relation: detector geometry (the VLM term is exercised in tests/test_rewards_hierarchical.py)
LEVELS = [
    "grpo.rewards={}",
    "hierarchical={weights: {global: 1.0, subject: 1.0, relation: 1.0}, models: {clip: {path: "
    "tiny-random}, detector: {path: tiny-random}, dino: {path: tiny-random}}}",
]


def prompt_file(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": "a red circle to the left of a blue square", "scene": SCENE},
        {"prompt": "a green triangle above a yellow circle"},  # no metadata: template parser
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chain_config(tmp_path: Path, *overrides: str) -> DiffusionTrainConfig:
    base = [
        f"run.output_dir={tmp_path / 'run'}",
        "run.save_every=0",
        "run.save_final=false",
        f"prompts.train={prompt_file(tmp_path)}",
        "prompts.num_eval=2",
        "chain.enabled=true",
        "grpo.group_size=4",
        "grpo.prompts_per_step=1",
        "sampling.num_steps=4",
        "sampling.eval_num_steps=4",
        "sampling.noise={kind: decaying, eta_max: 1.0, eta_min: 0.3}",
        "run.max_steps=2",
        "eval.ema=false",
    ]
    recipe = ROOT / "configs" / "diffusion_tiny_cpu.yaml"
    return load_config(DiffusionTrainConfig, recipe, base + LEVELS + list(overrides))


def test_chain_training_from_a_recipe_logs_every_level_and_moves_lora(tmp_path):
    cfg = chain_config(tmp_path)
    summary = train(cfg)
    assert summary["scenes"] == {"metadata": 1, "template": 1}
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(records) == 2
    for record in records:
        for level in ("hier_global", "hier_subject", "hier_relation"):
            assert math.isfinite(record[f"rewards/{level}"]), level
        assert math.isfinite(record["loss"])
        assert record["chain/passes"] == 3  # two units, then the final pass
        # 3 passes: 4 steps from noise + 2 image-to-image steps from sigma <= 0.7 each, the last
        # step of every pass skipped -> 3 + 1 + 1 trained transitions per image
        assert record["trained_steps"] == 5
    assert records[0]["ratio_first"] == 1.0  # re-scored under the rollout policy
    lora_b = [p for n, p in summary["adapter"].transformer.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)
    for when in ("before", "after"):
        assert set(summary["eval"][when]) >= {"reward", "hier_global", "hier_subject"}
    chains = tmp_path / "run" / "eval" / "step-0-chains.png"
    from PIL import Image

    with Image.open(chains) as grid:  # 2 prompts x 3 passes of 32 px (+ 1 px padding)
        assert grid.size == (3 * 33 + 1, 2 * 33 + 1)


@pytest.mark.parametrize("objective", ["sde", "awm", "nft"])
def test_a_flux_chain_trains_in_context_with_the_rollouts_references(
    tmp_path, monkeypatch, objective
):
    """chain.context=auto on a FLUX Kontext pipeline: unit 2 and the final pass take the earlier
    unit images as tokens (16 noisy tokens + 16 per reference at 32 px), in the rollout and in
    the update, whichever objective re-scores the passes (stored steps, or noised copies)."""
    cfg = chain_config(
        tmp_path, "model.path=tiny-random:flux_kontext", "run.max_steps=1",
        f"grpo.objective={objective}",
    )  # fmt: skip
    lengths: list[tuple[bool, int]] = []

    def record(module, args, kwargs):
        lengths.append((module.training, kwargs["hidden_states"].shape[1]))

    from vrl.trainers import diffusion_grpo

    real_load = diffusion_grpo.load_diffusion_policy

    def load_with_hook(*args, **kwargs):
        adapter, ref = real_load(*args, **kwargs)
        adapter.transformer.register_forward_pre_hook(record, with_kwargs=True)
        return adapter, ref

    monkeypatch.setattr(diffusion_grpo, "load_diffusion_policy", load_with_hook)
    summary = train(cfg)
    rollout = {n for training, n in lengths if not training}
    update = {n for training, n in lengths if training}
    assert {16, 32, 48} <= rollout  # unit 1 alone, unit 2 + 1 reference, final + 2 references
    assert {32, 48} <= update  # the update re-scores the passes with the same references
    record_ = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert math.isfinite(record_["loss"]) and record_["chain/passes"] == 3
    if objective == "sde":
        assert record_["trained_steps"] == 9  # 3 passes from noise, 3 of 4 steps each
    lora_b = [p for n, p in summary["adapter"].transformer.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)


def test_unit_credit_grades_unit_images_against_the_partial_scene(tmp_path):
    cfg = chain_config(tmp_path, "chain.credit=unit", "run.max_steps=1")
    train(cfg)
    record = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert math.isfinite(record["chain/unit_reward"])
    assert math.isfinite(record["loss"])


def test_awm_trains_every_pass_of_the_chain_by_matching_its_own_image(tmp_path):
    from vrl.samplers.loop import Trajectory
    from vrl.trainers.objectives import RolloutChunk, matching_item

    summary = train(chain_config(tmp_path, "grpo.objective=awm", "run.max_steps=1"))
    record = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert record["chain/passes"] == 3
    assert record["trained_steps"] == 2 * 3  # awm_times (2) noised copies per pass's image
    assert record["ratio_first"] == 1.0 and math.isfinite(record["loss"])
    lora_b = [p for n, p in summary["adapter"].transformer.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)
    # an image-to-image pass (sigmas from the strength) is only noised up to where it started
    sigmas = torch.tensor([0.7, 0.4, 0.0])
    latents = torch.rand(64, 3, 3, 4, 4)
    traj = Trajectory(latents, torch.zeros(64, 2), sigmas, torch.ones(2))
    item = matching_item(RolloutChunk(None, traj), torch.Generator().manual_seed(0))
    assert 0.0 < float(item.sigma.min()) and float(item.sigma.max()) <= 0.7
    t = item.sigma.view(-1, 1, 1, 1)
    noise = item.target + traj.final  # target = noise - x_0
    assert torch.allclose(item.x_t, (1 - t) * traj.final + t * noise, atol=1e-6)


def test_same_seed_same_chain_run(tmp_path):
    a = train(chain_config(tmp_path / "a", "run.max_steps=1"))["rewards"]
    b = train(chain_config(tmp_path / "b", "run.max_steps=1"))["rewards"]
    assert a == b


def test_unit_advantages_per_column_and_zero_where_a_unit_is_absent():
    grpo = SimpleNamespace(group_size=2, advantage_scale="group", adv_clip_max=5.0)
    nan = math.nan
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, nan], [0.5, nan]])  # 2 groups, 2 units
    adv = unit_advantages(table, grpo)
    assert adv[0, 0] > 0 > adv[1, 0] and adv[0, 1] < 0 < adv[1, 1]
    assert adv[0, 0] == pytest.approx(-adv[1, 0])
    assert torch.equal(adv[2:], torch.zeros(2, 2))  # equal rewards / no second unit: no signal


def test_plan_chain_units_prompts_partial_scenes_and_references():
    scene = Scene.from_json(
        {
            "subjects": [
                {"id": "a", "name": "circle", "attributes": ["red"]},
                {"id": "b", "name": "square", "attributes": ["blue"]},
                {"id": "c", "name": "triangle", "attributes": ["green"]},
            ],
            "relations": [{"subject": "a", "predicate": "left of", "object": "b"}],
        }
    )
    plan = plan_chain(scene, "FULL")
    assert plan.unit_prompts == ("A red circle", "A blue square", "A green triangle")
    assert plan.final_prompt == "FULL"
    assert [s.id for s in plan.partial_scene(0).subjects] == ["a"]
    assert plan.partial_scene(0).relations == ()
    assert len(plan.partial_scene(1).relations) == 1  # both ends drawn by unit 2
    assert plan.partial_prompt(1) == "A red circle to the left of a blue square"
    merged = plan_chain(scene, "FULL", max_units=2)
    assert [u.subjects for u in merged.units] == [("a",), ("b", "c")]
    assert merged.unit_prompts[1] == "A blue square and a green triangle"
    cumulative = plan_chain(scene, "FULL", form="cumulative")
    assert cumulative.unit_prompts[1] == "A red circle to the left of a blue square"
    relational = plan_chain(scene, "FULL", form="relational")
    assert relational.unit_prompts[1] == "A blue square to the right of the red circle"
    # the global part goes with every unit, the style as well as the background
    styled = plan_chain(replace(scene, background="dark grey", style="flat"), "FULL")
    assert all(p.endswith("on a dark grey background, flat style") for p in styled.unit_prompts)
    images = [torch.full((2, 3, 4, 4), float(k)) for k in range(4)]
    refs = plan.references(SimpleNamespace(steps=[SimpleNamespace(image=i) for i in images]), 1)
    assert {k: v[0, 0, 0].item() for k, v in refs.items()} == {"a": 0.0, "b": 1.0, "c": 2.0}


def test_a_bad_scene_line_names_file_line_and_field(tmp_path):
    path = tmp_path / "p.jsonl"
    bad = {"prompt": "x", "scene": {"subjects": [{"name": "a"}], "relations": [["a", "on", "z"]]}}
    path.write_text(json.dumps({"prompt": "ok", "scene": SCENE}) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r'p\.jsonl:2: field "scene": relations\[0\]'):
        load_prompts(path)
    rows = load_prompts(path, skip_bad_lines=True)  # the good line survives, parsed
    assert len(rows) == 1 and isinstance(rows[0].scene, Scene)
    assert rows[0]["scene"] is rows[0].scene  # and reads like the row it was


def test_llm_decompositions_are_cached_and_reused(tmp_path, monkeypatch):
    calls = []

    def fake_from_pretrained(path, **kwargs):
        def decompose(prompt):
            calls.append(prompt)
            scene = Scene.from_json({"subjects": [{"name": prompt.split()[-1]}]})
            return DecompositionResult(scene, "llm", 1)

        return decompose

    monkeypatch.setattr(LLMDecomposer, "from_pretrained", staticmethod(fake_from_pretrained))
    chain = SimpleNamespace(decompose="llm", llm="some/folder")
    cache = tmp_path / "scenes.jsonl"
    rows = [
        ImageSample("a big dog"),
        ImageSample("one cat"),
        ImageSample("m", Scene.from_json(SCENE)),
    ]
    scened, sources = attach_scenes([*rows, rows[0]], chain, cache)
    assert sources == {"llm": 2, "metadata": 1}  # a sample listed twice counts once
    assert [r.scene.subjects[0].name for r in scened] == ["dog", "cat", "circle", "dog"]
    again = [ImageSample("a big dog"), ImageSample("one cat")]
    scened_again, sources = attach_scenes(again, chain, cache)
    assert sources == {"cache": 2}  # a resumed run: no LLM call
    assert calls == ["a big dog", "one cat"] and scened_again[0].scene == scened[0].scene


def test_an_image_sample_reads_like_the_row_it_was():
    row = {"prompt": "a red circle", "scene": SCENE, "tag": "position", "id": "p-1"}
    sample = ImageSample.from_row(row)
    assert isinstance(sample.scene, Scene) and sample.extra == {"tag": "position", "id": "p-1"}
    assert sample["prompt"] == "a red circle" and sample["tag"] == "position"
    assert sample["scene"] is sample.scene and sample.get("references") is None
    assert "references" not in sample and "tag" in sample
    with pytest.raises(KeyError):
        ImageSample("x")["scene"]  # no scene reads as a missing key, as in a row
    image = torch.zeros(3, 4, 4)
    ref = sample.with_references({"c": image})
    assert ref["references"]["c"] is image and not sample.references  # a new sample
    assert {**ref}.keys() == {"prompt", "scene", "references", "tag", "id"}
    unit = ref.with_scene(Scene.from_json({"subjects": [{"name": "circle"}]}), "a circle")
    assert unit.prompt == "a circle" and unit.references is ref.references


def test_level_models_are_built_once_and_missing_ones_are_named():
    with pytest.raises(ValueError, match=r"subject level .*models\.dino or .*models\.vlm$"):
        build_level_rewards({"detector": {"path": "tiny-random"}}, ["subject"])
    with pytest.raises(ValueError, match=r"hierarchical\.models\.vlm: give a mapping with a path"):
        build_level_rewards({"vlm": "Qwen/Qwen2.5-VL-3B-Instruct"}, ["relation"])
    with pytest.raises(ValueError, match=r"hierarchical\.models\.clipp: unknown model"):
        build_level_rewards({"clipp": {"path": "tiny-random"}}, ["global"])
    registry = available_rewards()
    models = {"detector": {"path": "tiny-random"}, "dino": {"path": "tiny-random"}}
    reward = build_hierarchical_reward(
        weights={"relation": 2.0, "subject": 1.0}, terms={"relation": {"w_geometry": 3.0}},
        models=models,
    )  # fmt: skip
    subject, relation = reward.levels["subject"], reward.levels["relation"]
    assert subject.detector is relation.detector is reward.models["detector"]  # built once
    assert reward.levels["global"] is None and relation.weights["geometry"] == 3.0
    assert {n: w for n, (_, w) in reward.components().items()} == {
        "hier_relation": 2.0,
        "hier_subject": 1.0,
    }
    assert available_rewards() == registry  # nothing registered, nothing replaced
    assert build_hierarchical_reward(weights={}) is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("hierarchical.weights={glob: 1}", r"hierarchical\.weights\.glob: unknown level"),
        ("hierarchical.terms={subject: {w_din: 1}}", r"hierarchical\.terms\.subject\.w_din"),
        ("hierarchical.models.clipp={path: x}", r"hierarchical\.models\.clipp: unknown model"),
        ("hierarchical.judge=world", r"hierarchical\.models: judge=world .* leave it out"),
        ("grpo.rewards={hier_global: 1}", r"grpo\.rewards\.hier_global: .*hierarchical\.weights"),
        ("reward_models={clip: {path: x}}", r"reward_models: unknown key"),
        ("hierarchical={}", r"no reward: .*grpo\.rewards .*hierarchical\.weights"),
    ],
)
def test_a_wrong_hierarchical_field_is_named(override, message):
    recipe = ROOT / "configs" / "hicogen_tiny_cpu.yaml"
    with pytest.raises(ConfigError, match=message):
        load_config(DiffusionTrainConfig, recipe, [override])


RECIPES = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_recipe_loads_and_validates(recipe):
    from vrl.trainers.vlm_config import VLMTrainConfig

    cls = VLMTrainConfig if "vlm" in recipe.stem else DiffusionTrainConfig  # quickstart_vlm too
    load_config(cls, recipe)


@pytest.mark.parametrize("name", ["hicogen_flux_dev", "hicogen_sd3_5_medium"])
def test_gpu_hicogen_recipes_carry_the_paper_settings(name):
    cfg = load_config(DiffusionTrainConfig, ROOT / "configs" / f"{name}.yaml")
    assert cfg.model.lora.enabled and cfg.grpo.group_size == 16 and cfg.optim.lr == 1e-4
    assert cfg.sampling.noise["kind"] == "decaying" and cfg.sampling.noise["eta_max"] == 1.0
    assert cfg.chain.enabled
    assert cfg.grpo.rewards == {}  # all the reward's weights are in one place:
    assert cfg.hierarchical.weights == {"global": 1.0, "subject": 1.0, "relation": 1.0}
    assert {"clip", "preference", "detector", "dino", "vlm"} <= set(cfg.hierarchical.models)
    detector = cfg.hierarchical.models["detector"]  # the paper's detector
    assert detector["kind"] == "grounding_dino" and "grounding-dino" in detector["path"]


def test_unit_prompt_form_is_chosen_in_the_recipe_and_the_old_switch_still_reads():
    recipe = ROOT / "configs" / "hicogen_tiny_cpu.yaml"
    assert load_config(DiffusionTrainConfig, recipe).chain.unit_prompts == "own"
    told = load_config(DiffusionTrainConfig, recipe, ["chain.unit_prompts=relational"])
    assert told.chain.unit_prompts == "relational"
    old = load_config(DiffusionTrainConfig, recipe, ["chain.cumulative_prompts=true"])
    assert old.chain.unit_prompts == "cumulative"
    with pytest.raises(ConfigError, match="chain.unit_prompts"):
        load_config(DiffusionTrainConfig, recipe, ["chain.unit_prompts=told"])
    with pytest.raises(
        (ConfigError, ValueError), match="contradicts chain.unit_prompts=relational"
    ):
        load_config(
            DiffusionTrainConfig,
            recipe,
            ["chain.cumulative_prompts=true", "chain.unit_prompts=relational"],
        )
