"""Property tests: whatever a data file holds, a loader returns samples or raises a DataError.

A data file comes from anywhere (an export script, a hand edit, a half-copied download), so the
two loaders are run on arbitrary bytes and on lines assembled from the pieces that break naive
parsers. Either they return samples, or they raise `DataError` whose every problem is one line
(``file:line: what is wrong``): never a UnicodeDecodeError, a RecursionError or a KeyError.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vrl.data import DataError, load_vlm_r1_jsonl
from vrl.data.t2i import ImageSample, load_prompts
from vrl.data.vlm_r1 import VLMSample

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FRAGMENTS = [
    "{", "}", "[", "]", ",", ":", '"', "\\", " ", "\t", "\r", "\n", "\u2028", "\x85", "\x00",
    "\ufeff", "null", "true", "1e999", "-0", "NaN", "Infinity", "9" * 5000, "[" * 3000,
    '"id": ', '"image": ', '"a.png"', '"missing.png"', '"not_an_image.png"', '["a.png"]',
    '"conversations": ', '{"from": "human", "value": "<image>Q"}', '{"from": "gpt", "value": "A"}',
    '"accu_reward_method": ', '"prompt": ', '"a red circle"', '"scene": ', '"subjects": ',
    '{"name": "dog", "count": 3}', '"count": ', "1000000000000", '"relations": ',
    '{"subject": 0, "predicate": "left of", "object": 1}', '"units": ', '"sub_attributes": ',
    '{"a\\nb": "x"}', '"references": ', "<image>",
]  # fmt: skip

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**15), 10**15)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.sampled_from(["a.png", "missing.png", "not_an_image.png", "<image>Q", "human", "gpt"])
    | st.sampled_from([[0, 0, 2, 2], [0.5, 1, 3, 4], [3, 0, 1, 2], [0, 0, 99, 2], [1, 2, 3]]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _object_lines(keys: list[str]) -> st.SearchStrategy[bytes]:
    """JSON objects over the keys a loader reads, with values of any type."""
    record = st.dictionaries(st.sampled_from(keys), json_values, max_size=len(keys))
    return record.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _files(keys: list[str]) -> st.SearchStrategy[bytes]:
    line = st.one_of(
        st.binary(max_size=60),
        st.lists(st.sampled_from(FRAGMENTS), max_size=12).map(lambda f: "".join(f).encode()),
        st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
        _object_lines(keys),
    )
    return st.one_of(
        st.binary(max_size=300),
        st.lists(line, max_size=6).map(b"\n".join),
    )


VLM_KEYS = ["id", "image", "conversations", "accu_reward_method", "extra", "problem", "solution"]
T2I_KEYS = ["prompt", "scene", "references", "tag", "include"]


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory(prefix="vrl-fuzz-") as name:
        root = Path(name)
        Image.new("RGB", (4, 4), "red").save(root / "a.png")
        (root / "not_an_image.png").write_bytes(b"plain text")
        yield root


def _assert_one_line_problems(error: DataError) -> None:
    assert error.problems, str(error)
    for problem in error.problems:
        assert len(problem.splitlines()) == 1, repr(problem)
    assert str(error).splitlines()[-len(error.problems) :] == error.problems


def _array_files(keys: list[str]) -> st.SearchStrategy[bytes]:
    """.json arrays (VLM-R1's REC files): of records, of any value, or near-JSON after a "["."""
    record = st.dictionaries(st.sampled_from(keys), json_values, max_size=len(keys))
    items = st.lists(record | json_values, max_size=5)
    return st.one_of(
        items.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass")),
        st.lists(st.sampled_from(FRAGMENTS), max_size=12).map(
            lambda f: ("[" + "".join(f)).encode()
        ),
    )


@FUZZ
@given(
    data=st.one_of(
        st.tuples(st.just("data.jsonl"), _files(VLM_KEYS)),
        st.tuples(st.just("data.json"), _files(VLM_KEYS) | _array_files(VLM_KEYS)),
    ),
    skip=st.booleans(),
)
def test_the_vlm_loader_returns_samples_or_raises_a_one_line_data_error(folder, data, skip):
    name, content = data
    data = folder / name
    data.write_bytes(content)
    try:
        samples = load_vlm_r1_jsonl(
            data, folder, skip_bad_lines=skip, allowed_reward_methods=("exact",)
        )
    except DataError as error:
        _assert_one_line_problems(error)
    else:
        assert samples and all(isinstance(s, VLMSample) for s in samples)
        assert all(path.is_file() for s in samples for path in s.images)


@FUZZ
@given(content=_files(T2I_KEYS), suffix=st.sampled_from([".txt", ".jsonl"]), skip=st.booleans())
def test_the_prompt_loader_returns_samples_or_raises_a_one_line_data_error(
    folder, content, suffix, skip
):
    path = folder / f"prompts{suffix}"
    path.write_bytes(content)
    try:
        samples = load_prompts(path, skip_bad_lines=skip)
    except DataError as error:
        _assert_one_line_problems(error)
    else:
        assert samples and all(isinstance(s, ImageSample) for s in samples)
        assert all(s.prompt.strip() for s in samples)


STRATEGIES = ["all", "first:2", "end:1", "random:3", "random:50%", "end:0", "first", "x:1", "1%"]


@FUZZ
@given(
    config=st.one_of(
        st.binary(max_size=80),
        st.dictionaries(
            st.sampled_from(["datasets", "other"]),
            st.lists(
                st.dictionaries(
                    st.sampled_from(["json_path", "sampling_strategy", "bogus"]),
                    st.sampled_from(
                        ["data.jsonl", "data.json", "none.jsonl", "c.yaml", *STRATEGIES]
                    )
                    | json_values,
                    max_size=3,
                )
                | json_values,
                max_size=3,
            )
            | json_values,
            max_size=2,
        ).map(lambda c: json.dumps(c).encode()),  # JSON is YAML
    ),
    records=st.lists(_object_lines(VLM_KEYS), max_size=4),
    seed=st.integers(0, 3),
    skip=st.booleans(),
)
def test_a_data_config_returns_samples_or_raises_a_one_line_data_error(
    folder, config, records, seed, skip
):
    """VLM-R1's data config, listing the files beside it (json_path relative to the cwd)."""
    (folder / "data.jsonl").write_bytes(b"\n".join(records))
    (folder / "data.json").write_bytes(b"[" + b",".join(records) + b"]")
    (folder / "c.yaml").write_bytes(config)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(folder)
            samples = load_vlm_r1_jsonl(folder / "c.yaml", folder, skip_bad_lines=skip, seed=seed)
    except DataError as error:
        _assert_one_line_problems(error)
    else:
        assert samples and all(isinstance(s, VLMSample) for s in samples)
