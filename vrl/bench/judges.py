"""Judges: who answers a benchmark's questions about an image, behind one small protocol.

    judge.answer(images, scenes, questions) -> [ {question id: value in [0, 1] or None}, ... ]

one dict per image; `images[i]` (a PIL image) was drawn for `scenes[i]` and is asked
`questions[i]` (its question graph). A value is the judge's probability of "yes" (1.0 / 0.0 for
a judge that only says yes or no); None means "this judge cannot tell" (a detector asked about a
material), and `vrl.bench.scoring` leaves such questions out. Judges by name (`build_judge`):

- ``exact``: the shapes world's checker (`vrl.world.answer_questions`), exact on its renders;
- ``vlm``: a local VLM's probability of "yes" for each question (`VLMYesProbability`);
- ``geometry``: an open-vocabulary detector (OWLv2 or GroundingDINO, by the folder's config
  ``model_type``) for existence and counts, the GenEval position rule and box areas for spatial
  and size relations, and GenEval's CLIP colour classification of the detected boxes when a CLIP
  model is given; None for everything else;
- ``openai``: an OpenAI-compatible chat endpoint answering all questions of an image in one
  request, the GPT-4o-style protocol of the HiCoGen paper (`vrl.bench.judge_openai`).

``a+b`` combines judges: each question takes the first answer that is not None, so
``geometry+vlm`` uses geometry where it applies and the VLM elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vrl.hicogen.scene import Question, Scene

Answers = dict[str, float | None]


class Judge(Protocol):
    name: str

    def answer(
        self,
        images: Sequence[Any],
        scenes: Sequence[Scene],
        questions: Sequence[Sequence[Question]],
    ) -> list[Answers]: ...


def _check_batch(images, scenes, questions) -> None:
    if not len(images) == len(scenes) == len(questions):
        raise ValueError(
            f"{len(images)} images, {len(scenes)} scenes and {len(questions)} question lists"
        )


# ---------------------------------------------------------------------- exact (shapes world)


class ExactJudge:
    """The shapes world's exact checker; questions it does not return are None."""

    name = "exact"

    def __init__(self, answer_fn: Callable[[Scene, Any], dict[str, bool]] | None = None):
        if answer_fn is None:
            from vrl.world import answer_questions as answer_fn
        self.answer_fn = answer_fn

    def answer(self, images, scenes, questions) -> list[Answers]:
        _check_batch(images, scenes, questions)
        out = []
        for image, scene, qs in zip(images, scenes, questions, strict=True):
            try:
                verdicts = self.answer_fn(scene, image)
            except ValueError as err:
                raise ValueError(
                    f"the exact judge checks shapes-world scenes only (--vocab world): {err}"
                ) from None
            out.append({q.id: _as_float(verdicts.get(q.id)) for q in qs})
        return out


def _as_float(value) -> float | None:
    return None if value is None else float(value)


# ---------------------------------------------------------------------- local VLM


class VLMJudge:
    """P(yes) of a local VLM for every question, batched over (image, question) pairs."""

    name = "vlm"

    def __init__(self, vlm):
        self.vlm = vlm  # a vrl.rewards.VLMYesProbability

    @classmethod
    def from_pretrained(cls, path: str, batch_size: int = 8, device: str | None = None):
        from vrl.models.paths import resolve_model_path
        from vrl.models.vlm import VLMAdapter
        from vrl.rewards.hierarchical_subject import VLMYesProbability

        adapter = VLMAdapter.from_pretrained(resolve_model_path(path))
        if device:
            adapter.model.to(device)
        return cls(VLMYesProbability(adapter, batch_size=batch_size))

    def answer(self, images, scenes, questions) -> list[Answers]:
        _check_batch(images, scenes, questions)
        pairs = [(i, q) for i, qs in enumerate(questions) for q in qs]
        probs = (
            self.vlm.prob_yes([images[i] for i, _ in pairs], [q.text for _, q in pairs]).tolist()
            if pairs
            else []
        )
        out: list[Answers] = [{} for _ in images]
        for (i, q), p in zip(pairs, probs, strict=True):
            out[i][q.id] = min(max(float(p), 0.0), 1.0)
        return out


# ---------------------------------------------------------------------- detector geometry


GENEVAL_COLOURS = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
)  # fmt: skip
# GenEval's colour classifier: zero-shot CLIP over these templates, on the detected crop
COLOUR_TEMPLATES = (
    "a photo of a {c} {name}",
    "a photo of a {c}-colored {name}",
    "a photo of a {c} object",
)

Detection = tuple[tuple[float, float, float, float], float]
DetectFn = Callable[[Sequence[Any], Sequence[Sequence[str]]], list[list[list[Detection]]]]


def detections_above(detector, threshold: float) -> DetectFn:
    """All boxes per query scoring at least `threshold`, best first, from an `OpenVocabDetector`
    (OWLv2 or GroundingDINO): its `detect_all`, with GenEval's non-maximum suppression."""

    def detect(images, queries):
        return detector.detect_all([_to_tensor(im) for im in images], queries, threshold)

    return detect


class GeometryJudge:
    """Detector geometry with GenEval's rules.

    - existence: a subject with count None or 1 exists when the detector finds at least one box
      for its reference phrase ("red cup"); a count n > 1 needs exactly n boxes at
      `counting_threshold` (GenEval: include >= n and exclude n + 1);
    - spatial relations (left of, right of, above, below): the GenEval position rule between
      every box of the subject and every box of the object (the top `count` of each);
    - size relations: the areas of the best boxes (`vrl.geometry.size_relations`);
    - colours (GenEval's ten): with `clip`, each box of the subject is classified zero-shot among
      the ten colours (GenEval's templates) and must come out as the asked colour;
    - anything else (materials, parts, depth and support relations): None.
    """

    name = "geometry"

    def __init__(
        self,
        detect: DetectFn,
        *,
        counting_detect: DetectFn | None = None,
        clip=None,
    ):
        self.detect = detect
        self.counting_detect = counting_detect or detect
        self.clip = clip  # a vrl.rewards.hierarchical_global.OpenCLIPScorer, or None
        self.detector = None  # the OpenVocabDetector behind `detect`, when built from one
        self._colour_text: dict[str, Any] = {}

    @classmethod
    def from_detector(
        cls, detector, threshold: float = 0.1, counting_threshold: float | None = None, clip=None
    ):
        counting = (
            None if counting_threshold is None else detections_above(detector, counting_threshold)
        )
        judge = cls(detections_above(detector, threshold), counting_detect=counting, clip=clip)
        judge.detector = detector
        return judge

    def answer(self, images, scenes, questions) -> list[Answers]:
        from vrl.geometry import POSITION_RELATIONS, SIZE_RELATIONS, relation_holds

        _check_batch(images, scenes, questions)
        subject_ids = [[s.id for s in sc.subjects] for sc in scenes]
        queries = [
            [sc.reference(sid) for sid in ids] for sc, ids in zip(scenes, subject_ids, strict=True)
        ]
        found = self.detect(images, queries)
        counted = (
            found if self.counting_detect is self.detect else self.counting_detect(images, queries)
        )
        out: list[Answers] = []
        for b, (scene, qs) in enumerate(zip(scenes, questions, strict=True)):
            boxes, count_boxes = {}, {}
            for k, sid in enumerate(subject_ids[b]):
                n = scene.subject(sid).count or 1
                boxes[sid] = [box for box, _ in found[b][k]][:n]
                count_boxes[sid] = counted[b][k]
            answers: Answers = {}
            for q in qs:
                t = q.target
                if q.level == "exist":
                    sid = t.subjects[0]
                    n = t.count or 1
                    ok = len(boxes[sid]) >= 1 if n == 1 else len(count_boxes[sid]) == n
                    answers[q.id] = float(ok)
                elif q.level == "relation":
                    a, o = (boxes[s] for s in t.subjects)
                    if t.predicate in POSITION_RELATIONS:
                        ok = bool(a and o) and all(
                            relation_holds(x, y, t.predicate) for x in a for y in o
                        )
                        answers[q.id] = float(ok)
                    elif t.predicate in SIZE_RELATIONS:
                        ok = bool(a and o) and relation_holds(a[0], o[0], t.predicate)
                        answers[q.id] = float(ok)
                    else:
                        answers[q.id] = None
                elif self.clip is not None and t.attribute in GENEVAL_COLOURS:
                    sid = t.subjects[0]
                    colours = self._classify_colours(images[b], boxes[sid], scene.subject(sid).name)
                    answers[q.id] = float(bool(colours) and all(c == t.attribute for c in colours))
                else:
                    answers[q.id] = None
            out.append(answers)
        return out

    def _classify_colours(self, image, boxes, name: str) -> list[str]:
        """GenEval's colour classifier: CLIP zero-shot over the ten colours, one per box."""
        import torch

        from vrl.rewards.hierarchical_subject import crop

        if not boxes:
            return []
        clip = self.clip
        if name not in self._colour_text:
            with torch.no_grad():
                texts = [
                    t.format(c=c, name=name) for c in GENEVAL_COLOURS for t in COLOUR_TEMPLATES
                ]
                tokens = clip.tokenizer(texts).to(clip.device)
                emb = clip.model.encode_text(tokens, normalize=True).float()  # (10 * 3, D)
                emb = emb.view(len(GENEVAL_COLOURS), len(COLOUR_TEMPLATES), -1).mean(1)
                self._colour_text[name] = torch.nn.functional.normalize(emb, dim=-1)  # (10, D)
        tensor = _to_tensor(image)
        colours = []
        with torch.no_grad():
            for box in boxes:
                pixels = clip.preprocess(crop(tensor, box)[None]).to(clip.device)
                dtype = next(clip.model.parameters()).dtype
                feat = clip.model.encode_image(pixels.to(dtype), normalize=True).float()  # (1, D)
                colours.append(GENEVAL_COLOURS[int((feat @ self._colour_text[name].T).argmax())])
        return colours


def _to_tensor(image):
    """PIL image or (3, H, W) tensor -> (3, H, W) float tensor in [0, 1]."""
    import torch

    if isinstance(image, torch.Tensor):
        return image.float()
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(image.convert("RGB")).float() / 255.0


# ---------------------------------------------------------------------- combination


@dataclass
class FirstAnswerJudge:
    """Several judges; each question takes the first answer that is not None, in order."""

    judges: list[Any]

    @property
    def name(self) -> str:
        return "+".join(j.name for j in self.judges)

    def answer(self, images, scenes, questions) -> list[Answers]:
        _check_batch(images, scenes, questions)
        merged: list[Answers] = [{q.id: None for q in qs} for qs in questions]
        pending = [list(qs) for qs in questions]
        for judge in self.judges:
            todo = [i for i, qs in enumerate(pending) if qs]
            if not todo:
                break
            answers = judge.answer(
                [images[i] for i in todo], [scenes[i] for i in todo], [pending[i] for i in todo]
            )
            for i, ans in zip(todo, answers, strict=True):
                for qid, value in ans.items():
                    if value is not None and merged[i].get(qid, 0) is None:
                        merged[i][qid] = value
                pending[i] = [q for q in pending[i] if merged[i][q.id] is None]
        return merged


# ---------------------------------------------------------------------- by name


JUDGE_NAMES = ("exact", "vlm", "geometry", "openai")


@dataclass
class JudgeOptions:
    """What the judges are built from; each field is used by the judges that need it."""

    vlm: str | None = None
    """VLM folder or tiny-random:qwen2_5_vl, for "vlm"."""
    vlm_batch_size: int = 8
    detector: str | None = None
    """OWLv2 or GroundingDINO folder (by its config's model_type) or tiny-random:owlv2 /
    tiny-random:grounding_dino, for "geometry"."""
    detection_threshold: float = 0.1
    counting_threshold: float | None = None
    colour_clip: Any = None
    """An OpenCLIPScorer for GenEval's colour rule in "geometry" (None: colours not judged)."""
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o"
    openai_api_key: str | None = None
    device: str | None = None


def load_detector(path: str, device: str | None = None):
    """The geometry judge's detector: OWLv2 or GroundingDINO by the folder's config `model_type`
    (`tiny-random:owlv2` / `tiny-random:grounding_dino`: tiny random ones, built offline)."""
    from vrl.rewards.hierarchical_detectors import load_detector as load

    return load(path, device=device, field="--detector")


def build_judge(spec: str, options: JudgeOptions | None = None):
    """A judge from its name, or several joined by "+" (see `FirstAnswerJudge`)."""
    options = options or JudgeOptions()
    names = [n.strip() for n in spec.split("+") if n.strip()]
    unknown = [n for n in names if n not in JUDGE_NAMES]
    if unknown or not names:
        raise ValueError(f"unknown judge {spec!r}; valid: {', '.join(JUDGE_NAMES)} (join with '+')")
    judges = [_build_one(n, options) for n in names]
    return judges[0] if len(judges) == 1 else FirstAnswerJudge(judges)


def _build_one(name: str, o: JudgeOptions):
    if name == "exact":
        return ExactJudge()
    if name == "vlm":
        if not o.vlm:
            raise ValueError("the vlm judge needs a model: --vlm PATH (or tiny-random:qwen2_5_vl)")
        return VLMJudge.from_pretrained(o.vlm, batch_size=o.vlm_batch_size, device=o.device)
    if name == "geometry":
        if not o.detector:
            raise ValueError(
                "the geometry judge needs a detector: --detector PATH (OWLv2 or GroundingDINO)"
            )
        return GeometryJudge.from_detector(
            load_detector(o.detector, o.device),
            threshold=o.detection_threshold,
            counting_threshold=o.counting_threshold,
            clip=o.colour_clip,
        )
    from vrl.bench.judge_openai import OpenAIJudge

    if not o.openai_base_url:
        raise ValueError("the openai judge needs --openai-base-url (an OpenAI-compatible API)")
    return OpenAIJudge(o.openai_base_url, o.openai_model, api_key=o.openai_api_key)
