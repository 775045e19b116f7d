"""A run folder holds one run: claim it before anything loads, resume only what fits.

`open_run_folder` is the first thing both trainers do, before data or models are read, so that a
mistake costs nothing:

- a folder that already holds a run (metrics.jsonl, checkpoints/, final/) is refused
  unless the run is resumed: two runs never mix metric lines or checkpoints;
- a resumed run compares its settings with those its checkpoint was trained with. Settings that
  only steer what happens from now on (the LR and its schedule, steps, logging, checkpointing, micro
  batch size) are applied and logged; any other difference is refused, since the checkpoint's
  weights and optimizer state were made under the old value;
- `--resume` with no checkpoint yet starts again from step 0 and drops the killed run's metrics.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vrl.checkpoint import latest_checkpoint, read_checkpoint_config
from vrl.config import save_config, to_dict
from vrl.errors import RunError

logger = logging.getLogger(__name__)

RUN_FILES = ("metrics.jsonl", "samples.jsonl", "checkpoints", "final")
"""What a run writes once it has trained a step; any of them means the folder is in use. A
config.yaml alone is a run that stopped before its first step (bad data, say): nothing to lose."""

APPLIED_ON_RESUME = (
    "optim.lr",
    "optim.weight_decay",
    "optim.adam_betas",
    "optim.warmup_steps",
    "optim.schedule",
    "optim.max_grad_norm",
    "optim.micro_batch_size",
    "run.max_steps",
    "run.save_every",
    "run.keep_checkpoints",
    "run.log_every",
    "run.report_to",
    "run.save_final",
    "run.max_bad_updates",
    "eval.every",
    "data.skip_bad_lines",
    "prompts.skip_bad_lines",
)
"""Settings a resumed run may change: they steer only the steps still to come (the optimizer's
hyperparameters are set again after its state is loaded, see `apply_optim_settings`)."""


@dataclass
class RunFolder:
    path: Path
    checkpoint: Path | None
    """The checkpoint to resume from; None for a run that starts at step 0."""


def open_run_folder(cfg: Any, accelerator: Any) -> RunFolder:
    """Check `cfg.run.output_dir` for this run, then write its config.yaml (main process).

    Every process checks before the main one writes anything, so that all of them see the
    folder as it was. Raises RunError naming the folder and what to do."""
    path = Path(cfg.run.output_dir)
    if path.exists() and not path.is_dir():
        raise RunError(f"run.output_dir {path} is a file, not a folder: give a folder for the run")
    checkpoint = latest_checkpoint(path) if cfg.run.resume else None
    if not cfg.run.resume:
        used = [name for name in RUN_FILES if (path / name).exists()]
        if used:
            raise RunError(
                f"run.output_dir {path} already holds a run ({', '.join(used)}): pass --resume "
                "to continue it, or give another run.output_dir"
            )
    changed: dict[str, tuple[Any, Any]] = {}
    if checkpoint is not None:
        saved = read_checkpoint_config(checkpoint) or _read_yaml(path / "config.yaml")
        changed = _differences(saved, to_dict(cfg)) if saved is not None else {}
        changed.pop("run.resume", None)
        refused = {k: v for k, v in changed.items() if k not in APPLIED_ON_RESUME}
        if refused:
            listed = "; ".join(f"{k} was {old!r}, now {new!r}" for k, (old, new) in refused.items())
            raise RunError(
                f"--resume from {checkpoint}: {listed}. The checkpoint was trained with the old "
                f"value{'s' if len(refused) > 1 else ''}; put back, or start a new run.output_dir"
            )
    accelerator.wait_for_everyone()  # every process has looked before anything is written
    if accelerator.is_main_process:
        path.mkdir(parents=True, exist_ok=True)
        if cfg.run.resume and checkpoint is None:
            if (path / "metrics.jsonl").exists():
                logger.warning("--resume: %s has no checkpoint yet; starting at step 0", path)
            for name in ("metrics.jsonl", "samples.jsonl"):  # the killed run's lines
                (path / name).unlink(missing_ok=True)
        if changed:
            shown = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
            logger.warning("--resume applies changed settings from %s on: %s", checkpoint, shown)
            if (path / "config.yaml").exists():
                shutil.copy(path / "config.yaml", path / f"config.before-{checkpoint.name}.yaml")
        save_config(cfg, path / "config.yaml")
    accelerator.wait_for_everyone()
    return RunFolder(path, checkpoint)


def apply_optim_settings(optimizer: Any, scheduler: Any, optim: Any) -> None:
    """Set the configured hyperparameters on an optimizer whose state was just loaded.

    `load_state_dict` restores the checkpoint's LR, betas and weight decay; a resumed run means the
    ones it was given. The LR is the schedule's factor at its current step times the new peak."""
    for group in optimizer.param_groups:
        group["initial_lr"] = optim.lr
        group["betas"] = tuple(optim.adam_betas)
        group["weight_decay"] = optim.weight_decay
    scheduler.base_lrs = [optim.lr] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["lr"] = optim.lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _read_yaml(path: Path) -> dict[str, Any] | None:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict:
    """{dotted key: (old, new)} for every leaf setting that differs (lists compared whole)."""
    out: dict[str, tuple[Any, Any]] = {}
    for key in dict.fromkeys([*old, *new]):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(_differences(a, b, prefix=f"{name}."))
        elif _plain(a) != _plain(b):
            out[name] = (a, b)
    return out


def _plain(value: Any) -> Any:
    """Tuples as lists: a YAML round trip turns the one into the other."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value
