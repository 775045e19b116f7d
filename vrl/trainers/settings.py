"""Settings shared by the trainers: LoRA, optimizer, and the run (folder, steps, checkpoints)."""

from __future__ import annotations

from typing import Literal

from vrl.config import config, field


@config
class LoraSettings:
    enabled: bool = field(True, help="train LoRA adapters (False: full fine-tuning)")
    r: int = field(64, ge=1, help="LoRA rank")
    alpha: int = field(128, gt=0, help="LoRA alpha (scale = alpha / r)")
    dropout: float = field(
        0.05, ge=0, lt=1, help="LoRA dropout (0 keeps rollout and training forwards identical)"
    )
    target_modules: str | None = field(
        None,
        help="modules to adapt (VLM: a regex; diffusion: comma-separated names); None = the model adapter's default",
    )


@config
class OptimSettings:
    lr: float = field(1e-6, gt=0, help="peak learning rate")
    weight_decay: float = field(0.0, ge=0, help="AdamW weight decay")
    adam_betas: tuple[float, float] = field((0.9, 0.99), help="AdamW betas")
    warmup_steps: int = field(0, ge=0, help="linear warm-up, in optimizer steps")
    schedule: Literal["constant", "cosine", "linear"] = field(
        "constant", help="LR schedule after warm-up"
    )
    max_grad_norm: float = field(1.0, ge=0, help="gradient clipping (0 = off)")
    micro_batch_size: int = field(8, ge=1, help="sequences per forward/backward, per device")

    def __post_init__(self):
        if not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"optim.adam_betas must each be in [0, 1), got {self.adam_betas}")


@config
class RunSettings:
    output_dir: str = field(
        "runs/vlm", help="run folder: config, metrics.jsonl, checkpoints, final weights"
    )
    max_steps: int = field(100, ge=1, help="rollout steps")
    seed: int = field(0, ge=0, help="seed for data order, sampling and initialisation")
    save_every: int = field(50, ge=0, help="checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = field(2, ge=1, help="checkpoints kept on disk")
    log_every: int = field(1, ge=1, help="write metrics every N steps")
    resume: bool = field(False, help="continue from the latest checkpoint in output_dir")
    report_to: list[str] = field(
        default_factory=list, help="accelerate trackers, e.g. [tensorboard]"
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = field("no", help="accelerate mixed precision")
    device: Literal["auto", "cpu"] = field(
        "auto", help="auto = the accelerator if there is one, else the CPU (gloo across processes)"
    )
    save_final: bool = field(True, help="write the final adapter or model to output_dir/final")
    max_bad_updates: int = field(
        3,
        ge=1,
        help="updates in a row whose gradient is not finite (each skipped, with a warning) before "
        "the run stops; its last checkpoint is then the last good state",
    )
