"""The VLM-R1 GRPO recipe: every setting of `vrl train vlm`, with its help text."""

from __future__ import annotations

from typing import Literal

from vrl.config import config, field
from vrl.trainers.settings import LoraSettings, OptimSettings, RunSettings


@config
class ModelSettings:
    path: str = field(
        "tiny-random:qwen2_5_vl",
        help="model folder or hub id (loads from the local cache); 'tiny-random:qwen2_5_vl' or "
        "'tiny-random:qwen2_vl' builds a tiny random model of that architecture offline "
        "('tiny-random:qwen2': a text-only causal LM, for text-only prompts); "
        "'world:vlm' is the committed shapes-world VLM (vrl pretrain world-vlm), "
        "'world:vlm-rec' its grounding one (vrl pretrain world-vlm-rec)",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        "auto", help="weights dtype; auto = bfloat16 on a GPU that supports it, float32 on the CPU"
    )
    attn_implementation: str | None = field(
        None, help="e.g. sdpa or flash_attention_2; None = default"
    )
    box_convention: Literal["resized_pixels", "norm_1000", "original_pixels"] | None = field(
        None, help="coordinates the model answers boxes in; None = the model family's convention"
    )
    min_pixels: int | None = field(
        None, ge=1, help="image processor min_pixels (None = processor default)"
    )
    max_pixels: int | None = field(
        None, ge=1, help="image processor max_pixels (None = processor default)"
    )
    freeze_vision: bool = field(
        True, help="keep the vision tower frozen (always frozen under LoRA)"
    )
    gradient_checkpointing: bool = field(
        False, help="recompute activations in backward to save memory"
    )
    lora: LoraSettings = field(default_factory=LoraSettings, help="LoRA settings")

    def __post_init__(self):
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(
                f"model.min_pixels ({self.min_pixels}) is above model.max_pixels ({self.max_pixels})"
            )


@config
class DataSettings:
    train_files: str = field(
        "",
        help="VLM-R1 data, ':'-separated: JSONL files, .json arrays, or a VLM-R1 data config .yaml "
        "(datasets: - json_path, sampling_strategy first:N|end:N|random:N, N a count or P%; "
        "random seeded by run.seed), records in the conversations or the REC form "
        "(problem, solution [x1, y1, x2, y2] in original-image pixels); "
        "'synthetic:colour_yes_no' etc. generates one; "
        "'world:counting,colour@random' writes shapes-world task files (synthetic_size per task; "
        "'@random', a background name, or names joined by '+' for scenes off the default grey)",
    )
    image_folders: str = field(
        "",
        help="image folder(s), ':'-separated, paired with train_files (one serves them all, as "
        "VLM-R1's --image_root; a data config's folder serves every file it lists; empty: each "
        "data file's own folder)",
    )
    template: str = field("rec", help="prompt template: plain, think_answer, rec, answer_only, ...")
    skip_bad_lines: bool = field(False, help="skip malformed lines (logged) instead of stopping")
    synthetic_size: int = field(
        256, ge=1, help="number of samples when train_files is synthetic:<name>"
    )

    def __post_init__(self):
        from vrl.data.prompts import PROMPT_TEMPLATES

        if self.template not in PROMPT_TEMPLATES:
            raise ValueError(
                f"data.template: no template {self.template!r}; the templates are "
                f"{', '.join(sorted(PROMPT_TEMPLATES))}"
            )


@config
class GRPOSettings:
    group_size: int = field(8, ge=2, help="completions per prompt (G)")
    prompts_per_step: int = field(
        4, ge=1, help="distinct prompts per rollout, over all processes (samples = prompts * G)"
    )
    num_iterations: int = field(
        1, ge=1, help="policy updates per rollout (>1 uses stored old log-probs)"
    )
    beta: float = field(0.04, ge=0, help="k3 KL weight; 0 holds no reference model at all")
    eps_low: float = field(0.2, gt=0, lt=1, help="lower clip range of the ratio")
    eps_high: float | None = field(
        None, gt=0, help="upper clip range (None = eps_low; 0.28 = DAPO)"
    )
    loss_aggregation: Literal["grpo", "dapo", "dr_grpo"] = field("grpo", help="loss normaliser")
    ratio_level: Literal["token", "sequence"] = field("token", help="token ratios or GSPO")
    advantage_scale: Literal["group", "batch", "none"] = field("group", help="advantage std scale")
    filter_zero_std: bool = field(False, help="drop groups whose rewards are all equal")
    max_completion_length: int = field(256, ge=1, help="max new tokens per completion")
    temperature: float = field(1.0, ge=0, help="sampling temperature during rollout")
    top_p: float = field(1.0, gt=0, le=1, help="nucleus sampling during rollout")
    top_k: int = field(0, ge=0, help="top-k sampling during rollout (0 = off)")
    rewards: dict[str, float] = field(
        default_factory=lambda: {"format_rec": 1.0, "rec_iou": 1.0},
        help="reward name -> weight; names from the vrl.rewards registry",
    )

    def __post_init__(self):
        from vrl.rewards.registry import check_reward_weights

        if not self.rewards:
            raise ValueError("grpo.rewards is empty: name at least one reward, e.g. {format: 1.0}")
        check_reward_weights(self.rewards, "text", "grpo.rewards")


@config
class RolloutSettings:
    share_prompts: bool = field(
        True,
        help="run the frozen vision tower once per distinct image per step (reused by the "
        "group, the loss forwards and every update), prefill each prompt once for its group, and "
        "run each prompt once in the loss forward (its group's completions on its cache; not "
        "under DDP/FSDP, gradient checkpointing or active dropout); for models that take "
        "precomputed vision output (Qwen2-VL, Qwen2.5-VL), else ignored",
    )
    engine: Literal["hf", "vllm"] = field(
        "hf",
        help="what samples the completions: hf (transformers' generate on the policy) or vllm "
        "(the policy's weights pushed to vLLM after each update; the loss re-scores vLLM's "
        "samples with the trainer's own log-probs, and logs the mismatch as engine/*)",
    )
    vllm_server_url: str | None = field(
        None,
        help="engine vllm: http://host:port of a running `vllm serve` of the same model, started "
        "with VLLM_SERVER_DEV_MODE=1 and --logprobs-mode processed_logprobs; None: vLLM runs "
        "inside the training process (colocated)",
    )
    vllm_weights_dir: str | None = field(
        None,
        help="server: the folder, at the same path for trainer and server, where the policy's "
        "weights (LoRA merged) are written for the server to reload after each update; None = "
        "<run folder>/vllm-weights",
    )
    vllm_memory_fraction: float = field(
        0.3,
        gt=0,
        le=1,
        help="colocated: share of the GPU's memory vLLM takes (weights + KV cache); on the CPU "
        "vLLM sizes its KV cache by the VLLM_CPU_KVCACHE_SPACE environment variable (GiB)",
    )
    vllm_sleep: bool = field(
        True,
        help="colocated: offload vLLM's weights and drop its KV cache between rollouts (vLLM's "
        "sleep mode, level 1), freeing memory for training; where vLLM has no sleep mode (CPU) "
        "it stays awake",
    )
    vllm_max_model_len: int | None = field(
        None, ge=1, help="colocated: longest prompt + completion vLLM serves; None = the model's"
    )
    tis_cap: float | None = field(
        None,
        gt=0,
        help="engine vllm: truncated importance sampling, each token's surrogate weighted by "
        "min(exp(logp_trainer - logp_vllm), tis_cap), e.g. 2.0; None = off",
    )

    def __post_init__(self):
        if self.engine == "hf":
            for name in ("vllm_server_url", "tis_cap"):
                if getattr(self, name) is not None:
                    raise ValueError(f"rollout.{name} is for rollout.engine=vllm (it is hf)")
        elif self.vllm_server_url is None:
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise ValueError(
                    "rollout.engine=vllm runs vLLM in this process, but vLLM is not installed: "
                    "pip install 'vrl[vllm]' (its own environment: it pins torch), or give "
                    "rollout.vllm_server_url"
                )
        elif not self.vllm_server_url.startswith(("http://", "https://")):
            raise ValueError(
                f"rollout.vllm_server_url must start with http:// or https:// "
                f"(got {self.vllm_server_url!r})"
            )


@config
class VLMTrainConfig:
    model: ModelSettings = field(default_factory=ModelSettings, help="the policy model")
    data: DataSettings = field(default_factory=DataSettings, help="training data")
    grpo: GRPOSettings = field(default_factory=GRPOSettings, help="GRPO algorithm")
    rollout: RolloutSettings = field(default_factory=RolloutSettings, help="how rollouts run")
    optim: OptimSettings = field(default_factory=OptimSettings, help="optimizer")
    run: RunSettings = field(default_factory=RunSettings, help="run folder, steps, logging")

    def __post_init__(self):
        if not self.data.train_files:
            raise ValueError(
                "data.train_files is empty: give a VLM-R1 JSONL path "
                "(e.g. data.train_files=data/rec.jsonl data.image_folders=data/images)"
            )
