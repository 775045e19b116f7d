"""The shapes world's vocabulary: shapes, colours, sizes, backgrounds, relations, and their pixels.

Everything here is a constant or a pure function of the canvas size, so the sampler, the renderer
and the checker can never disagree about what "small" or "red" means.

Sizes are relative to the canvas but grow slower than it (side ~ canvas^0.4), so that a 32 px
canvas holds 1-3 shapes that a tiny text-to-image model can draw (small 8 px, large 13 px) while a
128 px canvas holds the benchmark's 4-12 (small 14 px, large 23 px).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vrl.hicogen.scene import Scene, Subject

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 190),
    "cyan": (30, 200, 210),
}
"""Object colours (RGB). Pairwise >= 110 apart and >= 100 from every background, so the nearest
palette colour of a mildly noisy or blurred pixel is still the right one. The first four are the
shades of ``vrl.data.synthetic.PALETTE``."""

SIZES: tuple[str, ...] = ("small", "large")

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "light grey": (200, 200, 200),
    "white": (250, 250, 250),
    "dark grey": (60, 60, 60),
    "light blue": (150, 200, 250),
}
"""Background colours (RGB); pairwise >= 70 apart, far from every object colour."""

DEFAULT_BACKGROUND = "light grey"
"""Drawn when a scene names no background (its prompt then does not mention one either)."""

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below", "larger than")
"""The predicates the sampler emits (canonical names of ``vrl.hicogen.scene``)."""

SPATIAL_RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
SUPPORTED_RELATIONS: tuple[str, ...] = (*RELATIONS, "smaller than")
"""What layout and checker accept; "smaller than" is never sampled but is checked if given."""

INVERSE_RELATION: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
    "larger than": "smaller than",
    "smaller than": "larger than",
}

OUTLINE = "outline"
"""The one sub-attribute: "outline: <colour>", a ring of another palette colour around the body."""

HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("yellow", "circle"), ("blue", "square")}
)
"""(body colour, shape) pairs that appear only in split="test": each shape once, with three
different colours, so that every colour and every shape is still seen in training, only never in
these combinations (compositional generalisation)."""

SPLITS: tuple[str, ...] = ("train", "test", "all")

# Side of a shape's (square) box in pixels at a 32 px canvas, scaled by (canvas / 32) ** 0.4.
_SIDE_AT_32 = {"small": 8.0, "large": 13.0}
_SIDE_EXPONENT = 0.4
SIZE_JITTER = 0.1
"""Layout draws each side from nominal * U(1 - jitter, 1 + jitter): variety, and the classes stay
apart (small <= 1.1 * 8 < 10.2 <= 0.9 * 13 <= large at 32 px)."""

CAPACITY: dict[int, int] = {32: 3, 64: 6, 128: 12}
"""Most subjects the sampler puts in a scene meant for this canvas (pixels per side)."""


def nominal_side(size: str, canvas: float) -> float:
    """Side in pixels of a ``size`` ("small"/"large") shape's box on a ``canvas``-pixel image."""
    if size not in _SIDE_AT_32:
        raise ValueError(f"unknown size {size!r}; valid: {', '.join(SIZES)}")
    return _SIDE_AT_32[size] * (canvas / 32.0) ** _SIDE_EXPONENT


def size_threshold(canvas: float) -> float:
    """Box side (pixels) that separates small from large: the geometric mean of the two."""
    return math.sqrt(nominal_side("small", canvas) * nominal_side("large", canvas))


def outline_width(side: float, shape: str) -> int:
    """Thickness in pixels of the outline ring around a shape whose box has this side (>= 1).

    The body keeps about half the shape's area, so the checker sees both colours: 15% of the side
    for circles and squares, a quarter of the inradius (~0.31 side) for triangles.
    """
    scale = 0.25 * 0.309 if shape == "triangle" else 0.15
    return max(1, round(scale * side))


def layout_gap(canvas: int) -> int:
    """Empty pixels kept between two shapes' boxes, so 8-connected components never merge."""
    return max(2, round(canvas / 32))


def canvas_for(num_subjects: int) -> int:
    """The smallest world canvas (32, 64 or 128) whose capacity holds ``num_subjects``."""
    for canvas, capacity in sorted(CAPACITY.items()):
        if num_subjects <= capacity:
            return canvas
    raise ValueError(
        f"{num_subjects} subjects exceed the world's largest canvas "
        f"(128 px holds at most {CAPACITY[128]})"
    )


# ---------------------------------------------------------------------- reading scenes


@dataclass(frozen=True)
class ShapeSpec:
    """What one subject of a world scene looks like: parsed from its name and attributes."""

    shape: str
    colour: str
    size: str
    outline: str | None = None


def background_name(scene: Scene) -> str:
    """The scene's background as a ``BACKGROUNDS`` key (None -> the default light grey)."""
    if scene.background is None:
        return DEFAULT_BACKGROUND
    name = " ".join(scene.background.lower().split())
    name = name.removesuffix(" background").replace("gray", "grey")
    if name not in BACKGROUNDS:
        raise ValueError(
            f"background {scene.background!r} is not in the shapes world; "
            f"valid: {', '.join(BACKGROUNDS)}"
        )
    return name


def shape_spec(subject: Subject) -> ShapeSpec:
    """Parse a world subject: name = shape, attributes = size and colour, "outline: <colour>".

    A subject without a size is small; a subject without a colour, a count above 1, or any word
    outside the vocabulary is an error naming the subject and the valid words.
    """
    where = f"subject {subject.id!r}"
    if subject.name not in SHAPES:
        raise ValueError(f"{where}: shape {subject.name!r} unknown; valid: {', '.join(SHAPES)}")
    if (subject.count or 1) > 1:
        raise ValueError(
            f"{where}: count {subject.count} is not supported by the shapes world; "
            "use one subject per shape"
        )
    colour = size = None
    for attribute in subject.attributes:
        if attribute in COLOURS and colour is None:
            colour = attribute
        elif attribute in SIZES and size is None:
            size = attribute
        else:
            raise ValueError(
                f"{where}: attribute {attribute!r} is unknown or repeated; valid: one colour of "
                f"{', '.join(COLOURS)} and at most one size of {', '.join(SIZES)}"
            )
    if colour is None:
        raise ValueError(f"{where}: no colour among its attributes {list(subject.attributes)}")
    outline = None
    for sub in subject.sub_attributes:
        part, _, value = (t.strip() for t in sub.partition(":"))
        if part != OUTLINE or value not in COLOURS or outline is not None:
            raise ValueError(
                f"{where}: sub-attribute {sub!r} unsupported; the world has one, "
                f"'{OUTLINE}: <colour>' with a colour of {', '.join(COLOURS)}"
            )
        if value == colour:
            raise ValueError(f"{where}: outline colour {value!r} equals the body colour")
        outline = value
    return ShapeSpec(subject.name, colour, size or "small", outline)


def reference_spec(scene: Scene, subject_id: str) -> tuple[str, ...]:
    """The attributes that ``Scene.reference`` puts in a subject's name (empty if the name alone
    is unambiguous): an existence question is only answered yes by a shape that has them."""
    subject = scene.subject(subject_id)
    same_name = [s for s in scene.subjects if s.name == subject.name]
    return subject.attributes if len(same_name) > 1 else ()
