"""Pieces both trainers need that are not algorithm: data resolution, model set-up, optimizer,
metrics file. Kept here so that each trainer file reads as the algorithm alone."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from transformers import get_scheduler

logger = logging.getLogger(__name__)

TINY_PREFIX = "tiny-random:"
SYNTHETIC_PREFIX = "synthetic:"
WORLD_PREFIX = "world:"
WORLD_DATA_SEED_OFFSET = 1_000
"""world:<tasks> training files use scenes of seed run.seed + this, not those the SFT saw."""


def has_accelerator_device() -> bool:
    from accelerate.utils import (
        is_mlu_available,
        is_mps_available,
        is_npu_available,
        is_xpu_available,
    )

    return (
        torch.cuda.is_available()
        or is_xpu_available()
        or is_npu_available()
        or is_mlu_available()
        or is_mps_available()
    )


def make_accelerator(run) -> Any:
    """An Accelerator for the run settings; on a machine without an accelerator device it is told
    so (cpu=True), which is what makes `torchrun` processes join one gloo group (MULTI_CPU) instead
    of each silently training alone."""
    from accelerate import Accelerator

    accelerator = Accelerator(
        cpu=run.device == "cpu" or not has_accelerator_device(),
        mixed_precision=run.mixed_precision,
        log_with=run.report_to or None,
        project_dir=run.output_dir,
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise RuntimeError(
            f"launched with WORLD_SIZE={launched} but accelerate formed a group of "
            f"{accelerator.num_processes} process(es) ({accelerator.distributed_type}); refusing to "
            "train copies that would not share gradients. Check the launcher and run.device."
        )
    return accelerator


def cache_root() -> Path:
    """Where vrl keeps things it builds once (tiny models): $VRL_CACHE or ~/.cache/vrl."""
    return Path(os.environ.get("VRL_CACHE", Path.home() / ".cache" / "vrl"))


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def world_weights_path(name: str) -> Path:
    """The committed shapes-world checkpoint folder `vrl/world/weights/world-<name>`."""
    weights = Path(__file__).resolve().parent.parent / "world" / "weights"
    folder = weights / f"world-{name}"
    if not folder.is_dir():
        found = sorted(p.name.removeprefix("world-") for p in weights.glob("world-*"))
        raise FileNotFoundError(
            f"no shapes-world checkpoint {WORLD_PREFIX}{name} ({folder}); committed: "
            f"{', '.join(WORLD_PREFIX + n for n in found) or 'none'}"
        )
    return folder


def resolve_model_path(path: str, seed: int = 0) -> str:
    """A real path or hub id passes through; tiny-random:<family> is built offline once;
    world:vlm is the committed shapes-world VLM (`vrl pretrain world-vlm`)."""
    if path.startswith(WORLD_PREFIX):
        return str(world_weights_path(path[len(WORLD_PREFIX) :]))
    if not path.startswith(TINY_PREFIX):
        return path
    from vrl.models.tiny import tiny_vlm_path

    family = path[len(TINY_PREFIX) :]
    return str(tiny_vlm_path(family, cache_root() / "tiny"))


def resolve_pipeline_path(path: str, seed: int = 0) -> str:
    """A diffusers pipeline folder or hub id passes through; tiny-random:<sd3|flux> is built once;
    world:t2i is the shapes world's committed text-to-image model (vrl/world/weights)."""
    if path.startswith(WORLD_PREFIX):
        return str(world_weights_path(path[len(WORLD_PREFIX) :]))
    if not path.startswith(TINY_PREFIX):
        return path
    from vrl.models.tiny_diffusion import tiny_pipeline_path

    return str(tiny_pipeline_path(path[len(TINY_PREFIX) :], cache_root() / "tiny", seed=seed))


def sample_order(n: int, seed: int, epochs: int = 64) -> list[int]:
    """Dataset order for training: a fresh permutation per epoch, fixed by the seed."""
    g = torch.Generator().manual_seed(seed)
    return [i for _ in range(epochs) for i in torch.randperm(n, generator=g).tolist()]


def local_step_items(
    order: list[int], step: int, prompts_per_step: int, group_size: int, rank: int, n_local: int
) -> list[int]:
    """Dataset indices of this process's samples at `step`.

    Every process builds the same global list (the step's P prompts, each repeated G times: one
    group per prompt) and takes its own slice, so a group may span processes; rewards are
    gathered before advantages so that every group is normalised whole.
    """
    n = len(order)
    start = step * prompts_per_step
    prompts = [order[(start + i) % n] for i in range(prompts_per_step)]
    global_items = [i for i in prompts for _ in range(group_size)]
    return global_items[rank * n_local : (rank + 1) * n_local]


def step_seed(seed: int, step: int, rank: int = 0, stream: int = 0) -> int:
    """Seed of the random draws at `step` on `rank`: a resumed run draws the same samples.

    stream 0 is the sampling noise (one per rank); stream 1 the choices every rank must share
    (which denoising steps are noisy and trained), drawn with rank 0.
    """
    return ((seed * 1_000_003 + step) * 1009 + rank) * 2 + stream


def load_vlm_dataset(cfg) -> list:
    """The training samples, validated whole; synthetic:<name> writes a generated set first, and
    world:<task>[,<task>...][@<background>[+<background>...]] shapes-world task files
    (synthetic_size per task)."""
    from vrl.data.vlm_r1 import load_vlm_r1_jsonl
    from vrl.rewards.accuracy import ACCURACY_METHODS

    files, folders = cfg.data.train_files, cfg.data.image_folders or None
    if files.startswith(SYNTHETIC_PREFIX):
        files, folders = write_synthetic(
            files[len(SYNTHETIC_PREFIX) :],
            Path(cfg.run.output_dir) / "data",
            n=cfg.data.synthetic_size,
            seed=cfg.run.seed,
        )
    elif files.startswith(WORLD_PREFIX):
        from vrl.world.vlm_model import parse_world_data, write_task_files

        tasks, background = parse_world_data(files[len(WORLD_PREFIX) :])
        out = Path(cfg.run.output_dir) / "data" / "world"
        seed = cfg.run.seed + WORLD_DATA_SEED_OFFSET
        paths = write_task_files(
            out, tasks, cfg.data.synthetic_size, seed, "train", background=background
        )
        files, folders = ":".join(map(str, paths)), None  # images beside each file
    return load_vlm_r1_jsonl(
        files,
        folders,
        skip_bad_lines=cfg.data.skip_bad_lines,
        allowed_reward_methods=ACCURACY_METHODS,
    )


def write_synthetic(name: str, out_dir: Path, n: int, seed: int) -> tuple[str, str]:
    from functools import partial

    from vrl.data import synthetic

    writers = {
        "colour_yes_no": synthetic.write_colour_yes_no,
        "is_it_red": partial(synthetic.write_colour_yes_no, asked="red"),
        "rec_boxes": synthetic.write_rec_boxes,
        "detection": synthetic.write_detection,
    }
    if name not in writers:
        raise ValueError(f"unknown synthetic dataset {name!r}; choose one of {sorted(writers)}")
    jsonl = writers[name](out_dir / name, n=n, seed=seed)
    return str(jsonl), str(Path(jsonl).parent)


def load_vlm_policy(cfg, accelerator) -> tuple[Any, torch.nn.Module, torch.nn.Module | None]:
    """Adapter + trainable policy (LoRA or full, vision frozen) + reference model (or None)."""
    from vrl.models.vlm import VLMAdapter
    from vrl.trainers.vlm_grpo import make_reference

    m = cfg.model
    adapter = VLMAdapter.from_pretrained(
        resolve_model_path(m.path),
        dtype=resolve_dtype(m.dtype, accelerator.device),
        attn_implementation=m.attn_implementation,
        box_convention=m.box_convention,
        min_pixels=m.min_pixels,
        max_pixels=m.max_pixels,
    )
    model = adapter.model
    if m.freeze_vision or m.lora.enabled:
        for p in adapter.vision_parameters(model):
            p.requires_grad_(False)
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if m.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=m.lora.r,
            lora_alpha=m.lora.alpha,
            lora_dropout=m.lora.dropout,
            target_modules=m.lora.target_modules or adapter.lora_target_modules(),
        )
        model = get_peft_model(model, lora)
        if m.gradient_checkpointing:
            model.enable_input_require_grads()
    ref = make_reference(model, cfg.grpo.beta, m.lora.enabled)
    if ref is not None:
        ref.to(accelerator.device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("policy %s: %d / %d parameters trainable", m.path, trainable, total)
    return adapter, model, ref


def build_optimizer(model: torch.nn.Module, optim, total_steps: int):
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: check model.lora and model.freeze_vision")
    optimizer = torch.optim.AdamW(
        params, lr=optim.lr, betas=tuple(optim.adam_betas), weight_decay=optim.weight_decay
    )
    scheduler = get_scheduler(
        optim.schedule,
        optimizer,
        num_warmup_steps=optim.warmup_steps,
        num_training_steps=max(total_steps, 1),
    )
    return optimizer, scheduler


class EMA:
    """Exponential moving average of the trainable parameters, for evaluation."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {
            n: p.detach().clone().float() for n, p in model.named_parameters() if p.requires_grad
        }

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.cpu() for n, t in self.shadow.items()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            self.shadow[name].copy_(value)

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module):
        """Run with the EMA weights in the model, then put the trained weights back."""
        params = dict(model.named_parameters())
        saved = {n: params[n].detach().clone() for n in self.shadow}
        with torch.no_grad():
            for name, value in self.shadow.items():
                params[name].copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    params[name].copy_(value)


def truncate_metrics(path: Path, step: int, is_main: bool) -> None:
    """On resume, drop the records a killed run wrote after its last checkpoint."""
    if not is_main or not Path(path).exists():
        return
    keep = [
        line
        for line in Path(path).read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= step
    ]
    Path(path).write_text("".join(line + "\n" for line in keep))


class MetricsWriter:
    """Appends one JSON object per logged step to metrics.jsonl (main process only)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {
            k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()
        }
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
