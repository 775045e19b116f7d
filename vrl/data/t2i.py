"""Prompt files for text-to-image RL: plain text (one prompt a line) or JSONL with metadata.

A JSONL line is an object with a "prompt" string; every other field is metadata that the rewards
receive with the prompt (GenEval-style `{"prompt": ..., "tag": "counting", "include": [...]}`).
A "scene" field (the HiCoGen scene schema, `vrl.hicogen.scene`) is validated here and replaced by
the parsed `Scene`, so the chain of synthesis and the hierarchical rewards never meet a bad one.
As with VLM data, the whole file is validated before any compute is spent and every bad line is
reported as `file:line: what is wrong`.

Each line becomes an `ImageSample`: the prompt, its scene, the reference images the chain of
synthesis gives it, and the line's other fields. It is what image rewards receive beside the
images, from the trainer, the demo and the quickstart alike.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vrl.data.vlm_r1 import DataError
from vrl.hicogen.scene import Scene, SceneValidationError

logger = logging.getLogger(__name__)

SYNTHETIC_PREFIX = "synthetic:"
COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
FIELDS = ("prompt", "scene", "references")
"""The fields an `ImageSample` types; every other field of a line goes to its `extra`."""


@dataclass(frozen=True)
class ImageSample:
    """One prompt of a text-to-image run, as an image reward receives it beside its image.

    Rewards written for row dicts keep working: `sample["scene"]`, `sample.get("references")`,
    `sample["tag"]` read the fields and the line's other fields (`extra`); a field that is not
    set (scene None, no references) reads as absent, as a key missing from a row would.
    """

    prompt: str
    """The text the image is drawn from."""
    scene: Scene | None = None
    """Its HiCoGen scene: the line's "scene" field, or the trainer's decomposition; None if none."""
    references: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """Subject id -> the unit image (3, H, W) in [0, 1] of the chain of synthesis that drew it
    (the subject level's DINOv2 term compares the final image's crop with it)."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """The line's other fields, as they were (an "id", GenEval's "tag" and "include", ...)."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ImageSample:
        """A sample from a row dict {"prompt", "scene"?, "references"?, **other fields}; a scene
        given as its dict or JSON is parsed (`SceneValidationError` if it is bad)."""
        if isinstance(row, ImageSample):
            return row
        scene = row.get("scene")
        if scene is not None and not isinstance(scene, Scene):
            scene = Scene.from_json(scene)
        extra = {k: v for k, v in row.items() if k not in FIELDS}
        return cls(row["prompt"], scene, row.get("references") or {}, extra)

    def with_scene(self, scene: Scene, prompt: str | None = None) -> ImageSample:
        """This sample with another scene (and the prompt that describes it, if given)."""
        return dataclasses.replace(
            self, scene=scene, prompt=self.prompt if prompt is None else prompt
        )

    def with_references(self, references: Mapping[str, Any]) -> ImageSample:
        return dataclasses.replace(self, references=references)

    def _fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"prompt": self.prompt}
        if self.scene is not None:
            fields["scene"] = self.scene
        if self.references:
            fields["references"] = self.references
        return {**self.extra, **fields}

    def __getitem__(self, key: str) -> Any:
        fields = self._fields()
        if key not in fields:
            raise KeyError(key)
        return fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._fields().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._fields()

    def keys(self) -> Iterator[str]:
        """The fields that are set and the extra ones: `{**sample}` gives the row dict back."""
        return iter(self._fields())


def synthetic_prompts(name: str) -> list[ImageSample]:
    """Small built-in prompt sets for CPU recipes and tests."""
    if name == "shapes":
        return [
            ImageSample(f"a {c} {s}", extra={"colour": c, "shape": s})
            for c in COLOURS
            for s in SHAPES
        ]
    if name == "shape_pairs":  # two subjects and a relation: the template parser gives the scene
        return [
            ImageSample(f"a {c1} {s1} {relation} a {c2} {s2}")
            for relation in ("to the left of", "above")
            for c1, c2 in zip(COLOURS, COLOURS[1:] + COLOURS[:1], strict=True)
            for s1, s2 in zip(SHAPES, SHAPES[1:] + SHAPES[:1], strict=True)
        ]
    raise ValueError(f"unknown synthetic prompt set {name!r}; choose 'shapes' or 'shape_pairs'")


def load_prompts(path: str | Path, *, skip_bad_lines: bool = False) -> list[ImageSample]:
    """The samples of a .txt or .jsonl prompt file, or of a synthetic:<name> set."""
    text = str(path)
    if text.startswith(SYNTHETIC_PREFIX):
        return synthetic_prompts(text[len(SYNTHETIC_PREFIX) :])
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file {path} does not exist")
    rows: list[ImageSample] = []
    problems: list[str] = []
    is_jsonl = path.suffix in (".jsonl", ".json")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if not is_jsonl:
            rows.append(ImageSample(line.strip()))
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
                rows.append(ImageSample.from_row(row))
        else:
            rows.append(ImageSample.from_row(row))
    if problems and not skip_bad_lines:
        raise DataError("\n".join(problems))
    for problem in problems:
        logger.warning("skipping %s", problem)
    if not rows:
        raise DataError(f"{path}: no usable prompts")
    return rows


def prompt_texts(samples: Sequence[ImageSample]) -> list[str]:
    return [s.prompt for s in samples]
