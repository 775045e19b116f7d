"""Tiny Qwen VLMs built offline, loaded through the real `from_pretrained` path, driven by VLMAdapter.

The tiny checkpoints are written once per session into a temporary folder; every test that runs a
network uses them, so the code under test is the same code that loads and runs a real checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from PIL import Image

from vrl.models.tiny import (
    FORMAT_TOKENS,
    QWEN_SPECIAL_TOKENS,
    build_tiny_vlm,
    build_vlm_tokenizer,
    tiny_vlm_path,
)
from vrl.models.vlm import VLMAdapter
from vrl.models.vlm_helpers import _accepts_logits_to_keep

FAMILIES = ["qwen2_5_vl", "qwen2_vl"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_vlms")


@pytest.fixture(scope="session")
def tiny_paths(cache_root):
    return {family: tiny_vlm_path(family, cache_root) for family in FAMILIES}


@pytest.fixture(scope="session")
def adapters(tiny_paths):
    return {family: VLMAdapter.from_pretrained(path) for family, path in tiny_paths.items()}


@pytest.fixture(scope="session")
def tokenizer():
    return build_vlm_tokenizer()


def _image(width: int, height: int, colour: str = "red") -> Image.Image:
    return Image.new("RGB", (width, height), colour)


def _two_prompts(adapter: VLMAdapter):
    """A short one-image prompt and a longer two-image prompt."""
    messages = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it red?"}]}],
        [
            {"role": "system", "content": "Answer about the images."},
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": "Locate the large blue circle in the first image."},
                    {"type": "image"},
                ],
            },
        ],
    ]
    images = [[_image(112, 112)], [_image(224, 112, "blue"), _image(250, 180, "green")]]
    return adapter.prepare_inputs(messages, images)


@contextmanager
def boosted_logits(model: torch.nn.Module, token_ids: list[int], amount: float) -> Iterator[None]:
    """Temporarily add `amount` to the logits of `token_ids` (part of the model for both
    generation and scoring), to make rare events such as an early EOS likely."""

    def hook(module, inputs, output):
        output = output.clone()
        output[..., token_ids] += amount
        return output

    handle = model.lm_head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# ---------------------------------------------------------------------------- tokenizer


def test_tokenizer_whole_words_and_tags_are_single_tokens(tokenizer):
    for word in ["yes", "no", *COLOURS]:
        assert len(tokenizer.tokenize(word)) == 1, word
        assert len(tokenizer.tokenize(" " + word)) == 1, " " + word
    for tag in FORMAT_TOKENS + QWEN_SPECIAL_TOKENS:
        assert tokenizer.tokenize(tag) == [tag]
    assert len(tokenizer) <= 512
    assert tokenizer.encode("2048", add_special_tokens=False) == [
        tokenizer.convert_tokens_to_ids(d) for d in "2048"
    ]


def test_tokenizer_round_trips_text_with_special_tokens(tokenizer):
    text = (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Locate the red circle."
        '<|im_end|>\n<|im_start|>assistant\n<think>It is left.</think><answer>{"bbox_2d": '
        '[12, 30, 40, 77], "label": "red circle"}</answer><|im_end|>'
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    # Decoding for rewards drops the chat control tokens but keeps the format tags.
    stripped = tokenizer.decode(ids, skip_special_tokens=True)
    assert "<|" not in stripped and "<answer>" in stripped and "</think>" in stripped


def test_tokenizer_is_deterministic(tokenizer, adapters):
    again = build_vlm_tokenizer()
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    assert adapters["qwen2_5_vl"].tokenizer.get_vocab() == tokenizer.get_vocab()


def test_chat_template_renders_images_and_generation_prompt(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it red?"}]},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is it red?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    closed = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert closed == text.removesuffix("<|im_start|>assistant\n")


# ---------------------------------------------------------------------------- loading


@pytest.mark.parametrize(
    "family, convention, model_class",
    [
        ("qwen2_5_vl", "resized_pixels", "Qwen2_5_VLForConditionalGeneration"),
        ("qwen2_vl", "norm_1000", "Qwen2VLForConditionalGeneration"),
    ],
)
def test_saved_tiny_folder_loads_like_a_checkpoint(adapters, family, convention, model_class):
    adapter = adapters[family]
    assert adapter.family == family and adapter.box_convention == convention
    assert type(adapter.model).__name__ == model_class
    assert adapter.model.dtype == torch.float32
    assert adapter.processor.chat_template is not None
    assert adapter.tokenizer.padding_side == "left"
    config, tok = adapter.model.config, adapter.tokenizer
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert config.text_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert config.text_config.pad_token_id == tok.pad_token_id
    assert config.text_config.vocab_size == len(tok)
    # The saved weights are exactly the seed-0 build.
    fresh, _ = build_tiny_vlm(family, seed=0)
    loaded = adapter.model.state_dict()
    for name, value in fresh.state_dict().items():
        assert torch.equal(loaded[name], value), name


def test_processor_survives_save_and_load(tiny_paths, tokenizer):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_paths["qwen2_vl"])
    assert type(processor).__name__ == "Qwen2VLProcessor"
    assert processor.tokenizer.padding_side == "left"
    assert processor.tokenizer.eos_token == "<|im_end|>"
    assert processor.tokenizer.pad_token == "<|endoftext|>"
    size = processor.image_processor.size
    assert (size.shortest_edge, size.longest_edge) == (112 * 112, 224 * 224)
    assert processor.chat_template == tokenizer.chat_template


def test_pixel_bounds_can_be_overridden(tiny_paths):
    adapter = VLMAdapter.from_pretrained(tiny_paths["qwen2_5_vl"], max_pixels=112 * 112)
    batch = _two_prompts(adapter)
    # 224x112 no longer fits in 112*112 pixels: shrunk keeping the aspect, to multiples of 28.
    assert batch.input_sizes == [(112, 112), (140, 56)]


def test_tiny_vlm_path_reuses_the_cache(cache_root, tiny_paths):
    path = tiny_paths["qwen2_5_vl"]
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny_vlm_path("qwen2_5_vl", cache_root) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in cache_root.iterdir()) == sorted(
        p.name for p in tiny_paths.values()
    )


def test_adapter_forces_left_padding(adapters):
    adapter = adapters["qwen2_5_vl"]
    adapter.tokenizer.padding_side = "right"
    rewrapped = VLMAdapter(adapter.model, adapter.processor)
    assert rewrapped.tokenizer.padding_side == "left"
    assert rewrapped.family == "qwen2_5_vl"


def test_generic_path_loads_through_auto_class(tiny_paths):
    adapter = VLMAdapter.from_pretrained(tiny_paths["qwen2_5_vl"], family="generic")
    assert adapter.family == "generic" and adapter.box_convention == "original_pixels"
    batch = _two_prompts(adapter)
    out = adapter.generate(adapter.model, batch, max_new_tokens=3, do_sample=False)
    assert out.ids.shape == (2, 3)


# ---------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("family", FAMILIES)
def test_prepare_inputs_left_pads_and_reports_sizes(adapters, family):
    adapter = adapters[family]
    batch = _two_prompts(adapter)
    ids, mask = batch.input_ids, batch.attention_mask  # (B, P)
    pad = adapter.pad_token_id
    lengths = mask.sum(dim=1)
    assert lengths[0] < lengths[1] == ids.shape[1]
    n_pad = ids.shape[1] - int(lengths[0])
    assert (
        ids[0, :n_pad].eq(pad).all() and mask[0, :n_pad].eq(0).all() and mask[0, n_pad:].eq(1).all()
    )
    # Both rows end with the opened assistant turn, right-aligned.
    suffix = adapter.tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    assert ids[:, -len(suffix) :].tolist() == [suffix, suffix]
    # 112x112 -> 8x8 patches -> 16 tokens; 224x112 -> 32 tokens; 250x180 -> 252x168 -> 54 tokens.
    image_pad = adapter.model.config.image_token_id
    assert ids.eq(image_pad).sum(dim=1).tolist() == [16, 32 + 54]
    assert batch.model_inputs["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 16], [1, 12, 18]]
    assert batch.input_sizes == [(112, 112), (224, 112)]
    assert batch.original_sizes == [(112, 112), (224, 112)]
    assert batch.images_per_prompt == [1, 2]


def test_prepare_inputs_rejects_mismatched_images(adapters):
    adapter = adapters["qwen2_5_vl"]
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]]
    with pytest.raises(ValueError, match="image placeholders"):
        adapter.prepare_inputs(messages, [[_image(112, 112), _image(112, 112)]])


def test_repeat_interleave_matches_separate_prompts(adapters):
    adapter = adapters["qwen2_5_vl"]
    batch = _two_prompts(adapter)
    grouped = batch.repeat_interleave(3)
    assert len(grouped) == 6 and grouped.images_per_prompt == [1, 1, 1, 2, 2, 2]
    assert grouped.input_sizes[2:4] == [(112, 112), (224, 112)]
    out = adapter.generate(adapter.model, grouped, max_new_tokens=5, do_sample=False)
    single = adapter.generate(adapter.model, batch, max_new_tokens=5, do_sample=False)
    assert torch.equal(out.ids[::3], single.ids) and torch.equal(out.ids[2::3], single.ids)


# ---------------------------------------------------------------------------- generation


def _eos_boost(adapter: VLMAdapter):
    return boosted_logits(adapter.model, [adapter.eos_token_ids[0]], 5.0)


def test_generate_masks_after_eos_and_respects_max_new_tokens(adapters):
    adapter = adapters["qwen2_5_vl"]
    batch = _two_prompts(adapter).repeat_interleave(4)
    eos = adapter.eos_token_ids[0]
    torch.manual_seed(0)
    with _eos_boost(adapter):
        out = adapter.generate(adapter.model, batch, max_new_tokens=12)
    assert out.ids.shape[1] <= 12 and out.ids.shape == out.mask.shape
    lengths = out.mask.sum(dim=1).tolist()
    assert min(lengths) < out.ids.shape[1], "the EOS boost should end some completion early"
    for row, mask, n, text in zip(out.ids, out.mask, lengths, out.texts, strict=True):
        assert mask[:n].eq(1).all() and mask[n:].eq(0).all()
        eos_positions = row.eq(eos).nonzero().flatten().tolist()
        if n < len(row):
            assert eos_positions[0] == n - 1  # the first EOS is the last unmasked token
            assert row[n:].eq(adapter.pad_token_id).all()
        else:
            assert not eos_positions or eos_positions[0] == n - 1
        assert text == adapter.tokenizer.decode(row[:n], skip_special_tokens=True)
        assert "<|im_end|>" not in text


@pytest.mark.parametrize("do_sample", [True, False])
def test_generate_never_emits_placeholder_tokens(adapters, do_sample):
    adapter = adapters["qwen2_5_vl"]
    batch = _two_prompts(adapter)
    placeholders = adapter.suppressed_token_ids
    assert adapter.model.config.image_token_id in placeholders
    with boosted_logits(adapter.model, placeholders, 50.0):
        logits = adapter.model(**batch.model_inputs).logits[:, -1]  # (B, V)
        assert all(int(i) in placeholders for i in logits.argmax(-1))  # unsuppressed, they'd win
        torch.manual_seed(0)
        out = adapter.generate(adapter.model, batch, max_new_tokens=8, do_sample=do_sample)
    assert not torch.isin(out.ids, torch.tensor(placeholders)).any()


def test_sampling_is_reproducible_under_a_seed(adapters):
    adapter = adapters["qwen2_vl"]
    batch = _two_prompts(adapter)
    torch.manual_seed(123)
    first = adapter.generate(adapter.model, batch, max_new_tokens=10, temperature=1.0)
    torch.manual_seed(123)
    second = adapter.generate(adapter.model, batch, max_new_tokens=10, temperature=1.0)
    torch.manual_seed(124)
    other = adapter.generate(adapter.model, batch, max_new_tokens=10, temperature=1.0)
    assert torch.equal(first.ids, second.ids) and first.texts == second.texts
    assert not torch.equal(first.ids, other.ids)


def test_greedy_and_sampling_knobs_are_honoured(adapters):
    adapter = adapters["qwen2_5_vl"]
    batch = _two_prompts(adapter)
    greedy = adapter.generate(adapter.model, batch, max_new_tokens=10, do_sample=False)
    again = adapter.generate(adapter.model, batch, max_new_tokens=10, do_sample=False)
    zero_t = adapter.generate(adapter.model, batch, max_new_tokens=10, temperature=0.0)
    torch.manual_seed(0)
    top1 = adapter.generate(adapter.model, batch, max_new_tokens=10, top_k=1)
    torch.manual_seed(0)
    cold = adapter.generate(adapter.model, batch, max_new_tokens=10, temperature=1e-4)
    for out in (again, zero_t, top1, cold):
        assert torch.equal(out.ids, greedy.ids)
    # A checkpoint's own sampling defaults (Qwen ships top_k=1, repetition_penalty=1.05) must not
    # leak into RL sampling: with them ignored, temperature-1 sampling differs from greedy.
    gen_config = adapter.model.generation_config
    saved = (gen_config.top_k, gen_config.repetition_penalty)
    gen_config.top_k, gen_config.repetition_penalty = 1, 1.05
    try:
        torch.manual_seed(0)
        sampled = adapter.generate(adapter.model, batch, max_new_tokens=10, temperature=1.0)
    finally:
        gen_config.top_k, gen_config.repetition_penalty = saved
    assert not torch.equal(sampled.ids, greedy.ids)


# ---------------------------------------------------------------------------- scoring


def _scored_generation(adapter: VLMAdapter, batch, temperature: float, max_new_tokens: int = 12):
    """Generate with the adapter's config plus output_scores; return ids, mask, score log-probs."""
    config = adapter.generation_config(max_new_tokens=max_new_tokens, temperature=temperature)
    config.output_scores = True
    config.return_dict_in_generate = True
    out = adapter.model.generate(**batch.model_inputs, generation_config=config)
    ids = out.sequences[:, batch.input_ids.shape[1] :]  # (B, L)
    mask = adapter.completion_mask(ids)  # (B, L)
    scores = torch.stack(out.scores, dim=1).float().log_softmax(-1)  # (B, L, V)
    return ids, mask, scores.gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask


@pytest.mark.parametrize("family", FAMILIES)
def test_token_logprobs_match_greedy_generation_scores(adapters, family):
    adapter = adapters[family]
    batch = _two_prompts(adapter)
    ids, mask, from_scores = _scored_generation(adapter, batch, temperature=0.0)
    assert torch.equal(
        ids, adapter.generate(adapter.model, batch, max_new_tokens=12, do_sample=False).ids
    )
    logprobs = adapter.token_logprobs(adapter.model, batch, ids, mask)  # (B, L)
    assert logprobs.shape == ids.shape
    torch.testing.assert_close(logprobs.sum(1), from_scores.sum(1), atol=1e-4, rtol=0)
    torch.testing.assert_close(logprobs, from_scores, atol=1e-4, rtol=0)


def test_token_logprobs_match_sampling_scores_with_temperature_and_eos(adapters):
    adapter = adapters["qwen2_5_vl"]
    batch = _two_prompts(adapter).repeat_interleave(3)
    assert _accepts_logits_to_keep(adapter.model)
    torch.manual_seed(3)
    with _eos_boost(adapter):
        ids, mask, from_scores = _scored_generation(adapter, batch, temperature=0.7)
        logprobs = adapter.token_logprobs(adapter.model, batch, ids, mask, temperature=0.7)
    assert mask.sum() < mask.numel()  # some completions ended early: masking is exercised
    torch.testing.assert_close(logprobs, from_scores, atol=1e-4, rtol=0)
    assert logprobs[mask == 0].eq(0).all()


class _DDPLike(torch.nn.Module):
    """The part of DistributedDataParallel's interface the adapter relies on: `.module` + forward."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_wrapped_model_gives_the_same_results(adapters):
    adapter = adapters["qwen2_vl"]
    batch = _two_prompts(adapter)
    wrapped = _DDPLike(adapter.model)
    plain = adapter.generate(adapter.model, batch, max_new_tokens=6, do_sample=False)
    via_wrapper = adapter.generate(wrapped, batch, max_new_tokens=6, do_sample=False)
    assert torch.equal(plain.ids, via_wrapper.ids)
    torch.testing.assert_close(
        adapter.token_logprobs(wrapped, batch, plain.ids, plain.mask),
        adapter.token_logprobs(adapter.model, batch, plain.ids, plain.mask),
    )
    assert adapter.vision_parameters(wrapped) == adapter.vision_parameters(adapter.model)


def test_token_logprobs_carry_gradients(adapters):
    adapter = adapters["qwen2_vl"]
    batch = _two_prompts(adapter)
    out = adapter.generate(adapter.model, batch, max_new_tokens=4, do_sample=False)
    adapter.model.zero_grad()
    adapter.token_logprobs(adapter.model, batch, out.ids, out.mask).sum().backward()
    assert adapter.model.lm_head.weight.grad.abs().sum() > 0
    adapter.model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------- boxes


def test_box_to_original_per_convention(adapters):
    qwen25, qwen2 = adapters["qwen2_5_vl"], adapters["qwen2_vl"]
    # Qwen2.5-VL: pixels of the 224x112 model input, original image 500x250.
    assert qwen25.box_to_original((56, 28, 112, 84), (500, 250), (224, 112)) == pytest.approx(
        (125.0, 62.5, 250.0, 187.5)
    )
    # Qwen2-VL: 0..1000 grid, original 640x480; the input size plays no role.
    assert qwen2.box_to_original([100, 200, 500, 1000], (640, 480), (224, 112)) == pytest.approx(
        (64.0, 96.0, 320.0, 480.0)
    )
    generic = VLMAdapter(qwen25.model, qwen25.processor, box_convention="original_pixels")
    assert generic.box_to_original((1, 2, 3, 4), (640, 480), (224, 112)) == (1.0, 2.0, 3.0, 4.0)
    box = (10.0, 20.0, 300.0, 240.0)
    for adapter in (qwen25, qwen2, generic):
        there = adapter.box_from_original(box, (640, 480), (224, 168))
        assert adapter.box_to_original(there, (640, 480), (224, 168)) == pytest.approx(box)
    with pytest.raises(ValueError, match="input_size"):
        qwen25.box_to_original((1, 2, 3, 4), (640, 480))
    with pytest.raises(ValueError, match="4 numbers"):
        qwen2.box_to_original((1, 2, 3), (640, 480))


# ---------------------------------------------------------------------------- LoRA / freezing


def test_lora_regex_targets_only_the_language_model(adapters):
    from peft import LoraConfig, get_peft_model

    model, processor = build_tiny_vlm("qwen2_5_vl", seed=1)
    adapter = VLMAdapter(model, processor)
    batch = _two_prompts(adapter)
    out = adapter.generate(model, batch, max_new_tokens=6, do_sample=False)
    base = adapter.token_logprobs(model, batch, out.ids, out.mask).detach()

    config = LoraConfig(r=4, lora_alpha=8, target_modules=adapter.lora_target_modules())
    peft_model = get_peft_model(model, config)
    lora_modules = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A")]
    assert len(lora_modules) == 4 * 7  # 4 layers x (q, k, v, o, gate, up, down)
    assert not [n for n in lora_modules if ".visual." in n]
    assert all(".language_model." in n for n in lora_modules)

    with torch.no_grad():  # LoRA B starts at zero; move it so the adapter changes the output
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    tuned = adapter.token_logprobs(peft_model, batch, out.ids, out.mask)
    with peft_model.disable_adapter():
        reference = adapter.token_logprobs(peft_model, batch, out.ids, out.mask)
        base_again = adapter.generate(peft_model, batch, max_new_tokens=6, do_sample=False)
    assert torch.equal(base_again.ids, out.ids)
    assert (tuned - base).abs().max() > 1e-3
    torch.testing.assert_close(reference, base, atol=1e-5, rtol=0)

    vision = adapter.vision_parameters(peft_model)
    n_vision = sum(1 for n, _ in model.model.visual.named_parameters())
    assert len(vision) == n_vision > 0
    assert {id(p) for p in vision} == {id(p) for p in model.model.visual.parameters()}
