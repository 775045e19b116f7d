"""The shapes world's exact checker as the three levels of the HiCoGen hierarchical reward.

Each image is read by ``vrl.world.check`` against its sample's scene (``sample.scene`` of an
``ImageSample``, or ``sample["scene"]`` of a row: a ``Scene``, its dict or its JSON), with no
model:

- ``world_global``: 0.5 * [background colour right] + 0.5 * [no missing and no extra shapes],
  the latter as found / (subjects + extra detections), so the score is in [0, 1];
- ``world_subject``: the fraction of the scene's existence and attribute questions answered
  right, DSG style (an attribute of a missing subject counts wrong);
- ``world_relation``: the fraction of its relation questions right (a relation between missing
  subjects counts wrong); None for a scene without relations.

``world_shape`` is a dense companion of the subject level: how square, round or pointed the blob
of each subject's colour is, a soft version of the checker's shape rule. The exact levels flip on
a few edge pixels (a square is a square only from 88% box fill), so most images of a tiny model
score the same there, and a group's advantages carry little; the soft score grades every blob.

``make_world_reward`` is the three exact levels as a ``HierarchicalReward`` (a recipe's
``hierarchical: {judge: world, weights: ...}``), logged as ``world_global``, ``world_subject``,
``world_relation``; "world" in the registry is its sum with unit weights. The checker is numpy on
uint8 pixels (no autograd) and its last results are cached by image content, so the levels of one
batch read each image once.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch

from vrl.world.checker import WorldCheck, check
from vrl.world.vocabulary import shape_spec

from .hierarchical import HierarchicalReward
from .hierarchical_subject import check_images, scene_of
from .registry import register_reward

CACHE_SIZE = 1024
"""(scene, image) checks kept, newest last: a few batches of every level."""
_cache: OrderedDict[tuple[str, bytes], WorldCheck] = OrderedDict()


def world_checks(images: torch.Tensor, samples: Sequence[Mapping]) -> list[WorldCheck]:
    """``vrl.world.check`` of each image (B, 3, H, W) in [0, 1] against its sample's scene."""
    x = check_images(images, samples)
    pixels = x.detach().clamp(0, 1).mul(255).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3) uint8
    out = []
    for array, sample in zip(pixels, samples, strict=True):
        scene = scene_of(sample)
        digest = hashlib.blake2b(array.tobytes(), digest_size=16)
        digest.update(repr(array.shape).encode())
        key = (scene.to_json(), digest.digest())
        result = _cache.get(key)
        if result is None:
            result = check(scene, array)
            _cache[key] = result
            if len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
        else:
            _cache.move_to_end(key)
        out.append(result)
    return out


def _fraction(result: WorldCheck, levels: tuple[str, ...]) -> float | None:
    ids = [q.id for q in result.questions if q.level in levels]
    return sum(result.correct[i] for i in ids) / len(ids) if ids else None


@register_reward("world_global", modality="image")
def world_global(images: torch.Tensor, samples: Sequence[Mapping]) -> list[float | None]:
    """Background right (half) and no missing or extra shapes (half), in [0, 1]."""
    return [r.global_score for r in world_checks(images, samples)]


@register_reward("world_subject", modality="image")
def world_subject(images: torch.Tensor, samples: Sequence[Mapping]) -> list[float | None]:
    """Fraction of existence and attribute questions right, with DSG dependencies."""
    return [_fraction(r, ("exist", "attribute")) for r in world_checks(images, samples)]


@register_reward("world_relation", modality="image")
def world_relation(images: torch.Tensor, samples: Sequence[Mapping]) -> list[float | None]:
    """Fraction of relation questions right, with dependencies; None without relations."""
    return [_fraction(r, ("relation",)) for r in world_checks(images, samples)]


SQUARE_FILL = (0.72, 0.94)
"""Box fill at which a blob starts to count as a square and counts fully (a clean square fills
1.0, a clean circle 0.75-0.81; the checker's cut is ``CIRCLE_MAX_FILL`` 0.88)."""
CIRCLE_FILL, CIRCLE_TOLERANCE = 0.79, 0.15
"""A circle scores 1 at this fill, falling linearly to 0 this far from it."""
UPRIGHT_TAPER = (0.55, 0.85)
"""Taper (top third / bottom third of the box) over which a blob stops looking like a triangle:
squares and circles must not taper (the checker's cut is ``TRIANGLE_MAX_TAPER`` 0.6)."""
TRIANGLE_TAPER = (0.9, 0.4)
"""Taper at which a blob starts to count as a triangle and counts fully (clean: 0.17-0.4)."""


def _ramp(x: float, start: float, end: float) -> float:
    """0 at ``start``, 1 at ``end`` (either direction), linear between, clipped."""
    return min(1.0, max(0.0, (x - start) / (end - start)))


def shape_score(fill: float, taper: float, shape: str) -> float:
    """How much a blob of this box fill and taper looks like ``shape``, in [0, 1]."""
    upright = _ramp(taper, *UPRIGHT_TAPER)
    if shape == "square":
        return _ramp(fill, *SQUARE_FILL) * upright
    if shape == "circle":
        return max(0.0, 1 - abs(fill - CIRCLE_FILL) / CIRCLE_TOLERANCE) * upright
    if shape == "triangle":
        return _ramp(taper, *TRIANGLE_TAPER)
    raise ValueError(f"unknown shape {shape!r}")


@register_reward("world_shape", modality="image")
def world_shape(images: torch.Tensor, samples: Sequence[Mapping]) -> list[float]:
    """Mean over the scene's subjects of the best ``shape_score`` among the blobs of the
    subject's colour (0 when there is none), in [0, 1]."""
    out = []
    for result, sample in zip(world_checks(images, samples), samples, strict=True):
        scores = []
        for subject in scene_of(sample).subjects:
            spec = shape_spec(subject)
            blobs = [d for d in result.detections if d.colour == spec.colour]
            scores.append(max((shape_score(d.fill, d.taper, spec.shape) for d in blobs), default=0))
        out.append(sum(scores) / len(scores) if scores else 0.0)
    return out


def make_world_reward(weights: Mapping[str, float] | None = None) -> HierarchicalReward:
    """R = w_g * world_global + w_s * world_subject + w_r * world_relation (weights default 1);
    ``.breakdown(images, samples)`` gives each level's scores."""
    return HierarchicalReward(
        world_global, world_subject, world_relation, weights=weights, prefix="world"
    )


register_reward("world", modality="image")(make_world_reward())
