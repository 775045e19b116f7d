"""VLM-R1's data config: a YAML file naming data files, each with an optional sampling strategy.

The layout of VLM-R1's ``data_config/rec.yaml`` (read by ``LazySupervisedDataset`` in
``src/open-r1-multimodal/src/open_r1/grpo_rec.py``)::

    datasets:
      - json_path: data/rec_jsons_processed/refcoco_train.json
        sampling_strategy: first:1000     # optional; all records when left out
      - json_path: data/rec_jsons_processed/refcocog_train.jsonl
        sampling_strategy: random:10%

A ``json_path`` is a ``.json`` array or a JSONL file (`vrl.data.records`); a relative one starts
from the working directory, as VLM-R1 opens it. The strategies pick records by their position in
the file (its non-blank lines, or the items of its array), before any record is validated: only
the records picked are checked and trained on.

- ``all`` (the default): every record;
- ``first:N`` / ``end:N``: the first / last N records;
- ``random:N``: N records drawn without replacement, kept in file order. VLM-R1 shuffles with
  Python's global ``random``, never seeded before the dataset is built, so its subset changes from
  run to run; here it is a function of the run's seed and the entry's position in the config.

N is a count or a percentage of the file's records, ``P%`` (0 < P <= 100, decimals allowed),
rounded up as VLM-R1 does (``math.ceil``). A count above the file's records takes them all, as
VLM-R1's slices do, with a warning. Unlike VLM-R1, a strategy it would ignore without a word (an
unknown name, a missing ":N", ``end:0``, which in Python's ``[-0:]`` takes everything) is an
error, and so is an entry key other than ``json_path`` and ``sampling_strategy``.
"""

from __future__ import annotations

import logging
import math
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from vrl.data.lines import DataError, PathLike, json_type, one_line

logger = logging.getLogger(__name__)

DATA_CONFIG_SUFFIXES = (".yaml", ".yml")
ENTRY_KEYS = ("json_path", "sampling_strategy")
STRATEGIES = ("first", "end", "random")

_AMOUNT = re.compile(r"(?:(?P<count>\d+)|(?P<percent>\d+(?:\.\d+)?)%)")


def is_data_config(path: PathLike) -> bool:
    """Whether ``path`` names a data config (a ``.yaml`` / ``.yml`` file), not a data file."""
    return str(path).lower().endswith(DATA_CONFIG_SUFFIXES)


@dataclass(frozen=True)
class Sampling:
    """A parsed ``sampling_strategy``: how many records (a count or a percentage), from where."""

    strategy: str
    """"first", "end" or "random"."""
    count: int | None = None
    percent: Fraction | None = None
    text: str = ""
    """The strategy as written ("random:10%")."""

    def size(self, available: int) -> int:
        """How many of ``available`` records it asks for (a percentage rounds up)."""
        if self.percent is not None:
            return math.ceil(self.percent * available / 100)
        assert self.count is not None
        return self.count

    def pick(self, available: int, rng: random.Random) -> list[int]:
        """The positions (0-based, increasing) of the records it takes out of ``available``."""
        size = min(self.size(available), available)
        if self.strategy == "first":
            return list(range(size))
        if self.strategy == "end":
            return list(range(available - size, available))
        return sorted(rng.sample(range(available), size))

    def __str__(self) -> str:
        return self.text or f"{self.strategy}:{self.count}"


def parse_sampling(value: object) -> Sampling | None:
    """The `Sampling` of a ``sampling_strategy`` value; None for "all". Raises ValueError."""
    valid = "all, first:N, end:N or random:N (N a count, or a percentage such as 10%)"
    if not isinstance(value, str):
        raise ValueError(f"expected {valid}, got {json_type(value)}")
    text = value.strip()
    if text == "all":
        return None
    name, colon, amount = (part.strip() for part in text.partition(":"))
    found = _AMOUNT.fullmatch(amount)
    if name not in STRATEGIES or not colon or not found:
        raise ValueError(f"expected {valid}, got {one_line(repr(value)):.80}")
    if found["count"] is not None:
        count = int(found["count"])
        if count < 1:
            raise ValueError(f"{text!r} takes no record (remove the entry instead)")
        return Sampling(name, count=count, text=text)
    percent = Fraction(found["percent"])
    if not 0 < percent <= 100:
        raise ValueError(f"{text!r}: a percentage must be above 0% and at most 100%")
    return Sampling(name, percent=percent, text=text)


@dataclass(frozen=True)
class DatasetEntry:
    """One entry of a data config's ``datasets`` list."""

    path: Path
    """Its ``json_path``, as written (relative paths start from the working directory)."""
    sampling: Sampling | None
    """Its ``sampling_strategy`` (None: every record)."""
    config: Path
    """The data config that named it."""
    index: int
    """Its position in the config's ``datasets`` list (0-based); it seeds ``random:N``."""

    def rng(self, seed: int) -> random.Random:
        """The generator of ``random:N``: a function of the run's seed and the entry's index."""
        return random.Random(f"vrl.data_config:{seed}:{self.index}")


def read_data_config(path: PathLike) -> list[DatasetEntry]:
    """The entries of a VLM-R1 data config; `DataError` lists every problem as ``file: ...``."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            content = yaml.safe_load(handle)
    except OSError as error:
        raise DataError(
            f"{path}: cannot read the data config ({error.strerror or error})"
        ) from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as error:
        reason = one_line(str(error)) if isinstance(error, yaml.YAMLError) else type(error).__name__
        raise DataError(f"{path}: not a readable YAML data config: {reason}") from None
    layout = 'a "datasets" list of {json_path, sampling_strategy} (VLM-R1\'s data config)'
    if not isinstance(content, dict) or not isinstance(content.get("datasets"), list):
        got = json_type(content) if not isinstance(content, dict) else "no datasets list"
        raise DataError(f"{path}: expected {layout}, got {got}")
    if not content["datasets"]:
        raise DataError(f"{path}: the datasets list is empty")
    entries: list[DatasetEntry] = []
    problems: list[str] = []
    for index, entry in enumerate(content["datasets"]):
        where = f"{path}: datasets[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping with json_path, got {json_type(entry)}")
            continue
        unknown = [str(key) for key in entry if key not in ENTRY_KEYS]
        if unknown:
            problems.append(
                f"{where}: unknown key(s) {one_line(', '.join(unknown)):.120}; "
                f"the keys are {', '.join(ENTRY_KEYS)}"
            )
        json_path = entry.get("json_path")
        if not isinstance(json_path, str) or not json_path.strip():
            problems.append(
                f"{where}: json_path: expected the path of a .json or .jsonl file, "
                f"got {json_type(json_path)}"
            )
        elif is_data_config(json_path):
            problems.append(f"{where}: json_path {json_path!r} is a data config, not a data file")
        try:
            sampling = parse_sampling(entry.get("sampling_strategy", "all"))
        except ValueError as error:
            problems.append(f"{where}: sampling_strategy: {error}")
            continue
        if isinstance(json_path, str) and json_path.strip() and not problems:
            entries.append(DatasetEntry(Path(json_path), sampling, Path(path), index))
    if problems:
        raise DataError(problems)
    return entries


def sample_positions(entry: DatasetEntry, available: int, seed: int) -> list[int] | None:
    """The positions of ``entry``'s file that its strategy takes; None for all of them."""
    if entry.sampling is None:
        return None
    wanted = entry.sampling.size(available)
    if wanted > available:
        logger.warning(
            "%s: %s asks for %d records but %s has %d: taking them all",
            entry.config,
            entry.sampling,
            wanted,
            entry.path,
            available,
        )
    positions = entry.sampling.pick(available, entry.rng(seed))
    logger.info(
        "%s: %s took %d of %d records", entry.path, entry.sampling, len(positions), available
    )
    return positions
