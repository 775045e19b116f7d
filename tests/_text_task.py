"""The synthetic text task both rollout engines are tested on: text-only prompts to the tiny
Qwen2 LM (`tiny-random:qwen2`), and a rule reward for emitting digit tokens.

The reward is the share of the completion's characters that are digits. The random model emits
one of its ~10 digit tokens (in a vocabulary of 512) about 2% of the time, so most groups of 8
hold a sample with a digit: the reward varies within groups from the first steps, and full
fine-tuning at lr 1e-2 drives it from ~0.02 to ~1 in 30 steps (the 2026-12-06 vLLM lab note)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from vrl.config import load_config
from vrl.rewards import register_reward, unregister_reward
from vrl.trainers.vlm_config import VLMTrainConfig

REWARD = "test_digit_share"


def digit_share(completions, samples):
    return [sum(ch.isdigit() for ch in c.text) / max(len(c.text), 1) for c in completions]


@contextlib.contextmanager
def digit_reward():
    register_reward(REWARD)(digit_share)
    try:
        yield REWARD
    finally:
        unregister_reward(REWARD)


def write_prompts(path: Path, n: int = 16) -> Path:
    """VLM-R1 records in the conversations form without an image: text-only samples."""
    records = [
        {"conversations": [{"from": "human", "value": f"Say something {i}."},
                           {"from": "gpt", "value": "1"}]}
        for i in range(n)
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def digit_config(tmp_path: Path, *overrides: str) -> VLMTrainConfig:
    """30 steps of 2 prompts x 8 completions of up to 8 tokens, full fine-tuning, no KL."""
    base = [
        "model.path=tiny-random:qwen2",
        "model.lora.enabled=false",
        f"data.train_files={write_prompts(tmp_path / 'prompts.jsonl')}",
        "data.template=plain",
        "grpo.group_size=8",
        "grpo.prompts_per_step=2",
        "grpo.beta=0",
        "grpo.max_completion_length=8",
        f"grpo.rewards={{{REWARD}: 1.0}}",
        "optim.lr=1e-2",
        "optim.micro_batch_size=16",
        "run.max_steps=30",
        f"run.output_dir={tmp_path / 'run'}",
        "run.save_every=0",
        "run.save_final=false",
    ]
    return load_config(VLMTrainConfig, None, base + list(overrides))


def first_and_last(rewards: list[float], k: int = 5) -> tuple[float, float]:
    """Mean reward of the first k and of the last k steps."""
    return sum(rewards[:k]) / k, sum(rewards[-k:]) / k
