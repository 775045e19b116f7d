"""Box references (`chain.boxes`): a unit pass of the chain in context also sees where its
subjects go, as one more reference image laid out by the shapes world's planner."""

from __future__ import annotations

import random

import pytest
import torch

from vrl.errors import ConfigError
from vrl.hicogen.chain import BOX_GAP_SCALE, box_image, plan_boxes, plan_chain, synthesize_chain
from vrl.models.diffusion import FlowMatchingAdapter
from vrl.models.paths import resolve_pipeline_path
from vrl.pretrain.kontext_data import TripleStream, chain_example, triple_of
from vrl.world import check, layout, render, sample_scene


def _scene(n: int, seed: int):
    return sample_scene(random.Random(seed), min_subjects=n, max_subjects=n, relation_prob=1.0)


def test_a_box_image_is_white_exactly_where_its_boxes_are():
    image = box_image([(2.0, 3.0, 6.0, 5.0), (10.4, 0.0, 12.0, 1.6)], 16, 16)
    assert image.shape == (3, 16, 16) and set(image.unique().tolist()) == {0.0, 1.0}
    white = image[0] == 1
    assert white[3:5, 2:6].all() and white[0:2, 10:12].all()
    assert white.sum() == 2 * 4 + 2 * 2  # rows 3-4 x cols 2-5, rows 0-1 x cols 10-11
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


@pytest.mark.parametrize("seed", range(4))
def test_shapes_drawn_in_their_unit_boxes_satisfy_every_relation(seed):
    """The planner's boxes are one layout of the whole scene: a render that puts each subject in
    the box its unit was shown answers every question of the scene right, relations included."""
    scene = _scene(3, seed)
    plan = plan_chain(scene, scene.prompt())
    images = plan_boxes(plan, 32)
    assert len(images) == len(plan.units) == 3
    boxes = {}
    for unit, image in zip(plan.units, images, strict=True):
        (sid,) = unit.subjects
        boxes[sid] = _white_box(image)
        assert torch.equal(image, box_image([boxes[sid]], 32, 32))
    drawn = render(scene, 32, boxes=boxes)
    assert all(check(scene, drawn).correct.values())
    assert scene.relations  # relation_prob=1: the test reads relations


def _white_box(image: torch.Tensor) -> tuple[float, float, float, float]:
    rows = image[0].any(dim=1).nonzero().flatten()
    cols = image[0].any(dim=0).nonzero().flatten()
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def _min_gap(boxes) -> float:
    """The fewest empty pixels between two of the boxes (along the axis that separates them)."""
    return min(
        max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])
        for i, a in enumerate(boxes)
        for b in boxes[i + 1 :]
    )


def test_the_chain_plans_its_boxes_further_apart_than_the_world_renders_them():
    """The chain's planner leaves BOX_GAP_SCALE times the world's gap between boxes where the scene
    has room (a model's strokes spill past a box), and the world's own gap where it has not."""
    from vrl.world.vocabulary import layout_gap

    wide = BOX_GAP_SCALE * layout_gap(32)
    widened = 0
    for seed in range(6):
        scene = _scene(3, seed)
        plan = plan_chain(scene, scene.prompt())
        boxes = [_white_box(image) for image in plan_boxes(plan, 32)]
        assert _min_gap(boxes) >= wide
        widened += _min_gap(list(layout(scene, 32).values())) < wide
    assert widened  # some of these scenes are tighter at the world's own gap
    crowded = next(  # 4 large subjects: no room for the wider gap on 32 px
        s for s in (_scene(4, k) for k in range(200))
        if _fails(lambda s=s: layout(s, 32, gap=wide)) and not _fails(lambda s=s: layout(s, 32))
    )  # fmt: skip
    plan = plan_chain(crowded, crowded.prompt())
    boxes = [_white_box(image) for image in plan_boxes(plan, 32)]
    assert boxes == [tuple(layout(crowded, 32)[sid]) for u in plan.units for sid in u.subjects]


def _fails(fn) -> bool:
    try:
        fn()
    except ValueError:
        return True
    return False


def test_a_scene_outside_the_world_has_no_layout_and_says_which():
    from vrl.hicogen.scene import Relation, Scene, Subject

    scene = Scene(
        (Subject("s0", "dragon", ("red",)), Subject("s1", "castle", ("blue",))),
        (Relation("s0", "left of", "s1"),),
    )
    prompt = "a red dragon to the left of a blue castle"
    plan = plan_chain(scene, prompt)
    with pytest.raises(ValueError, match="no world layout for 'a red dragon"):
        plan_boxes(plan, 32)


def test_a_boxed_training_pass_fills_its_box_and_nothing_else_new():
    scene = _scene(2, 1)
    example = chain_example(scene, 32, seed=1)
    for index in range(2):
        t = triple_of(example, index, "all", boxed=True)
        assert t.boxed and len(t.references) == index + 1  # unit images, then the box image
        box = t.references[-1][0] > 0
        before = example.partials[index - 1] if index else None
        background = t.target[:, :1, :1]
        new = (t.target != (before if before is not None else background)).any(0)
        assert new.any() and box[new].all()  # what the pass adds lies inside its box
    final = triple_of(example, 2, "all", boxed=True)  # the final pass has no box image
    assert not final.boxed and len(final.references) == 2


def test_the_stream_shows_boxes_at_their_rate_on_unit_passes_only():
    stream = TripleStream(3, boxes_prob=0.5, plain_fraction=0.0)
    triples = stream.batch(400)
    units = [t for t in triples if t.kind == "unit"]
    share = sum(t.boxed for t in units) / len(units)
    assert 0.4 < share < 0.6
    assert not any(t.boxed for t in triples if t.kind != "unit")
    with pytest.raises(ValueError, match="boxes_prob must be in"):
        TripleStream(0, boxes_prob=1.5)
    # at 0 the stream draws exactly what it drew before boxes existed
    old, new = TripleStream(5).batch(24), TripleStream(5, boxes_prob=0.0).batch(24)
    assert [t.prompt for t in old] == [t.prompt for t in new]


@pytest.fixture(scope="module")
def kontext():
    return FlowMatchingAdapter.from_pretrained(resolve_pipeline_path("tiny-random:flux_kontext"))


def test_each_unit_pass_sees_its_box_last_and_the_final_pass_none(kontext):
    scene = _scene(2, 2)
    plan = plan_chain(scene, scene.prompt())
    boxes = plan_boxes(plan, 32)
    chain = synthesize_chain(
        kontext, kontext.transformer, plan.unit_prompts, plan.final_prompt, batch_size=2,
        height=32, width=32, num_steps=3, context="in_context", box_images=boxes,
        schedule={"kind": "constant", "level": 0.7}, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    counts = [s.embeds.references.count for s in chain.steps]
    assert counts == [1, 2, 2]  # unit 1: its box; unit 2: unit 1's image and its box; final: units
    seq = chain.steps[0].trajectory.final.shape[1]
    for k in range(2):  # the box's tokens are its VAE latents, after the unit images
        tokens = chain.steps[k].embeds.references.tokens[:, -seq:]
        assert torch.equal(tokens, kontext.encode_images(boxes[k][None]).expand(2, -1, -1))
    final = chain.steps[-1].embeds.references.tokens
    assert torch.equal(final, torch.cat([s.trajectory.final for s in chain.steps[:2]], dim=1))
    # a stored transition re-scores bit for bit with the box among its references
    from vrl.samplers import score_step

    traj = chain.steps[1].trajectory
    with torch.no_grad():
        v = kontext.velocity(
            kontext.transformer, traj.latents[:, 1], traj.sigmas[1], chain.steps[1].embeds
        )
    assert torch.equal(score_step(traj, 1, v).log_prob, traj.log_probs[:, 1])


def test_wrong_boxes_are_refused_by_name(kontext):
    settings = dict(batch_size=2, height=32, width=32, num_steps=2)
    units, final = ["a red circle", "a blue square"], "a red circle and a blue square"
    with pytest.raises(ValueError, match="1 box images for 2 units"):
        synthesize_chain(kontext, kontext.transformer, units, final, context="in_context",
                         box_images=[torch.zeros(3, 32, 32)], **settings)  # fmt: skip
    with pytest.raises(ValueError, match=r"box image of unit 2 has shape \(3, 16, 16\)"):
        synthesize_chain(kontext, kontext.transformer, units, final, context="in_context",
                         box_images=[torch.zeros(3, 32, 32), torch.zeros(3, 16, 16)],
                         **settings)  # fmt: skip
    with pytest.raises(ConfigError, match="need context in_context"):
        synthesize_chain(kontext, kontext.transformer, units, final, context="img2img",
                         box_images=[torch.zeros(3, 32, 32)] * 2, **settings)  # fmt: skip


def test_the_trainer_config_refuses_boxes_it_cannot_draw(tmp_path):
    from vrl.config import load_config
    from vrl.trainers.diffusion_config import DiffusionTrainConfig

    recipe = "configs/hicogen_tiny_cpu.yaml"
    with pytest.raises(ValueError, match="need chain.context in_context"):
        load_config(DiffusionTrainConfig, recipe, ["chain.boxes=world", "chain.context=img2img"])
    with pytest.raises(ValueError, match="lays out square images"):
        load_config(DiffusionTrainConfig, recipe,
                    ["chain.boxes=world", "sampling.height=32", "sampling.width=64"])  # fmt: skip


def test_the_trainer_rolls_out_and_rescores_every_unit_pass_with_its_box(tmp_path, monkeypatch):
    """chain.boxes=world on a tiny FLUX Kontext: unit 1 sees its box (16 noisy tokens + 16), unit 2
    its predecessor and its box (+ 32), the final pass both unit images (+ 32), in the rollout,
    in the evaluation and in the update alike: no pass runs without a reference."""
    import json
    import math
    from pathlib import Path

    from vrl.config import load_config
    from vrl.trainers import diffusion_grpo
    from vrl.trainers.common import read_metrics
    from vrl.trainers.diffusion_config import DiffusionTrainConfig

    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "a red circle to the left of a blue square"},
            {"prompt": "a green triangle above a yellow circle"}]  # fmt: skip
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [
        f"run.output_dir={tmp_path / 'run'}", "run.save_every=0", "run.save_final=false",
        f"prompts.train={prompts}", "prompts.num_eval=1", "chain.enabled=true",
        "chain.boxes=world", "model.path=tiny-random:flux_kontext", "grpo.group_size=2",
        "grpo.prompts_per_step=1", "sampling.num_steps=3", "sampling.eval_num_steps=3",
        "sampling.height=32", "sampling.width=32", "run.max_steps=1", "eval.ema=false",
        "grpo.rewards={}", "hierarchical={judge: world, weights: {global: 1.0, relation: 1.0}}",
    ]  # fmt: skip
    recipe = Path(__file__).resolve().parents[1] / "configs" / "diffusion_tiny_cpu.yaml"
    cfg = load_config(DiffusionTrainConfig, recipe, overrides)
    lengths: list[tuple[bool, int]] = []
    real_load = diffusion_grpo.load_diffusion_policy

    def load_with_hook(*args, **kwargs):
        adapter, ref = real_load(*args, **kwargs)
        adapter.transformer.register_forward_pre_hook(
            lambda m, a, kw: lengths.append((m.training, kw["hidden_states"].shape[1])),
            with_kwargs=True,
        )
        return adapter, ref

    monkeypatch.setattr(diffusion_grpo, "load_diffusion_policy", load_with_hook)
    diffusion_grpo.train(cfg)
    rollout = {n for training, n in lengths if not training}
    update = {n for training, n in lengths if training}
    assert rollout == {32, 48} and update == {32, 48}
    record = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert math.isfinite(record["loss"]) and record["chain/passes"] == 3
