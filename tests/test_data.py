"""vrl.data: the VLM-R1 loader rejects bad data up front, prompts, and the synthetic writers."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from vrl.data import (
    PROMPT_TEMPLATES,
    DataError,
    build_messages,
    load_image,
    load_vlm_r1_jsonl,
    register_prompt_template,
    write_colour_yes_no,
    write_detection,
    write_rec_boxes,
)
from vrl.data.synthetic import PALETTE

METHODS = ("exact", "numeric", "yes_no")


def _image(path: Path, colour: str = "red", size: tuple[int, int] = (8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _line(
    image: str | list[str] | None = "img/a.png", human: str = "<image>What is it?", **fields
) -> str:
    record = {"id": fields.pop("id", "s"), "conversations": fields.pop("conversations", None)}
    if record["conversations"] is None:
        record["conversations"] = [
            {"from": "human", "value": human},
            {"from": "gpt", "value": fields.pop("answer", "a cat")},
        ]
    if image is not None:
        record["image"] = image
    record.update(fields)
    return json.dumps(record)


def _pixels(image: Image.Image) -> list[tuple[int, int, int]]:
    """RGB triples in row order (getdata() is deprecated in recent Pillow, tobytes() is not)."""
    raw = image.convert("RGB").tobytes()
    return [tuple(raw[i : i + 3]) for i in range(0, len(raw), 3)]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    for name in ("a", "b", "c"):
        _image(images / "img" / f"{name}.png")
    return images


# ---------------------------------------------------------------------------------------------
# loader: valid data


def test_valid_file_loads_with_resolved_paths_and_extra_fields(tmp_path, folder):
    absolute = tmp_path / "elsewhere" / "abs.png"
    _image(absolute)
    data = _write(
        tmp_path / "data.jsonl",
        [
            _line(
                human="<image>  What colour\tis  the cat? ",
                accu_reward_method="exact",
                problem="p",
                normal_caption="a red cat",
            ),
            "",  # blank lines are skipped silently
            "   ",
            _line(
                id=7,
                image=["img/b.png", str(absolute)],
                human="Compare <image> and <image>.\nA. same\nB. different",
                answer="B",
            ),
            _line(image=None, human="What is 2 + 2?", answer="4"),  # text-only
        ],
    )
    samples = load_vlm_r1_jsonl(data, folder, allowed_reward_methods=METHODS)

    assert [s.line for s in samples] == [1, 4, 5]
    first, second, text_only = samples
    assert first.images == ((folder / "img" / "a.png").absolute(),)
    assert all(path.is_absolute() for path in first.images)
    assert first.question == "What colour is the cat?"
    assert first.solution == "a cat"
    assert first.accu_reward_method == "exact"
    assert first.extra == {"problem": "p", "normal_caption": "a red cat"}
    assert first.source == str(data)

    assert second.id == "7"
    assert second.images == ((folder / "img" / "b.png").absolute(), absolute)
    assert second.question == "Compare and .\nA. same\nB. different"
    assert second.accu_reward_method is None and second.extra == {}

    assert text_only.images == () and text_only.question == "What is 2 + 2?"
    assert text_only.solution == "4"


def test_images_without_markers_are_accepted(tmp_path, folder):
    data = _write(tmp_path / "d.jsonl", [_line(image=["img/a.png", "img/b.png"], human="Q?")])
    (sample,) = load_vlm_r1_jsonl(data, folder)
    assert len(sample.images) == 2 and sample.question == "Q?"


def test_image_check_can_be_turned_off(tmp_path, folder):
    data = _write(tmp_path / "d.jsonl", [_line(image="img/missing.png")])
    with pytest.raises(DataError, match="not found"):
        load_vlm_r1_jsonl(data, folder)
    (sample,) = load_vlm_r1_jsonl(data, folder, check_images=False)
    assert sample.images == ((folder / "img" / "missing.png").absolute(),)


def test_default_image_folder_is_the_files_directory(tmp_path, folder):
    data = _write(folder / "d.jsonl", [_line()])
    (sample,) = load_vlm_r1_jsonl(data, None)
    assert sample.images == ((folder / "img" / "a.png").absolute(),)


# ---------------------------------------------------------------------------------------------
# loader: every defect reported at once

DEFECTS = {
    # line number -> (line text, words its message must contain)
    2: ('{"id": "x", "image": "img/a.png" "conversations": []}', ["invalid JSON", "column 34"]),
    3: (_line().replace('"conversations"', '"convs"'), ['"conversations" is missing']),
    4: (_line(conversations="<image>hi"), ['field "conversations"', "got str"]),
    5: (_line(image="img/nope.png"), ['image "img/nope.png" not found in']),
    6: (_line(accu_reward_method="exactt"), ['"accu_reward_method" is "exactt"', "valid: exact"]),
    7: (_line(human="<image><image>Two?"), ["2 <image> markers but 1 image"]),
    8: (
        _line(conversations=[{"from": "human", "value": "<image>Q"}]),
        ['field "conversations"', 'no "gpt" turn'],
    ),
    9: (_line(image=5), ['field "image"', "got int"]),
}


def _defective_file(tmp_path: Path) -> Path:
    lines = [_line()] + [DEFECTS[number][0] for number in sorted(DEFECTS)] + [_line(id="last")]
    return _write(tmp_path / "data.jsonl", lines)


def test_every_bad_line_is_reported_in_one_error(tmp_path, folder):
    data = _defective_file(tmp_path)
    with pytest.raises(DataError) as caught:
        load_vlm_r1_jsonl(data, folder, allowed_reward_methods=METHODS)
    message = str(caught.value)
    lines = message.splitlines()
    for number, (_text, words) in DEFECTS.items():
        reported = [line for line in lines if line.startswith(f"{data}:{number}: ")]
        assert len(reported) == 1, f"line {number}: {reported}\n{message}"
        for word in words:
            assert word in reported[0], f"line {number}: {word!r} not in {reported[0]!r}"
    assert f"{data}:1:" not in message and f"{data}:10:" not in message  # the good lines
    assert len(caught.value.problems) == len(DEFECTS)
    assert isinstance(caught.value, ValueError)


def test_unknown_reward_method_is_only_checked_when_asked(tmp_path, folder):
    data = _write(tmp_path / "d.jsonl", [_line(accu_reward_method="exactt")])
    (sample,) = load_vlm_r1_jsonl(data, folder)
    assert sample.accu_reward_method == "exactt"


def test_one_line_with_several_problems_lists_each(tmp_path, folder):
    line = _line(image=["img/nope.png"], human="<image><image>Q", accu_reward_method="x")
    data = _write(tmp_path / "d.jsonl", [line])
    with pytest.raises(DataError) as caught:
        load_vlm_r1_jsonl(data, folder, allowed_reward_methods=METHODS)
    assert len(caught.value.problems) == 3
    assert all(p.startswith(f"{data}:1: ") for p in caught.value.problems)


def test_skip_bad_lines_keeps_the_good_ones_and_warns_per_bad_line(tmp_path, folder, caplog):
    data = _defective_file(tmp_path)
    with caplog.at_level(logging.WARNING, logger="vrl.data.vlm_r1"):
        samples = load_vlm_r1_jsonl(
            data, folder, skip_bad_lines=True, allowed_reward_methods=METHODS
        )
    assert [(s.line, s.id) for s in samples] == [(1, "s"), (10, "last")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(DEFECTS)
    for number in DEFECTS:
        assert sum(f"{data}:{number}: " in w for w in warnings) == 1


def test_skip_bad_lines_still_raises_when_nothing_is_left(tmp_path, folder):
    data = _write(tmp_path / "d.jsonl", ["not json", _line(image="img/nope.png")])
    with pytest.raises(DataError, match="no usable samples") as caught:
        load_vlm_r1_jsonl(data, folder, skip_bad_lines=True)
    assert len(caught.value.problems) == 2


def test_missing_file_and_folder_are_reported(tmp_path, folder):
    with pytest.raises(DataError, match="data file not found"):
        load_vlm_r1_jsonl(tmp_path / "nope.jsonl", folder)
    data = _write(tmp_path / "d.jsonl", [_line()])
    with pytest.raises(DataError, match="image folder .* does not exist"):
        load_vlm_r1_jsonl(data, tmp_path / "no_folder")
    blank = _write(tmp_path / "blank.jsonl", ["", "  "])
    with pytest.raises(DataError, match="no samples"):
        load_vlm_r1_jsonl(blank, folder)


def test_null_or_empty_image_field_is_not_text_only(tmp_path, folder):
    """Only an absent "image" field means text-only; null or [] is more likely a broken export."""
    data = _write(tmp_path / "d.jsonl", [_line(image=[]), _line().replace('"img/a.png"', "null")])
    with pytest.raises(DataError) as caught:
        load_vlm_r1_jsonl(data, folder)
    assert [p.split(": ", 1)[1].split(":")[0] for p in caught.value.problems] == [
        'field "image"',
        'field "image"',
    ]


# ---------------------------------------------------------------------------------------------
# loader: several files


def test_several_files_paired_with_their_image_folders(tmp_path):
    for name in ("one", "two"):
        _image(tmp_path / f"{name}_images" / "x.png", colour="blue")
        _write(tmp_path / f"{name}.jsonl", [_line(id=name, image="x.png", human="Q")])
    files = [tmp_path / "one.jsonl", tmp_path / "two.jsonl"]
    folders = [tmp_path / "one_images", tmp_path / "two_images"]

    as_lists = load_vlm_r1_jsonl(files, folders)
    as_colon_strings = load_vlm_r1_jsonl(":".join(map(str, files)), ":".join(map(str, folders)))
    for samples in (as_lists, as_colon_strings):
        assert [s.id for s in samples] == ["one", "two"]
        assert [s.images[0].parent.name for s in samples] == ["one_images", "two_images"]
        assert [Path(s.source).name for s in samples] == ["one.jsonl", "two.jsonl"]

    with pytest.raises(DataError, match="2 data files but 3 image folders"):
        load_vlm_r1_jsonl(files, folders + [tmp_path])


def test_errors_name_the_file_they_come_from(tmp_path, folder):
    good = _write(tmp_path / "good.jsonl", [_line()])
    bad = _write(tmp_path / "bad.jsonl", [_line(), "{"])
    with pytest.raises(DataError) as caught:
        load_vlm_r1_jsonl([good, bad], folder)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{bad}:2: invalid JSON: ")


# ---------------------------------------------------------------------------------------------
# images


def test_load_image_gives_rgb_and_names_a_broken_file(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (5, 4), 128).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (5, 4)
    assert image.getpixel((0, 0)) == (128, 128, 128)

    transparent = tmp_path / "t.png"
    Image.new("RGBA", (3, 3), (0, 0, 0, 0)).save(transparent)
    assert load_image(transparent).getpixel((1, 1)) == (255, 255, 255)

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="broken.jpg"):
        load_image(broken)
    with pytest.raises(DataError, match="missing.png"):
        load_image(tmp_path / "missing.png")


# ---------------------------------------------------------------------------------------------
# prompts


def test_templates_build_chat_messages(tmp_path, folder):
    data = _write(
        tmp_path / "d.jsonl",
        [_line(image=["img/a.png", "img/b.png"], human="<image><image>Which is red?")],
    )
    (sample,) = load_vlm_r1_jsonl(data, folder)

    messages = build_messages(sample, "rec")
    assert messages == [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "image"},
                {
                    "type": "text",
                    "text": "Which is red? First output the thinking process in <think> </think> "
                    "tags and then output the final answer in <answer> </answer> tags. "
                    "Output the final answer in JSON format.",
                },
            ],
        }
    ]
    texts = {
        name: build_messages(sample, name)[0]["content"][-1]["text"] for name in PROMPT_TEMPLATES
    }
    assert texts["plain"] == "Which is red?"
    assert texts["think_answer"] == (
        "Which is red? Output the thinking process in <think> </think> and final answer in "
        "<answer> </answer> tags."
    )
    assert (
        texts["answer_only"] == "Which is red? Output the final answer in <answer> </answer> tags."
    )
    assert texts["rec_answer_only"] == (
        "Which is red? Output the final answer as a JSON box in <answer> </answer> tags."
    )


def test_text_only_sample_has_no_image_item(tmp_path):
    data = _write(tmp_path / "d.jsonl", [_line(image=None, human="Say {hi}", answer="hi")])
    (sample,) = load_vlm_r1_jsonl(data)
    assert build_messages(sample, "plain") == [
        {"role": "user", "content": [{"type": "text", "text": "Say {hi}"}]}
    ]


def test_unknown_template_lists_the_valid_names(tmp_path):
    data = _write(tmp_path / "d.jsonl", [_line(image=None, human="Q")])
    (sample,) = load_vlm_r1_jsonl(data)
    with pytest.raises(ValueError, match="unknown prompt template 'recc'") as caught:
        build_messages(sample, "recc")
    for name in PROMPT_TEMPLATES:
        assert name in str(caught.value)
    with pytest.raises(ValueError, match="already exists"):
        register_prompt_template("rec", "{question}")


# ---------------------------------------------------------------------------------------------
# synthetic datasets


WRITERS = {
    "colour": lambda out, seed: write_colour_yes_no(out, 16, seed=seed),
    "rec": lambda out, seed: write_rec_boxes(out, 16, seed=seed),
    "detection": lambda out, seed: write_detection(out, 16, seed=seed),
}


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_synthetic_writers_are_deterministic_and_loadable(tmp_path, kind):
    write = WRITERS[kind]
    first, second = write(tmp_path / "a", 3), write(tmp_path / "b", 3)
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")
    assert first.name == second.name
    other = write(tmp_path / "c", 4)
    assert _tree_bytes(tmp_path / "c") != _tree_bytes(tmp_path / "a")

    samples = load_vlm_r1_jsonl(other, tmp_path / "c")
    assert len(samples) == 16
    assert all(len(s.images) == 1 and s.images[0].is_file() for s in samples)
    assert all(load_image(s.images[0]).mode == "RGB" for s in samples[:2])


def test_colour_yes_no_is_balanced_and_the_colour_dominates(tmp_path):
    path = write_colour_yes_no(tmp_path, 40, seed=1, colours=("red", "blue"))
    samples = load_vlm_r1_jsonl(path, allowed_reward_methods={"yes_no"})
    assert Counter(s.solution for s in samples) == {"yes": 20, "no": 20}
    assert {s.question for s in samples} == {"Is the image red?", "Is the image blue?"}
    for sample in samples:
        image = load_image(sample.images[0])
        red, _green, blue = (sum(band) / len(band) for band in zip(*_pixels(image), strict=True))
        shown = "red" if red > blue else "blue"
        assert (("Is the image " + shown + "?") == sample.question) == (sample.solution == "yes")
        pixels = _pixels(image)
        dominant = sum((r > b + 60) if shown == "red" else (b > r + 60) for r, _g, b in pixels)
        assert dominant / len(pixels) > 0.55, sample.id


def test_rec_boxes_lie_inside_the_image_on_the_named_object(tmp_path):
    path = write_rec_boxes(tmp_path, 40, seed=2)
    samples = load_vlm_r1_jsonl(path)
    assert all(s.accu_reward_method is None for s in samples)
    sizes = set()
    for sample in samples:
        words = sample.question.split()
        assert words[:2] == ["Locate", "the"] and words[4:] == ["in", "the", "image."]
        colour, shape = words[2], words[3]
        x1, y1, x2, y2 = json.loads(sample.solution)
        assert all(isinstance(v, int) for v in (x1, y1, x2, y2))
        image = load_image(sample.images[0])
        sizes.add(image.size)
        width, height = image.size
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert image.getpixel(((x1 + x2) // 2, (y1 + y2) // 2)) == PALETTE[colour]
        # The box is tight: a square fills its corners, a circle leaves them to the background.
        corner = image.getpixel((x1, y1))
        assert (corner == PALETTE[colour]) == (shape == "square"), sample.id
        if shape == "square":  # ends are exclusive: the last row and column are in, the next out
            assert image.getpixel((x2 - 1, y2 - 1)) == PALETTE[colour]
            if x2 < width:
                assert image.getpixel((x2, y2 - 1)) != PALETTE[colour]
            if y2 < height:
                assert image.getpixel((x2 - 1, y2)) != PALETTE[colour]
    assert any(w != h for w, h in sizes), "some images must be non-square"


def test_detection_has_empty_and_full_images_with_correct_boxes(tmp_path):
    path = write_detection(tmp_path, 24, seed=3)
    samples = load_vlm_r1_jsonl(path)
    counts = Counter()
    for sample in samples:
        assert sample.question.startswith("Detect every object in the image")
        image = load_image(sample.images[0])
        if sample.solution == "None":
            counts[0] += 1
            assert all(pixel not in PALETTE.values() for pixel in _pixels(image))
            continue
        objects = json.loads(sample.solution)
        counts[len(objects)] += 1
        for obj in objects:
            x1, y1, x2, y2 = obj["bbox_2d"]
            colour, shape = obj["label"].split()
            assert shape in ("square", "circle")
            assert 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height
            assert image.getpixel(((x1 + x2) // 2, (y1 + y2) // 2)) == PALETTE[colour]
    assert counts == {0: 6, 1: 6, 2: 6, 3: 6}


def test_colour_yes_no_with_a_fixed_question_answers_from_the_image(tmp_path):
    from vrl.data.synthetic import write_colour_yes_no

    samples = load_vlm_r1_jsonl(write_colour_yes_no(tmp_path, n=40, seed=3, asked="red"))
    assert {s.question for s in samples} == {"Is the image red?"}
    for s in samples:
        r, g, b = load_image(s.images[0]).convert("RGB").resize((1, 1)).getpixel((0, 0))
        assert s.solution == ("yes" if r > b else "no")
    assert 10 < sum(s.solution == "yes" for s in samples) < 30
