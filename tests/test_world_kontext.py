"""The shapes world's in-context (FLUX Kontext architecture) model: its training triples, the
pipeline, the `vrl pretrain world-kontext` loop and the saved folder through the adapter."""

from __future__ import annotations

import json
import random

import pytest
import torch

from vrl.pretrain.kontext_data import (
    TripleStream,
    chain_example,
    group_by_references,
    triple_of,
)
from vrl.world import sample_scene


def _example(n: int, seed: int = 0):
    rng = random.Random(seed)
    scene = sample_scene(rng, min_subjects=n, max_subjects=n, relation_prob=1.0)
    return scene, chain_example(scene, 32, seed=seed)


def _drawn(image: torch.Tensor) -> torch.Tensor:
    """(H, W) mask of the pixels that differ from the background (the top-left corner's colour,
    which the layout's border keeps empty)."""
    return (image != image[:, :1, :1]).any(dim=0)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_reference_subject_sits_at_the_same_pixels_in_the_target(n):
    scene, example = _example(n, seed=n)
    assert len(example.partials) == n and torch.equal(example.partials[-1], example.full)
    for index in range(n + 1):
        for mode in ("all", "last"):
            t = triple_of(example, index, mode)
            mask = _drawn(t.target)
            for ref in t.references:
                ref_mask = _drawn(ref)
                assert ref_mask.any()
                # every drawn pixel of the reference is drawn, in the same colour, in the target
                assert torch.equal(ref[:, ref_mask], t.target[:, ref_mask])
                assert mask[ref_mask].all()
            if t.references:  # the target adds this pass's subject (or nothing: the final pass)
                assert mask.sum() >= _drawn(t.references[-1]).sum()


def test_reference_counts_and_prompts_follow_the_chain():
    scene, example = _example(3, seed=7)
    assert example.unit_subjects == (("s0",), ("s0", "s1"), ("s0", "s1", "s2"))
    counts = {(i, m): len(triple_of(example, i, m).references) for i in range(4)
              for m in ("all", "last")}  # fmt: skip
    assert counts == {(0, "all"): 0, (0, "last"): 0, (1, "all"): 1, (1, "last"): 1,
                      (2, "all"): 2, (2, "last"): 1, (3, "all"): 3, (3, "last"): 3}  # fmt: skip
    last = triple_of(example, 2, "last")
    assert last.subjects == (("s0", "s1"),) and torch.equal(last.references[0], example.partials[1])
    final = triple_of(example, 3, "all")
    assert final.kind == "final" and final.prompt == scene.prompt()
    assert torch.equal(final.target, example.full)
    unit = triple_of(example, 1, "all")
    assert unit.kind == "unit" and unit.prompt == scene.unit_prompt(scene.default_units()[1])
    with pytest.raises(ValueError, match="pass 4"):
        triple_of(example, 4, "all")
    # told cumulatively, a unit pass hears every subject so far and where it goes
    told = triple_of(example, 1, "all", "cumulative")
    assert told.prompt == scene.unit_prompt(scene.default_units()[1], "cumulative")
    relation = scene.relations[0]
    assert {relation.subject, relation.object} == {"s0", "s1"}
    assert scene.noun_phrase("s1").split()[-1] in told.prompt  # the new subject
    assert scene.noun_phrase("s0").split()[-1] in told.prompt and told.prompt != unit.prompt
    assert torch.equal(told.target, unit.target) and len(told.references) == 1
    placed = triple_of(example, 1, "last", "relational")
    assert placed.prompt == scene.unit_prompt(scene.default_units()[1], "relational")
    assert placed.prompt.startswith(
        scene.noun_phrase("s1")[:1].upper() + scene.noun_phrase("s1")[1:]
    )
    assert scene.definite("s0") in placed.prompt  # the earlier subject by reference
    assert torch.equal(placed.target, unit.target)


def test_told_unit_prompts_come_at_their_rate_and_leave_the_old_stream_as_it_was():
    def units(stream):
        return [t for _ in range(10) for t in stream.batch(16) if t.kind == "unit"]

    old = TripleStream(3, fresh=4)
    same = TripleStream(3, fresh=4, cumulative_prob=0.0)
    assert [t.prompt for t in units(old)] == [t.prompt for t in units(same)]
    stream = TripleStream(3, fresh=4, cumulative_prob=1.0)
    told, examples = units(stream), stream.pool
    every = {p for e in examples for p in e.told["cumulative"]}
    assert told and all(t.prompt in every for t in told)
    # a unit pass after the first told cumulatively names more than its own subject
    later = [t for t in told if t.references]
    own = {p for e in examples for p in e.unit_prompts[1:]}
    assert later and not any(t.prompt in own for t in later)
    with pytest.raises(ValueError, match="cumulative_prob"):
        TripleStream(0, cumulative_prob=1.5)
    # the two told forms share one draw: at 0.5 / 0.5 every later unit pass is told one of them
    mixed = TripleStream(3, fresh=4, cumulative_prob=0.5, relational_prob=0.5)
    later = [t for t in units(mixed) if t.references]
    by_form = {
        form: {p for e in mixed.pool for p in e.told[form][1:]}
        for form in ("cumulative", "relational")
    }
    counts = {form: sum(t.prompt in prompts for t in later) for form, prompts in by_form.items()}
    assert counts["cumulative"] > 0.3 * len(later) and counts["relational"] > 0.3 * len(later)
    assert sum(counts.values()) == len(later)
    with pytest.raises(ValueError, match="relational_prob"):
        TripleStream(0, cumulative_prob=0.5, relational_prob=0.6)


def test_the_stream_mixes_in_plain_text_to_image_at_its_fraction():
    stream = TripleStream(0, plain_fraction=0.25, fresh=4)
    triples = [t for _ in range(40) for t in stream.batch(16)]
    plain = [t for t in triples if t.kind == "plain"]
    assert abs(len(plain) / len(triples) - 0.25) < 0.05
    assert all(not t.references for t in plain)
    assert {t.kind for t in triples} == {"plain", "unit", "final"}
    groups = group_by_references(triples)
    assert set(groups) == {0, 1, 2, 3}
    assert all(len(t.references) == r for r, ts in groups.items() for t in ts)
    # the same seed, the same stream
    again = TripleStream(0, plain_fraction=0.25, fresh=4).batch(16)
    first = TripleStream(0, plain_fraction=0.25, fresh=4).batch(16)
    assert [t.prompt for t in again] == [t.prompt for t in first]
    assert all(torch.equal(a.target, b.target) for a, b in zip(again, first, strict=True))
    none = TripleStream(1, plain_fraction=0.0).batch(32)
    assert not any(t.kind == "plain" for t in none)


# A recipe small enough for a CLI run of a few seconds.
TINY = ["steps=40", "vae_steps=3", "vae_batch=8", "layers=1", "single_layers=1", "heads=2",
        "text_width=16", "batch_size=8", "fresh=2", "warmup=5", "lr=3e-3", "eval_scenes=4",
        "sample_steps=3"]  # fmt: skip


@pytest.mark.slow  # ~10 s on one thread
def test_pretrain_world_kontext_trains_saves_and_draws_a_chain_in_context(tmp_path):
    from vrl.cli import main
    from vrl.hicogen.chain import resolve_context, synthesize_chain
    from vrl.models.diffusion import FlowMatchingAdapter, FluxAdapter

    out = tmp_path / "kontext"
    argv = ["pretrain", "world-kontext", "--seed", "0", "--out", str(out), "--threads", "1"]
    argv += ["--extra", *TINY]
    assert main(argv) == 0
    losses = json.loads((out / "losses.json").read_text())
    assert len(losses) == 40 and sum(losses[-10:]) < 0.85 * sum(losses[:10])  # falling
    summary = json.loads((out / "quality.json").read_text())
    assert set(summary["quality"]) == {
        "1-subject test",
        "1-subject train",
        "2-subject chain (test)",
    }
    assert "world-kontext" in (out / "README.md").read_text()

    adapter = FlowMatchingAdapter.from_pretrained(out)
    assert isinstance(adapter, FluxAdapter) and adapter.trained_on_references
    assert resolve_context(adapter, "auto") == "in_context"
    chain = synthesize_chain(
        adapter, adapter.transformer, ["a small red circle", "a large blue square"],
        "a small red circle to the left of a large blue square", batch_size=2, height=32,
        width=32, num_steps=3, guidance_scale=2.0, context="in_context", step="ode",
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert [s.image.shape for s in chain.steps] == [(2, 3, 32, 32)] * 3
    assert [s.embeds.references for s in chain.steps][0] is None
    assert [s.embeds.references.count for s in chain.steps[1:]] == [1, 2]
    assert all(torch.isfinite(s.image).all() for s in chain.steps)

    # a second run continues from the first one's weights (init=): with no step it saves them
    more = tmp_path / "more"
    argv = ["pretrain", "world-kontext", "--seed", "0", "--out", str(more), "--threads", "1"]
    assert main([*argv, "--extra", *TINY, f"init={out}", "steps=0"]) == 0
    again = FlowMatchingAdapter.from_pretrained(more)
    for name in ("transformer", "text_encoder_2", "vae"):
        first = getattr(adapter.pipeline, name).state_dict()
        assert all(
            torch.equal(t, first[k]) for k, t in getattr(again.pipeline, name).state_dict().items()
        )
    assert json.loads((more / "quality.json").read_text())["init"] == str(out)
    # its card lists both stages, the second continuing from the first
    stages = json.loads((more / "quality.json").read_text())["lineage"]
    assert [st["steps"] for st in stages] == [summary["steps"], 0]
    assert stages[0]["vae_steps"] > 0 and stages[1]["vae_steps"] == 0
    assert stages[0]["one_subject_exist"] == summary["quality"]["1-subject test"]["exist"]
    card = (more / "README.md").read_text()
    # the continued folder records no path of this machine (its VAE came from the first folder)
    for config in [more / "model_index.json", *more.glob("*/config.json")]:
        assert "_name_or_path" not in json.loads(config.read_text()), config
    row = next(line for line in card.splitlines() if line.startswith("| 2 | `vrl pretrain"))
    assert " steps=0 " in row and row.count("init=<stage 1>`") == 1


def test_pixel_space_is_for_timing_only():
    from vrl.pretrain.kontext import KontextConfig, build_pipeline, time_step

    cfg = KontextConfig.from_overrides(["vae_down=1", "layers=1", "single_layers=1", "heads=1"])
    assert cfg.grid == 16  # 256 tokens per 32 px image
    assert time_step(cfg, references=1, repeats=1, batch=2) > 0
    with pytest.raises(ValueError, match="timing only"):
        build_pipeline(cfg)
