"""Grounding on the shapes world: the SFT recipe of ``world:vlm-rec``, its evaluation sets and
their scoring, shared by ``vrl pretrain world-vlm-rec``, the quickstart's VLM half and
``benchmarks/vlm_grounding.py``.

The task is ``vrl.world.tasks``' ``refer`` (VLM-R1's REC form: "Locate the blue square left of the
red circle in the image." -> ``[x1, y1, x2, y2]``) on 2-3 subject scenes of the 32 px canvas,
light grey, train-split (colour, shape) pairs. Answers are scored as the ``rec_iou`` reward
scores them: greedy decoding, the box parsed and mapped from the model's 112 px input back to
image pixels (``vrl.evaluate.evaluate_rec``), Acc@IoU>=0.5 and mean IoU.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

SFT_RECIPE: dict[str, Any] = {
    "tasks": "refer",
    "template": "rec_answer_only",
    "coordinate_tokens": 1,
    "train_per_task": 4000,
    "held_out_per_task": 200,
    "steps": 1200,
    "eval_every": 400,
    "rope_theta": 20.0,
}
"""``vrl pretrain world-vlm`` settings of the grounding SFT (over ``vrl.pretrain.vlm.DEFAULTS``):
every integer 0..112 one token, boxes in the model's own 112 px convention, M-RoPE base 20."""

SFT_SEED = 0
"""Seed of the committed checkpoint: its initial weights and its training scenes."""

NAME = "world:vlm-rec"
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "world" / "weights" / "world-vlm-rec"
"""The committed grounding checkpoint (``model.path: world:vlm-rec``, resolved by
``vrl.models.paths``), with its model card. Spelled out here so that reading the sets and the
recipe (``benchmarks/vlm_grounding.py --table``) does not import torch."""

TEMPLATE = "rec_answer_only"
REWARDS = {"rec_iou": 1.0, "format_rec_answer": 0.1}
"""GRPO's rewards for grounding: the IoU of the box, and a small one for the answer's form."""

SETS: dict[str, dict[str, Any]] = {
    "in domain": {"split": "train"},
    "held-out pairs": {"split": "test"},
    "dark grey": {"split": "train", "background": "dark grey"},
    "4 subjects": {"split": "train", "subjects": (4, 4)},
}
"""Evaluation sets (``write_world_tasks`` arguments besides the task, size and seed): new scenes
of the training distribution; targets that are a (colour, shape) pair never seen in training; a
background never trained on; more subjects than any training scene."""

OUT_OF_DOMAIN = ("held-out pairs", "dark grey", "4 subjects")


def write_sets(out: str | Path, n: int) -> dict[str, list]:
    """``n`` samples of each evaluation set (seed ``HELD_OUT_SEED``, never trained on), written
    under ``out`` and read back through the VLM-R1 loader."""
    from vrl.data.vlm_r1 import load_vlm_r1_jsonl
    from vrl.pretrain.vlm import HELD_OUT_SEED
    from vrl.world.tasks import TASK_CANVAS, TASK_SUBJECTS, write_world_tasks

    sets = {}
    for name, spec in SETS.items():
        low, high = spec.get("subjects", TASK_SUBJECTS["refer"])
        path = write_world_tasks(
            Path(out) / name.replace(" ", "-"), "refer", n, seed=HELD_OUT_SEED,
            size=TASK_CANVAS, split=spec["split"], min_subjects=low, max_subjects=high,
            background=spec.get("background"),
        )  # fmt: skip
        sets[name] = load_vlm_r1_jsonl(path)
    return sets


def evaluate_sets(
    adapter, model, sets: dict[str, list]
) -> tuple[dict[str, dict[str, float]], dict[str, list[dict[str, Any]]]]:
    """Per set: Acc@0.5 (``acc``), mean IoU (``iou``) and Acc@0.5 per expression kind of greedy
    answers; and the per-sample records of ``evaluate_rec`` (completion, boxes in image pixels)."""
    from vrl.evaluate import evaluate_rec
    from vrl.pretrain.vlm import MAX_BOX_TOKENS

    scores, records = {}, {}
    for name, samples in sets.items():
        with tempfile.TemporaryDirectory() as tmp:
            per_sample = Path(tmp) / "records.jsonl"
            rec = evaluate_rec(
                adapter, model, samples, TEMPLATE, per_sample_path=per_sample,
                max_new_tokens=MAX_BOX_TOKENS, batch_size=50, progress=False,
            )  # fmt: skip
            records[name] = [json.loads(line) for line in per_sample.read_text().splitlines()]
        kinds: dict[str, list[bool]] = {}
        for sample, record in zip(samples, records[name], strict=True):
            kinds.setdefault(sample.extra["kind"], []).append(record["correct"])
        scores[name] = {
            "acc": rec["acc@0.5"],
            "iou": rec["mean_iou"],
            **{f"acc {k}": sum(v) / len(v) for k, v in sorted(kinds.items())},
        }
    return scores, records


def out_of_domain(scores: dict[str, dict[str, float]], metric: str = "acc") -> float:
    """The mean of ``metric`` over the out-of-domain sets (equal sizes: the pooled figure)."""
    return sum(scores[name][metric] for name in OUT_OF_DOMAIN) / len(OUT_OF_DOMAIN)


def untrained_model(adapter, seed: int = SFT_SEED):
    """The SFT's starting point: ``vrl.pretrain.vlm.build_model`` for the checkpoint's tokenizer,
    with the recipe's vision depth and M-RoPE base and the SFT's seed (the same initial weights)."""
    from vrl.pretrain.vlm import DEFAULTS, build_model

    settings = {**DEFAULTS, **SFT_RECIPE}
    model = build_model(adapter.tokenizer, seed, settings["vision_depth"], settings["rope_theta"])
    return model.to(next(adapter.model.parameters()).device)


def training_file(out: str | Path, seed: int = SFT_SEED) -> Path:
    """The SFT's training JSONL (``world_refer_train.jsonl`` + images) written again under
    ``out``: the same scenes as the committed checkpoint's, which are not committed."""
    from vrl.pretrain.vlm import DEFAULTS
    from vrl.world.tasks import write_task_files

    settings = {**DEFAULTS, **SFT_RECIPE}
    (path,) = write_task_files(
        out, ["refer"], settings["train_per_task"], seed, "train", settings["canvas"]
    )
    return path
