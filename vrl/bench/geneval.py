"""GenEval compatibility: its prompt metadata and image folders, scored with its rules.

GenEval (Ghosh et al., 2023) describes each prompt by one line of `evaluation_metadata.jsonl`::

    {"tag": "position", "prompt": "a photo of a dog right of a cup",
     "include": [{"class": "cup", "count": 1},
                 {"class": "dog", "count": 1, "position": ["right of", 0]}]}

`tag` is one of single_object, two_object, counting, colors, position, color_attr; every
`include` clause must hold (at least `count` objects of `class`, of `color` if given, each in
relation `position[0]` to every object of include clause `position[1]`); an `exclude` clause
fails the image when `count` or more objects of `class` are found (the counting task excludes
n + 1, so it asks for exactly n). Its images live in ``<dir>/<index:05d>/samples/<k:04d>.png``
with the prompt's metadata line in ``<dir>/<index:05d>/metadata.jsonl``.

Here a metadata line becomes a `Scene` (one subject per include clause, the colour as its
attribute, the count as its count, the position as a relation) and so a question graph, which
any judge answers. GenEval's rule for an image is then: correct when every question is judged
and correct (under dependencies, the same as all of them passing). A task's score is the mean
over its images, the overall score the mean over tasks, as in GenEval's `summary_scores.py`.
With the `geometry` judge (detector counts, the position rule, CLIP colours) this is GenEval's
own procedure with OWLv2 or GroundingDINO in place of Mask2Former.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vrl.bench.data import BenchItem
from vrl.hicogen.scene import Relation, Scene, Subject

GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def geneval_scene(meta: Mapping[str, Any]) -> Scene:
    """One metadata line -> Scene; raises ValueError naming what GenEval rule it cannot express."""
    include = meta.get("include")
    if not isinstance(include, list) or not include:
        raise ValueError("expected a non-empty 'include' list")
    exact = {}  # class -> count that the exclude clause makes exact
    for clause in meta.get("exclude") or []:
        name, n = clause.get("class"), clause.get("count")
        matches = [c for c in include if c.get("class") == name and c.get("count") == n - 1]
        if not matches:
            raise ValueError(
                f"exclude clause {clause} is not 'n + 1 of an included class' (GenEval's counting "
                "form); vrl reads counts as exact and cannot express it"
            )
        exact[name] = n - 1
    ids: list[str] = []
    subjects = []
    for i, clause in enumerate(include):
        try:
            name, count = str(clause["class"]), int(clause.get("count", 1))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"include[{i}]: expected {{'class', 'count'}}, got {clause}") from None
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "object"
        sid, k = slug, 2
        while sid in ids:
            sid, k = f"{slug}_{k}", k + 1
        ids.append(sid)
        colour = clause.get("color")
        subjects.append(
            Subject(sid, name, (colour,) if colour else (), (), count if count > 1 else None)
        )
    relations = []
    for i, clause in enumerate(include):
        if "position" in clause:
            predicate, target = clause["position"]
            relations.append(Relation(ids[i], str(predicate), ids[int(target)]))
    return Scene(
        subjects=tuple(subjects),
        relations=tuple(relations),
        description=str(meta.get("prompt", "")),
    )


def geneval_item(index: int, meta: Mapping[str, Any]) -> BenchItem:
    scene = geneval_scene(meta)
    return BenchItem(
        id=f"{index:05d}",
        prompt=str(meta["prompt"]),
        scene=scene,
        questions=tuple(scene.questions()),
        subject_count=sum(s.count or 1 for s in scene.subjects),
        vocab="geneval",
        extra={"tag": meta.get("tag"), "metadata": dict(meta)},
    )


def load_geneval_metadata(path: str | Path) -> list[BenchItem]:
    """`evaluation_metadata.jsonl` -> items with ids "00000", "00001", ... (line order)."""
    items = []
    with Path(path).open(encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    for index, line in enumerate(lines):
        try:
            items.append(geneval_item(index, json.loads(line)))
        except (ValueError, KeyError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: prompt {index}: {err}") from None
    return items


def load_geneval_folder(folder: str | Path) -> list[BenchItem]:
    """Items from an image folder's own `<index>/metadata.jsonl` files (no metadata file needed)."""
    items = []
    for sub in sorted(Path(folder).iterdir()):
        meta_file = sub / "metadata.jsonl"
        if sub.is_dir() and sub.name.isdigit() and meta_file.is_file():
            try:
                items.append(geneval_item(int(sub.name), json.loads(meta_file.read_text())))
            except (ValueError, KeyError, json.JSONDecodeError) as err:
                raise ValueError(f"{meta_file}: {err}") from None
    return items


def image_correct(correct: Mapping[str, float | None]) -> bool | None:
    """GenEval's verdict for one image from its dependency-scored questions; None if any question
    was not judged (the judge cannot apply every rule of the prompt)."""
    values = list(correct.values())
    if any(v is None for v in values):
        return None
    return all(v == 1.0 for v in values)


def geneval_summary(tags: Sequence[str], verdicts: Sequence[Sequence[bool | None]]) -> dict:
    """Per task the fraction of correct images, overall the mean over tasks (GenEval's score)."""
    per_tag: dict[str, list[bool]] = {}
    unscored = 0
    for tag, image_verdicts in zip(tags, verdicts, strict=True):
        for v in image_verdicts:
            if v is None:
                unscored += 1
            else:
                per_tag.setdefault(tag, []).append(v)
    order = [t for t in GENEVAL_TAGS if t in per_tag] + sorted(set(per_tag) - set(GENEVAL_TAGS))
    scores = {t: sum(per_tag[t]) / len(per_tag[t]) for t in order}
    return {
        "tasks": scores,
        "images": {t: len(per_tag[t]) for t in order},
        "overall": sum(scores.values()) / len(scores) if scores else None,
        "unscored_images": unscored,
    }
