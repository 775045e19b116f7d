"""VLM tasks on the shapes world, written as VLM-R1 JSONL + PNG files (the real data path).

``write_world_tasks(out_dir, task, n)`` writes ``out_dir/world_<task>_<split>.jsonl`` and
``out_dir/images/world_<task>_<split>_<i>.png``; ``vrl.data.load_vlm_r1_jsonl`` reads it (image
paths are relative to the file). The same arguments write byte-identical files. Every line also
carries "task", "split" and "scene" (the scene's dict), kept in ``VLMSample.extra``.

Subjects are named by their shortest unambiguous phrase in the scene: "the circle" when it is the
only circle, else "the red circle", else "the small red circle" (sampled scenes never repeat a
(size, colour, shape)). Boxes are ``[x1, y1, x2, y2]`` integer pixels of the image, exclusive
ends, as in ``vrl.data.synthetic``.

| task      | question                                   | answer                  | scored by        |
|-----------|--------------------------------------------|-------------------------|------------------|
| grounding | Locate the red circle in the image.        | [x1, y1, x2, y2]        | rec_iou          |
| counting  | How many circles / red shapes are there?   | 2                       | accuracy numeric |
| colour    | What colour is the circle? (options)       | red                     | accuracy exact   |
| relation  | Is the circle to the left of the square?   | yes / no (balanced)     | accuracy yes_no  |
| detection | Detect every shape ...                     | [{"bbox_2d", "label"}]  | det_* rewards    |
| refer     | Locate the blue square left of the circle. | [x1, y1, x2, y2]        | rec_iou          |

``refer`` is referring-expression comprehension written in VLM-R1's REC form (``"problem"``,
``"solution": [x1, y1, x2, y2]``): its scenes are built so that a third of the expressions name
the subject by its attributes ("the red circle"), a third need its size ("the larger triangle":
two triangles, one small, one large) and a third a relation to another subject ("the blue square
left of the red circle": two identical blue squares, only one of which is left of the circle).

Relation answers come from the rendered boxes (the GenEval rule, "larger than" between a large
and a small shape), not from the scene's own relations, so any pair can be asked about; a "no"
is asked only when the opposite relation holds, so no answer hangs on a borderline position.
Counting counts subjects by body colour or shape; the count may be 0.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vrl.geometry import position_relations
from vrl.hicogen.scene import Scene, Subject

from .render import Box, layout, render
from .scenes import sample_scene
from .vocabulary import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_PAIRS,
    INVERSE_RELATION,
    RELATIONS,
    SHAPES,
    SIZES,
    SPATIAL_RELATIONS,
    SPLITS,
    shape_spec,
)

TASKS: tuple[str, ...] = ("grounding", "counting", "colour", "relation", "detection", "refer")

DEFAULT_SUBJECTS: dict[str, tuple[int, int]] = {
    "grounding": (1, 4),
    "counting": (1, 6),
    "colour": (1, 4),
    "relation": (2, 4),
    "detection": (1, 4),
    "refer": (2, 3),
}
"""(min, max) subjects per scene of each task, unless given."""

ACCURACY_METHOD: dict[str, str] = {"counting": "numeric", "colour": "exact", "relation": "yes_no"}
""""accu_reward_method" of the question-answer tasks (grounding and detection are scored by box)."""

IMAGES_SUBDIR = "images"
_PHRASES = {"left of": "to the left of", "right of": "to the right of"}
DETECTION_QUESTION = (
    "Detect every shape in the image. The shapes are {shapes}, coloured {colours}, and small or "
    'large. Output them as a JSON list of {{"bbox_2d": [x1, y1, x2, y2], "label": '
    '"<size> <colour> <shape>"}}.'
)
_TRIES = 100


def referring_phrase(scene: Scene, subject_id: str, *, use_colour: bool = True) -> str | None:
    """Shortest phrase naming only this subject: "circle", "red circle", "small red circle"
    ("small circle" when ``use_colour`` is False); None when no such phrase is unique."""
    specs = {s.id: shape_spec(s) for s in scene.subjects}
    target = specs[subject_id]
    keys = [("shape",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape")]
    for key in keys:
        if not use_colour and "colour" in key:
            continue
        words = tuple(getattr(target, k) for k in key)
        matches = [s for s in specs.values() if tuple(getattr(s, k) for k in key) == words]
        if len(matches) == 1:
            return " ".join(words)
    return None


def _int_box(box: Box) -> list[int]:
    return [round(v) for v in box]


def _grounding(scene: Scene, boxes: dict[str, Box], rng: random.Random):
    target = rng.choice(scene.subjects).id
    question = f"Locate the {referring_phrase(scene, target)} in the image."
    return question, json.dumps(_int_box(boxes[target]))


def _counting(scene: Scene, boxes: dict[str, Box], rng: random.Random):
    specs = [shape_spec(s) for s in scene.subjects]
    by_colour = rng.random() < 0.5
    present = [s.colour if by_colour else s.shape for s in specs]
    # mostly something present (counts >= 1), sometimes anything (a 0 answer is possible)
    choices = present if rng.random() < 0.75 else list(COLOURS if by_colour else SHAPES)
    value = rng.choice(choices)
    count = present.count(value)
    noun = f"{value} shapes" if by_colour else f"{value}s"
    return f"How many {noun} are there in the image?", str(count)


def _colour(scene: Scene, boxes: dict[str, Box], rng: random.Random):
    named = [
        (s.id, phrase)
        for s in scene.subjects
        if (phrase := referring_phrase(scene, s.id, use_colour=False)) is not None
    ]
    if not named:
        return None
    subject_id, phrase = rng.choice(named)
    options = ", ".join(COLOURS)
    question = f"What colour is the {phrase}? Answer with one of: {options}."
    return question, shape_spec(scene.subject(subject_id)).colour


def _holding(scene: Scene, boxes: dict[str, Box], a: str, b: str) -> set[str]:
    """The world relations "a <predicate> b" that hold on the rendered boxes."""
    held = position_relations(boxes[a], boxes[b])
    size_a, size_b = shape_spec(scene.subject(a)).size, shape_spec(scene.subject(b)).size
    if (size_a, size_b) == ("large", "small"):
        held.add("larger than")
    if (size_a, size_b) == ("small", "large"):
        held.add("smaller than")
    return held


def _relation(scene: Scene, boxes: dict[str, Box], rng: random.Random):
    a, b = (s.id for s in rng.sample(scene.subjects, 2))
    held = _holding(scene, boxes, a, b)
    yes = sorted(p for p in RELATIONS if p in held)
    no = sorted(p for p in RELATIONS if p not in held and INVERSE_RELATION[p] in held)
    answer = "yes" if rng.random() < 0.5 else "no"
    options = yes if answer == "yes" else no
    if not options:
        return None
    predicate = rng.choice(options)
    phrase = _PHRASES.get(predicate, predicate)
    question = (
        f"Is the {referring_phrase(scene, a)} {phrase} the {referring_phrase(scene, b)}? "
        "Answer yes or no."
    )
    return question, answer


def _detection(scene: Scene, boxes: dict[str, Box], rng: random.Random):
    shapes = ", ".join(f"{s}s" for s in SHAPES[:-1]) + f" or {SHAPES[-1]}s"
    colours = ", ".join(list(COLOURS)[:-1]) + f" or {list(COLOURS)[-1]}"
    question = DETECTION_QUESTION.format(shapes=shapes, colours=colours)
    objects = sorted(
        ((_int_box(boxes[s.id]), shape_spec(s)) for s in scene.subjects),
        key=lambda item: (item[0][1], item[0][0]),  # reading order: top to bottom, left to right
    )
    answer = json.dumps(
        [{"bbox_2d": box, "label": f"{sp.size} {sp.colour} {sp.shape}"} for box, sp in objects]
    )
    return question, answer


REFER_KINDS: tuple[str, ...] = ("attribute", "size", "relation")
"""How a ``refer`` expression singles out its subject: by colour and shape alone, by being the
larger or smaller of two shapes, or by a spatial relation to another subject."""

REFER_QUESTION = "Locate the {phrase} in the image."


def _refer(
    rng: random.Random, kind: str, n: int, split: str, background: str | None, size: int, seed: int
) -> tuple[Scene, dict[str, Box], str, str] | None:
    """(scene, boxes, phrase, target id) of one ``kind`` of expression on a fresh scene of
    ``n`` subjects (3 at least for a relation), or None when this draw cannot be laid out or
    offers no unambiguous relation. ``split`` "test" makes the target a held-out (colour, shape)
    pair; "train" keeps every subject off them."""
    every = [(c, s) for c in COLOURS for s in SHAPES]
    pool = every if split != "train" else [p for p in every if p not in HELD_OUT_PAIRS]
    colour, shape = rng.choice(sorted(HELD_OUT_PAIRS) if split == "test" else pool)
    size_word = rng.choice(SIZES)
    specs = [(size_word, colour, shape)]
    if kind == "size":  # a second shape of the same kind (and maybe colour), the other size
        other_size = "small" if size_word == "large" else "large"
        same_colour = rng.random() < 0.5
        colours = [c for c, s in pool if s == shape and c != colour]
        other_colour = colour if same_colour or not colours else rng.choice(colours)
        specs.append((other_size, other_colour, shape))
        comparative = "larger" if size_word == "large" else "smaller"
        noun = f"{colour} {shape}" if other_colour == colour else shape

        def clashes(c: str, s: str) -> bool:
            return (c, s) == (colour, shape) if other_colour == colour else s == shape

    elif kind == "relation":  # an identical twin, and an anchor named by its own phrase
        n = max(n, 3)
        specs.append((size_word, colour, shape))
        anchor = rng.choice([p for p in pool if p != (colour, shape)])
        specs.append((rng.choice(SIZES), *anchor))

        def clashes(c: str, s: str) -> bool:
            return (c, s) in ((colour, shape), anchor)

    else:

        def clashes(c: str, s: str) -> bool:
            return (c, s) == (colour, shape)

    while len(specs) < n:
        c, s = rng.choice([p for p in pool if not clashes(*p)])
        specs.append((rng.choice(SIZES), c, s))
    order = list(range(len(specs)))
    rng.shuffle(order)  # the target, twin and anchor anywhere in the subject list
    subjects = tuple(
        Subject(f"s{i}", specs[k][2], (specs[k][0], specs[k][1])) for i, k in enumerate(order)
    )
    ids = {k: f"s{i}" for i, k in enumerate(order)}  # spec index -> subject id
    scene = Scene(subjects=subjects, background=background)
    try:
        boxes = layout(scene, size, seed=seed)
    except ValueError:
        return None
    target = ids[0]
    if kind == "attribute":
        phrase = referring_phrase(scene, target)
    elif kind == "size":
        phrase = f"{comparative} {noun}"
    else:
        twin, anchor_id = ids[1], ids[2]
        usable = [
            p
            for p in SPATIAL_RELATIONS
            if p in position_relations(boxes[target], boxes[anchor_id])
            and p not in position_relations(boxes[twin], boxes[anchor_id])
        ]
        if not usable:
            return None
        phrase = f"{colour} {shape} {rng.choice(usable)} the {referring_phrase(scene, anchor_id)}"
    assert phrase is not None  # the target's (colour, shape) is unique outside the twin kinds
    return scene, boxes, phrase, target


def _write_refer(
    out: Path, n: int, seed: int, size: int, split: str, low: int, high: int, background
) -> list[dict[str, Any]]:
    """``refer`` records in VLM-R1's REC form, images written under ``out``."""
    rng = random.Random(f"vrl.world.tasks/refer/{split}/{seed}")
    if background not in (None, "random") and background not in BACKGROUNDS:
        raise ValueError(
            f"background must be None, 'random' or one of {list(BACKGROUNDS)}, got {background!r}"
        )
    records: list[dict[str, Any]] = []
    for i in range(n):
        kind = REFER_KINDS[i % len(REFER_KINDS)]  # balanced: a third of each
        for attempt in range(_TRIES):
            name = rng.choice(list(BACKGROUNDS)) if background == "random" else background
            subjects = rng.randint(low, high)
            drawn = _refer(rng, kind, subjects, split, name, size, seed=i * _TRIES + attempt)
            if drawn is not None:
                break
        else:
            raise RuntimeError(
                f"no refer scene of {low}-{high} subjects fits a {size} px canvas in {_TRIES} draws"
            )
        scene, boxes, phrase, target = drawn
        image = f"{IMAGES_SUBDIR}/world_refer_{split}_{i:05d}.png"
        render(scene, size, boxes=boxes).save(out / image, format="PNG")
        records.append(
            {
                "id": f"world-refer-{split}-{i:05d}",
                "image": image,
                "problem": REFER_QUESTION.format(phrase=phrase),
                "solution": _int_box(boxes[target]),
                "task": "refer",
                "split": split,
                "kind": kind,
                "target": target,
                "scene": scene.to_dict(),
            }
        )
    return records


_WRITERS = {
    "grounding": _grounding,
    "counting": _counting,
    "colour": _colour,
    "relation": _relation,
    "detection": _detection,
    "refer": None,  # its own scenes: _write_refer
}


def write_world_tasks(
    out_dir: str | os.PathLike,
    task: str,
    n: int,
    seed: int = 0,
    size: int = 112,
    split: str = "train",
    *,
    min_subjects: int | None = None,
    max_subjects: int | None = None,
    sub_attribute_prob: float = 0.0,
    background: str | None = None,
) -> Path:
    """Write ``n`` samples of ``task`` (one of ``TASKS``) on ``size`` px images; returns the JSONL
    path. ``split`` selects the scenes' held-out split ("train", "test" or "all"); subjects per
    scene default to ``DEFAULT_SUBJECTS[task]``; ``background`` as in ``sample_scene``."""
    if task not in _WRITERS:
        raise ValueError(f"unknown world task {task!r}; valid: {', '.join(TASKS)}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    low, high = DEFAULT_SUBJECTS[task]
    low, high = min_subjects or low, max_subjects or high
    if task == "relation" and low < 2:
        raise ValueError(f"relation questions need at least 2 subjects, got min_subjects={low}")
    out = Path(out_dir)
    (out / IMAGES_SUBDIR).mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"vrl.world.tasks/{task}/{split}/{seed}")
    records: list[dict[str, Any]] = []
    if task == "refer":
        if low < 2:
            raise ValueError(f"refer scenes need at least 2 subjects, got min_subjects={low}")
        records = _write_refer(out, n, seed, size, split, low, high, background)
    for i in range(n if task != "refer" else 0):
        for _ in range(_TRIES):  # a scene may offer no question of this kind: draw another
            scene = sample_scene(
                rng,
                min_subjects=low,
                max_subjects=high,
                sub_attribute_prob=sub_attribute_prob,
                background=background,
                split=split,
                canvas=size,
            )
            boxes = layout(scene, size, seed=i)
            qa = _WRITERS[task](scene, boxes, rng)
            if qa is not None:
                break
        else:
            raise RuntimeError(f"no {task} question found in {_TRIES} scenes")
        question, answer = qa
        image = f"{IMAGES_SUBDIR}/world_{task}_{split}_{i:05d}.png"
        render(scene, size, boxes=boxes).save(out / image, format="PNG")
        record: dict[str, Any] = {
            "id": f"world-{task}-{split}-{i:05d}",
            "image": image,
            "conversations": [
                {"from": "human", "value": "<image>" + question},
                {"from": "gpt", "value": answer},
            ],
        }
        if task in ACCURACY_METHOD:
            record["accu_reward_method"] = ACCURACY_METHOD[task]
        record.update(task=task, split=split, scene=scene.to_dict())
        records.append(record)
    path = out / f"world_{task}_{split}.jsonl"
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------------- task sets


TASK_CANVAS = 32
"""World canvas of the task images (pixels): shapes of 8-13 px, 28-46 px once the processor
has resized the image to 112 px, so a shape's outline spans 2-3 patches of 14 px."""


TASK_SUBJECTS: dict[str, tuple[int, int]] = {
    "counting": (1, 3),
    "colour": (1, 1),
    "relation": (2, 2),
    "grounding": (1, 2),
    "refer": (2, 3),
}
"""(min, max) subjects per scene of each task as the world VLM is trained and tuned on it: few enough that 16 image tokens (one per
28 x 28 px) keep the shapes apart. Colour questions show one shape: the colour of one of two
shapes (binding the colour to the named shape) stayed near 51% after 900 SFT steps, while a lone
shape's colour is learned in ~200."""


def write_task_files(
    out_dir: str | Path,
    tasks: Iterable[str],
    n: int,
    seed: int,
    split: str,
    size: int = TASK_CANVAS,
    subjects: dict[str, tuple[int, int]] | None = None,
    background: str | None = None,
) -> list[Path]:
    """One VLM-R1 JSONL (+ images) per task under ``out_dir``, with ``TASK_SUBJECTS`` scenes;
    ``background`` as in ``vrl.world.sample_scene`` (None: the default light grey), or several
    joined by "+" ("dark grey+light grey"): then ``n`` samples per task are shared out between
    them, each background in its own sub-folder (its own files and images)."""
    names = background.split("+") if background else [None]
    paths = []
    for i, name in enumerate(names):
        folder = Path(out_dir) / name.replace(" ", "-") if len(names) > 1 else Path(out_dir)
        share = n // len(names) + (i < n % len(names))
        for task in tasks:
            low, high = {**TASK_SUBJECTS, **(subjects or {})}.get(task, (None, None))
            paths.append(
                write_world_tasks(
                    folder, task, share, seed=seed + i, size=size, split=split,
                    min_subjects=low, max_subjects=high, background=name,
                )
            )  # fmt: skip
    return paths


def parse_world_data(spec: str) -> tuple[list[str], str | None]:
    """``"counting,colour@dark grey+light grey"`` -> (["counting", "colour"], "dark grey+light
    grey"): the tasks of a ``world:`` data spec and the background(s) after an optional "@"
    (None: the default grey)."""
    tasks, _, background = spec.partition("@")
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise ValueError(f"world data spec {spec!r} names no task, e.g. 'colour,counting@random'")
    backgrounds = [b.strip() for b in background.split("+")]
    if background and not all(backgrounds):
        raise ValueError(f"world data spec {spec!r}: empty background name in {background!r}")
    return names, "+".join(backgrounds) or None
