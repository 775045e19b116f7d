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

from vrl.errors import ConfigError, RunError
from vrl.sharding import (
    check_launch,
    enable_fsdp_on_cpu,
    fsdp_requested,
    full_tensor,
    shard_like,
)

logger = logging.getLogger(__name__)


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
    of each silently training alone. An FSDP launch stays FSDP there too (`vrl.sharding`)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    cpu = run.device == "cpu" or not has_accelerator_device()
    check_launch(cpu)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=run.mixed_precision,
        log_with=run.report_to or None,
        project_dir=run.output_dir,
    )
    if cpu and fsdp_requested() and accelerator.distributed_type == DistributedType.MULTI_CPU:
        enable_fsdp_on_cpu(accelerator)  # accelerate drops the FSDP plugin on CPUs
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise RuntimeError(
            f"launched with WORLD_SIZE={launched} but accelerate formed a group of "
            f"{accelerator.num_processes} process(es) ({accelerator.distributed_type}); refusing to "
            "train copies that would not share gradients. Check the launcher and run.device."
        )
    return accelerator


def check_process_split(prompts_per_step: int, group_size: int, world: int) -> int:
    """Samples per process at each step; every process must hold the same number."""
    samples = prompts_per_step * group_size
    if samples % world:
        raise ConfigError(
            f"grpo.prompts_per_step * grpo.group_size = {samples} does not split over the {world} "
            "processes: make it a multiple of the process count"
        )
    return samples // world


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


def group_runs(items: list[int]) -> tuple[list[int], list[int]]:
    """Consecutive equal items as (item, count) lists: [3, 3, 3, 5, 5] -> ([3, 5], [3, 2]).

    A step's items hold each prompt G times in a row (`local_step_items`): the runs are its
    groups, or the share of a group on this process or in this micro-batch."""
    distinct: list[int] = []
    counts: list[int] = []
    for item in items:
        if distinct and distinct[-1] == item:
            counts[-1] += 1
        else:
            distinct.append(item)
            counts.append(1)
    return distinct, counts


def step_seed(seed: int, step: int, rank: int = 0, stream: int = 0) -> int:
    """Seed of the random draws at `step` on `rank`: a resumed run draws the same samples.

    stream 0 is the sampling noise (one per rank); stream 1 the choices every rank must share
    (which denoising steps are noisy and trained), drawn with rank 0.
    """
    return ((seed * 1_000_003 + step) * 1009 + rank) * 2 + stream


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


class UpdateGuard:
    """Skips an optimizer update whose gradient is not finite, and stops a run that keeps making them.

    The decision reads the gradient norm after the processes have averaged their gradients, so
    every process decides alike. A skipped update leaves the weights as they were (its gradients
    are dropped); `max_in_a_row` skips in a row end the run with a RunError, the last checkpoint
    being the last good state, since no non-finite update was ever applied."""

    def __init__(self, max_in_a_row: int):
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.total = 0

    def allows(self, grad_norm: torch.Tensor | float, loss: float, step: int) -> bool:
        """True when the update may be applied; otherwise log, count, and maybe stop the run."""
        if math.isfinite(float(grad_norm)):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.total += 1
        logger.warning(
            "step %d: the gradient is not finite (norm %s, loss %s); update skipped (%d in a row)",
            step, float(grad_norm), loss, self.in_a_row,
        )  # fmt: skip
        if self.in_a_row >= self.max_in_a_row:
            raise RunError(
                f"step {step}: {self.in_a_row} updates in a row had a non-finite gradient (last "
                f"loss {loss}), so the run stopped; its last checkpoint holds the last good "
                "weights. Lower optim.lr or check the rewards (metrics.jsonl: reward_errors)"
            )
        return False


def gradient_norm(accelerator: Any, model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """The total gradient norm, clipped to `max_norm` when it is > 0 (measured only, otherwise)."""
    return accelerator.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else math.inf)


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
        """The averages, whole (gathered under FSDP2: every process calls this)."""
        return {n: full_tensor(t).cpu() for n, t in self.shadow.items()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            self.shadow[name].copy_(shard_like(value, self.shadow[name]))

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
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
