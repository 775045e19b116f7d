"""Predicates and English for scenes: the words a `vrl.hicogen.scene.Scene` is written in.

- The canonical predicate vocabulary by category (spatial, size, support), the common phrasings
  folded onto it (`normalize_predicate`: "to the left of" and "left of" compare equal) and how a
  predicate reads inside a sentence;
- the small helpers that turn words into phrases: articles, plurals, number words, lists, and
  sub-attributes ("outline: red" -> "a red outline").

Kept apart from the schema so that the prompt renderer and the question writer share one
vocabulary, and a change of wording is a change in one place.
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = [
    "INVERSE_PREDICATES",
    "NUMBER_WORDS",
    "PREDICATE_ALIASES",
    "PREDICATE_CATEGORIES",
    "PREDICATE_PHRASES",
    "RelationCategory",
    "article",
    "join_list",
    "normalize_predicate",
    "plural",
    "predicate_category",
    "sub_attribute_phrase",
]

RelationCategory = Literal["spatial", "size", "support", "other"]

# Canonical predicates by category. Spatial ones are the GenEval/T2I-CompBench vocabulary, the
# others are what the HiCoGen relation reward checks (scale, support: "no floating objects").
PREDICATE_CATEGORIES: dict[str, RelationCategory] = {
    "left of": "spatial",
    "right of": "spatial",
    "above": "spatial",
    "below": "spatial",
    "in front of": "spatial",
    "behind": "spatial",
    "next to": "spatial",
    "larger than": "size",
    "smaller than": "size",
    "on": "support",
    "under": "support",
    "in": "support",
}

# Common phrasings folded onto the canonical predicate, so "to the left of" and "left of" compare equal.
PREDICATE_ALIASES: dict[str, str] = {
    "to the left of": "left of",
    "on the left of": "left of",
    "to the right of": "right of",
    "on the right of": "right of",
    "over": "above",
    "on top of": "on",
    "on the top of": "on",
    "atop": "on",
    "beneath": "under",
    "underneath": "under",
    "below of": "below",
    "inside": "in",
    "inside of": "in",
    "within": "in",
    "beside": "next to",
    "near": "next to",
    "close to": "next to",
    "adjacent to": "next to",
    "bigger than": "larger than",
    "in back of": "behind",
}

# "A <p> B" holds exactly when "B <inverse> A" does (so a relation can be said from either side).
# "on" / "in" have no exact inverse ("under" is not "holds up"): they are said from their subject.
INVERSE_PREDICATES: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
    "in front of": "behind",
    "behind": "in front of",
    "next to": "next to",
    "larger than": "smaller than",
    "smaller than": "larger than",
}

# How a canonical predicate reads inside a sentence ("A is <phrase> B").
PREDICATE_PHRASES: dict[str, str] = {"left of": "to the left of", "right of": "to the right of"}

NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
]


def normalize_predicate(predicate: str) -> str:
    """Lower-case, collapse spaces and fold known aliases onto the canonical vocabulary."""
    text = " ".join(predicate.lower().replace("_", " ").split())
    return PREDICATE_ALIASES.get(text, text)


def predicate_category(predicate: str) -> RelationCategory:
    """Category of a predicate; anything outside the vocabulary is kept but flagged as "other"."""
    return PREDICATE_CATEGORIES.get(normalize_predicate(predicate), "other")


# ---------------------------------------------------------------------- phrases


def article(words: str) -> str:
    """ "a" or "an" for the words that follow."""
    return "an" if words[:1].lower() in "aeiou" and words[:1] else "a"


def plural(words: str) -> str:
    """The plural of a noun phrase (its last word): "red box" -> "red boxes"."""
    head, _, last = words.rpartition(" ")
    if re.search(r"(s|x|z|ch|sh)$", last):
        last += "es"
    elif re.search(r"[^aeiou]y$", last):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return f"{head} {last}" if head else last


def sub_attribute_phrase(sub_attribute: str) -> str:
    """ "outline: red" -> "a red outline"; "stripes" -> "stripes" (plural parts take no article)."""
    part, sep, value = sub_attribute.partition(":")
    if sep:
        words = f"{value.strip()} {part.strip()}"
        return words if part.strip().endswith("s") else f"{article(words)} {words}"
    return sub_attribute.strip()


def join_list(items: list[str]) -> str:
    """ "a and b"; "a, b, and c"."""
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + ", and " + items[-1]
