"""Small generated datasets, written in the VLM-R1 format as JSONL + PNG files.

They exist so that the default CPU job and the tests go through the same path as a user's real
data (files on disk, relative image paths, the validating loader) while staying tiny, offline and
reproducible: the same seed writes byte-identical files. Image paths in the JSONL are relative to
``out_dir``, so ``load_vlm_r1_jsonl(jsonl_path)`` (image folder = the file's directory) loads them.

- colour yes/no: the easiest task there is; a tiny random VLM must be able to learn it by RL alone.
- REC boxes: one target among up to two objects; boxes in pixels of the original image, some
  images non-square so that coordinate rescaling is exercised.
- detection: 0-3 objects, including the no-object case that the reference implementation lacked.

Boxes are ``[x1, y1, x2, y2]`` integers with exclusive ends: the object covers pixels
x1..x2-1 and y1..y2-1, so x2 - x1 is its width (the COCO convention).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageColor, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
}
"""Object colours of the shape datasets: saturated and far apart, so a colour name is unambiguous."""

SHAPES: tuple[str, ...] = ("square", "circle")

IMAGES_SUBDIR = "images"


def colour_rgb(name: str) -> tuple[int, int, int]:
    """RGB of a colour name: the palette's own shade first, else any CSS name PIL knows."""
    if name in PALETTE:
        return PALETTE[name]
    try:
        rgb = ImageColor.getrgb(name)
    except ValueError:
        raise ValueError(
            f"unknown colour {name!r}; use a CSS colour name, e.g. {sorted(PALETTE)}"
        ) from None
    return rgb[:3]  # type: ignore[return-value]


def _check_args(n: int, size: int, min_size: int) -> None:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if size < min_size:
        raise ValueError(f"size must be at least {min_size} pixels, got {size}")


def _write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    # newline="\n": the same bytes on every platform, so that the determinism promise holds.
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def _record(
    sample_id: str, image: str, question: str, answer: str, **fields: Any
) -> dict[str, Any]:
    """One JSONL line of the VLM-R1 format."""
    return {
        "id": sample_id,
        "image": image,
        "conversations": [
            {"from": "human", "value": "<image>" + question},
            {"from": "gpt", "value": answer},
        ],
        **fields,
    }


def _prepare(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    (out / IMAGES_SUBDIR).mkdir(parents=True, exist_ok=True)
    return out


# ---------------------------------------------------------------------------------------------
# colour yes/no


def _colour_image(rng: random.Random, rgb: tuple[int, int, int], size: int) -> Image.Image:
    """An image that is mostly ``rgb``: noisy plain colour, or a large shape on a grey ground.

    The colour must dominate (at least ~60% of the pixels): the task should be learnable by a
    tiny random model from the reward alone, not a test of its eyesight.
    """
    if rng.random() < 0.5:
        base = Image.new("RGB", (size, size), rgb)
        noise = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
        return Image.blend(base, noise, alpha=0.15)
    grey = rng.randint(110, 200)
    image = Image.new("RGB", (size, size), (grey, grey, grey))
    margin = rng.randint(0, size // 16)
    box = (margin, margin, size - 1 - margin, size - 1 - margin)
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.5:
        draw.rectangle(box, fill=rgb)
    else:
        draw.ellipse(box, fill=rgb)
    return image


def write_colour_yes_no(
    out_dir: str | os.PathLike,
    n: int,
    seed: int = 0,
    size: int = 56,
    colours: Sequence[str] = ("red", "blue"),
    asked: str | None = None,
) -> Path:
    """Write ``n`` "Is the image <colour>?" samples; returns the JSONL path.

    Answers are balanced (n // 2 "yes", the rest "no") and the shown colours cycle evenly through
    ``colours``, both shuffled independently, so neither the question nor the image alone
    predicts the answer: the model has to look at both.

    With ``asked`` set, every question asks about that colour, so the image alone decides the
    answer: the easier task that a random model can learn by RL alone in ~100 steps.
    """
    _check_args(n, size, min_size=8)
    if len(set(colours)) < 2:
        raise ValueError(f"need at least two distinct colours to ask about, got {list(colours)}")
    if asked is not None and asked not in colours:
        raise ValueError(f"asked colour {asked!r} is not one of the colours {list(colours)}")
    rgb = {name: colour_rgb(name) for name in colours}
    out = _prepare(out_dir)
    rng = random.Random(seed)
    answers = ["yes"] * (n // 2) + ["no"] * (n - n // 2)
    rng.shuffle(answers)
    shown = [colours[i % len(colours)] for i in range(n)]
    rng.shuffle(shown)

    records = []
    if asked is not None:  # the answer follows from the shown colour
        answers = ["yes" if colour == asked else "no" for colour in shown]
    for i, (answer, colour) in enumerate(zip(answers, shown, strict=True)):
        question_colour = asked or (
            colour if answer == "yes" else rng.choice([c for c in colours if c != colour])
        )
        image_name = f"{IMAGES_SUBDIR}/colour_{i:05d}.png"
        _colour_image(rng, rgb[colour], size).save(out / image_name, format="PNG")
        question = f"Is the image {question_colour}?"
        records.append(
            _record(f"colour-{i:05d}", image_name, question, answer, accu_reward_method="yes_no")
        )
    return _write_jsonl(out / "colour_yes_no.jsonl", records)


# ---------------------------------------------------------------------------------------------
# shapes on a light background: REC and detection

Box = tuple[int, int, int, int]


def _canvas_size(rng: random.Random, size: int) -> tuple[int, int]:
    """(width, height): square most of the time, 4:3 or 3:4 sometimes."""
    roll = rng.random()
    if roll < 0.2:
        return size, size * 3 // 4
    if roll < 0.35:
        return size * 3 // 4, size
    return size, size


def _overlaps(a: Box, b: Box, gap: int = 2) -> bool:
    return not (
        a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]
    )


def _place_boxes(rng: random.Random, width: int, height: int, count: int) -> list[Box]:
    """``count`` non-overlapping square boxes, each 20-40% of the short side."""
    short = min(width, height)
    low, high = max(6, short // 5), max(6, short * 2 // 5)
    boxes: list[Box] = []
    for _ in range(count):
        for _attempt in range(200):
            side = rng.randint(low, high)
            x1, y1 = rng.randint(0, width - side), rng.randint(0, height - side)
            box = (x1, y1, x1 + side, y1 + side)
            if not any(_overlaps(box, other) for other in boxes):
                boxes.append(box)
                break
        else:  # only reachable for canvases far smaller than the writers allow
            raise RuntimeError(f"cannot place {count} objects on a {width}x{height} image")
    return boxes


def _draw_shapes(
    rng: random.Random, width: int, height: int, objects: Sequence[tuple[str, str, Box]]
) -> Image.Image:
    """Flat (not antialiased) shapes on a light background: the box centre has the exact colour."""
    background = tuple(rng.randint(215, 250) for _ in range(3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for colour, shape, (x1, y1, x2, y2) in objects:
        inclusive = (x1, y1, x2 - 1, y2 - 1)  # PIL includes the end pixel; boxes exclude it
        if shape == "square":
            draw.rectangle(inclusive, fill=PALETTE[colour])
        else:
            draw.ellipse(inclusive, fill=PALETTE[colour])
    return image


def _object_kinds() -> list[tuple[str, str]]:
    return [(colour, shape) for colour in PALETTE for shape in SHAPES]


def write_rec_boxes(out_dir: str | os.PathLike, n: int, seed: int = 0, size: int = 112) -> Path:
    """Write ``n`` referring-expression samples ("Locate the red square in the image.").

    One or two objects per image, always of different (colour, shape), so the target is
    unambiguous. The solution is the target's ``[x1, y1, x2, y2]`` in pixels of the original
    image, as a JSON list; no "accu_reward_method" (REC is scored by IoU, chosen per run).
    """
    _check_args(n, size, min_size=32)
    out = _prepare(out_dir)
    rng = random.Random(seed)
    records = []
    for i in range(n):
        width, height = _canvas_size(rng, size)
        count = rng.choice((1, 2))
        kinds = rng.sample(_object_kinds(), count)
        boxes = _place_boxes(rng, width, height, count)
        objects = [(colour, shape, box) for (colour, shape), box in zip(kinds, boxes, strict=True)]
        image_name = f"{IMAGES_SUBDIR}/rec_{i:05d}.png"
        _draw_shapes(rng, width, height, objects).save(out / image_name, format="PNG")
        colour, shape, target = objects[0]  # placement is random, so the first is as good as any
        question = f"Locate the {colour} {shape} in the image."
        records.append(_record(f"rec-{i:05d}", image_name, question, json.dumps(list(target))))
    return _write_jsonl(out / "rec_boxes.jsonl", records)


DETECTION_QUESTION = (
    "Detect every object in the image. The objects are {shapes} coloured {colours}. "
    'Output them as a JSON list of {{"bbox_2d": [x1, y1, x2, y2], "label": "<colour> <shape>"}}, '
    "or None if there is no object."
)


def write_detection(out_dir: str | os.PathLike, n: int, seed: int = 0, size: int = 112) -> Path:
    """Write ``n`` detection samples with 0-3 objects each (counts balanced, then shuffled).

    The solution is a JSON list ``[{"bbox_2d": [x1, y1, x2, y2], "label": "red circle"}, ...]``
    in reading order (top to bottom, then left to right), or "None" for an empty image: the
    negative case teaches the model not to invent boxes. Labels may repeat within an image.
    """
    _check_args(n, size, min_size=32)
    out = _prepare(out_dir)
    rng = random.Random(seed)
    counts = [i % 4 for i in range(n)]
    rng.shuffle(counts)
    question = DETECTION_QUESTION.format(
        shapes=" or ".join(f"{shape}s" for shape in SHAPES),
        colours=", ".join(list(PALETTE)[:-1]) + " or " + list(PALETTE)[-1],
    )
    records = []
    for i, count in enumerate(counts):
        width, height = _canvas_size(rng, size)
        kinds = [rng.choice(_object_kinds()) for _ in range(count)]
        boxes = sorted(_place_boxes(rng, width, height, count), key=lambda b: (b[1], b[0]))
        objects = [(colour, shape, box) for (colour, shape), box in zip(kinds, boxes, strict=True)]
        image_name = f"{IMAGES_SUBDIR}/det_{i:05d}.png"
        _draw_shapes(rng, width, height, objects).save(out / image_name, format="PNG")
        answer = (
            json.dumps([{"bbox_2d": list(box), "label": f"{c} {s}"} for c, s, box in objects])
            if objects
            else "None"
        )
        records.append(_record(f"det-{i:05d}", image_name, question, answer))
    return _write_jsonl(out / "detection.jsonl", records)
