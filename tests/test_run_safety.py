"""A run survives odd rewards and bad updates, and one folder never mixes two runs (issue 20, 1-3).

The runs are a tiny random Qwen2.5-VL for a step or three (seconds each). A refusal must come before
any model loads: those tests time nothing, but they would fail with a load error if it came later.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vrl import core
from vrl.checkpoint import latest_checkpoint, read_checkpoint_config
from vrl.config import load_config
from vrl.errors import RunError
from vrl.rewards import WeightedReward, register_reward, unregister_reward
from vrl.trainers.common import UpdateGuard, build_optimizer, read_metrics
from vrl.trainers.run_folder import apply_optim_settings
from vrl.trainers.settings import OptimSettings
from vrl.trainers.vlm_config import VLMTrainConfig
from vrl.trainers.vlm_grpo import train

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "vlm_tiny_cpu.yaml"


def tiny(run: Path, *overrides: str) -> VLMTrainConfig:
    base = [
        f"run.output_dir={run}",
        "data.synthetic_size=8",
        "grpo.group_size=2",
        "grpo.prompts_per_step=2",
        "run.save_every=1",
        "run.save_final=false",
    ]
    return load_config(VLMTrainConfig, RECIPE, base + list(overrides))


@pytest.fixture
def huge_reward():
    """Scores 1e39 on every other completion: finite for Python, inf once stored as float32."""

    @register_reward("test_huge")
    def huge(completions, samples):
        return [1e39 if i % 2 else 0.5 for i in range(len(completions))]

    yield "test_huge"
    unregister_reward("test_huge")


# ---------------------------------------------------------------- 1. non-finite rewards and updates


def test_a_reward_past_float32_scores_zero_and_is_counted(huge_reward):
    reward = WeightedReward({huge_reward: 1.0}, modality="text")
    result = reward([object()] * 4, [{}] * 4)
    assert torch.isfinite(result.total).all()
    assert result.total.tolist() == [0.5, 0.0, 0.5, 0.0]
    assert result.num_errors == 2


def test_a_weighted_sum_past_float32_scores_zero_and_is_counted():
    @register_reward("test_big")
    def big(completions, samples):
        return [3e38] * len(completions)  # finite in float32; twice it is not

    try:
        result = WeightedReward({"test_big": 2.0}, modality="text")([object()] * 3, [{}] * 3)
    finally:
        unregister_reward("test_big")
    assert result.total.tolist() == [0.0, 0.0, 0.0] and result.num_errors == 3


def test_a_run_with_a_reward_of_1e39_trains_on(tmp_path, huge_reward):
    """Before: the loss was inf at step 1 and step 2 died sampling from NaN weights."""
    cfg = tiny(tmp_path / "run", "run.max_steps=2", f"grpo.rewards={{{huge_reward}: 1.0}}")
    summary = train(cfg)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["reward"]) for r in records)
    assert all(r["reward_errors"] > 0 and r["skipped_updates"] == 0 for r in records)
    assert all(torch.isfinite(p).all() for p in summary["model"].parameters())


def test_update_guard_skips_then_stops():
    guard = UpdateGuard(max_in_a_row=2)
    assert guard.allows(torch.tensor(1.0), 0.3, step=1)
    assert not guard.allows(torch.tensor(math.nan), math.nan, step=2)
    assert guard.allows(torch.tensor(2.0), 0.1, step=3)  # a good update resets the count
    assert not guard.allows(torch.tensor(math.inf), math.inf, step=4)
    with pytest.raises(RunError, match="step 5: 2 updates in a row"):
        guard.allows(torch.tensor(math.nan), math.nan, step=5)
    assert guard.total == 3


@pytest.fixture
def poisoned_loss(monkeypatch):
    """The policy loss becomes NaN on the calls listed in `bad` (counted from 1)."""
    bad: set[int] = set()
    calls = [0]
    real = core.policy_loss

    def policy_loss(*args, **kwargs):
        out = real(*args, **kwargs)
        calls[0] += 1
        if calls[0] in bad:
            out.loss = out.loss * math.nan
        return out

    monkeypatch.setattr(core, "policy_loss", policy_loss)
    return bad


def test_a_non_finite_update_is_skipped_and_the_weights_stay_finite(tmp_path, poisoned_loss):
    # the tiny recipe's micro batch holds a whole step: one policy_loss call per step
    poisoned_loss.add(2)
    cfg = tiny(tmp_path / "run", "run.max_steps=3", "run.save_every=0")
    model = train(cfg)["model"]
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["skipped_updates"] for r in records] == [0, 1, 0]
    assert records[1]["loss"] is None  # NaN is written as null
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_run_that_keeps_failing_stops_with_its_last_checkpoint_good(tmp_path, poisoned_loss):
    poisoned_loss.update({2, 3, 4})
    cfg = tiny(tmp_path / "run", "run.max_steps=4", "run.max_bad_updates=2")
    with pytest.raises(RunError, match="step 3: 2 updates in a row had a non-finite gradient"):
        train(cfg)
    last = latest_checkpoint(tmp_path / "run")
    assert last is not None and last.name == "step-2"  # the step 2 update was skipped ...
    saved = load_file(last / "trainable.safetensors")
    before = load_file(last.parent / "step-1" / "trainable.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert all(torch.equal(saved[n], before[n]) for n in saved)  # ... so it holds step 1's weights


# ------------------------------------------------------------------------ 2. one run per folder


@pytest.mark.parametrize("leftover", ["metrics.jsonl", "checkpoints/step-2", "final"])
def test_a_used_folder_is_refused_without_resume(tmp_path, leftover):
    run = tmp_path / "run"
    (run / leftover).parent.mkdir(parents=True, exist_ok=True)
    if "." in leftover:
        (run / leftover).write_text('{"step": 1}\n')
    else:
        (run / leftover).mkdir()
    # an unloadable model proves the refusal comes before anything is loaded
    cfg = tiny(run, "model.path=/nonexistent/model")
    with pytest.raises(RunError, match=f"{run} already holds a run .*pass --resume"):
        train(cfg)
    assert sorted(p.name for p in run.iterdir()) == sorted({leftover.split("/")[0]})


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(RunError, match="is a file, not a folder"):
        train(tiny(tmp_path / "run", "model.path=/nonexistent/model"))


def test_resume_before_any_checkpoint_drops_the_killed_runs_metrics(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "reward": 9}\n{"step": 2, "reward": 9}\n')
    train(tiny(run, "run.max_steps=1", "run.resume=true"))
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1] and records[0]["reward"] != 9


# ------------------------------------------------------------- 3. settings changed on --resume


def test_resume_applies_a_new_lr_and_refuses_a_changed_algorithm(tmp_path):
    run = tmp_path / "run"
    train(tiny(run, "run.max_steps=1", "optim.lr=0.001"))
    assert read_checkpoint_config(run / "checkpoints" / "step-1")["optim"]["lr"] == 0.001

    with pytest.raises(RunError, match="grpo.group_size was 2, now 4.*put back"):
        train(tiny(run, "run.max_steps=2", "grpo.group_size=4", "run.resume=true"))

    train(tiny(run, "run.max_steps=2", "optim.lr=0.5", "run.resume=true"))
    assert [r["lr"] for r in read_metrics(run / "metrics.jsonl")] == [0.001, 0.5]
    assert (run / "config.before-step-1.yaml").is_file()
    assert json.loads((run / "checkpoints" / "step-2" / "state.json").read_text())["config"][
        "optim"
    ]["lr"] == pytest.approx(0.5)


def test_apply_optim_settings_follows_the_schedule_at_its_step():
    model = torch.nn.Linear(2, 2)
    old = OptimSettings(lr=1e-3, schedule="cosine", weight_decay=0.0)
    optimizer, scheduler = build_optimizer(model, old, total_steps=10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)  # cosine, halfway
    new = OptimSettings(lr=4e-3, schedule="cosine", weight_decay=0.1, adam_betas=(0.8, 0.9))
    apply_optim_settings(optimizer, scheduler, new)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(4e-3 * 0.5)
    assert optimizer.param_groups[0]["weight_decay"] == 0.1
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.9)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(
        4e-3 * 0.5 * (1 + math.cos(0.6 * math.pi))
    )
