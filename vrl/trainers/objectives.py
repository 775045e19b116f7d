"""The diffusion trainer's objectives: what one update minimises over a rollout.

An objective turns the rollout's chunks (one micro-batch of one pass each) into work items and
scores one item at a time into a loss and its statistics; the trainer sums the gradients over the
items and steps once. Three are in `OBJECTIVES`, picked by `grpo.objective`:

    sde  Flow-GRPO. An item is a stored stochastic denoising step j; the current policy re-scores
         the stored transition, and its Gaussian log-prob and the one stored while sampling go
         into the clipped surrogate of `vrl.core`. Per-step log-probs are exact but noisy.
    awm  Advantage Weighted Matching. An item is a noised copy x_t = (1 - t) x_0 + t n of a pass's
         final image; minus its flow-matching loss stands for the image's log-likelihood in the
         same surrogate: one regression per image, far lower variance than per-step log-probs.
    nft  DiffusionNFT. The same noised copies, matched through an implicit positive and an
         implicit negative policy around the sampling policy, weighted by the image's
         optimality; no likelihood and no ratio, a bounded convex step per image.

Each adds `grpo.beta` times a KL to the reference policy (the LoRA adapter disabled, or a frozen
copy of the transformer): the Gaussian-mean KL per step for sde, the squared velocity difference
for awm and nft. The formulas are in docs/algorithms.md, "diffusion objectives".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from vrl import core
from vrl.samplers import gaussian_kl_mean, score_step
from vrl.samplers.loop import Trajectory

STATS = ("clip_fraction", "approx_kl", "ratio", "kl")
"""Keys an objective's statistics may carry: the surrogate's (clip fraction, approximate KL
between the rollout and the current policy, mean ratio; sde and awm) and "kl", the mean KL to
the reference (every objective, when grpo.beta != 0)."""


@dataclass
class RolloutChunk:
    """One micro-batch of one pass of the rollout: what the objectives train on."""

    embeds: Any  # PromptEmbeds of the chunk's prompts
    trajectory: Trajectory  # latents (b, T+1, ...), log_probs (b, T), sigmas (T+1,)
    offset: int = 0  # first sample of the chunk in this process's batch
    unit: int | None = None  # chain of synthesis: the unit pass it is (None: final or plain)
    train_steps: list[int] = field(default_factory=list)  # trajectory steps trained (sde)
    advantages: torch.Tensor | None = None  # (b,)


@dataclass
class ObjectiveContext:
    """What every objective reads: the adapter, the policy being trained (wrapped for
    distributed training), the same model unwrapped, the reference transformer (a frozen copy,
    or None: the adapter disabled when there is KL) and the run's config."""

    adapter: Any
    policy: Any
    unwrapped: Any
    ref_transformer: Any
    cfg: Any


@dataclass(frozen=True)
class Objective:
    """`work(ctx, chunks, levels, step_gen, noise_gen, sampler)` draws the update's items,
    [(chunk, item)], once per rollout; `loss(ctx, chunk, item, normaliser)` scores one item into
    (loss, statistics), the loss already divided by the update's sample count `normaliser`."""

    loss: Callable[[ObjectiveContext, RolloutChunk, Any, int], tuple[torch.Tensor, dict]]
    work: Callable[..., list[tuple[RolloutChunk, Any]]]


# -- sde: the stored transitions ------------------------------------------------------------------


def trained_steps(levels: torch.Tensor, grpo, generator: torch.Generator) -> list[int]:
    """Indices of the denoising steps trained this rollout: stochastic ones, a random fraction."""
    last = len(levels) - 1
    candidates = [
        i
        for i, a in enumerate(levels.tolist())
        if a > 0 and not (grpo.skip_last_step and i == last)
    ]
    keep = max(1, round(len(candidates) * grpo.timestep_fraction)) if candidates else 0
    if keep < len(candidates):
        picked = torch.randperm(len(candidates), generator=generator)[:keep]
        candidates = sorted(candidates[i] for i in picked.tolist())
    return candidates


def stored_transitions(ctx, chunks, levels, step_gen, noise_gen, sampler):
    """sde's items: (chunk, j) for each trained step j. The steps are drawn from the step's own
    generator, so every process trains the same ones; a chain's passes each draw their own (their
    noise levels differ), a plain rollout's chunks share one draw."""
    grpo = ctx.cfg.grpo
    plain_steps = trained_steps(levels, grpo, step_gen)
    for chunk in chunks:
        chunk.train_steps = (
            trained_steps(chunk.trajectory.noise_levels, grpo, step_gen)
            if ctx.cfg.chain.enabled
            else plain_steps
        )
    return [(chunk, j) for chunk in chunks for j in chunk.train_steps]


def reference_mean(adapter, unwrapped, ref_transformer, traj, j, chunk, smp) -> torch.Tensor:
    """The reference policy's Gaussian mean for stored step j (adapter disabled, or frozen copy)."""
    with torch.no_grad():
        if ref_transformer is not None:
            v_ref = adapter.velocity(
                ref_transformer, traj.latents[:, j], traj.sigmas[j], chunk.embeds,
                guidance_scale=smp.guidance_scale,
            )  # fmt: skip
        else:
            with adapter.disabled_adapter():
                v_ref = adapter.velocity(
                    unwrapped, traj.latents[:, j], traj.sigmas[j], chunk.embeds,
                    guidance_scale=smp.guidance_scale,
                )  # fmt: skip
        return score_step(traj, j, v_ref).mean


def transition_log_prob(adapter, policy, unwrapped, ref_transformer, chunk, j: int, cfg):
    """(log-prob of stored transition j under the policy (b,), its stored log-prob (b,), the
    Gaussian-mean KL to the reference (b,) or None)."""
    traj, smp = chunk.trajectory, cfg.sampling
    v = adapter.velocity(
        policy, traj.latents[:, j], traj.sigmas[j], chunk.embeds, guidance_scale=smp.guidance_scale
    )
    out = score_step(traj, j, v)
    kl = None
    if cfg.grpo.beta != 0.0:
        ref = reference_mean(adapter, unwrapped, ref_transformer, traj, j, chunk, smp)
        kl = gaussian_kl_mean(out.mean, ref, out.std)
    return out.log_prob, traj.log_probs[:, j], kl


# -- awm and nft: noised copies of the final images -----------------------------------------------


@dataclass
class MatchingItem:
    """One noised copy of a pass's final images, x_t = (1 - t) x_0 + t n."""

    x_t: torch.Tensor  # (b, ...)
    sigma: torch.Tensor  # (b,) t, in (0, the pass's first sigma]
    target: torch.Tensor  # (b, ...) the flow-matching velocity n - x_0
    old_log_prob: torch.Tensor | None = None  # awm: (b,) under the rollout policy, first use
    old_velocity: torch.Tensor | None = None  # nft: the sampler's (EMA pre-pass, else first use)


def matching_item(chunk: RolloutChunk, generator: torch.Generator) -> MatchingItem:
    """Noise a pass's final images at times drawn uniformly below the sigma the pass started
    from (1 from noise, the strength for a chain's image-to-image pass): the policy is only
    asked for velocities it produced."""
    traj = chunk.trajectory
    x0 = traj.final.float()
    b = x0.shape[0]
    top = float(traj.sigmas[0])
    t = torch.rand(b, generator=generator, device=generator.device).to(x0.device) * top
    t = t.clamp_min(1e-3)  # (b,)
    noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
    tt = t.view(b, *[1] * (x0.ndim - 1))
    x_t = ((1 - tt) * x0 + tt * noise).to(traj.latents.dtype)
    return MatchingItem(x_t=x_t, sigma=t, target=noise - x0)


def noised_copies(ctx, chunks, levels, step_gen, noise_gen, sampler):
    """awm's and nft's items: `grpo.awm_times` noised copies of each chunk's final images, drawn
    once per rollout from the rollout's noise generator. With an EMA sampling policy (nft's
    `grpo.sampler_decay`) its velocities are taken first, as v_old."""
    work = [(chunk, matching_item(chunk, noise_gen)) for chunk in chunks
            for _ in range(ctx.cfg.grpo.awm_times)]  # fmt: skip
    if sampler is not None:
        with sampler.swapped_in(ctx.unwrapped), torch.no_grad():
            for chunk, item in work:
                item.old_velocity = matching_velocity(
                    ctx.adapter, ctx.unwrapped, chunk, item, ctx.cfg
                )
    return work


def matching_velocity(adapter, model, chunk, item, cfg) -> torch.Tensor:
    """The velocity a pass's noised copy is matched with, in float32: the conditional one
    (guidance 1), or with `grpo.guided_matching` the guided one the rollouts were drawn with; a
    guidance-embedded model always gets the sampling scale as input."""
    guided = adapter.guidance_embedded or cfg.grpo.guided_matching
    guidance = cfg.sampling.guidance_scale if guided else 1.0
    return adapter.velocity(
        model, item.x_t, item.sigma, chunk.embeds, guidance_scale=guidance
    ).float()


def matching_kl(adapter, v, unwrapped, ref_transformer, chunk, item, cfg) -> torch.Tensor | None:
    """The squared velocity difference to the reference policy (b,), or None when beta is 0."""
    if cfg.grpo.beta == 0.0:
        return None
    with torch.no_grad():
        if ref_transformer is not None:
            v_ref = matching_velocity(adapter, ref_transformer, chunk, item, cfg)
        else:
            with adapter.disabled_adapter():
                v_ref = matching_velocity(adapter, unwrapped, chunk, item, cfg)
    return (v - v_ref).pow(2).flatten(1).mean(1)


def matching_log_prob(adapter, policy, unwrapped, ref_transformer, chunk, item, cfg):
    """awm: each image's log-likelihood is stood in for by minus its flow-matching loss at the
    item's (t, n), averaged over pixels (b,); the rollout policy's value is taken on first use
    (the weights have not moved yet within an update), so the ratio starts at 1 exactly.
    Returns (log-prob, rollout log-prob, `matching_kl`)."""
    v = matching_velocity(adapter, policy, chunk, item, cfg)
    log_prob = -(v - item.target).pow(2).flatten(1).mean(1)  # (b,)
    if item.old_log_prob is None:
        item.old_log_prob = log_prob.detach()
    kl = matching_kl(adapter, v, unwrapped, ref_transformer, chunk, item, cfg)
    return log_prob, item.old_log_prob, kl


def nft_loss(adapter, policy, unwrapped, ref_transformer, chunk, item, cfg):
    """nft (DiffusionNFT, Zheng et al. 2025): one loss per image, the flow-matching loss of the
    implicit positive policy (1 - beta) v_old + beta v weighted by the image's optimality r, plus
    that of the implicit negative policy (1 + beta) v_old - beta v weighted by 1 - r, with v_old
    the sampling policy's velocity and beta `grpo.nft_beta`. r = (A + c) / (2c) maps the
    advantage clipped to +-c (`grpo.adv_clip_max`) onto [0, 1]. The loss is a convex bowl in v
    with its minimum at v_old + (2r - 1) / beta * (target - v_old): a better-than-average image
    pulls v toward its own velocity target, a worse one pushes v away, both by a bounded amount.
    Returns (loss (b,), `matching_kl`)."""
    grpo = cfg.grpo
    v = matching_velocity(adapter, policy, chunk, item, cfg)
    if item.old_velocity is None:  # no EMA sampler: the rollout policy, before any update
        item.old_velocity = v.detach()
    v_old, beta = item.old_velocity, grpo.nft_beta
    r = (chunk.advantages.float() / grpo.adv_clip_max).clamp(-1.0, 1.0) * 0.5 + 0.5  # (b,)
    positive = ((1 - beta) * v_old + beta * v - item.target).pow(2).flatten(1).mean(1)
    negative = ((1 + beta) * v_old - beta * v - item.target).pow(2).flatten(1).mean(1)
    loss = r * positive + (1 - r) * negative
    return loss, matching_kl(adapter, v, unwrapped, ref_transformer, chunk, item, cfg)


# -- the objectives -------------------------------------------------------------------------------


def _surrogate(ctx, chunk, logp, old_logp, kl, normaliser):
    """The clipped surrogate of `vrl.core` with one "token" per denoising step or noised copy."""
    grpo = ctx.cfg.grpo
    pl = core.policy_loss(
        logp[:, None],  # (b, 1)
        old_logp[:, None],
        chunk.advantages,
        torch.ones_like(logp[:, None]),
        eps_low=grpo.eps,
        eps_high=grpo.eps,
        aggregation="grpo",
        num_sequences=normaliser,
    )
    stats = {
        "clip_fraction": pl.clip_fraction.item(),
        "approx_kl": pl.approx_kl.item(),
        "ratio": pl.ratio_mean.item(),
    }
    return _with_kl(ctx, pl.loss, kl, normaliser, stats)


def _with_kl(ctx, loss, kl, normaliser, stats):
    if kl is not None:
        loss = loss + ctx.cfg.grpo.beta * kl.sum() / normaliser
        stats["kl"] = kl.mean().item()
    return loss, stats


def sde_objective(ctx: ObjectiveContext, chunk: RolloutChunk, j: int, normaliser: int):
    """Flow-GRPO on stored transition j: (loss, statistics)."""
    logp, old_logp, kl = transition_log_prob(
        ctx.adapter, ctx.policy, ctx.unwrapped, ctx.ref_transformer, chunk, j, ctx.cfg
    )
    return _surrogate(ctx, chunk, logp, old_logp, kl, normaliser)


def awm_objective(ctx: ObjectiveContext, chunk: RolloutChunk, item: MatchingItem, normaliser: int):
    """Advantage Weighted Matching on one noised copy: (loss, statistics)."""
    logp, old_logp, kl = matching_log_prob(
        ctx.adapter, ctx.policy, ctx.unwrapped, ctx.ref_transformer, chunk, item, ctx.cfg
    )
    return _surrogate(ctx, chunk, logp, old_logp, kl, normaliser)


def nft_objective(ctx: ObjectiveContext, chunk: RolloutChunk, item: MatchingItem, normaliser: int):
    """DiffusionNFT on one noised copy: (loss, statistics); no surrogate, so only "kl"."""
    per_image, kl = nft_loss(
        ctx.adapter, ctx.policy, ctx.unwrapped, ctx.ref_transformer, chunk, item, ctx.cfg
    )
    return _with_kl(ctx, per_image.sum() / normaliser, kl, normaliser, {})


OBJECTIVES: dict[str, Objective] = {
    "sde": Objective(loss=sde_objective, work=stored_transitions),
    "awm": Objective(loss=awm_objective, work=noised_copies),
    "nft": Objective(loss=nft_objective, work=noised_copies),
}


def objective_metrics(stats: dict[str, list[float]]) -> dict[str, float]:
    """The metrics record's fields of an update's statistics: means over its items (NaN where
    the objective has none), and the first ratio (1 exactly when nothing has moved yet)."""
    ratios = stats["ratio"]
    return {
        "clip_fraction": _mean(stats["clip_fraction"]),
        "approx_kl": _mean(stats["approx_kl"]),
        "ratio_mean": _mean(ratios),
        "ratio_first": ratios[0] if ratios else math.nan,
        "kl": _mean(stats["kl"]),
    }


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan
