"""What the world models' pretraining loops share: a recipe from ``--extra key=value``, the
learning-rate schedule, the EMA swap, and saving a pipeline folder free of this machine's paths."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def config_from_extra(cls: type, items: Sequence[str]):
    """A recipe dataclass from ``key=value`` strings (the CLI's --extra), each value cast to its
    default's type: ``subject_mix=0.5,0.5`` is a tuple of floats, a bool is true/false/1/0."""
    fields = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--extra {item!r}: expected key=value with a key of {fields}")
        default = getattr(cls, key)
        if isinstance(default, tuple):
            values[key] = tuple(float(v) for v in raw.split(","))
        elif isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--extra {item!r}: expected true or false")
            values[key] = raw.lower() in ("true", "1")
        else:
            values[key] = type(default)(raw)
    return cls(**values)


def recipe_summary(cfg) -> dict[str, Any]:
    """The recipe as saved in quality.json: every field, and those that differ from the default
    (the card's ``--extra``)."""
    config = dataclasses.asdict(cfg)
    defaults = dataclasses.asdict(type(cfg)())
    return {"config": config, "overrides": {k: v for k, v in config.items() if v != defaults[k]}}


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def swap_ema(params, ema) -> None:
    """Exchange the trained weights and their EMA in place (to evaluate, then to go on)."""
    import torch

    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            held = p.detach().clone()
            p.copy_(e)
            e.copy_(held)


def save_pipeline(pipe, out: Path) -> None:
    """``save_pretrained`` (safetensors), then drop ``_name_or_path`` from the folder's configs: a
    stage continued from another folder would record that folder, a path of this machine."""
    pipe.save_pretrained(out, safe_serialization=True)
    for path in [Path(out) / "model_index.json", *Path(out).glob("*/config.json")]:
        config = json.loads(path.read_text())
        if config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
