"""Sharded training: both trainers under FSDP2 (configs/accelerate/fsdp.yaml, 2 CPU processes over
gloo, fp32) train a LoRA, save, resume, and end with the parameters of an unsharded 2-process run.

Tolerance: a sharded run's weights match the unsharded run's within ATOL = 1e-5. FSDP2 sums the
gradient and its norm slice by slice, so they may differ from DDP's in the last bit, and Adam
(whose step is about lr per weight whatever the gradient's size) can carry such a bit into a
weight: measured 1e-6 at most for the VLM (lr 1e-3, 8 updates), 0 for the diffusion trainer. A
real fault (an update lost or applied twice, processes out of sync, a slice saved in place of the
whole) moves a weight by about one step, lr >= 1e-3: 100 times ATOL. A resumed run is compared
bit for bit with the uninterrupted one: both are sharded alike and replay the same draws.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vrl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "dist_sharded_train.py"
FSDP_RECIPE = ROOT / "configs" / "accelerate" / "fsdp.yaml"
ATOL = 1e-5
STEPS = 4
FINAL = {
    "vlm": ["adapter_model.safetensors"],
    "diffusion": ["pytorch_lora_weights.safetensors", "ema/pytorch_lora_weights.safetensors"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(sharded: bool, trainer: str, run_dir: Path, steps: int, resume: bool = False) -> None:
    if sharded:  # what the README tells a user to run, on 2 processes, in fp32
        launcher = [
            "-m", "accelerate.commands.launch", "--config_file", str(FSDP_RECIPE),
            "--num_processes", "2", "--mixed_precision", "no",
            "--main_process_port", str(_free_port()),
        ]  # fmt: skip
    else:
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    cmd = [sys.executable, *launcher, str(SCRIPT), trainer, str(run_dir), str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        cmd + (["--resume"] if resume else []), env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    launched = [json.loads((run_dir / f"launch-rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in launched] == [2, 2]
    assert {r["distributed_type"] for r in launched} == {"FSDP" if sharded else "MULTI_CPU"}
    assert all(r["sharded"] is sharded for r in launched)
    if sharded:  # the recipe's TRANSFORMER_BASED_WRAP: each block sharded on its own
        assert all(r["fsdp_modules"] > 2 for r in launched)


def _tensors(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(run_dir / name)


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["vlm", "diffusion"])
def test_fsdp2_trains_saves_resumes_like_an_unsharded_run(tmp_path, trainer):
    sharded, resumed, unsharded = tmp_path / "fsdp", tmp_path / "fsdp-resumed", tmp_path / "ddp"
    _launch(True, trainer, sharded, STEPS)
    _launch(True, trainer, resumed, STEPS // 2)
    _launch(True, trainer, resumed, STEPS, resume=True)
    _launch(False, trainer, unsharded, STEPS)

    checkpoint = f"checkpoints/step-{STEPS}"
    saved = ["trainable.safetensors"] + (
        ["extra-ema.safetensors"] if trainer == "diffusion" else []
    )
    for name in saved:
        whole = _tensors(sharded, f"{checkpoint}/{name}")
        again = _tensors(resumed, f"{checkpoint}/{name}")
        assert whole.keys() == again.keys() and whole
        for key in whole:  # resumed from a sharded checkpoint: the same weights, bit for bit
            assert torch.equal(whole[key], again[key]), (name, key)
    moments = [
        torch.load(d / checkpoint / "optimizer.pt", weights_only=True)
        for d in (sharded, resumed, unsharded)
    ]
    for index, entry in moments[2]["state"].items():  # saved whole, in the unsharded layout
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(moments[0]["state"][index][key], moments[1]["state"][index][key])
            assert moments[0]["state"][index][key].shape == entry[key].shape
    logged = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").open()]
    assert logged == list(range(1, STEPS + 1))

    # the sharded run ends where the unsharded one does: checkpoint and final weights
    for name in [f"{checkpoint}/{n}" for n in saved] + [f"final/{n}" for n in FINAL[trainer]]:
        fsdp, ddp = _tensors(sharded, name), _tensors(unsharded, name)
        assert fsdp.keys() == ddp.keys(), name
        lora_b = [k for k in ddp if "lora_B" in k]
        assert lora_b and max(ddp[k].abs().max().item() for k in lora_b) > 100 * ATOL  # it moved
        for key in ddp:
            torch.testing.assert_close(fsdp[key], ddp[key], rtol=0, atol=ATOL, msg=f"{name}: {key}")


def test_fsdp_version_1_is_refused_in_one_line(monkeypatch, tmp_path):
    from vrl.trainers.common import make_accelerator
    from vrl.trainers.settings import RunSettings

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="fsdp_version: 2") as caught:
        make_accelerator(RunSettings(output_dir=str(tmp_path)))
    assert "\n" not in str(caught.value)


def test_deepspeed_on_cpus_is_refused_in_one_line(monkeypatch, tmp_path):
    from vrl.trainers.common import make_accelerator
    from vrl.trainers.settings import RunSettings

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="DeepSpeed does not run on CPUs") as caught:
        make_accelerator(RunSettings(output_dir=str(tmp_path), device="cpu"))
    assert "\n" not in str(caught.value)
