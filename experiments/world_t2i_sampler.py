"""Which sampler settings give the shapes world's text-to-image model its best held-out accuracy.

    python experiments/world_t2i_sampler.py                      # the committed world:t2i, 1 thread
    python experiments/world_t2i_sampler.py --model runs/world-t2i-seed0 --scenes 64 --json s.json

For each (ODE steps, guidance scale, schedule shift) the model samples the same fixed held-out
scenes as `vrl pretrain world-t2i` reports (1 and 2 subjects, train and test splits, prompt =
`scene.prompt()`, the same initial noise for every setting) through the adapter, and the exact
checker scores them. Printed per setting: mean over the four groups of the exist, attribute and
relation levels (DSG dependencies) and of "all" (every question of a scene right), and the seconds
to sample a batch of 16 images on this machine.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="world:t2i", help="pipeline folder or world:t2i")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0, 6.0])
    parser.add_argument("--shift", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--scenes", type=int, default=48, help="scenes per group")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()

    from diffusers import FlowMatchEulerDiscreteScheduler

    from vrl.models.diffusion import FlowMatchingAdapter
    from vrl.models.paths import resolve_pipeline_path
    from vrl.pretrain.t2i import evaluate, time_sampling

    torch.set_num_threads(args.threads)
    adapter = FlowMatchingAdapter.from_pretrained(resolve_pipeline_path(args.model))
    config = adapter.pipeline.scheduler.config
    rows = []
    print("| steps | guidance | shift | exist | attribute | relation | all | s / 16 images |")
    print("|---|---|---|---|---|---|---|---|")
    for shift, steps, guidance in itertools.product(args.shift, args.steps, args.guidance):
        adapter.pipeline.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            config, shift=shift
        )
        results = evaluate(adapter, steps, guidance, args.scenes)
        mean = {
            level: sum(r[level] for r in results.values()) / len(results)
            for level in ("exist", "attribute", "all")
        }
        relations = [r["relation"] for r in results.values() if r["relation"] is not None]
        mean["relation"] = sum(relations) / len(relations)
        seconds = time_sampling(adapter, steps, guidance, repeats=1)
        rows.append(
            {"steps": steps, "guidance": guidance, "shift": shift, **mean, "seconds": seconds}
        )
        print(
            f"| {steps} | {guidance:g} | {shift:g} | {100 * mean['exist']:.1f} | "
            f"{100 * mean['attribute']:.1f} | {100 * mean['relation']:.1f} | "
            f"{100 * mean['all']:.1f} | {seconds:.2f} |",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
