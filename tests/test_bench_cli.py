"""`vrl bench` end to end on small splits: build, judge a folder, rerun (nothing redone), and
generate with a tiny SD3 (resumable, with and without the chain of synthesis)."""

from __future__ import annotations

import json

import vrl.world as world
from vrl.bench.data import load_items
from vrl.cli import main


def pixels(path):
    import numpy as np
    import torch
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(path), dtype=np.int16))


def build_world_split(tmp_path, n=6):
    out = tmp_path / "hicoprompt"
    assert main(["bench", "build", "hicoprompt", "--vocab", "world", "--splits", "test_1-3",
                 "--max-prompts", str(n), "--out", str(out)]) == 0  # fmt: skip
    return out / "world" / "test_1-3.jsonl"


def test_build_and_judge_a_folder_then_rerun_skips(tmp_path, capsys):
    prompts = build_world_split(tmp_path)
    items = load_items(prompts)
    assert len(items) == 6 and {it.subject_count for it in items} == {1, 2, 3}
    images = tmp_path / "images"
    images.mkdir()
    for i, item in enumerate(items):  # both namings: <id>.png and <id>_<k>.png
        names = [f"{item.id}.png"] if i % 2 else [f"{item.id}_0.png", f"{item.id}_1.png"]
        for k, name in enumerate(names):
            world.render(item.scene, 32, seed=k).save(images / name)
    out = tmp_path / "results"
    args = ["bench", "eval", "hicoprompt", "--prompts", str(prompts), "--images", str(images),
            "--judge", "exact", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| with dependencies (DSG) | 1.000 | 1.000 |" in printed
    res = out / "exact"
    summary = json.loads((res / "summary.json").read_text())
    assert summary["prompts"] == 6 and summary["images"] == 9 and summary["missing_images"] == 0
    for key in ("dependencies", "independent"):
        assert set(summary[key].values()) <= {1.0, None} and summary[key]["exist"] == 1.0
    assert summary["clip_score"] is None and summary["hps"] is None
    table = (res / "summary.md").read_text()
    assert "Acc_exist | Acc_attribute | Acc_relationship" in table
    assert "n/a (no CLIP weights given)" in table and "n/a (no HPS weights given)" in table
    assert (res / "acc_by_subjects.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (res / "per_prompt.jsonl").read_text()
    assert [json.loads(x)["id"] for x in lines.splitlines()] == [it.id for it in items]

    assert main(args) == 0  # rerun: everything reused
    again = json.loads((res / "summary.json").read_text())
    assert (
        again["judged_this_run"]["images"] == 0 and (res / "per_prompt.jsonl").read_text() == lines
    )
    (images / f"{items[0].id}_1.png").unlink()  # a changed image set is judged again
    assert main(args) == 0
    again = json.loads((res / "summary.json").read_text())
    assert again["judged_this_run"]["images"] == 1 and again["images"] == 8


def test_generate_resumably_then_judge(tmp_path, capsys):
    prompts = build_world_split(tmp_path, n=3)
    out = tmp_path / "run"
    args = ["bench", "eval", "hicoprompt", "--prompts", str(prompts), "--limit", "2",
            "--model", "tiny-random:sd3", "--height", "32", "--width", "32", "--steps", "1",
            "--images-per-prompt", "2", "--judge", "exact", "--out", str(out), "--no-plots"]  # fmt: skip
    assert main(args) == 0
    assert "generated 4 images" in capsys.readouterr().out
    images = sorted((out / "images").glob("*.png"))
    assert [p.name[-6:] for p in images] == ["_0.png", "_1.png"] * 2
    first = pixels(images[1])
    images[1].unlink()
    assert main(args) == 0
    assert "generated 1 images" in capsys.readouterr().out
    # the same image, though drawn in a batch of 1 instead of 4: its noise comes from its own
    # seed (a batch's float rounding may still move a channel value by one step)
    assert (pixels(images[1]) - first).abs().max() <= 1
    assert (pixels(images[0]) - first).abs().max() > 1  # and not its neighbour's
    summary = json.loads((out / "exact" / "summary.json").read_text())
    assert summary["images"] == 4
    assert all(v is None or 0.0 <= v <= 1.0 for v in summary["dependencies"].values())
    record = json.loads((out / "exact" / "per_prompt.jsonl").read_text().splitlines()[0])
    assert all(v in (0.0, 1.0) for im in record["images"] for v in im["answers"].values())

    chain = tmp_path / "chain"
    assert main([*args[:-3], "--limit", "1", "--images-per-prompt", "1", "--chain",
                 "--strength", "0.6", "--out", str(chain), "--no-plots"]) == 0  # fmt: skip
    assert len(list((chain / "images").glob("*.png"))) == 1
    assert json.loads((chain / "images" / "generation.json").read_text())["chain"] is True


def test_a_judge_that_does_not_fit_the_prompts_is_one_line(tmp_path, capsys):
    out = tmp_path / "hicoprompt"
    assert main(["bench", "build", "hicoprompt", "--vocab", "open", "--splits", "test_1-3",
                 "--max-prompts", "2", "--out", str(out)]) == 0  # fmt: skip
    prompts = out / "open" / "test_1-3.jsonl"
    images = tmp_path / "images"
    images.mkdir()
    first = load_items(prompts)[0]
    world.render(world.sample_scene(0), 32).save(images / f"{first.id}.png")  # any image will do
    code = main(["bench", "eval", "hicoprompt", "--prompts", str(prompts), "--images", str(images),
                 "--judge", "exact", "--out", str(tmp_path / "res")])  # fmt: skip
    assert code == 2
    assert "exact judge checks shapes-world scenes only" in capsys.readouterr().err


def test_chain_unit_prompts_follow_unit_prompts_flag(tmp_path, monkeypatch, capsys):
    import vrl.hicogen.chain as chain_module

    lines = build_world_split(tmp_path, n=12).read_text().splitlines()
    prompts = tmp_path / "related.jsonl"  # the first prompt whose subjects have a relation
    prompts.write_text(next(x for x in lines if json.loads(x)["scene"]["relations"]) + "\n")
    item = load_items(prompts)[0]
    seen = []
    real = chain_module.synthesize_chain

    def spy(adapter, transformer, unit_prompts, final_prompt, **kwargs):
        seen.append(list(unit_prompts))
        return real(adapter, transformer, unit_prompts, final_prompt, **kwargs)

    monkeypatch.setattr(chain_module, "synthesize_chain", spy)
    base = ["bench", "eval", "hicoprompt", "--prompts", str(prompts), "--limit", "1",
            "--model", "tiny-random:sd3", "--height", "32", "--width", "32", "--steps", "1",
            "--chain", "--judge", "exact", "--no-plots"]  # fmt: skip
    runs = (
        ([], "own"),
        (["--cumulative"], "cumulative"),
        (["--unit-prompts", "relational"], "relational"),
    )
    for flags, form in runs:
        assert main([*base, *flags, "--out", str(tmp_path / form)]) == 0
        generation = json.loads((tmp_path / form / "images" / "generation.json").read_text())
        assert generation["unit_prompts"] == form
    units = item.scene.default_units()
    assert seen == [[item.scene.unit_prompt(u, form) for u in units] for _, form in runs]
    assert len({tuple(s) for s in seen}) == 3  # unit 2 is told something else in each form
    capsys.readouterr()


def test_the_chain_runs_in_context_on_flux_and_sd3_refuses_it_in_one_line(
    tmp_path, monkeypatch, capsys
):
    import vrl.hicogen.chain as chain_module

    lines = build_world_split(tmp_path, n=6).read_text().splitlines()
    prompts = tmp_path / "two.jsonl"
    prompts.write_text(next(x for x in lines if len(json.loads(x)["scene"]["subjects"]) > 1) + "\n")
    contexts = []
    real = chain_module.synthesize_chain

    chains = []

    def spy(adapter, transformer, unit_prompts, final_prompt, **kwargs):
        contexts.append((kwargs["context"], kwargs["references"], kwargs["positions"]))
        chains.append(real(adapter, transformer, unit_prompts, final_prompt, **kwargs))
        return chains[-1]

    monkeypatch.setattr(chain_module, "synthesize_chain", spy)
    base = ["bench", "eval", "hicoprompt", "--prompts", str(prompts), "--limit", "1",
            "--height", "32", "--width", "32", "--steps", "1", "--chain", "--judge", "exact",
            "--no-plots"]  # fmt: skip
    flux = ["--model", "tiny-random:flux_kontext", "--references", "last", "--positions", "uno"]
    flux += ["--save-units", "--images-per-prompt", "2"]
    assert main([*base, *flux, "--out", str(tmp_path / "flux")]) == 0
    assert contexts == [("in_context", "last", "uno")]  # auto on FLUX Kontext: in context
    # --save-units keeps each unit image of each chain beside the final one
    from vrl.bench.generate import unit_path

    item_id = json.loads(prompts.read_text())["id"]
    steps = chains[0].steps  # the units, then the final pass
    units = len(json.loads(prompts.read_text())["scene"]["subjects"])
    assert len(steps) == units + 1
    for k in range(2):
        for j, step in enumerate(steps[:-1], start=1):
            saved = pixels(unit_path(tmp_path / "flux" / "images", item_id, k, j))
            drawn = (step.image[k].clamp(0, 1) * 255).round().permute(1, 2, 0)
            assert (saved - drawn).abs().max() <= 1
    assert len(list((tmp_path / "flux" / "images" / "units").iterdir())) == 2 * units
    generation = json.loads((tmp_path / "flux" / "images" / "generation.json").read_text())
    assert (generation["context"], generation["references"]) == ("auto", "last")
    capsys.readouterr()
    sd3 = ["--model", "tiny-random:sd3", "--context", "in_context"]
    assert main([*base, *sd3, "--out", str(tmp_path / "sd3")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "vrl bench eval: chain context in_context needs a model that takes reference images (FLUX); "
        "sd3 "
        "does not: use img2img or auto"
    )


def test_the_chain_shows_each_unit_its_boxes_with_boxes_world(tmp_path, monkeypatch, capsys):
    import vrl.hicogen.chain as chain_module

    lines = build_world_split(tmp_path, n=6).read_text().splitlines()
    prompts = tmp_path / "two.jsonl"
    prompts.write_text(next(x for x in lines if len(json.loads(x)["scene"]["subjects"]) > 1) + "\n")
    seen = []
    real = chain_module.synthesize_chain

    def spy(adapter, transformer, unit_prompts, final_prompt, **kwargs):
        seen.append((len(unit_prompts), kwargs["box_images"]))
        return real(adapter, transformer, unit_prompts, final_prompt, **kwargs)

    monkeypatch.setattr(chain_module, "synthesize_chain", spy)
    base = ["bench", "eval", "hicoprompt", "--prompts", str(prompts), "--limit", "1",
            "--height", "32", "--width", "32", "--steps", "1", "--chain", "--judge", "exact",
            "--no-plots", "--boxes", "world"]  # fmt: skip
    out = tmp_path / "flux"
    assert main([*base, "--model", "tiny-random:flux_kontext", "--out", str(out)]) == 0
    (units, boxes), = seen
    assert len(boxes) == units >= 2 and all(b.shape == (3, 32, 32) for b in boxes)
    white = [b[0] > 0 for b in boxes]  # one subject per unit, each in a box of its own
    assert all(w.any() for w in white) and not (white[0] & white[1]).any()
    generation = json.loads((out / "images" / "generation.json").read_text())
    assert generation["boxes"] == "world"
    capsys.readouterr()
    sd3 = ["--model", "tiny-random:sd3", "--context", "img2img", "--out", str(tmp_path / "sd3")]
    assert main([*base, *sd3]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "vrl bench eval: chain boxes are reference images: they need context in_context"
    )
