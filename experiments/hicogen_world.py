"""HiCoGen on the shapes world: held-out gain per level over seeds, and the noise-schedule ablation.

    python experiments/hicogen_world.py --seeds 0 1 2                      # the quickstart half
    python experiments/hicogen_world.py --seeds 0 1 2 --schedules decaying constant window
    python experiments/hicogen_world.py --seeds 0 --train-scenes 4        # can it fit 4 prompts?

Each (schedule, seed) runs `vrl.quickstart.hicogen.run`: the quickstart's HiCoGen recipe (since
2026-12-06 on the committed `world:kontext`, the chain in context, scenes of 2-3 subjects; the
figures dated before that came from `world:t2i`'s image-to-image chain on two-subject scenes),
then per-level accuracy (exist, attribute, relation; DSG dependencies) of deterministic chains
on held-out test-split scenes, read by the exact checker, before and after. The whole table
(flat pass, image-to-image chain, chain in context, after RL) is `benchmarks/hicogen_chain.py`. The schedules differ only in how the rollouts' noise is spread over the
sampling steps; all have the same mean level (that of the recipe's decaying schedule):

- decaying: the recipe's cosine decay (HiCoGen: noise spent in the early, layout-deciding steps),
- constant: that mean at every step (Flow-GRPO),
- window: a random window of `--window` steps carrying all the noise (Flow-GRPO-Fast).

Per seed, the exist level split by the asked shape (`found_by_shape`: the circles, squares and
triangles found). Beside the levels, the share of off-palette pixels of the held-out images
before and after (`vrl.world.off_palette_share`): a policy that games the checker by turning its
images into texture raises it several-fold.

Seeds share nothing but the checkpoint: each draws its own training and held-out scenes, so the
spread of the gain over seeds is the noise the gains are read against.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

SCHEDULES = ("decaying", "constant", "window")


def noise_configs(recipe_noise: dict, num_steps: int, window: int) -> dict[str, dict]:
    """decaying (the recipe's), constant and window at its mean level over `num_steps` steps."""
    from vrl.samplers import equal_mean, from_config

    mean = from_config(recipe_noise).mean_level(num_steps)
    return {
        "decaying": dict(recipe_noise),
        "constant": equal_mean("constant", mean, num_steps).to_config(),
        "window": equal_mean("window", mean, num_steps, size=window, start="random").to_config(),
    }


def _ends(rewards: list[float], k: int = 10) -> str:
    """Mean training reward of the first and the last k steps."""
    k = max(1, min(k, len(rewards) // 2))
    return f"{statistics.mean(rewards[:k]):.3f} -> {statistics.mean(rewards[-k:]):.3f} ({k} steps each)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=["decaying"])
    parser.add_argument("--window", type=int, default=2, help="window size in steps")
    parser.add_argument("--steps", type=int, default=None, help="RL steps (default: the recipe's)")
    parser.add_argument(
        "--train-scenes",
        type=int,
        default=None,
        help="training scenes (default: the quickstart's; a handful, e.g. 4, asks whether the "
        "recipe can raise the reward on prompts it sees again and again)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/hicogen_world")
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. optim.lr=1e-3")
    from vrl.config import overrides_first

    args = parser.parse_args(overrides_first(sys.argv[1:] if argv is None else argv))

    import torch

    from vrl.quickstart.hicogen import LEVELS, RECIPE, run

    torch.set_num_threads(args.threads)
    sampling = RECIPE["sampling"]
    configs = noise_configs(sampling["noise"], sampling["num_steps"], args.window)
    results: dict[str, list[dict]] = {}
    for name in args.schedules:
        noise = json.dumps(configs[name])
        print(f"[{name}] sampling.noise={noise}", flush=True)
        for seed in args.seeds:
            out = Path(args.out) / name / f"seed{seed}"
            r = run(
                out,
                seed=seed,
                steps=args.steps,
                overrides=[f"sampling.noise={noise}", *args.overrides],
                train_scenes=args.train_scenes,
            )
            r.pop("strips"), r.pop("config")
            results.setdefault(name, []).append({"seed": seed, **r})
            print(
                f"  seed {seed}: "
                + ", ".join(f"{k} {r['before'][k]:.1%} -> {r['after'][k]:.1%}" for k in LEVELS)
                + f"; off-palette pixels {r['off_palette']['before']:.1%} -> "
                f"{r['off_palette']['after']:.1%}"
                + f"; training reward {_ends(r['rewards'])}; {r['minutes']:.1f} min",
                flush=True,
            )
            by = r["found_by_shape"]
            print(
                "    found by asked shape: "
                + ", ".join(
                    f"{shape} {by['before'][shape]['found']:.1%} -> {by['after'][shape]['found']:.1%}"
                    for shape in by["before"]
                ),
                flush=True,
            )

    first = next(iter(results.values()))
    print(
        f"\nheld-out gain (after - before, points) over seeds {args.seeds}: mean ± std; "
        f"{first[0]['steps']} RL steps, {first[0]['held_out_images']} held-out images per seed"
    )
    print(
        "| schedule | " + " | ".join(LEVELS) + " | off-palette after (before) | minutes per seed |"
    )
    print("|---" * (len(LEVELS) + 3) + "|")
    for name, runs in results.items():
        cells = []
        for level in LEVELS:
            gains = [100 * (r["after"][level] - r["before"][level]) for r in runs]
            std = statistics.stdev(gains) if len(gains) > 1 else 0.0
            cells.append(f"{statistics.mean(gains):+.1f} ± {std:.1f}")
        minutes = statistics.mean(r["minutes"] for r in runs)
        off = [r["off_palette"] for r in runs]
        integrity = (
            f"{statistics.mean(o['after'] for o in off):.1%} "
            f"({statistics.mean(o['before'] for o in off):.1%})"
        )
        print(f"| {name} | " + " | ".join(cells) + f" | {integrity} | {minutes:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
