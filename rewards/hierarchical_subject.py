"""Subject level of the HiCoGen hierarchical reward, and the three models it is built from.

R_subject(image) = mean over the scene's subjects of

    w_dino * cos(DINOv2(crop), DINOv2(reference unit image)) + w_vlm * VLM attribute check

where the crop comes from an open-vocabulary detector (GroundingDINO as in the paper, or OWLv2;
``hierarchical_detectors``) queried with the subject's reference phrase, and the VLM check is the
mean yes-probability of the subject's attribute questions from ``Scene.questions()``.

Choices the paper leaves open, made here:

- A term that cannot be computed for a subject (no reference image for it, or no VLM) is dropped
  and its weight given to the other term, so the score keeps the scale ``w_dino + w_vlm``.
- A subject without attribute questions is checked with its existence question instead.
- The VLM reads the whole image (the question names the subject), not the crop: a missed or wrong
  detection then spoils only the DINO term.
- A subject the detector does not find (score below its threshold) gets DINO term 0; without a
  detector the crop is the whole image.

The models are loaded once, run without gradients and in eval mode; heavy imports happen inside
the constructors, so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vrl.hicogen.scene import Scene

from .hierarchical_detectors import Box, Detection, OpenVocabDetector  # noqa: F401  (re-exported)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
YES_NO_SUFFIX = " Answer yes or no."


# ---------------------------------------------------------------------- DINOv2


class DinoSimilarity:
    """Cosine similarity of DINOv2 CLS embeddings (resizing and ImageNet normalisation inside)."""

    def __init__(self, model, *, image_size: int | None = None):
        self.model = model.eval().requires_grad_(False)
        # Real DINOv2 configs say 518 (the positional grid); 224 is what its processor feeds.
        self.image_size = int(image_size or model.config.image_size)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, image_size: int = 224, dtype=torch.float32
    ) -> DinoSimilarity:
        from transformers import Dinov2Model

        return cls(Dinov2Model.from_pretrained(path, dtype=dtype), image_size=image_size)

    @classmethod
    def from_config(cls, seed: int = 0, **config: Any) -> DinoSimilarity:
        from transformers import Dinov2Config, Dinov2Model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Dinov2Model(Dinov2Config(**config))
        return cls(model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        batch = torch.stack(
            [
                F.interpolate(c.detach().float()[None], size=size, mode="bilinear", antialias=True)[
                    0
                ]
                for c in crops
            ]
        )  # (N, 3, S, S)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return ((batch.cpu().clamp(0, 1) - mean) / std).to(self.device)

    @torch.no_grad()
    def embed(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N, D) CLS embeddings of (3, h, w) images in [0, 1]."""
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=self.preprocess(crops).to(dtype))
        return out.last_hidden_state[:, 0].float()

    def similarity(
        self, crops: Sequence[torch.Tensor], references: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """(N,) cosine between ``crops[i]`` and ``references[i]``, one forward for both lists."""
        if len(crops) != len(references):
            raise ValueError(f"{len(crops)} crops but {len(references)} references")
        if not crops:
            return torch.zeros(0)
        emb = self.embed(list(crops) + list(references))  # (2N, D)
        n = len(crops)
        return F.cosine_similarity(emb[:n], emb[n:], dim=-1).cpu()


# ---------------------------------------------------------------------- VLM yes/no


class VLMYesProbability:
    """P(yes) of a VLM for yes/no questions, from one forward pass (no generation).

    The prompt is the chat-templated user turn ``[image] "<question> Answer yes or no."`` with the
    assistant turn opened. P(yes) = softmax over the two next-token logits of "yes" and "no". The
    ids are those of "yes"/"no" without a leading space when the tokenizer has them as single
    tokens (an answer starts right after the assistant header), else " yes"/" no"; otherwise the
    first token of each word, which must differ.
    """

    def __init__(self, adapter, model=None, *, batch_size: int | None = None):
        self.adapter = adapter
        self.model = (model if model is not None else adapter.model).eval()
        self.batch_size = batch_size
        self.yes_id = _answer_token(adapter.tokenizer, "yes")
        self.no_id = _answer_token(adapter.tokenizer, "no")
        if self.yes_id == self.no_id:
            raise ValueError("'yes' and 'no' map to the same first token; cannot score yes/no")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def prob_yes(
        self, images: torch.Tensor | Sequence[Any], questions: Sequence[str]
    ) -> torch.Tensor:
        """(B,) P(yes) for image i and question i; images (B, 3, H, W) in [0, 1] or PIL images."""
        pil = [_to_pil(img) for img in images]
        if len(pil) != len(questions):
            raise ValueError(f"{len(pil)} images but {len(questions)} questions")
        step = self.batch_size or max(len(pil), 1)
        probs = [
            self._forward(pil[start : start + step], questions[start : start + step])
            for start in range(0, len(pil), step)
        ]
        return torch.cat(probs) if probs else torch.zeros(0)

    def _forward(self, images: list, questions: Sequence[str]) -> torch.Tensor:
        messages = [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image"},
                        {"type": "text", "text": f"{q}{YES_NO_SUFFIX}"},
                    ],
                }
            ]
            for q in questions
        ]
        batch = self.adapter.prepare_inputs(messages, [[img] for img in images]).to(self.device)
        logits = self.model(**batch.model_inputs).logits[:, -1].float()  # (B, V), left-padded
        pair = logits[:, [self.yes_id, self.no_id]]  # (B, 2)
        return pair.softmax(dim=-1)[:, 0].cpu()


def _answer_token(tokenizer, word: str) -> int:
    for text in (word, " " + word):
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) == 1:
            return ids[0]
    return tokenizer.encode(word, add_special_tokens=False)[0]


def _to_pil(image: Any):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError("VLM images are (3, H, W) tensors in [0, 1] or PIL images")
    array = (image.detach().float().cpu().clamp(0, 1) * 255).round().byte()
    return Image.fromarray(array.permute(1, 2, 0).numpy())


# ---------------------------------------------------------------------- subject reward


@dataclass
class SubjectRow:
    """One subject of one image, for logging; a None term was not computed."""

    subject: str
    detection_score: float | None
    box: Box | None
    dino: float | None
    vlm: float | None
    score: float


def scene_of(sample: Mapping[str, Any]) -> Scene:
    """``sample["scene"]`` as a Scene (it may also be the scene's JSON string or dict)."""
    try:
        scene = sample["scene"]
    except KeyError:
        raise KeyError("hierarchical rewards read sample['scene']; a sample has none") from None
    return scene if isinstance(scene, Scene) else Scene.from_json(scene)


def check_images(images: torch.Tensor, samples: Sequence[Any]) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"image rewards take a (B, 3, H, W) tensor in [0, 1], got {shape}")
    if len(samples) != len(images):
        raise ValueError(f"{len(images)} images but {len(samples)} samples")
    return images.float()


def crop(image: torch.Tensor, box: Box) -> torch.Tensor:
    """The (3, h, w) region of ``image`` under ``box``, at least one pixel each way."""
    height, width = image.shape[-2:]
    x1 = min(max(int(box[0]), 0), width - 1)
    y1 = min(max(int(box[1]), 0), height - 1)
    x2 = max(min(int(round(box[2])), width), x1 + 1)
    y2 = max(min(int(round(box[3])), height), y1 + 1)
    return image[:, y1:y2, x1:x2]


def weighted_terms(terms: Mapping[str, float | None], weights: Mapping[str, float]) -> float:
    """sum_k w_k * s_k over the terms present, rescaled so that it keeps the scale sum_k w_k."""
    present = {k: v for k, v in terms.items() if v is not None}
    if not present:
        return 0.0
    w_present = sum(weights[k] for k in present)
    if w_present == 0:
        return 0.0
    scale = sum(weights.values()) / w_present
    return scale * sum(weights[k] * v for k, v in present.items())


def mean_row_scores(rows_per_image: Sequence[Sequence[Any]]) -> list[float | None]:
    """Mean of the rows' `.score` per image; None for an image with no rows (nothing to judge)."""
    return [sum(r.score for r in rows) / len(rows) if rows else None for rows in rows_per_image]


class SubjectReward:
    """R_subject as a registry reward over ``sample["scene"]`` and ``sample["references"]``.

    ``sample["references"]`` (optional) maps subject ids to reference unit images (3, h, w) in
    [0, 1], e.g. the chain of synthesis's unit images. ``detector``, ``dino`` or ``vlm`` may be
    None: their term is then dropped (see the module docstring).
    """

    def __init__(
        self,
        detector: OpenVocabDetector | None,
        dino: DinoSimilarity | None,
        vlm: VLMYesProbability | None,
        w_dino: float = 1.0,
        w_vlm: float = 1.0,
    ):
        if dino is None and vlm is None:
            raise ValueError("SubjectReward needs a DinoSimilarity, a VLMYesProbability, or both")
        self.detector, self.dino, self.vlm = detector, dino, vlm
        self.weights = {"dino": float(w_dino), "vlm": float(w_vlm)}
        self.last_breakdown: list[list[SubjectRow]] = []

    def breakdown(self, images: torch.Tensor, samples: Sequence[Mapping]) -> list[list[SubjectRow]]:
        """Per image, one row per subject of its scene."""
        images = check_images(images, samples)
        scenes = [scene_of(s) for s in samples]
        subject_ids = [[s.id for s in scene.subjects] for scene in scenes]

        # Detection: one query per subject (its reference phrase disambiguates shared names).
        if self.detector is not None:
            queries = [
                [sc.reference(i) for i in ids] for sc, ids in zip(scenes, subject_ids, strict=True)
            ]
            detections = self.detector.detect(images, queries)
        else:
            height, width = images.shape[-2:]
            whole = ((0.0, 0.0, float(width), float(height)), 1.0)
            detections = [[whole] * len(ids) for ids in subject_ids]

        # DINO: every (crop, reference) pair of the batch in one call.
        dino: dict[tuple[int, str], float] = {}
        if self.dino is not None:
            keys, crops, refs = [], [], []
            for b, sample in enumerate(samples):
                references = sample.get("references") or {}
                for sid, det in zip(subject_ids[b], detections[b], strict=True):
                    if sid not in references:
                        continue
                    if det is None:  # detector found nothing: nothing looks like the reference
                        dino[(b, sid)] = 0.0
                        continue
                    keys.append((b, sid))
                    crops.append(crop(images[b], det[0]))
                    refs.append(torch.as_tensor(references[sid]).float())
            for key, cos in zip(keys, self.dino.similarity(crops, refs).tolist(), strict=True):
                dino[key] = cos

        # VLM: every attribute question (or the existence question) of the batch in one call.
        vlm: dict[tuple[int, str], float] = {}
        if self.vlm is not None:
            keys, qimages, texts = [], [], []
            for b, scene in enumerate(scenes):
                for sid, questions in _subject_questions(scene).items():
                    for q in questions:
                        keys.append((b, sid))
                        qimages.append(images[b])
                        texts.append(q)
            probs = self.vlm.prob_yes(qimages, texts).tolist() if texts else []
            sums: dict[tuple[int, str], list[float]] = {}
            for key, p in zip(keys, probs, strict=True):
                sums.setdefault(key, []).append(p)
            vlm = {key: sum(ps) / len(ps) for key, ps in sums.items()}

        rows: list[list[SubjectRow]] = []
        for b in range(len(samples)):
            image_rows = []
            for sid, det in zip(subject_ids[b], detections[b], strict=True):
                terms = {"dino": dino.get((b, sid)), "vlm": vlm.get((b, sid))}
                image_rows.append(
                    SubjectRow(
                        subject=sid,
                        detection_score=None if det is None else det[1],
                        box=None if det is None else tuple(det[0]),
                        dino=terms["dino"],
                        vlm=terms["vlm"],
                        score=weighted_terms(terms, self.weights),
                    )
                )
            rows.append(image_rows)
        return rows

    def __call__(self, images: torch.Tensor, samples: Sequence[Mapping]) -> list[float | None]:
        """Mean subject score per image (None for a scene without subjects)."""
        self.last_breakdown = self.breakdown(images, samples)
        return mean_row_scores(self.last_breakdown)

    def __repr__(self) -> str:
        w = self.weights
        return f"SubjectReward({w['dino']} * dino + {w['vlm']} * vlm)"


def _subject_questions(scene: Scene) -> dict[str, list[str]]:
    """Attribute questions per subject id; the existence question for a subject without any."""
    exist: dict[str, str] = {}
    attributes: dict[str, list[str]] = {s.id: [] for s in scene.subjects}
    for q in scene.questions():
        if q.level == "exist":
            exist[q.target.subjects[0]] = q.text
        elif q.level == "attribute":
            attributes[q.target.subjects[0]].append(q.text)
    return {sid: texts or [exist[sid]] for sid, texts in attributes.items()}
