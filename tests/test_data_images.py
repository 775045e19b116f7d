"""vrl.data images: every image is opened before any compute, and a bad one is named at its line.

Issue 20, item 4: only existence was checked, so a corrupt PNG (or a text file named .png) ended
the run at the step that drew it, even with skip_bad_lines; a decompression bomb ended in a raw
DecompressionBombError; a 6000x6000 image trained at 3.1 GB RSS without a word.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from vrl.data import DataError, load_image, load_vlm_r1_jsonl
from vrl.data import images as images_module
from vrl.data.images import LARGE_IMAGE_PIXELS, check_image
from vrl.data.vlm_r1 import load_images_skipping_bad, load_sample_images


def _line(image: str, sample_id: str = "s") -> str:
    return json.dumps(
        {
            "id": sample_id,
            "image": image,
            "conversations": [
                {"from": "human", "value": "<image>What is it?"},
                {"from": "gpt", "value": "a cat"},
            ],
        }
    )


def _png_header(width: int, height: int) -> bytes:
    """A PNG of a signature, an IHDR claiming ``width`` x ``height`` and an IEND: a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _png_bytes(size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "red").save(buffer, format="PNG")
    return buffer.getvalue()


def _truncated_png() -> bytes:
    data = _png_bytes((16, 16))
    return data[: len(data) - 20]  # inside the IDAT chunk: the header reads, the pixels do not


def _bit_flipped_png() -> bytes:
    data = bytearray(_png_bytes((16, 16)))
    data[45] ^= 0xFF  # a byte of the IDAT chunk: its CRC no longer matches
    return bytes(data)


BAD_IMAGES = {
    # file name -> (its bytes, words the problem must contain)
    "text.png": (b"this is not a picture\n", ["not an image file"]),
    "empty.png": (b"", ["not an image file"]),
    "truncated.png": (_truncated_png(), ["broken image"]),
    "flipped.png": (_bit_flipped_png(), ["broken image"]),
    "bomb.png": (_png_header(100_000, 100_000), ["decompression bomb", "10000000000 pixels"]),
}


def _data(tmp_path: Path, bad_name: str, content: bytes) -> tuple[Path, Path]:
    """A file whose line 2 uses the bad image and lines 1 and 3 a good one."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "good.png").write_bytes(_png_bytes())
    (folder / bad_name).write_bytes(content)
    data = tmp_path / "data.jsonl"
    lines = [_line("good.png", "first"), _line(bad_name, "bad"), _line("good.png", "last")]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return data, folder


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_a_bad_image_is_reported_at_its_line_before_any_compute(tmp_path, name):
    content, words = BAD_IMAGES[name]
    data, folder = _data(tmp_path, name, content)
    with pytest.raises(DataError) as caught:
        load_vlm_r1_jsonl(data, folder)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{data}:2: ") and str(folder / name) in problem, problem
    for word in words:
        assert word in problem, problem
    assert len(problem.splitlines()) == 1


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_skip_bad_lines_drops_the_line_of_a_bad_image_with_a_warning(tmp_path, name, caplog):
    data, folder = _data(tmp_path, name, BAD_IMAGES[name][0])
    with caplog.at_level(logging.WARNING, logger="vrl.data.vlm_r1"):
        samples = load_vlm_r1_jsonl(data, folder, skip_bad_lines=True)
    assert [s.id for s in samples] == ["first", "last"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warnings if f"{data}:2: " in w and name in w], warnings


def test_decompression_bomb_under_the_raised_limit_is_a_bad_image(tmp_path, monkeypatch):
    """Between PIL's limit and twice it PIL only warns; the check still calls it a bomb."""
    data, folder = _data(tmp_path, "tall.png", _png_bytes((12, 12)))  # 144 pixels: > 100, < 200
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(DataError) as caught:
        load_vlm_r1_jsonl(data, folder)
    (problem,) = caught.value.problems
    assert "decompression bomb" in problem and "12x12 = 144 pixels" in problem
    assert "MAX_IMAGE_PIXELS = 100" in problem


def test_load_image_names_a_decompression_bomb_instead_of_raising_pils_error(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(100_000, 100_000))
    with pytest.raises(DataError, match=r"bomb\.png: possible decompression bomb") as caught:
        load_image(bomb)
    assert len(str(caught.value).splitlines()) == 1


def test_a_very_large_image_is_used_with_a_warning(tmp_path, caplog):
    side = 4100  # just above the 4096x4096 threshold; one channel so that it saves quickly
    assert side * side > LARGE_IMAGE_PIXELS > 4000 * 4000
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (side, side), 200).save(folder / "big.png")
    (folder / "good.png").write_bytes(_png_bytes())
    data = tmp_path / "data.jsonl"
    lines = [_line("good.png"), _line("big.png", "big"), _line("big.png", "big again")]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for skip in (False, True):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="vrl.data.vlm_r1"):
            samples = load_vlm_r1_jsonl(data, folder, skip_bad_lines=skip)
        assert [s.id for s in samples] == ["s", "big", "big again"]  # used, not dropped
        (warning,) = [r.getMessage() for r in caplog.records]  # once per image, not per line
        assert warning.startswith(f"{data}:2 (and 1 more line): ")
        assert "big.png" in warning and "4100x4100" in warning


def test_each_image_is_checked_once_however_many_lines_use_it(tmp_path, monkeypatch):
    calls: list[Path] = []
    real = images_module.check_image
    monkeypatch.setattr(images_module, "check_image", lambda p: calls.append(p) or real(p))
    data, folder = _data(tmp_path, "other.png", _png_bytes())
    assert len(load_vlm_r1_jsonl(data, folder)) == 3
    assert sorted(p.name for p in calls) == ["good.png", "other.png"]


def test_check_images_false_opens_nothing(tmp_path):
    data, folder = _data(tmp_path, "text.png", b"not an image")
    assert len(load_vlm_r1_jsonl(data, folder, check_images=False)) == 3


def test_an_image_that_fails_during_training_is_a_data_error_naming_line_and_file(tmp_path):
    """verify() does not read a JPEG's scan data: a truncated one passes validation, and the
    trainer's loader must then fail with a DataError it can catch and skip, naming the file."""
    folder = tmp_path / "images"
    folder.mkdir()
    full = folder / "full.jpg"
    Image.effect_noise((256, 256), 64).convert("RGB").save(full, quality=95)
    data = full.read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    assert check_image(folder / "cut.jpg").problem is None  # passes the cheap check
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text(_line("full.jpg", "ok") + "\n" + _line("cut.jpg", "cut") + "\n")
    ok, cut = load_vlm_r1_jsonl(jsonl, folder)
    assert [image.size for image in load_sample_images(ok)] == [(256, 256)]
    with pytest.raises(DataError) as caught:
        load_sample_images(cut)
    message = str(caught.value)
    assert message.startswith(f"{jsonl}:2: {folder / 'cut.jpg'}: cannot decode image: ")
    assert len(message.splitlines()) == 1


def test_validating_2000_small_images_is_cheap(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    png = _png_bytes((32, 32))
    lines = []
    for i in range(2000):
        (folder / f"{i}.png").write_bytes(png)
        lines.append(_line(f"{i}.png", str(i)))
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    samples = load_vlm_r1_jsonl(data, folder)
    elapsed = time.perf_counter() - start
    assert len(samples) == 2000
    # about 0.2 s on 2 busy cores; the bound only catches a quadratic slip or a hang
    assert elapsed < 20, f"validating 2000 images took {elapsed:.1f} s"


def test_a_trainer_can_skip_a_sample_whose_image_fails_during_training(tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 64), "blue").save(folder / "ok.jpg")
    full = folder / "noise.jpg"
    Image.effect_noise((256, 256), 64).convert("RGB").save(full, quality=95)
    (folder / "cut.jpg").write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(_line(n, n) for n in ("ok.jpg", "cut.jpg", "noise.jpg")) + "\n")
    dataset = load_vlm_r1_jsonl(jsonl, folder)  # the cut JPEG passes the cheap check

    with pytest.raises(DataError, match=r"data\.jsonl:2: .*cut\.jpg: cannot decode image"):
        load_images_skipping_bad(dataset, 1, skip_bad_lines=False, skipped=set())
    skipped: set[int] = set()
    with caplog.at_level(logging.WARNING, logger="vrl.data.vlm_r1"):
        used, images = load_images_skipping_bad(dataset, 1, skip_bad_lines=True, skipped=skipped)
        assert (used, skipped, images[0].size) == (2, {1}, (256, 256))  # the next sample instead
        assert load_images_skipping_bad(dataset, 1, skip_bad_lines=True, skipped=skipped)[0] == 2
        assert load_images_skipping_bad(dataset, 0, skip_bad_lines=True, skipped=skipped)[0] == 0
    (warning,) = [r.getMessage() for r in caplog.records]  # logged once, not decoded again
    assert "data.jsonl:2: " in warning and "cut.jpg" in warning

    with pytest.raises(DataError, match="cut.jpg"):  # nothing left: the first failure is raised
        load_images_skipping_bad(dataset[1:2], 0, skip_bad_lines=True, skipped=set())
