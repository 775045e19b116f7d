"""Greedy evaluation of a VLM with the training prompt and the training parser.

`evaluate_rec` scores referring-expression grounding (Acc@IoU>=0.5, mean IoU) and `evaluate_answers`
scores any task with the accuracy reward; both write one JSON line per sample. They use the same
template, parser and box conversion as training, so an evaluation number means what the reward meant.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vrl.data.prompts import build_messages
from vrl.data.vlm_r1 import VLMSample, load_image
from vrl.rewards import get_reward, iou, parse_completion, parse_solution


@torch.no_grad()
def greedy_completions(
    adapter,
    model,
    samples: Sequence[VLMSample],
    template: str,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    progress: bool = True,
) -> list[tuple[VLMSample, str, Any]]:
    """(sample, completion text, parsed completion with boxes in original pixels) per sample."""
    model.eval()
    device = next(model.parameters()).device
    out: list[tuple[VLMSample, str, Any]] = []
    for lo in tqdm(range(0, len(samples), batch_size), desc="eval", disable=not progress):
        chunk = list(samples[lo : lo + batch_size])
        images = [[load_image(p) for p in s.images] for s in chunk]
        batch = adapter.prepare_inputs([build_messages(s, template) for s in chunk], images).to(
            device
        )
        gen = adapter.generate(model, batch, max_new_tokens=max_new_tokens, do_sample=False)
        for s, text, inp, orig in zip(
            chunk, gen.texts, batch.input_sizes, batch.original_sizes, strict=True
        ):

            def to_orig(box, orig=orig, inp=inp):
                return adapter.box_to_original(box, orig, inp)

            out.append((s, text, parse_completion(text, to_orig if inp is not None else None)))
    return out


def _write_records(path: str | Path | None, records: list[dict[str, Any]]) -> None:
    if path is None:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def evaluate_rec(
    adapter,
    model,
    samples: Sequence[VLMSample],
    template: str = "rec",
    *,
    per_sample_path: str | Path | None = None,
    iou_threshold: float = 0.5,
    **kw,
) -> dict[str, float]:
    """Acc@IoU>=threshold and mean IoU of the first predicted box against the first true box."""
    records = []
    for s, text, parsed in greedy_completions(adapter, model, samples, template, **kw):
        truth = parse_solution(s.solution)
        score = iou(parsed.boxes[0], truth.boxes[0]) if parsed.boxes and truth.boxes else 0.0
        records.append(
            {
                "id": s.id,
                "iou": score,
                "correct": score >= iou_threshold,
                "completion": text,
                "pred_box": list(parsed.boxes[0]) if parsed.boxes else None,
                "true_box": list(truth.boxes[0]) if truth.boxes else None,
            }
        )
    _write_records(per_sample_path, records)
    n = max(len(records), 1)
    return {
        "n": len(records),
        f"acc@{iou_threshold}": sum(r["correct"] for r in records) / n,
        "mean_iou": sum(r["iou"] for r in records) / n,
    }


def evaluate_answers(
    adapter,
    model,
    samples: Sequence[VLMSample],
    template: str,
    *,
    per_sample_path: str | Path | None = None,
    **kw,
) -> dict[str, float]:
    """Mean of the accuracy reward (the sample's accu_reward_method) and of answer-format validity."""
    accuracy, answer_format = get_reward("accuracy"), get_reward("format_answer")
    results = greedy_completions(adapter, model, samples, template, **kw)
    parsed = [p for _, _, p in results]
    rows = [
        {"solution": s.solution, "accu_reward_method": s.accu_reward_method} for s, _, _ in results
    ]
    acc = accuracy(parsed, rows)
    fmt = answer_format(parsed, rows)
    records = [
        {"id": s.id, "accuracy": a, "format": f, "completion": text, "solution": s.solution}
        for (s, text, _), a, f in zip(results, acc, fmt, strict=True)
    ]
    _write_records(per_sample_path, records)
    n = max(len(records), 1)
    return {
        "n": len(records),
        "accuracy": sum(r["accuracy"] or 0.0 for r in records) / n,
        "format": sum(r["format"] or 0.0 for r in records) / n,
    }
