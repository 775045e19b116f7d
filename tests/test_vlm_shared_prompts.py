"""Work done once per group: the vision tower once per distinct image, each prompt prefilled once.

`VLMAdapter.generate_groups` and `encode_images` must give what the plain path gives (the same
completions under a seed, the same log-probs) while running the tower and the prefill less.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from vrl.models.tiny import tiny_vlm_path
from vrl.models.vlm import VLMAdapter
from vrl.models.vlm_scoring import can_share_prompts
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
    prompt_len, length = plain.input_ids.shape[1], got.ids.shape[1]
    assert seen["forwards"][0] == (3, prompt_len - 1)
    decoding, scoring = seen["forwards"][1:-4], seen["forwards"][-4:]
    assert decoding and all(shape == (8, 1) for shape in decoding)
    # each scoring: the 3 distinct prompts once, then the 8 completions on their repeated cache
    assert scoring == [(3, prompt_len), (8, length - 1)] * 2
    # repeats share one feature tensor per distinct image
    assert batch.image_features[0] is batch.image_features[2]
    assert batch.image_features[2] is not batch.image_features[3]


@pytest.mark.parametrize("family", FAMILIES)
def test_scoring_each_prompt_once_gives_the_plain_logprobs_and_gradient(adapters, family):
    """`token_logprobs` on a batch of `generate_groups` (each distinct prompt through the model
    once, its cache repeated to its samples) against the plain forward over every row: the same
    log-probs and the same gradient, within float tolerance, in training mode."""
    adapter = adapters[family]
    model = adapter.model
    prompts = adapter.encode_images(model, _prompts(adapter))
    torch.manual_seed(3)
    batch, out = adapter.generate_groups(model, prompts, [3, 1, 4], max_new_tokens=9)
    assert batch.group_sizes == [3, 1, 4] and can_share_prompts(model, batch)
    # completions that end early (padding after their end), one of a single token
    length = out.ids.shape[1]
    ends = torch.tensor([9, 4, 1, 7, 9, 2, 5, 8]).clamp(max=length)
    mask = (torch.arange(length)[None, :] < ends[:, None]).long()
    ids = out.ids.masked_fill(mask == 0, adapter.pad_token_id)
    results = []
    model.train()
    try:
        for scored in (batch, replace(batch, group_sizes=None)):
            model.zero_grad(set_to_none=True)
            logp = adapter.token_logprobs(model, scored, ids, mask, temperature=0.7)
            (logp * torch.linspace(-1, 1, logp.numel()).view_as(logp)).sum().backward()
            grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
            results.append((logp.detach(), grads))
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    (shared, shared_grads), (plain, plain_grads) = results
    assert shared[mask == 0].eq(0).all()
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-5)
    assert shared_grads.keys() == plain_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        scale = float(grad.abs().max())  # sums over rows: float noise relative to the largest
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-4 * scale)


def test_scoring_each_prompt_once_only_where_nothing_differs(adapters):
    """The plain forward runs for a batch without the promise, one whose tower runs in the loss,
    and a model in training with active dropout (a prompt's mask would be shared by its group)."""
    adapter = adapters["qwen2_5_vl"]
    model = adapter.model
    encoded = adapter.encode_images(model, _prompts(adapter))
    batch, _ = adapter.generate_groups(model, encoded, [2, 2, 2], max_new_tokens=2)
    assert can_share_prompts(model, batch)
    assert not can_share_prompts(model, replace(batch, group_sizes=None))
    assert not can_share_prompts(model, replace(batch, group_sizes=[1] * 6))  # nothing repeats
    pixels, _ = adapter.generate_groups(model, _prompts(adapter), [2, 2, 2], max_new_tokens=2)
    assert not can_share_prompts(model, pixels)  # the tower's forward belongs in the loss
    model.model.language_model.layers[0].mlp.add_module("drop", torch.nn.Dropout(0.1))
    try:
        assert not model.training or not can_share_prompts(model, batch)
        model.train()
        assert not can_share_prompts(model, batch)
        model.eval()
        assert can_share_prompts(model, batch)  # dropout is off outside training
    finally:
        del model.model.language_model.layers[0].mlp.drop
        model.eval()


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
    # Adam divides by the gradient's root mean square, so an entry whose gradient is float noise
    # on both sides may move by a fraction of a step (lr 1e-3, 4 updates): within 1e-4
    for (name, p), q in zip(
        shared["model"].named_parameters(), plain["model"].parameters(), strict=True
    ):
        torch.testing.assert_close(
            p, q, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_group_runs_split_items_into_runs_of_one_prompt():
    from vrl.trainers.common import group_runs

    assert group_runs([3, 3, 3, 5, 5, 3]) == ([3, 5, 3], [3, 2, 1])
    assert group_runs([]) == ([], [])
