"""The diffusion objectives table: every name the config accepts scores an item into (loss,
statistics) with the documented keys; an unknown name is refused by the config, naming the field."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import torch

from vrl.config import ConfigError, load_config
from vrl.models.diffusion import FlowMatchingAdapter
from vrl.models.paths import resolve_pipeline_path
from vrl.samplers import from_config, sample
from vrl.trainers.diffusion_config import DiffusionGRPOSettings, DiffusionTrainConfig
from vrl.trainers.objectives import (
    OBJECTIVES,
    STATS,
    ObjectiveContext,
    RolloutChunk,
    objective_metrics,
)

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "diffusion_tiny_cpu.yaml"
SURROGATE = {"clip_fraction", "approx_kl", "ratio"}  # sde and awm: the clipped surrogate's


def test_the_config_offers_exactly_the_table():
    choices = typing.get_args(typing.get_type_hints(DiffusionGRPOSettings)["objective"])
    assert set(choices) == set(OBJECTIVES)


def test_an_unknown_objective_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"grpo\.objective: .*got 'ddpo'"):
        load_config(DiffusionTrainConfig, RECIPE, ["grpo.objective=ddpo"])


@pytest.fixture(scope="module")
def rollout():
    """A tiny SD3 under LoRA and one stochastic rollout of two images, four steps."""
    adapter = FlowMatchingAdapter.from_pretrained(resolve_pipeline_path("tiny-random:sd3"))
    adapter.add_lora(4, 8)
    gen = torch.Generator().manual_seed(0)
    levels = from_config({"kind": "constant", "level": 0.7}).levels(4, generator=gen)
    embeds = adapter.encode_prompts(["a red circle", "a red circle"])
    with torch.no_grad():
        trajectory = sample(
            adapter.velocity_fn(adapter.transformer, embeds),
            adapter.initial_noise(2, 32, 32, gen),
            adapter.sigmas(4, 32, 32),
            step="sde",
            schedule=levels,
            generator=gen,
        )
    return adapter, embeds, trajectory, levels


@pytest.mark.parametrize("beta", [0.0, 0.1])
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_each_objective_scores_an_item_into_a_loss_and_its_statistics(rollout, name, beta):
    adapter, embeds, trajectory, levels = rollout
    cfg = load_config(
        DiffusionTrainConfig, RECIPE,
        [f"grpo.objective={name}", f"grpo.beta={beta}", "sampling.num_steps=4"],
    )  # fmt: skip
    chunk = RolloutChunk(embeds, trajectory, advantages=torch.tensor([1.0, -1.0]))
    model = adapter.transformer
    ctx = ObjectiveContext(adapter, model, model, None, cfg)  # reference: the adapter disabled
    objective = OBJECTIVES[name]
    work = objective.work(ctx, [chunk], levels, torch.Generator().manual_seed(1),
                          torch.Generator().manual_seed(2), None)  # fmt: skip
    # sde: the 4 stochastic steps but the last; awm, nft: awm_times (2) noised copies
    assert len(work) == (3 if name == "sde" else cfg.grpo.awm_times)
    stats: dict[str, list[float]] = {k: [] for k in STATS}
    for item_chunk, item in work:
        assert item_chunk is chunk
        loss, item_stats = objective.loss(ctx, chunk, item, 2 * len(work))
        assert loss.ndim == 0 and loss.requires_grad and torch.isfinite(loss)
        expected = (set() if name == "nft" else SURROGATE) | ({"kl"} if beta else set())
        assert set(item_stats) == expected
        assert all(isinstance(v, float) for v in item_stats.values())
        if name != "nft":  # the policy has not moved: ratio 1 exactly, nothing clipped
            assert item_stats["ratio"] == 1.0 and item_stats["clip_fraction"] == 0.0
        if beta:  # LoRA B starts at 0: the policy is the reference
            assert item_stats["kl"] == 0.0
        loss.backward()
        for key, value in item_stats.items():
            stats[key].append(value)
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)
    summary = objective_metrics(stats)
    assert set(summary) == {"clip_fraction", "approx_kl", "ratio_mean", "ratio_first", "kl"}
    assert (summary["ratio_first"] == 1.0) is (name != "nft")
