"""Is a reward learnable by diffusion GRPO at this batch size? Gradient agreement between batches.

    python experiments/pg_gradient_agreement.py                        # world:t2i, the HiCoGen recipe
    python experiments/pg_gradient_agreement.py --images 16 64 --batches 4 --scene 3

For one prompt, K independent batches of N rollouts are drawn with the recipe's sampler (SDE steps
under its noise schedule, classifier-free guidance), and for each batch the policy gradient of the
GRPO surrogate is taken on the recipe's LoRA at the start of training (ratio 1: the gradient of
-mean_i A_i log p_ij summed over every noisy step j but the last, with group advantages from
`vrl.core`; the recipe's trainer takes a random half of those steps per rollout).
Printed per reward:

- the mean pairwise cosine of the K gradients: how much two batches agree on the update. For
  estimates g_k = g + noise_k it approaches |g|^2 / (|g|^2 + E|noise|^2 / N) (N = batch size), so
  near 0 the update is a random walk and a rise of the reward cannot be expected from a run of
  this length; the same figure for the early (high-noise) steps alone;
- the same cosine for the Advantage Weighted Matching gradient (`grpo.objective=awm`) of the
  same rollouts and advantages (minus the flow-matching loss of noised copies of each image as
  its log-likelihood), which does not correlate the reward with 3,072 dimensions of step noise;
- the gradient norm of each denoising step (sde), averaged over the batches: steps with little
  noise have a sharp Gaussian, hence a large log-prob gradient, whatever they do to the reward.

The rewards are scored on the same rollouts, so they are compared at equal sampling noise:
`redness` (a global colour shift, which the tiny recipe learns within 40 steps) against the world's
exact hierarchical reward (the quickstart's HiCoGen half, which does not).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

REWARDS = {
    "redness": {"redness": 1.0},
    "world": {"world_global": 0.5, "world_subject": 1.0, "world_relation": 1.0},
}


def policy_gradients(adapter, params, trajectory, embeds, advantages: dict, guidance, steps):
    """Per reward: the flat surrogate gradient of all `steps` and of the early half of them;
    and the gradient norm of each step."""
    from vrl.samplers import score_step

    n_early = (len(steps) + 1) // 2
    zero = [torch.zeros_like(p) for p in params]
    total = {name: list(zero) for name in advantages}
    early = {name: list(zero) for name in advantages}
    norms = {name: {} for name in advantages}
    for k, j in enumerate(steps):
        v = adapter.velocity(
            adapter.transformer, trajectory.latents[:, j], trajectory.sigmas[j],
            embeds, guidance_scale=guidance,
        )  # fmt: skip
        log_prob = score_step(trajectory, j, v).log_prob  # (N,)
        for name, adv in advantages.items():
            grads = torch.autograd.grad(
                -(adv * log_prob).mean(), params, retain_graph=True, allow_unused=True
            )
            grads = [
                torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
            ]
            norms[name][j] = float(torch.sqrt(sum((g**2).sum() for g in grads)))
            total[name] = [a + g for a, g in zip(total[name], grads, strict=True)]
            if k < n_early:
                early[name] = [a + g for a, g in zip(early[name], grads, strict=True)]
    return {n: _flat(total[n]) for n in total}, {n: _flat(early[n]) for n in early}, norms


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads])


def matching_gradients(
    adapter, params, trajectory, embeds, advantages: dict, copies, generator, guidance
):
    """Per reward: the flat Advantage Weighted Matching gradient (`grpo.objective=awm`) of the
    same rollouts: the trainer's `matching_log_prob` (minus the flow-matching loss) of `copies`
    noised copies of each image, as the log-likelihood in the surrogate at ratio 1."""
    from types import SimpleNamespace

    from vrl.trainers.diffusion_grpo import RolloutChunk, matching_item, matching_log_prob

    cfg = SimpleNamespace(
        sampling=SimpleNamespace(guidance_scale=guidance), grpo=SimpleNamespace(beta=0.0)
    )
    chunk = RolloutChunk(embeds, trajectory)
    model = adapter.transformer
    total = {name: [torch.zeros_like(p) for p in params] for name in advantages}
    for _ in range(copies):
        item = matching_item(chunk, generator)
        log_prob, _, _ = matching_log_prob(adapter, model, model, None, chunk, item, cfg)  # (N,)
        for name, adv in advantages.items():
            grads = torch.autograd.grad(
                -(adv * log_prob).mean(), params, retain_graph=True, allow_unused=True
            )
            total[name] = [
                a + (torch.zeros_like(p) if g is None else g)
                for a, p, g in zip(total[name], params, grads, strict=True)
            ]
    return {name: _flat(total[name]) for name in total}


def mean_cosine(vectors: list[torch.Tensor]) -> float:
    pairs = list(itertools.combinations(vectors, 2))
    return sum(torch.cosine_similarity(a, b, dim=0).item() for a, b in pairs) / len(pairs)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from vrl import core
    from vrl.models.diffusion import FlowMatchingAdapter
    from vrl.models.paths import resolve_pipeline_path
    from vrl.quickstart import hicogen as hicogen_rl
    from vrl.rewards import WeightedReward
    from vrl.samplers import from_config, sample

    recipe = hicogen_rl.RECIPE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=recipe["model"]["path"])
    parser.add_argument("--scene", type=int, default=0, help="training scene of seed 0 (index)")
    parser.add_argument("--images", type=int, nargs="+", default=[16, 64], help="batch sizes N")
    parser.add_argument("--batches", type=int, default=3, help="independent batches K (>= 2)")
    parser.add_argument("--awm-times", type=int, default=2, help="noised copies per image")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.batches < 2:
        parser.error("--batches must be >= 2 (the cosine needs a pair)")
    torch.set_num_threads(args.threads)

    smp, lora = recipe["sampling"], recipe["model"]["lora"]
    adapter = FlowMatchingAdapter.from_pretrained(resolve_pipeline_path(args.model))
    adapter.add_lora(lora["r"], lora["alpha"], target_modules=lora["target_modules"].split(","))
    params = [p for p in adapter.transformer.parameters() if p.requires_grad]
    scene = hicogen_rl.world_scenes(args.scene + 1, 0, "train")[args.scene]
    prompt, T, guidance = scene.prompt(), smp["num_steps"], smp["guidance_scale"]
    levels = from_config(smp["noise"]).levels(T)
    sigmas = adapter.sigmas(T, smp["height"], smp["width"])
    steps = [j for j in range(T - 1) if levels[j] > 0]  # the trainer skips the last step
    rewards = {name: WeightedReward(w, modality="image") for name, w in REWARDS.items()}
    generator = torch.Generator().manual_seed(args.seed)
    print(f"prompt: {prompt!r}; {T} steps, levels {[round(x, 2) for x in levels.tolist()]}")
    for n in args.images:
        embeds = adapter.encode_prompts([prompt]).repeat_interleave(n)
        rows = [{"scene": scene, "prompt": prompt}] * n
        total, early = {k: [] for k in rewards}, {k: [] for k in rewards}
        matching = {k: [] for k in rewards}
        norms = {k: torch.zeros(T) for k in rewards}
        for _ in range(args.batches):
            with torch.no_grad():
                noise = adapter.initial_noise(n, smp["height"], smp["width"], generator)
                traj = sample(
                    adapter.velocity_fn(adapter.transformer, embeds, guidance), noise, sigmas,
                    step="sde", schedule=levels, generator=generator,
                )  # fmt: skip
                images = adapter.decode(traj.final, (smp["height"], smp["width"]))
            advantages = {
                k: core.group_advantages(fn(images, rows).total, n, "group").advantages
                for k, fn in rewards.items()
            }
            g_all, g_early, step_norms = policy_gradients(
                adapter, params, traj, embeds, advantages, guidance, steps
            )
            g_awm = matching_gradients(
                adapter, params, traj, embeds, advantages, args.awm_times, generator, guidance
            )
            for k in rewards:
                matching[k].append(g_awm[k])
                total[k].append(g_all[k])
                early[k].append(g_early[k])
                for j, value in step_norms[k].items():
                    norms[k][j] += value / args.batches
        for k in rewards:
            per_step = " ".join(f"{norms[k][j]:.3g}" for j in steps)
            print(
                f"N={n:3d} {k:8s} cosine sde: all steps {mean_cosine(total[k]):+.3f}, early steps "
                f"{mean_cosine(early[k]):+.3f}; awm {mean_cosine(matching[k]):+.3f}; "
                f"sde grad norm per step: {per_step}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
