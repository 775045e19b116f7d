"""Layout and rendering of world scenes: boxes that satisfy every relation, then flat shapes.

Boxes are ``(x1, y1, x2, y2)`` in pixels with exclusive ends (the shape covers pixels x1..x2-1 and
y1..y2-1, the COCO convention of ``vrl.data.synthetic``), integer-valued so that a clean render
puts every shape exactly in its box. Shapes are drawn flat, without antialiasing, so every pixel
of a clean render has an exact palette colour.

The layout is a seeded random search: sides are drawn from the size classes (with jitter), each
shape gets a target centre (random, or from its depth in the order that the spatial relations
impose on each axis, plus noise), then the shapes are placed one at a time at the candidate
position nearest their target that keeps a gap to the shapes already placed and satisfies every
relation with them (the GenEval position rule of ``vrl.geometry``, with a safety margin,
for spatial relations; box areas for "larger than"); a dead end restarts the search with new
sides, targets and order. The seed is mixed with a hash of the scene, so two scenes rendered
with the same seed do not share a layout.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw

from vrl.geometry import (
    DIRECTION_THRESHOLD,
    MIN_OFFSET,
    POSITION_MARGIN,
    POSITION_RELATIONS,
    relation_holds,
)
from vrl.hicogen.scene import Scene

from .vocabulary import (
    BACKGROUNDS,
    COLOURS,
    SIZE_JITTER,
    SUPPORTED_RELATIONS,
    ShapeSpec,
    background_name,
    layout_gap,
    nominal_side,
    outline_width,
    shape_spec,
)

Box = tuple[float, float, float, float]
"""(x1, y1, x2, y2) in pixels, exclusive ends, integer-valued."""

MIN_CANVAS = 16
LAYOUT_RESTARTS = 60
"""Whole-layout restarts before giving up (each in a new random placement order)."""
CANDIDATES = 2048
"""Positions tried per shape and restart (all of them when there are fewer)."""
SIDE_DRAWS = 50
"""Jittered side draws tried to satisfy the size relations before giving up."""
BORDER = 1
"""Pixels kept free along the image border."""
DIRECTION_SAFETY = 0.1
"""Layout asks the GenEval direction test for threshold + this (0.6 instead of 0.5), so a
relation still holds when a blurred or generated shape's box moves by a pixel."""


def _rng_for(scene: Scene, size: int, seed: int) -> random.Random:
    """A generator that depends on the scene, the canvas and the seed, stable across runs."""
    digest = hashlib.sha256(f"{scene.to_json()}|{size}|{seed}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _check_relations(scene: Scene) -> None:
    for i, relation in enumerate(scene.relations):
        if relation.predicate not in SUPPORTED_RELATIONS:
            raise ValueError(
                f"relations[{i}]: predicate {relation.predicate!r} is not in the shapes world; "
                f"valid: {', '.join(SUPPORTED_RELATIONS)}"
            )


def _draw_sides(
    scene: Scene,
    specs: dict[str, ShapeSpec],
    size: int,
    rng: random.Random,
    largest: bool = False,
) -> dict[str, int]:
    """Jittered integer sides per subject that satisfy every size relation, or ValueError.

    ``largest``: every side at its largest jitter instead (the sampler's placeability test: a
    scene placeable with its largest sides is placeable with any, since shrinking boxes about
    their centres keeps them apart and only widens the GenEval offsets).
    """
    size_relations = [r for r in scene.relations if r.predicate in ("larger than", "smaller than")]
    for _ in range(SIDE_DRAWS):
        sides = {
            sid: round(
                nominal_side(spec.size, size)
                * (1 + SIZE_JITTER if largest else rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER))
            )
            for sid, spec in specs.items()
        }
        if all(
            relation_holds(
                (0, 0, sides[r.subject], sides[r.subject]),
                (0, 0, sides[r.object], sides[r.object]),
                r.predicate,
            )
            for r in size_relations
        ):
            return sides
    broken = ", ".join(
        f"{r.subject} ({specs[r.subject].size}) {r.predicate} {r.object} ({specs[r.object].size})"
        for r in size_relations
    )
    raise ValueError(f"the size relations cannot all hold with these sizes: {broken}")


_AXIS_EDGES = {  # predicate -> (axis, whether the relation's subject comes first on it)
    "left of": (0, True),
    "right of": (0, False),
    "above": (1, True),
    "below": (1, False),
}


def _axis_plan(scene: Scene) -> list[dict[str, tuple[float, float]]]:
    """Per axis (x, y): subject id -> (planned position as a fraction of the canvas, slack).

    The spatial relations order the subjects on each axis (a left of b: a before b on x); a
    subject at depth k of n levels is planned at (k + 0.5) / n. Placing shapes near such a plan
    avoids the dead ends of placing them blindly one by one. Subjects free on an axis are absent.
    A cycle ("a left of b", "b left of a") is a ValueError naming it.
    """
    plans = []
    for axis, name in ((0, "horizontal"), (1, "vertical")):
        after: dict[str, list[str]] = {}
        indegree: dict[str, int] = {}
        for r in scene.relations:
            if r.predicate in _AXIS_EDGES and _AXIS_EDGES[r.predicate][0] == axis:
                first, second = (r.subject, r.object)
                if not _AXIS_EDGES[r.predicate][1]:
                    first, second = second, first
                after.setdefault(first, []).append(second)
                indegree.setdefault(first, 0)
                indegree[second] = indegree.get(second, 0) + 1
        depth = dict.fromkeys(indegree, 0)
        ready = [sid for sid, d in indegree.items() if d == 0]
        while ready:  # Kahn's order; depth = longest chain before a subject
            sid = ready.pop()
            for nxt in after.get(sid, []):
                depth[nxt] = max(depth[nxt], depth[sid] + 1)
                indegree[nxt] -= 1
                if indegree[nxt] == 0:
                    ready.append(nxt)
        cyclic = sorted(sid for sid, d in indegree.items() if d > 0)
        if cyclic:
            raise ValueError(f"the {name} relations of subjects {cyclic} contradict each other")
        levels = max(depth.values(), default=0) + 1
        plans.append({sid: ((d + 0.5) / levels, 0.4 / levels) for sid, d in depth.items()})
    return plans


def layout(scene: Scene, size: int, seed: int = 0, *, gap: int | None = None) -> dict[str, Box]:
    """Boxes for every subject on a ``size`` x ``size`` canvas that satisfy all relations.

    Deterministic in (scene, size, seed, gap). Shapes keep ``gap`` empty pixels between their
    boxes (default ``layout_gap(size)``, what every world render uses) and one pixel from the
    border. Raises ValueError naming the problem: a word outside the world's vocabulary,
    contradictory size relations, or no placement found (too many or too large shapes for the
    canvas, or spatial relations that cannot all hold).
    """
    return _layout(scene, size, seed, gap=gap)


def _layout(
    scene: Scene, size: int, seed: int, largest: bool = False, gap: int | None = None
) -> dict[str, Box]:
    if size < MIN_CANVAS:
        raise ValueError(f"canvas size must be at least {MIN_CANVAS} pixels, got {size}")
    specs = {s.id: shape_spec(s) for s in scene.subjects}
    _check_relations(scene)
    background_name(scene)  # fail on an unknown background here, not after the search
    rng = _rng_for(scene, size, seed)
    gap = layout_gap(size) if gap is None else gap
    partners: dict[str, list[tuple[str, str, bool]]] = {sid: [] for sid in specs}
    for r in scene.relations:  # (other id, predicate, this subject is the relation's subject)
        partners[r.subject].append((r.object, r.predicate, True))
        partners[r.object].append((r.subject, r.predicate, False))

    plans = _axis_plan(scene)
    order = list(specs)
    for attempt in range(LAYOUT_RESTARTS):
        if attempt:  # the scene order first, then random orders out of dead ends
            rng.shuffle(order)
        sides = _draw_sides(scene, specs, size, rng, largest)  # new jitter too
        too_big = [sid for sid, side in sides.items() if side > size - 2 * BORDER]
        if too_big:
            raise ValueError(f"shapes {too_big} do not fit on a {size} px canvas")
        targets = {  # this attempt's wanted centre of each shape, pixels
            sid: tuple(
                size * (plan[sid][0] + rng.uniform(-plan[sid][1], plan[sid][1]))
                if sid in plan
                else rng.uniform(0, size)
                for plan in plans
            )
            for sid in specs
        }
        boxes = _place_all(order, sides, partners, targets, size, gap, rng)
        if boxes is not None:
            return {sid: boxes[sid] for sid in specs}  # scene order
    relations = "; ".join(f"{r.subject} {r.predicate} {r.object}" for r in scene.relations)
    raise ValueError(
        f"cannot place {len(specs)} shapes (sides {sorted(sides.values())} px) on a {size} px "
        f"canvas with a {gap} px gap"
        + (f" satisfying: {relations}" if relations else "")
        + f" after {LAYOUT_RESTARTS} attempts; use a larger canvas or fewer shapes/relations"
    )


def _position_holds(
    a: np.ndarray, b: np.ndarray, predicate: str, threshold: float = DIRECTION_THRESHOLD
) -> np.ndarray:
    """The GenEval rule of ``vrl.geometry.position_relations`` over rows of boxes.

    ``a``, ``b``: (N, 4) boxes (either may broadcast from (1, 4)); returns (N,) bool for
    "a <predicate> b" with this direction ``threshold``. A vectorised filter only: the chosen box
    is confirmed by the geometry module's own ``relation_holds``.
    """
    dx = 0.5 * (a[:, 0] + a[:, 2]) - 0.5 * (b[:, 0] + b[:, 2])  # (N,)
    dy = 0.5 * (a[:, 1] + a[:, 3]) - 0.5 * (b[:, 1] + b[:, 3])
    margin_x = POSITION_MARGIN * ((a[:, 2] - a[:, 0]) + (b[:, 2] - b[:, 0]))
    margin_y = POSITION_MARGIN * ((a[:, 3] - a[:, 1]) + (b[:, 3] - b[:, 1]))
    shrunk_x = np.sign(dx) * np.maximum(np.abs(dx) - margin_x, 0.0)
    shrunk_y = np.sign(dy) * np.maximum(np.abs(dy) - margin_y, 0.0)
    some = (np.abs(shrunk_x) >= MIN_OFFSET) | (np.abs(shrunk_y) >= MIN_OFFSET)
    length = np.maximum(np.hypot(dx, dy), 1e-12)
    nx, ny = shrunk_x / length, shrunk_y / length
    direction = {
        "left of": nx < -threshold,
        "right of": nx > threshold,
        "above": ny < -threshold,
        "below": ny > threshold,
    }[predicate]
    return some & direction


def _candidates(side: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 4) candidate boxes of this side in random order: every position when there are at
    most ``CANDIDATES`` of them (small canvases, where room is tight), else a random sample
    (the order breaks ties between positions equally near the target)."""
    high = size - BORDER - side  # top-left corners in [BORDER, high]
    span = high - BORDER + 1
    if span * span <= CANDIDATES:
        xy = np.stack(np.meshgrid(np.arange(span), np.arange(span)), axis=-1).reshape(-1, 2)
        xy = rng.permutation(xy) + BORDER  # (span**2, 2)
    else:
        xy = rng.integers(BORDER, high + 1, size=(CANDIDATES, 2))  # (N, 2)
    return np.concatenate([xy, xy + side], axis=1).astype(np.float64)  # (N, 4)


def _place_all(
    order: list[str],
    sides: Mapping[str, int],
    partners: Mapping[str, list[tuple[str, str, bool]]],
    targets: Mapping[str, tuple[float, float]],
    size: int,
    gap: int,
    rng: random.Random,
) -> dict[str, Box] | None:
    """One sequential placement in ``order``, each shape at the allowed candidate position
    nearest its target centre; None at a dead end."""
    placed: dict[str, Box] = {}
    placed_rows = np.zeros((0, 4))  # (P, 4) boxes already placed
    np_rng = np.random.default_rng(rng.getrandbits(64))
    for sid in order:
        boxes = _candidates(sides[sid], size, np_rng)  # (N, 4)
        b, p = boxes[:, None, :], placed_rows[None]  # (N, 1, 4), (1, P, 4)
        apart = (
            (b[..., 2] + gap <= p[..., 0])
            | (p[..., 2] + gap <= b[..., 0])
            | (b[..., 3] + gap <= p[..., 1])
            | (p[..., 3] + gap <= b[..., 1])
        )  # (N, P): at least `gap` pixels apart on one axis
        ok = apart.all(axis=1)  # (N,)
        for other, predicate, is_subject in partners[sid]:
            if other not in placed or predicate not in POSITION_RELATIONS:
                continue  # size relations were settled by the sides
            o = np.asarray(placed[other])[None]  # (1, 4)
            a, b = (boxes, o) if is_subject else (o, boxes)
            ok &= _position_holds(a, b, predicate, DIRECTION_THRESHOLD + DIRECTION_SAFETY)
        boxes = boxes[ok]
        centres = 0.5 * (boxes[:, :2] + boxes[:, 2:])  # (M, 2)
        distance = np.hypot(*(centres - np.asarray(targets[sid])).T)  # (M,)
        found = None
        while found is None and len(boxes):
            best = int(distance.argmin())
            box = tuple(boxes[best].tolist())
            if all(  # the geometry module is the rule; the vectorised filter only narrows
                relation_holds(box, placed[other], p)
                if is_subject
                else relation_holds(placed[other], box, p)
                for other, p, is_subject in partners[sid]
                if other in placed
            ):
                found = box
            distance[best] = np.inf
            if np.isinf(distance).all():
                break
        if found is None:
            return None
        placed[sid] = found
        placed_rows = np.vstack([placed_rows, np.asarray(found)[None]])
    return placed


def _triangle(box: Box, inset: float = 0.0) -> list[tuple[float, float]]:
    """Apex-up isosceles triangle filling ``box``; ``inset`` > 0 shrinks it about its incentre so
    that the ring between the two has a uniform width ``inset``."""
    x1, y1, x2, y2 = box
    left, right, top, bottom = x1, x2 - 1, y1, y2 - 1  # PIL coordinates are inclusive
    apex, base_l, base_r = ((left + right) / 2, top), (left, bottom), (right, bottom)
    if inset <= 0:
        return [base_l, base_r, apex]
    width, height = right - left, bottom - top
    slant = math.hypot(width / 2, height)
    inradius = width * height / (width + 2 * slant)  # area / semi-perimeter
    centre = ((left + right) / 2, bottom - inradius)
    scale = max(inradius - inset, 0.0) / inradius
    return [
        (centre[0] + scale * (px - centre[0]), centre[1] + scale * (py - centre[1]))
        for px, py in (base_l, base_r, apex)
    ]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Box, rgb, inset: float = 0.0):
    if shape == "triangle":
        draw.polygon(_triangle(box, inset), fill=rgb)
        return
    x1, y1, x2, y2 = box
    inclusive = (x1 + inset, y1 + inset, x2 - 1 - inset, y2 - 1 - inset)
    if inclusive[2] < inclusive[0] or inclusive[3] < inclusive[1]:
        return
    if shape == "square":
        draw.rectangle(inclusive, fill=rgb)
    else:
        draw.ellipse(inclusive, fill=rgb)


def render(
    scene: Scene, size: int = 32, seed: int = 0, *, boxes: Mapping[str, Box] | None = None
) -> Image.Image:
    """The scene as a ``size`` x ``size`` RGB image: flat shapes on a flat background.

    ``boxes`` (subject id -> box) overrides the layout, e.g. to move a shape on purpose; it must
    name every subject. An outlined shape is drawn whole in the outline colour, then its body
    inset by ``outline_width(side, shape)`` pixels.
    """
    specs = {s.id: shape_spec(s) for s in scene.subjects}
    if boxes is None:
        boxes = layout(scene, size, seed)
    else:
        if size < MIN_CANVAS:
            raise ValueError(f"canvas size must be at least {MIN_CANVAS} pixels, got {size}")
        missing = [sid for sid in specs if sid not in boxes]
        if missing:
            raise ValueError(f"boxes lack subjects {missing}")
    image = Image.new("RGB", (size, size), BACKGROUNDS[background_name(scene)])
    draw = ImageDraw.Draw(image)
    for sid, spec in specs.items():
        box = tuple(float(v) for v in boxes[sid])
        if spec.outline is None:
            _draw_shape(draw, spec.shape, box, COLOURS[spec.colour])
        else:
            side = min(box[2] - box[0], box[3] - box[1])
            _draw_shape(draw, spec.shape, box, COLOURS[spec.outline])
            _draw_shape(
                draw, spec.shape, box, COLOURS[spec.colour], inset=outline_width(side, spec.shape)
            )
    return image
