"""Seeded sampling of world scenes, the held-out split, and captions in several phrasings.

A sampled scene has 1..N subjects with pairwise different (size, colour, shape), so every subject
has a unique reference and the checker can tell them apart; `count` stays None (one shape per
subject): counting tasks count subjects that share a shape or colour. Relations form a forest
(each subject after the first may get one relation to an earlier one), so they are always
consistent; "larger than" only joins a large subject to a small one. Every scene returned has
been laid out once on its canvas with every side at its largest jitter, so it is placeable
with any jitter.
"""

from __future__ import annotations

import dataclasses
import random

from vrl.hicogen.scene import Relation, Scene, Subject

from .render import _layout
from .vocabulary import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_PAIRS,
    INVERSE_RELATION,
    OUTLINE,
    RELATIONS,
    SHAPES,
    SIZES,
    SPATIAL_RELATIONS,
    SPLITS,
    canvas_for,
    shape_spec,
)

SAMPLE_TRIES = 200
"""Scenes drawn before giving up on finding a placeable one."""

Description = tuple[str, str, str]  # (size, colour, shape)


def _as_rng(rng: int | random.Random) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, int) and not isinstance(rng, bool):
        return random.Random(rng)
    raise TypeError(f"rng must be an int seed or a random.Random, got {type(rng).__name__}")


def is_held_out(scene: Scene) -> bool:
    """Whether any subject's (body colour, shape) is one of ``HELD_OUT_PAIRS``."""
    for subject in scene.subjects:
        spec = shape_spec(subject)
        if (spec.colour, spec.shape) in HELD_OUT_PAIRS:
            return True
    return False


def _descriptions(rng: random.Random, n: int, split: str) -> list[Description]:
    """``n`` distinct (size, colour, shape); train avoids the held-out pairs, test has one."""
    every = [(size, colour, shape) for size in SIZES for colour in COLOURS for shape in SHAPES]
    held = [d for d in every if (d[1], d[2]) in HELD_OUT_PAIRS]
    if split == "train":
        return rng.sample([d for d in every if d not in held], n)
    if split == "all":
        return rng.sample(every, n)
    forced = rng.choice(held)  # test: at least one held-out subject, anywhere in the scene
    others = rng.sample([d for d in every if d != forced], n - 1)
    others.insert(rng.randrange(n), forced)
    return others


def _relations(rng: random.Random, subjects: list[Subject], relation_prob: float) -> list[Relation]:
    relations = []
    for i in range(1, len(subjects)):
        if rng.random() >= relation_prob:
            continue
        j = rng.randrange(i)
        a, b = subjects[i], subjects[j]
        sizes = {a.attributes[0], b.attributes[0]}
        predicate = rng.choice(RELATIONS if len(sizes) == 2 else SPATIAL_RELATIONS)
        if predicate == "larger than":
            first, second = (a, b) if a.attributes[0] == "large" else (b, a)
        else:
            first, second = (a, b) if rng.random() < 0.5 else (b, a)
        relations.append(Relation(first.id, predicate, second.id))
    return relations


def sample_scene(
    rng: int | random.Random,
    *,
    min_subjects: int = 1,
    max_subjects: int = 3,
    relation_prob: float = 0.5,
    sub_attribute_prob: float = 0.0,
    background: str | None = None,
    split: str = "train",
    canvas: int | None = None,
) -> Scene:
    """A random world scene.

    Args:
        rng: a seed or a ``random.Random`` (drawn from, so consecutive calls differ).
        min_subjects, max_subjects: how many shapes, uniform in between.
        relation_prob: chance that each subject after the first gets one relation to an earlier
            one (a spatial relation, or "larger than" when their sizes differ).
        sub_attribute_prob: chance that a subject has an outline of another colour.
        background: None (the default light grey, not named in the prompt), "random" (any of
            ``BACKGROUNDS``, named), or a ``BACKGROUNDS`` name.
        split: "train" (no held-out (colour, shape) pair), "test" (at least one), or "all".
        canvas: the smallest canvas (pixels) the scene must fit; default: the smallest of 32, 64,
            128 whose capacity holds ``max_subjects``. Larger canvases only make room.

    Subject ids are "s0", "s1", ...; ``description`` is the rendered prompt.
    """
    rng = _as_rng(rng)
    if not 1 <= min_subjects <= max_subjects:
        raise ValueError(
            f"need 1 <= min_subjects <= max_subjects, got {min_subjects}, {max_subjects}"
        )
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    for name, p in (("relation_prob", relation_prob), ("sub_attribute_prob", sub_attribute_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    if background not in (None, "random") and background not in BACKGROUNDS:
        raise ValueError(
            f"background must be None, 'random' or one of {list(BACKGROUNDS)}, got {background!r}"
        )
    canvas = canvas or canvas_for(max_subjects)
    for _ in range(SAMPLE_TRIES):
        n = rng.randint(min_subjects, max_subjects)
        subjects = []
        for i, (size, colour, shape) in enumerate(_descriptions(rng, n, split)):
            sub: tuple[str, ...] = ()
            if rng.random() < sub_attribute_prob:
                sub = (f"{OUTLINE}: {rng.choice([c for c in COLOURS if c != colour])}",)
            subjects.append(Subject(f"s{i}", shape, (size, colour), sub))
        relations = _relations(rng, subjects, relation_prob)
        name = rng.choice(list(BACKGROUNDS)) if background == "random" else background
        scene = Scene(subjects=tuple(subjects), relations=tuple(relations), background=name)
        scene = dataclasses.replace(scene, description=scene.prompt())
        try:
            _layout(scene, canvas, seed=0, largest=True)
        except ValueError:
            continue  # not placeable on this canvas: draw another
        return scene
    raise ValueError(
        f"no placeable scene with {min_subjects}-{max_subjects} subjects on a {canvas} px canvas "
        f"in {SAMPLE_TRIES} draws; use a larger canvas or fewer subjects"
    )


# ---------------------------------------------------------------------- captions


def _inverted(scene: Scene) -> Scene:
    """The same scene told the other way round: subjects reversed, relations inverted."""
    relations = tuple(
        Relation(r.object, INVERSE_RELATION.get(r.predicate, r.predicate), r.subject)
        for r in scene.relations
    )
    return dataclasses.replace(scene, subjects=scene.subjects[::-1], relations=relations)


def _sentences(scene: Scene) -> str:
    """'A small red circle and a large blue square. The circle is to the left of the square.'"""
    phrases = [scene.noun_phrase(s.id) for s in scene.subjects]
    listing = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    text = listing[:1].upper() + listing[1:]
    if scene.background:
        text += f" on a {scene.background} background"
    text += "."
    for r in scene.relations:
        phrase = {"left of": "to the left of", "right of": "to the right of"}.get(
            r.predicate, r.predicate
        )
        text += f" The {scene.reference(r.subject)} is {phrase} the {scene.reference(r.object)}."
    return text


def captions(scene: Scene) -> list[str]:
    """Several fluent phrasings of the same scene, ``scene.prompt()`` first, no duplicates."""
    prompt, inverted = scene.prompt(), _inverted(scene).prompt()
    variants = [
        prompt,
        f"An image of {prompt[:1].lower()}{prompt[1:]}",
        inverted,
        _sentences(scene),
        f"A picture showing {inverted[:1].lower()}{inverted[1:]}",
    ]
    unique: dict[str, str] = {}  # phrasings that differ only by a final full stop are one
    for text in variants:
        unique.setdefault(text.rstrip("."), text)
    return list(unique.values())


def caption(scene: Scene, rng: int | random.Random) -> str:
    """One of ``captions(scene)``, drawn with ``rng`` (a seed or a ``random.Random``)."""
    return _as_rng(rng).choice(captions(scene))
