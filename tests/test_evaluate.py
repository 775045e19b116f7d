"""`vrl eval rec`: greedy decoding, the shared parser, boxes converted from the model's convention."""

from __future__ import annotations

import json

import pytest
import torch

from vrl.cli import main
from vrl.data.synthetic import write_rec_boxes
from vrl.data.vlm_r1 import load_vlm_r1_jsonl
from vrl.evaluate import evaluate_rec
from vrl.models.batch import Completions
from vrl.models.paths import resolve_model_path
from vrl.models.vlm import VLMAdapter
from vrl.rewards import parse_solution


@pytest.fixture(scope="module")
def rec_samples(tmp_path_factory):
    return load_vlm_r1_jsonl(write_rec_boxes(tmp_path_factory.mktemp("rec"), n=6, seed=1))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_rec_metrics_after_conversion_from_the_model_convention(rec_samples, family, monkeypatch):
    adapter = VLMAdapter.from_pretrained(resolve_model_path(f"tiny-random:{family}"))
    truth = [parse_solution(s.solution).boxes[0] for s in rec_samples]

    def answer_in_model_convention(model, batch, **kw):
        # the first four answers give the true box in the model's own coordinates, the last two
        # a box shifted by half its width (IoU 1/3) and garbage
        texts = []
        for orig, inp in zip(batch.original_sizes, batch.input_sizes, strict=True):
            k = len(texts) + answer_in_model_convention.offset
            box = adapter.box_from_original(truth[k], orig, inp)
            if k == 4:
                w = box[2] - box[0]
                box = (box[0] + w / 2, box[1], box[2] + w / 2, box[3])
            texts.append(
                "no box here"
                if k == 5
                else f"<answer>[{', '.join(f'{v:.3f}' for v in box)}]</answer>"
            )
        answer_in_model_convention.offset += len(texts)
        ids = torch.zeros(len(texts), 1, dtype=torch.long)
        return Completions(ids=ids, mask=torch.ones_like(ids), texts=texts)

    answer_in_model_convention.offset = 0
    monkeypatch.setattr(adapter, "generate", answer_in_model_convention)
    summary = evaluate_rec(adapter, adapter.model, rec_samples, batch_size=4, progress=False)
    assert summary["n"] == 6
    assert summary["acc@0.5"] == pytest.approx(4 / 6)
    assert summary["mean_iou"] == pytest.approx((4 + 1 / 3) / 6, abs=1e-3)


def test_eval_cli_writes_summary_and_one_line_per_sample(tmp_path, rec_samples):
    jsonl = rec_samples[0].source
    out = tmp_path / "eval"
    code = main(
        ["eval", "rec", "--model", "tiny-random:qwen2_5_vl", "--data", jsonl,
         "--out", str(out), "--max-new-tokens", "8", "--batch-size", "3"]
    )  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert summary["n"] == len(lines) == len(rec_samples)
    records = [json.loads(line) for line in lines]
    assert all(0.0 <= r["iou"] <= 1.0 for r in records)
    assert summary["acc@0.5"] == sum(r["correct"] for r in records) / len(records)
