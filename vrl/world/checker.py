"""The exact checker: find the shapes in an image and answer a scene's questions from them.

``detect`` reads an image with no model at all:

1. every pixel takes the nearest palette colour (objects and backgrounds) if it lies within
   ``MAX_COLOUR_DISTANCE`` of it, else none (a blurred edge, noise, a colour outside the world);
2. object-coloured pixels are grouped into 8-connected blobs, whatever their colour, so that an
   outline ring and its body are one shape; blobs smaller than ``min_blob_area`` are noise;
3. each blob becomes a ``Detection``: a triangle if it tapers (far fewer pixels in the top third
   of its box than in the bottom third), else a square or a circle by the fill ratio of its box
   (~1.0 and ~0.79), size from the side of its box against the canvas
   (``vocabulary.size_threshold``), colour from its pixels. A blob with a second colour covering
   ``OUTLINE_MIN_SHARE`` of it is outlined: of its two commonest colours, the one whose pixels lie
   farther from the blob's centre is the outline, the other the body.

The background is the commonest background colour among the pixels outside every blob.

``check`` then ties detections to the scene's subjects (one to one, greedily by how many of the
subject's attributes a detection has; a detection can only be a subject whose reference it fits:
the shape, plus size and colour when two subjects share a shape, as in ``Scene.reference``), and
answers every ``Scene.questions()`` question: existence = a detection is tied to the subject,
attribute = the tied detection has it, relation = the GenEval rule (``vrl.geometry``) on
the tied boxes, "larger than" by box area. Scoring follows the Davidsonian Scene Graph: a question
whose parent is wrong counts wrong and stays in the denominator.

Images may be PIL images, (H, W, 3) uint8 arrays (or float in [0, 1]), or (3, H, W) float tensors
in [0, 1].
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vrl.geometry import relation_holds
from vrl.hicogen.scene import Question, Scene

from .vocabulary import (
    BACKGROUNDS,
    COLOURS,
    OUTLINE,
    SIZES,
    background_name,
    nominal_side,
    reference_spec,
    shape_spec,
    size_threshold,
)

Box = tuple[float, float, float, float]
"""(x1, y1, x2, y2) in pixels, exclusive ends."""

MAX_COLOUR_DISTANCE = 80.0
"""RGB distance beyond which a pixel has no palette colour (about half the palette spacing)."""
OUTLINE_MIN_SHARE = 0.15
"""A second colour covering at least this share of a blob makes it an outlined shape."""
TRIANGLE_MAX_TAPER = 0.6
"""Taper (pixels in the top third of the box / in the bottom third) below which a shape is a
triangle: an apex-up triangle tapers to ~0.2-0.45, circles and squares are symmetric (~1). The
taper survives blur, which erodes a small triangle's apex and so raises its fill ratio (0.50-0.56
clean) into the circle's range."""
CIRCLE_MAX_FILL = 0.88
"""Fill ratio of the box below which a non-triangle is a circle (clean: 0.76-0.81); squares fill
~1.0, ~0.94 blurred (rounded corners)."""
BACKGROUND_MIN_SHARE = 0.5
"""The background colour must cover this share of the pixels outside the shapes."""
LEVELS = ("exist", "attribute", "relation")

_BACKGROUND_NAMES = tuple(BACKGROUNDS)
_COLOUR_NAMES = tuple(COLOURS)
_NB, _NC = len(_BACKGROUND_NAMES), len(_COLOUR_NAMES)
_UNKNOWN = 255
_LUT_BITS = 5  # per channel: a 32**3 table of the nearest palette class


@dataclass(frozen=True)
class Detection:
    """One shape found in an image."""

    colour: str
    """Body colour (a ``COLOURS`` name)."""
    shape: str
    """"circle", "square" or "triangle", from ``fill``."""
    size: str
    """"small" or "large", from the side of ``box`` relative to the canvas."""
    box: Box
    """Tight box of the blob, pixels, exclusive ends."""
    outline: str | None
    """Colour of the outline ring, or None."""
    area: int
    """Pixels in the blob (body and ring)."""
    fill: float
    """Pixels inside the blob's outline (rows filled from first to last pixel) / box area."""
    taper: float = 1.0
    """Pixels in the top third of the box over those in the bottom third (triangles < 0.6)."""


@dataclass(frozen=True)
class WorldCheck:
    """Everything the checker concluded about one (scene, image) pair."""

    detections: tuple[Detection, ...]
    background: str | None
    """Detected background name (None if no background colour dominates)."""
    background_ok: bool
    assignment: dict[str, Detection | None]
    """Subject id -> the detection taken as that subject (None: not found)."""
    extras: tuple[Detection, ...]
    """Detections tied to no subject (objects the scene does not ask for)."""
    answers: dict[str, bool]
    """Question id -> the checker's yes/no, each question on its own."""
    correct: dict[str, bool]
    """Question id -> counted correct with the DSG dependencies (parents must be correct)."""
    questions: tuple[Question, ...]

    @property
    def object_score(self) -> float:
        """Jaccard of subjects and detections: found / (subjects + extra detections), in [0, 1]."""
        found = sum(d is not None for d in self.assignment.values())
        denominator = len(self.assignment) + len(self.extras)
        return found / denominator if denominator else 1.0

    @property
    def global_score(self) -> float:
        """0.5 * background right + 0.5 * ``object_score`` (no missing and no extra objects)."""
        return 0.5 * float(self.background_ok) + 0.5 * self.object_score

    def level_accuracy(self, dependencies: bool = True) -> dict[str, float | None]:
        scores = self.correct if dependencies else self.answers
        return level_scores(self.questions, scores)


# ---------------------------------------------------------------------- image input


def as_uint8_array(image: Any) -> np.ndarray:
    """(H, W, 3) uint8 from a PIL image, an (H, W, 3) array, or a (3, H, W) tensor in [0, 1]."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return np.asarray(image.convert("RGB"))
    if type(image).__module__.startswith("torch"):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(
                f"a tensor image must be (3, H, W) in [0, 1], got {tuple(image.shape)}"
            )
        array = image.detach().float().cpu().clamp(0, 1).mul(255).round().byte()
        return array.permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"an array image must be (H, W, 3), got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    raise ValueError(f"an array image must be uint8 or float in [0, 1], got {array.dtype}")


@functools.cache
def _palette_lut() -> np.ndarray:
    """(32**3,) uint8: palette class of each 5-bit RGB cell (backgrounds first), or _UNKNOWN."""
    step = 1 << (8 - _LUT_BITS)
    centres = np.arange(1 << _LUT_BITS) * step + (step - 1) / 2  # (32,)
    r, g, b = np.meshgrid(centres, centres, centres, indexing="ij")
    cells = np.stack([r.ravel(), g.ravel(), b.ravel()], axis=1)  # (32768, 3)
    palette = np.array([*BACKGROUNDS.values(), *COLOURS.values()], dtype=np.float64)  # (K, 3)
    distance = np.linalg.norm(cells[:, None, :] - palette[None], axis=2)  # (32768, K)
    lut = distance.argmin(axis=1).astype(np.uint8)
    lut[distance.min(axis=1) > MAX_COLOUR_DISTANCE] = _UNKNOWN
    return lut


def palette_classes(array: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class map: 0.._NB-1 backgrounds, _NB.. object colours, 255 no colour."""
    q = (array >> (8 - _LUT_BITS)).astype(np.intp)  # (H, W, 3)
    return _palette_lut()[(q[..., 0] << (2 * _LUT_BITS)) | (q[..., 1] << _LUT_BITS) | q[..., 2]]


def off_palette_share(image: Any) -> float:
    """Share of an image's pixels that are no palette colour (farther than
    ``MAX_COLOUR_DISTANCE`` from every background and object colour). A render has none and
    the world text-to-image model's soft edges ~2%; a policy that has turned its images into
    texture, whatever the checker still finds in them, 14-22%, and uniform noise ~33%. Read it
    beside any reward gain: it tells a better picture from a reward hack."""
    return float((palette_classes(as_uint8_array(image)) == _UNKNOWN).mean())


def min_blob_area(canvas: float) -> float:
    """Blobs smaller than this (pixels) are noise: ~8% of a small shape's box."""
    return max(3.0, 0.08 * nominal_side("small", canvas) ** 2)


# ---------------------------------------------------------------------- connected components


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of True in row-major order: (rows, starts, ends), ends exclusive."""
    height, width = mask.shape
    padded = np.zeros((height, width + 2), np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)  # (H, W + 1): +1 where a run starts, -1 after it ends
    rows, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)
    return rows, starts, ends


def _label_runs(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """Blob id (0..n-1) of each run: runs in adjacent rows whose columns touch, diagonally too
    (8-connectivity), are one blob. Union-find over the few hundred runs of an image."""
    n = len(rows)
    stride = width + 2
    start_keys = rows * stride + starts  # ascending: runs are in row-major order
    end_keys = rows * stride + ends
    # runs j of row r+1 touching run i: start_j <= end_i and end_j >= start_i
    hi = np.searchsorted(start_keys, (rows + 1) * stride + ends, side="right")
    lo = np.searchsorted(end_keys, (rows + 1) * stride + starts, side="left")
    counts = np.maximum(hi - lo, 0)
    first = np.repeat(np.arange(n), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    second = np.repeat(lo, counts) + offsets
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(first.tolist(), second.tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n)], dtype=np.intp)
    _, labels = np.unique(roots, return_inverse=True)
    return labels


# ---------------------------------------------------------------------- detection


def _analyse(array: np.ndarray) -> tuple[list[Detection], str | None]:
    """Detections and the background name of an (H, W, 3) uint8 image."""
    height, width = array.shape[:2]
    canvas = math.sqrt(height * width)
    classes = palette_classes(array)  # (H, W)
    mask = (classes >= _NB) & (classes != _UNKNOWN)  # object-coloured pixels
    detections: list[Detection] = []
    rows, starts, ends = _runs(mask)
    if len(rows):
        labels = _label_runs(rows, starts, ends, width)  # (R,)
        n = int(labels.max()) + 1
        flat = np.flatnonzero(mask)  # object pixels, row-major = runs concatenated
        pixel_label = np.repeat(labels, ends - starts)  # (P,)
        pixel_colour = classes.ravel()[flat].astype(np.intp) - _NB  # (P,)
        area = np.bincount(pixel_label, minlength=n)
        colour_counts = np.bincount(pixel_label * _NC + pixel_colour, minlength=n * _NC)
        colour_counts = colour_counts.reshape(n, _NC)
        # how far each colour's pixels lie from their blob's centre: a ring lies outside its body
        ys, xs = np.divmod(flat, width)  # (P,)
        cx = np.bincount(pixel_label, weights=xs, minlength=n) / area  # (n,)
        cy = np.bincount(pixel_label, weights=ys, minlength=n) / area
        radius2 = (xs - cx[pixel_label]) ** 2 + (ys - cy[pixel_label]) ** 2  # (P,)
        colour_radius2 = np.bincount(
            pixel_label * _NC + pixel_colour, weights=radius2, minlength=n * _NC
        ).reshape(n, _NC) / np.maximum(colour_counts, 1)  # mean squared distance per colour
        x1 = np.full(n, width)
        y1 = np.full(n, height)
        x2 = np.zeros(n, np.intp)
        y2 = np.zeros(n, np.intp)
        np.minimum.at(x1, labels, starts)
        np.maximum.at(x2, labels, ends)
        np.minimum.at(y1, labels, rows)
        np.maximum.at(y2, labels, rows + 1)
        # each blob's rows filled from their first to their last pixel: noise holes don't count
        row_key = labels * height + rows  # (R,): one key per (blob, row)
        first_x = np.full(n * height, width)
        last_x = np.zeros(n * height, np.intp)
        np.minimum.at(first_x, row_key, starts)
        np.maximum.at(last_x, row_key, ends)
        span = np.maximum(last_x - first_x, 0).reshape(n, height)  # (n, H) row widths
        solid = span.sum(axis=1)  # (n,)
        # taper: width in the top k rows of each box over the bottom k rows, k ~ a third of it
        k = np.maximum(1, np.round((y2 - y1) / 3)).astype(np.intp)  # (n,)
        row_index = np.arange(height)[None]  # (1, H)
        top = (span * (row_index < (y1 + k)[:, None])).sum(axis=1)  # (n,)
        bottom = (span * (row_index >= (y2 - k)[:, None])).sum(axis=1)
        threshold = size_threshold(canvas)
        keep = np.flatnonzero(area >= min_blob_area(canvas))
        for i in keep.tolist():
            w, h = int(x2[i] - x1[i]), int(y2[i] - y1[i])
            fill = float(solid[i]) / (w * h)
            taper = float(top[i] / bottom[i]) if bottom[i] else 1.0
            colour, outline = _blob_colours(colour_counts[i], colour_radius2[i])
            detections.append(
                Detection(
                    colour=colour,
                    outline=outline,
                    shape=_shape_of(fill, taper),
                    size="large" if math.sqrt(w * h) >= threshold else "small",
                    box=(float(x1[i]), float(y1[i]), float(x2[i]), float(y2[i])),
                    area=int(area[i]),
                    fill=fill,
                    taper=taper,
                )
            )
    return detections, _background_of(classes, mask)


def _blob_colours(counts: np.ndarray, radius2: np.ndarray) -> tuple[str, str | None]:
    """(body colour, outline colour or None) of one blob from its pixel count per colour and
    the mean squared distance of those pixels from the blob's centre: of its two commonest
    colours, the one farther out is the ring (this holds even when blur has eaten half of it)."""
    first, second = np.argsort(counts, kind="stable")[::-1][:2]
    if counts[second] < OUTLINE_MIN_SHARE * counts.sum():
        return _COLOUR_NAMES[first], None
    body, outline = (first, second) if radius2[first] <= radius2[second] else (second, first)
    return _COLOUR_NAMES[body], _COLOUR_NAMES[outline]


def _shape_of(fill: float, taper: float) -> str:
    if taper < TRIANGLE_MAX_TAPER:
        return "triangle"
    return "circle" if fill < CIRCLE_MAX_FILL else "square"


def _background_of(classes: np.ndarray, mask: np.ndarray) -> str | None:
    outside = classes[~mask]
    counts = np.bincount(outside[outside < _NB], minlength=_NB)
    best = int(counts.argmax())
    if outside.size == 0 or counts[best] < BACKGROUND_MIN_SHARE * outside.size:
        return None
    return _BACKGROUND_NAMES[best]


def detect(image: Any) -> list[Detection]:
    """Every shape in ``image``, in reading order (top to bottom, then left to right)."""
    detections, _ = _analyse(as_uint8_array(image))
    return sorted(detections, key=lambda d: (d.box[1], d.box[0]))


def detect_background(image: Any) -> str | None:
    """The background colour's name, or None when no background colour dominates."""
    return _analyse(as_uint8_array(image))[1]


# ---------------------------------------------------------------------- answering


def _has(detection: Detection, attribute: str) -> bool:
    """Whether a detection has an attribute word or sub-attribute ("outline: red")."""
    if attribute in COLOURS:
        return detection.colour == attribute
    if attribute in SIZES:
        return detection.size == attribute
    part, _, value = (t.strip() for t in attribute.partition(":"))
    if part == OUTLINE:
        return detection.outline == value
    raise ValueError(f"attribute {attribute!r} is not in the shapes world")


def _assign(scene: Scene, detections: list[Detection]) -> dict[str, Detection | None]:
    """One detection per subject at most, greedily by the number of attributes it shares."""
    candidates = []  # (-score, subject index, -area, detection index)
    for si, subject in enumerate(scene.subjects):
        spec = shape_spec(subject)  # validates the subject
        required = reference_spec(scene, subject.id)
        wanted = (*subject.attributes, *subject.sub_attributes)
        for di, det in enumerate(detections):
            if det.shape != spec.shape or not all(_has(det, a) for a in required):
                continue
            score = sum(_has(det, a) for a in wanted)
            candidates.append((-score, si, -det.area, di))
    assignment: dict[str, Detection | None] = {s.id: None for s in scene.subjects}
    taken: set[int] = set()
    for _, si, _, di in sorted(candidates):
        sid = scene.subjects[si].id
        if assignment[sid] is None and di not in taken:
            assignment[sid] = detections[di]
            taken.add(di)
    return assignment


def _answer(question: Question, assignment: Mapping[str, Detection | None]) -> bool:
    found = [assignment[sid] for sid in question.target.subjects]
    if any(d is None for d in found):
        return False
    if question.level == "exist":
        return True
    if question.level == "attribute":
        return _has(found[0], question.target.attribute or "")
    return relation_holds(found[0].box, found[1].box, question.target.predicate or "")


def dependency_scores(
    questions: list[Question] | tuple[Question, ...], answers: Mapping[str, bool]
) -> dict[str, bool]:
    """DSG scoring: a question counts correct iff its answer is yes and all its parents count
    correct (every world question states a true fact about the scene, so "yes" is right)."""
    correct: dict[str, bool] = {}
    for q in questions:  # parents come before their children in Scene.questions()
        correct[q.id] = bool(answers.get(q.id, False)) and all(correct[p] for p in q.parents)
    return correct


def level_scores(
    questions: list[Question] | tuple[Question, ...], correct: Mapping[str, bool]
) -> dict[str, float | None]:
    """{"exist", "attribute", "relation"} -> fraction correct; None when a level has no question."""
    out: dict[str, float | None] = {}
    for level in LEVELS:
        ids = [q.id for q in questions if q.level == level]
        out[level] = sum(bool(correct.get(i, False)) for i in ids) / len(ids) if ids else None
    return out


def check(scene: Scene, image: Any) -> WorldCheck:
    """Detect, tie detections to subjects, and answer every question of ``scene``."""
    detections, background = _analyse(as_uint8_array(image))
    assignment = _assign(scene, detections)
    questions = tuple(scene.questions())
    answers = {q.id: _answer(q, assignment) for q in questions}
    tied = {id(d) for d in assignment.values() if d is not None}
    return WorldCheck(
        detections=tuple(detections),
        background=background,
        background_ok=background == background_name(scene),
        assignment=assignment,
        extras=tuple(d for d in detections if id(d) not in tied),
        answers=answers,
        correct=dependency_scores(questions, answers),
        questions=questions,
    )


def answer_questions(scene: Scene, image: Any) -> dict[str, bool]:
    """Question id (of ``scene.questions()``) -> the checker's answer, each on its own."""
    return check(scene, image).answers


def level_accuracy(
    scene: Scene, image: Any, *, dependencies: bool = True
) -> dict[str, float | None]:
    """{"exist", "attribute", "relation"} -> fraction of that level's questions right; None when
    the scene has none. With ``dependencies`` a question whose parent failed counts wrong."""
    return check(scene, image).level_accuracy(dependencies)
