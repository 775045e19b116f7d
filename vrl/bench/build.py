"""Build HiCoPrompt: hierarchical compositional prompts with their scenes and question graphs.

`build_hicoprompt(out, seed, vocab)` writes, per vocabulary (`open`, `world`)::

    <out>/<vocab>/test.jsonl        3,000 prompts, 4-12 subjects (as in the HiCoGen paper)
    <out>/<vocab>/train.jsonl      12,000 prompts, 4-12 subjects
    <out>/<vocab>/test_4-6.jsonl   the test prompts with 4-6 subjects (quick runs)
    <out>/<vocab>/test_7-12.jsonl  the test prompts with 7-12 subjects
    <out>/<vocab>/test_1-3.jsonl    300 extra prompts with 1-3 subjects (tiny 32 px models)
    <out>/<vocab>/train_1-3.jsonl 1,200 extra prompts with 1-3 subjects
    <out>/<vocab>/manifest.json    version, seed, line counts and sha256 of every file

Everything is a function of (version, seed, vocab): building twice gives identical bytes, with
any number of worker processes (each prompt has its own random stream). Subject counts are
balanced (each count in a range appears equally often, shuffled). No prompt of one split appears
in another, so train and test never share a prompt; repeats within a split are avoided where the
vocabulary allows (a 1-subject world split has fewer distinct prompts than lines).

Open vocabulary scenes (`sample_open_scene`) are sampled from `vrl.bench.vocab`: each subject has
a colour and often a size, pattern or material, and sub-attributes on its parts; subjects of the
same kind always differ in colour, so every subject has a unique reference ("the red cup"). The
relations (spatial, relative size, support) are read off one latent layout, so they never
contradict each other, and follow the objects' size classes ("a cup on a table", never the
reverse). A global scene (a setting and a style) completes each prompt. The world vocabulary uses
the shapes world's own sampler (`vrl.world.sample_scene`), whose every question is exactly
checkable on its renders.

Each prompt is written in one of several phrasings chosen by the seed; all of them mention every
subject with all its attributes and every relation, naming subjects the way the questions do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vrl.bench import vocab as V
from vrl.bench.data import question_to_dict
from vrl.hicogen.phrasing import NUMBER_WORDS
from vrl.hicogen.scene import Relation, Scene, Subject, SynthesisUnit

HICOPROMPT_VERSION = "hicoprompt-1.0"
"""Bump whenever the sampler, the vocabulary or the phrasings change what a seed builds."""

VOCABS = ("open", "world")
# split -> (number of prompts, fewest subjects, most subjects)
SPLITS: dict[str, tuple[int, int, int]] = {
    "test": (3000, 4, 12),
    "train": (12000, 4, 12),
    "test_1-3": (300, 1, 3),
    "train_1-3": (1200, 1, 3),
}
# split -> (split it is taken from, fewest subjects, most subjects)
SUBSETS: dict[str, tuple[str, int, int]] = {
    "test_4-6": ("test", 4, 6),
    "test_7-12": ("test", 7, 12),
}
PHRASINGS = ("compact", "listing", "sentences")
PARALLEL_MIN_PROMPTS = 1000
"""Fewer prompts than this are drawn in-process: starting workers would cost more."""


# ---------------------------------------------------------------------- open vocabulary scenes


def sample_open_scene(rng: random.Random, n_subjects: int) -> Scene:
    """A plausible everyday scene with `n_subjects` subjects (see the module docstring)."""
    types: list[V.ObjectType] = []
    kinds: dict[str, int] = {}  # name -> how many subjects of that kind so far
    for i in range(n_subjects):
        # about one pick in four repeats a kind already present: same-category subjects, told
        # apart by their attributes, are what makes attribute binding hard
        repeatable = [name for name, k in kinds.items() if k < 3]
        if i and repeatable and rng.random() < 0.25:
            t = V.OBJECTS_BY_NAME[rng.choice(repeatable)]
        else:
            t = rng.choice(V.OBJECTS)
        types.append(t)
        kinds[t.name] = kinds.get(t.name, 0) + 1
    subjects: list[Subject] = []
    colours_used: dict[str, set[str]] = {}
    size_class: dict[str, int] = {}
    ids: list[str] = []
    for t in types:
        sid = _unique_id(t.name, ids)
        ids.append(sid)
        taken = colours_used.setdefault(t.name, set())
        colour = rng.choice([c for c in V.COLOURS if c not in taken])
        taken.add(colour)
        size = rng.choice(V.SIZES) if rng.random() < 0.25 else None
        pattern = rng.choice(V.PATTERNS) if rng.random() < 0.2 else None
        material = rng.choice(t.materials) if t.materials and rng.random() < 0.5 else None
        attributes = tuple(a for a in (size, pattern, colour, material) if a)
        parts = rng.sample(t.parts, k=min(len(t.parts), _n_parts(rng)))
        subs = tuple(f"{p}: {_part_value(rng, p, colour)}" for p in parts)
        count = rng.choice((2, 3)) if t.size == 1 and rng.random() < 0.06 else None
        if count and kinds[t.name] > 1:
            count = None  # "two red cups" next to "a blue cup" reads as three cups
        subjects.append(Subject(sid, t.name, attributes, subs, count))
        size_class[sid] = t.size + V.SIZE_SHIFT.get(size or "", 0)
    relations = _open_relations(
        rng, subjects, {s.id: t for s, t in zip(subjects, types, strict=True)}, size_class
    )
    setting, _ = rng.choice(V.SETTINGS)
    style, _, _ = rng.choice(V.STYLES)
    return Scene(
        subjects=tuple(subjects), relations=tuple(relations), background=setting, style=style
    )


def _n_parts(rng: random.Random) -> int:
    u = rng.random()
    return 0 if u < 0.35 else 1 if u < 0.85 else 2


def _part_value(rng: random.Random, part: str, colour: str) -> str:
    materials = V.PART_MATERIALS.get(part, ())
    if materials and rng.random() < 0.5:
        return rng.choice(materials)
    return rng.choice([c for c in V.COLOURS if c != colour])


def _open_relations(
    rng: random.Random,
    subjects: list[Subject],
    types: dict[str, V.ObjectType],
    size_class: dict[str, int],
) -> list[Relation]:
    """Relations from each subject to earlier ones, read off one latent layout (x, depth)."""
    x = {s.id: rng.random() for s in subjects}
    depth = {s.id: rng.random() for s in subjects}
    relations: list[Relation] = []
    related: set[frozenset[str]] = set()
    supported: set[str] = set()  # subjects already on / in / under something

    def add(subject: str, predicate: str, obj: str) -> None:
        relations.append(Relation(subject, predicate, obj))
        related.add(frozenset((subject, obj)))

    for i, s in enumerate(subjects[1:], 1):
        earlier = [e.id for e in subjects[:i]]
        n_relations = (rng.random() < 0.8) + (rng.random() < 0.25)
        for _ in range(n_relations):
            partners = [e for e in earlier if frozenset((s.id, e)) not in related]
            if not partners:
                break
            j = rng.choice(partners)
            kind = rng.choices(("spatial", "support", "size"), weights=(0.55, 0.25, 0.2))[0]
            if kind == "support" and (rel := _support(rng, s.id, j, types, size_class, supported)):
                below, predicate, above = rel
                add(below, predicate, above)
                supported.add(below)
                # what stands on (or in, or under) something is where that thing is
                x[below] = x[above] + rng.uniform(-0.05, 0.05)
                depth[below] = depth[above]
            elif kind == "size" and size_class[s.id] != size_class[j]:
                add(s.id, "larger than" if size_class[s.id] > size_class[j] else "smaller than", j)
            else:
                add(s.id, _spatial(rng, s.id, j, types, x, depth), j)
    if not relations and len(subjects) > 1:
        a, b = subjects[1].id, subjects[0].id
        add(a, _spatial(rng, a, b, types, x, depth), b)
    return relations


def _support(rng, a, b, types, size_class, supported) -> tuple[str, str, str] | None:
    """(subject, on/in/under, object) between a and b in either direction, or None."""
    options = []
    for top, base in ((a, b), (b, a)):
        if top in supported or size_class[top] >= size_class[base]:
            continue
        if types[base].surface:
            options.append((top, "on", base))
        if types[base].container:
            options.append((top, "in", base))
        if types[base].shelter:
            options.append((top, "under", base))
    return rng.choice(options) if options else None


def _spatial(rng, a, b, types, x, depth) -> str:
    if types[a].hangs and rng.random() < 0.5:
        return "above"
    if types[b].hangs and rng.random() < 0.5:
        return "below"
    dx, dz = x[a] - x[b], depth[a] - depth[b]
    if abs(dx) >= 0.15:
        return "left of" if dx < 0 else "right of"
    if abs(dz) >= 0.15:
        return "in front of" if dz < 0 else "behind"
    return "next to"


def _unique_id(name: str, taken: list[str]) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    candidate, n = slug, 2
    while candidate in taken:
        candidate, n = f"{slug}_{n}", n + 1
    return candidate


# ---------------------------------------------------------------------- phrasings


def phrase(scene: Scene, phrasing: str) -> str:
    """Fluent English for a scene in one of `PHRASINGS`; every subject, attribute and relation."""
    if phrasing not in PHRASINGS:
        raise ValueError(f"unknown phrasing {phrasing!r}; valid: {list(PHRASINGS)}")
    where = _where(scene.background)
    if phrasing == "compact":
        body = _lower_first(scene.unit_prompt(SynthesisUnit(tuple(s.id for s in scene.subjects))))
        head = V.STYLE_HEADS.get(scene.style or "", "A picture of")
        return f"{head} {body}{' ' + where if where else ''}."
    if phrasing == "listing":
        phrases = [scene.noun_phrase(s.id) for s in scene.subjects]
        there = "There are" if (scene.subjects[0].count or 1) > 1 else "There is"
        intro = f"{where}, {there.lower()}" if where else there
        sentences = [f"{_upper_first(intro)} {_join(phrases)}."]
        sentences += [
            _upper_first(
                _relation_clause(
                    scene,
                    r,
                    f"the {scene.reference(r.subject)}",
                    f"the {scene.reference(r.object)}",
                )
            )
            + "."
            for r in scene.relations
        ]
    else:  # "sentences": subjects are introduced by their relations, the rest afterwards
        mentioned: set[str] = set()

        def name(sid: str) -> str:
            if sid in mentioned:
                return f"the {scene.reference(sid)}"
            mentioned.add(sid)
            return scene.noun_phrase(sid)

        sentences = [
            _relation_clause(scene, r, name(r.subject), name(r.object)) + "."
            for r in scene.relations
        ]
        rest = [scene.noun_phrase(s.id) for s in scene.subjects if s.id not in mentioned]
        if rest:
            plural = len(rest) > 1 or _plural_np(rest[0])
            there = ("there are" if plural else "there is") + (" also" if sentences else "")
            sentences.append(f"{there} {_join(rest)}.")
        if where:
            sentences[0] = f"{where}, {sentences[0]}"
        sentences = [_upper_first(x) for x in sentences]
    tail = V.STYLE_TAILS.get(scene.style or "")
    if tail:
        sentences.append(f"The scene is shown {tail}.")
    return " ".join(sentences)


def _relation_clause(scene: Scene, r: Relation, subject: str, obj: str) -> str:
    be = "are" if (scene.subject(r.subject).count or 1) > 1 else "is"
    predicate = {"left of": "to the left of", "right of": "to the right of"}.get(
        r.predicate, r.predicate
    )
    return f"{subject} {be} {predicate} {obj}"


def _where(background: str | None) -> str:
    if not background:
        return ""
    if background in V.SETTING_PHRASES:
        return V.SETTING_PHRASES[background]
    text = background.strip()
    return f"on {_article(text)} {text}" + ("" if "background" in text else " background")


def _plural_np(np: str) -> bool:
    return np.split(" ", 1)[0] in NUMBER_WORDS[2:]  # "two" .. "ten"


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _join(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + ", and " + items[-1]


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


# ---------------------------------------------------------------------- building


SceneSampler = Callable[[random.Random, int, str], Scene]


def _open_sampler(rng: random.Random, n: int, split: str) -> Scene:
    return sample_open_scene(rng, n)


def _world_sampler(rng: random.Random, n: int, split: str) -> Scene:
    import vrl.world as world

    # The world keeps some (colour, shape) pairs out of training; every test scene has one.
    # The 1-3 splits keep the world's unnamed default background, as its tiny models are
    # trained; the others name a background: their global scene.
    return world.sample_scene(
        rng, min_subjects=n, max_subjects=n, relation_prob=0.6, sub_attribute_prob=0.3,
        split="test" if split.startswith("test") else "train",
        background=None if split.endswith("1-3") else "random",
    )  # fmt: skip


SAMPLERS: dict[str, SceneSampler] = {"open": _open_sampler, "world": _world_sampler}


Drawn = tuple[str, str, int, int]
"""(prompt, its JSON line, subject count, question count)."""


def draw_prompt(vocab: str, split: str, seed: int, index: int, n: int, attempt: int = 0) -> Drawn:
    """One benchmark line from its own random stream: any prompt can be rebuilt alone, and the
    result does not depend on how the work is split between processes."""
    rng = random.Random(f"{HICOPROMPT_VERSION}/{seed}/{vocab}/{split}/{index}/{attempt}")
    scene = SAMPLERS[vocab](rng, n, split)
    # the prompt field is the description; a sampler's own (the world's) would disagree with it
    scene = dataclasses.replace(scene, description="")
    phrasing = rng.choice(PHRASINGS)
    prompt = phrase(scene, phrasing)
    questions = scene.questions()
    line = {
        "id": f"{vocab}-{split.replace('_', '').replace('-', '')}-{index:05d}",
        "version": HICOPROMPT_VERSION,
        "vocab": vocab,
        "split": split,
        "subject_count": len(scene.subjects),
        "prompt": prompt,
        "phrasing": phrasing,
        "scene": scene.to_dict(),
        "questions": [question_to_dict(q) for q in questions],
    }
    text = json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"
    return prompt, text, len(scene.subjects), len(questions)


def _draw_many(jobs: list[tuple]) -> list[Drawn]:
    return [draw_prompt(*job) for job in jobs]


def subject_counts(split: str, seed: int, n_prompts: int, lo: int, hi: int) -> list[int]:
    """Balanced subject counts (each of lo..hi equally often, +-1), shuffled by the seed."""
    counts = [lo + i % (hi - lo + 1) for i in range(n_prompts)]
    random.Random(f"{HICOPROMPT_VERSION}/{seed}/{split}/counts").shuffle(counts)
    return counts


def build_vocab(
    vocab: str, splits: dict[str, tuple[int, int, int]], seed: int, workers: int = 1
) -> dict[str, list[Drawn]]:
    """Every split's lines. Prompts are drawn in parallel, then made unique in split order: a
    prompt of an earlier split is redrawn (attempt 1, 2, ...), so train and test never share
    one; a repeat within a split is redrawn up to 30 times, then kept (a 1-subject world split
    has fewer distinct prompts than lines)."""
    jobs = {
        split: [
            (vocab, split, seed, i, n) for i, n in enumerate(subject_counts(split, seed, *spec))
        ]
        for split, spec in splits.items()
    }
    flat = [job for split_jobs in jobs.values() for job in split_jobs]
    if workers > 1 and len(flat) >= PARALLEL_MIN_PROMPTS:
        from concurrent.futures import ProcessPoolExecutor

        size = max(100, len(flat) // (4 * workers))
        chunks = [flat[k : k + size] for k in range(0, len(flat), size)]
        with ProcessPoolExecutor(workers) as pool:
            drawn = [d for part in pool.map(_draw_many, chunks) for d in part]
    else:
        drawn = _draw_many(flat)
    out: dict[str, list[Drawn]] = {}
    earlier: set[str] = set()
    k = 0
    for split, split_jobs in jobs.items():
        here: set[str] = set()
        lines = []
        for job in split_jobs:
            d, k = drawn[k], k + 1
            attempt = 0
            while d[0] in earlier or (d[0] in here and attempt < 30):
                attempt += 1
                if attempt > 100:
                    raise RuntimeError(
                        f"{vocab}/{split}: no prompt with {job[-1]} subjects that earlier splits "
                        "do not already use, after 100 draws"
                    )
                d = draw_prompt(*job, attempt=attempt)
            here.add(d[0])
            lines.append(d)
        earlier |= here
        out[split] = lines
    return out


def build_hicoprompt(
    out: str | Path,
    seed: int = 0,
    vocab: str = "both",
    splits: dict[str, tuple[int, int, int]] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write the benchmark files (see the module docstring); returns the manifests by vocab.

    `splits` overrides the sizes (split -> (prompts, fewest subjects, most subjects)), e.g. for
    tests; the 4-6 and 7-12 subsets are taken from "test" when it is built. `workers`
    processes draw the prompts (default: the CPU count, at most 8); the files do not depend
    on it.
    """
    vocabs = VOCABS if vocab == "both" else (vocab,)
    unknown = [v for v in vocabs if v not in VOCABS]
    if unknown:
        raise ValueError(f"unknown vocabulary {unknown[0]!r}; valid: open, world, both")
    splits = dict(SPLITS if splits is None else splits)
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    manifests = {}
    for v in vocabs:
        folder = Path(out) / v
        folder.mkdir(parents=True, exist_ok=True)
        files = build_vocab(v, splits, seed, workers)
        for subset, (source, lo, hi) in SUBSETS.items():
            if source in files:
                files[subset] = [d for d in files[source] if lo <= d[2] <= hi]
        manifest: dict[str, Any] = {
            "version": HICOPROMPT_VERSION,
            "seed": seed,
            "vocab": v,
            "files": {},
        }
        for name, lines in files.items():
            data = "".join(d[1] for d in lines).encode()
            (folder / f"{name}.jsonl").write_bytes(data)
            counts = [d[2] for d in lines]
            manifest["files"][f"{name}.jsonl"] = {
                "prompts": len(lines),
                "subjects": [min(counts), max(counts)] if counts else None,
                "questions": sum(d[3] for d in lines),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        manifests[v] = manifest
    return manifests
