"""HiCoPrompt builder: deterministic by seed, the stated sizes and subject ranges, a right question
graph, and prompts that say everything the questions ask."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from vrl.bench import vocab as V
from vrl.bench.build import (
    HICOPROMPT_VERSION,
    PHRASINGS,
    SPLITS,
    build_hicoprompt,
    phrase,
    sample_open_scene,
)
from vrl.bench.data import load_items
from vrl.hicogen.scene import Scene

SMALL = {"test": (90, 4, 12), "train": (45, 4, 12), "test_1-3": (30, 1, 3)}


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def full_test_split(tmp_path_factory):
    """The real open-vocabulary test split: 3,000 prompts (a few seconds)."""
    out = tmp_path_factory.mktemp("hicoprompt")
    manifests = build_hicoprompt(
        out, seed=0, vocab="open", splits={"test": SPLITS["test"]}, workers=1
    )
    return out / "open", manifests["open"], read_lines(out / "open" / "test.jsonl")


def test_stated_sizes_are_the_papers():
    assert SPLITS["test"] == (3000, 4, 12) and SPLITS["train"] == (12000, 4, 12)
    assert SPLITS["test_1-3"][1:] == (1, 3) and SPLITS["train_1-3"][1:] == (1, 3)


def test_building_twice_with_one_seed_gives_identical_files(tmp_path):
    build_hicoprompt(tmp_path / "a", seed=7, vocab="open", splits=SMALL)
    build_hicoprompt(tmp_path / "b", seed=7, vocab="open", splits=SMALL)
    build_hicoprompt(tmp_path / "c", seed=8, vocab="open", splits=SMALL)
    names = sorted(p.name for p in (tmp_path / "a" / "open").iterdir())
    assert names == sorted(
        ["manifest.json", "test.jsonl", "train.jsonl", "test_1-3.jsonl", "test_4-6.jsonl",
         "test_7-12.jsonl"]
    )  # fmt: skip
    for name in names:
        a = (tmp_path / "a" / "open" / name).read_bytes()
        assert a == (tmp_path / "b" / "open" / name).read_bytes(), name
        assert a != (tmp_path / "c" / "open" / name).read_bytes(), name


def test_files_do_not_depend_on_the_number_of_worker_processes(tmp_path, monkeypatch):
    import vrl.bench.build as build

    monkeypatch.setattr(build, "PARALLEL_MIN_PROMPTS", 0)
    build_hicoprompt(tmp_path / "one", seed=1, vocab="open", splits=SMALL, workers=1)
    build_hicoprompt(tmp_path / "two", seed=1, vocab="open", splits=SMALL, workers=2)
    for path in (tmp_path / "one" / "open").iterdir():
        assert path.read_bytes() == (tmp_path / "two" / "open" / path.name).read_bytes()


def test_full_test_split_counts_ranges_and_subsets(full_test_split):
    folder, manifest, lines = full_test_split
    assert len(lines) == 3000 and manifest["files"]["test.jsonl"]["prompts"] == 3000
    counts = Counter(d["subject_count"] for d in lines)
    assert sorted(counts) == list(range(4, 13))
    assert max(counts.values()) - min(counts.values()) <= 1  # balanced over 4..12
    assert all(d["subject_count"] == len(d["scene"]["subjects"]) for d in lines)
    small = read_lines(folder / "test_4-6.jsonl")
    large = read_lines(folder / "test_7-12.jsonl")
    assert {d["subject_count"] for d in small} == {4, 5, 6}
    assert {d["subject_count"] for d in large} == set(range(7, 13))
    assert [d["id"] for d in lines] == sorted(d["id"] for d in small + large)
    assert len({d["id"] for d in lines}) == len({d["prompt"] for d in lines}) == 3000
    assert all(d["version"] == HICOPROMPT_VERSION for d in lines)
    assert manifest["version"] == HICOPROMPT_VERSION
    assert Counter(d["phrasing"] for d in lines).keys() == set(PHRASINGS)


def test_small_splits_and_no_prompt_shared_between_train_and_test(tmp_path):
    build_hicoprompt(tmp_path, seed=0, vocab="open", splits=SMALL)
    splits = {n: read_lines(tmp_path / "open" / f"{n}.jsonl") for n in SMALL}
    for name, (n, lo, hi) in SMALL.items():
        assert len(splits[name]) == n
        assert {d["subject_count"] for d in splits[name]} == set(range(lo, hi + 1))
    prompts = [d["prompt"] for lines in splits.values() for d in lines]
    assert len(prompts) == len(set(prompts))


def test_question_graph_parents(full_test_split):
    for d in full_test_split[2][:300]:
        scene = Scene.from_json(d["scene"])
        questions = d["questions"]
        # the file's graph is the schema's own
        assert [q["id"] for q in questions] == [q.id for q in scene.questions()]
        levels = {q["id"]: q["level"] for q in questions}
        for q in questions:
            subjects = q["target"]["subjects"]
            if q["level"] == "exist":
                assert q["parents"] == [] and q["id"] == f"{subjects[0]}/exist"
            elif q["level"] == "attribute":
                assert q["parents"] == [f"{subjects[0]}/exist"]
            else:
                assert q["parents"] == [f"{s}/exist" for s in subjects] and len(subjects) == 2
            assert all(levels[p] == "exist" for p in q["parents"])
        names = Counter(s["name"] for s in d["scene"]["subjects"])
        # a subject sharing its name is referred to by its attributes: only parts are asked
        n_attr = sum(
            len(s["sub_attributes"]) + (len(s["attributes"]) if names[s["name"]] == 1 else 0)
            for s in d["scene"]["subjects"]
        )
        assert Counter(levels.values()) == {
            "exist": d["subject_count"],
            "attribute": n_attr,
            "relation": len(d["scene"]["relations"]),
        }


def test_scenes_are_plausible_and_same_kind_subjects_differ(full_test_split):
    folder = full_test_split[0]
    kinds = Counter()
    for item in load_items(folder / "test_4-6.jsonl"):
        scene = item.scene
        refs = [scene.reference(s.id) for s in scene.subjects]
        assert len(set(refs)) == len(refs)  # every subject can be named unambiguously
        by_name: dict[str, list] = {}
        for s in scene.subjects:
            assert s.attributes  # at least a colour
            by_name.setdefault(s.name, []).append(s)
        for same in by_name.values():
            colours = [next(a for a in s.attributes if a in V.COLOURS) for s in same]
            assert len(set(colours)) == len(colours)
        pairs = set()
        for r in scene.relations:
            kinds[r.category] += 1
            pair = frozenset((r.subject, r.object))
            assert pair not in pairs  # at most one relation per pair: none can contradict
            pairs.add(pair)
            obj = V.OBJECTS_BY_NAME[scene.subject(r.object).name]
            if r.predicate == "on":
                assert obj.surface
            if r.predicate == "in":
                assert obj.container
        assert scene.relations and scene.background and scene.style
        # every subject, with all its attributes, is in the prompt
        for s in scene.subjects:
            assert scene.noun_phrase(s.id) in item.prompt.lower()
    assert set(kinds) == {"spatial", "size", "support"}


def test_every_phrasing_names_everything():
    scene = sample_open_scene(random.Random(3), 6)
    for phrasing in PHRASINGS:
        text = phrase(scene, phrasing)
        assert text[0].isupper() and text.endswith(".")
        for s in scene.subjects:
            assert scene.noun_phrase(s.id) in text.lower(), (phrasing, s)
        for r in scene.relations:
            assert r.predicate.split()[0] in text
        assert V.SETTING_PHRASES[scene.background] in text.lower()
    with pytest.raises(ValueError, match="phrasing"):
        phrase(scene, "poem")
