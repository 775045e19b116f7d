"""The shared policy-gradient core against hand-computed values."""

import math

import pytest
import torch

from vrl.core import (
    aggregate_loss,
    approx_kl,
    clipped_surrogate,
    group_advantages,
    importance_ratio,
    k3_kl,
    policy_loss,
)


def test_group_advantages_group_scale_by_hand():
    # group 1: [1, 0, 0, 1] mean 0.5, sample std = sqrt(1/3); group 2 all equal -> zero std
    out = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]), 4)
    s = math.sqrt(1 / 3)
    expected = [0.5 / (s + 1e-4), -0.5 / (s + 1e-4)] * 2
    assert out.advantages[:4].tolist() == pytest.approx(
        [expected[0], expected[1], expected[1], expected[0]]
    )
    assert out.advantages[4:].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert out.zero_std.tolist() == [False, True]
    assert out.zero_std_fraction == 0.5
    assert out.keep_mask(4).tolist() == [True] * 4 + [False] * 4


def test_group_advantages_batch_and_none_scales():
    r = torch.tensor([3.0, 1.0, 0.0, 0.0])
    none = group_advantages(r, 2, scale="none").advantages
    assert none.tolist() == [1.0, -1.0, 0.0, 0.0]
    batch_std = r.std().item()  # unbiased std of the whole batch
    batch = group_advantages(r, 2, scale="batch").advantages
    assert batch.tolist() == pytest.approx([1 / (batch_std + 1e-4), -1 / (batch_std + 1e-4), 0, 0])


def test_group_advantages_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiple of the group size"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="unknown advantage scale"):
        group_advantages(torch.zeros(4), 2, scale="rank")  # type: ignore[arg-type]


def test_ratio_one_and_advantage_minus_one_gives_loss_one():
    logp = torch.zeros(1, 3)
    loss, clipped = clipped_surrogate(importance_ratio(logp, logp), torch.tensor([[-1.0]]), 0.2)
    assert loss.tolist() == [[1.0, 1.0, 1.0]]
    assert not clipped.any()


def test_clipped_surrogate_separate_eps_low_high():
    ratio = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    loss, clipped = clipped_surrogate(ratio, adv, eps_low=0.2, eps_high=0.28)
    # A>0, rho above 1+eps_high: clipped to 1.28; A<0 rho above: unclipped 1.5 (pessimistic)
    # A>0 rho below 1-eps_low: unclipped 0.5; A<0 rho below: clipped to 0.8; inside: unclipped
    assert loss.tolist() == pytest.approx([-1.28, 1.5, -0.5, 0.8, -1.1])
    assert clipped.tolist() == [True, False, False, True, False]


def test_sequence_level_ratio_is_exp_of_mean_log_ratio_and_passes_gradient():
    logp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -2.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    ratio = importance_ratio(logp, old, mask, level="sequence")
    assert ratio.detach()[0].tolist() == pytest.approx([math.exp(0.25)] * 3)
    (ratio * mask).sum().backward()
    # d/dlogp_t of sum_t' m_t' * s * exp(logp_t' - sg(logp_t')) = m_t * s for each unmasked token
    assert logp.grad[0].tolist() == pytest.approx([math.exp(0.25), math.exp(0.25), 0.0])


def test_k3_kl_by_hand_and_non_negative():
    logp = torch.tensor([0.0, -1.0, -0.5])
    ref = torch.tensor([0.0, -0.5, -1.5])
    kl = k3_kl(logp, ref)
    d = torch.tensor([0.0, 0.5, -1.0])
    assert kl.tolist() == pytest.approx((torch.exp(d) - d - 1).tolist())
    assert (kl >= 0).all() and kl[0] == 0
    assert approx_kl(logp, ref).tolist() == pytest.approx([0.0, 0.125, 0.5])


LOSS = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "mode, expected",
    [("grpo", (2.0 + 4.0) / 2), ("dapo", 10.0 / 4), ("dr_grpo", 10.0 / (2 * 4))],
)
def test_aggregation_by_hand(mode, expected):
    assert aggregate_loss(LOSS, MASK, mode).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["grpo", "dapo", "dr_grpo"])
def test_micro_batches_sum_to_the_full_batch(mode):
    full = aggregate_loss(LOSS, MASK, mode, max_length=4)
    parts = sum(
        aggregate_loss(
            LOSS[i : i + 1],
            MASK[i : i + 1],
            mode,
            max_length=4,
            num_sequences=2,
            num_tokens=MASK.sum(),
        )
        for i in range(2)
    )
    assert parts.item() == pytest.approx(full.item())


def test_policy_loss_on_policy_ratio_exactly_one_and_kl_term():
    torch.manual_seed(0)
    logp = torch.randn(3, 5, requires_grad=True)
    mask = torch.ones(3, 5)
    adv = torch.tensor([1.0, -1.0, 0.5])
    ref = logp.detach() - 0.1
    out = policy_loss(logp, logp.detach(), adv, mask, eps_low=0.2, beta=0.5, ref_logp=ref)
    assert (
        out.ratio_mean.item() == 1.0
        and out.clip_fraction.item() == 0.0
        and out.approx_kl.item() == 0.0
    )
    k3 = math.exp(-0.1) + 0.1 - 1
    assert out.kl.item() == pytest.approx(k3, rel=1e-5)
    assert out.pg_loss.item() == pytest.approx(-adv.mean().item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(-adv.mean().item() + 0.5 * k3, rel=1e-5)
    out.loss.backward()
    # d loss / d logp_it = -A_i / (B T) from the surrogate (rho = 1) + beta * dk3/dlogp
    dk3 = -(math.exp(-0.1) - 1)
    assert logp.grad[0, 0].item() == pytest.approx((-1.0 + 0.5 * dk3) / 15, rel=1e-4)
    with pytest.raises(ValueError, match="needs ref_logp"):
        policy_loss(logp, logp.detach(), adv, mask, eps_low=0.2, beta=0.1)
