"""One parser for answers and boxes, shared by the rewards and by evaluation.

Training and evaluation must read a completion the same way, or the reward optimises something
the benchmark does not measure. A completion is parsed once into a ``Completion``; its boxes are
already in ORIGINAL-image pixels, because the model adapter hands over a ``box_transform`` from
its own coordinate convention (Qwen2.5-VL: pixels of the resized input; Qwen2-VL: a 0..1000 grid).
No reward ever sees model coordinates.

The parser is deliberately lenient (models write boxes as plain lists, JSON objects, fenced JSON,
Python-style dicts) and never raises on any string: a completion that cannot be read simply has
no answer and no boxes, and scores 0.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

Box = tuple[float, float, float, float]
"""(x1, y1, x2, y2) with x1 <= x2 and y1 <= y2."""

BoxTransform = Callable[[Box], Box]
"""Maps a box from a model's coordinate convention to original-image pixels."""

MAX_ABS_COORD = 1e6
"""Coordinates beyond this are not a real image position; such boxes are dropped."""

# A number as models write it: 12, -3.5, .5, 1e3. nan/inf are not matched at all, and an overflow
# such as 1e999 parses to inf and is dropped by _valid_box.
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_BOX_LIST = re.compile(
    rf"\[\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\]"
)
# A flat JSON (or Python-style) object: its label belongs to every box list inside it.
_FLAT_OBJECT = re.compile(r"\{[^{}]*\}")
_LABEL = re.compile(r"""["']label["']\s*:\s*(?:"((?:[^"\\]|\\.)*)"|'([^'\\]*)')""")

# Whole answers that mean "there is no such object" (after _normalise_none_text).
_NONE_ANSWER = re.compile(
    r"\[?\s*(?:none|null|nil)\s*\]?|\[\s*\]|\{\s*\}|nothing|n/a|not (?:found|present)"
    r"|(?:there is )?no (?:such )?(?:objects?|targets?|matches?|boxes?)(?: found)?"
)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


@dataclass(frozen=True)
class Completion:
    """A parsed model output (or ground truth): everything a rule reward needs."""

    text: str
    """The raw completion."""
    think: str | None
    """Inner text of the first <think>...</think>, stripped; None if absent."""
    answer: str | None
    """Inner text of the first <answer>...</answer>, stripped; None if absent."""
    scope: str
    """The text the answer is read from (boxes, "None", accuracy); see ``answer_scope``."""
    boxes: tuple[Box, ...]
    """Boxes in original-image pixels, in the order they were written."""
    labels: tuple[str | None, ...]
    """One label per box (None where the box had no "label")."""
    is_none: bool
    """The answer says there is no object ("None", "no object", "[]", null...) and has no box."""


def _first_block(text: str, tag: str) -> str | None:
    """Inner text of the first <tag>...</tag>, stripped.

    Same result as searching ``<tag>(.*?)</tag>``, in linear time: if no closing tag follows the
    first opening one, none follows a later one either. (The regex rescans the rest of the text
    from every opening tag, which takes seconds on a degenerate completion.)
    """
    start = text.find(f"<{tag}>")
    if start < 0:
        return None
    start += len(tag) + 2
    end = text.find(f"</{tag}>", start)
    return text[start:end].strip() if end >= 0 else None


def extract_answer(text: str) -> str | None:
    """Inner text of the first <answer>...</answer>, stripped; None if there is none."""
    return _first_block(text, "answer")


def _extract_think(text: str) -> str | None:
    return _first_block(text, "think")


_TAGS = ("<answer>", "</answer>", "<think>", "</think>")


def answer_scope(text: str) -> str:
    """The part of a completion that counts as its answer, stripped.

    - A closed <answer>: its content.
    - An <answer> that is never closed (a rollout cut at the length limit): everything after it.
      What the answer already holds in full still counts; a cut box such as "[50, 6" is no box.
    - Think/answer tags but no <answer>: "" (a box or number in the reasoning is not the answer).
    - No tags at all: the whole text, so that answer-only tiny models can still be scored.
    """
    answer = extract_answer(text)
    if answer is not None:
        return answer
    start = text.find("<answer>")
    if start >= 0:
        return text[start + len("<answer>") :].strip()
    if any(tag in text for tag in _TAGS):
        return ""
    return text.strip()


def _valid_box(box: Box) -> Box | None:
    """The box with sorted corners, or None if any coordinate is non-finite or absurd."""
    if not all(math.isfinite(v) and abs(v) <= MAX_ABS_COORD for v in box):
        return None
    x1, y1, x2, y2 = box
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def _decode_label(match: re.Match[str]) -> str:
    double_quoted, single_quoted = match.group(1), match.group(2)
    if double_quoted is None:
        return single_quoted
    try:
        return json.loads(f'"{double_quoted}"')  # undo JSON escapes such as \" or \u00e9
    except ValueError:
        return double_quoted


def parse_boxes(text: str) -> tuple[list[Box], list[str | None]]:
    """Every box ``[x1, y1, x2, y2]`` in ``text``, in order, with its label if it has one.

    A box is any list of exactly four numbers; this covers plain lists, several lists, lists of
    lists, and JSON objects under any key ("bbox_2d", "bbox", "box"), fenced or not. A box inside a
    flat JSON object takes that object's "label". Corners are sorted (x1 <= x2, y1 <= y2) and boxes
    with non-finite or absurdly large numbers are dropped.
    """
    found: list[tuple[int, Box, str | None]] = []  # (position in text, box, label)
    object_spans: list[tuple[int, int]] = []
    for obj in _FLAT_OBJECT.finditer(text):
        label_match = _LABEL.search(obj.group(0))
        label = _decode_label(label_match) if label_match else None
        object_spans.append(obj.span())
        for box_match in _BOX_LIST.finditer(obj.group(0)):
            found.append((obj.start() + box_match.start(), _match_to_box(box_match), label))
    object_starts = [start for start, _ in object_spans]  # sorted: the matches do not overlap
    for box_match in _BOX_LIST.finditer(text):
        # Lists inside an object were taken above, with the object's label.
        k = bisect.bisect_right(object_starts, box_match.start()) - 1
        if k < 0 or box_match.start() >= object_spans[k][1]:
            found.append((box_match.start(), _match_to_box(box_match), None))
    found.sort(key=lambda item: item[0])

    boxes: list[Box] = []
    labels: list[str | None] = []
    for _, box, label in found:
        valid = _valid_box(box)
        if valid is not None:
            boxes.append(valid)
            labels.append(label)
    return boxes, labels


def _match_to_box(match: re.Match[str]) -> Box:
    # float() of a digit string never raises; 1e999 becomes inf and is dropped later.
    x1, y1, x2, y2 = (float(g) for g in match.groups())
    return (x1, y1, x2, y2)


def _normalise_none_text(text: str) -> str:
    text = _FENCE.sub("", text.strip()).strip()
    text = text.strip("\"'`").strip().rstrip(".!").strip()
    return " ".join(text.casefold().split())


def says_no_object(text: str) -> bool:
    """Whether a whole answer means "there is no such object" ("None", "no object", [], null)."""
    return _NONE_ANSWER.fullmatch(_normalise_none_text(text)) is not None


def parse_completion(text: str, box_transform: BoxTransform | None = None) -> Completion:
    """Parse a model completion; ``box_transform`` maps its boxes to original-image pixels.

    Boxes and "None" are read from ``answer_scope(text)`` only: the <answer> (even if cut off),
    never the reasoning; the whole text only when the completion has no tags at all.
    """
    scope = answer_scope(text)
    raw_boxes, raw_labels = parse_boxes(scope)
    boxes: list[Box] = []
    labels: list[str | None] = []
    for box, label in zip(raw_boxes, raw_labels, strict=True):
        mapped = _valid_box(box_transform(box)) if box_transform is not None else box
        if mapped is not None:  # a transform can overflow a large but finite box
            boxes.append(mapped)
            labels.append(label)
    return Completion(
        text=text,
        think=_extract_think(text),
        answer=extract_answer(text),
        scope=scope,
        boxes=tuple(boxes),
        labels=tuple(labels),
        is_none=not boxes and says_no_object(scope),
    )


def parse_solution(text: str) -> Completion:
    """Parse a ground truth: boxes already in original pixels, <answer> wrapping optional."""
    return parse_completion(text, box_transform=None)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes; 0.0 when either is degenerate (zero area)."""
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    if not (area_a > 0 and area_b > 0):  # also catches nan
        return 0.0
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    inter = inter_w * inter_h
    return inter / (area_a + area_b - inter)


def resized_to_original(
    resized_size: tuple[int, int], original_size: tuple[int, int]
) -> BoxTransform:
    """Transform for models that answer in pixels of their resized input (Qwen2.5-VL).

    Sizes are (width, height). The processor resized the image from ``original_size`` to
    ``resized_size``; boxes are scaled back per axis.
    """
    _check_sizes(resized_size, original_size)
    sx = original_size[0] / resized_size[0]
    sy = original_size[1] / resized_size[1]
    return lambda b: (b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy)


def grid_to_original(original_size: tuple[int, int], grid: float = 1000.0) -> BoxTransform:
    """Transform for models that answer on a normalised 0..grid grid (Qwen2-VL: 0..1000)."""
    _check_sizes(original_size, (grid, grid))
    sx = original_size[0] / grid
    sy = original_size[1] / grid
    return lambda b: (b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy)


def _check_sizes(*sizes: tuple[float, float]) -> None:
    for size in sizes:
        if len(size) != 2 or not all(v > 0 for v in size):
            raise ValueError(f"image sizes are (width, height) with both > 0, got {size!r}")
