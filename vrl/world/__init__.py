"""The shapes world: a procedural world of coloured shapes whose every question has an exact answer.

It is the project's embedded default: tiny text-to-image, VLM and CLIP models are trained on it
offline, the HiCoGen hierarchical reward and the HiCoPrompt benchmark judge with its checker, and
the demo shows it.

- A scene is a ``vrl.hicogen.scene.Scene``: subjects named by their shape ("circle", "square",
  "triangle") with attributes (size, colour), e.g. ("small", "red") -> "a small red circle", and
  optionally the sub-attribute "outline: <colour>" (a ring of another colour); relations "left
  of", "right of", "above", "below" (the GenEval position rule) and "larger than" (box area); a
  background colour (the global part).
- ``sample_scene`` draws scenes from a seed, with a held-out split: the (colour, shape) pairs of
  ``HELD_OUT_PAIRS`` (red triangle, yellow circle, blue square) appear only in split="test".
- ``layout`` / ``render`` place and draw a scene at any canvas (32 px for a tiny text-to-image
  model, 64, 112 or 128 px for a VLM and the 4-12-subject benchmark scenes).
- ``detect`` / ``check`` / ``answer_questions`` / ``level_accuracy`` read an image back with no
  model: nearest-palette segmentation, connected components and fill ratios.
- ``captions`` phrases a scene several ways; ``vrl.world.tasks`` writes VLM-R1 task files.

Simplifications: flat colours on a flat background, no occlusion (shapes never overlap or
touch), apex-up triangles only, shapes in square boxes, one shape per subject (``count`` > 1 is
refused), two sizes, one kind of sub-attribute.
"""

from .checker import (
    Detection,
    WorldCheck,
    answer_questions,
    as_uint8_array,
    check,
    dependency_scores,
    detect,
    detect_background,
    level_accuracy,
    level_scores,
    off_palette_share,
)
from .render import layout, render
from .scenes import caption, captions, is_held_out, sample_scene
from .vocabulary import (
    BACKGROUNDS,
    CAPACITY,
    COLOURS,
    DEFAULT_BACKGROUND,
    HELD_OUT_PAIRS,
    RELATIONS,
    SHAPES,
    SIZES,
    ShapeSpec,
    background_name,
    canvas_for,
    nominal_side,
    shape_spec,
)

__all__ = [
    "BACKGROUNDS",
    "CAPACITY",
    "COLOURS",
    "DEFAULT_BACKGROUND",
    "HELD_OUT_PAIRS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "Detection",
    "ShapeSpec",
    "WorldCheck",
    "answer_questions",
    "as_uint8_array",
    "background_name",
    "canvas_for",
    "caption",
    "captions",
    "check",
    "dependency_scores",
    "detect",
    "detect_background",
    "is_held_out",
    "layout",
    "level_accuracy",
    "level_scores",
    "nominal_side",
    "off_palette_share",
    "render",
    "sample_scene",
    "shape_spec",
]
