"""Box geometry: the GenEval position rule and area comparisons.

Shared by the shapes world (layout, checker, tasks), the relation rewards and the benchmark's
geometry judge, so it sits below all three.

Pure functions over boxes ``(x1, y1, x2, y2)`` in pixels, image y pointing down. The position
rule follows GenEval so that a relation reward agrees with the benchmark that judges it:

1. offset = centre(A) - centre(B);
2. per axis, shrink |offset| by ``POSITION_MARGIN`` * (size of A + size of B) on that axis,
   floor at 0 and keep the sign, so boxes that are close on an axis are not "left of" on it;
3. if both shrunk components are below ``MIN_OFFSET`` no relation holds (overlapping boxes);
4. otherwise divide the shrunk vector by the length of the *original* offset and read
   dx < -0.5 "left of", dx > 0.5 "right of", dy < -0.5 "above", dy > 0.5 "below".

Several relations can hold at once (a diagonal placement is both "left of" and "above").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

BoxLike = Sequence[float]
"""(x1, y1, x2, y2) in pixels, x2 >= x1 and y2 >= y1."""

POSITION_MARGIN = 0.1
"""Fraction of the summed box sizes on an axis taken off the centre offset on that axis."""
MIN_OFFSET = 1e-3
"""Shrunk offsets below this on both axes (pixels) mean "no relation"."""
DIRECTION_THRESHOLD = 0.5
"""A normalised shrunk component beyond +-this gives the relation on that axis."""

POSITION_RELATIONS = ("left of", "right of", "above", "below")
SIZE_RELATIONS = ("larger than", "smaller than")
RELATIONS = POSITION_RELATIONS + SIZE_RELATIONS


def _checked_box(box: BoxLike, name: str) -> tuple[float, float, float, float]:
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 4 numbers (x1, y1, x2, y2), got {box!r}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ValueError(f"{name} has a non-finite coordinate: {box!r}")
    if x2 < x1 or y2 < y1:
        raise ValueError(f"{name} must have x2 >= x1 and y2 >= y1, got {box!r}")
    return x1, y1, x2, y2


def box_centre(box: BoxLike) -> tuple[float, float]:
    """Centre (cx, cy) of a box."""
    x1, y1, x2, y2 = _checked_box(box, "box")
    return 0.5 * (x1 + x2), 0.5 * (y1 + y2)


def box_area(box: BoxLike) -> float:
    """Area of a box in square pixels (0 for a degenerate box)."""
    x1, y1, x2, y2 = _checked_box(box, "box")
    return (x2 - x1) * (y2 - y1)


def position_relations(box_a: BoxLike, box_b: BoxLike) -> set[str]:
    """The position relations "A <rel> B" that hold under the GenEval rule (possibly none)."""
    ax1, ay1, ax2, ay2 = _checked_box(box_a, "box_a")
    bx1, by1, bx2, by2 = _checked_box(box_b, "box_b")
    dx = 0.5 * (ax1 + ax2) - 0.5 * (bx1 + bx2)
    dy = 0.5 * (ay1 + ay2) - 0.5 * (by1 + by2)
    margin_x = POSITION_MARGIN * ((ax2 - ax1) + (bx2 - bx1))
    margin_y = POSITION_MARGIN * ((ay2 - ay1) + (by2 - by1))
    shrunk_x = math.copysign(max(abs(dx) - margin_x, 0.0), dx)
    shrunk_y = math.copysign(max(abs(dy) - margin_y, 0.0), dy)
    if abs(shrunk_x) < MIN_OFFSET and abs(shrunk_y) < MIN_OFFSET:
        return set()
    # a nonzero shrunk component implies a nonzero original offset, so this never divides by 0
    length = math.hypot(dx, dy)
    nx, ny = shrunk_x / length, shrunk_y / length
    relations = set()
    if nx < -DIRECTION_THRESHOLD:
        relations.add("left of")
    if nx > DIRECTION_THRESHOLD:
        relations.add("right of")
    if ny < -DIRECTION_THRESHOLD:
        relations.add("above")
    if ny > DIRECTION_THRESHOLD:
        relations.add("below")
    return relations


def size_relations(box_a: BoxLike, box_b: BoxLike, size_ratio: float = 1.0) -> set[str]:
    """{"larger than"} if area(A) > size_ratio * area(B), {"smaller than"} if the reverse, else {}.

    ``size_ratio`` >= 1; the default 1.0 is a strict comparison (equal areas give neither).
    """
    if not (math.isfinite(size_ratio) and size_ratio >= 1.0):
        raise ValueError(f"size_ratio must be a finite number >= 1.0, got {size_ratio!r}")
    area_a, area_b = box_area(box_a), box_area(box_b)
    if area_a > size_ratio * area_b:
        return {"larger than"}
    if area_b > size_ratio * area_a:
        return {"smaller than"}
    return set()


def relation_holds(
    box_a: BoxLike, box_b: BoxLike, relation: str, *, size_ratio: float = 1.0
) -> bool:
    """Whether "A <relation> B" holds; ``relation`` is one of ``RELATIONS``."""
    if relation in POSITION_RELATIONS:
        return relation in position_relations(box_a, box_b)
    if relation in SIZE_RELATIONS:
        return relation in size_relations(box_a, box_b, size_ratio)
    raise ValueError(f"unknown relation {relation!r}; valid relations: {', '.join(RELATIONS)}")
