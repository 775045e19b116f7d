"""The shared policy-gradient core: pure tensor functions used by every trainer.

Both the VLM-R1 trainer (tokens) and the diffusion trainer (denoising steps) reduce to the same
pieces: rewards of a group of G samples per prompt become advantages, per-element log-probs become
importance ratios, a clipped surrogate turns both into a per-element loss, and the loss is
aggregated over a masked batch. Nothing here knows about models, devices or distributed training.

Shapes: B = number of sequences (or trajectories), T = tokens (or denoising steps) per sequence.
Formulas: docs/algorithms.md, section 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

AdvantageScale = Literal["group", "batch", "none"]
LossAggregation = Literal["grpo", "dapo", "dr_grpo"]
RatioLevel = Literal["token", "sequence"]

STD_EPS = 1e-4  # added to the std in the advantage denominator (GRPO)


@dataclass
class GroupAdvantages:
    advantages: torch.Tensor  # (N,) one per sample, in the order of the rewards
    group_std: torch.Tensor  # (N // G,) reward std of each group
    zero_std: torch.Tensor  # (N // G,) bool: every reward of the group is equal (no signal)

    @property
    def zero_std_fraction(self) -> float:
        return self.zero_std.float().mean().item()

    def keep_mask(self, group_size: int) -> torch.Tensor:
        """(N,) bool: samples of groups that carry a learning signal (DAPO dynamic sampling)."""
        return (~self.zero_std).repeat_interleave(group_size)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: AdvantageScale = "group"
) -> GroupAdvantages:
    """Advantages of N = P * G rewards laid out group after group ([p0 g0..gG-1, p1 g0..]).

    scale="group": (r - group mean) / (group std + 1e-4)    (GRPO)
    scale="batch": (r - group mean) / (batch std + 1e-4)
    scale="none":   r - group mean                           (Dr. GRPO)
    Std is the unbiased sample std (torch's default), as in the reference implementations.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into groups of {group_size}: "
            "the number of samples must be a multiple of the group size"
        )
    rewards = rewards.float()
    grouped = rewards.view(-1, group_size)  # (P, G)
    mean = grouped.mean(dim=1, keepdim=True)  # (P, 1)
    if group_size > 1:
        std = grouped.std(dim=1)  # (P,)
    else:
        std = torch.zeros(grouped.shape[0], device=rewards.device)
    zero_std = (grouped == grouped[:, :1]).all(
        dim=1
    )  # exact: float std of equal values may be ~1e-8
    centred = grouped - mean  # (P, G)
    if scale == "group":
        adv = centred / (std.unsqueeze(1) + STD_EPS)
    elif scale == "batch":
        batch_std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
        adv = centred / (batch_std + STD_EPS)
    elif scale == "none":
        adv = centred
    else:
        raise ValueError(f"unknown advantage scale {scale!r}; choose 'group', 'batch' or 'none'")
    return GroupAdvantages(advantages=adv.reshape(-1), group_std=std, zero_std=zero_std)


def importance_ratio(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor | None = None,
    level: RatioLevel = "token",
) -> torch.Tensor:
    """Importance ratio rho = pi/pi_old, (B, T).

    level="token": exp(logp - old_logp) per element.
    level="sequence" (GSPO): exp(mean over the masked elements of (logp - old_logp)), one value per
    sequence, broadcast to (B, T), in GSPO-token form sg(s_i) * exp(logp_t - sg(logp_t)): the value
    is s_i at every token and, once the loss takes the token mean, the gradient equals GSPO's
    d s_i / d logp_t = s_i / |y_i|.
    """
    log_ratio = logp - old_logp  # (B, T)
    if level == "token":
        return torch.exp(log_ratio)
    if level != "sequence":
        raise ValueError(f"unknown ratio level {level!r}; choose 'token' or 'sequence'")
    if mask is None:
        mask = torch.ones_like(log_ratio)
    mask = mask.to(log_ratio.dtype)
    seq_log_ratio = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # (B,)
    # value: exp(seq_log_ratio); gradient: through the per-token mean, as in GSPO-token
    seq_log_ratio_st = logp - logp.detach() + seq_log_ratio.detach().unsqueeze(-1)  # (B, T)
    return torch.exp(seq_log_ratio_st)


def clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element PPO loss -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) and a clipped flag.

    advantages broadcast against ratio: pass (B, 1) for one advantage per sequence.
    eps_high > eps_low is DAPO's clip-higher. Returns (loss, clipped) with clipped True where the
    clipped branch was the active (smaller) one, i.e. the gradient is cut.
    """
    eps_high = eps_low if eps_high is None else eps_high
    pg_loss1 = -ratio * advantages
    pg_loss2 = -torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    loss = torch.maximum(pg_loss1, pg_loss2)
    clipped = pg_loss2 > pg_loss1
    return loss, clipped


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-element k3 estimate of KL(pi || pi_ref): exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0


def approx_kl(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """Per-element 0.5 (logp - old_logp)^2: the drift of the policy since the rollout."""
    return 0.5 * (logp - old_logp) ** 2


def aggregate_loss(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: LossAggregation,
    *,
    max_length: int | None = None,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
) -> torch.Tensor:
    """Reduce a per-element loss (B, T) under mask (B, T) to a scalar.

    grpo    (seq-mean-token-mean): mean_i( sum_t L m / sum_t m )
    dapo    (token-mean):          sum L m / sum m
    dr_grpo:                       sum L m / (B * max_length)

    With gradient accumulation the normaliser must cover the whole accumulated batch, not the
    micro-batch: pass num_sequences (grpo, dr_grpo) and num_tokens (dapo) for the whole batch, and
    the sum of the micro-batch results equals the full-batch result.
    """
    mask = mask.to(loss.dtype)
    batch = loss.shape[0] if num_sequences is None else num_sequences
    if mode == "grpo":
        per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # (B,)
        return per_seq.sum() / batch
    if mode == "dapo":
        tokens = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=loss.dtype)
        return (loss * mask).sum() / tokens.clamp(min=1.0)
    if mode == "dr_grpo":
        length = max_length if max_length is not None else loss.shape[-1]
        return (loss * mask).sum() / (batch * length)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose 'grpo', 'dapo' or 'dr_grpo'")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


@dataclass
class PolicyLoss:
    loss: torch.Tensor  # scalar, differentiable
    pg_loss: torch.Tensor  # scalar, the surrogate part (detached)
    kl: torch.Tensor  # scalar masked mean k3 KL (detached; 0 when no reference)
    clip_fraction: torch.Tensor  # scalar, share of masked elements on the clipped branch
    approx_kl: torch.Tensor  # scalar masked mean of 0.5 (logp - old_logp)^2
    ratio_mean: torch.Tensor


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float,
    eps_high: float | None = None,
    aggregation: LossAggregation = "grpo",
    ratio_level: RatioLevel = "token",
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    max_length: int | None = None,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
    is_weights: torch.Tensor | None = None,
) -> PolicyLoss:
    """Clipped GRPO loss with optional k3 KL, aggregated; logp/old_logp/mask (B, T), advantages (B,).

    `is_weights` (B, T), when given, multiplies the surrogate per element (not the KL): the
    truncated importance-sampling correction for samples drawn by another engine
    (`truncated_is_weights`)."""
    ratio = importance_ratio(logp, old_logp, mask, ratio_level)  # (B, T)
    per_elem, clipped = clipped_surrogate(ratio, advantages.unsqueeze(-1), eps_low, eps_high)
    if is_weights is not None:
        per_elem = per_elem * is_weights.detach()
    kl = torch.zeros_like(per_elem)
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs ref_logp (the reference policy's log-probs)")
        kl = k3_kl(logp, ref_logp)
        per_elem = per_elem + beta * kl
    agg = dict(max_length=max_length, num_sequences=num_sequences, num_tokens=num_tokens)
    loss = aggregate_loss(per_elem, mask, aggregation, **agg)
    with torch.no_grad():
        return PolicyLoss(
            loss=loss,
            pg_loss=aggregate_loss(per_elem - beta * kl, mask, aggregation, **agg),
            kl=masked_mean(kl, mask),
            clip_fraction=masked_mean(clipped.to(logp.dtype), mask),
            approx_kl=masked_mean(approx_kl(logp, old_logp), mask),
            ratio_mean=masked_mean(ratio, mask),
        )


def truncated_is_weights(
    trainer_logp: torch.Tensor, engine_logp: torch.Tensor, cap: float
) -> torch.Tensor:
    """Truncated importance sampling (TIS) weights min(exp(logp_trainer - logp_engine), cap), (B, T).

    The rollout engine (vLLM) samples from its own numerics of the policy, not the trainer's; the
    per-token ratio of the two corrects the policy gradient towards the trainer's distribution,
    and the cap bounds its variance where the engine gave a token a much lower probability."""
    if cap <= 0:
        raise ValueError(f"the TIS cap must be > 0, got {cap}")
    return torch.exp(trainer_logp.detach() - engine_logp).clamp(max=cap)


def engine_mismatch(
    trainer_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """How far the rollout engine's log-probs of its samples are from the trainer's, (B, T) each:
    the masked mean of |logp_trainer - logp_engine| and the largest and smallest per-token
    ratio exp(logp_trainer - logp_engine). 0 / 1 / 1 when the two agree exactly."""
    diff = (trainer_logp.detach() - engine_logp).float()
    keep = mask.bool()
    if not keep.any():
        return {"logp_abs_diff": 0.0, "ratio_max": 1.0, "ratio_min": 1.0}
    ratio = torch.exp(diff[keep])
    return {
        "logp_abs_diff": masked_mean(diff.abs(), mask).item(),
        "ratio_max": ratio.max().item(),
        "ratio_min": ratio.min().item(),
    }
