"""The error every data loader raises, and reading a data file one line at a time.

Both loaders (VLM-R1 JSONL, text-to-image prompt files) read lines the same way, so that a file
fails the same way whichever loader reads it:

- a line ends at "\\n" only (a trailing "\\r" is dropped). ``str.splitlines`` would also break at
  U+2028, form feeds and other characters that are legal inside a JSON string, shifting every
  line number after them and cutting a good line in two;
- each line is decoded on its own, so bytes that are not UTF-8 are reported at their line (and
  under ``skip_bad_lines`` cost that line only), never as a bare ``UnicodeDecodeError``;
- a UTF-8 byte order mark at the start of the file is dropped (editors on Windows write one), and
  so is one at the start of a later line (files joined with ``cat`` keep each one's mark);
- a JSON error names the column in that line, as ``json.JSONDecodeError`` gives it for the line
  alone, without its line ending (which made a truncated line's error point at "column 1").

Every problem is one line of text: ``one_line`` escapes the line breaks a user's data may carry
into a message (a quoted field value, a scene's sub-attribute name).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

from vrl.errors import VRLError

PathLike = str | os.PathLike

BOM = "\ufeff"

# Every character that str.splitlines() breaks at (\n \r \v \f \x1c-\x1e \x85 U+2028 U+2029).
_LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


class DataError(VRLError, ValueError):
    """Data that cannot be trained on; the message lists every problem, one per line."""

    def __init__(self, problems: str | Sequence[str], header: str | None = None):
        # A str is accepted so that the exception survives pickling (args holds the message).
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        lines = ([header] if header else []) + self.problems
        super().__init__("\n".join(lines))


def one_line(text: str) -> str:
    """``text`` with its line breaks escaped ("\\n", "\\u2028"): a problem must stay one line."""
    return _LINE_BREAKS.sub(lambda match: repr(match.group())[1:-1], text)


def json_type(value: Any) -> str:
    """A short type name for messages ("null" rather than "NoneType")."""
    return "null" if value is None else type(value).__name__


def read_lines(path: PathLike) -> Iterator[tuple[int, str | None, str | None]]:
    """(1-based line number, text, problem) for each line of ``path``.

    ``text`` is the decoded line without its line ending and without a leading byte order mark;
    when the line is not valid UTF-8 it is None and ``problem`` says where.
    """
    try:
        handle = open(path, "rb")  # closed by the with below
    except OSError as error:
        raise DataError(f"{path}: cannot read the file ({error.strerror or error})") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            raw = raw.removesuffix(b"\n").removesuffix(b"\r")
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as error:
                bad = raw[error.start : error.end].hex(" ")
                yield number, None, f"not valid UTF-8 (byte {error.start + 1} of the line: {bad})"
            else:
                yield number, text, None


def parse_json_line(text: str) -> tuple[Any, str | None]:
    """(value, None) for a line of JSON, or (None, problem) with the column of the error."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as error:
        # The line has no "\n" (read_lines removed it), so colno is the position in this line.
        return None, f"invalid JSON: {error.msg} (column {error.colno})"
    except RecursionError:
        return None, "invalid JSON: nested too deeply"
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        return None, f"invalid JSON: {one_line(str(error))}"
