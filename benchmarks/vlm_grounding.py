"""Grounding on the shapes world: GRPO against continued SFT from one SFT checkpoint, in and out
of domain (Acc@IoU>=0.5 and mean IoU of greedy answers).

    python benchmarks/vlm_grounding.py --seeds 0 1 2 --threads 1 --json grounding.json
    python benchmarks/vlm_grounding.py --base runs/vlm_grounding/base --seeds 0   # another SFT
    python benchmarks/vlm_grounding.py --train-base --seeds 0     # train the SFT again first
    python benchmarks/vlm_grounding.py --table grounding.json        # print a saved report again

1. One SFT checkpoint: by default the committed ``world:vlm-rec`` (``vrl pretrain
   world-vlm-rec``: the recipe ``vrl.pretrain.grounding.SFT_RECIPE``, seed 0, ~10 CPU minutes:
   the ``refer`` task of ``vrl.world.tasks``: "Locate the blue square left of the red circle in
   the image." -> ``[x1, y1, x2, y2]`` on 2-3 subject scenes of the 32 px canvas, light grey,
   train-split (colour, shape) pairs; the ``rec_answer_only`` template; every integer 0..112
   one token, boxes in the model's own convention, pixels of its 112 px input). ``--base`` takes
   another model folder or a ``vrl pretrain`` run folder (``model/``, ``data/``);
   ``--train-base`` trains it again into ``<out>/base``.
2. For each seed, from that checkpoint, on the SFT's own training JSONL read by the VLM-R1 loader
   (a run folder's ``data/``, else written again: the same seed-0 light-grey scenes as the
   committed SFT's; so a base trained on more backgrounds is fine-tuned on the light-grey slice):
   RL: vrl's GRPO trainer (``vrl.trainers.vlm_grpo.train``) with ``rec_iou`` + 0.1
   ``format_rec_answer``; SFT: more of the same SFT (``vrl.pretrain.vlm.train_sft``).
   Equal-compute rule: the same number of optimizer steps, each on the same number of sequences
   (``PROMPTS`` prompts x ``GROUP`` completions for RL, ``PROMPTS x GROUP`` answered prompts for
   SFT), the same AdamW, learning rate, warm-up and constant schedule. RL also pays for its
   sampling, so this rule favours SFT in FLOPs; both wall times are printed.
3. The four evaluation sets of ``vrl.pretrain.grounding.SETS``, ``--eval`` questions each (seed
   ``HELD_OUT_SEED``, never trained on): in domain (new scenes of the training distribution),
   held-out pairs (test split: the target is a (colour, shape) pair never seen in training), a
   dark-grey background (never trained on), and 4 subjects (trained on 2-3). Greedy answers,
   parsed and converted to image pixels by ``vrl.evaluate.evaluate_rec``, the path of the
   ``rec_iou`` reward (``vrl.pretrain.grounding.evaluate_sets``).

Goals (issue 22): RL >= SFT in domain, RL >= SFT + 10 points out of domain (Acc@0.5 of the three
out-of-domain sets pooled), both on the mean over seeds. The table says met or MISSED.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from vrl.pretrain.grounding import (
    NAME,
    OUT_OF_DOMAIN,
    REWARDS,
    SETS,
    SFT_RECIPE,
    TEMPLATE,
    evaluate_sets,
    training_file,
    write_sets,
)

PROMPTS, GROUP = 8, 8
LR, WARMUP, TEMPERATURE = 1e-4, 5, 0.7
ARMS = ("base", "sft", "rl")


def evaluate(adapter, model, sets: dict[str, list]) -> dict[str, dict[str, float]]:
    """Acc@0.5, mean IoU (and Acc@0.5 per expression kind) of greedy answers on every set."""
    return evaluate_sets(adapter, model, sets)[0]


def base_paths(args, out: Path) -> tuple[Path, Path]:
    """(model folder, SFT training JSONL) of the checkpoint both arms start from."""
    from vrl.models.paths import resolve_model_path
    from vrl.pretrain.vlm import pretrain

    if args.train_base:
        base = out / "base"
        if not (base / "summary.json").is_file():
            pretrain(base, seed=0, **SFT_RECIPE)
        return base / "model", base / "data" / "world_refer_train.jsonl"
    base = Path(resolve_model_path(args.base))
    if (base / "model").is_dir():  # a `vrl pretrain` run folder
        own = base / "data" / "world_refer_train.jsonl"
        # trained on several backgrounds (train_background), its files are per background: the
        # fine-tune data is then the light-grey slice, the committed SFT's scenes
        return base / "model", own if own.is_file() else training_file(out / "sft-data")
    return base, training_file(out / "sft-data")


def run_rl(
    model: Path, data: Path, out: Path, seed: int, steps: int, lr: float, temperature: float
):
    from vrl.config import build_config
    from vrl.trainers.vlm_config import VLMTrainConfig
    from vrl.trainers.vlm_grpo import train

    recipe = {
        "model": {"path": str(model), "lora": {"enabled": False}},
        "data": {"train_files": str(data), "template": TEMPLATE},
        "grpo": {
            "group_size": GROUP,
            "prompts_per_step": PROMPTS,
            "beta": 0.0,
            "max_completion_length": 16,
            "temperature": temperature,
            "rewards": REWARDS,
        },
        "optim": {"lr": lr, "warmup_steps": WARMUP, "micro_batch_size": 32, "weight_decay": 0.01},
        "run": {
            "output_dir": str(out),
            "max_steps": steps,
            "seed": seed,
            "save_every": 0,
            "save_final": False,
            "log_every": 10,
        },
    }
    cfg = build_config(VLMTrainConfig, recipe, "grounding RL recipe")
    return train(cfg)["model"]


def run_sft(adapter, data: Path, seed: int, steps: int, lr: float):
    from vrl.pretrain.vlm import load_task_samples, train_sft

    train = load_task_samples([data])
    settings = {
        "steps": steps,
        "batch_size": PROMPTS * GROUP,
        "lr": lr,
        "warmup": WARMUP,
        "schedule": "constant",
        "eval_every": 0,
        "template": TEMPLATE,
    }
    train_sft(adapter, train, settings, seed=1000 + seed, log=lambda line: None)
    return adapter.model


def run(args) -> dict[str, Any]:
    import torch

    from vrl.models.vlm import VLMAdapter

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.perf_counter()
    model, data = base_paths(args, out)
    base_minutes = (time.perf_counter() - t0) / 60
    sets = write_sets(out / "eval", args.eval)
    report: dict[str, Any] = {
        "base": str(model),
        "base_minutes": base_minutes,
        "steps": args.steps,
        "eval": args.eval,
        "rule": f"{args.steps} AdamW steps x {PROMPTS * GROUP} sequences, lr {args.lr}, warm-up "
        f"{WARMUP}, constant; RL samples at temperature {args.temperature}",
        "seeds": {},
    }
    adapter = VLMAdapter.from_pretrained(model)
    report["before"] = evaluate(adapter, adapter.model, sets)
    print(f"SFT checkpoint: {json.dumps(report['before'])}", flush=True)
    for seed in args.seeds:
        torch.manual_seed(seed)
        row: dict[str, Any] = {}
        wall, cpu = time.perf_counter(), time.process_time()
        rl_model = run_rl(
            model, data, out / f"rl-seed{seed}", seed, args.steps, args.lr, args.temperature
        )
        row["rl_minutes"] = (time.perf_counter() - wall) / 60
        row["rl_cpu_minutes"] = (time.process_time() - cpu) / 60
        row["rl"] = evaluate(adapter, rl_model, sets)
        del rl_model
        sft = VLMAdapter.from_pretrained(model)
        torch.manual_seed(seed)
        wall, cpu = time.perf_counter(), time.process_time()
        sft_model = run_sft(sft, data, seed, args.steps, args.lr)
        row["sft_minutes"] = (time.perf_counter() - wall) / 60
        row["sft_cpu_minutes"] = (time.process_time() - cpu) / 60
        row["sft"] = evaluate(sft, sft_model, sets)
        report["seeds"][str(seed)] = row
        print(f"seed {seed}: {json.dumps(row)}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def _mean_sd(values: list[float]) -> str:
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:5.1f} ± {100 * sd:4.1f}"


def table(report: dict[str, Any]) -> str:
    seeds = list(report["seeds"].values())
    lines = [
        f"Grounding on the shapes world ({len(seeds)} seed(s), {report['eval']} questions per set; "
        f"RL and SFT: {report['rule']})",
        f"{'set':<16}{'metric':<9}{'SFT checkpoint':>16}{'+ SFT':>16}{'+ RL':>16}",
    ]
    for name in SETS:
        for metric, label in (("acc", "Acc@0.5"), ("iou", "mean IoU")):
            before = f"{100 * report['before'][name][metric]:5.1f}"
            sft = _mean_sd([r["sft"][name][metric] for r in seeds])
            rl = _mean_sd([r["rl"][name][metric] for r in seeds])
            lines.append(f"{name:<16}{label:<9}{before:>16}{sft:>16}{rl:>16}")

    def ood(arm: str) -> list[float]:
        return [statistics.mean(r[arm][s]["acc"] for s in OUT_OF_DOMAIN) for r in seeds]

    sft_in = statistics.mean(r["sft"]["in domain"]["acc"] for r in seeds)
    rl_in = statistics.mean(r["rl"]["in domain"]["acc"] for r in seeds)
    sft_ood, rl_ood = statistics.mean(ood("sft")), statistics.mean(ood("rl"))
    lines.append(f"{'out of domain':<16}{'Acc@0.5':<9}{'':>16}{_mean_sd(ood('sft')):>16}"
                 f"{_mean_sd(ood('rl')):>16}")  # fmt: skip
    minutes = [
        f"{arm} {statistics.mean(r[f'{arm}_minutes'] for r in seeds):.1f} min wall "
        f"({statistics.mean(r[f'{arm}_cpu_minutes'] for r in seeds):.1f} CPU) per seed"
        for arm in ("sft", "rl")
    ]
    lines.append("time: " + ", ".join(minutes))
    # compared in points at the printed precision, so that a tie on the page is a tie
    verdict = "met" if round(100 * rl_in, 1) >= round(100 * sft_in, 1) else "MISSED"
    lines.append(
        f"goal RL >= SFT in domain (Acc@0.5): {100 * rl_in:.1f} vs {100 * sft_in:.1f}: {verdict}"
    )
    verdict = "met" if round(100 * rl_ood, 1) >= round(100 * sft_ood, 1) + 10 else "MISSED"
    lines.append(
        f"goal RL >= SFT + 10 points out of domain (Acc@0.5, 3 sets pooled): {100 * rl_ood:.1f} "
        f"vs {100 * sft_ood:.1f} + 10: {verdict}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps of RL and of SFT")
    parser.add_argument("--lr", type=float, default=LR, help="RL's and SFT's learning rate")
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="RL rollouts")
    parser.add_argument("--eval", type=int, default=200, help="questions per evaluation set")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--base", default=NAME, help="the SFT checkpoint: a model folder, world:<name> or a "
        "`vrl pretrain` run folder (model/, data/)",
    )  # fmt: skip
    parser.add_argument(
        "--train-base", action="store_true", help="train the SFT checkpoint into <out>/base first"
    )
    parser.add_argument("--out", default="runs/vlm_grounding")
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--table", default=None, help="print the table of a saved report")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    print(table(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
