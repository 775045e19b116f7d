"""The records of a data file, and VLM-R1's REC form of a record.

VLM-R1 keeps its data two ways: ``.jsonl`` files, one JSON object a line, and ``.json`` files
holding one array of objects (``json.dump`` of a list, often all on line 1). A record is named by
the line it is on (JSONL, 1-based, blank lines counted) or by its index in the array (0-based, as
in ``json.load(f)[index]``), so every problem reads ``file:line`` or ``file:index``.

A file is read as one JSON array when its name ends in ``.json`` and its first character (after
white space and a byte order mark) is "[", as VLM-R1 reads a ``.json`` file with ``json.load``.
Every other file, a ``.json`` file of JSON lines included, is read line by line
(`vrl.data.lines`).

A record is in one of two forms, told apart by its fields:

- the conversations form (VLM-R1's ``grpo_jsonl.py``): a "conversations" list of turns;
- the REC form (VLM-R1's ``grpo_rec.py``, its RefCOCO/+/g files): ``{"image": "coco/x.jpg",
  "problem": "<referring expression>", "solution": [x1, y1, x2, y2], "normal_caption": ...}``,
  the box in pixels of the ORIGINAL image. vrl also takes a string "solution" (a raw ground
  truth, as a "gpt" turn is). A box becomes the solution text ``"[x1, y1, x2, y2]"``, which the
  rewards parse as original-image pixels (``vrl.rewards.parsing.parse_solution``), the convention
  the model's boxes are mapped to before any reward.

A record with "conversations" is in the conversations form whatever else it holds (its "problem"
or "solution" stay extra fields, as before the REC form was read).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from vrl.data.lines import DataError, PathLike, json_type, one_line, parse_json_line, read_lines

Box = tuple[float, float, float, float]
"""(x1, y1, x2, y2) in pixels of the original image, x1 < x2 and y1 < y2."""

REC_FIELDS = frozenset({"id", "image", "problem", "solution", "accu_reward_method"})
"""The fields the REC form defines; every other one ("normal_caption") is kept as an extra."""

BOX_SLACK_PIXELS = 1.0
"""How far a REC box may reach past the image's edges (rounding of COCO's float boxes)."""

_SNIFF_BYTES = 4096


@dataclass(frozen=True)
class Record:
    """One record of a data file: its parsed JSON value, or the problem that stops it."""

    position: int
    """The 1-based line (JSONL) or the 0-based index in the array (a .json array)."""
    value: Any = None
    problem: str | None = None


def is_json_array_file(path: PathLike) -> bool:
    """Whether ``path`` is read as one JSON array: a ``.json`` name and "[" as first character."""
    if not str(path).lower().endswith(".json"):
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return False  # read_lines reports it
    return head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n").startswith(b"[")


def read_records(path: PathLike) -> list[Record]:
    """Every record of ``path``, in order; blank lines of a JSONL file are skipped.

    Raises `DataError` for a problem with the whole file (it cannot be read; a JSON array that
    does not parse), which no ``skip_bad_lines`` can drop a line of.
    """
    if is_json_array_file(path):
        return _array_records(path)
    records = []
    for number, text, undecodable in read_lines(path):
        if text is None:
            records.append(Record(number, problem=undecodable or "not valid UTF-8"))
        elif text.strip():
            value, invalid = parse_json_line(text)
            records.append(Record(number, value, invalid))
    return records


def _array_records(path: PathLike) -> list[Record]:
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise DataError(f"{path}: cannot read the file ({error.strerror or error})") from None
    how = "read as one JSON array (a .json file that starts with '[')"
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        bad = raw[error.start : error.end].hex(" ")
        raise DataError(f"{path}: not valid UTF-8 (line {line}: {bad}), {how}") from None
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno}, column {error.colno}"
        raise DataError(f"{path}: invalid JSON at {where}: {error.msg}, {how}") from None
    except RecursionError:
        raise DataError(f"{path}: invalid JSON: nested too deeply, {how}") from None
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        raise DataError(f"{path}: invalid JSON: {one_line(str(error))}, {how}") from None
    return [Record(index, item) for index, item in enumerate(items)]


def is_rec_form(record: dict[str, Any]) -> bool:
    """Whether a record is in VLM-R1's REC form ("problem"/"solution", no "conversations")."""
    return "conversations" not in record and ("problem" in record or "solution" in record)


def parse_rec_fields(
    record: dict[str, Any], problems: list[str]
) -> tuple[str | None, str | None, Box | None]:
    """(question, solution text, box) of a REC-form record; None for a part with a problem.

    The box is None for a string solution; the solution text of a box is ``"[x1, y1, x2, y2]"``
    with the numbers as the file wrote them.
    """
    question = record.get("problem")
    if "problem" not in record:
        problems.append('field "problem" is missing (the REC form needs "problem" and "solution")')
    elif not isinstance(question, str) or not question.strip():
        got = json_type(question) if not isinstance(question, str) else "an empty string"
        problems.append(f'field "problem": expected the question as a non-empty string, got {got}')
        question = None
    if "solution" not in record:
        problems.append('field "solution" is missing (the REC form needs "problem" and "solution")')
        return question, None, None
    value = record["solution"]
    if isinstance(value, str):
        if value.strip():
            return question, value, None
        problems.append('field "solution" (the ground truth) is empty')
        return question, None, None
    box = _parse_box(value, problems)
    return question, (None if box is None else json.dumps(value)), box


def _parse_box(value: Any, problems: list[str]) -> Box | None:
    expected = (
        'field "solution": expected a box [x1, y1, x2, y2] in pixels of the original image '
        "(or a string)"
    )
    if not isinstance(value, list):
        problems.append(f"{expected}, got {json_type(value)}")
        return None
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if len(value) != 4 or not numbers:
        types = ", ".join(json_type(v) for v in value[:6]) + (", ..." if len(value) > 6 else "")
        problems.append(f"{expected}, got a list of {len(value)} ({types})")
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in value)
    except OverflowError:  # an integer beyond any float
        x1 = y1 = x2 = y2 = math.inf
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        problems.append(f'field "solution": the box {one_line(repr(value)):.80} is not finite')
        return None
    if not (x1 < x2 and y1 < y2):
        problems.append(
            f'field "solution": the box {value} needs x1 < x2 and y1 < y2 ([x1, y1, x2, y2], '
            "corners in pixels of the original image; [x, y, width, height] is not read)"
        )
        return None
    return (x1, y1, x2, y2)


def box_outside_image(box: Box, size: tuple[int, int]) -> str | None:
    """The problem of a REC box that reaches past the image (of (width, height) ``size``)."""
    width, height = size
    slack = BOX_SLACK_PIXELS
    x1, y1, x2, y2 = box
    if x1 >= -slack and y1 >= -slack and x2 <= width + slack and y2 <= height + slack:
        return None
    shown = "[" + ", ".join(f"{v:g}" for v in box) + "]"
    return (
        f'field "solution": the box {shown} reaches past the image ({width}x{height}); '
        "the REC form's box is in pixels of the original image"
    )
