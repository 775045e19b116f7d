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
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vrl.data.lines import DataError, json_type, one_line, parse_json_line, read_lines
from vrl.hicogen.scene import Scene, SceneValidationError

logger = logging.getLogger(__name__)

SYNTHETIC_PREFIX = "synthetic:"
COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
FIELDS = ("prompt", "scene", "references")
"""The fields an `ImageSample` types; every other field of a line goes to its `extra`."""
MAX_SCENE_COUNT = 100
"""The most copies of one subject a scene may ask for ("count"). A model cannot draw, nor a
detector count, more than a few dozen of one thing: a count of 10**12 is a bad line."""


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
    """The samples of a .txt or .jsonl prompt file, or of a synthetic:<name> set.

    Lines are read as `vrl.data.lines.read_lines` reads them (a BOM at the start is dropped,
    undecodable bytes are a problem of their line). Raises `DataError` listing every bad line as
    ``file:line: what is wrong`` (one line each); with ``skip_bad_lines`` they are dropped with a
    logged warning each instead, and only a file left with no prompt raises.
    """
    text = str(path)
    if text.startswith(SYNTHETIC_PREFIX):
        return synthetic_prompts(text[len(SYNTHETIC_PREFIX) :])
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file {path} does not exist")
    rows: list[ImageSample] = []
    problems: list[str] = []
    is_jsonl = path.suffix.lower() in (".jsonl", ".json")
    for number, line, undecodable in read_lines(path):
        if line is None:
            problems.append(f"{path}:{number}: {undecodable}")
        elif not line.strip():
            continue
        elif not is_jsonl:
            rows.append(ImageSample(line.strip()))
        else:
            row, problem = _parse_jsonl_line(line)
            if row is not None:
                rows.append(row)
            else:
                problems.append(f"{path}:{number}: {one_line(problem or 'bad line')}")
    if problems and not skip_bad_lines:
        lines = "bad line" if len(problems) == 1 else "bad lines"
        raise DataError(
            problems,
            header=f"{len(problems)} {lines} in {path} "
            "(fix them, or pass skip_bad_lines=True to drop them):",
        )
    for problem in problems:
        logger.warning("skipping %s", problem)
    if not rows:
        raise DataError(
            problems or [f"{path}: no prompts (every line is blank)"],
            header=f"no usable prompts in {path}:",
        )
    if problems:
        logger.info("kept %d prompts, skipped %d bad lines", len(rows), len(problems))
    return rows


def _parse_jsonl_line(line: str) -> tuple[ImageSample | None, str | None]:
    """(sample, None) for a good JSONL line, (None, what is wrong) for a bad one."""
    row, invalid = parse_json_line(line)
    if invalid:
        return None, invalid
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {json_type(row)}"
    if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        return (
            None,
            f'field "prompt": expected a non-empty string, got {json_type(row.get("prompt"))}',
        )
    if "references" in row:
        return None, (
            'field "references": set by the chain of synthesis (unit images), not by a prompt '
            "file; rename the field to keep it as metadata"
        )
    if "scene" in row:
        try:
            scene = Scene.from_json(row["scene"])
        except SceneValidationError as err:
            return None, 'field "scene": ' + "; ".join(err.errors)
        too_many = [
            f"subjects[{i}].count: {s.count} is above the limit of {MAX_SCENE_COUNT}"
            for i, s in enumerate(scene.subjects)
            if s.count is not None and s.count > MAX_SCENE_COUNT
        ]
        if too_many:
            return None, 'field "scene": ' + "; ".join(too_many)
        row["scene"] = scene
    return ImageSample.from_row(row), None


def prompt_texts(samples: Sequence[ImageSample]) -> list[str]:
    return [s.prompt for s in samples]
