"""Work done once per group: the vision tower once per distinct image, each prompt prefilled once.

`VLMAdapter.generate_groups` and `encode_images` must give what the plain path gives (the same
completions under a seed, the same log-probs) while running the tower and the prefill less.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image

from vrl.models.tiny import tiny_vlm_path
from vrl.models.vlm import VLMAdapter
from vrl.trainers.common import read_metrics

FAMILIES = ["qwen2_5_vl", "qwen2_vl"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_vlms")
    return {f: VLMAdapter.from_pretrained(tiny_vlm_path(f, root)) for f in FAMILIES}


def _prompts(adapter: VLMAdapter, repeats=None):
    """Three one-image prompts of different lengths and image sizes (each `repeats[i]` times)."""
    texts = ["Is it red?", "Locate the large blue circle in the image.", "Colour?"]
    sizes = [(112, 112), (224, 112), (84, 140)]
    colours = ["red", "blue", "green"]
    repeats = repeats or [1] * 3
    messages, images = [], []
    for text, size, colour, n in zip(texts, sizes, colours, repeats, strict=True):
        content = [{"type": "image"}, {"type": "text", "text": text}]
        messages += [[{"role": "user", "content": content}]] * n
        images += [[Image.new("RGB", size, colour)]] * n
    return adapter.prepare_inputs(messages, images)


@contextmanager
def counting(model):
    """Images through the vision tower, and the (batch, tokens) of each language-model forward."""
    seen = {"images": 0, "forwards": []}
    inner = model.model

    def tower(module, args, kwargs, out):
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        seen["images"] += int(grid.shape[0])

    def language(module, args, kwargs, out):
        seen["forwards"].append(tuple(kwargs["inputs_embeds"].shape[:2]))

    hooks = [
        inner.visual.register_forward_hook(tower, with_kwargs=True),
        inner.language_model.register_forward_hook(language, with_kwargs=True),
    ]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_groups_give_the_plain_completions_and_logprobs_with_one_tower_pass_and_one_prefill(
    adapters, family
):
    adapter = adapters[family]
    assert adapter.takes_image_features
    counts = [3, 1, 4]
    plain = _prompts(adapter, counts)
    torch.manual_seed(7)
    expected = adapter.generate(adapter.model, plain, max_new_tokens=10)
    expected_logp = adapter.token_logprobs(adapter.model, plain, expected.ids, expected.mask)

    with counting(adapter.model) as seen:
        prompts = adapter.encode_images(adapter.model, _prompts(adapter))
        torch.manual_seed(7)
        batch, got = adapter.generate_groups(adapter.model, prompts, counts, max_new_tokens=10)
        logp = adapter.token_logprobs(adapter.model, batch, got.ids, got.mask)
        again = adapter.token_logprobs(adapter.model, batch, got.ids, got.mask)
    assert torch.equal(got.ids, expected.ids) and torch.equal(got.mask, expected.mask)
    assert got.texts == expected.texts
    torch.testing.assert_close(logp, expected_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, logp, rtol=0, atol=0)
    # three distinct images through the tower, once, for generation and both scorings
    assert seen["images"] == 3
    # one prefill of the 3 distinct prompts (all but their last token), then 8-row decoding
    prompt_len = plain.input_ids.shape[1]
    assert seen["forwards"][0] == (3, prompt_len - 1)
    assert all(b == 8 for b, _ in seen["forwards"][1:])
    assert sum(t for b, t in seen["forwards"] if b == 8 and t > 1) == 2 * (
        prompt_len + got.ids.shape[1]
    )
    # repeats share one feature tensor per distinct image
    assert batch.image_features[0] is batch.image_features[2]
    assert batch.image_features[2] is not batch.image_features[3]


def test_the_plain_path_runs_the_tower_per_sample(adapters):
    """What the shared path saves: without it, every repeat's image goes through the tower."""
    adapter = adapters["qwen2_5_vl"]
    with counting(adapter.model) as seen:
        plain = _prompts(adapter, [3, 1, 4])
        out = adapter.generate(adapter.model, plain, max_new_tokens=4)
        adapter.token_logprobs(adapter.model, plain, out.ids, out.mask)
    assert seen["images"] == 16


def test_a_batch_without_features_keeps_the_tower_in_the_loss(adapters):
    """generate_groups returns image features only if it was given them: a trainable tower needs
    its forward (and gradient) in the loss."""
    adapter = adapters["qwen2_5_vl"]
    batch, _ = adapter.generate_groups(
        adapter.model, _prompts(adapter), [2, 2, 2], max_new_tokens=3
    )
    assert batch.image_features is None and "pixel_values" in batch.model_inputs
    assert len(batch) == 6


def test_repeat_counts_are_checked(adapters):
    batch = _prompts(adapters["qwen2_5_vl"])
    with pytest.raises(ValueError, match="2 repeat counts for 3 prompts"):
        batch.repeat_interleave([1, 2])


RECIPE = Path(__file__).resolve().parents[1] / "configs" / "vlm_tiny_cpu.yaml"


def _run(tmp_path, name, *overrides):
    from vrl.config import load_config
    from vrl.trainers.vlm_config import VLMTrainConfig
    from vrl.trainers.vlm_grpo import train

    out = tmp_path / name
    cfg = load_config(
        VLMTrainConfig,
        RECIPE,
        [f"run.output_dir={out}", "data.synthetic_size=16", "run.save_every=0",
         "run.save_final=false", "run.max_steps=2", "grpo.beta=0.04", "grpo.num_iterations=2",
         "optim.micro_batch_size=6", *overrides],
    )  # fmt: skip
    summary = train(cfg)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return summary, read_metrics(out / "metrics.jsonl"), samples


def test_the_trainer_gives_the_same_run_with_and_without_shared_prompt_work(tmp_path):
    """Same seed, same completions, rewards and losses; micro-batches of 6 split groups of 8."""
    shared, shared_metrics, shared_samples = _run(tmp_path, "shared")
    plain, plain_metrics, plain_samples = _run(tmp_path, "plain", "rollout.share_prompts=false")
    assert shared_samples == plain_samples
    for a, b in zip(shared_metrics, plain_metrics, strict=True):
        assert a["reward"] == b["reward"] and a["completion_length"] == b["completion_length"]
        for key in ("loss", "kl", "approx_kl", "ratio_mean"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    for (name, p), q in zip(
        shared["model"].named_parameters(), plain["model"].parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_group_runs_split_items_into_runs_of_one_prompt():
    from vrl.trainers.common import group_runs

    assert group_runs([3, 3, 3, 5, 5, 3]) == ([3, 5, 3], [3, 2, 1])
    assert group_runs([]) == ([], [])
