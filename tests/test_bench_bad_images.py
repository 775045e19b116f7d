"""`vrl bench eval` on a folder with bad images: each unreadable, wrong-size or missing image is
a failed item (scored 0 on every question), named in a warning and counted in the summary and
the report, and the run goes on (issue 20, item 7)."""

from __future__ import annotations

import json
import logging
import os

import pytest

import vrl.world as world
from vrl.bench.data import load_items
from vrl.bench.evaluate import evaluate_items
from vrl.bench.judges import build_judge
from vrl.cli import main


def build_world_split(tmp_path, n):
    out = tmp_path / "hicoprompt"
    assert main(["bench", "build", "hicoprompt", "--vocab", "world", "--splits", "test_1-3",
                 "--max-prompts", str(n), "--out", str(out)]) == 0  # fmt: skip
    return out / "world" / "test_1-3.jsonl"


def failed_rows(res):
    rows = [json.loads(line) for line in (res / "per_prompt.jsonl").read_text().splitlines()]
    return {r["id"]: [im.get("failed") for im in r["images"]] for r in rows}, rows


@pytest.fixture
def bad_folder(tmp_path):
    """Nine prompts: six with a bad image or none, three with a good 32 px image."""
    prompts = build_world_split(tmp_path, n=9)
    items = load_items(prompts)
    images = tmp_path / "images"
    images.mkdir()
    good = world.render(items[0].scene, 32)
    good.save(tmp_path / "good.png")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "notes.txt").write_text("not an image\n")
    bad = {
        "corrupt": lambda p: p.write_bytes(data[: len(data) // 2]),  # a PNG cut short
        "text": lambda p: p.write_text("hello, I am not a PNG\n"),
        "symlink": lambda p: p.symlink_to(tmp_path / "notes.txt"),
        "dangling": lambda p: p.symlink_to(tmp_path / "deleted.png"),
        "wrong_size": lambda p: world.render(items[4].scene, 48).save(p),
        "missing": lambda p: None,
    }
    names = {}
    for item, (kind, make) in zip(items, bad.items(), strict=False):
        names[kind] = (item.id, f"{item.id}.png")
        make(images / f"{item.id}.png")
    for item in items[len(bad) :]:
        world.render(item.scene, 32).save(images / f"{item.id}.png")
    return prompts, items, images, names


def test_bad_images_are_failed_items_and_the_run_goes_on(tmp_path, bad_folder, caplog, capsys):
    prompts, items, images, names = bad_folder
    out = tmp_path / "results"
    args = ["bench", "eval", "hicoprompt", "--prompts", str(prompts), "--images", str(images),
            "--judge", "exact", "--out", str(out), "--no-plots"]  # fmt: skip
    for run in range(2):  # a rerun reuses the records and reports the same failures
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="vrl.bench"):
            assert main(args) == 0
        printed = capsys.readouterr().out
        res = out / "exact"
        summary = json.loads((res / "summary.json").read_text())
        assert summary["prompts"] == 9 and summary["images"] == 3
        assert summary["failed_images"] == 6
        assert summary["failures"] == {"missing": 1, "unreadable": 4, "wrong_size": 1}
        assert summary["missing_images"] == 1
        assert summary["judged_this_run"]["images"] == (3 if run == 0 else 0)
        warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        for kind, (item_id, name) in names.items():
            assert (item_id if kind == "missing" else name) in warned, kind
        assert "48x48" in warned and "32x32" in warned  # the size found and the one expected
        assert "6 failed" in printed and "6 failed" in (res / "summary.md").read_text()

    failed, rows = failed_rows(res)
    kinds = {kind: failed[item_id] for kind, (item_id, _) in names.items()}
    assert kinds == {"corrupt": ["unreadable"], "text": ["unreadable"], "symlink": ["unreadable"],
                     "dangling": ["unreadable"], "wrong_size": ["wrong_size"],
                     "missing": ["missing"]}  # fmt: skip
    by_id = {r["id"]: r for r in rows}
    for item_id, _ in names.values():  # a failed image fails every question it was asked
        assert by_id[item_id]["dependencies"]["exist"] == 0.0
        assert by_id[item_id]["independent"]["all"] == 0.0
    for item in items[6:]:  # the good images are judged as usual: a render is always right
        assert failed[item.id] == [None] and by_id[item.id]["dependencies"]["exist"] == 1.0
    # the headline counts the failed prompts: 3 right out of 9
    assert summary["dependencies"]["exist"] == pytest.approx(3 / 9)


def test_the_generation_settings_give_the_size_and_the_count(tmp_path):
    """With the generation's settings (generation.json beside the images) the expected size is
    theirs, even when most images are of another size, and each image short of
    images_per_prompt is missing."""
    items = load_items(build_world_split(tmp_path, n=2))
    images = tmp_path / "images"
    images.mkdir()
    world.render(items[0].scene, 32).save(images / f"{items[0].id}_0.png")  # its _1 is missing
    for k in range(2):
        world.render(items[1].scene, 48).save(images / f"{items[1].id}_{k}.png")
    generation = {"height": 32, "width": 32, "images_per_prompt": 2}
    (images / "generation.json").write_text(json.dumps(generation))
    out = tmp_path / "results"
    assert main(["bench", "eval", "hicoprompt", "--prompts", str(tmp_path / "hicoprompt" / "world"
                 / "test_1-3.jsonl"), "--images", str(images), "--judge", "exact",
                 "--out", str(out), "--no-plots"]) == 0  # fmt: skip
    summary = json.loads((out / "exact" / "summary.json").read_text())
    assert summary["failures"] == {"missing": 1, "unreadable": 0, "wrong_size": 2}
    assert summary["images"] == 1 and summary["settings"]["image_size"] == [32, 32]
    failed, _ = failed_rows(out / "exact")
    assert failed == {items[0].id: [None, "missing"], items[1].id: ["wrong_size"] * 2}


def test_no_majority_size_checks_no_size(tmp_path, caplog):
    """Without generation settings the expected size is the one most images have; when no size
    is shared by more than half of the images none is called wrong, and a warning says so."""
    items = load_items(build_world_split(tmp_path, n=2))
    paths = {}
    for item, size in zip(items, (32, 48), strict=True):
        paths[item.id] = [tmp_path / f"{item.id}.png"]
        world.render(item.scene, size).save(paths[item.id][0])
    with caplog.at_level(logging.WARNING, logger="vrl.bench"):
        summary = evaluate_items(items, paths, build_judge("exact"), tmp_path / "res", plots=False)
    assert summary["failed_images"] == 0 and summary["images"] == 2
    assert summary["settings"]["image_size"] is None
    assert "no image size is shared by most images" in caplog.text
    # a size given by the caller is checked
    summary = evaluate_items(
        items, paths, build_judge("exact"), tmp_path / "res2", plots=False, image_size=(48, 48)
    )
    assert summary["failures"]["wrong_size"] == 1 and summary["images"] == 1
    assert os.path.exists(tmp_path / "res2" / "summary.md")
