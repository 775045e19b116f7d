"""Grounding on the shapes world: GRPO against continued SFT from one SFT checkpoint, in and out
of domain (Acc@IoU>=0.5 and mean IoU of greedy answers).

    python benchmarks/vlm_grounding.py --seeds 0 1 2 --threads 1 --json grounding.json
    python benchmarks/vlm_grounding.py --base runs/vlm_grounding/base --seeds 0   # reuse the SFT
    python benchmarks/vlm_grounding.py --table grounding.json        # print a saved report again

1. One SFT checkpoint: ``vrl pretrain world-vlm`` with ``BASE_EXTRA`` (the ``refer`` task of
   ``vrl.world.tasks``: "Locate the blue square left of the red circle in the image." ->
   ``[x1, y1, x2, y2]`` on 2-3 subject scenes of the 32 px canvas, light grey, train-split
   (colour, shape) pairs; the ``rec_answer_only`` template; every integer 0..112 one token, boxes
   in the model's own convention, pixels of its 112 px input). Trained once, seed 0.
2. For each seed, from that checkpoint, on the SFT's own training JSONL read by the VLM-R1 loader:
   RL: vrl's GRPO trainer (``vrl.trainers.vlm_grpo.train``) with ``rec_iou`` + 0.1
   ``format_rec_answer``; SFT: more of the same SFT (``vrl.pretrain.vlm.train_sft``).
   Equal-compute rule: the same number of optimizer steps, each on the same number of sequences
   (``PROMPTS`` prompts x ``GROUP`` completions for RL, ``PROMPTS x GROUP`` answered prompts for
   SFT), the same AdamW, learning rate, warm-up and constant schedule. RL also pays for its
   sampling, so this rule favours SFT in FLOPs; both wall times are printed.
3. Four evaluation sets of ``--eval`` questions each (seed ``HELD_OUT_SEED``, never trained on):
   in domain (new scenes of the training distribution), held-out pairs (test split: the target
   is a (colour, shape) pair never seen in training), a dark-grey background (never trained
   on), and 4 subjects (trained on 2-3). Greedy answers, parsed and converted to image pixels by
   ``vrl.evaluate.evaluate_rec``, the path of the ``rec_iou`` reward.

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

SETS: dict[str, dict[str, Any]] = {
    "in domain": {"split": "train"},
    "held-out pairs": {"split": "test"},
    "dark grey": {"split": "train", "background": "dark grey"},
    "4 subjects": {"split": "train", "subjects": (4, 4)},
}
"""Evaluation sets: ``write_world_tasks`` arguments besides the task, size and seed."""

OUT_OF_DOMAIN = ("held-out pairs", "dark grey", "4 subjects")
BASE_EXTRA = {
    "tasks": "refer",
    "template": "rec_answer_only",
    "coordinate_tokens": 1,
    "train_per_task": 4000,
    "held_out_per_task": 200,
    "steps": 1200,
    "eval_every": 400,
    "rope_theta": 20.0,
}
TEMPLATE = "rec_answer_only"
PROMPTS, GROUP = 8, 8
LR, WARMUP, TEMPERATURE = 1e-4, 5, 0.7
REWARDS = {"rec_iou": 1.0, "format_rec_answer": 0.1}
ARMS = ("base", "sft", "rl")


def write_sets(out: Path, n: int) -> dict[str, list]:
    """The evaluation samples of each set, through the VLM-R1 loader."""
    from vrl.data.vlm_r1 import load_vlm_r1_jsonl
    from vrl.pretrain.vlm import HELD_OUT_SEED
    from vrl.world.tasks import TASK_CANVAS, TASK_SUBJECTS, write_world_tasks

    sets = {}
    for name, spec in SETS.items():
        low, high = spec.get("subjects", TASK_SUBJECTS["refer"])
        path = write_world_tasks(
            out / name.replace(" ", "-"), "refer", n, seed=HELD_OUT_SEED, size=TASK_CANVAS,
            split=spec["split"], min_subjects=low, max_subjects=high,
            background=spec.get("background"),
        )  # fmt: skip
        sets[name] = load_vlm_r1_jsonl(path)
    return sets


def evaluate(adapter, model, sets: dict[str, list]) -> dict[str, dict[str, float]]:
    """Acc@0.5, mean IoU (and Acc@0.5 per expression kind) of greedy answers on every set."""
    import tempfile

    from vrl.evaluate import evaluate_rec
    from vrl.pretrain.vlm import MAX_BOX_TOKENS

    scores = {}
    for name, samples in sets.items():
        with tempfile.TemporaryDirectory() as tmp:
            per_sample = Path(tmp) / "records.jsonl"
            rec = evaluate_rec(
                adapter, model, samples, TEMPLATE, per_sample_path=per_sample,
                max_new_tokens=MAX_BOX_TOKENS, batch_size=50, progress=False,
            )  # fmt: skip
            records = [json.loads(line) for line in per_sample.read_text().splitlines()]
        kinds: dict[str, list[bool]] = {}
        for sample, record in zip(samples, records, strict=True):
            kinds.setdefault(sample.extra["kind"], []).append(record["correct"])
        scores[name] = {
            "acc": rec["acc@0.5"],
            "iou": rec["mean_iou"],
            **{f"acc {k}": sum(v) / len(v) for k, v in sorted(kinds.items())},
        }
    return scores


def train_base(out: Path, threads: int) -> Path:
    """``vrl pretrain world-vlm`` with ``BASE_EXTRA`` into ``out`` (skipped if already there)."""
    from vrl.pretrain.vlm import pretrain

    if not (out / "summary.json").is_file():
        pretrain(out, seed=0, **BASE_EXTRA)
    return out


def run_rl(base: Path, out: Path, seed: int, steps: int, lr: float, temperature: float):
    from vrl.config import build_config
    from vrl.trainers.vlm_config import VLMTrainConfig
    from vrl.trainers.vlm_grpo import train

    recipe = {
        "model": {"path": str(base / "model"), "lora": {"enabled": False}},
        "data": {
            "train_files": str(base / "data" / "world_refer_train.jsonl"),
            "template": TEMPLATE,
        },
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


def run_sft(adapter, base: Path, seed: int, steps: int, lr: float):
    from vrl.pretrain.vlm import load_task_samples, train_sft

    train = load_task_samples([base / "data" / "world_refer_train.jsonl"])
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
    base = Path(args.base) if args.base else train_base(out / "base", args.threads)
    base_minutes = (time.perf_counter() - t0) / 60
    sets = write_sets(out / "eval", args.eval)
    report: dict[str, Any] = {
        "base": str(base),
        "base_minutes": base_minutes,
        "steps": args.steps,
        "eval": args.eval,
        "rule": f"{args.steps} AdamW steps x {PROMPTS * GROUP} sequences, lr {args.lr}, warm-up "
        f"{WARMUP}, constant; RL samples at temperature {args.temperature}",
        "seeds": {},
    }
    adapter = VLMAdapter.from_pretrained(base / "model")
    report["before"] = evaluate(adapter, adapter.model, sets)
    print(f"SFT checkpoint: {json.dumps(report['before'])}", flush=True)
    for seed in args.seeds:
        torch.manual_seed(seed)
        row: dict[str, Any] = {}
        wall, cpu = time.perf_counter(), time.process_time()
        rl_model = run_rl(base, out / f"rl-seed{seed}", seed, args.steps, args.lr, args.temperature)
        row["rl_minutes"] = (time.perf_counter() - wall) / 60
        row["rl_cpu_minutes"] = (time.process_time() - cpu) / 60
        row["rl"] = evaluate(adapter, rl_model, sets)
        del rl_model
        sft = VLMAdapter.from_pretrained(base / "model")
        torch.manual_seed(seed)
        wall, cpu = time.perf_counter(), time.process_time()
        sft_model = run_sft(sft, base, seed, args.steps, args.lr)
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
    parser.add_argument("--base", default=None, help="an SFT run folder (model/, data/) to reuse")
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
