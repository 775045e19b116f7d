"""A background shift that rule rewards repair: GRPO from the shapes world's question-answering
SFT checkpoint, held-out accuracy before and after (``experiments/world_vlm_grpo.py``).

``world:vlm`` (``vrl pretrain world-vlm``) was SFT-trained on scenes on the world's light-grey
background only. The recipe (``configs/vlm_world_grpo.yaml``) trains it with GRPO and the rule
rewards (``accuracy`` on the exact answer, ``format_answer``) on fresh scenes, half on dark grey
and half on the SFT's own light grey. ``run`` measures greedy accuracy on held-out dark-grey
scenes (test split: (colour, shape) pairs never seen in training) before and after, and the same
questions on light grey as a control of what RL costs where the SFT was already right.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vrl.config import apply_overrides, build_config, load_recipe
from vrl.models.paths import resolve_model_path
from vrl.models.vlm import VLMAdapter
from vrl.pretrain.vlm import held_out_accuracy, write_held_out
from vrl.trainers.vlm_config import VLMTrainConfig
from vrl.trainers.vlm_grpo import train
from vrl.world.tasks import parse_world_data

RECIPE: dict[str, Any] = load_recipe("vlm_world_grpo.yaml")
HELD_OUT_PER_TASK = 200


def run(
    out: str | Path,
    seed: int = 0,
    steps: int | None = None,
    overrides: Sequence[str] = (),
    held_out_per_task: int = HELD_OUT_PER_TASK,
) -> dict[str, Any]:
    """Train once; returns held-out accuracy per task before and after, and times."""
    out = Path(out)
    recipe = json.loads(json.dumps(RECIPE))
    recipe["run"].update(output_dir=str(out / "run"), seed=seed)
    if steps is not None:
        recipe["run"]["max_steps"] = steps
    cfg = build_config(VLMTrainConfig, apply_overrides(recipe, list(overrides)), "world VLM recipe")
    tasks, background = parse_world_data(cfg.data.train_files.removeprefix("world:"))
    template = cfg.data.template
    # measured on the first background named; the others only take part in training
    shifted = background.split("+")[0] if background else None
    held_out = write_held_out(
        out / "data" / "held_out", tasks, held_out_per_task, background=shifted
    )
    # the SFT's own distribution (default grey background): what RL must not break
    control = write_held_out(out / "data" / "control", tasks, held_out_per_task)

    base = VLMAdapter.from_pretrained(resolve_model_path(cfg.model.path))
    before = held_out_accuracy(base, base.model, held_out, template)
    before_control = held_out_accuracy(base, base.model, control, template)
    wall, cpu = time.perf_counter(), time.process_time()
    summary = train(cfg)
    train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = held_out_accuracy(base, summary["model"], held_out, template)
    after_control = held_out_accuracy(base, summary["model"], control, template)
    return {
        "seed": seed,
        "background": shifted,
        "train_backgrounds": background,
        "before": before,
        "after": after,
        "control_before": before_control,
        "control_after": after_control,
        "steps": cfg.run.max_steps,
        "held_out_per_task": held_out_per_task,
        "train_minutes": train_wall / 60,
        "train_cpu_minutes": train_cpu / 60,
        "threads": torch.get_num_threads(),
        "rewards": summary["rewards"],
    }
