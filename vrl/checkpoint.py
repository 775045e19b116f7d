"""Atomic training checkpoints shared by the trainers.

A checkpoint is a folder `checkpoints/step-<N>` holding the trainable weights (safetensors), the
optimizer and LR-scheduler states, each rank's RNG states and a small JSON of trainer state. It is
written under a temporary name and renamed only when complete, so a run killed mid-save leaves the
previous checkpoint as the latest one and never a half-written folder that `--resume` would trust.

Under FSDP2 the tensors are gathered whole before they are written and cut back to each process's
slice when read (`vrl.sharding`), so a sharded run's checkpoint has the layout of an unsharded one.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vrl.sharding import (
    full_tensor,
    gather_optimizer_state,
    is_sharded,
    shard_like,
    shard_optimizer_state,
)

STEP_DIR = re.compile(r"^step-(\d+)$")


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes (LoRA weights, or all unfrozen ones), whole: a sharded
    model's are gathered, so every process must call this for it."""
    return {
        name: full_tensor(p.detach()).to("cpu").contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_python_state(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(state: Any) -> tuple:
    # random.getstate() is (version, tuple_of_ints, gauss); a round trip may turn tuples into lists
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))]
    return max(steps)[1] if steps else None


def read_checkpoint_config(path: str | Path) -> dict[str, Any] | None:
    """The settings a checkpoint was trained with (saved in its state as "config"), or None for a
    checkpoint written before they were saved."""
    state = json.loads((Path(path) / "state.json").read_text())
    return state.get("config")


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    accelerator: Any,
    keep_last: int = 2,
    extra: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write `checkpoints/step-<step>` atomically; every rank must call it (for its RNG state).

    `extra` holds further named tensor dicts (e.g. EMA weights), each saved as <name>.safetensors.
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step}"
    tmp = root / f"step-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    sharded = is_sharded(model)  # then every process takes part in gathering the tensors
    if accelerator.is_main_process or sharded:
        weights = trainable_state_dict(model)
        optimizer_state = optimizer.state_dict()
        if sharded:
            optimizer_state = gather_optimizer_state(optimizer_state)
    if accelerator.is_main_process:
        save_file(weights, tmp / "trainable.safetensors")
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        for name, tensors in (extra or {}).items():
            save_file(
                {k: v.contiguous() for k, v in tensors.items()}, tmp / f"extra-{name}.safetensors"
            )
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for _, old in sorted(
            (int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))
        )[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    process_index: int = 0,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this rank's RNG; return the saved trainer state,
    with the `extra` tensor dicts under state["extra"]."""
    path = Path(path)
    weights = load_file(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unknown = [n for n in weights if n not in params]
    if missing or unknown:
        raise RuntimeError(
            f"checkpoint {path} does not fit this model: {len(missing)} trainable parameters "
            f"missing (e.g. {missing[:3]}), {len(unknown)} unknown (e.g. {unknown[:3]}). "
            "Was it written with another model or LoRA setting?"
        )
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(shard_like(value, params[name]))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    if is_sharded(model):
        shard_optimizer_state(optimizer)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-{process_index}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=True))
    state = json.loads((path / "state.json").read_text())
    state["extra"] = {
        f.name.removeprefix("extra-").removesuffix(".safetensors"): load_file(f)
        for f in path.glob("extra-*.safetensors")
    }
    return state
