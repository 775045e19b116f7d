"""Chain of Synthesis on a tiny SD3: N units give N + 1 images; one RL step over the chain."""

from __future__ import annotations

import math

import pytest
import torch

from vrl.hicogen.chain import chain_policy_loss, img2img_start, synthesize_chain
from vrl.models.diffusion import FlowMatchingAdapter
from vrl.models.paths import resolve_pipeline_path
from vrl.rewards import get_reward

UNITS = ["a red circle", "a blue square", "a green triangle"]
FINAL = "a red circle left of a blue square above a green triangle"


@pytest.fixture
def adapter():
    a = FlowMatchingAdapter.from_pretrained(resolve_pipeline_path("tiny-random:sd3"))
    a.add_lora(4, 8)
    return a


def test_img2img_start_index():
    sigmas = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    assert img2img_start(sigmas, 1.0) == 0
    assert img2img_start(sigmas, 0.6) == 2
    assert img2img_start(sigmas, 0.5) == 3
    with pytest.raises(ValueError, match="strength"):
        img2img_start(sigmas, 0.0)


def test_three_units_give_four_images_each_starting_from_the_last_canvas(adapter):
    chain = synthesize_chain(
        adapter, adapter.transformer, UNITS, FINAL, batch_size=2, height=32, width=32,
        num_steps=6, strength=0.6, schedule={"kind": "decaying", "eta_max": 1.0, "eta_min": 0.2},
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert len(chain.images) == 4 and [s.prompt for s in chain.steps] == [*UNITS, FINAL]
    assert all(img.shape == (2, 3, 32, 32) for img in chain.images)
    first, later = chain.steps[0].trajectory, chain.steps[1].trajectory
    assert first.num_steps == 6 and later.num_steps < 6  # image-to-image skips the noisiest steps
    assert later.sigmas[0] <= 0.6 + 1e-6
    assert torch.isfinite(first.log_probs).all() and (first.log_probs[:, :-1] != 0).all()
    # each step starts from the previous canvas: its first latent mixes the canvas and fresh noise
    prev, s0 = chain.steps[0].trajectory.final, later.sigmas[0]
    noise = (later.latents[:, 0] - (1 - s0) * prev) / s0
    assert noise.std().item() == pytest.approx(1.0, rel=0.3)


@pytest.mark.parametrize("credit", ["final", "unit"])
def test_one_rl_step_over_the_chain_moves_lora_with_finite_loss(adapter, credit):
    g = 4
    chain = synthesize_chain(
        adapter, adapter.transformer, UNITS, FINAL, batch_size=g, height=32, width=32,
        num_steps=5, strength=0.7, schedule={"kind": "constant", "level": 0.8},
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    redness = get_reward("redness")
    rewards = [torch.tensor(redness(img, [{}] * g)) for img in chain.images]
    lora = {n: p for n, p in adapter.transformer.named_parameters() if "lora_" in n}
    before = {n: p.detach().clone() for n, p in lora.items()}
    optimizer = torch.optim.AdamW(lora.values(), lr=1e-2)
    stats = chain_policy_loss(
        adapter, adapter.transformer, chain, rewards[-1], group_size=g,
        unit_rewards=rewards[:-1], credit=credit,
    )  # fmt: skip
    optimizer.step()
    assert math.isfinite(stats["loss"]) and stats["trained_steps"] >= 4
    assert stats["ratio_mean"] == 1.0  # every stored step re-scored under the unchanged policy
    moved = [n for n in lora if not torch.equal(lora[n].detach(), before[n])]
    assert any("lora_B" in n for n in moved)
    frozen = [p for n, p in adapter.transformer.named_parameters() if "lora_" not in n]
    assert all(p.grad is None for p in frozen)


def test_unit_credit_needs_unit_rewards(adapter):
    chain = synthesize_chain(
        adapter, adapter.transformer, UNITS[:1], FINAL, batch_size=2, height=32, width=32,
        num_steps=3, schedule={"kind": "constant", "level": 0.5},
    )  # fmt: skip
    with pytest.raises(ValueError, match="one reward tensor per unit"):
        chain_policy_loss(
            adapter, adapter.transformer, chain, torch.zeros(2), group_size=2, credit="unit"
        )
