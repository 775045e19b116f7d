"""GRPO for flow-matching text-to-image models (Flow-GRPO, with HiCoGen's noise schedules).

One step reads top to bottom:

    #### ROLLOUT ####    P prompts x G images, sampled with a stochastic step (SDE or CPS) under a
                         noise schedule; each trajectory stores its latents and per-step log-probs
    #### REWARD ####     image rewards from the registry, gathered from every process
    #### ADVANTAGE ####  group advantages from vrl.core, clipped to +-adv_clip_max
    #### TRAINING ####   the objective named by grpo.objective (vrl.trainers.objectives: sde =
                         Flow-GRPO, awm = Advantage Weighted Matching, nft = DiffusionNFT)
                         draws its items once per rollout and turns each into a loss; gradients
                         accumulate over the items, then one optimizer step per iteration

The formulas are in docs/algorithms.md ("flow matching and samplers", "diffusion objectives").

With `chain.enabled` (HiCoGen) a rollout is a chain of synthesis per prompt: its scene (JSONL
metadata, the template parser or a local LLM) gives the units, each unit is drawn from the canvas so
far, a final pass composes the full prompt, and every pass's trajectory is trained like any other
(`chain.credit` picks whose advantage a unit pass gets). The hierarchical reward is built from the
`hierarchical` section (its levels, weights and models) and summed with `grpo.rewards`, each of
its levels logged on its own. Prompts travel as `ImageSample`s (prompt, scene, references).

Simplifications, stated: all images of a micro-batch share the timesteps; the same steps are
trained for every sample of a rollout; steps whose noise level is 0 (ODE) carry no log-prob and are
never trained; the last step is skipped by default.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from vrl import core
from vrl.checkpoint import load_checkpoint, save_checkpoint
from vrl.config import to_dict
from vrl.data.t2i import ImageSample, load_prompts
from vrl.rewards import WeightedReward
from vrl.samplers import from_config, sample
from vrl.sharding import full_tensor, is_sharded
from vrl.trainers.common import (
    EMA,
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
from vrl.trainers.objectives import (
    OBJECTIVES,
    STATS,
    ObjectiveContext,
    RolloutChunk,
    objective_metrics,
)
from vrl.trainers.policies import load_diffusion_policy
from vrl.trainers.run_folder import apply_optim_settings, open_run_folder

logger = logging.getLogger(__name__)


class PromptEmbedCache:
    """The text encoders are frozen, so each distinct prompt is encoded once. Least recently used
    entries are dropped past `max_entries` (a real T5 embedding is megabytes)."""

    def __init__(self, adapter, max_entries: int = 1024):
        self.adapter, self.max_entries = adapter, max_entries
        self.entries: OrderedDict[str, Any] = OrderedDict()

    def __call__(self, prompts: list[str]):
        from vrl.models.diffusion import PromptEmbeds

        missing = [p for p in dict.fromkeys(prompts) if p not in self.entries]
        if missing:
            embeds = self.adapter.encode_prompts(missing)
            for i, prompt in enumerate(missing):
                self.entries[prompt] = embeds[i]  # an int index keeps the batch dimension
        for prompt in prompts:
            self.entries.move_to_end(prompt)
        batch = PromptEmbeds.cat([self.entries[p] for p in prompts])
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
        return batch


def train(cfg) -> dict[str, Any]:
    """Run diffusion GRPO as configured; returns a summary with the trained adapter."""
    accelerator = make_accelerator(cfg.run)
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    grpo, optim, smp = cfg.grpo, cfg.optim, cfg.sampling
    n_local = check_process_split(grpo.prompts_per_step, grpo.group_size, world)
    folder = open_run_folder(cfg, accelerator)  # before anything loads: a refusal costs nothing
    run_dir = folder.path
    set_seed(cfg.run.seed)

    prompts = load_prompts(cfg.prompts.train, skip_bad_lines=cfg.prompts.skip_bad_lines)
    eval_prompts = (load_prompts(cfg.prompts.eval) if cfg.prompts.eval else prompts)[
        : cfg.prompts.num_eval
    ]
    with accelerator.main_process_first():  # the main process decomposes; the others read its cache
        scened, sources = attach_scenes(
            [*prompts, *eval_prompts],
            cfg.chain,
            run_dir / "scenes.jsonl" if cfg.chain.decompose == "llm" else None,
        )
        prompts, eval_prompts = scened[: len(prompts)], scened[len(prompts) :]
    logger.info("scenes by source: %s", sources)
    hierarchical = cfg.hierarchical.build(device)  # its models loaded once; None if unweighted
    reward_fn = WeightedReward(
        grpo.rewards,
        modality="image",
        components=hierarchical.components() if hierarchical else None,
    )
    schedule = from_config(smp.noise)
    with accelerator.main_process_first():
        adapter, ref_transformer = load_diffusion_policy(cfg, accelerator)
    transformer = adapter.transformer
    optimizer, scheduler = build_optimizer(
        transformer, optim, cfg.run.max_steps * grpo.num_iterations
    )
    # stepped here, once per optimizer step (prepared, accelerate steps it once per process)
    policy, optimizer = accelerator.prepare(transformer, optimizer)
    unwrapped = accelerator.unwrap_model(policy)
    guard = UpdateGuard(cfg.run.max_bad_updates)
    ema = EMA(unwrapped, cfg.eval.ema_decay) if cfg.eval.ema else None
    # DiffusionNFT's sampling policy: a slow EMA of the trained weights draws the rollouts and
    # anchors the implicit policies (None: the trained weights do both)
    sampler = EMA(unwrapped, grpo.sampler_decay) if grpo.sampler_decay > 0 else None
    objective = OBJECTIVES[grpo.objective]
    ctx = ObjectiveContext(adapter, policy, unwrapped, ref_transformer, cfg)
    sigmas = adapter.sigmas(smp.num_steps, smp.height, smp.width).to(device)
    encode = PromptEmbedCache(adapter)

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
        for name, averaged in (("ema", ema), ("sampler", sampler)):
            if averaged is not None and name in state.get("extra", {}):
                averaged.load(state["extra"][name])
        truncate_metrics(run_dir / "metrics.jsonl", start_step, accelerator.is_main_process)
        logger.info("resumed from %s at step %d", folder.checkpoint, start_step)
    if accelerator.is_main_process and cfg.run.report_to:
        accelerator.init_trackers("vrl-diffusion", config={"seed": cfg.run.seed})
    metrics = MetricsWriter(run_dir / "metrics.jsonl", enabled=accelerator.is_main_process)
    order = sample_order(len(prompts), cfg.run.seed)
    history: list[float] = []
    evaluate = EvalRunner(cfg, adapter, eval_prompts, reward_fn, run_dir, accelerator)
    eval_results = {}
    if start_step == 0:
        eval_results["before"] = evaluate(unwrapped, ema, step=0)

    bar = tqdm(
        range(start_step, cfg.run.max_steps),
        initial=start_step,
        total=cfg.run.max_steps,
        desc="Diffusion GRPO",
        disable=not accelerator.is_local_main_process,
    )
    for step in bar:
        t0 = time.perf_counter()
        #### ROLLOUT ####
        local_items = local_step_items(
            order, step, grpo.prompts_per_step, grpo.group_size, rank, n_local
        )
        # noise depends only on (seed, step, rank); the window of noisy steps only on (seed, step),
        # so every process trains the same steps and a resumed run replays the same rollout
        step_gen = torch.Generator().manual_seed(step_seed(cfg.run.seed, step, stream=1))
        levels = schedule.levels(smp.num_steps, generator=step_gen).to(device)  # (T,)
        noise_gen = torch.Generator(device).manual_seed(step_seed(cfg.run.seed, step, rank))
        policy.eval()
        local_samples = [prompts[i] for i in local_items]
        unit_table = torch.full((n_local, cfg.chain.max_units), math.nan)  # (n_local, U)
        # nft with sampler_decay: the rollouts are drawn with the sampling policy's weights
        with sampler.swapped_in(unwrapped) if sampler is not None else contextlib.nullcontext():
            if cfg.chain.enabled:
                roll = chain_rollout(
                    adapter, unwrapped, local_items, prompts, cfg, schedule, encode, noise_gen,
                    step_gen,
                )  # fmt: skip
                chunks, images, samples = roll.chunks, roll.images, roll.samples
                if cfg.chain.credit == "unit":
                    for k, lo, unit_images, unit_samples in roll.units:
                        unit_table[lo : lo + len(unit_samples), k] = reward_fn(
                            unit_images, unit_samples
                        ).total
            else:
                chunks, images, samples = [], [], []
                for lo in range(0, n_local, optim.micro_batch_size):
                    batch = local_samples[lo : lo + optim.micro_batch_size]
                    embeds = encode([s.prompt for s in batch])
                    noise = adapter.initial_noise(len(batch), smp.height, smp.width, noise_gen)
                    with torch.no_grad():
                        trajectory = sample(
                            adapter.velocity_fn(unwrapped, embeds, smp.guidance_scale),
                            noise,
                            sigmas,
                            step=smp.step,
                            schedule=levels,
                            generator=noise_gen,
                        )
                        images.append(adapter.decode(trajectory.final, (smp.height, smp.width)))
                    chunks.append(RolloutChunk(embeds, trajectory, offset=lo))
                    samples.extend(batch)

        #### REWARD ####
        result = reward_fn(torch.cat(images), samples)
        names = list(result.components)
        local_table = torch.stack([result.total, *(result.components[n] for n in names)], dim=1)
        table = accelerator.gather(local_table.to(device)).cpu()  # (P*G, 1 + K)
        rewards = table[:, 0]

        #### ADVANTAGE ####
        adv = core.group_advantages(rewards, grpo.group_size, grpo.advantage_scale)
        advantages = adv.advantages.clamp(-grpo.adv_clip_max, grpo.adv_clip_max)
        local_adv = advantages[rank * n_local : (rank + 1) * n_local].to(device)
        if cfg.chain.enabled and cfg.chain.credit == "unit":
            units = accelerator.gather(unit_table.to(device)).cpu()  # (P*G, U)
            unit_adv = unit_advantages(units, grpo)[rank * n_local : (rank + 1) * n_local]
        for chunk in chunks:
            b = chunk.trajectory.latents.shape[0]
            if chunk.unit is not None and cfg.chain.credit == "unit":
                chunk.advantages = unit_adv[chunk.offset : chunk.offset + b, chunk.unit].to(device)
            else:
                chunk.advantages = local_adv[chunk.offset : chunk.offset + b]

        #### TRAINING ####
        # the objective's items (stored steps, or noised copies of each pass's images), drawn once
        work = objective.work(ctx, chunks, levels, step_gen, noise_gen, sampler)
        normaliser = max(sum(c.trajectory.latents.shape[0] for c, _ in work), 1)
        policy.train()
        stats: dict[str, list[float]] = {k: [] for k in STATS}
        losses: list[float] = []
        grad_norm = torch.tensor(0.0)
        skipped = guard.total
        for _ in range(grpo.num_iterations):
            for w, (chunk, item) in enumerate(work):
                last = w == len(work) - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(policy):
                    loss, item_stats = objective.loss(ctx, chunk, item, normaliser)
                    accelerator.backward(loss)
                for key, value in item_stats.items():
                    stats[key].append(value)
                losses.append(loss.item())
            grad_norm = gradient_norm(accelerator, policy, optim.max_grad_norm)
            if guard.allows(grad_norm, losses[-1] if losses else math.nan, step + 1):
                optimizer.step()
                for averaged in (ema, sampler):
                    if averaged is not None:
                        averaged.update(unwrapped)
            scheduler.step()  # the schedule follows the step count, skipped updates included
            optimizer.zero_grad(set_to_none=True)

        #### LOGGING, EVALUATION, CHECKPOINTS ####
        done = step + 1
        mean_reward = rewards.mean().item()
        history.append(mean_reward)
        record = {
            "step": done,
            "reward": mean_reward,
            "reward_std": rewards.std().item(),
            **{f"rewards/{n}": table[:, j + 1].nanmean().item() for j, n in enumerate(names)},
            "zero_std_fraction": adv.zero_std_fraction,
            "loss": sum(losses),
            **objective_metrics(stats),
            "trained_steps": normaliser / n_local,  # trained transitions per image (all passes)
            "noise_mean": levels.mean().item(),
            "grad_norm": float(grad_norm),
            "lr": scheduler.get_last_lr()[0],
            "reward_errors": result.num_errors,
            "skipped_updates": guard.total - skipped,
            **chain_metrics(cfg, chunks, unit_table, n_local),
            "seconds": time.perf_counter() - t0,
        }
        if cfg.eval.every and done % cfg.eval.every == 0 and done != cfg.run.max_steps:
            record.update({f"eval/{k}": v for k, v in evaluate(unwrapped, ema, done).items()})
        if done % cfg.run.log_every == 0 or done == cfg.run.max_steps:
            metrics.write(record)
            if cfg.run.report_to:
                accelerator.log(record, step=done)
        bar.set_postfix(reward=f"{mean_reward:.3f}")
        if (cfg.run.save_every and done % cfg.run.save_every == 0) or done == cfg.run.max_steps:
            save_checkpoint(
                run_dir, done, model=unwrapped, optimizer=optimizer, scheduler=scheduler,
                state={"seed": cfg.run.seed, "config": to_dict(cfg)}, accelerator=accelerator,
                keep_last=cfg.run.keep_checkpoints,
                extra={name: averaged.state_dict() for name, averaged in
                       (("ema", ema), ("sampler", sampler)) if averaged is not None} or None,
            )  # fmt: skip

    eval_results["after"] = evaluate(unwrapped, ema, step=cfg.run.max_steps)
    if cfg.run.save_final and (accelerator.is_main_process or is_sharded(unwrapped)):
        save_final(
            adapter, unwrapped, ema, run_dir / "final", lora=cfg.model.lora.enabled,
            write=accelerator.is_main_process,
        )  # fmt: skip
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {
        "run_dir": str(run_dir),
        "steps": cfg.run.max_steps,
        "rewards": history,
        "eval": eval_results,
        "scenes": sources,
        "adapter": adapter,
    }


@dataclass
class ChainRollout:
    chunks: list[RolloutChunk]  # one per pass of every chain
    images: list[torch.Tensor]  # final images, (b, 3, H, W) per chain
    samples: list[ImageSample]  # what the final images are scored against (unit references)
    # credit="unit": (unit k, first local sample, unit images (b, 3, H, W), samples for unit k)
    units: list[tuple[int, int, torch.Tensor, list[ImageSample]]]


def chain_rollout(
    adapter, model, local_items, prompts, cfg, schedule, encode, noise_gen, level_gen
) -> ChainRollout:
    """One chain of synthesis per run of equal prompts (a group's share on this process) and
    micro-batch. Every pass becomes a trainable chunk; the final images are what the rewards see,
    with each subject's unit image as its reference (R_subject's DINO term)."""
    from vrl.hicogen.chain import plan_boxes, plan_chain, synthesize_chain

    smp, ch, micro = cfg.sampling, cfg.chain, cfg.optim.micro_batch_size
    out = ChainRollout([], [], [], [])
    lo = 0
    for index, count in zip(*group_runs(local_items), strict=True):
        item = prompts[index]
        plan = plan_chain(item.scene, item.prompt, form=ch.unit_prompts, max_units=ch.max_units)
        boxes = plan_boxes(plan, smp.height) if ch.boxes == "world" else None
        for start in range(0, count, micro):
            b = min(micro, count - start)
            chain = synthesize_chain(
                adapter, model, plan.unit_prompts, plan.final_prompt, batch_size=b,
                height=smp.height, width=smp.width, num_steps=smp.num_steps,
                guidance_scale=smp.guidance_scale, step=smp.step, schedule=schedule,
                generator=noise_gen, encode=encode, level_generator=level_gen, box_images=boxes,
                **ch.chain_kwargs(adapter),
            )  # fmt: skip
            for k, pass_ in enumerate(chain.steps):
                unit = k if k < len(plan.units) else None
                out.chunks.append(RolloutChunk(pass_.embeds, pass_.trajectory, lo, unit))
            out.images.append(chain.final)
            refs = [plan.references(chain, i) for i in range(b)]
            out.samples.extend(item.with_references(r) for r in refs)
            if ch.credit == "unit":  # unit k's image is graded against the scene drawn so far
                for k in range(len(plan.units)):
                    graded = item.with_scene(plan.partial_scene(k), plan.partial_prompt(k))
                    unit_samples = [graded.with_references(r) for r in refs]
                    out.units.append((k, lo, chain.steps[k].image, unit_samples))
            lo += b
    return out


def unit_advantages(table: torch.Tensor, grpo) -> torch.Tensor:
    """(N, U) group advantages of the unit rewards, column by column; 0 where a unit is absent.

    A group shares its prompt, hence its units: a column is NaN for a whole group or for none.
    """
    out = torch.zeros_like(table)
    for k in range(table.shape[1]):
        column = table[:, k]
        present = ~column.isnan()
        if present.any():
            adv = core.group_advantages(
                column.nan_to_num(0.0), grpo.group_size, grpo.advantage_scale
            )
            out[:, k] = torch.where(present, adv.advantages, 0.0).clamp(
                -grpo.adv_clip_max, grpo.adv_clip_max
            )
    return out


def chain_metrics(cfg, chunks: list[RolloutChunk], unit_table: torch.Tensor, n_local: int):
    """Chain-of-synthesis figures for the metrics log: passes per image, mean unit reward."""
    if not cfg.chain.enabled:
        return {}
    passes = sum(c.trajectory.latents.shape[0] for c in chunks) / n_local
    out = {"chain/passes": passes}
    if cfg.chain.credit == "unit" and not unit_table.isnan().all():
        out["chain/unit_reward"] = unit_table.nanmean().item()
    return out


def attach_scenes(
    samples: list[ImageSample], chain, cache: Path | None
) -> tuple[list[ImageSample], dict[str, int]]:
    """Every sample with its scene (metadata, LLM, template or fallback), in order, and how many
    came from each source (a sample listed twice is decomposed and counted once).

    LLM decompositions are appended to `cache` (JSONL) and read back by a resumed run and by the
    other processes, so each prompt is decomposed once.
    """
    import json
    from collections import Counter

    from vrl.hicogen.decompose import LLMDecomposer, scene_for_row
    from vrl.hicogen.scene import Scene

    unique = list({id(s): s for s in samples}.values())
    cached: dict[str, Scene] = {}
    if cache is not None and cache.is_file():
        for line in cache.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            cached[record["prompt"]] = Scene.from_json(record["scene"])
    pending = [s for s in unique if s.scene is None and s.prompt not in cached]
    decomposer = None
    if chain.decompose == "llm" and pending:
        decomposer = LLMDecomposer.from_pretrained(chain.llm)
    counts: Counter[str] = Counter()
    fresh: dict[str, Scene] = {}
    scened: dict[int, ImageSample] = {}
    for item in unique:
        if item.scene is None and item.prompt in cached:
            scened[id(item)] = item.with_scene(cached[item.prompt])
            counts["cache"] += 1
            continue
        result = scene_for_row(item, decomposer)
        scened[id(item)] = item.with_scene(result.scene)
        counts[result.source] += 1
        if decomposer is not None and result.source != "metadata":
            fresh[item.prompt] = result.scene
    if cache is not None and fresh:
        with cache.open("a", encoding="utf-8") as f:
            for prompt, scene in fresh.items():
                f.write(json.dumps({"prompt": prompt, "scene": scene.to_dict()}) + "\n")
    return [scened[id(s)] for s in samples], dict(counts)


class EvalRunner:
    """Deterministic evaluation: fixed prompts and noise, ODE sampling with the evaluation step
    count, EMA weights when enabled; writes an image grid per evaluation."""

    def __init__(self, cfg, adapter, prompts, reward_fn, run_dir: Path, accelerator):
        self.cfg, self.adapter, self.prompts, self.reward_fn = cfg, adapter, prompts, reward_fn
        self.run_dir, self.accelerator = run_dir, accelerator

    @torch.no_grad()
    def __call__(self, model, ema, step: int) -> dict[str, float]:
        smp = self.cfg.sampling
        context = ema.swapped_in(model) if ema is not None else contextlib.nullcontext()
        chains: list[torch.Tensor] = []
        with context:
            if self.cfg.chain.enabled:
                images, samples, chains = self._chains(model)
            else:
                samples = self.prompts
                images = generate_images(
                    self.adapter, model, [s.prompt for s in self.prompts],
                    height=smp.height, width=smp.width, num_steps=smp.eval_num_steps,
                    guidance_scale=smp.guidance_scale, seed=self.cfg.run.seed,
                    batch_size=self.cfg.optim.micro_batch_size,
                )  # fmt: skip
        result = self.reward_fn(images, samples)
        out = {"reward": result.total.mean().item()}
        out.update({n: v.nanmean().item() for n, v in result.components.items()})
        if self.accelerator.is_main_process:
            from torchvision.utils import save_image

            folder = self.run_dir / "eval"
            folder.mkdir(parents=True, exist_ok=True)
            save_image(images, folder / f"step-{step}.png", nrow=8, padding=1)
            if chains:  # one row per prompt: unit images, then the final pass
                width = max(len(c) for c in chains)
                grid = [torch.cat([c, c.new_ones(width - len(c), *c.shape[1:])]) for c in chains]
                save_image(
                    torch.cat(grid), folder / f"step-{step}-chains.png", nrow=width, padding=1
                )
        return out

    def _chains(self, model):
        """Deterministic chains (`eval_chain`: ODE, seed = run seed + prompt index) for the
        evaluation prompts; each final image is scored with its unit images as references."""
        from vrl.hicogen.chain import eval_chain

        smp, ch = self.cfg.sampling, self.cfg.chain
        images, samples, strips = [], [], []
        for i, item in enumerate(self.prompts):
            plan, chain = eval_chain(
                self.adapter, model, item.scene, item.prompt, seed=self.cfg.run.seed + i,
                height=smp.height, width=smp.width, num_steps=smp.eval_num_steps,
                guidance_scale=smp.guidance_scale, prompt_form=ch.unit_prompts,
                max_units=ch.max_units, boxes=ch.boxes, **ch.chain_kwargs(self.adapter),
            )  # fmt: skip
            images.append(chain.final)
            samples.append(item.with_references(plan.references(chain, 0)))
            if i < 8:
                strips.append(torch.cat(chain.images))  # (passes, 3, H, W)
        return torch.cat(images), samples, strips


@torch.no_grad()
def generate_images(
    adapter,
    transformer,
    prompts: list[str],
    *,
    height: int,
    width: int,
    num_steps: int,
    guidance_scale: float,
    seed: int,
    batch_size: int = 8,
    schedule=None,
    step: str = "sde",
) -> torch.Tensor:
    """(N, 3, H, W) images in [0, 1]; deterministic (ODE) unless a noise schedule is given."""
    sigmas = adapter.sigmas(num_steps, height, width).to(adapter.device)
    gen = torch.Generator(adapter.device).manual_seed(seed)
    out = []
    for lo in range(0, len(prompts), batch_size):
        chunk = prompts[lo : lo + batch_size]
        embeds = adapter.encode_prompts(chunk)
        noise = adapter.initial_noise(len(chunk), height, width, gen)
        traj = sample(
            adapter.velocity_fn(transformer, embeds, guidance_scale), noise, sigmas,
            step=step, schedule=schedule, generator=gen, store_trajectory=False,
        )  # fmt: skip
        out.append(adapter.decode(traj.final, (height, width)))
    return torch.cat(out)


def save_final(adapter, transformer, ema, folder: Path, *, lora: bool, write: bool = True) -> None:
    """The trained weights in the format diffusers loads: LoRA (`pipe.load_lora_weights`) or
    the full transformer; EMA weights too, in final/ema, when kept. A sharded transformer's
    weights are gathered whole by every process; the one with `write` writes them."""
    context = [(folder, contextlib.nullcontext())]
    if ema is not None:
        context.append((folder / "ema", ema.swapped_in(transformer)))
    for target, ctx in context:
        with ctx:
            state = None  # unsharded: each writer reads the model itself
            if is_sharded(transformer):
                state = adapter.lora_state_dict() if lora else transformer.state_dict()
                state = {name: full_tensor(t).cpu() for name, t in state.items()}
            if not write:
                continue
            target.mkdir(parents=True, exist_ok=True)
            if lora:
                # The LoRA config goes into the file: without it diffusers loads the adapter at
                # alpha = rank (scale 1), whatever alpha it was trained with.
                type(adapter.pipeline).save_lora_weights(
                    target,
                    transformer_lora_layers=adapter.lora_state_dict() if state is None else state,
                    transformer_lora_adapter_metadata=adapter.transformer.peft_config[
                        "default"
                    ].to_dict(),
                )
            elif state is not None:  # diffusers' save_pretrained would write the slices
                from safetensors.torch import save_file

                transformer.save_config(target / "transformer")
                save_file(state, target / "transformer" / "diffusion_pytorch_model.safetensors")
            else:
                transformer.save_pretrained(target / "transformer")
