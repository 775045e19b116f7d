"""HiCoGen's headline on the shapes world: the chain of synthesis in context against a flat pass
and the image-to-image chain, and what RL adds, over seeds.

    python benchmarks/hicogen_chain.py                          # seeds 0 1 2
    python benchmarks/hicogen_chain.py --seeds 0 --out runs/hicogen_chain --json chain.json
    python benchmarks/hicogen_chain.py --table chain.json       # print a saved report again
    python benchmarks/hicogen_chain.py --table runs/quickstart/summary.json s1.json s2.json

Each seed runs the quickstart's HiCoGen half (`vrl.quickstart.hicogen.run`, recipe
`configs/quickstart_hicogen.yaml`, model `world:kontext`): 64 held-out test-split scenes of 2-3
subjects with relations, 8 images each (512 per row), drawn four ways through `vrl bench`'s
generator and judged by the exact checker with DSG dependencies:

- flat: one pass of the whole prompt;
- img2img: the chain of synthesis, each pass from the canvas re-noised to `chain.strength`;
- in_context: the chain, each pass from noise with the earlier unit images as reference tokens;
- in_context_rl: the same after the recipe's RL (decaying noise schedule, hierarchical world
  reward, AWM with a KL), from the seed's own training scenes.

Beside the levels: *carried* (of the subjects each unit drew, the share found in the final
image), the off-palette share (pixels of no world colour: texture instead of shapes) and the
relation where both its subjects were found (the relation level counts a relation wrong when a
subject is missing, so it rises with exist alone; this says whether placement improved). The
goals (issue 21) are checked on the means over seeds and printed as met or missed:

- the chain in context carries >= 90% of the subjects its units drew;
- it beats the flat pass by >= 10 points on exist and on relation;
- RL adds >= 10 points on relation, with no level falling beyond sampling noise and the
  images intact: an off-palette share no higher than the larger of twice the base model's and
  2 points above it (the quickstart report's test).

Every figure of every seed goes to `--json`; each seed's run folder (`--out`/seed-N) keeps the
images, the per-image answers, the bench commands that redraw them and the chain grids.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from vrl.quickstart import images_intact, sampling_noise

LEVELS = ("exist", "attribute", "relation")
ROWS = ("flat", "img2img", "in_context", "in_context_rl")
FIGURES = (*LEVELS, "carried", "off_palette", "relation_if_found")


def mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v == v]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def goals(report: dict) -> list[tuple[str, bool, str]]:
    """(goal, met, the figures it was read from), on the means over seeds."""
    m = {row: {k: report["mean"][row][k][0] for k in FIGURES} for row in ROWS}
    images = report["images_per_row"] * len(report["seeds"])
    out = []
    carried = m["in_context"]["carried"]
    out.append(("chain in context carries >= 90% of its units' subjects", carried >= 0.9,
                f"{carried:.1%}"))  # fmt: skip
    for level in ("exist", "relation"):
        gain = m["in_context"][level] - m["flat"][level]
        out.append((f"in context beats flat by >= 10 points on {level}", gain >= 0.10,
                    f"{100 * gain:+.1f} points"))  # fmt: skip
    gain = m["in_context_rl"]["relation"] - m["in_context"]["relation"]
    out.append(("RL adds >= 10 points on relation", gain >= 0.10, f"{100 * gain:+.1f} points"))
    for level in LEVELS:
        change = m["in_context_rl"][level] - m["in_context"][level]
        noise = sampling_noise(m["in_context"][level], images)
        out.append((f"RL: {level} does not fall", change >= -noise,
                    f"{100 * change:+.1f} points (noise +-{100 * noise:.1f})"))  # fmt: skip
    before, after = m["in_context"]["off_palette"], m["in_context_rl"]["off_palette"]
    intact = images_intact(before, after)
    out.append(("RL keeps the images intact (off-palette)", intact,
                f"{before:.1%} -> {after:.1%}"))  # fmt: skip
    return out


def summarise(per_seed: dict[str, dict]) -> dict:
    report = {"seeds": sorted(per_seed, key=int), "per_seed": per_seed, "mean": {}}
    first = next(iter(per_seed.values()))
    report["images_per_row"] = first["held_out_images"]
    for row in ROWS:
        report["mean"][row] = {
            k: mean_sd([per_seed[s]["table"][row].get(k, float("nan")) for s in per_seed])
            for k in FIGURES
        }
    return report


def print_report(report: dict) -> None:
    def pct(v: float) -> str:
        return "-" if v != v else f"{100 * v:.1f}"

    seeds = report["seeds"]
    print(f"\n{report['images_per_row']} held-out images per row and seed; seeds {seeds}")
    print("| seed | row | exist | attribute | relation | carried | off-palette | relation where "
          "both found |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for s in seeds:
        table = report["per_seed"][s]["table"]
        for row in ROWS:
            cells = " | ".join(pct(table[row].get(k, float("nan"))) for k in FIGURES)
            print(f"| {s} | {row} | {cells} |")
    print(f"\nMean +- sd over {len(seeds)} seed(s):")
    print("| row | exist | attribute | relation | carried | off-palette | relation where both "
          "found |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for row in ROWS:
        cells = " | ".join(
            "-" if mu != mu else f"{100 * mu:.1f} +- {100 * sd:.1f}"
            for mu, sd in (report["mean"][row][k] for k in FIGURES)
        )
        print(f"| {row} | {cells} |")
    print("\nGoals (means over seeds):")
    for goal, met, figures in goals(report):
        print(f"  {'met   ' if met else 'MISSED'} {goal}: {figures}")
    minutes = [report["per_seed"][s]["minutes"] for s in seeds]
    print(f"\nminutes per seed (evaluation and RL): {', '.join(f'{m:.1f}' for m in minutes)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/hicogen_chain", help="one run folder per seed")
    parser.add_argument("--steps", type=int, default=None, help="RL steps (default: the recipe's)")
    parser.add_argument("--held-out-scenes", type=int, default=None,
                        help="held-out scenes per seed (default: the quickstart's 64)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--table", nargs="+", default=None,
                        help="print the report of saved --json files, or of a quickstart's "
                        "summary.json (its HiCoGen half is one seed of this run)")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    args = parser.parse_args(argv)
    if args.table:
        per_seed = {}
        for path in args.table:
            saved = json.loads(Path(path).read_text())
            if "per_seed" in saved:
                per_seed.update(saved["per_seed"])
            else:  # a quickstart's summary.json: its HiCoGen half is this script's run
                per_seed[str(saved["seed"])] = saved["hicogen"]
        print_report(summarise(per_seed))
        return 0

    import torch

    from vrl.quickstart import _save_strips
    from vrl.quickstart import hicogen as hicogen_half

    torch.set_num_threads(args.threads)
    if args.held_out_scenes:
        hicogen_half.HELD_OUT_SCENES = args.held_out_scenes
    per_seed = {}
    for seed in args.seeds:
        out = Path(args.out) / f"seed-{seed}"
        t0 = time.perf_counter()
        result = hicogen_half.run(out, seed=seed, steps=args.steps, overrides=args.overrides)
        _save_strips(result.pop("strips"), out)
        result.pop("config")
        per_seed[str(seed)] = result
        print(f"seed {seed}: {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        report = summarise(per_seed)
        if args.json:  # after every seed: a killed run keeps what it measured
            Path(args.json).write_text(json.dumps(report, indent=2))
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
