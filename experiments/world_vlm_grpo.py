"""Does GRPO help the shapes-world VLM? Held-out accuracy before and after, over several seeds.

    python experiments/world_vlm_grpo.py --seeds 0 1 2 --threads 1 --json world_vlm_grpo.json
    python experiments/world_vlm_grpo.py --seeds 0 --steps 20 grpo.temperature=1.2   # overrides

Each seed runs `vrl.quickstart.colour_shift.run`: the recipe of `configs/vlm_world_grpo.yaml` from the
committed SFT checkpoint (`world:vlm`), training prompts written from train-split scenes with
that seed, and greedy held-out accuracy (the `accuracy` reward) on the same test-split questions
before and after; the same questions on the SFT's own grey background are the control (what RL
on the new background costs there). "Before" is one checkpoint, so it is the same for every seed;
the spread of "after" over seeds is the seed noise. Training time is given as wall and process
CPU minutes: with one thread the CPU time is what an idle core would take, whatever else shares
the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--held-out", type=int, default=None, help="questions per task")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/world_vlm_grpo")
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. optim.lr=1e-3")
    args = parser.parse_args(argv)

    import torch

    from vrl.quickstart.colour_shift import HELD_OUT_PER_TASK, run

    torch.set_num_threads(args.threads)
    results = []
    for seed in args.seeds:
        result = run(
            Path(args.out) / f"seed{seed}",
            seed=seed,
            steps=args.steps,
            overrides=args.overrides,
            held_out_per_task=args.held_out or HELD_OUT_PER_TASK,
        )
        results.append(result)
        line = ", ".join(
            f"{label} {result[b][k]:.1%} -> {result[a][k]:.1%}" for label, b, a, k in rows(result)
        )
        print(
            f"seed {seed}: {line}; {result['train_minutes']:.1f} min wall, "
            f"{result['train_cpu_minutes']:.1f} min CPU",
            flush=True,
        )

    first = results[0]
    print(f"\n{len(results)} seeds, {first['steps']} GRPO steps, "
          f"{first['held_out_per_task']} held-out questions per task")  # fmt: skip
    print("| held-out questions | before | after (mean ± std over seeds) | gain (min..max) |")
    print("|---|---|---|---|")
    for label, b, a, k in rows(first):
        before = first[b][k]
        after = [r[a][k] for r in results]
        std = statistics.stdev(after) if len(after) > 1 else 0.0
        gains = [x - before for x in after]
        print(
            f"| {label} | {before:.1%} | {statistics.mean(after):.1%} ± {std:.1%} | "
            f"{statistics.mean(gains):+.1%} ({min(gains):+.1%}..{max(gains):+.1%}) |"
        )
    cpu = [r["train_cpu_minutes"] for r in results]
    wall = [r["train_minutes"] for r in results]
    print(
        f"GRPO time per seed: {statistics.mean(cpu):.1f} min CPU, {statistics.mean(wall):.1f} "
        f"min wall, {results[0]['threads']} thread(s)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def rows(result: dict) -> list[tuple[str, str, str, str]]:
    """(label, before key, after key, task) of each task on the shifted background, then on the
    SFT's own grey background (the control)."""
    background = result["background"] or "grey"
    tasks = [k for k in result["before"] if k != "mean"]
    return [(f"{t} ({background})", "before", "after", t) for t in tasks] + [
        (f"{t} (grey, control)", "control_before", "control_after", t) for t in tasks
    ]


if __name__ == "__main__":
    sys.exit(main())
