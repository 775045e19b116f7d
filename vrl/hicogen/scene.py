"""One scene schema for hierarchical prompts: decomposition, rewards, benchmark and demo share it.

A `Scene` is the structured form of a complex prompt (docs/algorithms.md §5.1): a global part
(description, background, style), subjects with attributes and sub-attributes, pairwise relations,
and the ordered synthesis units of the chain of synthesis. Everything is a frozen dataclass so a
scene can be hashed, cached and compared; `to_json` / `from_json` round-trip exactly, and
`from_json` is the single validation gate: every problem is reported with its field path
(`relations[0].object: unknown subject id 'cup'`) so an LLM can be told exactly what to fix.

The same structure renders the text prompts (`prompt`, `unit_prompt`) and the DSG-style evaluation
questions (`questions`), so a prompt and the questions that grade it can never disagree.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from vrl.hicogen.phrasing import (
    INVERSE_PREDICATES,
    NUMBER_WORDS,
    PREDICATE_CATEGORIES,
    PREDICATE_PHRASES,
    RelationCategory,
    article,
    join_list,
    normalize_predicate,
    plural,
    predicate_category,
    sub_attribute_phrase,
)

__all__ = [
    "PREDICATE_CATEGORIES",
    "Question",
    "QuestionTarget",
    "Relation",
    "Scene",
    "SceneValidationError",
    "UNIT_PROMPT_FORMS",
    "Subject",
    "SynthesisUnit",
    "normalize_predicate",
    "predicate_category",
]

UNIT_PROMPT_FORMS: tuple[str, ...] = ("own", "relational", "cumulative")
"""How a chain's unit prompts name the scene (`Scene.unit_prompt`)."""

QuestionLevel = Literal["exist", "attribute", "relation"]


class SceneValidationError(ValueError):
    """Raised by `Scene.from_json`; `errors` lists every problem as "field.path: message"."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("invalid scene:\n" + "\n".join(f"  {e}" for e in self.errors))


@dataclass(frozen=True)
class Subject:
    """One entity of the scene.

    `sub_attributes` describe parts of the subject ("outline: red", "stripes"): they are graded as
    attributes but rendered with "with" ("with a red outline"), which is why they are kept apart.
    """

    id: str
    name: str
    attributes: tuple[str, ...] = ()
    sub_attributes: tuple[str, ...] = ()
    count: int | None = None


@dataclass(frozen=True)
class Relation:
    """`subject` <predicate> `object`, both subject ids; the predicate is stored canonicalised."""

    subject: str
    predicate: str
    object: str

    @property
    def category(self) -> RelationCategory:
        return predicate_category(self.predicate)


@dataclass(frozen=True)
class SynthesisUnit:
    """One step of the chain of synthesis: the subjects it introduces and, optionally, its prompt.

    An empty `prompt` means "render it from the scene" (see `Scene.unit_prompt`).
    """

    subjects: tuple[str, ...]
    prompt: str = ""


@dataclass(frozen=True)
class QuestionTarget:
    """What an exact checker must verify: subject ids, plus the attribute or predicate asked about."""

    subjects: tuple[str, ...]
    attribute: str | None = None
    predicate: str | None = None
    count: int | None = None


@dataclass(frozen=True)
class Question:
    """A DSG-style yes/no question; it only counts as correct if all its `parents` are correct."""

    id: str
    text: str
    level: QuestionLevel
    parents: tuple[str, ...]
    target: QuestionTarget


@dataclass(frozen=True)
class Scene:
    """A hierarchical prompt: global fields, subjects, relations and the ordered synthesis units.

    `description` is kept verbatim (often the original prompt) for the final composition pass;
    `prompt()` is rendered from the structure instead, so it always agrees with `questions()`.
    `units` may be empty; `default_units()` then supplies one unit per subject.
    """

    subjects: tuple[Subject, ...]
    relations: tuple[Relation, ...] = ()
    units: tuple[SynthesisUnit, ...] = ()
    description: str = ""
    background: str | None = None
    style: str | None = None
    _by_id: dict[str, Subject] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {s.id: s for s in self.subjects})

    # ------------------------------------------------------------------ access

    def subject(self, subject_id: str) -> Subject:
        """The subject with this id (KeyError naming the known ids otherwise)."""
        try:
            return self._by_id[subject_id]
        except KeyError:
            raise KeyError(
                f"unknown subject id {subject_id!r}; known: {list(self._by_id)}"
            ) from None

    def default_units(self) -> tuple[SynthesisUnit, ...]:
        """The synthesis units: the given ones, or one unit per subject in order if none were given."""
        if self.units:
            return self.units
        return tuple(SynthesisUnit(subjects=(s.id,)) for s in self.subjects)

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; every field is written so the form is stable for diffs and caches."""
        return {
            "description": self.description,
            "background": self.background,
            "style": self.style,
            "subjects": [
                {
                    "id": s.id,
                    "name": s.name,
                    "attributes": list(s.attributes),
                    "sub_attributes": list(s.sub_attributes),
                    "count": s.count,
                }
                for s in self.subjects
            ],
            "relations": [
                {"subject": r.subject, "predicate": r.predicate, "object": r.object}
                for r in self.relations
            ],
            "units": [{"subjects": list(u.subjects), "prompt": u.prompt} for u in self.units],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str | dict[str, Any]) -> Scene:
        """Parse and validate; raises `SceneValidationError` listing every problem with its path.

        Lenient where it costs nothing and loses no information: subject ids default to a slug of
        the name, relations and units may refer to subjects by index, sub-attributes may be a dict
        ({"outline": "red"} -> "outline: red"), predicates are canonicalised.
        """
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as err:
                raise SceneValidationError([f"<root>: invalid JSON ({err})"]) from None
        if not isinstance(data, dict):
            raise SceneValidationError([f"<root>: expected a JSON object, got {_type(data)}"])
        return _SceneParser(data).parse()

    # ------------------------------------------------------------------ text

    def reference(self, subject_id: str) -> str:
        """How questions name a subject: "circle", or "red circle" when the name alone is ambiguous."""
        subject = self.subject(subject_id)
        same_name = [s for s in self.subjects if s.name == subject.name]
        words = [*subject.attributes, subject.name] if len(same_name) > 1 else [subject.name]
        return plural(" ".join(words)) if (subject.count or 1) > 1 else " ".join(words)

    def noun_phrase(self, subject_id: str) -> str:
        """Full indefinite phrase: "a small green square with a red outline", "three red circles"."""
        s = self.subject(subject_id)
        words = " ".join([*s.attributes, s.name])
        count = s.count or 1
        if count > 1:
            number = NUMBER_WORDS[count] if count < len(NUMBER_WORDS) else str(count)
            head = f"{number} {plural(words)}"
        else:
            head = f"{article(words)} {words}"
        parts = [sub_attribute_phrase(a) for a in s.sub_attributes]
        return head + (" with " + " and ".join(parts) if parts else "")

    def prompt(self) -> str:
        """Fluent English for the whole scene, rendered from the structure."""
        return self._render({s.id for s in self.subjects}, with_globals=True)

    def unit_prompt(self, unit: SynthesisUnit, form: str = "own") -> str:
        """The text prompt of one synthesis step, in one of `UNIT_PROMPT_FORMS`.

        - ``own`` (default): only the subjects this unit introduces (and relations among them): in
          the chain of synthesis the earlier subjects arrive as visual context, so repeating them
          in text would ask the model to draw them twice. A unit's explicit `prompt` wins here.
        - ``relational``: the unit's own subjects, each followed by its relations to the subjects
          drawn before it, which are named by reference only ("A blue square to the right of the
          red circle"): the pass that places a subject is the one told where, relative to what it
          sees in context. Said from the new subject's side (`INVERSE_PREDICATES`) where the
          predicate has an inverse.
        - ``cumulative``: every subject introduced up to and including this unit, for chains
          without visual context (image-to-image: told only its own subject, a pass erased the one
          before it in 77% of the images on the shapes world).

        The scene's global part (background, style) goes with every unit: it is the canvas each
        pass draws on, not a subject to draw twice, and a prompt without it asks the model for its
        default. On the shapes world a named dark-grey background survived the chain in 4 of 128
        images when only the final pass named it, and in 115 of 128 when every unit did.
        """
        if form not in UNIT_PROMPT_FORMS:
            raise ValueError(f"unit prompt form must be one of {UNIT_PROMPT_FORMS}, got {form!r}")
        if form == "own":
            return unit.prompt or self._render(set(unit.subjects), with_globals=True)
        earlier: set[str] = set()
        for step in self.default_units():
            if step == unit:
                if form == "cumulative":
                    return self._render(earlier | set(step.subjects), with_globals=True)
                return self._render(set(step.subjects), with_globals=True, context=earlier)
            earlier.update(step.subjects)
        raise ValueError(f"unit {unit} is not one of this scene's units")

    def definite(self, subject_id: str) -> str:
        """A subject named by reference with its attributes: "the red circle", "the blue squares"."""
        s = self.subject(subject_id)
        words = " ".join([*s.attributes, s.name])
        return "the " + (plural(words) if (s.count or 1) > 1 else words)

    def _render(
        self, subject_ids: set[str], with_globals: bool, context: set[str] = frozenset()
    ) -> str:
        """``subject_ids`` in full; with ``context`` (subjects already drawn), each subject is
        followed by its relations to them, the context named by reference (`definite`)."""
        clauses: list[str] = []
        mentioned: set[str] = set()

        def mention(subject_id: str) -> str:
            if subject_id in context:
                return self.definite(subject_id)
            if subject_id in mentioned:
                return f"the {self.reference(subject_id)}"
            mentioned.add(subject_id)
            return self.noun_phrase(subject_id)

        def towards_context(subject_id: str) -> list[str]:
            """ "<phrase> the <earlier subject>" for each relation of this subject to the context."""
            phrases = []
            for r in self.relations:
                if r.subject == subject_id and r.object in context:
                    predicate, other = r.predicate, r.object
                elif (
                    r.object == subject_id
                    and r.subject in context
                    and r.predicate in INVERSE_PREDICATES
                ):
                    predicate, other = INVERSE_PREDICATES[r.predicate], r.subject
                else:
                    continue
                phrases.append(f"{PREDICATE_PHRASES.get(predicate, predicate)} {mention(other)}")
            return phrases

        # Clauses follow subject order: at each subject, first the relations whose earlier
        # participant it is, then the subject alone if no relation mentioned it.
        order = {s.id: i for i, s in enumerate(self.subjects)}
        relations = [
            r for r in self.relations if r.subject in subject_ids and r.object in subject_ids
        ]
        for s in self.subjects:
            if s.id not in subject_ids:
                continue
            for r in relations:
                if min(order[r.subject], order[r.object]) == order[s.id]:
                    phrase = PREDICATE_PHRASES.get(r.predicate, r.predicate)
                    clauses.append(f"{mention(r.subject)} {phrase} {mention(r.object)}")
            placed = " and ".join(towards_context(s.id)) if context else ""
            if s.id not in mentioned:
                clauses.append(f"{mention(s.id)} {placed}".rstrip())
            elif placed:  # named already by a relation within the unit
                clauses.append(f"the {self.reference(s.id)} {placed}")
        # relations said from the earlier subject's side (no inverse): "the cup on a table"
        for r in self.relations if context else ():
            if r.subject in context and r.object in subject_ids:
                if r.predicate not in INVERSE_PREDICATES:
                    phrase = PREDICATE_PHRASES.get(r.predicate, r.predicate)
                    clauses.append(f"{mention(r.subject)} {phrase} the {self.reference(r.object)}")
        text = join_list(clauses)
        if with_globals and self.background:
            background = self.background.strip()
            text += (
                f" on {article(background)} {background}"
                if "background" in background.lower()
                else f" on {article(background)} {background} background"
            )
        if with_globals and self.style:
            text += f", {self.style.strip()} style"
        return text[:1].upper() + text[1:]

    # ------------------------------------------------------------------ evaluation

    def questions(self) -> list[Question]:
        """DSG-style questions: existence -> attributes, existence of both -> relation.

        Existence asks about the subject's name only ("Is there a circle?", or "a red circle" when two
        subjects share a name), so a wrong colour fails the attribute question rather than existence:
        per-level accuracies then measure different things. An attribute that the reference itself
        names is not asked again (it is part of the existence question).
        """
        questions: list[Question] = []
        exist_id: dict[str, str] = {}
        for s in self.subjects:
            ref = self.reference(s.id)
            qid = f"{s.id}/exist"
            exist_id[s.id] = qid
            count = s.count or 1
            text = (
                f"Are there {NUMBER_WORDS[count] if count < len(NUMBER_WORDS) else count} {ref}?"
                if count > 1
                else f"Is there {article(ref)} {ref}?"
            )
            target = QuestionTarget(subjects=(s.id,), count=s.count)
            questions.append(Question(qid, text, "exist", (), target))
            be = "Are the" if count > 1 else "Is the"
            have = "Do the" if count > 1 else "Does the"
            for i, attribute in enumerate(s.attributes):
                if sum(o.name == s.name for o in self.subjects) > 1:
                    # the reference already names it ("the red circle" when two circles exist):
                    # the existence question checks it, and "Is the red circle red?" is vacuous
                    continue
                questions.append(
                    Question(
                        f"{s.id}/attr/{i}",
                        f"{be} {ref} {attribute}?",
                        "attribute",
                        (qid,),
                        QuestionTarget(subjects=(s.id,), attribute=attribute),
                    )
                )
            for i, sub in enumerate(s.sub_attributes):
                questions.append(
                    Question(
                        f"{s.id}/sub/{i}",
                        f"{have} {ref} have {sub_attribute_phrase(sub)}?",
                        "attribute",
                        (qid,),
                        QuestionTarget(subjects=(s.id,), attribute=sub),
                    )
                )
        for i, r in enumerate(self.relations):
            phrase = PREDICATE_PHRASES.get(r.predicate, r.predicate)
            be = "Are" if (self.subject(r.subject).count or 1) > 1 else "Is"
            questions.append(
                Question(
                    f"rel/{i}",
                    f"{be} the {self.reference(r.subject)} {phrase} the {self.reference(r.object)}?",
                    "relation",
                    (exist_id[r.subject], exist_id[r.object]),
                    QuestionTarget(subjects=(r.subject, r.object), predicate=r.predicate),
                )
            )
        return questions


# ---------------------------------------------------------------------- parsing


class _SceneParser:
    """Collects every validation error instead of stopping at the first, for useful LLM feedback."""

    def __init__(self, data: dict[str, Any]):
        self.data = data
        self.errors: list[str] = []
        self.ids: list[str] = []

    def parse(self) -> Scene:
        description = self._optional_str(self.data.get("description"), "description") or ""
        background = self._optional_str(self.data.get("background"), "background")
        style = self._optional_str(self.data.get("style"), "style")
        subjects = self._subjects(self.data.get("subjects"))
        relations = self._list("relations", self._relation)
        units = self._units()
        if self.errors:
            raise SceneValidationError(self.errors)
        return Scene(
            subjects=tuple(subjects),
            relations=tuple(relations),
            units=tuple(units),
            description=description,
            background=background or None,
            style=style or None,
        )

    def _optional_str(self, value: Any, path: str) -> str | None:
        if value is None or isinstance(value, str):
            return value.strip() if isinstance(value, str) else None
        self.errors.append(f"{path}: expected a string or null, got {_type(value)}")
        return None

    def _list(self, key: str, parse_item: Any) -> list[Any]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.errors.append(f"{key}: expected a list, got {_type(value)}")
            return []
        items = [parse_item(item, f"{key}[{i}]") for i, item in enumerate(value)]
        return [item for item in items if item is not None]

    def _subjects(self, value: Any) -> list[Subject]:
        if not isinstance(value, list) or not value:
            got = "an empty list" if value == [] else _type(value)
            self.errors.append(f"subjects: expected a non-empty list of objects, got {got}")
            return []
        subjects = []
        for i, item in enumerate(value):
            path = f"subjects[{i}]"
            if not isinstance(item, dict):
                self.errors.append(f"{path}: expected an object, got {_type(item)}")
                self.ids.append("")
                continue
            name = item.get("name")
            if not isinstance(name, str) or not name.strip():
                self.errors.append(f"{path}.name: expected a non-empty string, got {_type(name)}")
                name = ""
            subject_id = item.get("id")
            if subject_id is None:
                subject_id = _unique_slug(name or f"subject{i}", self.ids)
            elif not isinstance(subject_id, str) or not subject_id.strip():
                self.errors.append(
                    f"{path}.id: expected a non-empty string, got {_type(subject_id)}"
                )
                subject_id = ""
            elif subject_id in self.ids:
                self.errors.append(f"{path}.id: duplicate subject id {subject_id!r}")
            self.ids.append(subject_id)
            attributes = self._strings(item.get("attributes"), f"{path}.attributes")
            sub_attributes = self._sub_attributes(
                item.get("sub_attributes"), f"{path}.sub_attributes"
            )
            count = item.get("count")
            if count is not None and (
                isinstance(count, bool) or not isinstance(count, int) or count < 1
            ):
                self.errors.append(
                    f"{path}.count: expected a positive integer or null, got {count!r}"
                )
                count = None
            subjects.append(Subject(subject_id, name.strip(), attributes, sub_attributes, count))
        return subjects

    def _strings(self, value: Any, path: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.errors.append(f"{path}: expected a list of strings, got {_type(value)}")
            return ()
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self.errors.append(f"{path}[{i}]: expected a non-empty string, got {_type(item)}")
            else:
                out.append(item.strip())
        return tuple(out)

    def _sub_attributes(self, value: Any, path: str) -> tuple[str, ...]:
        if isinstance(value, dict):
            out = []
            for key, item in value.items():
                if not isinstance(item, str) or not item.strip():
                    self.errors.append(
                        f"{path}.{key}: expected a non-empty string, got {_type(item)}"
                    )
                else:
                    out.append(f"{key.strip()}: {item.strip()}")
            return tuple(out)
        return self._strings(value, path)

    def _subject_ref(self, value: Any, path: str) -> str | None:
        # Indices are accepted because LLMs often emit them; the scene always stores ids.
        if isinstance(value, int) and not isinstance(value, bool):
            if 0 <= value < len(self.ids):
                return self.ids[value]
            self.errors.append(
                f"{path}: subject index {value} out of range (0..{len(self.ids) - 1})"
            )
        elif isinstance(value, str) and value in self.ids:
            return value
        elif isinstance(value, str):
            self.errors.append(
                f"{path}: unknown subject id {value!r} (known: {', '.join(self.ids)})"
            )
        else:
            self.errors.append(f"{path}: expected a subject id or index, got {_type(value)}")
        return None

    def _relation(self, item: Any, path: str) -> Relation | None:
        if not isinstance(item, dict):
            self.errors.append(f"{path}: expected an object, got {_type(item)}")
            return None
        subject = self._subject_ref(item.get("subject"), f"{path}.subject")
        obj = self._subject_ref(item.get("object"), f"{path}.object")
        predicate = item.get("predicate")
        if not isinstance(predicate, str) or not predicate.strip():
            self.errors.append(
                f"{path}.predicate: expected a non-empty string, got {_type(predicate)}"
            )
            return None
        if subject is None or obj is None:
            return None
        if subject == obj:
            self.errors.append(f"{path}: a subject cannot relate to itself ({subject!r})")
            return None
        return Relation(subject, normalize_predicate(predicate), obj)

    def _units(self) -> list[SynthesisUnit]:
        introduced: dict[str, int] = {}

        def unit(item: Any, path: str) -> SynthesisUnit | None:
            if not isinstance(item, dict):
                self.errors.append(f"{path}: expected an object, got {_type(item)}")
                return None
            refs = item.get("subjects")
            if not isinstance(refs, list) or not refs:
                self.errors.append(f"{path}.subjects: expected a non-empty list of subject ids")
                return None
            ids = []
            for j, ref in enumerate(refs):
                subject_id = self._subject_ref(ref, f"{path}.subjects[{j}]")
                if subject_id is None:
                    continue
                if subject_id in introduced:
                    earlier = introduced[subject_id]
                    self.errors.append(
                        f"{path}.subjects[{j}]: subject {subject_id!r} is already introduced by units[{earlier}]"
                    )
                introduced[subject_id] = int(path[path.index("[") + 1 : -1])
                ids.append(subject_id)
            prompt = self._optional_str(item.get("prompt"), f"{path}.prompt") or ""
            return SynthesisUnit(tuple(ids), prompt)

        return self._list("units", unit)


# ---------------------------------------------------------------------- parser helpers


def _type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _unique_slug(name: str, taken: list[str]) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "subject"
    candidate, n = slug, 2
    while candidate in taken:
        candidate, n = f"{slug}_{n}", n + 1
    return candidate
