"""vrl.data lines: both loaders read a file line by line the same way and name file:line.

Issue 20, items 6 and 9: a prompt file with non-UTF-8 bytes gave a UnicodeDecodeError with no
line (skip_bad_lines or not); a BOM was rejected in .jsonl and kept in .txt ('\\ufeffa red
circle'); a scene count of 10**12 was accepted; a truncated JSON line was reported at column 1.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from vrl.data import DataError, load_vlm_r1_jsonl
from vrl.data.t2i import MAX_SCENE_COUNT, load_prompts

BOM = b"\xef\xbb\xbf"


def _vlm_line(sample_id: str = "s", **fields) -> str:
    record = {
        "id": sample_id,
        "image": "a.png",
        "conversations": [
            {"from": "human", "value": "<image>What is it?"},
            {"from": "gpt", "value": "a cat"},
        ],
    }
    record.update(fields)
    return json.dumps(record)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    return tmp_path


def _only_problem(error: DataError) -> str:
    (problem,) = error.problems
    assert len(problem.splitlines()) == 1, problem
    assert str(error).splitlines()[-1] == problem  # the message lists the problems, one a line
    return problem


# ---------------------------------------------------------------------------------------------
# text-to-image prompt files (item 6)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_non_utf8_bytes_in_a_prompt_file_name_their_line(tmp_path, suffix, caplog):
    path = tmp_path / f"prompts{suffix}"
    lines = [b"a red circle", b"caf\xe9 au lait", b"a blue square"]
    if suffix == ".jsonl":
        lines = [b'{"prompt": "' + line + b'"}' for line in lines]
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError) as caught:
        load_prompts(path)
    problem = _only_problem(caught.value)
    assert problem.startswith(f"{path}:2: not valid UTF-8 (byte ")
    assert "e9" in problem

    with caplog.at_level(logging.WARNING, logger="vrl.data.t2i"):
        samples = load_prompts(path, skip_bad_lines=True)
    assert [s.prompt for s in samples] == ["a red circle", "a blue square"]
    assert [r.getMessage() for r in caplog.records] == [f"skipping {problem}"]


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_bom_at_the_start_of_a_prompt_file_is_dropped(tmp_path, suffix):
    path = tmp_path / f"prompts{suffix}"
    lines = ["a red circle", "a blue square"]
    if suffix == ".jsonl":
        lines = [json.dumps({"prompt": line}) for line in lines]
    path.write_bytes(BOM + "\r\n".join(lines).encode() + b"\r\n")  # as Notepad writes it
    assert [s.prompt for s in load_prompts(path)] == ["a red circle", "a blue square"]


def test_the_template_parser_reads_a_prompt_that_followed_a_bom(tmp_path):
    from vrl.hicogen.decompose import decompose_template

    path = tmp_path / "prompts.txt"
    path.write_bytes(BOM + b"a red circle to the left of a blue square\n")
    (sample,) = load_prompts(path)
    assert decompose_template(sample.prompt) is not None
    assert decompose_template("\ufeff" + sample.prompt) is None  # what the BOM cost


def _scene_line(count) -> str:
    return json.dumps({"prompt": "dogs", "scene": {"subjects": [{"name": "dog", "count": count}]}})


def test_a_scene_count_out_of_range_names_file_line_and_field(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(_scene_line(3) + "\n" + _scene_line(10**12) + "\n")
    with pytest.raises(DataError) as caught:
        load_prompts(path)
    problem = _only_problem(caught.value)
    assert problem.startswith(f'{path}:2: field "scene": subjects[0].count: 1000000000000 ')
    assert str(MAX_SCENE_COUNT) in problem
    (kept,) = load_prompts(path, skip_bad_lines=True)
    assert kept.scene is not None and kept.scene.subjects[0].count == 3


@pytest.mark.parametrize("count", [0, -1, 1.5, "3", True, MAX_SCENE_COUNT + 1])
def test_every_bad_scene_count_is_refused(tmp_path, count):
    path = tmp_path / "prompts.jsonl"
    path.write_text(_scene_line(count) + "\n")
    with pytest.raises(DataError, match=r':1: field "scene": subjects\[0\]\.count: '):
        load_prompts(path)


def test_a_scene_count_at_the_limit_is_accepted(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(_scene_line(MAX_SCENE_COUNT) + "\n")
    (sample,) = load_prompts(path)
    assert sample.scene.subjects[0].count == MAX_SCENE_COUNT


def test_a_references_field_in_a_prompt_file_is_refused(tmp_path):
    """References are unit images that the chain of synthesis sets; JSON cannot hold them."""
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "a dog", "references": {"dog": [1, 2]}}) + "\n")
    with pytest.raises(DataError, match=r':1: field "references": '):
        load_prompts(path)


def test_a_line_break_inside_a_json_string_does_not_split_the_line(tmp_path):
    """U+2028 is legal in a JSON string; str.splitlines() cut the line there and shifted every
    line number after it."""
    path = tmp_path / "prompts.jsonl"
    first = json.dumps({"prompt": "a red\u2028circle"}, ensure_ascii=False)
    path.write_text(first + "\n" + '{"prompt": 5}' + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_prompts(path)
    assert _only_problem(caught.value).startswith(f'{path}:2: field "prompt": ')
    (sample,) = load_prompts(path, skip_bad_lines=True)
    assert sample.prompt == "a red\u2028circle"


def test_an_empty_prompt_file_is_a_data_error(tmp_path):
    for name, content in (("empty.txt", b""), ("blank.jsonl", b"\n  \n"), ("bom.txt", BOM)):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DataError, match="no usable prompts"):
            load_prompts(path)


# ---------------------------------------------------------------------------------------------
# a truncated JSON line (item 9), in both loaders

TRUNCATED = [
    '{"prompt": "a red circle", ',  # cut after a comma: the error is at the end of the line
    '{"prompt": "a red cir',  # cut inside a string: the error is where the string starts
    '{"prompt": "a red circle"} x',  # extra data after the object
]


@pytest.mark.parametrize("line", TRUNCATED)
def test_a_truncated_jsonl_prompt_line_names_its_column(tmp_path, line):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "ok"}\n' + line + "\n" + '{"prompt": "ok"}\n')
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(line)
    with pytest.raises(DataError) as caught:
        load_prompts(path)
    assert _only_problem(caught.value) == (
        f"{path}:2: invalid JSON: {expected.value.msg} (column {expected.value.colno})"
    )


@pytest.mark.parametrize("cut", [30, 60, -3])
@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_a_truncated_vlm_line_names_its_column(tmp_path, folder, cut, ending):
    line = _vlm_line()[:cut]
    data = tmp_path / "data.jsonl"
    data.write_text(ending.join([_vlm_line("a"), line, _vlm_line("b")]) + ending)
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(line)
    assert expected.value.lineno == 1
    with pytest.raises(DataError) as caught:
        load_vlm_r1_jsonl(data, folder)
    assert _only_problem(caught.value) == (
        f"{data}:2: invalid JSON: {expected.value.msg} (column {expected.value.colno})"
    )


# ---------------------------------------------------------------------------------------------
# the VLM-R1 loader's other line-level defects: each one line naming file:line (and the field)

VLM_DEFECTS = {
    # name -> (bytes of line 2, what its problem must start with after "file:2: ")
    "non-UTF-8": (_vlm_line(answer="x").encode()[:-2] + b'\xff"}', "not valid UTF-8 (byte "),
    "a control byte inside a string": (
        _vlm_line()[:-2].encode() + b'\x01"}',
        "invalid JSON: ",
    ),
    "JSON but a list": (b'["a", "b"]', "expected a JSON object, got list"),
    "JSON but a number": (b"42", "expected a JSON object, got int"),
    "missing conversations": (
        json.dumps({"id": "x", "image": "a.png"}).encode(),
        'field "conversations" is missing',
    ),
    "ill-typed id": (_vlm_line(sample_id=["x"]).encode(), 'field "id": expected a string'),
    "ill-typed image": (_vlm_line(image={"a": 1}).encode(), 'field "image": expected a path'),
    "home of no such user": (
        _vlm_line(image="~no_such_user_vrl/a.png").encode(),
        'image "~no_such_user_vrl/a.png": cannot expand',
    ),
    "multi-line value": (_vlm_line(accu_reward_method="exact\nmatch").encode(), '"accu_reward'),
}


@pytest.mark.parametrize("name", sorted(VLM_DEFECTS))
def test_a_bad_vlm_line_is_one_line_naming_file_and_line(tmp_path, folder, name, caplog):
    content, start = VLM_DEFECTS[name]
    data = tmp_path / "data.jsonl"
    data.write_bytes(b"\n".join([_vlm_line("a").encode(), content, _vlm_line("b").encode()]))
    with pytest.raises(DataError) as caught:
        load_vlm_r1_jsonl(data, folder, allowed_reward_methods=("exact",))
    assert _only_problem(caught.value).startswith(f"{data}:2: {start}")
    with caplog.at_level(logging.WARNING, logger="vrl.data.vlm_r1"):
        samples = load_vlm_r1_jsonl(
            data, folder, skip_bad_lines=True, allowed_reward_methods=("exact",)
        )
    assert [s.id for s in samples] == ["a", "b"]
    assert sum(f"{data}:2: " in r.getMessage() for r in caplog.records) == 1


def test_a_bom_starts_a_vlm_file_and_an_empty_one_is_an_error(tmp_path, folder):
    data = tmp_path / "data.jsonl"
    data.write_bytes(BOM + _vlm_line().encode() + b"\r\n")
    (sample,) = load_vlm_r1_jsonl(data, folder)
    assert sample.id == "s" and sample.line == 1
    data.write_bytes(b"")
    with pytest.raises(DataError, match="no samples"):
        load_vlm_r1_jsonl(data, folder)
    data.write_bytes(BOM)
    with pytest.raises(DataError, match="no samples"):
        load_vlm_r1_jsonl(data, folder)
