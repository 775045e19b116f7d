"""`vrl quickstart`: the embedded default job: both trainers on the shapes world, on a CPU.

Two halves on the shapes world (`vrl.world`), each from a committed tiny checkpoint:

- VLM-R1: referring-expression grounding ("Locate the blue square left of the red circle in the
  image." -> a box). The world VLM before its grounding SFT (untrained init), after it (the
  committed `world:vlm-rec`), and after GRPO from it with the box-IoU reward; greedy Acc@0.5 and
  mean IoU on held-out scenes in domain and on three out-of-domain sets (held-out (colour, shape)
  pairs, a dark background, 4 subjects), and a grid of the three models' boxes on held-out images.
- HiCoGen: the in-context world model (world:kontext) trained over the chain of synthesis in
  context, with the decaying noise schedule and the world's exact hierarchical reward; per-level
  held-out accuracy (exist, attribute, relation, DSG dependencies) by the exact checker of a flat
  pass, the image-to-image chain, the chain in context, and the chain in context after RL.

The run folder gets `report.md` (what was measured, including what did not improve),
`summary.json`, PNG reward curves, the grounding grid and before/after chain grids.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from pathlib import Path
from typing import Any

from vrl.errors import RunError
from vrl.trainers.run_folder import RUN_FILES

HALVES = ("vlm", "hicogen")


def run_quickstart(
    out: Path,
    seed: int = 0,
    steps: int | None = None,
    halves: tuple[str, ...] = HALVES,
    hicogen_steps: int | None = None,
) -> dict[str, Any]:
    """Run the halves; `steps` overrides the VLM recipe's steps, `hicogen_steps` the HiCoGen one's."""
    out = Path(out)
    unknown = set(halves) - set(HALVES)
    if unknown:
        raise ValueError(f"unknown quickstart halves {sorted(unknown)}; choose from {HALVES}")
    for half in halves:  # checked before minutes are spent on the first half
        if any((out / half / "run" / name).exists() for name in RUN_FILES):
            raise RunError(
                f"{out} already holds a quickstart ({half}/run): give --out another folder, or "
                "remove that one"
            )
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"seed": seed}
    if "vlm" in halves:
        from vrl.quickstart import vlm as vlm_half

        print("[vrl quickstart] 1/2 VLM-R1 grounding: SFT checkpoint world:vlm-rec, then GRPO")
        result["vlm"] = vlm_half.run(
            out / "vlm", seed=seed, steps=steps, grid_path=out / GROUNDING_GRID
        )
        _print_vlm(result["vlm"])
    if "hicogen" in halves:
        from vrl.quickstart import hicogen as hicogen_half

        print("[vrl quickstart] 2/2 HiCoGen: chain of synthesis + hierarchical world reward")
        hico = hicogen_half.run(out / "hicogen", seed=seed, steps=hicogen_steps)
        _save_strips(hico.pop("strips"), out)
        hico.pop("config")
        result["hicogen"] = hico
        _print_hicogen(hico)
    result["minutes"] = (time.perf_counter() - t0) / 60
    _plot_curves(result, out / "reward_curves.png")
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    (out / "report.md").write_text(report(result))
    print(f"[vrl quickstart] {result['minutes']:.1f} min in all. Report: {out / 'report.md'}")
    return result


def _mean(values) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return sum(values) / len(values) if values else float("nan")


GROUNDING_GRID = "vlm_grounding.png"
"""The grid of the VLM half's boxes on held-out images, beside the report."""
VLM_METRICS = {"acc": "Acc@0.5", "iou": "mean IoU"}
OUT_OF_DOMAIN_ROW = "out of domain (3 sets pooled)"


def _vlm_rows(v: dict[str, Any]) -> list[tuple[str, str, float, float, float]]:
    """(set, metric, before SFT, after SFT, after RL) per evaluation set and metric, then the
    out-of-domain sets pooled (their mean: the sets are of equal size)."""
    from vrl.pretrain.grounding import out_of_domain

    scores = v["scores"]
    rows = [
        (name, label, *(scores[m][name][metric] for m in ("before", "sft", "rl")))
        for name in scores["sft"]
        for metric, label in VLM_METRICS.items()
    ]
    rows += [
        (OUT_OF_DOMAIN_ROW, label, *(out_of_domain(scores[m], metric) for m in ("before", "sft", "rl")))
        for metric, label in VLM_METRICS.items()
    ]  # fmt: skip
    return rows


def _print_vlm(v: dict[str, Any]) -> None:
    print(f"  {'held-out (' + str(v['per_set']) + ' per set)':<32} {'':<9}"
          f"{'before SFT':>11}{'after SFT':>11}{'after RL':>10}")  # fmt: skip
    for name, metric, before, sft, rl in _vlm_rows(v):
        print(f"  {name:<32} {metric:<9}{before:11.1%}{sft:11.1%}{rl:10.1%}")
    print(f"  ({v['steps']} GRPO steps, {v['train_minutes']:.1f} min of training, "
          f"{v['minutes']:.1f} min for the half)")  # fmt: skip


CONDITION_LABELS = {
    "flat": "flat pass (whole prompt, no chain)",
    "img2img": "chain, image-to-image context",
    "in_context": "chain in context",
    "in_context_rl": "chain in context, after RL",
}


def _condition_rows(h: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, figures) per row of the HiCoGen table, in CONDITION_LABELS' order."""
    table = h.get("table") or {}
    return [(label, table[name]) for name, label in CONDITION_LABELS.items() if name in table]


def _carried(row: dict[str, Any]) -> str:
    return f"{row['carried']:.1%}" if "carried" in row else "-"


def _placed(row: dict[str, Any]) -> str:
    """The relation where both its subjects were found, with how many such pairs."""
    return f"{row['relation_if_found']:.1%} of {row['found_pairs']}"


def _print_hicogen(h: dict[str, Any]) -> None:
    print(f"  {'held-out (' + str(h['held_out_images']) + ' images)':<38} exist  attr.  rel.  "
          "carried  off-palette  relation where both found")  # fmt: skip
    for label, row in _condition_rows(h):
        print(f"  {label:<38} {row['exist']:5.1%} {row['attribute']:5.1%} {row['relation']:5.1%} "
              f"{_carried(row):>7} {row['off_palette']:6.1%}       {_placed(row)}")  # fmt: skip
    print(f"  ({h['steps']} RL steps, {h['minutes']:.1f} min with evaluation)")
    shapes = _shape_rows(h)
    if shapes:
        print("  subjects found by shape in context, before -> after RL: " + ", ".join(
            f"{shape} {b:.1%} -> {a:.1%}" for shape, b, a, _ in shapes
        ))  # fmt: skip


def _shape_rows(h: dict[str, Any]) -> list[tuple[str, float, float, int]]:
    """(asked shape, found before, found after, subjects asked) of the HiCoGen half."""
    by = h.get("found_by_shape") or {}
    before, after = by.get("before", {}), by.get("after", {})
    return [
        (shape, before[shape]["found"], after[shape]["found"], before[shape]["subjects"])
        for shape in before
        if shape in after
    ]


STRIP_SCALE = 4
"""The report's chain grids are upscaled (nearest) so that a 32 px world image shows its shapes."""


def _save_strips(strips: dict[str, list], out: Path) -> None:
    """hicogen_<name>.png: one row per held-out scene, its unit images, then (in the last column,
    after blank tiles where a scene has fewer units) the final image; upscaled STRIP_SCALE x."""
    import torch
    from torchvision.utils import save_image

    for when, rows in strips.items():
        if not rows:
            continue
        width = max(len(row) for row in rows)
        padded = [
            torch.cat([row[:-1], torch.ones_like(row[:1]).expand(width - len(row), -1, -1, -1),
                       row[-1:]])
            for row in rows
        ]  # fmt: skip
        grid = torch.nn.functional.interpolate(
            torch.cat(padded).float(), scale_factor=STRIP_SCALE, mode="nearest"
        )
        save_image(grid, out / f"hicogen_{when}.png", nrow=width, padding=2, pad_value=0.5)


def _plot_curves(result: dict[str, Any], path: Path) -> None:
    """Training reward per step of each half (mean over the step's rollouts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    halves = [h for h in HALVES if h in result]
    if not halves:
        return
    fig, axes = plt.subplots(1, len(halves), figsize=(5 * len(halves), 3.2), squeeze=False)
    titles = {
        "vlm": "VLM-R1 grounding GRPO (world:vlm-rec)",
        "hicogen": "HiCoGen (world:kontext, chain)",
    }
    for ax, half in zip(axes[0], halves, strict=True):
        rewards = result[half]["rewards"]
        ax.plot(range(1, len(rewards) + 1), rewards, lw=1, alpha=0.5, label="per step")
        k = max(1, len(rewards) // 10)
        smooth = [_mean(rewards[max(0, i - k + 1) : i + 1]) for i in range(len(rewards))]
        ax.plot(range(1, len(rewards) + 1), smooth, lw=2, label=f"mean of {k}")
        ax.set(title=titles[half], xlabel="step", ylabel="training reward")
        ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(result: dict[str, Any]) -> str:
    """The markdown report: tables of held-out figures before and after, stated plainly."""
    lines = [
        "# vrl quickstart report",
        "",
        f"Seed {result['seed']}; {result['minutes']:.1f} minutes on the CPU, offline.",
        "",
    ]
    if "vlm" in result:
        lines += _vlm_report(result["vlm"])
    if "hicogen" in result:
        h = result["hicogen"]
        low, high = h.get("subjects", (2, 2))
        lines += [
            "## HiCoGen: chain of synthesis in context, with the hierarchical world reward",
            "",
            "The world text-to-image model `world:kontext` (FLUX.1 Kontext architecture, 32 px) "
            "draws each held-out scene four ways: one flat pass of the whole prompt; the chain of "
            "synthesis (one unit per subject, then a final pass with the whole prompt) with "
            "image-to-image context (the canvas re-noised and redrawn); the chain in context "
            "(every pass from noise, the earlier unit images as reference tokens); and the chain "
            "in context after RL (the decaying noise schedule, the exact world reward at global, "
            "subject and relation level, Advantage Weighted Matching with a KL to the base "
            f"model). Held-out: test-split scenes of {low}-{high} subjects with relations, "
            f"{h['held_out_images']} images per row, judged through `vrl bench` by the exact "
            "checker with DSG dependencies. *Carried*: of the subjects each unit drew, the share "
            "still in the chain's final image. *Relation where both found*: the relations whose "
            "two subjects were found, and the share of them placed right (the relation level "
            "counts a relation wrong when a subject is missing, so it also rises with exist).",
            "",
            "| held-out | exist | attribute | relation | carried | off-palette | relation where "
            "both found |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, row in _condition_rows(h):
            lines.append(
                f"| {label} | {row['exist']:.1%} | {row['attribute']:.1%} | "
                f"{row['relation']:.1%} | {_carried(row)} | {row['off_palette']:.1%} | "
                f"{_placed(row)} |"
            )
        lines += [
            "",
            f"RL: {h['steps']} steps, {h['minutes']:.1f} min with evaluation. In context, before "
            "-> after RL: " + _verdict(h["before"], h["after"], h["held_out_images"]),
            "",
            _integrity(h),
            "",
            *_shape_table(h),
            "The figures come from HiCoPrompt's evaluator with the exact judge; these commands "
            "redraw the same images and give the same figures (one per row):",
            "",
            "```bash",
            *(shlex.join(row["command"]) for _, row in _condition_rows(h)),
            "```",
            "",
            "Chains of held-out scenes (a row per scene: unit images, then the final image), "
            "image-to-image, in context, and in context after RL:",
            "",
            "![image-to-image](hicogen_img2img.png) ![in context](hicogen_before.png) "
            "![after RL](hicogen_after.png)",
            "",
        ]
    lines += [
        "![training reward](reward_curves.png)",
        "",
        "One seed is one draw: `python benchmarks/vlm_grounding.py --seeds 0 1 2` and "
        "`python benchmarks/hicogen_chain.py --seeds 0 1 2` give the spread over seeds "
        "(BENCHMARKS.md holds the latest figures).",
        "",
    ]
    return "\n".join(lines)


def _vlm_report(v: dict[str, Any]) -> list[str]:
    """The VLM section of the report: the table, RL against SFT by sampling noise, the grid."""
    n = v["per_set"]
    lines = [
        "## VLM-R1: referring-expression grounding on the shapes world",
        "",
        "The world VLM (Qwen2.5-VL architecture, 1.9M parameters, every integer 0..112 one token) "
        'answers "Locate the blue square left of the red circle in the image." with a box. '
        "*Before SFT*: its untrained init (the grounding SFT's starting point); *after SFT*: "
        f"`{v['model']}`, SFT-trained on such questions about scenes of 2-3 subjects on light "
        "grey (`vrl pretrain world-vlm-rec`); *after RL*: GRPO from it on fresh scenes of the same "
        "kind, rewarded by the IoU of its box (`configs/quickstart_vlm.yaml`). Held-out: greedy "
        f"answers to {n} questions per set, never trained on: new scenes (in domain), targets "
        "that are a (colour, shape) pair never seen in training, a dark-grey background, 4 "
        "subjects.",
        "",
        "| held-out set | metric | before SFT | after SFT | after RL | RL - SFT |",
        "|---|---|---|---|---|---|",
    ]
    for name, metric, before, sft, rl in _vlm_rows(v):
        lines.append(
            f"| {name} | {metric} | {before:.1%} | {sft:.1%} | {rl:.1%} | {rl - sft:+.1%} |"
        )
    acc = {name: (sft, rl) for name, metric, _, sft, rl in _vlm_rows(v) if metric == "Acc@0.5"}
    pooled = acc.pop(OUT_OF_DOMAIN_ROW)
    sets = _verdict({k: a for k, (a, _) in acc.items()}, {k: b for k, (_, b) in acc.items()}, n)
    ood = _verdict({OUT_OF_DOMAIN_ROW: pooled[0]}, {OUT_OF_DOMAIN_ROW: pooled[1]}, 3 * n)
    lines += [
        "",
        f"{v['steps']} GRPO steps, {v['train_minutes']:.1f} min of training, "
        f"{v['minutes']:.1f} min for the half with its evaluation. After RL against after SFT "
        f"(Acc@0.5; a change within twice the standard error is called unchanged): {sets} "
        f"{ood} `python benchmarks/vlm_grounding.py` sets RL against as many steps of "
        "continued SFT, over seeds.",
        "",
        f"Boxes on {len(v['grid_questions'])} held-out images (columns: the set and the "
        "expression; rows: before SFT, after SFT, after RL; the true box in lime, the model's "
        "in magenta, its IoU under each image):",
        "",
        f"![grounding boxes]({Path(v['grid']).name})",
        "",
    ]
    return lines


def _shape_table(h: dict[str, Any]) -> list[str]:
    """The exist level split by the asked shape (markdown lines; none without the figures)."""
    rows = _shape_rows(h)
    if not rows:
        return []
    lines = [
        "The exist level by the asked shape (share of those subjects found):",
        "",
        "| asked shape | subjects | before | after | change |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {s} | {n} | {b:.1%} | {a:.1%} | {a - b:+.1%} |" for s, b, a, n in rows]
    return [*lines, ""]


def images_intact(before: float, after: float) -> bool:
    """Whether an off-palette share after training is within the larger of twice the share before
    and 2 points above it: a policy that turned its images into texture raises it several-fold."""
    return after <= max(2 * before, before + 0.02)


def sampling_noise(p: float, n: int) -> float:
    """Twice the standard error of an accuracy near p measured on n items (p held in [0.05,
    0.95]): a change smaller than this is within sampling noise."""
    p = min(max(p, 0.05), 0.95)
    return 2 * math.sqrt(p * (1 - p) / n)


def _integrity(h: dict[str, Any]) -> str:
    """A sentence on whether the images stayed pictures: the off-palette share before and after
    (`vrl.world.off_palette_share`), which a reward hack into texture raises several-fold."""
    o = h["off_palette"]
    text = (
        f"Off-palette pixels (no world colour; texture and noise raise it): {o['before']:.1%} "
        f"before, {o['after']:.1%} after."
    )
    if not images_intact(o["before"], o["after"]):
        text += " The images after training lost integrity: read the gains above as a reward hack."
    return text


def _verdict(before: dict[str, float], after: dict[str, float], n: int) -> str:
    """Which figures moved beyond sampling noise: twice the standard error of an accuracy
    measured on `n` items (a change smaller than that is called unchanged, whatever its sign)."""
    parts = {"improved": [], "unchanged (within sampling noise)": [], "worse": []}
    for k in before:
        noise = sampling_noise(before[k], n)
        change = after[k] - before[k]
        kind = "improved" if change > noise else "worse" if change < -noise else None
        label = f"{k} ({change:+.1%}, noise +-{noise:.1%})"
        parts[kind or "unchanged (within sampling noise)"].append(label)
    text = "; ".join(f"{kind}: {', '.join(keys)}" for kind, keys in parts.items() if keys)
    return text[:1].upper() + text[1:] + "."
