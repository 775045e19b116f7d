"""`rollout.engine: vllm` without vLLM: its settings, its one-line refusals before any compute,
the TIS weight and mismatch math, the LoRA-merged weights it pushes, the conversion of engine
samples; and the text-only language-model path it is tested on, trained with generate.

The engine itself, in vLLM's own environment: tests/test_vllm_rollout.py (marker `vllm`)."""

from __future__ import annotations

import http.server
import importlib.util
import threading

import pytest
import torch

from tests._text_task import digit_config, digit_reward, first_and_last
from vrl import cli, core
from vrl.errors import ConfigError
from vrl.models.batch import PromptBatch
from vrl.models.paths import resolve_model_path
from vrl.models.vllm_engine import (
    check_engine,
    check_vllm_model,
    engine_prompts,
    policy_weights,
    sampling_args,
    to_completions,
)
from vrl.models.vlm import VLMAdapter
from vrl.trainers import vlm_grpo
from vrl.trainers.common import read_metrics
from vrl.trainers.vlm_config import RolloutSettings


@pytest.fixture(scope="module")
def lm_path() -> str:
    return resolve_model_path("tiny-random:qwen2")


@pytest.fixture(autouse=True)
def digit_task():
    with digit_reward():
        yield


# ---------------------------------------------------------------------- settings and refusals


def test_hf_is_the_default_and_vllm_settings_read(tmp_path):
    assert digit_config(tmp_path).rollout.engine == "hf"
    cfg = digit_config(
        tmp_path,
        "rollout.engine=vllm",
        "rollout.vllm_server_url=http://127.0.0.1:8000",
        "rollout.tis_cap=2",
    )
    assert (cfg.rollout.engine, cfg.rollout.tis_cap) == ("vllm", 2.0)
    assert cfg.rollout.vllm_memory_fraction == 0.3 and cfg.rollout.vllm_sleep


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["rollout.tis_cap=2"], "rollout.tis_cap is for rollout.engine=vllm"),
        (["rollout.vllm_server_url=http://h:1"], "rollout.vllm_server_url is for rollout.engine"),
        (["rollout.engine=vllm", "rollout.tis_cap=0"], "rollout.tis_cap: must be > 0"),
        (["rollout.engine=vllm", "rollout.vllm_memory_fraction=1.5"], "must be <= 1"),
        (["rollout.engine=vllm", "rollout.vllm_server_url=h:1"], "must start with http://"),
        (["rollout.engine=sglang"], "rollout.engine"),
    ],
)
def test_bad_engine_settings_are_one_line(capsys, overrides, needle):
    rc = cli.main(["train", "vlm", "data.train_files=synthetic:is_it_red", *overrides])
    lines = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(lines) == 1 and needle in lines[0], lines


def test_vllm_missing_is_one_line_at_config_time(capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )
    rc = cli.main(["train", "vlm", "data.train_files=synthetic:is_it_red", "rollout.engine=vllm"])
    lines = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(lines) == 1
    assert "vLLM is not installed: pip install 'vrl[vllm]'" in lines[0]


def test_a_model_vllm_cannot_take_is_refused_in_one_line(lm_path):
    archs = {"Qwen2ForCausalLM"}
    check_vllm_model(lm_path, archs, lambda arch: None, cpu_head_sizes=[32, 64])  # fits
    with pytest.raises(ConfigError, match="is a Qwen2ForCausalLM, which vLLM does not support"):
        check_vllm_model(lm_path, {"LlamaForCausalLM"}, lambda arch: None, None)

    def missing_torchvision(arch):
        raise ModuleNotFoundError("No module named 'torchvision'")

    with pytest.raises(ConfigError, match="does not load here .*No module named 'torchvision'"):
        check_vllm_model(lm_path, archs, missing_torchvision, None)
    with pytest.raises(ConfigError, match="heads 64 wide; vLLM's CPU attention takes 32, 128"):
        check_vllm_model(lm_path, archs, lambda arch: None, cpu_head_sizes=[32, 128])


class _NoDevEndpoints(http.server.BaseHTTPRequestHandler):
    """A server that answers /health but, like `vllm serve` without VLLM_SERVER_DEV_MODE=1,
    not the dev endpoints."""

    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_server_engine_is_checked_before_any_model_loads(tmp_path, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the engine check")

    monkeypatch.setattr(vlm_grpo, "load_vlm_policy", no_load)
    monkeypatch.setattr(vlm_grpo, "load_vlm_dataset", no_load)
    cfg = digit_config(
        tmp_path, "rollout.engine=vllm", "rollout.vllm_server_url=http://127.0.0.1:9"
    )
    with pytest.raises(ConfigError, match="no vLLM server answers at http://127.0.0.1:9"):
        vlm_grpo.train(cfg)

    server = http.server.HTTPServer(("127.0.0.1", 0), _NoDevEndpoints)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        with pytest.raises(ConfigError, match="start it with VLLM_SERVER_DEV_MODE=1"):
            check_engine(RolloutSettings(engine="vllm", vllm_server_url=url), "", 1)
    finally:
        server.shutdown()


def test_the_engine_under_fsdp_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    settings = RolloutSettings(engine="vllm", vllm_server_url="http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="not supported under FSDP yet"):
        check_engine(settings, "", 2)  # before the server is even asked


# ---------------------------------------------------------------------- TIS and mismatch math


def test_tis_weights_are_the_capped_trainer_to_engine_ratio():
    trainer = torch.tensor([[-1.0, -2.0, -0.5]])
    engine = torch.tensor([[-1.0, -1.0, -3.0]])  # ratios 1, e^-1, e^2.5
    weights = core.truncated_is_weights(trainer, engine, cap=2.0)
    assert torch.allclose(weights, torch.tensor([[1.0, torch.e**-1, 2.0]]))
    with pytest.raises(ValueError, match="cap must be > 0"):
        core.truncated_is_weights(trainer, engine, cap=0)


def test_tis_weights_scale_the_surrogate_not_the_kl():
    torch.manual_seed(0)
    logp = torch.randn(3, 5, requires_grad=True)
    old = logp.detach() + 0.1 * torch.randn(3, 5)
    ref = logp.detach() + 0.1 * torch.randn(3, 5)
    adv, mask = torch.tensor([1.0, -0.5, 2.0]), torch.ones(3, 5)
    args = dict(eps_low=0.2, aggregation="dapo", ref_logp=ref, beta=0.1)
    plain = core.policy_loss(logp, old, adv, mask, **args)
    ones = core.policy_loss(logp, old, adv, mask, is_weights=torch.ones(3, 5), **args)
    assert torch.equal(plain.loss, ones.loss)
    weights = torch.rand(3, 5)
    weighted = core.policy_loss(logp, old, adv, mask, is_weights=weights, **args)
    ratio = torch.exp(logp - old)
    surrogate = torch.maximum(-ratio * adv[:, None], -ratio.clamp(0.8, 1.2) * adv[:, None])
    expected = (weights * surrogate + 0.1 * core.k3_kl(logp, ref)).mean()
    assert torch.allclose(weighted.loss, expected)
    assert torch.equal(weighted.kl, plain.kl)


def test_mismatch_is_the_mean_abs_logp_gap_and_extreme_ratios_over_the_mask():
    trainer = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, -1.0, 0.0]])
    engine = torch.tensor([[-1.5, -1.0, 5.0], [-1.0, -1.0, -9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])  # the last column is padding
    m = core.engine_mismatch(trainer, engine, mask)
    assert m["logp_abs_diff"] == pytest.approx(1.5 / 4)
    assert m["ratio_max"] == pytest.approx(torch.e**0.5)
    assert m["ratio_min"] == pytest.approx(torch.e**-1)
    same = core.engine_mismatch(trainer, trainer, mask)
    assert same == {"logp_abs_diff": 0.0, "ratio_max": 1.0, "ratio_min": 1.0}


# ---------------------------------------------------------------------- what is pushed to vLLM


def test_pushed_weights_merge_lora_without_touching_the_policy(lm_path):
    from peft import LoraConfig, get_peft_model

    adapter = VLMAdapter.from_pretrained(lm_path)
    assert adapter.family == "text"
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=adapter.lora_target_modules())
    model = get_peft_model(adapter.model, lora)
    with torch.no_grad():  # a trained adapter: lora_B starts at 0
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with policy_weights(model) as weights:
        pushed = dict(weights)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    merged = model.merge_and_unload().state_dict()
    assert pushed.keys() == merged.keys()
    assert "model.layers.0.self_attn.q_proj.weight" in pushed
    for name, tensor in merged.items():
        assert torch.allclose(pushed[name], tensor, atol=1e-6), name
    # the deltas are in: an adapted weight is not its base weight
    base = before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"]
    assert not torch.allclose(pushed["model.layers.0.self_attn.q_proj.weight"], base, atol=1e-3)


def test_engine_samples_become_completions_cut_at_eos(lm_path):
    adapter = VLMAdapter.from_pretrained(lm_path)
    eos, pad = adapter.eos_token_ids[0], adapter.pad_token_id
    samples = [([40, 41, eos], [-1.0, -2.0, -0.5]), ([42, 43, 44, 45], [-1.0, -1.0, -1.0, -3.0])]
    out, logp = to_completions(adapter, samples, "cpu")
    assert out.ids.tolist() == [[40, 41, eos, pad], [42, 43, 44, 45]]
    assert out.mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert logp.tolist() == [[-1.0, -2.0, -0.5, 0.0], [-1.0, -1.0, -1.0, -3.0]]
    assert out.texts[0] == adapter.tokenizer.decode([40, 41])


def test_engine_prompts_drop_left_padding_and_keep_images_with_their_text():
    batch = PromptBatch(
        model_inputs={
            "input_ids": torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]]),
            "attention_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]),
        },
        input_sizes=[None, None],
        original_sizes=[None, None],
        images_per_prompt=[0, 1],
        texts=["a", "b <image>"],
    )
    image = object()
    assert engine_prompts(batch, [[], [image]]) == [
        {"prompt_token_ids": [5, 6]},
        {"prompt": "b <image>", "multi_modal_data": {"image": [image]}},
    ]


def test_sampling_settings_reach_vllm(lm_path):
    adapter = VLMAdapter.from_pretrained(lm_path)
    sampled = dict(max_new_tokens=7, temperature=0.7, top_p=0.9, top_k=20, do_sample=True)
    args = sampling_args(adapter, sampled)
    assert (args["max_tokens"], args["temperature"], args["top_p"], args["top_k"]) == (
        7, 0.7, 0.9, 20,
    )  # fmt: skip
    assert args["stop_token_ids"] == adapter.eos_token_ids and args["logprobs"] == 0
    greedy = sampling_args(adapter, {**sampled, "temperature": 0.0, "do_sample": False})
    assert (greedy["temperature"], greedy["top_p"], greedy["top_k"]) == (0.0, 1.0, 0)


# ---------------------------------------------------------------------- the text-only LM path


def test_text_only_lm_learns_the_digit_task_with_generate(tmp_path):
    """The task the vLLM engine's test trains on, through generate: the reference result."""
    summary = vlm_grpo.train(digit_config(tmp_path))
    first, last = first_and_last(summary["rewards"])
    assert first < 0.1 and last > 0.8, summary["rewards"]
    assert "engine/logp_abs_diff" not in read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
