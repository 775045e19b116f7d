"""Benchmark items on disk: one JSON line per prompt, with its scene and its question graph.

A line of a HiCoPrompt file::

    {"id": "open-test-00042", "version": "hicoprompt-1.0", "vocab": "open", "split": "test",
     "subject_count": 7, "prompt": "...", "phrasing": "compact",
     "scene": Scene.to_dict(), "questions": [{"id", "text", "level", "parents", "target"}, ...]}

`load_items` also reads any JSONL with at least `prompt` and `scene` (the questions are then
derived with `Scene.questions()`), so users can bring their own scenes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vrl.hicogen.scene import Question, QuestionTarget, Scene, SceneValidationError


@dataclass(frozen=True)
class BenchItem:
    """One prompt of a benchmark: what to draw (`prompt`), and what to ask about it."""

    id: str
    prompt: str
    scene: Scene
    questions: tuple[Question, ...]
    subject_count: int
    vocab: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def question_to_dict(q: Question) -> dict[str, Any]:
    """JSON form; the target keeps only the fields that are set (subjects always)."""
    t = q.target
    target: dict[str, Any] = {"subjects": list(t.subjects)}
    if t.attribute is not None:
        target["attribute"] = t.attribute
    if t.predicate is not None:
        target["predicate"] = t.predicate
    if t.count is not None:
        target["count"] = t.count
    return {
        "id": q.id,
        "text": q.text,
        "level": q.level,
        "parents": list(q.parents),
        "target": target,
    }


def question_from_dict(d: dict[str, Any]) -> Question:
    t = d.get("target") or {}
    return Question(
        id=str(d["id"]),
        text=str(d["text"]),
        level=d["level"],
        parents=tuple(d.get("parents") or ()),
        target=QuestionTarget(
            subjects=tuple(t.get("subjects") or ()),
            attribute=t.get("attribute"),
            predicate=t.get("predicate"),
            count=t.get("count"),
        ),
    )


def check_question_graph(questions: Iterable[Question]) -> None:
    """Ids unique, levels known, every parent a question of the same graph listed before it."""
    seen: set[str] = set()
    for q in questions:
        if q.level not in ("exist", "attribute", "relation"):
            raise ValueError(f"question {q.id!r}: unknown level {q.level!r}")
        if q.id in seen:
            raise ValueError(f"duplicate question id {q.id!r}")
        missing = [p for p in q.parents if p not in seen]
        if missing:
            raise ValueError(f"question {q.id!r}: parents {missing} are not earlier questions")
        seen.add(q.id)


def item_from_dict(d: dict[str, Any], where: str = "") -> BenchItem:
    """One line -> BenchItem; errors name the line."""
    try:
        scene = Scene.from_json(d["scene"])
        if not scene.description:  # HiCoPrompt leaves it empty: it would repeat the prompt
            scene = dataclasses.replace(scene, description=str(d["prompt"]))
        raw = d.get("questions")
        questions = (
            tuple(question_from_dict(q) for q in raw)
            if raw is not None
            else tuple(scene.questions())
        )
        check_question_graph(questions)
        known = {"id", "prompt", "scene", "questions", "subject_count", "vocab"}
        return BenchItem(
            id=str(d["id"]),
            prompt=str(d["prompt"]),
            scene=scene,
            questions=questions,
            subject_count=int(d.get("subject_count", len(scene.subjects))),
            vocab=str(d.get("vocab", "")),
            extra={k: v for k, v in d.items() if k not in known},
        )
    except KeyError as err:
        raise ValueError(f"{where}: missing field {err}") from None
    except (SceneValidationError, ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from None


def load_items(path: str | Path) -> list[BenchItem]:
    """All items of a JSONL file; ids must be unique (they name the image files)."""
    path = Path(path)
    items, ids = [], set()
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                d = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON ({err})") from None
            item = item_from_dict(d, where)
            if item.id in ids:
                raise ValueError(f"{where}: duplicate id {item.id!r}")
            ids.add(item.id)
            items.append(item)
    return items
