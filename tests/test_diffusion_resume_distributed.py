"""Diffusion GRPO: a killed run resumes to the same LoRA and EMA weights; 2 gloo processes agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _helpers import kill_after_checkpoint
from safetensors.torch import load_file

from vrl.checkpoint import latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "diffusion_tiny_cpu.yaml"
TRAIN = [sys.executable, "-m", "vrl.cli", "train", "diffusion", "--config", str(RECIPE)]


def _overrides(run_dir: Path, steps: int) -> list[str]:
    return [
        f"run.output_dir={run_dir}", f"run.max_steps={steps}", "run.save_every=2",
        "run.keep_checkpoints=10", "run.save_final=false", "grpo.group_size=4",
        "sampling.num_steps=4", "sampling.eval_num_steps=3", "prompts.num_eval=2",
        "eval.ema=true", "optim.schedule=cosine", "grpo.timestep_fraction=0.5",
    ]  # fmt: skip


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights_and_ema(tmp_path):
    steps = 6
    subprocess.run(TRAIN + _overrides(tmp_path / "full", steps), check=True, capture_output=True)
    run = tmp_path / "killed"
    kill_after_checkpoint(TRAIN + _overrides(run, steps), run, step=2)
    assert int(latest_checkpoint(run).name.split("-")[1]) < steps
    subprocess.run(TRAIN + _overrides(run, steps) + ["--resume"], check=True, capture_output=True)
    for name in ("trainable.safetensors", "extra-ema.safetensors"):
        full = load_file(tmp_path / "full" / "checkpoints" / f"step-{steps}" / name)
        again = load_file(run / "checkpoints" / f"step-{steps}" / name)
        assert full.keys() == again.keys() and len(full) > 0
        for key in full:
            assert torch.equal(full[key], again[key]), (name, key)
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()]
    assert logged == list(range(1, steps + 1))


def test_two_processes_identical_weights_and_whole_group_statistics(tmp_path):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
        str(ROOT / "tests" / "dist_diffusion_step.py"), str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["distributed_type"] == "MULTI_CPU"
    # G = 4 images of one prompt, 2 per process: advantages over all 4, the same on both ranks
    for a, b in zip(ranks[0]["advantage_calls"], ranks[1]["advantage_calls"], strict=True):
        assert len(a["rewards"]) == 4 and a == b
    assert ranks[0]["param_digest"] == ranks[1]["param_digest"] != ranks[0]["initial_digest"]
