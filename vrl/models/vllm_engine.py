"""vLLM as the rollout engine of the VLM-R1 trainer (`rollout.engine: vllm`).

Two ways to reach vLLM, one interface (`sync` the policy's weights, `sample` a group per prompt):

- colocated (`VLLMColocated`): an in-process `vllm.LLM` on the model folder the policy was loaded
  from, holding `rollout.vllm_memory_fraction` of the GPU and, where vLLM has a sleep mode,
  sleeping between rollouts; weights go in by `reload_weights` (a worker method of vLLM's, called
  in-process through `collective_rpc`), as (name, tensor) pairs in the checkpoint's naming.
- server (`VLLMServer`): a `vllm serve` started by the user with VLLM_SERVER_DEV_MODE=1 and
  `--logprobs-mode processed_logprobs`. The weights reach it through a shared folder: the trainer
  writes `model.safetensors` into `rollout.vllm_weights_dir` and asks the server, through its dev
  endpoint `/collective_rpc`, to `reload_weights` from that folder; completions come from its
  OpenAI-style `/v1/completions` with the prompt as token ids, one request per group.

vLLM reports each sampled token's log-prob under the distribution it sampled from ("processed":
after temperature and top-k/top-p). The trainer scores the same tokens itself and the loss uses its
own log-probs; vLLM's serve only to measure the mismatch and for truncated importance sampling
(`vrl.core.truncated_is_weights`). Nothing here is imported unless the engine is vllm, and `vllm`
itself only when it runs in-process.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from vrl.errors import ConfigError
from vrl.models.batch import Completions, PromptBatch
from vrl.models.vlm_helpers import _unwrap_ddp

Weights = list[tuple[str, torch.Tensor]]
Samples = list[tuple[list[int], list[float]]]  # (completion token ids, their log-probs) each


# ---------------------------------------------------------------------- start-up checks


def check_vllm_model(model_path: str, supported_archs, module_of, cpu_head_sizes) -> None:
    """Refuse, in one line, a model the in-process vLLM cannot take: an architecture vLLM does
    not list, one whose vLLM code does not import here (`module_of(arch)` raises), or, on the
    CPU, an attention head size its CPU attention lacks (`cpu_head_sizes`: None off the CPU)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    archs = list(getattr(config, "architectures", None) or [])
    where = f"rollout.engine=vllm: the model {model_path}"
    if not archs:
        raise ConfigError(f"{where} names no architecture in its config.json")
    arch = archs[0]
    if arch not in supported_archs:
        raise ConfigError(f"{where} is a {arch}, which vLLM does not support")
    try:
        module_of(arch)
    except Exception as err:  # vLLM's model code fails to import (e.g. a missing torchvision)
        raise ConfigError(
            f"{where}: vLLM's code for {arch} does not load here ({type(err).__name__}: {err})"
        ) from None
    if cpu_head_sizes is not None:
        text = getattr(config, "text_config", None) or config
        head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        if head not in cpu_head_sizes:
            raise ConfigError(
                f"{where} has attention heads {head} wide; vLLM's CPU attention takes "
                f"{', '.join(map(str, cpu_head_sizes))}"
            )


def check_engine(rollout, model_path: str, world: int) -> None:
    """Everything about `rollout.engine=vllm` that can be checked before any compute."""
    from vrl.sharding import fsdp_requested

    if fsdp_requested():  # the push reads whole weights; under FSDP2 each process holds a shard
        raise ConfigError(
            "rollout.engine=vllm is not supported under FSDP yet (the weight push needs whole "
            "weights): launch with DDP (configs/accelerate/ddp.yaml) and a vLLM server"
        )
    if rollout.vllm_server_url is not None:
        VLLMServer.check(rollout.vllm_server_url)
        return
    if world > 1:
        raise ConfigError(
            "rollout.engine=vllm runs vLLM in the training process for one process only; for "
            f"{world} processes give rollout.vllm_server_url"
        )
    import importlib

    from vllm.model_executor.models import ModelRegistry
    from vllm.platforms import current_platform

    def module_of(arch: str):
        entry = ModelRegistry.models[arch]
        name = getattr(entry, "module_name", None)
        return importlib.import_module(name) if name else entry

    head_sizes = None
    if current_platform.is_cpu():
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        head_sizes = CPUAttentionBackend.get_supported_head_sizes()
    check_vllm_model(model_path, ModelRegistry.get_supported_archs(), module_of, head_sizes)


# ---------------------------------------------------------------------- weights


@contextlib.contextmanager
def policy_weights(model: torch.nn.Module) -> Iterator[Weights]:
    """The policy's weights as (name, tensor) in its checkpoint's naming, LoRA merged in.

    Under peft each adapted weight is base + delta (`get_delta_weight`), computed aside: the
    training model is never merged and unmerged, so its base weights do not drift."""
    model = _unwrap_ddp(model)
    if not hasattr(model, "get_base_model"):
        with torch.no_grad():
            yield list(model.state_dict().items())
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    with torch.no_grad():
        deltas: dict[str, torch.Tensor] = {}
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer) and not module.disable_adapters:
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        delta = module.get_delta_weight(adapter)
                        deltas[name] = deltas[name] + delta if name in deltas else delta
        weights: Weights = []
        for name, tensor in base.state_dict().items():
            if ".lora_" in name:
                continue
            module_name, _, leaf = name.rpartition(".base_layer.")
            if module_name and leaf == "weight" and module_name in deltas:
                tensor = tensor + deltas[module_name].to(tensor.dtype)
            weights.append((name.replace(".base_layer.", "."), tensor))
        yield weights


# ---------------------------------------------------------------------- prompts and samples


def engine_prompts(prompts: PromptBatch, images: Sequence[Sequence[Any]]) -> list[dict]:
    """vLLM prompts of a batch: the token ids without left padding for a text-only prompt; the
    chat text with its images for a multimodal one (vLLM expands the image placeholders)."""
    out = []
    for i, imgs in enumerate(images):
        if imgs:
            out.append({"prompt": prompts.texts[i], "multi_modal_data": {"image": list(imgs)}})
        else:
            keep = prompts.attention_mask[i].bool()
            out.append({"prompt_token_ids": prompts.input_ids[i][keep].tolist()})
    return out


def to_completions(adapter, samples: Samples, device) -> tuple[Completions, torch.Tensor]:
    """Engine samples as the `Completions` generate would give, and vLLM's log-probs (B, L)."""
    length = max(1, max(len(ids) for ids, _ in samples))
    ids = torch.full((len(samples), length), adapter.pad_token_id, dtype=torch.long)
    logp = torch.zeros(len(samples), length)
    for row, (token_ids, token_logps) in enumerate(samples):
        ids[row, : len(token_ids)] = torch.tensor(token_ids, dtype=torch.long)
        logp[row, : len(token_logps)] = torch.tensor(token_logps)
    mask = adapter.completion_mask(ids)
    ids = ids.masked_fill(mask == 0, adapter.pad_token_id)
    texts = [
        adapter.tokenizer.decode(row[: int(n)], skip_special_tokens=True)
        for row, n in zip(ids, mask.sum(dim=1), strict=True)
    ]
    completions = Completions(ids=ids.to(device), mask=mask.to(device), texts=texts)
    return completions, (logp * mask).to(device)


def sampling_args(adapter, sampling: dict[str, Any]) -> dict[str, Any]:
    """The trainer's sampling settings in vLLM's terms; top_k 0 is off in both."""
    greedy = not sampling.get("do_sample", True) or sampling["temperature"] == 0
    args = {
        "max_tokens": sampling["max_new_tokens"],
        "temperature": 0.0 if greedy else sampling["temperature"],
        "top_p": 1.0 if greedy else sampling["top_p"],
        "top_k": 0 if greedy else sampling["top_k"],
        "stop_token_ids": adapter.eos_token_ids,
        "logprobs": 0,  # the sampled token's log-prob only
    }
    if adapter.suppressed_token_ids:  # image placeholders, never sampled by generate either
        args["logit_bias"] = {i: -100.0 for i in adapter.suppressed_token_ids}
    return args


# ---------------------------------------------------------------------- the two engines


class VLLMColocated:
    """vLLM in the training process (VLLM_ENABLE_V1_MULTIPROCESSING=0 keeps its engine here)."""

    def __init__(self, model_path: str, rollout, *, dtype: torch.dtype, seed: int):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM
        from vllm.platforms import current_platform

        self.sleeps = rollout.vllm_sleep and current_platform.is_sleep_mode_available()
        kwargs: dict[str, Any] = {}
        if rollout.vllm_max_model_len is not None:
            kwargs["max_model_len"] = rollout.vllm_max_model_len
        self.llm = LLM(
            model=model_path,
            dtype=str(dtype).removeprefix("torch."),
            seed=seed,
            gpu_memory_utilization=rollout.vllm_memory_fraction,
            enable_sleep_mode=self.sleeps,
            logprobs_mode="processed_logprobs",
            **kwargs,
        )
        self.asleep = False

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def sync(self, model: torch.nn.Module, is_main: bool = True) -> None:
        """Load the policy's current weights; cached prompt prefixes are of the old ones."""
        self._wake()
        with policy_weights(model) as weights:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
        self.llm.reset_prefix_cache()

    def sample(
        self, prompts: list[dict], counts: Sequence[int], args: dict[str, Any], seeds: list[int]
    ) -> Samples:
        """counts[i] samples of prompt i (seeds[i], seeds[i] + 1, ... for its samples)."""
        from vllm import SamplingParams

        self._wake()
        params = [
            SamplingParams(n=n, seed=seed, **args) for n, seed in zip(counts, seeds, strict=True)
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        samples: Samples = []
        for request in outputs:
            for choice in sorted(request.outputs, key=lambda c: c.index):
                ids = list(choice.token_ids)
                logps = [
                    step[token].logprob for step, token in zip(choice.logprobs, ids, strict=True)
                ]
                samples.append((ids, logps))
        if self.sleeps:
            self.llm.sleep(level=1)
            self.asleep = True
        return samples

    def close(self) -> None:
        """Shut the in-process engine down (its distributed state with it) before the trainer's
        accelerator ends its own."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()


class VLLMServer:
    """A separate `vllm serve` of the same model, reached over HTTP."""

    def __init__(self, url: str, weights_dir: str | Path, timeout: float = 600.0):
        self.url = url.rstrip("/")
        self.weights_dir = Path(weights_dir).resolve()
        self.timeout = timeout
        self.model = self._request("GET", "/v1/models")["data"][0]["id"]

    @staticmethod
    def check(url: str) -> None:
        """One line if the server is not there, or lacks the dev endpoints the weights need."""
        base = url.rstrip("/")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=10):
                pass
        except (urllib.error.URLError, OSError) as err:
            raise ConfigError(
                f"rollout.vllm_server_url: no vLLM server answers at {url} ({err})"
            ) from None
        try:
            with urllib.request.urlopen(f"{base}/is_sleeping", timeout=10):
                pass
        except urllib.error.HTTPError:
            raise ConfigError(
                f"rollout.vllm_server_url: the vLLM server at {url} has no dev endpoints, which "
                "the weight updates need: start it with VLLM_SERVER_DEV_MODE=1"
            ) from None

    def close(self) -> None:
        """The server outlives the run: nothing to shut down."""

    def _request(self, method: str, path: str, body: dict | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def sync(self, model: torch.nn.Module, is_main: bool = True) -> None:
        """Write the weights to the shared folder and have the server reload them (main process
        only; the caller holds the others until it is done)."""
        from safetensors.torch import save_file

        with policy_weights(model) as weights:
            if not is_main:
                return
            self.weights_dir.mkdir(parents=True, exist_ok=True)
            tensors = {name: t.detach().cpu().contiguous() for name, t in weights}
            save_file(tensors, str(self.weights_dir / "model.safetensors"))
        self._request(
            "POST",
            "/collective_rpc",
            {"method": "reload_weights", "kwargs": {"weights_path": str(self.weights_dir)}},
        )
        self._request("POST", "/reset_prefix_cache")

    def _complete(self, prompt: dict, n: int, seed: int, args: dict[str, Any]) -> Samples:
        if "prompt_token_ids" not in prompt:
            raise ConfigError("rollout.vllm_server_url: image prompts need the colocated engine")
        body = {
            "model": self.model,
            "prompt": prompt["prompt_token_ids"],
            "n": n,
            "seed": seed,
            "return_token_ids": True,
            "skip_special_tokens": False,
            **args,
        }
        body["logit_bias"] = {str(k): v for k, v in body.get("logit_bias", {}).items()} or None
        choices = sorted(self._request("POST", "/v1/completions", body)["choices"], key=_index)
        return [(c["token_ids"], c["logprobs"]["token_logprobs"]) for c in choices]

    def sample(
        self, prompts: list[dict], counts: Sequence[int], args: dict[str, Any], seeds: list[int]
    ) -> Samples:
        """One request per prompt, sent together so that the server batches them."""
        with ThreadPoolExecutor(max_workers=max(1, len(prompts))) as pool:
            parts = pool.map(self._complete, prompts, counts, seeds, [args] * len(prompts))
            return [sample for part in parts for sample in part]


def _index(choice: dict) -> int:
    return choice["index"]


def open_engine(rollout, model_path: str, *, dtype: torch.dtype, seed: int, run_dir: Path):
    """The configured engine (after `check_engine`)."""
    if rollout.vllm_server_url is not None:
        return VLLMServer(
            rollout.vllm_server_url, rollout.vllm_weights_dir or run_dir / "vllm-weights"
        )
    return VLLMColocated(model_path, rollout, dtype=dtype, seed=seed)
