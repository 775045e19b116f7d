"""The shapes world's VLM: the committed checkpoint loads through the project's adapter and the
trainer's resolver, answers the SFT task format, and `vrl pretrain world-vlm` writes a loadable
folder; the colour-shift GRPO recipe file is the recipe its measurement runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import yaml

from vrl.models.paths import resolve_model_path, world_weights_path
from vrl.models.vlm import VLMAdapter
from vrl.pretrain import cli as pretrain_cli
from vrl.pretrain import vlm as wv
from vrl.quickstart import colour_shift
from vrl.world.tasks import parse_world_data, write_task_files

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def adapter():
    return VLMAdapter.from_pretrained(resolve_model_path("world:vlm"))


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("world-vlm-held-out")
    return wv.write_held_out(out, ["colour", "counting"], n=24)


def test_world_resolver_names_the_committed_folder_and_tiny_random_still_works():
    folder = Path(resolve_model_path("world:vlm"))
    assert folder == world_weights_path("vlm") == wv.WEIGHTS_DIR
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    assert (folder / "model.safetensors").stat().st_size < 30e6
    with pytest.raises(FileNotFoundError, match="world:vlm"):
        resolve_model_path("world:nothing")
    assert resolve_model_path("tiny-random:qwen2_5_vl").endswith("v1")


def test_committed_checkpoint_is_a_qwen2_5_vl(adapter):
    assert adapter.family == "qwen2_5_vl" and adapter.box_convention == "resized_pixels"
    assert type(adapter.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert adapter.tokenizer.padding_side == "left"


def test_answers_in_the_sft_format_and_beats_chance(adapter, held_out):
    from vrl.evaluate import greedy_completions

    samples = [s for task in held_out.values() for s in task]
    results = greedy_completions(
        adapter, adapter.model, samples, "answer_only", max_new_tokens=8, progress=False
    )
    assert all(text.startswith("<answer>") and text.endswith("</answer>") for _, text, _ in results)
    colour = [text == wv.answer_text(s) for s, text, _ in results if s.extra["task"] == "colour"]
    card = (wv.WEIGHTS_DIR / "README.md").read_text()
    assert "held-out" in card and "vrl pretrain world-vlm --seed 0" in card
    # the card says 98% on 200 questions; chance is 1 in 6 colours
    assert sum(colour) / len(colour) >= 0.8, colour


def test_sft_labels_cover_exactly_the_answer(adapter, held_out):
    samples = held_out["counting"][:3] + held_out["colour"][:2]
    inputs, labels = wv.sft_batch(adapter, samples, "answer_only")
    assert labels.shape == inputs["input_ids"].shape
    for row, sample in enumerate(samples):
        kept = labels[row][labels[row] != -100]
        expected = adapter.tokenizer(wv.answer_text(sample) + adapter.tokenizer.eos_token)
        assert kept.tolist() == expected["input_ids"]
        assert adapter.tokenizer.decode(kept) == wv.answer_text(sample) + "<|im_end|>"


def test_pretrain_command_writes_a_loadable_folder(tmp_path):
    out = tmp_path / "vlm"
    args = argparse.Namespace(
        out=str(out),
        seed=0,
        threads=None,
        extra=["steps=2", "train_per_task=6", "held_out_per_task=2", "batch_size=4"],
    )
    assert pretrain_cli.vlm_main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["history"][-1]["step"] == 2 and "mean" in summary["held_out"]
    loaded = VLMAdapter.from_pretrained(out / "model")
    assert (out / "model" / "README.md").is_file()
    batch = loaded.prepare_inputs(
        [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]],
        [[__import__("PIL.Image").Image.new("RGB", (64, 64))]],
    )
    with torch.no_grad():
        assert loaded.model(**batch.model_inputs).logits.isfinite().all()


def test_pretrain_trains_on_every_named_background(tmp_path):
    """``train_background`` shares the training scenes out between backgrounds, each in its own
    folder, and the SFT reads all of them (the broad base of the grounding probes)."""
    from PIL import Image

    from vrl.world.vocabulary import BACKGROUNDS

    out = tmp_path / "vlm"
    args = argparse.Namespace(
        out=str(out), seed=0, threads=None,
        extra=["steps=1", "tasks=colour", "train_per_task=6", "held_out_per_task=2",
               "batch_size=2", "train_background=white+dark grey"],
    )  # fmt: skip
    assert pretrain_cli.vlm_main(args) == 0
    for name in ("white", "dark grey"):
        folder = out / "data" / name.replace(" ", "-")
        lines = (folder / "world_colour_train.jsonl").read_text()
        records = [json.loads(line) for line in lines.splitlines()]
        assert len(records) == 3
        corner = Image.open(folder / records[0]["image"]).convert("RGB").getpixel((0, 0))
        assert corner == BACKGROUNDS[name]
    assert not (out / "data" / "world_colour_train.jsonl").exists()


def test_the_colour_shift_recipe_is_the_yaml_file_and_a_valid_config():
    from vrl.config import load_config
    from vrl.trainers.vlm_config import VLMTrainConfig

    path = ROOT / "configs" / "vlm_world_grpo.yaml"
    assert colour_shift.RECIPE == yaml.safe_load(path.read_text())
    cfg = load_config(VLMTrainConfig, path)
    assert cfg.data.train_files == "world:colour@dark grey+light grey"
    assert cfg.grpo.rewards == {"accuracy": 1.0, "format_answer": 0.1}


def test_grpo_runs_from_the_world_checkpoint_on_world_tasks(tmp_path):
    from vrl.config import load_config
    from vrl.trainers.vlm_config import VLMTrainConfig
    from vrl.trainers.vlm_grpo import train

    cfg = load_config(
        VLMTrainConfig,
        ROOT / "configs" / "vlm_world_grpo.yaml",
        [
            f"run.output_dir={tmp_path}",
            "run.max_steps=1",
            "grpo.prompts_per_step=2",
            "grpo.group_size=2",
            "data.synthetic_size=2",
            "run.save_final=false",
        ],
    )
    summary = train(cfg)
    assert len(summary["rewards"]) == 1
    tasks, background = parse_world_data(cfg.data.train_files.removeprefix("world:"))
    names = background.split("+")
    files = sorted((tmp_path / "data" / "world").glob("*/*.jsonl"))
    assert [p.name for p in files] == [f"world_{t}_train.jsonl" for t in tasks for _ in names]
    seen = {json.loads(p.open().readline())["scene"]["background"] for p in files}
    assert seen == set(names)


def test_world_data_spec_names_tasks_and_an_optional_background():
    assert parse_world_data("colour") == (["colour"], None)
    assert parse_world_data(" colour, counting @dark grey") == (
        ["colour", "counting"],
        "dark grey",
    )
    assert parse_world_data("colour@random") == (["colour"], "random")
    assert parse_world_data("colour@dark grey + light grey") == (
        ["colour"],
        "dark grey+light grey",
    )
    with pytest.raises(ValueError, match="empty background"):
        parse_world_data("colour@dark grey+")
    with pytest.raises(ValueError, match="names no task"):
        parse_world_data("@dark grey")
    with pytest.raises(ValueError, match="names no task"):
        parse_world_data(" , ")


def test_task_files_draw_the_background_and_one_shape_per_colour_question(tmp_path):
    from PIL import Image

    from vrl.world.vocabulary import BACKGROUNDS

    paths = write_task_files(tmp_path, ["colour"], 6, 0, "train", background="dark grey")
    samples = wv.load_task_samples(paths)["colour"]
    assert len(samples) == 6
    for sample in samples:
        scene = sample.extra["scene"]
        assert scene["background"] == "dark grey" and len(scene["subjects"]) == 1
        corner = Image.open(sample.images[0]).convert("RGB").getpixel((0, 0))
        assert corner == BACKGROUNDS["dark grey"]
    grey = wv.load_task_samples(write_task_files(tmp_path / "g", ["colour"], 2, 0, "train"))
    assert grey["colour"][0].extra["scene"].get("background") is None
    with pytest.raises(ValueError, match="background"):
        write_task_files(tmp_path / "bad", ["colour"], 2, 0, "train", background="purple")


def test_a_background_mixture_shares_the_samples_out_in_sub_folders(tmp_path):
    paths = write_task_files(
        tmp_path, ["colour", "counting"], 5, 0, "train", background="dark grey+light grey"
    )
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "dark-grey/world_colour_train.jsonl",
        "dark-grey/world_counting_train.jsonl",
        "light-grey/world_colour_train.jsonl",
        "light-grey/world_counting_train.jsonl",
    ]
    by_file = [wv.load_task_samples([p]) for p in paths]
    assert [len(next(iter(d.values()))) for d in by_file] == [3, 3, 2, 2]
    assert {s.extra["scene"]["background"] for s in by_file[2]["colour"]} == {"light grey"}


def test_run_trains_and_measures_before_and_after(tmp_path):
    from safetensors.torch import load_file

    result = colour_shift.run(
        tmp_path,
        seed=0,
        steps=2,
        # hot sampling so that some group holds a right and a wrong answer (else no gradient)
        overrides=[
            "grpo.prompts_per_step=4",
            "grpo.group_size=4",
            "grpo.temperature=2.0",
            "data.synthetic_size=8",
        ],
        held_out_per_task=2,
    )
    assert result["background"] == "dark grey" and result["steps"] == 2
    assert result["train_backgrounds"] == "dark grey+light grey"
    assert set(result["before"]) == set(result["after"]) == {"colour", "mean"}
    assert set(result["control_before"]) == {"colour", "mean"}
    assert len(result["rewards"]) == 2 and result["train_cpu_minutes"] > 0
    before = load_file(wv.WEIGHTS_DIR / "model.safetensors")
    after = load_file(tmp_path / "run" / "final" / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
