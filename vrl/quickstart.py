"""`vrl quickstart`: the embedded default job, on the CPU, in minutes.

A tiny random Qwen2.5-VL (built offline from a config) learns by GRPO alone to answer "Is the image
red?" about generated images. Held-out accuracy is measured by greedy decoding before and after
training, with the same prompt and parser as the reward, and written to a markdown report.

This is the foundation's demonstration; the shapes world (pretrained tiny models, HiCoGen) will
extend it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from vrl.config import build_config, save_config

# The recipe of the VLM half: RL alone, no SFT. Short completions keep the search space small
# enough that a random policy hits "yes"/"no" by chance and the group advantage can amplify it.
VLM_RECIPE: dict[str, Any] = {
    "model": {"path": "tiny-random:qwen2_5_vl", "lora": {"enabled": False}},
    "data": {"train_files": "synthetic:is_it_red", "synthetic_size": 256, "template": "plain"},
    "grpo": {
        "group_size": 8,
        "prompts_per_step": 4,
        "beta": 0.0,
        "max_completion_length": 4,
        "temperature": 1.0,
        "rewards": {"accuracy": 1.0},
    },
    "optim": {"lr": 1e-3, "micro_batch_size": 16},
    "run": {"max_steps": 100, "save_every": 0, "save_final": True},
}
HELD_OUT_SIZE = 128
HELD_OUT_SEED_OFFSET = 10_000  # held-out images come from another seed than the training set


def run_quickstart(out: Path, seed: int = 0, steps: int | None = None) -> dict[str, Any]:
    from vrl.data.synthetic import write_colour_yes_no
    from vrl.data.vlm_r1 import load_vlm_r1_jsonl
    from vrl.evaluate import evaluate_answers
    from vrl.models.vlm import VLMAdapter
    from vrl.trainers.common import resolve_model_path
    from vrl.trainers.vlm_config import VLMTrainConfig
    from vrl.trainers.vlm_grpo import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = json.loads(json.dumps(VLM_RECIPE))
    recipe["run"].update(output_dir=str(out / "vlm"), seed=seed)
    if steps is not None:
        recipe["run"]["max_steps"] = steps
    cfg = build_config(VLMTrainConfig, recipe, "vrl quickstart recipe")
    template, max_new = cfg.data.template, cfg.grpo.max_completion_length

    held_out_file = write_colour_yes_no(
        out / "data" / "held_out", n=HELD_OUT_SIZE, seed=seed + HELD_OUT_SEED_OFFSET, asked="red"
    )
    held_out = load_vlm_r1_jsonl(held_out_file)

    print(f"[vrl quickstart] VLM-R1 GRPO: tiny random Qwen2.5-VL, {cfg.run.max_steps} steps, CPU")
    t0 = time.perf_counter()
    base = VLMAdapter.from_pretrained(resolve_model_path(cfg.model.path))
    before = evaluate_answers(
        base,
        base.model,
        held_out,
        template,
        max_new_tokens=max_new,
        per_sample_path=out / "vlm_before.jsonl",
    )
    summary = train(cfg)
    tuned = VLMAdapter.from_pretrained(out / "vlm" / "final")
    after = evaluate_answers(
        tuned,
        tuned.model,
        held_out,
        template,
        max_new_tokens=max_new,
        per_sample_path=out / "vlm_after.jsonl",
    )
    minutes = (time.perf_counter() - t0) / 60

    result = {
        "vlm": {
            "held_out_accuracy_before": before["accuracy"],
            "held_out_accuracy_after": after["accuracy"],
            "train_reward_first": summary["first_reward"],
            "train_reward_last10": _tail_mean(summary["rewards"], 10),
            "steps": cfg.run.max_steps,
            "minutes": minutes,
        },
        "seed": seed,
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    save_config(cfg, out / "vlm_config.yaml")
    (out / "report.md").write_text(_report(result, held_out_n=len(held_out)))
    v = result["vlm"]
    print(
        f"[vrl quickstart] held-out accuracy {v['held_out_accuracy_before']:.1%} -> "
        f"{v['held_out_accuracy_after']:.1%} ({len(held_out)} images, greedy); "
        f"train reward {v['train_reward_first']:.2f} -> {v['train_reward_last10']:.2f} "
        f"(mean of last 10 steps); {minutes:.1f} min. Report: {out / 'report.md'}"
    )
    return result


def _tail_mean(xs: list[float], n: int) -> float:
    tail = xs[-n:]
    return sum(tail) / len(tail) if tail else float("nan")


def _report(result: dict[str, Any], held_out_n: int) -> str:
    v = result["vlm"]
    gain = v["held_out_accuracy_after"] - v["held_out_accuracy_before"]
    return f"""# vrl quickstart report

Seed {result["seed"]}. Everything ran on the CPU, offline.

## VLM-R1 GRPO on generated colour questions

A tiny random Qwen2.5-VL-architecture model (no pretraining, no SFT) is trained by GRPO alone with
the `accuracy` rule reward (yes/no method) to answer "Is the image red?" about red or blue images.

| | before | after |
|---|---|---|
| held-out accuracy ({held_out_n} images, greedy) | {v["held_out_accuracy_before"]:.1%} | {v["held_out_accuracy_after"]:.1%} |
| training reward (first step / mean of last 10) | {v["train_reward_first"]:.3f} | {v["train_reward_last10"]:.3f} |

Change in held-out accuracy: {gain:+.1%} after {v["steps"]} steps ({v["minutes"]:.1f} minutes in
all, evaluation included). Per-sample completions: `vlm_before.jsonl`, `vlm_after.jsonl`; training
metrics: `vlm/metrics.jsonl`.
"""
