"""Open-vocabulary detectors: one interface, two models (OWLv2 and GroundingDINO).

The subject and relation levels of the hierarchical reward take one box per subject phrase
(``detect``); ``vrl bench``'s geometry judge takes every box above a threshold (``detect_all``).
Both are written once, in ``OpenVocabDetector``, over what each model gives for a batch:

    candidates(images, queries) -> per image (scores (N, Q), boxes (N, 4))

N candidate boxes in the image's own pixels (x1, y1, x2, y2, inside the image) and each box's
score for each of the image's Q query phrases; ``-inf`` where a box does not belong to a phrase.

- ``owlv2`` (``Owlv2ForObjectDetection``): one box per image patch, scored against every query
  (sigmoid of its logit); OWLv2 pads the image to a square at the bottom / right, so one scale
  maps its boxes back to pixels.
- ``grounding_dino`` (``GroundingDinoForObjectDetection``): the phrases go in as one lower-case
  text, each ending with "." ("a red cube. a blue ball."); ``post_process_grounded_object_
  detection`` gives every query slot's box in original pixels. A box belongs to the one phrase
  holding its most probable token (the tokens between two delimiters, [CLS] / [SEP] / "." / "?",
  are a phrase, as the model itself splits them) and scores that token's probability; with a
  ``text_threshold`` that probability must reach it too (the phrase would appear in the
  post-processing's text label). ``box_threshold`` is the detector's threshold.

``load_detector`` picks the implementation: ``kind`` when given, else the checkpoint's config
``model_type`` (``owlv2`` / ``grounding-dino``). ``tiny-random`` is the tiny random OWLv2 built in
memory (``tiny-random:owlv2`` likewise); ``tiny-random:grounding_dino`` a tiny random GroundingDINO
built once into the cache and loaded from its folder like a real checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

Box = tuple[float, float, float, float]
"""(x1, y1, x2, y2) in the input image's pixels."""
Detection = tuple[Box, float] | None
"""Best box for one query and its score, or None when none reaches the threshold."""

TINY = "tiny-random"
MODEL_TYPES = {"owlv2": "owlv2", "grounding-dino": "grounding_dino"}
"""A checkpoint's config ``model_type`` -> detector kind."""
DETECTOR_KINDS = ("owlv2", "grounding_dino")
OPTIONS = {
    "owlv2": ("threshold", "dtype"),
    "grounding_dino": ("box_threshold", "text_threshold", "dtype"),
}
"""Options of each kind's ``from_pretrained``, as a config entry names them."""

# The tiny random OWLv2 (`tiny-random`, `tiny-random:owlv2`): one layer each, built in ~1 s.
TINY_OWL_VISION = {
    "image_size": 64,
    "patch_size": 16,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}
TINY_OWL_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "max_position_embeddings": 16,
}


class OpenVocabDetector:
    """A detector queried with text phrases; subclasses give ``candidates``.

    ``detect`` returns, for each image and each of its queries, the highest-scoring box and its
    score. With ``threshold=None`` (default) the best box is returned whatever its score; with a
    threshold, queries whose best score is below it give None (as do queries no box belongs to).
    """

    kind = ""

    def __init__(self, model, processor, *, threshold: float | None = None):
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.threshold = threshold

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def candidates(
        self, images: list[torch.Tensor], queries: list[list[str]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image (each with at least one query): scores (N, Q) and boxes (N, 4), on the CPU."""
        raise NotImplementedError

    def _candidates(self, images, queries) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        images = list(images)
        if len(images) != len(queries):
            raise ValueError(f"{len(images)} images but {len(queries)} query lists")
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(images)
        todo = [i for i, q in enumerate(queries) if len(q) > 0]
        if todo:
            found = self.candidates(
                [images[i].detach().float().cpu().clamp(0, 1) for i in todo],
                [list(queries[i]) for i in todo],
            )
            for i, pair in zip(todo, found, strict=True):
                out[i] = pair
        return out

    @torch.no_grad()
    def detect(
        self, images: torch.Tensor | Sequence[torch.Tensor], queries: Sequence[Sequence[str]]
    ) -> list[list[Detection]]:
        """Best box per query; ``images`` (B, 3, H, W) or a list of (3, H, W), values in [0, 1]."""
        results: list[list[Detection]] = [[] for _ in queries]
        for i, found in enumerate(self._candidates(images, queries)):
            if found is None:
                continue
            scores, boxes = found
            for q in range(len(queries[i])):
                best, n = scores[:, q].max(dim=0)
                score = best.item()
                if score == float("-inf") or (
                    self.threshold is not None and score < self.threshold
                ):
                    results[i].append(None)
                else:
                    results[i].append((tuple(boxes[n].tolist()), score))
        return results

    @torch.no_grad()
    def detect_all(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        queries: Sequence[Sequence[str]],
        threshold: float,
        nms_iou: float = 0.5,
        max_objects: int = 16,
    ) -> list[list[list[tuple[Box, float]]]]:
        """Every box per query scoring at least ``threshold``, best first, after non-maximum
        suppression at ``nms_iou``, at most ``max_objects`` per query (GenEval's counting)."""
        from torchvision.ops import nms

        results: list[list[list[tuple[Box, float]]]] = [[[] for _ in q] for q in queries]
        for i, found in enumerate(self._candidates(images, queries)):
            if found is None:
                continue
            scores, boxes = found
            for q in range(len(queries[i])):
                s = scores[:, q]
                keep = ((s >= threshold) & s.isfinite()).nonzero().flatten()
                if len(keep) == 0:
                    continue
                kept = keep[nms(boxes[keep], s[keep], nms_iou)][:max_objects]  # best first
                results[i][q] = [(tuple(boxes[k].tolist()), float(s[k])) for k in kept]
        return results


def _clamp_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(
        [x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)], dim=-1
    )


# ---------------------------------------------------------------------- OWLv2


class Owlv2Detector(OpenVocabDetector):
    """OWLv2 through ``transformers``: every patch's box, scored against every query."""

    kind = "owlv2"

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, threshold: float | None = None, dtype=torch.float32
    ) -> Owlv2Detector:
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        model = Owlv2ForObjectDetection.from_pretrained(path, dtype=dtype)
        return cls(model, Owlv2Processor.from_pretrained(path), threshold=threshold)

    @classmethod
    def from_config(
        cls,
        vision: Mapping[str, Any] = TINY_OWL_VISION,
        text: Mapping[str, Any] = TINY_OWL_TEXT,
        *,
        projection_dim: int = 32,
        threshold: float | None = None,
        seed: int = 0,
    ) -> Owlv2Detector:
        """A random OWLv2 with a CLIP tokenizer built offline (open_clip's packaged BPE)."""
        from transformers import (
            Owlv2Config,
            Owlv2ForObjectDetection,
            Owlv2ImageProcessor,
            Owlv2Processor,
        )

        from vrl.models.tiny_diffusion import build_clip_tokenizer

        max_length = int(text.get("max_position_embeddings", 16))
        tokenizer = build_clip_tokenizer(model_max_length=max_length)
        text = {
            "vocab_size": len(tokenizer),
            "max_position_embeddings": max_length,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            **text,
        }
        config = Owlv2Config(
            text_config=text, vision_config=dict(vision), projection_dim=projection_dim
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Owlv2ForObjectDetection(config)
        size = config.vision_config.image_size
        image_processor = Owlv2ImageProcessor(size={"height": size, "width": size})
        processor = Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer)
        return cls(model, processor, threshold=threshold)

    def candidates(self, images, queries):
        inputs = self.processor(text=queries, images=images, return_tensors="pt", do_rescale=False)
        out = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        scores = out.logits.float().sigmoid().cpu()  # (B, patches, max queries)
        boxes = out.pred_boxes.float().cpu()  # (B, patches, 4) cx, cy, w, h of the padded square
        found = []
        for row, (image, qs) in enumerate(zip(images, queries, strict=True)):
            height, width = image.shape[-2:]
            # OWLv2 pads the image to a square at the bottom/right: one scale for both axes.
            cx, cy, w, h = (boxes[row] * float(max(height, width))).unbind(-1)
            xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
            found.append((scores[row, :, : len(qs)], _clamp_boxes(xyxy, height, width)))
        return found


# ---------------------------------------------------------------------- GroundingDINO


def grounding_text(phrases: Sequence[str]) -> str:
    """GroundingDINO's query: lower-case phrases, each ending with "." ("a cat. a dog.").

    A phrase's own "." or "?" (the model's delimiters) become spaces; an empty phrase "object".
    """
    clean = [" ".join(p.lower().replace(".", " ").replace("?", " ").split()) for p in phrases]
    return " ".join(f"{p or 'object'}." for p in clean)


def phrase_of_tokens(input_ids: Sequence[int], delimiters: set[int]) -> list[int]:
    """For each token, the index of the phrase it belongs to; -1 for delimiters and padding."""
    out, phrase, inside = [], 0, False
    for token in input_ids:
        if token in delimiters:
            phrase += inside
            inside = False
            out.append(-1)
        else:
            inside = True
            out.append(phrase)
    return out


class GroundingDinoDetector(OpenVocabDetector):
    """GroundingDINO through ``transformers``: every query slot's box, given to one phrase."""

    kind = "grounding_dino"

    def __init__(
        self,
        model,
        processor,
        *,
        box_threshold: float | None = None,
        text_threshold: float | None = None,
    ):
        super().__init__(model, processor, threshold=box_threshold)
        self.text_threshold = text_threshold
        tok = processor.tokenizer
        ids = [tok.cls_token_id, tok.sep_token_id, tok.pad_token_id]
        ids += tok.convert_tokens_to_ids([".", "?"])
        self.delimiters = {int(i) for i in ids if i is not None and i != tok.unk_token_id}

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        box_threshold: float | None = None,
        text_threshold: float | None = None,
        dtype=torch.float32,
    ) -> GroundingDinoDetector:
        from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

        model = GroundingDinoForObjectDetection.from_pretrained(path, dtype=dtype)
        processor = GroundingDinoProcessor.from_pretrained(path)
        return cls(model, processor, box_threshold=box_threshold, text_threshold=text_threshold)

    def candidates(self, images, queries):
        inputs = self.processor(
            images=images,
            text=[grounding_text(qs) for qs in queries],
            return_tensors="pt",
            do_rescale=False,
            padding="longest",
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        out = self.model(**inputs)
        sizes = [tuple(image.shape[-2:]) for image in images]
        # threshold -1 keeps every query slot, in order (text_threshold 1: no labels to decode)
        posts = self.processor.post_process_grounded_object_detection(
            out, inputs["input_ids"], threshold=-1.0, text_threshold=1.0, target_sizes=sizes
        )
        probs = out.logits.float().sigmoid().cpu()  # (B, N, max_text_len), 0 past the text
        input_ids = inputs["input_ids"].cpu().tolist()
        found = []
        for row, (qs, post) in enumerate(zip(queries, posts, strict=True)):
            owner = torch.tensor(phrase_of_tokens(input_ids[row], self.delimiters))
            owner = owner[: probs.shape[-1]]  # the model reads at most max_text_len tokens
            p = probs[row, :, : len(owner)]  # (N, T)
            per_phrase = torch.full((p.shape[0], len(qs)), float("-inf"))
            for k in range(len(qs)):
                tokens = owner == k
                if tokens.any():
                    per_phrase[:, k] = p[:, tokens].max(dim=-1).values
            best, phrase = per_phrase.max(dim=-1)  # (N,): each box goes to one phrase
            scores = torch.full_like(per_phrase, float("-inf"))
            scores[torch.arange(len(best)), phrase] = best
            if self.text_threshold is not None:
                scores[scores < self.text_threshold] = float("-inf")
            height, width = sizes[row]
            boxes = _clamp_boxes(post["boxes"].float().cpu(), height, width)
            found.append((scores, boxes))
        return found


# ---------------------------------------------------------------------- by config

DETECTORS: dict[str, type[OpenVocabDetector]] = {
    "owlv2": Owlv2Detector,
    "grounding_dino": GroundingDinoDetector,
}


def check_detector_entry(entry: Mapping[str, Any], field: str) -> None:
    """Validate a detector's config entry ({path, kind, options}) without loading anything."""
    kind = entry.get("kind")
    if kind is not None and kind not in DETECTOR_KINDS:
        raise ValueError(
            f"{field}.kind: {kind!r} is not a detector; valid: {', '.join(DETECTOR_KINDS)}"
        )
    path = str(entry.get("path") or "")
    if path.startswith(TINY + ":"):
        tiny = path.removeprefix(TINY + ":")
        if tiny not in DETECTOR_KINDS:
            raise ValueError(
                f"{field}.path: {path!r} is no tiny detector; valid: "
                + ", ".join(f"{TINY}:{k}" for k in DETECTOR_KINDS)
            )
        if kind is not None and kind != tiny:
            raise ValueError(f"{field}.kind: {kind!r} but path is {path!r}")
        kind = tiny
    kinds = [kind] if kind else list(DETECTOR_KINDS)
    valid = ["path", "kind", *dict.fromkeys(o for k in kinds for o in OPTIONS[k])]
    for key in entry:
        if key not in valid:
            raise ValueError(
                f"{field}.{key}: not an option of the {kind or 'owlv2 or grounding_dino'} "
                f"detector; valid: {', '.join(valid)}"
            )


def detector_kind(path: str | Path, field: str = "detector") -> str:
    """The detector kind of a checkpoint, from its config's ``model_type``."""
    path = str(path)
    if path == TINY:
        return "owlv2"
    if path.startswith(TINY + ":"):
        return path.removeprefix(TINY + ":")
    config = Path(path) / "config.json"
    if config.is_file():
        model_type = json.loads(config.read_text()).get("model_type")
    else:  # a hub id: its config, as from_pretrained would read it
        from transformers import AutoConfig

        model_type = AutoConfig.from_pretrained(path).model_type
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"{field}: {path} is a {model_type!r} checkpoint; detectors: "
            + ", ".join(f"{t} ({k})" for t, k in MODEL_TYPES.items())
        )
    return MODEL_TYPES[model_type]


def load_detector(
    path: str | Path,
    *,
    kind: str | None = None,
    device: str | torch.device | None = None,
    field: str = "detector",
    **options: Any,
) -> OpenVocabDetector:
    """The detector at ``path`` (a folder, a hub id or ``tiny-random[:kind]``) as ``kind``
    (default: the checkpoint's ``model_type``), with its options (``OPTIONS``)."""
    path = str(path)
    if path == TINY and kind is not None:
        path = f"{TINY}:{kind}"
    check_detector_entry({"path": path, "kind": kind, **options}, field)
    found = detector_kind(path, field)
    if kind is not None and kind != found:
        raise ValueError(f"{field}.kind: {kind!r} but {path} is a {found} checkpoint")
    check_detector_entry({"kind": found, **options}, field)  # the options of the kind found
    if path in (TINY, f"{TINY}:owlv2"):
        options.pop("dtype", None)
        detector = Owlv2Detector.from_config(TINY_OWL_VISION, TINY_OWL_TEXT, **options)
    else:
        from vrl.models.paths import resolve_detector_path

        detector = DETECTORS[found].from_pretrained(resolve_detector_path(path), **options)
    if device is not None:
        detector.model.to(device)
    return detector
