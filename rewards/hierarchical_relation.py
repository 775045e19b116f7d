"""Relation level of the HiCoGen hierarchical reward.

R_relation(image) = mean over the scene's relations of

    w_vlm * P_VLM(yes | relation question) + w_geometry * [relation holds on the detected boxes]

The geometric term uses the GenEval position rule (``geometry.relation_holds``) and exists only
for predicates that rule knows ("left of", "right of", "above", "below", "larger than",
"smaller than") when a detector is given and found both subjects; otherwise it is dropped and its
weight given to the VLM term, so a relation's score keeps the scale ``w_vlm + w_geometry``.
Depth and support relations ("behind", "on", ...) are judged by the VLM alone. A scene without
relations scores None ("not applicable").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from vrl.geometry import RELATIONS, relation_holds

from .hierarchical_subject import (
    Box,
    OpenVocabDetector,
    VLMYesProbability,
    check_images,
    mean_row_scores,
    scene_of,
    weighted_terms,
)


@dataclass
class RelationRow:
    """One relation of one image, for logging; a None term was not computed."""

    relation: str  # "subject predicate object" in subject ids
    question: str
    vlm: float | None
    geometry: float | None
    boxes: tuple[Box, Box] | None
    score: float


class RelationReward:
    """R_relation as a registry reward over ``sample["scene"]``."""

    def __init__(
        self,
        vlm: VLMYesProbability | None,
        detector: OpenVocabDetector | None = None,
        w_vlm: float = 1.0,
        w_geometry: float = 1.0,
    ):
        if vlm is None and detector is None:
            raise ValueError("RelationReward needs a VLMYesProbability, a detector, or both")
        self.vlm, self.detector = vlm, detector
        self.weights = {"vlm": float(w_vlm), "geometry": float(w_geometry)}
        self.last_breakdown: list[list[RelationRow]] = []

    def breakdown(
        self, images: torch.Tensor, samples: Sequence[Mapping]
    ) -> list[list[RelationRow]]:
        """Per image, one row per relation of its scene (an empty list without relations)."""
        images = check_images(images, samples)
        scenes = [scene_of(s) for s in samples]
        questions = [[q for q in sc.questions() if q.level == "relation"] for sc in scenes]

        vlm: list[list[float | None]] = [[None] * len(qs) for qs in questions]
        if self.vlm is not None:
            flat = [(b, j) for b, qs in enumerate(questions) for j in range(len(qs))]
            if flat:
                probs = self.vlm.prob_yes(
                    [images[b] for b, _ in flat], [questions[b][j].text for b, j in flat]
                ).tolist()
                for (b, j), p in zip(flat, probs, strict=True):
                    vlm[b][j] = p

        boxes: list[dict[str, Box | None]] = [{} for _ in scenes]
        if self.detector is not None:
            # Only subjects taking part in a geometric relation need a box.
            ids = [
                sorted(
                    {s for q in qs if q.target.predicate in RELATIONS for s in q.target.subjects}
                )
                for qs in questions
            ]
            queries = [
                [sc.reference(i) for i in sids] for sc, sids in zip(scenes, ids, strict=True)
            ]
            detections = self.detector.detect(images, queries)
            for b, (sids, dets) in enumerate(zip(ids, detections, strict=True)):
                boxes[b] = {
                    sid: None if d is None else tuple(d[0])
                    for sid, d in zip(sids, dets, strict=True)
                }

        rows: list[list[RelationRow]] = []
        for b, qs in enumerate(questions):
            image_rows = []
            for j, q in enumerate(qs):
                subject, obj = q.target.subjects
                box_a, box_b = boxes[b].get(subject), boxes[b].get(obj)
                geometry = None
                pair = None
                if q.target.predicate in RELATIONS and box_a is not None and box_b is not None:
                    pair = (box_a, box_b)
                    geometry = float(relation_holds(box_a, box_b, q.target.predicate))
                terms = {"vlm": vlm[b][j], "geometry": geometry}
                image_rows.append(
                    RelationRow(
                        relation=f"{subject} {q.target.predicate} {obj}",
                        question=q.text,
                        vlm=vlm[b][j],
                        geometry=geometry,
                        boxes=pair,
                        score=weighted_terms(terms, self.weights),
                    )
                )
            rows.append(image_rows)
        return rows

    def __call__(self, images: torch.Tensor, samples: Sequence[Mapping]) -> list[float | None]:
        """Mean relation score per image; None for a scene without relations."""
        self.last_breakdown = self.breakdown(images, samples)
        return mean_row_scores(self.last_breakdown)

    def __repr__(self) -> str:
        w = self.weights
        return f"RelationReward({w['vlm']} * vlm + {w['geometry']} * geometry)"
