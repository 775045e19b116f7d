"""VLM-R1's data, checked in full before any compute is spent.

One JSON object per record (docs/algorithms.md, section 2.9), in the conversations form:

    {"id": "0", "image": "coco/1.jpg" or ["a.jpg", "b.jpg"],
     "conversations": [{"from": "human", "value": "<image>question"},
                       {"from": "gpt", "value": "answer"}],
     "accu_reward_method": "exact"}          # optional

or in VLM-R1's REC form, ``{"image", "problem", "solution": [x1, y1, x2, y2], ...}`` with the box
in pixels of the original image (`vrl.data.records`). The files are JSONL (one record a line) or
``.json`` arrays, named directly or through VLM-R1's data config YAML with its sampling strategies
(`vrl.data.data_config`).

A bad line found after an hour of rollouts wastes the hour, and a loader that stops at the first
bad line makes the user fix a file one line per run. So every line of every file is validated up
front (and every image opened, `vrl.data.images`) and all problems are reported together, each
as ``file:line: what is wrong`` (``file:index`` in a .json array) on one line, naming the field or
the image. Nothing is silently
repaired: either the line is rejected, or (``skip_bad_lines=True``) it is dropped with a warning
that says why.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vrl.data.data_config import DatasetEntry, is_data_config, read_data_config, sample_positions
from vrl.data.images import LARGE_IMAGE_PIXELS, check_image_files, describe_size, load_image
from vrl.data.lines import DataError, PathLike, json_type, one_line
from vrl.data.records import (
    REC_FIELDS,
    Box,
    box_outside_image,
    is_rec_form,
    parse_rec_fields,
    read_records,
)

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "IMAGE_MARKER",
    "KNOWN_FIELDS",
    "DataError",
    "VLMSample",
    "load_image",
    "load_images_skipping_bad",
    "load_sample_images",
    "load_vlm_r1_jsonl",
]

logger = logging.getLogger(__name__)

IMAGE_MARKER = "<image>"
# Fields with a meaning in the format; every other field of a line is kept in VLMSample.extra.
KNOWN_FIELDS = frozenset({"id", "image", "conversations", "accu_reward_method"})


@dataclass(frozen=True)
class VLMSample:
    """One validated record of a VLM-R1 data file (a JSONL line or an item of a .json array)."""

    id: str
    """The record's "id"; "<file name>:<line>" when it has none (the format makes it optional)."""
    images: tuple[Path, ...]
    """Absolute image paths, in the order of the "image" field; () for a text-only sample."""
    question: str
    """The human turn (REC form: "problem") without <image> markers, whitespace tidied."""
    solution: str
    """The gpt turn, raw: the ground truth that the accuracy reward compares against. REC form:
    its string "solution", or its box written "[x1, y1, x2, y2]" (original-image pixels)."""
    accu_reward_method: str | None
    """Which accuracy reward scores this sample (None: the run's default)."""
    source: str
    """The data file the sample came from, as given to the loader (or to its data config)."""
    line: int
    """1-based line number in ``source`` (0-based index in a .json array), so that a surprising
    reward can be traced to its record."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Fields the form does not define (e.g. "normal_caption"), kept as they were."""
    box: Box | None = None
    """The REC form's box, (x1, y1, x2, y2) in pixels of the original image; None otherwise."""


def _split_paths(paths: PathLike | Sequence[PathLike] | None) -> list[Path]:
    """Accept one path, a sequence, or a colon-separated string like VLM-R1's command line."""
    if paths is None:
        return []
    if isinstance(paths, str):
        return [Path(p) for p in paths.split(":") if p.strip()]
    if isinstance(paths, os.PathLike):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _tidy_question(text: str) -> str:
    """Drop the <image> markers; collapse runs of spaces but keep line breaks (option lists)."""
    text = text.replace(IMAGE_MARKER, " ")
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


@dataclass
class _LineCheck:
    """What one line yields: a sample, or the problems that stop it from being one."""

    problems: list[str]
    sample: VLMSample | None = None


def _parse_image_field(record: dict[str, Any], problems: list[str]) -> list[str] | None:
    """The "image" field as a list of path strings; None (with a problem) when it is malformed."""
    if "image" not in record:
        return []  # a text-only sample: only an absent field means "no image", never null or []
    value = record["image"]
    if isinstance(value, str) and value.strip():
        return [value]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(item, str) and item.strip() for item in value)
    ):
        return list(value)
    problems.append(
        f'field "image": expected a path or a non-empty list of paths, got {json_type(value)}'
        + (f" {value!r:.80}" if isinstance(value, (str, list)) else "")
        + " (leave the field out for a text-only sample)"
    )
    return None


def _parse_conversations(
    record: dict[str, Any], problems: list[str]
) -> tuple[str | None, str | None]:
    """(human turn, gpt turn) of the "conversations" field; None for a part that is missing."""
    if "conversations" not in record:
        problems.append(
            'field "conversations" is missing (a record in VLM-R1\'s REC form has "problem" '
            'and "solution" instead)'
        )
        return None, None
    turns = record["conversations"]
    expected = 'field "conversations": expected a list of {"from", "value"} turns'
    if not isinstance(turns, list):
        problems.append(f"{expected}, got {json_type(turns)}")
        return None, None
    for index, turn in enumerate(turns):
        if not (isinstance(turn, dict) and isinstance(turn.get("from"), str)):
            problems.append(f"{expected}; turn {index} is {json_type(turn)} {turn!r:.60}")
            return None, None
        if not isinstance(turn.get("value"), str):
            problems.append(
                f'field "conversations": turn {index} ({turn["from"]!r}) needs a string "value", '
                f"got {json_type(turn.get('value'))}"
            )
            return None, None
    roles = [turn["from"] for turn in turns]
    if roles.count("human") > 1:
        # Later turns would be dropped without a word: the trainer is single-turn.
        problems.append(
            f'field "conversations": {roles.count("human")} "human" turns; only single-turn '
            "samples (one question, one answer) are supported"
        )
        return None, None
    if "human" not in roles:
        problems.append(f'field "conversations": no "human" turn (the question); roles: {roles}')
        return None, None
    human_index = roles.index("human")
    human = turns[human_index]["value"]
    # The answer is the first "gpt" turn after the question (a system turn may come first).
    gpt_index = next((i for i in range(human_index + 1, len(turns)) if roles[i] == "gpt"), None)
    if gpt_index is None:
        problems.append(
            'field "conversations": no "gpt" turn after the "human" turn '
            f"(the ground-truth answer); roles: {roles}"
        )
        return human, None
    gpt = turns[gpt_index]["value"]
    if not gpt.strip():
        problems.append('field "conversations": the "gpt" turn (the ground truth) is empty')
        return human, None
    return human, gpt


def _resolve_image(relative: str, folder: Path, check: bool, problems: list[str]) -> Path:
    """Absolute path of one image; records a problem when ``check`` and the file is missing."""
    try:
        candidate = Path(relative).expanduser()
    except RuntimeError:  # "~user/..." for a user that does not exist
        problems.append(f'image "{relative}": cannot expand "~" (no such user)')
        return Path(relative)
    # abspath, not resolve(): keep the user's symlinked layout visible in paths and messages.
    path = Path(os.path.abspath(candidate if candidate.is_absolute() else folder / candidate))
    if check and not path.is_file():
        where = "" if candidate.is_absolute() else f" in {folder}"
        problems.append(f'image "{relative}" not found{where}')
    return path


def _check_record(
    record: Any,
    *,
    source: str,
    line: int,
    image_folder: Path,
    allowed_reward_methods: Collection[str] | None,
    check_images: bool,
) -> _LineCheck:
    """Validate one parsed record; collect every problem rather than stopping at the first."""
    problems: list[str] = []
    if not isinstance(record, dict):
        hint = " (a JSON array file? name it .json)" if isinstance(record, list) else ""
        return _LineCheck([f"expected a JSON object, got {json_type(record)}{hint}"])

    sample_id = record.get("id", f"{Path(source).name}:{line}")
    if not isinstance(sample_id, (str, int)) or isinstance(sample_id, bool):
        problems.append(f'field "id": expected a string or an integer, got {json_type(sample_id)}')

    image_names = _parse_image_field(record, problems)
    box: Box | None = None
    if is_rec_form(record):
        human, gpt, box = parse_rec_fields(record, problems)
        known, turn = REC_FIELDS, 'field "problem"'
        if box is not None and image_names is not None and len(image_names) != 1:
            problems.append(
                f'the box "solution" needs one image, got {len(image_names)} '
                "(its coordinates are pixels of that image)"
            )
    else:
        human, gpt = _parse_conversations(record, problems)
        known, turn = KNOWN_FIELDS, 'field "conversations": the "human" turn'

    method = record.get("accu_reward_method")
    if method is not None and not isinstance(method, str):
        problems.append(f'field "accu_reward_method": expected a string, got {json_type(method)}')
    elif method is not None and allowed_reward_methods is not None:
        if method not in allowed_reward_methods:
            valid = ", ".join(sorted(allowed_reward_methods))
            problems.append(f'"accu_reward_method" is "{method}"; valid: {valid}')

    if human is not None and image_names is not None:
        markers = human.count(IMAGE_MARKER)
        # No marker at all is fine (images go before the text); otherwise they must pair up.
        if markers and markers != len(image_names):
            images = _plural(len(image_names), "image") if image_names else 'no "image" field'
            problems.append(f"{_plural(markers, IMAGE_MARKER + ' marker')} but {images}")
        if not image_names and not _tidy_question(human):
            problems.append(f"{turn} is empty and there is no image")

    images = tuple(
        _resolve_image(name, image_folder, check_images, problems) for name in image_names or []
    )
    if problems:
        return _LineCheck(problems)
    assert human is not None and gpt is not None  # guaranteed when no problem was recorded
    sample = VLMSample(
        id=str(sample_id),
        images=images,
        question=_tidy_question(human),
        solution=gpt,
        accu_reward_method=method,
        source=source,
        line=line,
        extra={key: value for key, value in record.items() if key not in known},
        box=box,
    )
    return _LineCheck([], sample)


def _pair_folders(files: list[Path], folders: list[Path]) -> list[Path | None]:
    """One image folder per file: paired by position; one folder serves all; none: None (each
    data file's own directory)."""
    if not folders:
        return [None] * len(files)
    if len(folders) == 1:
        return folders * len(files)
    if len(folders) != len(files):
        raise DataError(
            f"{len(files)} data files but {len(folders)} image folders: give one folder per file "
            "(paired by position) or a single folder for all of them"
        )
    return folders


@dataclass(frozen=True)
class _DataFile:
    """A data file to read: its image folder, and the data config entry that named it."""

    path: Path
    folder: Path
    entry: DatasetEntry | None = None


def _data_files(files: list[Path], folders: list[Path | None]) -> list[_DataFile]:
    """Each data file with its folder (None: the data file's own directory); a data config
    expands to the files it lists, which share its folder."""
    found: list[_DataFile] = []
    problems: list[str] = []
    for file, folder in zip(files, folders, strict=True):
        if not is_data_config(file):
            found.append(_DataFile(file, folder or file.parent))
            continue
        try:
            entries = read_data_config(file)
        except DataError as error:
            problems.extend(error.problems)
            continue
        found.extend(_DataFile(e.path, folder or e.path.parent, e) for e in entries)
    if problems:
        raise DataError(problems)
    return found


def load_vlm_r1_jsonl(
    paths: PathLike | Sequence[PathLike],
    image_folders: PathLike | Sequence[PathLike] | None = None,
    *,
    skip_bad_lines: bool = False,
    allowed_reward_methods: Collection[str] | None = None,
    check_images: bool = True,
    seed: int = 0,
) -> list[VLMSample]:
    """Load and validate VLM-R1 data: JSONL files, .json arrays, or data configs naming them.

    Each record may be in the conversations form or VLM-R1's REC form (`vrl.data.records`).

    Args:
        paths: a file, a sequence of files, or a colon-separated string ("a.jsonl:b.json").
            A ``.yaml``/``.yml`` file is VLM-R1's data config (`vrl.data.data_config`): the files
            it lists, each sampled by its ``sampling_strategy``, take its place.
        image_folders: the folder that the relative image paths of each file start from, paired
            with ``paths`` by position (same forms accepted); a data config's folder serves every
            file it lists (VLM-R1's single ``--image_root``). One folder serves every file;
            None means each data file's own directory. Absolute image paths are used as is.
        skip_bad_lines: drop bad records with one logged warning each instead of raising.
            Problems with the files themselves (missing file or image folder, a data config or
            a .json array that does not parse) always raise.
        allowed_reward_methods: when given, an "accu_reward_method" outside it is an error
            (a typo would otherwise fall back to some default reward without a word).
        check_images: open every image once (header, size, PIL's ``verify()``; see
            `vrl.data.images`): a missing, unreadable, broken or decompression-bomb image makes its
            line bad, and so does a REC box that reaches past its image; an image above
            `LARGE_IMAGE_PIXELS` is logged. Turn off for remote or lazy storage.
        seed: seeds a data config's ``random:N`` sampling (the run's seed).

    Returns the samples of all files, in file order then record order.
    Raises DataError listing every problem as ``file:line: what is wrong`` (``file:index`` in a
    .json array), one line each. Blank lines are skipped, and so is a UTF-8 byte order mark at
    the start of a line. Only the records a sampling strategy picks are validated.
    """
    files = _split_paths(paths)
    if not files:
        raise DataError("no data file given")
    data_files = _data_files(files, _pair_folders(files, _split_paths(image_folders)))

    file_problems: list[str] = []
    for data in data_files:
        named = f"{data.entry.config}: datasets[{data.entry.index}]: " if data.entry else ""
        named += one_line(str(data.path))  # a data config's path may hold any character
        if not data.path.is_file():
            file_problems.append(f"{named}: data file not found")
        if check_images and not data.folder.is_dir():
            file_problems.append(
                f"{named}: image folder {one_line(str(data.folder))} does not exist"
            )
    if file_problems:
        raise DataError(file_problems)

    # Every record picked, in order: its sample, or the problems that stop it being one.
    checked: list[tuple[str, int, _LineCheck]] = []
    for data in data_files:
        try:
            records = read_records(data.path)
        except DataError as error:
            file_problems.extend(error.problems)
            continue
        if data.entry is not None:
            positions = sample_positions(data.entry, len(records), seed)
            records = records if positions is None else [records[i] for i in positions]
        source = str(data.path)
        absolute_folder = Path(os.path.abspath(data.folder))
        for record in records:
            if record.problem is not None:
                check = _LineCheck([record.problem])
            else:
                check = _check_record(
                    record.value,
                    source=source,
                    line=record.position,
                    image_folder=absolute_folder,
                    allowed_reward_methods=allowed_reward_methods,
                    check_images=check_images,
                )
            checked.append((source, record.position, check))
    if file_problems:
        raise DataError(file_problems)
    if check_images:
        _check_image_contents([check for _, _, check in checked])

    samples: list[VLMSample] = []
    bad_lines: list[str] = []  # one entry per bad line, its problems joined
    problems: list[str] = []  # one entry per problem
    for source, number, check in checked:
        if check.sample is not None:
            samples.append(check.sample)
            continue
        found = [one_line(problem) for problem in check.problems]
        where = f"{one_line(source)}:{number}: "
        problems.extend(where + problem for problem in found)
        bad_lines.append(where + "; ".join(found))

    names = ", ".join(str(file) for file in files)
    if bad_lines and not skip_bad_lines:
        raise DataError(
            problems,
            header=f"{_plural(len(bad_lines), 'bad line')} in {names} "
            "(fix them, or pass skip_bad_lines=True to drop them):",
        )
    for message in bad_lines:
        logger.warning("skipping %s", message)
    if not samples:
        raise DataError(
            problems or [f"{names}: no samples (every line is blank, or no record was picked)"],
            header=f"no usable samples in {names}:",
        )
    if bad_lines:
        logger.info("kept %d samples, skipped %d bad lines", len(samples), len(bad_lines))
    return samples


def _check_image_contents(checks: list[_LineCheck]) -> None:
    """Open each image of the good lines once; a line with a bad image becomes a bad line, and
    so does a REC box that reaches past its image (a box in another convention than pixels of
    the original image: normalised, or of a resized copy).

    Large images are logged (a few by name, then a count), once per image whatever the number
    of lines that use it.
    """
    results = check_image_files(path for c in checks if c.sample for path in c.sample.images)
    large: dict[Path, tuple[VLMSample, int]] = {}
    for check in checks:
        sample = check.sample
        if sample is None:
            continue
        for path in sample.images:
            result = results[path]
            if result.problem:
                check.problems.append(f'image "{path}": {result.problem}')
            elif result.large:
                first, uses = large.get(path, (sample, 0))
                large[path] = (first, uses + 1)
            if sample.box is not None and result.size and not result.problem:
                outside = box_outside_image(sample.box, result.size)
                check.problems.extend([outside] if outside else [])
        if check.problems:
            check.sample = None
    for shown, (path, (first, uses)) in enumerate(large.items()):
        if shown == _LARGE_IMAGES_NAMED:
            logger.warning(
                "... and %d more images above %s pixels", len(large) - shown, LARGE_IMAGE_PIXELS
            )
            break
        more = f" (and {_plural(uses - 1, 'more line')})" if uses > 1 else ""
        logger.warning(
            '%s:%d%s: image "%s" is %s, above %.1f million: it costs memory and time to decode '
            "and resize (the processor downscales it anyway); consider shrinking the file",
            first.source,
            first.line,
            more,
            path,
            describe_size(results[path].size or (0, 0)),
            LARGE_IMAGE_PIXELS / 1e6,
        )


_LARGE_IMAGES_NAMED = 10
"""How many large images are named one by one before the rest are only counted."""


def load_sample_images(sample: VLMSample) -> list[Image.Image]:
    """The images of ``sample``, decoded as RGB (`load_image`), in order.

    Raises `DataError` with a one-line message naming the sample's ``file:line`` and the image
    when one fails to decode: validation opened every image, but a file can still be broken
    past what ``verify()`` reads (a truncated JPEG scan) or change on disk during a run. A
    trainer catches it to skip the sample under ``skip_bad_lines`` instead of ending the run.
    """
    images = []
    for path in sample.images:
        try:
            images.append(load_image(path))
        except DataError as error:
            raise DataError(f"{sample.source}:{sample.line}: {error}") from error
    return images


def load_images_skipping_bad(
    dataset: Sequence[VLMSample], index: int, *, skip_bad_lines: bool, skipped: set[int]
) -> tuple[int, list[Image.Image]]:
    """(index used, its images): ``dataset[index]``'s, or under ``skip_bad_lines`` the next
    sample's whose images decode when one of its own does not.

    For a trainer that draws samples by index. A sample that fails is logged once and added to
    ``skipped`` (the caller keeps that set for the run), so it is never decoded again; the one
    used instead is the next index, wrapping around, that is not in ``skipped``. Every process
    picks the same one for the same index, so a GRPO group split over processes stays one prompt.
    Without ``skip_bad_lines``, or when no sample is left, raises the `DataError` of
    `load_sample_images` (one line: ``file:line: image: what is wrong``).
    """
    first_error: DataError | None = None
    for offset in range(len(dataset)):
        current = (index + offset) % len(dataset)
        if current in skipped:
            continue
        try:
            return current, load_sample_images(dataset[current])
        except DataError as error:
            if not skip_bad_lines:
                raise
            first_error = first_error or error
            skipped.add(current)
            logger.warning("skipping %s (skip_bad_lines)", error)
    raise first_error or DataError("every sample was skipped: no image could be decoded")
