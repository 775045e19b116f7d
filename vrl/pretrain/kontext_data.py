"""Training triples of the shapes world's in-context model: (reference images, prompt, target).

The chain of synthesis (`vrl.hicogen.chain`, ``context="in_context"``) draws a scene unit by
unit: unit 1 from its prompt alone, unit k with the earlier unit images as reference tokens, then
a final pass with every unit image and the full prompt. The world renders what each pass should
give exactly, so every pass of every scene is a supervised example:

- unit pass k (0-based): target = the partial scene after unit k (`ChainPlan.partial_scene`),
  prompt = unit k's prompt (`Scene.unit_prompt`: its own subjects, or told where they go), references = the partial scenes after
  units 0..k-1 (``"all"``) or after unit k-1 alone (``"last"``), drawn at random like a chain's
  ``references`` setting; unit 0 has none;
- the final pass: target = the whole scene, prompt = the full prompt, references = every unit
  image;
- plain text-to-image (no references, any caption of the whole scene), mixed in at
  ``plain_fraction``: unit 1 and a flat pass need it.

A unit pass may also see where its subjects go (``boxes_prob``; the chain's ``boxes="world"``):
one more reference after the unit images, the unit's boxes in the scene's layout
(`vrl.hicogen.chain.box_image`), which its target fills.

Every image of a scene is rendered with the whole scene's layout (`render(..., boxes=)`), so a
subject sits at the same pixels in every reference and in the target: the model can copy it.

Laying a scene out costs ~10 ms, as much as rendering all its partial scenes, so a
`TripleStream` keeps every scene it laid out and draws ``fresh`` new ones per batch (as
`vrl.pretrain.t2i.SceneStream` does).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import torch

from vrl.hicogen.scene import Scene

REFERENCE_MODES = ("all", "last")
TOLD_FORMS = ("relational", "cumulative")
"""Unit prompt forms beside "own" that a chain example carries."""


@dataclasses.dataclass(frozen=True)
class Triple:
    """One training example: ``target`` drawn from ``prompt`` with ``references`` in context."""

    prompt: str
    target: torch.Tensor
    """(3, H, W) uint8."""
    references: tuple[torch.Tensor, ...]
    """(3, H, W) uint8 images, in chain order (may be empty)."""
    kind: str
    """"unit" (a unit pass), "final" (the chain's last pass) or "plain" (text-to-image)."""
    subjects: tuple[tuple[str, ...], ...] = ()
    """Subject ids drawn in each unit-image reference (for tests and inspection)."""
    boxed: bool = False
    """The last reference is the unit's box image, not a unit image."""


@dataclasses.dataclass
class ChainExample:
    """Everything one scene gives: its chain plan's prompts, captions and exact renders."""

    unit_prompts: tuple[str, ...]
    final_prompt: str
    captions: tuple[str, ...]
    partials: tuple[torch.Tensor, ...]
    """(3, H, W) uint8 renders of the partial scene after each unit (the last is the scene)."""
    unit_subjects: tuple[tuple[str, ...], ...]
    """Subject ids drawn after each unit (cumulative)."""
    full: torch.Tensor
    """(3, H, W) uint8 render of the whole scene."""
    boxes: tuple[torch.Tensor, ...] = ()
    """(3, H, W) uint8 box image of each unit's subjects in the scene's layout."""
    told: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    """Unit prompts in the forms that say where unit k puts its subject (`Scene.unit_prompt`):
    "relational" (its subject and its relations to the earlier ones), "cumulative" (every
    subject so far and the relations among them)."""

    def unit_prompts_in(self, form: str) -> tuple[str, ...]:
        return self.unit_prompts if form == "own" else self.told[form]

    @property
    def passes(self) -> int:
        """Unit passes plus the final one."""
        return len(self.unit_prompts) + 1


def to_tensor(image) -> torch.Tensor:
    """(3, H, W) uint8 tensor of a PIL RGB image."""
    w, h = image.size
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(h, w, 3).permute(2, 0, 1).clone()


def chain_example(
    scene: Scene, size: int, seed: int, captions: Sequence[str] | None = None
) -> ChainExample:
    """Lay ``scene`` out once at ``size`` px (layout ``seed``) and render every partial scene of
    its chain with those boxes."""
    from vrl.hicogen.chain import box_image, plan_chain
    from vrl.world import layout, render

    plan = plan_chain(scene, scene.prompt())
    told = {form: plan_chain(scene, "", form=form).unit_prompts for form in TOLD_FORMS}
    boxes = layout(scene, size, seed)
    partials, subjects = [], []
    for k in range(len(plan.units)):
        part = plan.partial_scene(k)
        partials.append(to_tensor(render(part, size, boxes=boxes)))
        subjects.append(tuple(s.id for s in part.subjects))
    full = to_tensor(render(scene, size, boxes=boxes))
    return ChainExample(
        unit_prompts=plan.unit_prompts,
        final_prompt=plan.final_prompt,
        captions=tuple(captions) if captions else (plan.final_prompt,),
        partials=tuple(partials),
        unit_subjects=tuple(subjects),
        full=full,
        boxes=tuple(
            (box_image([boxes[s] for s in unit.subjects], size, size) * 255).to(torch.uint8)
            for unit in plan.units
        ),
        told=told,
    )


def triple_of(
    example: ChainExample, index: int, mode: str, form: str = "own", boxed: bool = False
) -> Triple:
    """Pass ``index`` (0..units-1: a unit pass; units: the final pass) of a chain example, its
    unit passes seeing ``mode`` ("all" or "last") earlier unit images, their prompts in ``form``
    (`Scene.unit_prompt`), and with ``boxed`` their box image last."""
    if mode not in REFERENCE_MODES:
        raise ValueError(f"reference mode must be one of {REFERENCE_MODES}, got {mode!r}")
    units = len(example.unit_prompts)
    if not 0 <= index <= units:
        raise ValueError(f"pass {index} of a chain of {units} units (+ the final pass)")
    if index == units:
        return Triple(
            example.final_prompt,
            example.full,
            example.partials,
            "final",
            example.unit_subjects,
        )
    seen = range(index) if mode == "all" else range(max(0, index - 1), index)
    prompts = example.unit_prompts_in(form)
    references = tuple(example.partials[j] for j in seen)
    return Triple(
        prompts[index],
        example.partials[index],
        (*references, example.boxes[index]) if boxed else references,
        "unit",
        tuple(example.unit_subjects[j] for j in seen),
        boxed,
    )


def plain_of(example: ChainExample, rng: random.Random) -> Triple:
    """Text-to-image: the whole scene from one of its captions, no references."""
    return Triple(rng.choice(example.captions), example.full, (), "plain")


class TripleStream:
    """Training triples of the world's train split, fixed by the seed.

    Each batch lays out ``fresh`` new scenes (``min_subjects``..``max_subjects`` subjects by
    ``subject_mix``) and draws every item from all scenes so far: a plain text-to-image item with
    probability ``plain_fraction``, else one pass of the scene's chain, uniformly, whose unit
    passes see "last" with probability ``last_prob`` and "all" otherwise, and are told every
    subject so far and their relations with probability ``cumulative_prob``, their subjects and
    their relations to the earlier ones with probability ``relational_prob``, else their own
    subjects only, and see their box image with probability ``boxes_prob``.
    """

    def __init__(
        self,
        seed: int,
        *,
        size: int = 32,
        subject_mix: Sequence[float] = (0.4, 0.3, 0.3),
        relation_prob: float = 1.0,
        plain_fraction: float = 0.3,
        last_prob: float = 0.5,
        cumulative_prob: float = 0.0,
        relational_prob: float = 0.0,
        boxes_prob: float = 0.0,
        fresh: int = 8,
        tokenizer=None,
    ):
        if not 0.0 <= plain_fraction <= 1.0:
            raise ValueError(f"plain_fraction must be in [0, 1], got {plain_fraction}")
        if not 0.0 <= last_prob <= 1.0:
            raise ValueError(f"last_prob must be in [0, 1], got {last_prob}")
        if not 0.0 <= cumulative_prob <= 1.0:
            raise ValueError(f"cumulative_prob must be in [0, 1], got {cumulative_prob}")
        if not 0.0 <= relational_prob <= 1.0 - cumulative_prob:
            raise ValueError(
                f"relational_prob must be in [0, 1 - cumulative_prob], got {relational_prob} "
                f"(cumulative_prob {cumulative_prob})"
            )
        if not 0.0 <= boxes_prob <= 1.0:
            raise ValueError(f"boxes_prob must be in [0, 1], got {boxes_prob}")
        if not subject_mix or min(subject_mix) < 0 or sum(subject_mix) <= 0:
            raise ValueError(f"subject_mix must be non-negative weights, got {subject_mix}")
        self.rng = random.Random(seed)
        self.size = size
        self.subject_mix = tuple(subject_mix)
        self.relation_prob = relation_prob
        self.plain_fraction = plain_fraction
        self.last_prob = last_prob
        self.cumulative_prob = cumulative_prob
        self.relational_prob = relational_prob
        self.boxes_prob = boxes_prob
        self.fresh = fresh
        self.tokenizer = tokenizer
        self.pool: list[ChainExample] = []

    def _fits(self, text: str) -> bool:
        """Whether ``text`` fits every tokenizer's context (a tokenizer or a tuple of them)."""
        tokenizers = self.tokenizer if isinstance(self.tokenizer, tuple) else (self.tokenizer,)
        return all(
            len(t(text, verbose=False).input_ids) <= t.model_max_length
            for t in tokenizers
            if t is not None
        )

    def draw_example(self) -> ChainExample:
        """A new scene of the train split, laid out and rendered (retried until its chain's
        prompts fit the tokenizer)."""
        from vrl.world import captions, sample_scene

        counts = range(1, len(self.subject_mix) + 1)
        while True:
            n = self.rng.choices(counts, weights=self.subject_mix)[0]
            scene = sample_scene(
                self.rng, min_subjects=n, max_subjects=n, relation_prob=self.relation_prob
            )
            texts = [t for t in captions(scene) if self._fits(t)]
            if not texts:
                continue
            example = chain_example(scene, self.size, self.rng.getrandbits(32), texts)
            told = [
                t
                for form, p in (
                    ("cumulative", self.cumulative_prob),
                    ("relational", self.relational_prob),
                )
                if p > 0
                for t in example.told[form]
            ]
            if all(self._fits(t) for t in (*example.unit_prompts, *told, example.final_prompt)):
                return example

    def triple(self, example: ChainExample) -> Triple:
        if self.rng.random() < self.plain_fraction:
            return plain_of(example, self.rng)
        mode = "last" if self.rng.random() < self.last_prob else "all"
        index = self.rng.randrange(example.passes)
        form = "own"
        # no draw at 0: a stream told nothing more is the one it always was
        if self.cumulative_prob > 0 or self.relational_prob > 0:
            r = self.rng.random()
            if r < self.cumulative_prob:
                form = "cumulative"
            elif r < self.cumulative_prob + self.relational_prob:
                form = "relational"
        # no draw at 0 (as above); the final pass has no boxes
        boxed = self.boxes_prob > 0 and self.rng.random() < self.boxes_prob
        return triple_of(example, index, mode, form, boxed and index < len(example.unit_prompts))

    def batch(self, size: int) -> list[Triple]:
        fresh = [self.draw_example() for _ in range(min(self.fresh, size))]
        self.pool.extend(fresh)
        examples = fresh + [self.rng.choice(self.pool) for _ in range(size - len(fresh))]
        return [self.triple(e) for e in examples]


def group_by_references(triples: Sequence[Triple]) -> dict[int, list[Triple]]:
    """Triples by their number of references (a transformer batch holds one count), in order."""
    groups: dict[int, list[Triple]] = {}
    for t in triples:
        groups.setdefault(len(t.references), []).append(t)
    return dict(sorted(groups.items()))


def as_images(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, 3, H, W) float images in [0, 1] from uint8 tensors."""
    return torch.stack(list(tensors)).float() / 255.0
