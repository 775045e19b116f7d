"""Can a diffusion RL objective fit ONE shapes-world prompt? Flow-GRPO (sde), AWM, DiffusionNFT.

    python experiments/world_one_prompt_fit.py --scene 4                      # sde and awm
    python experiments/world_one_prompt_fit.py --scene 4 --objectives awm nft
    python experiments/world_one_prompt_fit.py --scene 3 --objectives awm optim.lr=3e-3

The smallest learning check of the HiCoGen world half: `vrl.trainers.diffusion_grpo.train` on a
single training scene of seed 0 (the recipe of `vrl.quickstart.hicogen` without the chain and
without KL, 40 steps of 16 images of that prompt, any further `key=value` overrides), once per
objective. Printed per objective: the training reward (the world's exact hierarchical reward,
mean of every 5 steps) and the reward of 32 fixed-noise ODE images of the prompt (10 steps,
guidance as in the recipe) before and after. A reward that cannot rise here cannot rise over
many prompts either.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

FIXED = ["chain.enabled=false", "grpo.beta=0", "grpo.group_size=16", "grpo.prompts_per_step=1"]


@torch.no_grad()
def ode_reward(adapter, transformer, row, reward_fn, cfg, n: int = 32) -> float:
    """Mean reward of n images of the row's prompt, ODE from fixed noise (seed 123)."""
    from vrl.trainers.diffusion_grpo import generate_images

    smp = cfg.sampling
    images = generate_images(
        adapter, transformer, [row["prompt"]] * n, height=smp.height, width=smp.width,
        num_steps=smp.eval_num_steps, guidance_scale=smp.guidance_scale, seed=123, batch_size=n,
    )  # fmt: skip
    return reward_fn(images, [row] * n).total.mean().item()


def fit(out: Path, scene: int, objective: str, overrides: list[str]) -> dict:
    from vrl.config import apply_overrides, build_config
    from vrl.data.t2i import load_prompts
    from vrl.models.diffusion import FlowMatchingAdapter
    from vrl.models.paths import resolve_pipeline_path
    from vrl.quickstart import hicogen as hicogen_rl
    from vrl.rewards import WeightedReward
    from vrl.trainers.diffusion_config import DiffusionTrainConfig
    from vrl.trainers.diffusion_grpo import train

    recipe = json.loads(json.dumps(hicogen_rl.RECIPE))
    path = resolve_pipeline_path(recipe["model"]["path"])
    chosen = hicogen_rl.world_scenes(scene + 1, 0, "train")[scene]
    prompts = hicogen_rl.write_prompts(out / "train.jsonl", [chosen], 0, hicogen_rl.token_fit(path))
    recipe["prompts"].update(train=str(prompts), eval=str(prompts), num_eval=1)
    recipe["run"].update(output_dir=str(out / "run"), seed=0, save_final=False)
    recipe = apply_overrides(recipe, [*FIXED, f"grpo.objective={objective}", *overrides])
    cfg = build_config(DiffusionTrainConfig, recipe, "one-prompt fit")
    row = load_prompts(prompts)[0].with_scene(chosen)
    world = cfg.hierarchical.build()  # the recipe's world reward, as the trainer builds it
    reward_fn = WeightedReward(
        cfg.grpo.rewards, modality="image", components=world.components() if world else None
    )
    base = FlowMatchingAdapter.from_pretrained(path)
    before = ode_reward(base, base.transformer, row, reward_fn, cfg)
    del base
    summary = train(cfg)
    tuned = summary["adapter"]
    after = ode_reward(tuned, tuned.transformer, row, reward_fn, cfg)
    r = summary["rewards"]
    return {
        "prompt": row["prompt"],
        "training": [round(sum(r[i : i + 5]) / len(r[i : i + 5]), 3) for i in range(0, len(r), 5)],
        "ode_before": round(before, 3),
        "ode_after": round(after, 3),
    }


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=int, default=4, help="training scene of seed 0 (index)")
    parser.add_argument(
        "--objectives", nargs="+", default=["sde", "awm"], choices=["sde", "awm", "nft"]
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="recipe key=value overrides")
    from vrl.config import overrides_first

    args = parser.parse_args(overrides_first(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for objective in args.objectives:
            result = fit(Path(tmp) / objective, args.scene, objective, args.overrides)
            print(
                f"{objective}: {result['prompt']!r}; training reward per 5 steps "
                f"{result['training']}; 32 ODE images {result['ode_before']} -> "
                f"{result['ode_after']}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
