"""R1-style GRPO for vision-language models (VLM-R1) on the shared policy-gradient core.

One step reads top to bottom:

    #### ROLLOUT ####    P prompts x G sampled completions, split over the processes
    #### REWARD ####     rule rewards on parsed completions (boxes already in original pixels),
                         gathered from every process so that each group is normalised whole
    #### ADVANTAGE ####  group advantages from vrl.core
    #### TRAINING ####   num_iterations passes of the clipped surrogate (+ k3 KL), micro-batched

Work done once per step (`rollout.share_prompts`, on models that take precomputed vision
output): the frozen vision tower runs once per distinct image, and its output serves the group's
samples, the old/reference log-probs and every update of the rollout; each distinct prompt of a
micro-batch is prefilled once and its key/value cache shared by its samples
(`VLMAdapter.generate_groups`). The same seed gives the same completions and loss either way.

With `rollout.engine: vllm` vLLM samples the completions instead (`vrl.models.vllm_engine`), on
the policy's weights as pushed to it after each update. The loss scores vLLM's samples with the
trainer's own log-probs (the ratio's old policy is the trainer's, never vLLM's numerics); vLLM's
log-probs give the train/inference mismatch (engine/* metrics) and, with `rollout.tis_cap`, the
truncated importance-sampling weight min(exp(logp_trainer - logp_vllm), C) of each token.

Simplifications, stated: the reference model under LoRA is the same model with the adapter
disabled (no copy in memory); a group's samples are rows of the batch rather than
num_return_sequences, so that a group may be split across processes; one optimizer step per pass.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from vrl import core
from vrl.checkpoint import load_checkpoint, save_checkpoint, trainable_state_dict
from vrl.config import to_dict
from vrl.data.prompts import build_messages
from vrl.data.sources import load_vlm_dataset
from vrl.data.vlm_r1 import VLMSample, load_images_skipping_bad
from vrl.models.paths import resolve_model_path
from vrl.rewards import WeightedReward, parse_completion
from vrl.sharding import full_tensor, is_sharded
from vrl.trainers.common import (
    MetricsWriter,
    UpdateGuard,
    build_optimizer,
    check_process_split,
    gradient_norm,
    group_runs,
    local_step_items,
    make_accelerator,
    sample_order,
    step_seed,
    truncate_metrics,
)
from vrl.trainers.policies import load_vlm_policy
from vrl.trainers.run_folder import apply_optim_settings, open_run_folder

logger = logging.getLogger(__name__)


@dataclass
class RolloutChunk:
    """One micro-batch of prompts with their sampled completions and what training needs."""

    batch: Any  # PromptBatch (model inputs for the prompts)
    completion_ids: torch.Tensor  # (b, L)
    completion_mask: torch.Tensor  # (b, L) 1 up to and including EOS
    old_logp: torch.Tensor | None  # (b, L) under the rollout policy; None when on-policy
    ref_logp: torch.Tensor | None  # (b, L) under the reference; None when beta == 0
    advantages: torch.Tensor | None = None  # (b,)
    keep: torch.Tensor | None = None  # (b,) bool, False for filtered zero-std groups
    engine_logp: torch.Tensor | None = None  # (b, L) under vLLM's numerics; None with hf
    is_weights: torch.Tensor | None = None  # (b, L) truncated IS weights (rollout.tis_cap)


def train(cfg) -> dict[str, Any]:
    """Run GRPO as configured.

    Returns a summary: run folder, steps, per-step mean rewards, and the trained (unwrapped) model
    under "model" for programmatic use.
    """
    accelerator = make_accelerator(cfg.run)
    world, rank = accelerator.num_processes, accelerator.process_index
    grpo, optim = cfg.grpo, cfg.optim
    n_local = check_process_split(grpo.prompts_per_step, grpo.group_size, world)
    folder = open_run_folder(cfg, accelerator)  # before anything loads: a refusal costs nothing
    run_dir = folder.path
    set_seed(cfg.run.seed)
    if cfg.rollout.engine == "vllm":  # vLLM and the model checked before any compute
        from vrl.models.vllm_engine import check_engine

        check_engine(cfg.rollout, resolve_model_path(cfg.model.path), world)

    # data is validated whole before any model is loaded
    with accelerator.main_process_first():
        dataset: list[VLMSample] = load_vlm_dataset(cfg)
        adapter, policy, ref_model = load_vlm_policy(cfg, accelerator)
    reward_fn = WeightedReward(grpo.rewards, modality="text")
    optimizer, scheduler = build_optimizer(policy, optim, cfg.run.max_steps * grpo.num_iterations)
    # the scheduler is stepped here, once per optimizer step: prepared, accelerate would step it
    # once per process, for schedules sized by one process's batches
    policy, optimizer = accelerator.prepare(policy, optimizer)
    unwrapped = accelerator.unwrap_model(policy)
    guard = UpdateGuard(cfg.run.max_bad_updates)
    engine = None
    if cfg.rollout.engine == "vllm":
        from vrl.models.vllm_engine import open_engine

        engine = open_engine(
            cfg.rollout,
            resolve_model_path(cfg.model.path),
            dtype=next(unwrapped.parameters()).dtype,
            seed=cfg.run.seed,
            run_dir=run_dir,
        )

    start_step = 0
    if folder.checkpoint is not None:
        state = load_checkpoint(
            folder.checkpoint,
            model=unwrapped,
            optimizer=optimizer,
            scheduler=scheduler,
            process_index=rank,
        )
        apply_optim_settings(optimizer, scheduler, optim)
        start_step = state["step"]
        truncate_metrics(run_dir / "metrics.jsonl", start_step, accelerator.is_main_process)
        logger.info("resumed from %s at step %d", folder.checkpoint, start_step)
    if accelerator.is_main_process and cfg.run.report_to:
        accelerator.init_trackers("vrl-vlm", config={"seed": cfg.run.seed})
    metrics = MetricsWriter(run_dir / "metrics.jsonl", enabled=accelerator.is_main_process)
    order = sample_order(len(dataset), cfg.run.seed)
    # log-probs are scored under the distribution the completions were sampled from
    scoring = {"temperature": grpo.temperature} if grpo.temperature > 0 else {}
    history: list[float] = []
    # the tower's output is reused by the loss forwards only while no gradient reaches it
    share_vision = cfg.rollout.share_prompts and not any(
        p.requires_grad for p in adapter.vision_parameters(unwrapped)
    )
    undecodable: set[int] = set()  # dataset indices whose images failed to decode mid-run

    bar = tqdm(
        range(start_step, cfg.run.max_steps),
        initial=start_step,
        total=cfg.run.max_steps,
        desc="GRPO",
        disable=not accelerator.is_local_main_process,
    )
    for step in bar:
        t0 = time.perf_counter()
        #### ROLLOUT ####
        local_items = local_step_items(
            order, step, grpo.prompts_per_step, grpo.group_size, rank, n_local
        )
        torch.manual_seed(step_seed(cfg.run.seed, step, rank))
        policy.eval()
        chunks: list[RolloutChunk] = []
        texts: list[str] = []
        parsed, reward_samples = [], []
        sync_seconds = 0.0
        if engine is not None:  # the weights of the last update (or a resumed run's)
            t_sync = time.perf_counter()
            engine.sync(unwrapped, accelerator.is_main_process)
            accelerator.wait_for_everyone()
            sync_seconds = time.perf_counter() - t_sync
        for lo in range(0, n_local, optim.micro_batch_size):
            # each distinct prompt of the micro-batch once (a group's samples are in a row)
            distinct, counts = group_runs(local_items[lo : lo + optim.micro_batch_size])
            # an image that passed validation but fails to decode: the next sample, under
            # data.skip_bad_lines (the same one on every process), else a one-line DataError
            loaded = [
                load_images_skipping_bad(
                    dataset, i, skip_bad_lines=cfg.data.skip_bad_lines, skipped=undecodable
                )
                for i in distinct
            ]
            messages = [build_messages(dataset[i], cfg.data.template) for i, _ in loaded]
            prompts = adapter.prepare_inputs(messages, [imgs for _, imgs in loaded])
            prompts = prompts.to(accelerator.device)
            if share_vision:
                prompts = adapter.encode_images(unwrapped, prompts)
            sampling = {
                "max_new_tokens": grpo.max_completion_length,
                "temperature": grpo.temperature,
                "top_p": grpo.top_p,
                "top_k": grpo.top_k,
                "do_sample": grpo.temperature > 0,
            }
            engine_logp = None
            if engine is not None:
                batch = prompts.repeat_interleave(counts)
                out, engine_logp = engine_rollout(
                    engine, adapter, prompts, [imgs for _, imgs in loaded], counts, sampling,
                    seed=step_seed(cfg.run.seed, step, rank) * 4096 + lo,
                    device=accelerator.device,
                )  # fmt: skip
            elif cfg.rollout.share_prompts:
                batch, out = adapter.generate_groups(unwrapped, prompts, counts, **sampling)
            else:
                batch = prompts.repeat_interleave(counts)
                out = adapter.generate(unwrapped, batch, **sampling)
            samples = [
                dataset[i] for (i, _), k in zip(loaded, counts, strict=True) for _ in range(k)
            ]
            with torch.no_grad():
                old_logp = None
                if grpo.num_iterations > 1:  # later passes need the rollout policy's log-probs
                    old_logp = adapter.token_logprobs(
                        unwrapped, batch, out.ids, out.mask, **scoring
                    )
                ref_logp = None
                if grpo.beta != 0.0:
                    ref_logp = reference_logprobs(
                        adapter, unwrapped, ref_model, batch, out, scoring
                    )
            chunks.append(
                RolloutChunk(batch, out.ids, out.mask, old_logp, ref_logp, engine_logp=engine_logp)
            )
            texts.extend(out.texts)
            for s, text, inp, orig in zip(
                samples, out.texts, batch.input_sizes, batch.original_sizes, strict=True
            ):
                to_orig = box_transform(adapter, orig, inp)
                parsed.append(parse_completion(text, to_orig))
                reward_samples.append(
                    {"solution": s.solution, "accu_reward_method": s.accu_reward_method, **s.extra}
                )

        #### REWARD ####
        result = reward_fn(parsed, reward_samples)
        names = list(result.components)
        local_table = torch.stack([result.total, *(result.components[n] for n in names)], dim=1)
        table = accelerator.gather(local_table.to(accelerator.device)).cpu()  # (P*G, 1 + K)
        rewards = table[:, 0]

        #### ADVANTAGE ####
        adv = core.group_advantages(rewards, grpo.group_size, grpo.advantage_scale)
        keep = (
            adv.keep_mask(grpo.group_size)
            if grpo.filter_zero_std
            else torch.ones_like(rewards, dtype=torch.bool)
        )
        local_adv = adv.advantages[rank * n_local : (rank + 1) * n_local]
        local_keep = keep[rank * n_local : (rank + 1) * n_local]
        lo = 0
        for chunk in chunks:
            b = chunk.completion_ids.shape[0]
            chunk.advantages = local_adv[lo : lo + b].to(accelerator.device)
            chunk.keep = local_keep[lo : lo + b].to(accelerator.device)
            lo += b

        #### TRAINING ####
        policy.train()
        num_seqs = int(local_keep.sum())
        num_tokens = float(sum((c.completion_mask * c.keep[:, None]).sum() for c in chunks))
        stats: dict[str, list[float]] = {
            k: [] for k in ("loss", "kl", "clip_fraction", "approx_kl", "ratio")
        }
        mismatch: list[dict[str, float]] = []
        grad_norm = torch.tensor(0.0)
        skipped = guard.total
        for iteration in range(grpo.num_iterations):
            for i, chunk in enumerate(chunks):
                last = i == len(chunks) - 1
                sync = contextlib.nullcontext() if last else accelerator.no_sync(policy)
                with sync:
                    logp = adapter.token_logprobs(
                        policy, chunk.batch, chunk.completion_ids, chunk.completion_mask, **scoring
                    )
                    old = chunk.old_logp if chunk.old_logp is not None else logp.detach()
                    if iteration == 0 and chunk.engine_logp is not None:
                        # the rollout policy's log-probs under both engines, once per rollout
                        mismatch.append(
                            core.engine_mismatch(old, chunk.engine_logp, chunk.completion_mask)
                        )
                        if cfg.rollout.tis_cap is not None:
                            chunk.is_weights = core.truncated_is_weights(
                                old, chunk.engine_logp, cfg.rollout.tis_cap
                            )
                    out = core.policy_loss(
                        logp,
                        old,
                        chunk.advantages,
                        chunk.completion_mask * chunk.keep[:, None],
                        eps_low=grpo.eps_low,
                        eps_high=grpo.eps_high,
                        aggregation=grpo.loss_aggregation,
                        ratio_level=grpo.ratio_level,
                        ref_logp=chunk.ref_logp,
                        beta=grpo.beta,
                        max_length=grpo.max_completion_length,
                        num_sequences=max(num_seqs, 1),
                        num_tokens=max(num_tokens, 1.0),
                        is_weights=chunk.is_weights,
                    )
                    accelerator.backward(out.loss)
                stats["loss"].append(out.loss.item())
                stats["kl"].append(out.kl.item())
                stats["clip_fraction"].append(out.clip_fraction.item())
                stats["approx_kl"].append(out.approx_kl.item())
                stats["ratio"].append(out.ratio_mean.item())
            grad_norm = gradient_norm(accelerator, policy, optim.max_grad_norm)
            if guard.allows(grad_norm, stats["loss"][-1], step + 1):
                optimizer.step()
            scheduler.step()  # the schedule follows the step count, skipped updates included
            optimizer.zero_grad(set_to_none=True)

        #### LOGGING, CHECKPOINTS ####
        mean_reward = rewards.mean().item()
        history.append(mean_reward)
        lengths = torch.cat([c.completion_mask.sum(1).float().cpu() for c in chunks])
        record = {
            "step": step + 1,
            "reward": mean_reward,
            "reward_std": rewards.std().item(),
            **{f"rewards/{n}": _nanmean(table[:, j + 1]) for j, n in enumerate(names)},
            **{f"rewards/{n}_std": _nanstd(table[:, j + 1]) for j, n in enumerate(names)},
            "zero_std_fraction": adv.zero_std_fraction,
            "loss": sum(stats["loss"]) / grpo.num_iterations,
            "kl": _mean(stats["kl"]),
            "clip_fraction": _mean(stats["clip_fraction"]),
            "approx_kl": _mean(stats["approx_kl"]),
            "ratio_mean": _mean(stats["ratio"]),
            "completion_length": lengths.mean().item(),
            "grad_norm": float(grad_norm),
            "lr": scheduler.get_last_lr()[0],
            "reward_errors": result.num_errors,
            "skipped_updates": guard.total - skipped,
            **engine_metrics(mismatch, chunks, sync_seconds),
            "seconds": time.perf_counter() - t0,
        }
        if (step + 1) % cfg.run.log_every == 0 or step + 1 == cfg.run.max_steps:
            metrics.write(record)
            if cfg.run.report_to:
                accelerator.log(record, step=step + 1)
            if accelerator.is_main_process and step == start_step:
                (run_dir / "samples.jsonl").write_text(
                    "".join(
                        json.dumps({"step": step + 1, "completion": t}) + "\n" for t in texts[:8]
                    )
                )
        bar.set_postfix(reward=f"{mean_reward:.3f}", kl=f"{record['kl']:.4f}")
        done = step + 1
        if (cfg.run.save_every and done % cfg.run.save_every == 0) or done == cfg.run.max_steps:
            save_checkpoint(
                run_dir,
                done,
                model=unwrapped,
                optimizer=optimizer,
                scheduler=scheduler,
                state={"seed": cfg.run.seed, "config": to_dict(cfg)},
                accelerator=accelerator,
                keep_last=cfg.run.keep_checkpoints,
            )

    if cfg.run.save_final:
        save_final(adapter, unwrapped, run_dir / "final", accelerator, lora=cfg.model.lora.enabled)
    accelerator.wait_for_everyone()
    if engine is not None:
        engine.close()
    accelerator.end_training()
    return {
        "run_dir": str(run_dir),
        "steps": cfg.run.max_steps,
        "first_reward": history[0] if history else math.nan,
        "last_reward": history[-1] if history else math.nan,
        "rewards": history,
        "model": unwrapped,
    }


def save_final(adapter, model, folder, accelerator, *, lora: bool) -> None:
    """The trained model (its LoRA adapter, or all of it) and the processor, in `folder`.

    A sharded model's weights are gathered whole first, which every process takes part in: the
    LoRA weights under LoRA, the full state otherwise."""
    state = None
    if is_sharded(model):
        state = (
            trainable_state_dict(model)
            if lora
            else {name: full_tensor(t).cpu() for name, t in model.state_dict().items()}
        )
    if accelerator.is_main_process:
        model.save_pretrained(folder, state_dict=state)
        adapter.processor.save_pretrained(folder)


def engine_rollout(engine, adapter, prompts, images, counts, sampling, *, seed, device):
    """counts[i] completions of prompt i sampled by the rollout engine, as `Completions`, with
    the engine's log-probs of them (b, L); the samples of prompt i use seeds seed + offset_i,
    seed + offset_i + 1, ... (one per sample of the micro-batch), so a resumed step redraws them."""
    from vrl.models.vllm_engine import engine_prompts, sampling_args, to_completions

    offsets = [sum(counts[:i]) for i in range(len(counts))]
    samples = engine.sample(
        engine_prompts(prompts, images),
        counts,
        sampling_args(adapter, sampling),
        [(seed + o) % 2**63 for o in offsets],
    )
    return to_completions(adapter, samples, device)


def engine_metrics(mismatch, chunks, sync_seconds: float) -> dict[str, float]:
    """engine/* metrics of a step: how far vLLM's log-probs of its samples are from the trainer's
    (mean |logp_trainer - logp_vllm| over the tokens, the extreme per-token ratios), the mean TIS
    weight, and the seconds the weight push took; none with the hf engine."""
    if not mismatch:
        return {}
    record = {
        "engine/logp_abs_diff": _mean([m["logp_abs_diff"] for m in mismatch]),
        "engine/ratio_max": max(m["ratio_max"] for m in mismatch),
        "engine/ratio_min": min(m["ratio_min"] for m in mismatch),
        "engine/sync_seconds": sync_seconds,
    }
    weighted = [c for c in chunks if c.is_weights is not None]
    if weighted:
        total = sum(float((c.is_weights * c.completion_mask).sum()) for c in weighted)
        tokens = sum(float(c.completion_mask.sum()) for c in weighted)
        record["engine/tis_weight_mean"] = total / max(tokens, 1.0)
    return record


def reference_logprobs(adapter, unwrapped, ref_model, batch, out, scoring) -> torch.Tensor:
    """Reference log-probs: the adapter-disabled policy under LoRA, else the frozen copy."""
    if ref_model is not None:
        return adapter.token_logprobs(ref_model, batch, out.ids, out.mask, **scoring)
    with unwrapped.disable_adapter():
        return adapter.token_logprobs(unwrapped, batch, out.ids, out.mask, **scoring)


def box_transform(adapter, original_size, input_size):
    """The model-to-original-pixels box map of one prompt (its first image)."""
    if original_size is None or input_size is None:
        return None
    return lambda box: adapter.box_to_original(box, original_size, input_size)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _nanmean(t: torch.Tensor) -> float:
    return t.nanmean().item() if (~t.isnan()).any() else math.nan


def _nanstd(t: torch.Tensor) -> float:
    v = t[~t.isnan()]
    return v.std().item() if v.numel() > 1 else math.nan
