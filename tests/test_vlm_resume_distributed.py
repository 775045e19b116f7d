"""A killed run resumes to the same weights; 2 processes (gloo) stay identical and normalise whole groups."""

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
RECIPE = ROOT / "configs" / "vlm_tiny_cpu.yaml"
TRAIN = [sys.executable, "-m", "vrl.cli", "train", "vlm", "--config", str(RECIPE)]


def _overrides(run_dir: Path, steps: int) -> list[str]:
    return [
        f"run.output_dir={run_dir}",
        f"run.max_steps={steps}",
        "run.save_every=2",
        "run.keep_checkpoints=10",
        "run.save_final=false",
        "data.synthetic_size=32",
        "optim.schedule=cosine",  # the LR schedule must resume too
        "grpo.beta=0.04",
    ]


def test_killed_run_resumes_to_the_same_parameters(tmp_path):
    steps = 6
    subprocess.run(TRAIN + _overrides(tmp_path / "full", steps), check=True, capture_output=True)

    run = tmp_path / "killed"
    kill_after_checkpoint(TRAIN + _overrides(run, steps), run, step=2)
    resumed_from = latest_checkpoint(run)
    assert resumed_from is not None and int(resumed_from.name.split("-")[1]) < steps

    subprocess.run(TRAIN + _overrides(run, steps) + ["--resume"], check=True, capture_output=True)
    full = load_file(tmp_path / "full" / "checkpoints" / f"step-{steps}" / "trainable.safetensors")
    again = load_file(run / "checkpoints" / f"step-{steps}" / "trainable.safetensors")
    assert full.keys() == again.keys()
    for name in full:
        assert torch.equal(full[name], again[name]), name
    steps_logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()]
    assert steps_logged == list(range(1, steps + 1)), (
        "metrics after the checkpoint are not repeated"
    )


DIST_SCRIPT = ROOT / "tests" / "dist_vlm_step.py"


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_two_processes_identical_weights_and_whole_group_statistics(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--standalone", str(DIST_SCRIPT), str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["distributed_type"] == "MULTI_CPU"
    # one prompt x G=4 per step: each rank holds 2 of the group's 4 completions ...
    assert all(r["local_samples"] == 2 for r in ranks)
    # ... yet advantages were computed on all 4 rewards, identically on both ranks
    for step_a, step_b in zip(
        ranks[0]["advantage_calls"], ranks[1]["advantage_calls"], strict=True
    ):
        assert len(step_a["rewards"]) == 4 and step_a == step_b
    # the two ranks sampled different completions (different noise), so the gradients differed ...
    assert ranks[0]["completions"] != ranks[1]["completions"]
    # ... and DDP averaged them: the weights are identical after training, and they moved
    assert ranks[0]["param_digest"] == ranks[1]["param_digest"]
    assert ranks[0]["param_digest"] != ranks[0]["initial_digest"]
    # the LR schedule moved once per step, not once per process (1e-3 linear to 0 over 2 steps)
    assert ranks[0]["lrs"] == pytest.approx([5e-4, 0.0])
