"""Prompt files for text-to-image RL: plain text (one prompt a line) or JSONL with metadata.

A JSONL line is an object with a "prompt" string; every other field is metadata that the rewards
receive with the prompt (GenEval-style `{"prompt": ..., "tag": "counting", "include": [...]}`).
A "scene" field (the HiCoGen scene schema, `vrl.hicogen.scene`) is validated here and replaced by
the parsed `Scene`, so the chain of synthesis and the hierarchical rewards never meet a bad one.
As with VLM data, the whole file is validated before any compute is spent and every bad line is
reported as `file:line: what is wrong`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vrl.data.vlm_r1 import DataError
from vrl.hicogen.scene import Scene, SceneValidationError

logger = logging.getLogger(__name__)

SYNTHETIC_PREFIX = "synthetic:"
COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")


def synthetic_prompts(name: str) -> list[dict[str, Any]]:
    """Small built-in prompt sets for CPU recipes and tests."""
    if name == "shapes":
        return [{"prompt": f"a {c} {s}", "colour": c, "shape": s} for c in COLOURS for s in SHAPES]
    if name == "shape_pairs":  # two subjects and a relation: the template parser gives the scene
        return [
            {"prompt": f"a {c1} {s1} {relation} a {c2} {s2}"}
            for relation in ("to the left of", "above")
            for c1, c2 in zip(COLOURS, COLOURS[1:] + COLOURS[:1], strict=True)
            for s1, s2 in zip(SHAPES, SHAPES[1:] + SHAPES[:1], strict=True)
        ]
    raise ValueError(f"unknown synthetic prompt set {name!r}; choose 'shapes' or 'shape_pairs'")


def load_prompts(path: str | Path, *, skip_bad_lines: bool = False) -> list[dict[str, Any]]:
    """Rows {"prompt": str, **metadata} from a .txt or .jsonl file, or a synthetic:<name> set."""
    text = str(path)
    if text.startswith(SYNTHETIC_PREFIX):
        return synthetic_prompts(text[len(SYNTHETIC_PREFIX) :])
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file {path} does not exist")
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    is_jsonl = path.suffix in (".jsonl", ".json")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if not is_jsonl:
            rows.append({"prompt": line.strip()})
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{path}:{number}: invalid JSON: {err.msg} (column {err.colno})")
            continue
        if not isinstance(row, dict):
            problems.append(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        elif not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            problems.append(f'{path}:{number}: field "prompt": expected a non-empty string')
        elif "scene" in row:
            try:
                row["scene"] = Scene.from_json(row["scene"])
            except SceneValidationError as err:
                problems.append(f'{path}:{number}: field "scene": ' + "; ".join(err.errors))
            else:
                rows.append(row)
        else:
            rows.append(row)
    if problems and not skip_bad_lines:
        raise DataError("\n".join(problems))
    for problem in problems:
        logger.warning("skipping %s", problem)
    if not rows:
        raise DataError(f"{path}: no usable prompts")
    return rows


def prompt_texts(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [r["prompt"] for r in rows]
