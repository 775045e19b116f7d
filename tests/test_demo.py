"""The demo's checks and generation loop, without a browser: limits, safetensors-only adapters,
base vs tuned side by side, and the passes being exactly those of the chain of synthesis."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from _demo import PROMPT, shared_engine, unscored_engine
from PIL import Image

from vrl.demo.app import ImageFiles, levels_table, make_generate, units_table
from vrl.demo.engine import (
    DemoEngine,
    DemoSetupError,
    LimitError,
    UnsafeWeightsError,
    check_request,
    find_lora_weights,
    load_adapter,
)
from vrl.demo.rewards import score_images
from vrl.demo.settings import DemoSettings, Limits
from vrl.hicogen.chain import ChainPlan, plan_boxes, synthesize_chain
from vrl.rewards.hierarchical import HierarchicalReward
from vrl.samplers import DecayingNoise

LIMITS = Limits()
TINY = "tiny-random:sd3"  # for tests that build their own LoRA
PAGE_DEFAULTS = dict(seed=0, steps=2, guidance=1.0, chain=True, sampler="sde")
PAGE_DEFAULTS |= dict(schedule="decaying", noise_level=0.7, strength=0.7, num_images=1)


# ---------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"prompt": "a red circle " * 40},
            "prompt: has 519 characters; this demo takes at most 300",
        ),
        ({"prompt": "   "}, "prompt: is empty. Type a prompt first"),
        ({"prompt": None}, "prompt: must be text, got None"),
        ({"steps": 51}, "steps: must be a whole number from 1 to 50, got 51"),
        ({"steps": 2.5}, "steps: must be a whole number"),
        ({"steps": "2"}, "steps: must be a whole number from 1 to 50, got '2'"),
        ({"num_images": 5}, "num_images: must be a whole number from 1 to 4, got 5"),
        ({"num_images": "4"}, "num_images: must be a whole number"),
        ({"guidance": 100.0}, "guidance: must be a number from 0 to 15, got 100.0"),
        ({"guidance": True}, "guidance: must be a number from 0 to 15, got True"),
        ({"seed": -1}, "seed: must be a whole number from 0"),
        ({"seed": None}, "seed: must be a whole number"),
        ({"seed": float("nan")}, "seed: must be a whole number from 0 to 2147483647, got nan"),
        ({"seed": "abc"}, "seed: must be a whole number from 0 to 2147483647, got 'abc'"),
        ({"chain": "no"}, "chain: must be true or false (a JSON boolean), got 'no'"),
        ({"chain": "true"}, "chain: must be true or false (a JSON boolean), got 'true'"),
        ({"chain": 1}, "chain: must be true or false (a JSON boolean), got 1"),
        ({"sampler": "../../etc/passwd"}, "sampler: must be one of ode, sde"),
        ({"schedule": "cosine"}, "schedule: must be one of constant, decaying, window"),
        ({"noise_level": float("nan")}, "noise_level: must be a number from 0 to 1"),
        ({"strength": float("inf")}, "strength: must be a number from 0.05 to 1, got inf"),
    ],
)
def test_a_request_outside_the_limits_is_refused_with_the_limit(change, message):
    values = {"prompt": PROMPT, **PAGE_DEFAULTS, **change}
    with pytest.raises(LimitError, match=re.escape(message)):
        check_request(LIMITS, **values)


def test_a_refusal_does_not_echo_a_huge_value():
    with pytest.raises(LimitError) as refused:
        check_request(LIMITS, PROMPT, **{**PAGE_DEFAULTS, "seed": "9" * 100_000})
    message = str(refused.value)
    assert message.startswith("seed: must be a whole number from 0 to 2147483647, got '999")
    assert message.endswith("(100002 characters)") and len(message) < 150


def test_a_request_within_the_limits_is_kept_as_typed():
    request = check_request(LIMITS, f"  {PROMPT} ", **{**PAGE_DEFAULTS, "steps": 50.0})
    assert request.prompt == PROMPT and request.steps == 50 and isinstance(request.steps, int)
    assert request.num_images == 1 and request.sampler == "sde"


def test_the_page_handler_refuses_oversize_input_then_still_generates(tmp_path):
    generate = make_generate(shared_engine(), ImageFiles(tmp_path))
    for change in ({"steps": 500}, {"num_images": 64}):
        values = {**PAGE_DEFAULTS, **change}
        with pytest.raises(gr.Error, match=r"(steps|num_images): must be a whole number from 1"):
            next(generate(PROMPT, *values.values()))
    with pytest.raises(gr.Error, match="at most 300"):
        next(generate("x" * 301, *PAGE_DEFAULTS.values()))
    outputs = list(generate(PROMPT, *PAGE_DEFAULTS.values()))
    status, units, _, chain_a, _, final_a, _, levels, subjects, relations = outputs[-1]
    assert status.startswith("**done**")
    assert list(units["pass"]) == ["unit 1", "unit 2", "final"]
    assert len(chain_a) == 3 and final_a is not None and Image.open(final_a).width >= 256
    assert list(levels.columns) == ["model", "image", "global", "subject", "relation", "total"]
    assert len(levels) == 1 and all(v != "-" for v in levels.iloc[0, 2:])
    assert list(subjects["subject"]) == ["a small red circle", "a large blue square"]
    assert list(relations["relation"]) == ["circle left of square"]
    # the decomposition is shown first, before any image is made
    assert outputs[0][5] is None and len(outputs) == 1 + 3 + 1 + 1


def test_an_image_once_handed_to_the_page_is_never_rewritten(tmp_path):
    """Each update repeats the images made so far; a file the browser may be fetching must keep
    its bytes and inode (CI once saw an image rewritten mid-download never arrive)."""
    files = ImageFiles(tmp_path)
    generate = make_generate(unscored_engine(), files)
    seen: dict[str, tuple] = {}
    updates = []
    for outputs in generate(PROMPT, *PAGE_DEFAULTS.values()):
        chain_a, final_a = outputs[3], outputs[5]
        paths = [path for path, _ in chain_a] + ([final_a] if final_a else [])
        updates.append([path for path, _ in chain_a])
        for path in paths:
            stat = Path(path).stat()
            seen.setdefault(path, (stat.st_ino, stat.st_mtime_ns, Path(path).read_bytes()))
    assert [len(u) for u in updates] == [0, 1, 2, 3, 3]
    for earlier, later in itertools.pairwise(updates):  # a pass keeps its file in later updates
        assert later[: len(earlier)] == earlier
    assert final_a == updates[-1][-1]  # the final image is the chain's last pass, one file
    for path, (inode, mtime, data) in seen.items():
        stat = Path(path).stat()
        assert (stat.st_ino, stat.st_mtime_ns, Path(path).read_bytes()) == (inode, mtime, data)
    assert len(seen) == 3 and all(Path(p).parent.parent == tmp_path for p in seen)
    with Image.open(final_a) as image:
        assert image.format == "PNG" and image.width >= 256


# ---------------------------------------------------------------------- what is shown


def test_demo_passes_are_exactly_the_chain_of_synthesis():
    engine = unscored_engine()
    request = check_request(LIMITS, PROMPT, **{**PAGE_DEFAULTS, "steps": 3, "num_images": 2})
    state = list(engine.generate(request))[-1]
    dec = state.decomposition
    # the default model, world:kontext, takes references and was trained on box images
    plan = ChainPlan(dec.scene, dec.units, dec.unit_prompts, dec.final_prompt)
    chain = synthesize_chain(
        engine.adapter, engine.adapter.transformer, list(dec.unit_prompts), dec.final_prompt,
        batch_size=2, height=32, width=32, num_steps=3, strength=0.7, step="sde",
        schedule=DecayingNoise(eta_max=0.7, eta_min=0.07),
        generator=torch.Generator().manual_seed(0), context="in_context",
        box_images=plan_boxes(plan, 32),
    )  # fmt: skip
    shown = [p.images for p in state.passes["model"]]
    assert len(shown) == len(chain.images) == 3
    for ours, theirs in zip(shown, chain.images, strict=True):
        torch.testing.assert_close(ours, theirs.cpu(), rtol=0, atol=1e-6)
    assert not torch.allclose(shown[0][0], shown[0][1])  # two images, two different draws


def test_boxes_are_shown_where_the_world_lays_the_prompt_out_and_said_where_not(monkeypatch):
    import vrl.demo.engine as engine_module

    engine = unscored_engine()
    seen = []
    real = engine_module.iter_chain

    def spy(*args, **kwargs):
        seen.append(kwargs["box_images"])
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "iter_chain", spy)
    request = check_request(LIMITS, PROMPT, **{**PAGE_DEFAULTS, "steps": 1})
    list(engine.generate(request))
    assert seen[-1] is not None and len(seen[-1]) == len(engine.decompose(PROMPT).units)
    outside = "a red dragon and a blue castle"  # no shape the world can draw
    request = check_request(LIMITS, outside, **{**PAGE_DEFAULTS, "steps": 1})
    states = list(engine.generate(request))
    assert seen[-1] is None
    assert any("no world layout for" in n and "placed by its prompt alone" in n
               for n in states[-1].notes)  # fmt: skip
    plain = DemoEngine(dataclasses.replace(engine.settings, boxes="none"),
                       adapter=engine.adapter, reward=("none", None))  # fmt: skip
    list(plain.generate(check_request(LIMITS, PROMPT, **{**PAGE_DEFAULTS, "steps": 1})))
    assert seen[-1] is None
    with pytest.raises(ValueError, match="boxes must be one of"):
        DemoSettings(boxes="yes")


def test_units_past_the_limit_merge_into_the_last_one():
    engine = unscored_engine()
    small = DemoEngine(
        dataclasses.replace(engine.settings, limits=Limits(max_units=2)),
        adapter=engine.adapter,
        reward=("none", None),
    )
    prompt = "a red circle and a blue square and a green triangle"
    dec = small.decompose(prompt)
    assert [u.subjects for u in dec.units] == [("circle",), ("square", "triangle")]
    assert dec.unit_prompts[1] == "A blue square and a green triangle" and dec.merged == 1
    request = check_request(small.settings.limits, prompt, **{**PAGE_DEFAULTS, "steps": 1})
    states = list(small.generate(request))
    assert "merged into the last one" in states[-1].notes[0]
    assert list(units_table(states[-1])["pass"]) == ["unit 1", "unit 2", "final"]
    assert levels_table(states[-1]).empty  # reward "none": no scores, no crash


def test_free_text_falls_back_to_one_unit_and_chain_off_is_one_pass():
    engine = unscored_engine()
    request = check_request(LIMITS, "a cosy cabin in the snow", **{**PAGE_DEFAULTS, "chain": False})
    state = list(engine.generate(request))[-1]
    assert state.decomposition.source == "fallback"
    assert len(state.passes["model"]) == 1 and state.final("model").shape == (1, 3, 32, 32)


def test_free_text_goes_to_the_local_lm_when_there_is_one():
    from vrl.hicogen.decompose import LLMDecomposer

    engine = unscored_engine()
    with_lm = DemoEngine(engine.settings, adapter=engine.adapter, reward=("none", None))
    scene = {"subjects": [{"id": "cabin", "name": "cabin"}, {"id": "tree", "name": "pine tree"}]}
    with_lm.decomposer = LLMDecomposer(lambda request: f"Here it is: {json.dumps(scene)}")
    dec = with_lm.decompose("a cosy cabin under a pine tree")
    assert dec.source == "llm" and dec.unit_prompts == ("A cabin", "A pine tree")
    assert with_lm.decompose("a red circle above a green square").source == "template"


def test_every_noise_schedule_reaches_every_pass():
    engine = unscored_engine()
    runs = {}
    for sampler, schedule in [("ode", "decaying"), ("sde", "constant"), ("sde", "window")]:
        values = {**PAGE_DEFAULTS, "sampler": sampler, "schedule": schedule}
        state = list(engine.generate(check_request(LIMITS, PROMPT, **values)))[-1]
        runs[schedule if sampler == "sde" else "ode"] = [p.images for p in state.passes["model"]]
    for schedule in ("constant", "window"):
        assert len(runs[schedule]) == 3
        for noisy, plain in zip(runs[schedule], runs["ode"], strict=True):
            assert (noisy - plain).abs().max() > 1e-4  # the SDE's noise changed this pass


def test_examples_bring_their_own_scenes():
    engine = unscored_engine()
    for prompt, scene in engine.examples.items():
        dec = engine.decompose(prompt)
        assert dec.source == "example" and dec.scene == scene
        assert [u.subjects for u in dec.units] == [(s.id,) for s in scene.subjects]
    assert len(engine.examples) == 6
    assert any("cyan" in p for p in engine.examples)  # a colour the rules do not parse


def test_the_world_reward_gives_a_rendered_scene_full_marks_with_rows():
    from vrl.demo.rewards import WorldReward
    from vrl.world import render

    prompt, scene = next((p, s) for p, s in unscored_engine().examples.items() if s.relations)
    pixels = torch.tensor(np.asarray(render(scene, 32)))  # (32, 32, 3) uint8
    images = pixels.permute(2, 0, 1)[None].float() / 255  # (1, 3, 32, 32)
    report = score_images(WorldReward(), images, [{"prompt": prompt, "scene": scene}])
    assert report.levels["total"] == [3.0]
    assert all(r["found"] and r["score"] == 1.0 for r in report.subjects[0])
    assert len(report.subjects[0]) == len(scene.subjects)
    assert [r["score"] for r in report.relations[0]] == [1.0] * len(scene.relations)
    blank = score_images(WorldReward(), torch.full_like(images, 0.8), [{"scene": scene}])
    assert blank.levels["subject"] == [0.0] and not any(r["found"] for r in blank.subjects[0])


def test_the_tiny_random_reward_scores_every_level():
    from vrl.demo.rewards import build_tiny_random_reward

    reward = build_tiny_random_reward(DemoSettings())
    scene = unscored_engine().decompose(PROMPT).scene
    samples = [{"prompt": PROMPT, "scene": scene, "references": {"circle": torch.rand(3, 8, 8)}}]
    report = score_images(reward, torch.rand(1, 3, 32, 32), samples)
    assert all(isinstance(report.levels[k][0], float) for k in ("global", "subject", "relation"))
    assert [r["subject"] for r in report.subjects[0]] == ["circle", "square"]
    assert report.subjects[0][0]["dino"] is not None and report.subjects[0][1]["dino"] is None
    assert report.relations[0][0]["relation"] == "circle left of square"


def test_reward_rows_come_from_each_levels_breakdown():
    @dataclasses.dataclass
    class Row:
        subject: str
        box: tuple
        score: float

    class Subject:
        def __call__(self, images, samples):
            self.last_breakdown = [[Row("circle", (0, 0, 1, 1), 0.5)] for _ in samples]
            return [0.5] * len(samples)

    reward = HierarchicalReward(lambda images, samples: [1.0] * len(samples), Subject())
    report = score_images(reward, torch.zeros(2, 3, 8, 8), [{}, {}])
    assert report.levels["total"] == [1.5, 1.5] and report.levels["relation"] == [None, None]
    assert report.subjects == [[{"subject": "circle", "score": 0.5}]] * 2  # no box column
    assert report.relations == [[], []]


# ---------------------------------------------------------------------- adapters


def test_pickle_adapters_are_refused(tmp_path, capsys):
    folder = tmp_path / "final"
    folder.mkdir()
    (folder / "adapter_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(UnsafeWeightsError, match="adapter_model.bin.*safetensors weights only"):
        find_lora_weights(folder)
    (tmp_path / "lora.pt").write_bytes(b"")
    with pytest.raises(UnsafeWeightsError, match="safetensors weights only"):
        find_lora_weights(tmp_path / "lora.pt")
    with pytest.raises(DemoSetupError, match="no such file"):
        find_lora_weights(tmp_path / "missing")
    # and from the command line: one line, exit 2, nothing served
    from vrl.cli import main

    assert main(["demo", "--lora", str(folder), "--reward", "none"]) == 2
    assert "safetensors weights only" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained():
    """Tiny SD3 with a LoRA whose alpha is not its rank (scale 2), moved off its zero init."""
    adapter = load_adapter(TINY, torch.device("cpu"))
    adapter.add_lora(4, 8)
    with torch.no_grad():
        for name, param in adapter.transformer.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
    return adapter


def _finals(engine, request):
    state = list(engine.generate(request))[-1]
    return {label: state.final(label) for label in state.labels}


def test_a_trained_adapter_is_shown_beside_its_base_model(trained, tmp_path):
    from vrl.trainers.diffusion_grpo import save_final

    save_final(trained, trained.transformer, None, tmp_path / "final", lora=True)
    settings = DemoSettings(model=TINY, lora=str(tmp_path / "final"), reward="none")
    engine = DemoEngine(settings, adapter=load_adapter(TINY, torch.device("cpu")))
    assert engine.labels == ("tuned", "base") and engine.notes == []
    values = {**PAGE_DEFAULTS, "sampler": "ode", "chain": False}
    request = check_request(settings.limits, PROMPT, **values)
    shown = _finals(engine, request)
    assert (shown["tuned"] - shown["base"]).abs().max() > 1e-3
    # the base column is the model without the adapter; the tuned one the adapter as trained
    plain = load_adapter(TINY, torch.device("cpu"))
    base = DemoEngine(DemoSettings(model=TINY), adapter=plain, reward=("none", None))
    torch.testing.assert_close(shown["base"], _finals(base, request)["model"], rtol=0, atol=1e-5)
    # the trained adapter itself, LoRA on, shown as a plain model
    as_trained = DemoEngine(DemoSettings(model=TINY), adapter=trained, reward=("none", None))
    torch.testing.assert_close(
        shown["tuned"], _finals(as_trained, request)["model"], rtol=0, atol=1e-5
    )


def test_an_adapter_file_without_its_alpha_takes_it_from_the_run_config(trained, tmp_path):
    import yaml

    final = tmp_path / "run" / "final"
    type(trained.pipeline).save_lora_weights(
        final, transformer_lora_layers=trained.lora_state_dict()
    )
    (tmp_path / "run" / "config.yaml").write_text(
        yaml.safe_dump({"model": {"lora": {"r": 4, "alpha": 8}}})
    )
    settings = DemoSettings(model=TINY, lora=str(final), reward="none")
    engine = DemoEngine(settings, adapter=load_adapter(TINY, torch.device("cpu")))
    assert engine.notes == ["LoRA scale 2 (alpha / rank) read from the run's config.yaml."]
    request = check_request(settings.limits, PROMPT, **{**PAGE_DEFAULTS, "chain": False})
    as_trained = DemoEngine(DemoSettings(model=TINY), adapter=trained, reward=("none", None))
    torch.testing.assert_close(
        _finals(engine, request)["tuned"], _finals(as_trained, request)["model"], rtol=0, atol=1e-5
    )


def test_a_flux_kontext_demo_draws_the_chain_in_context():
    """On a model trained on reference images the demo's passes are the in-context chain: every
    pass from noise, each unit's image seen by the passes after it."""
    from dataclasses import replace

    from vrl.demo.settings import DemoSettings

    settings = replace(DemoSettings(), model="tiny-random:flux_kontext", size=32)
    engine = DemoEngine(settings, reward=("none", None))
    request = check_request(LIMITS, PROMPT, **{**PAGE_DEFAULTS, "steps": 3, "num_images": 1})
    state = list(engine.generate(request))[-1]
    dec = state.decomposition
    chain = synthesize_chain(
        engine.adapter, engine.adapter.transformer, list(dec.unit_prompts), dec.final_prompt,
        batch_size=1, height=32, width=32, num_steps=3, context="in_context", step="sde",
        schedule=DecayingNoise(eta_max=0.7, eta_min=0.07),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    shown = [p.images for p in state.passes["model"]]
    assert len(shown) == len(chain.images) == 3
    for ours, theirs in zip(shown, chain.images, strict=True):
        torch.testing.assert_close(ours, theirs.cpu(), rtol=0, atol=1e-6)
    # the page says how the passes see each other: in context here, image-to-image on SD3
    from vrl.demo.app import header_text

    assert "as reference tokens (in context)" in header_text(engine)
    sd3 = DemoEngine(DemoSettings(model=TINY), adapter=load_adapter(TINY, torch.device("cpu")),
                     reward=("none", None))  # fmt: skip
    assert "(image-to-image)" in header_text(sd3) and "in context" not in header_text(sd3)
