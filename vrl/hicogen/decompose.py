"""Prompt -> `Scene`: rules for structured and templated prompts, an LLM for free text.

The LLM path never raises on bad model output: it extracts the first JSON object it can find,
validates it with `Scene.from_json`, feeds the validation errors back for a bounded number of
retries, and otherwise falls back to the template parser or to a single-subject scene whose one
unit is the whole prompt. `DecompositionResult.source` says which of these produced the scene, so
a benchmark can report how often the LLM was actually usable.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vrl.hicogen.scene import (
    Scene,
    SceneValidationError,
    Subject,
    SynthesisUnit,
    normalize_predicate,
)

__all__ = [
    "COLOURS",
    "DECOMPOSE_INSTRUCTION",
    "SHAPES",
    "DecompositionResult",
    "LLMDecomposer",
    "decompose_structured",
    "decompose_template",
    "extract_json_object",
    "fallback_scene",
    "scene_for_row",
]

GenerateFn = Callable[[str], str]

COLOURS = (
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
    "pink",
    "brown",
    "gray",
    "grey",
)
SHAPES = (
    "circle", "square", "triangle", "star", "rectangle", "hexagon", "pentagon",
    "diamond", "heart", "ellipse", "oval", "cross", "crescent", "ring",
)  # fmt: skip
SIZES = ("small", "large", "big", "tiny", "huge", "medium")
_PARTS = ("outline", "border", "stripes", "dots")
_COUNTS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
# Longest phrasing first so "on top of" is not read as "on".
_RELATION_PHRASES = sorted(
    [
        "to the left of", "on the left of", "left of", "to the right of", "on the right of",
        "right of", "above", "below", "over", "in front of", "behind", "next to", "beside",
        "larger than", "bigger than", "smaller than", "on top of", "on", "under", "beneath",
        "inside", "in",
    ],
    key=lambda p: -len(p.split()),
)  # fmt: skip


# ---------------------------------------------------------------------- rule-based


def decompose_structured(metadata: dict[str, Any]) -> Scene:
    """Scene from prompt metadata: the schema's own JSON, or a simple form.

    The simple form allows subjects as strings ("small red circle": known colour/size words become
    attributes) and relations as `[subject, predicate, object]` triples. Raises
    `SceneValidationError` for metadata that is wrong: this is data we control, so it should fail loudly.
    """
    data = (
        dict(metadata.get("scene", metadata))
        if isinstance(metadata.get("scene"), dict)
        else dict(metadata)
    )
    if isinstance(data.get("subjects"), list):
        data["subjects"] = [
            _subject_from_text(s) if isinstance(s, str) else s for s in data["subjects"]
        ]
    if isinstance(data.get("relations"), list):
        data["relations"] = [
            {"subject": r[0], "predicate": r[1], "object": r[2]}
            if isinstance(r, (list, tuple)) and len(r) == 3
            else r
            for r in data["relations"]
        ]
    return Scene.from_json(data)


def _subject_from_text(text: str) -> dict[str, Any]:
    words = text.lower().split()
    attributes = [w for w in words[:-1] if w in COLOURS or w in SIZES]
    if words and len(attributes) == len(words) - 1:
        return {"name": words[-1], "attributes": attributes}
    return {"name": text}


def decompose_template(prompt: str) -> Scene | None:
    """Parse "a <colour> <shape>[ with a <colour> outline] [<relation> a <colour> <shape>] ...".

    Subjects are joined by "and" or by a relation phrase (which relates the subject before it to
    the one after it); an optional "on a <colour> background" ends the prompt. Counts ("two red
    circles") and sizes ("a small green square") are understood. Returns None unless every word is
    accounted for, so free text is never half-parsed into a misleading scene.
    """
    tokens = re.sub(r"[,.;!]", " ", prompt.lower()).split()
    background = None
    if (
        len(tokens) >= 4
        and tokens[-1] == "background"
        and tokens[-4] == "on"
        and tokens[-2] in COLOURS
    ):
        if tokens[-3] not in ("a", "an", "the"):
            return None
        background, tokens = tokens[-2], tokens[:-4]

    subjects: list[dict[str, Any]] = []
    relations: list[dict[str, Any]] = []
    position = 0
    pending_predicate: str | None = None
    while True:
        parsed = _parse_noun_phrase(tokens, position)
        if parsed is None:
            return None
        subject, position = parsed
        subject["id"] = _next_id(subject["name"], [s["id"] for s in subjects])
        if pending_predicate is not None:
            relations.append(
                {
                    "subject": subjects[-1]["id"],
                    "predicate": pending_predicate,
                    "object": subject["id"],
                }
            )
        subjects.append(subject)
        if position == len(tokens):
            break
        if tokens[position] == "and":
            pending_predicate, position = None, position + 1
            continue
        match = _match_relation(tokens, position)
        if match is None:
            return None
        pending_predicate, position = match

    scene = {
        "description": prompt.strip(),
        "background": background,
        "subjects": subjects,
        "relations": relations,
    }
    try:
        return Scene.from_json(scene)
    except SceneValidationError:
        return None


def _parse_noun_phrase(tokens: list[str], i: int) -> tuple[dict[str, Any], int] | None:
    if i >= len(tokens) or tokens[i] not in _COUNTS and not tokens[i].isdigit():
        return None
    count = int(tokens[i]) if tokens[i].isdigit() else _COUNTS[tokens[i]]
    i += 1
    attributes = []
    while i < len(tokens) and (tokens[i] in COLOURS or tokens[i] in SIZES):
        attributes.append(tokens[i])
        i += 1
    if i >= len(tokens):
        return None
    name = tokens[i] if count == 1 else _singular(tokens[i])
    if name not in SHAPES:
        return None
    i += 1
    sub_attributes = []
    while i < len(tokens) and tokens[i] == "with":
        j = i + 1
        if j < len(tokens) and tokens[j] in ("a", "an"):
            j += 1
        colour = tokens[j] if j < len(tokens) and tokens[j] in COLOURS else None
        j += colour is not None
        if j >= len(tokens) or tokens[j] not in _PARTS:
            return None
        sub_attributes.append(f"{tokens[j]}: {colour}" if colour else tokens[j])
        i = j + 1
        if (
            i < len(tokens)
            and tokens[i] == "and"
            and i + 1 < len(tokens)
            and tokens[i + 1] == "with"
        ):
            i += 1
    subject = {"name": name, "attributes": attributes, "sub_attributes": sub_attributes}
    subject["count"] = count if count > 1 else None
    return subject, i


def _match_relation(tokens: list[str], i: int) -> tuple[str, int] | None:
    for phrase in _RELATION_PHRASES:
        words = phrase.split()
        if tokens[i : i + len(words)] == words:
            return normalize_predicate(phrase), i + len(words)
    return None


def _singular(word: str) -> str:
    if word.endswith("es") and word[:-2] in SHAPES:
        return word[:-2]
    return word[:-1] if word.endswith("s") else word


def _next_id(name: str, taken: list[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    return candidate


# ---------------------------------------------------------------------- JSON extraction


def extract_json_object(text: str) -> dict[str, Any]:
    """The first balanced JSON object in `text` that parses (fenced blocks are tried first).

    Cheap repairs only: trailing commas, single-quoted strings and Python's True/False/None. Raises
    ValueError with a short reason, which the decomposer feeds back to the model.
    """
    fenced = re.findall(r"```(?:json|JSON)?\s*\n?(.*?)```", text, flags=re.DOTALL)
    found_braces = False
    for chunk in [*fenced, text]:
        for candidate in _balanced_objects(chunk):
            found_braces = True
            for attempt in (candidate, _repair_json(candidate)):
                try:
                    value = json.loads(attempt)
                except json.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    return value
    if found_braces:
        raise ValueError("found '{...}' but none of it parses as a JSON object")
    raise ValueError("no JSON object found in the output")


def _balanced_objects(text: str, limit: int = 20) -> list[str]:
    """Top-level `{...}` spans, skipping braces inside double- or single-quoted strings."""
    spans: list[str] = []
    start, depth, quote, escaped = -1, 0, "", False
    for i, char in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'" and depth > 0:
            quote = char
        elif char == "{":
            if depth == 0:
                start = i
            depth += 1
        elif char == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
                if len(spans) >= limit:
                    break
    return spans


def _repair_json(text: str) -> str:
    out: list[str] = []
    quote, escaped = "", False
    for char in text:
        if quote:
            if escaped:
                escaped = False
                out.append(char)
            elif char == "\\":
                escaped = True
                out.append(char)
            elif char == quote:
                quote = ""
                out.append('"')
            elif char == '"' and quote == "'":
                out.append('\\"')
            else:
                out.append(char)
        elif char in "\"'":
            quote = char
            out.append('"')
        else:
            out.append(char)
    repaired = "".join(out).replace("\\'", "'")
    repaired = re.sub(r",\s*([}\]])", r"\1", repaired)
    return re.sub(
        r"\b(True|False|None)\b",
        lambda m: {"True": "true", "False": "false"}.get(m[1], "null"),
        repaired,
    )


# ---------------------------------------------------------------------- LLM decomposer

_EXAMPLE_PROMPT = (
    "A red circle with a blue outline to the left of a small green square on a white background"
)
_EXAMPLE_SCENE = {
    "description": _EXAMPLE_PROMPT,
    "background": "white",
    "style": None,
    "subjects": [
        {"id": "circle", "name": "circle", "attributes": ["red"], "sub_attributes": ["outline: blue"], "count": None},
        {"id": "square", "name": "square", "attributes": ["small", "green"], "sub_attributes": [], "count": None},
    ],
    "relations": [{"subject": "circle", "predicate": "left of", "object": "square"}],
    "units": [
        {"subjects": ["circle"], "prompt": "a red circle with a blue outline"},
        {"subjects": ["square"], "prompt": "a small green square"},
    ],
}  # fmt: skip

DECOMPOSE_INSTRUCTION = f"""\
Decompose the image prompt below into a scene graph. Reply with one JSON object and nothing else.

Fields:
- "description": the whole prompt; "background" and "style": short strings or null.
- "subjects": list of {{"id", "name", "attributes", "sub_attributes", "count"}}; "name" is a short noun,
  "attributes" are adjectives such as colour, material or size, "sub_attributes" describe parts as
  "part: value" strings, "count" is an integer or null. Ids are unique short strings.
- "relations": list of {{"subject", "predicate", "object"}} using subject ids. Prefer the predicates
  left of, right of, above, below, in front of, behind, next to, larger than, smaller than, on, under, in.
- "units": the order to draw the subjects, each {{"subjects": [ids], "prompt": text for that step}}.

Example prompt: {_EXAMPLE_PROMPT}
Example answer: {json.dumps(_EXAMPLE_SCENE)}

Prompt: {{prompt}}
"""

_RETRY_SUFFIX = """
Your previous answer could not be used:
{errors}
Reply again with only the corrected JSON object.
"""


@dataclass(frozen=True)
class DecompositionResult:
    """The scene plus where it came from, how many generations it took and what went wrong."""

    scene: Scene
    source: Literal["metadata", "llm", "template", "fallback"]
    attempts: int
    errors: list[str] = field(default_factory=list)


def scene_for_row(
    row: dict[str, Any], decomposer: Callable[[str], DecompositionResult] | None = None
) -> DecompositionResult:
    """The scene of one prompt row: its "scene" metadata, else the decomposer, else the rules.

    Order: a "scene" field (already validated by `vrl.data.t2i.load_prompts`) wins; then the
    decomposer (an `LLMDecomposer`, which falls back to the template parser itself); then the
    template parser; then the one-unit fallback. Never raises on the prompt's text.
    """
    if row.get("scene") is not None:
        scene = row["scene"]
        scene = scene if isinstance(scene, Scene) else decompose_structured(row)
        return DecompositionResult(scene, "metadata", 0)
    prompt = row["prompt"]
    if decomposer is not None:
        return decomposer(prompt)
    scene = decompose_template(prompt)
    if scene is not None:
        return DecompositionResult(scene, "template", 0)
    return DecompositionResult(fallback_scene(prompt), "fallback", 0)


def fallback_scene(prompt: str) -> Scene:
    """One subject whose single unit is the whole prompt: the chain of synthesis degenerates to one step."""
    text = prompt.strip() or "image"
    subject = Subject(id="subject", name=text)
    return Scene(subjects=(subject,), units=(SynthesisUnit(("subject",), text),), description=text)


class LLMDecomposer:
    """Free-text prompt -> Scene with any text generator `generate_fn(request) -> reply`.

    `max_retries` bounds the extra generations after an unusable reply, each told what was wrong.
    Exceptions from `generate_fn` count as a failed attempt; nothing here raises on bad output.
    """

    def __init__(
        self,
        generate_fn: GenerateFn,
        max_retries: int = 2,
        instruction: str = DECOMPOSE_INSTRUCTION,
    ):
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.generate_fn = generate_fn
        self.max_retries = max_retries
        self.instruction = instruction

    def __call__(self, prompt: str) -> DecompositionResult:
        return self.decompose(prompt)

    def decompose(self, prompt: str) -> DecompositionResult:
        errors: list[str] = []
        request = self.instruction.replace("{prompt}", prompt.strip())
        attempts = 0
        current = request
        for attempts in range(1, self.max_retries + 2):
            try:
                reply = self.generate_fn(current)
                data = extract_json_object(reply)
                scene = Scene.from_json(
                    data.get("scene", data) if isinstance(data.get("scene"), dict) else data
                )
                return DecompositionResult(scene, "llm", attempts, errors)
            except SceneValidationError as err:
                problem = "; ".join(err.errors)
            except Exception as err:  # a broken generator or endpoint must not stop a benchmark
                problem = f"{type(err).__name__}: {err}"
            errors.append(f"attempt {attempts}: {problem}")
            # the model sees only its latest problem: older ones were fixed or are repeated
            current = request + _RETRY_SUFFIX.format(errors=problem[:2000])
        scene = decompose_template(prompt)
        if scene is not None:
            return DecompositionResult(scene, "template", attempts, errors)
        return DecompositionResult(fallback_scene(prompt), "fallback", attempts, errors)

    # ------------------------------------------------------------------ backends

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        max_new_tokens: int = 512,
        max_retries: int = 2,
        device: str | None = None,
        dtype: Any = None,
    ) -> LLMDecomposer:
        """A local instruction-tuned causal LM (e.g. a Qwen2.5-Instruct folder), greedy decoding.

        Loads with `local_files_only=True`: decomposition must never trigger a hub download.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=dtype or torch.float32
        )
        model.to(device or "cpu").eval()
        return cls(_hf_generate_fn(model, tokenizer, max_new_tokens), max_retries=max_retries)

    @classmethod
    def from_openai(
        cls,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_tokens: int = 1024,
        max_retries: int = 2,
        opener: Callable[..., Any] | None = None,
    ) -> LLMDecomposer:
        """An OpenAI-compatible chat-completions endpoint through `urllib.request` only.

        `opener(request, timeout=...)` defaults to `urllib.request.urlopen`; tests pass a fake.
        """
        url = base_url.rstrip("/")
        if not url.endswith("/chat/completions"):
            url += "/chat/completions"
        open_url = opener or urllib.request.urlopen

        def generate(text: str) -> str:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": text}],
                "temperature": 0,
                "max_tokens": max_tokens,
            }
            headers = {"Content-Type": "application/json"}
            if api_key:
                headers["Authorization"] = f"Bearer {api_key}"
            request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
            with open_url(request, timeout=timeout) as response:
                payload = json.loads(response.read().decode("utf-8"))
            return payload["choices"][0]["message"]["content"] or ""

        return cls(generate, max_retries=max_retries)


def _hf_generate_fn(model: Any, tokenizer: Any, max_new_tokens: int) -> GenerateFn:
    import torch

    def generate(text: str) -> str:
        messages = [{"role": "user", "content": text}]
        chat = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(chat, return_tensors="pt", add_special_tokens=False).to(model.device)
        with torch.no_grad():
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        new_tokens = output[0, inputs["input_ids"].shape[1] :]  # (T_new,)
        return tokenizer.decode(new_tokens, skip_special_tokens=True)

    return generate
