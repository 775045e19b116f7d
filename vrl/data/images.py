"""Images: checked before any compute is spent, and loaded with a `DataError` naming the file.

A broken image found by the trainer ends the run at the step that draws it, an hour in; so the
loader opens every image up front. The check reads the header (format, size) and runs PIL's
``verify()``, which walks the file's structure (for a PNG: every chunk and its CRC) without
decoding the pixels, so it catches a text file named .png, a truncated or bit-flipped PNG, and a
header that claims an absurd size, for a fraction of the cost of a decode. A file that passes can
still fail to decode (a JPEG truncated inside its scan data, which ``verify()`` does not read):
`load_image` then raises a `DataError` naming it, which a trainer can catch and skip.

Two sizes matter:

- above ``PIL.Image.MAX_IMAGE_PIXELS`` (89.5 million pixels by default, about 9459x9459) PIL
  calls the file a possible decompression bomb. It is a bad image here, with that message, never a
  raw ``DecompressionBombError`` (raise ``PIL.Image.MAX_IMAGE_PIXELS`` if the image is genuine);
- above `LARGE_IMAGE_PIXELS` (4096x4096, 16.8 million pixels) an image is used but logged: a
  6000x6000 image trained at 3.1 GB RSS and six times the step time of a small one. That is
  above the default max_pixels of the Qwen2-VL / Qwen2.5-VL processors (12845056, about
  3584x3584), so everything over the threshold is downscaled before the model sees it: the cost is
  in decoding and resizing, and shrinking the file first loses nothing.

Checking runs in a thread pool: PIL releases the GIL while it reads, and the files are independent,
so slow storage is read in parallel. Measured on 2 busy cores with the files in the page cache,
validating a JSONL file of 2000 lines takes 0.06 s checking existence only, 0.2 s opening 2000
PNGs of 32x32, and 0.75 s for 2000 PNGs of 512x512 (650 KB of noise each), which a full decode
takes 23 s to read; there the pool gains nothing, the work being CRCs of cached bytes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vrl.data.lines import DataError, PathLike, one_line

if TYPE_CHECKING:
    from PIL import Image

LARGE_IMAGE_PIXELS = 4096 * 4096
"""Images with more pixels than this are logged as costly (memory and time), not rejected."""

CHECK_WORKERS = 8
"""Threads that check images; the work is mostly file reads, during which PIL drops the GIL."""


@dataclass(frozen=True)
class ImageCheck:
    """What opening one image found: its (width, height), or the problem that makes it unusable."""

    size: tuple[int, int] | None = None
    problem: str | None = None

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1] if self.size else 0

    @property
    def large(self) -> bool:
        return self.pixels > LARGE_IMAGE_PIXELS


def _bomb_problem(error: Exception | None, size: tuple[int, int] | None = None) -> str:
    """The problem of an image over PIL's decompression-bomb limit (its size, or PIL's error)."""
    from PIL import Image

    if size:
        claimed = f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels"
    else:
        found = re.search(r"\((\d+) pixels\)", str(error))
        claimed = f"{found.group(1)} pixels" if found else one_line(str(error))
    return (
        f"possible decompression bomb: its header claims {claimed}, over PIL's limit "
        f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}); a corrupt or hostile file, "
        "or raise that limit if the image is genuine"
    )


def check_image(path: PathLike) -> ImageCheck:
    """Open ``path`` and verify its structure without decoding the pixels; never raises."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            size = image.size
            limit = Image.MAX_IMAGE_PIXELS
            if limit and size[0] * size[1] > limit:  # PIL only warns up to twice the limit
                return ImageCheck(size, _bomb_problem(None, size))
            image.verify()
    except FileNotFoundError:
        return ImageCheck(problem="image file not found")
    except PermissionError:
        return ImageCheck(problem="cannot read the file (permission denied)")
    except IsADirectoryError:
        return ImageCheck(problem="is a directory, not an image file")
    except UnidentifiedImageError:
        return ImageCheck(
            problem="not an image file that PIL can read (unknown format, or a truncated header)"
        )
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return ImageCheck(problem=_bomb_problem(error))
    except MemoryError:
        raise
    except Exception as error:  # a malformed file raises anything (SyntaxError, IndexError...)
        return ImageCheck(problem=f"broken image: {type(error).__name__}: {one_line(str(error))}")
    if size[0] < 1 or size[1] < 1:
        return ImageCheck(size, f"empty image ({size[0]}x{size[1]})")
    return ImageCheck(size)


def check_image_files(
    paths: Iterable[PathLike], workers: int = CHECK_WORKERS
) -> dict[Path, ImageCheck]:
    """`check_image` of each distinct path, in a thread pool; keys are the paths as `Path`s."""
    unique = list(dict.fromkeys(Path(path) for path in paths))
    if len(unique) < 2 * workers:
        return {path: check_image(path) for path in unique}
    with ThreadPoolExecutor(max_workers=min(workers, (os.cpu_count() or 1) * 4)) as pool:
        return dict(zip(unique, pool.map(check_image, unique), strict=True))


def describe_size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]} ({size[0] * size[1] / 1e6:.1f} million pixels)"


def load_image(path: PathLike) -> Image.Image:
    """Open an image as RGB, fully decoded now, so a broken file fails here with its name.

    PIL decodes lazily; without ``load()`` a truncated file would only fail later, deep inside
    the processor, with no file name. Transparent images are laid over white rather than having
    their alpha dropped, which would show the (often black) hidden colour.

    Raises `DataError` (one line, naming ``path``) for a file that is missing or cannot be
    decoded, whatever PIL raised (a decompression bomb included).
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, rgba).convert("RGB")
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{one_line(str(path))}: image file not found") from None
    except MemoryError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"{one_line(str(path))}: {_bomb_problem(error)}") from error
    except Exception as error:  # a malformed file raises anything (SyntaxError, IndexError...)
        message = f"{type(error).__name__}: {one_line(str(error))}"
        raise DataError(f"{one_line(str(path))}: cannot decode image: {message}") from error
