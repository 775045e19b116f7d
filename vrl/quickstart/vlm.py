"""The quickstart's VLM-R1 half: referring-expression grounding on the shapes world, VLM-R1's
headline task, before SFT, after SFT and after GRPO, in and out of domain.

- before SFT: the grounding SFT's starting point, the untrained init of ``world:vlm-rec``'s
  architecture and tokenizer with its seed (``vrl.pretrain.grounding.untrained_model``);
- after SFT: the committed checkpoint ``world:vlm-rec`` (``vrl pretrain world-vlm-rec``);
- after RL: GRPO from it with ``configs/quickstart_vlm.yaml`` (``rec_iou`` + 0.1
  ``format_rec_answer`` on fresh training scenes).

Each model answers the same held-out questions of the four evaluation sets of
``vrl.pretrain.grounding`` (in domain, held-out pairs, dark grey, 4 subjects), scored by
``evaluate_sets`` (greedy, Acc@IoU>=0.5 and mean IoU); ``draw_grid`` draws each model's box and
the true one on a few of those images.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vrl.config import apply_overrides, build_config, load_recipe
from vrl.models.paths import resolve_model_path
from vrl.models.vlm import VLMAdapter
from vrl.pretrain.grounding import SETS, evaluate_sets, untrained_model, write_sets
from vrl.trainers.vlm_config import VLMTrainConfig
from vrl.trainers.vlm_grpo import train

RECIPE: dict[str, Any] = load_recipe("quickstart_vlm.yaml")
QUESTIONS_PER_SET = 500
"""Held-out questions per evaluation set: twice the standard error is ~4.4 points near 50%
(~2.5 for the three out-of-domain sets pooled), and evaluating the three models costs about
half a CPU minute."""

MODELS = {"before": "before SFT", "sft": "after SFT", "rl": "after RL"}
"""The three models compared, in the order of the table and of the grid's rows."""

GRID_PER_SET = 2
"""Held-out images of each evaluation set in the grid (its columns)."""
GRID_SCALE = 4
"""The grid's images are upscaled (nearest) so that a 32 px world image shows its shapes."""
GRID_PAD, GRID_LABEL, GRID_HEADER, GRID_CAPTION = 4, 84, 52, 14
"""Grid layout in pixels: gap between tiles, the row-label column, the question band above the
columns, the IoU line under each tile."""
TRUE_BOX, PREDICTED_BOX = (0, 255, 0), (255, 0, 255)
"""Outline colours (lime, magenta): far from every world colour and background."""


def run(
    out: str | Path,
    seed: int = 0,
    steps: int | None = None,
    overrides: Sequence[str] = (),
    per_set: int = QUESTIONS_PER_SET,
    grid_path: str | Path | None = None,
) -> dict[str, Any]:
    """Score the three models on the evaluation sets, training the RL one, and draw the grid
    (``grid_path``, default ``out/grounding_grid.png``); returns the figures and times."""
    out = Path(out)
    t0 = time.perf_counter()
    recipe = json.loads(json.dumps(RECIPE))
    recipe["run"].update(output_dir=str(out / "run"), seed=seed)
    if steps is not None:
        recipe["run"]["max_steps"] = steps
    cfg = build_config(
        VLMTrainConfig, apply_overrides(recipe, list(overrides)), "quickstart grounding recipe"
    )
    sets = write_sets(out / "data" / "eval", per_set)
    sft = VLMAdapter.from_pretrained(resolve_model_path(cfg.model.path))
    scores, records = {}, {}
    scores["before"], records["before"] = evaluate_sets(sft, untrained_model(sft), sets)
    scores["sft"], records["sft"] = evaluate_sets(sft, sft.model, sets)
    wall, cpu = time.perf_counter(), time.process_time()
    summary = train(cfg)
    train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
    scores["rl"], records["rl"] = evaluate_sets(sft, summary["model"], sets)
    grid_path = Path(grid_path or out / "grounding_grid.png")
    questions = draw_grid(sets, records, grid_path)
    return {
        "seed": seed,
        "model": cfg.model.path,
        "steps": cfg.run.max_steps,
        "per_set": per_set,
        "scores": scores,
        "grid": str(grid_path),
        "grid_questions": questions,
        "train_minutes": train_wall / 60,
        "train_cpu_minutes": train_cpu / 60,
        "minutes": (time.perf_counter() - t0) / 60,
        "threads": torch.get_num_threads(),
        "rewards": summary["rewards"],
    }


def grid_size(columns: int, rows: int = len(MODELS), side: int = 32) -> tuple[int, int]:
    """(width, height) of the grid of ``columns`` images of ``side`` px and ``rows`` models."""
    tile = side * GRID_SCALE
    width = GRID_LABEL + columns * (tile + GRID_PAD) + GRID_PAD
    height = GRID_HEADER + rows * (tile + GRID_CAPTION + GRID_PAD) + GRID_PAD
    return width, height


def draw_grid(
    sets: dict[str, list], records: dict[str, dict[str, list[dict]]], path: str | Path
) -> list[str]:
    """A PNG of the first ``GRID_PER_SET`` images of each set: a column per image (its set and
    expression above it), a row per model (``MODELS``), the true box in lime and the model's in
    magenta, its IoU under each tile. Returns the columns' "set: expression" texts."""
    from PIL import Image, ImageDraw, ImageFont

    from vrl.data.vlm_r1 import load_image

    font = ImageFont.load_default()
    columns = [(name, i) for name in SETS if name in sets for i in range(GRID_PER_SET)]
    columns = [(name, i) for name, i in columns if i < len(sets[name])]
    first = load_image(sets[columns[0][0]][0].images[0])
    side, tile = first.width, first.width * GRID_SCALE
    canvas = Image.new("RGB", grid_size(len(columns), len(MODELS), side), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    texts = []
    for col, (name, i) in enumerate(columns):
        sample = sets[name][i]
        x = GRID_LABEL + col * (tile + GRID_PAD) + GRID_PAD
        phrase = sample.question.removeprefix("Locate the ").removesuffix(" in the image.")
        texts.append(f"{name}: {phrase}")
        lines = [f"{name}:"] + _wrap(phrase, font, tile)
        draw.multiline_text((x, 2), "\n".join(lines[:4]), fill=(0, 0, 0), font=font, spacing=1)
        image = load_image(sample.images[0]).convert("RGB")
        image = image.resize((tile, tile), Image.Resampling.NEAREST)
        for row, model in enumerate(MODELS):
            y = GRID_HEADER + row * (tile + GRID_CAPTION + GRID_PAD)
            record = records[model][name][i]
            canvas.paste(image, (x, y))
            _outline(draw, record["true_box"], x, y, tile, TRUE_BOX)
            _outline(draw, record["pred_box"], x, y, tile, PREDICTED_BOX)
            caption = "no box" if record["pred_box"] is None else f"IoU {record['iou']:.2f}"
            draw.text((x, y + tile + 1), caption, fill=(0, 0, 0), font=font)
    for row, label in enumerate(MODELS.values()):
        y = GRID_HEADER + row * (tile + GRID_CAPTION + GRID_PAD) + tile // 2 - 6
        draw.text((GRID_PAD, y), label, fill=(0, 0, 0), font=font)
    legend = "truth: lime\nmodel: magenta"
    draw.multiline_text((GRID_PAD, 2), legend, fill=(0, 0, 0), font=font, spacing=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return texts


def _wrap(text: str, font, width: int) -> list[str]:
    """``text`` in lines that fit ``width`` pixels of ``font``."""
    chars = max(1, int(width / max(font.getlength("m"), 1)))
    for n in range(chars * 2, 0, -1):
        lines = textwrap.wrap(text, n)
        if all(font.getlength(line) <= width for line in lines):
            return lines
    return [text]


def _outline(draw, box, x: int, y: int, tile: int, colour) -> None:
    """A box in image pixels drawn on the tile at (x, y), clipped to the tile; none if None."""
    if box is None:
        return
    x1, y1, x2, y2 = (min(max(v * GRID_SCALE, 0), tile - 1) for v in box)
    if x2 < x1 or y2 < y1:
        return
    draw.rectangle((x + x1, y + y1, x + x2, y + y2), outline=colour, width=2)
