"""Tiny random vision-language models of the real Qwen architectures, built entirely offline.

Tests and CPU demos need a model that exercises the *real* code paths (the Qwen2.5-VL / Qwen2-VL
modelling classes, their processors, M-RoPE, image-token expansion, `from_pretrained` loading) but
is small enough to train for a few steps in seconds. Nothing here touches the Hugging Face hub:
the tokenizer is trained locally on a built-in corpus of task-like text, the weights are random.

Sizes: text width 128 with 4 layers, a 2-block vision tower
with patch 14 and spatial merge 2, so a 112x112 image gives 8x8 = 64 patches -> 16 image tokens.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from vrl.models.build_cache import build_once, default_cache_root

if TYPE_CHECKING:
    from transformers import (
        PretrainedConfig,
        PreTrainedModel,
        PreTrainedTokenizerFast,
        ProcessorMixin,
    )

TinyFamily = Literal["qwen2_5_vl", "qwen2_vl"]

# Qwen's control tokens. Trained as special tokens so they get the first, fixed ids (0..6) and are
# never split; `<|endoftext|>` doubles as the padding token, `<|im_end|>` ends an assistant turn.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Reasoning-format tags as single (non-special) tokens: a tiny model learns the R1 answer format
# much faster when each tag is one token, and decoding with `skip_special_tokens=True` keeps them.
FORMAT_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

# Bump when the tiny builders change, so `tiny_vlm_path` never reuses a stale cached folder.
TINY_VERSION = 1
TINY_MIN_PIXELS = 112 * 112
TINY_MAX_PIXELS = 224 * 224
PATCH_SIZE = 14
SPATIAL_MERGE_SIZE = 2

# A Qwen-style ChatML template. Content is either a plain string or a list of
# {"type": "image"} / {"type": "text", "text": ...} items; every image becomes one
# `<|vision_start|><|image_pad|><|vision_end|>` placeholder that the processor later expands to
# as many pad tokens as the image has merged patches. No default system prompt: it would only make
# every prompt of a tiny model longer.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}"
    "{{ item['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
_SHAPES = ["circle", "square", "triangle", "star", "rectangle"]
_SIZES = ["small", "large", "big", "tiny"]
_POSITIONS = ["left", "right", "top", "bottom", "center", "middle", "corner"]
_R1_SUFFIX = (
    "First output the thinking process in <think> </think> tags and then output the final answer "
    "in <answer> </answer> tags. Output the final answer in JSON format."
)


def _default_corpus(n_samples: int = 1500, seed: int = 0) -> Iterator[str]:
    """Task-like English text: questions, boxes, numbers and R1-style answers about shape images.

    Generated from a fixed seed so that the trained tokenizer is identical on every call.
    """
    rng = random.Random(seed)
    yield _R1_SUFFIX
    yield "You are a helpful assistant. Answer the question about the image."
    for _ in range(n_samples):
        colour, shape = rng.choice(_COLOURS), rng.choice(_SHAPES)
        other = rng.choice(_COLOURS)
        size, pos = rng.choice(_SIZES), rng.choice(_POSITIONS)
        box = [rng.randint(0, 999) for _ in range(4)]
        count = rng.randint(0, 9)
        answer = rng.choice(["yes", "no"])
        yield f"Is the image {colour}? {answer.capitalize()}, it is {other}."
        yield f"Is there a {colour} {shape} in the image? {answer}"
        yield f"What colour is the {shape}? The {shape} is {colour}."
        yield f"How many {shape}s are there? There are {count} {shape}s."
        yield f"Locate the {size} {colour} {shape} in the image. {_R1_SUFFIX}"
        yield f"Please locate the {colour} {shape} on the {pos} and output its bounding box."
        yield (
            f"<think>I see a {size} {colour} {shape} near the {pos} of the image. "
            f"Its box is {box}.</think>\n"
            f'<answer>{{"bbox_2d": {box}, "label": "{colour} {shape}"}}</answer>'
        )
        yield f'[{{"bbox_2d": {box}, "label": "{colour} {shape}"}}]'
        yield f"<think>The image shows {count} shapes. The {shape} is {colour}.</think>"
        yield f"<answer>{answer}</answer> <answer>{colour}</answer> <answer>{count}</answer>"
        yield f"The answer is {answer}. The colour is {colour}. None of the shapes is {other}."
        yield f"{rng.uniform(0, 100):.2f} {rng.randint(0, 10000)} ({box[0]}, {box[1]})"


def build_vlm_tokenizer(
    corpus: Iterable[str] | None = None, vocab_size: int = 512, number_tokens: int = 0
) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE tokenizer with Qwen's special tokens and chat template.

    Digits are split one per token (as in Qwen), so coordinates are spelled digit by digit and any
    number is representable. ``number_tokens`` > 0 adds the integers 0 .. number_tokens - 1 as
    whole tokens (matched longest first, before the digit split), so a box coordinate on a small
    image is one token: one choice per coordinate instead of a digit sequence. `vocab_size` bounds
    the total, added tokens included. The result is deterministic: the default corpus is generated
    from a fixed seed and BPE training breaks ties deterministically.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(FORMAT_TOKENS) - number_tokens,
        special_tokens=QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus if corpus is not None else _default_corpus(), trainer)
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in FORMAT_TOKENS])
    if number_tokens:
        numbers = [str(i) for i in range(number_tokens)]
        backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in numbers])

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
        padding_side="left",
        model_max_length=4096,
        chat_template=TINY_CHAT_TEMPLATE,
    )
    return tokenizer


def _special_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in QWEN_SPECIAL_TOKENS}
    missing = [tok for tok, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"tokenizer lacks Qwen special tokens {missing}")
    return ids


def tiny_vlm_config(
    family: TinyFamily,
    vocab_size: int,
    *,
    width: int = 128,
    layers: int = 4,
    vision_depth: int = 2,
    **special_ids: int,
) -> PretrainedConfig:
    """Config of a ~2M-parameter model of the given Qwen VL architecture (at the defaults).

    `width` is the text and vision width (heads of 32 channels), `layers` the text decoder's
    depth and `vision_depth` the vision tower's (its last block attends over the whole image).

    `special_ids` may override the token ids (`image_token_id`, `video_token_id`,
    `vision_start_token_id`, `vision_end_token_id`, `eos_token_id`, `pad_token_id`, `bos_token_id`);
    the defaults are the ids `build_vlm_tokenizer` assigns (the special tokens are trained first, so
    they always get ids 0..6).
    """
    ids = {
        "pad_token_id": 0,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "vision_start_token_id": 3,
        "vision_end_token_id": 4,
        "image_token_id": 5,
        "video_token_id": 6,
    }
    if width % 32 or width < 64 or layers < 1 or vision_depth < 1:
        raise ValueError(
            f"tiny VLM needs width a multiple of 32 (>= 64), layers >= 1 and vision_depth >= 1; "
            f"got width={width}, layers={layers}, vision_depth={vision_depth}"
        )
    unknown = set(special_ids) - set(ids)
    if unknown:
        raise ValueError(f"unknown special id names {sorted(unknown)}; valid: {sorted(ids)}")
    ids.update(special_ids)
    text_tokens = {k: ids[k] for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    vision_tokens = {k: v for k, v in ids.items() if k not in text_tokens}
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=width // 32,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        # head_dim is 32, so the M-RoPE split (temporal, height, width) must sum to 16 frequency
        # pairs; the default [16, 24, 24] assumes head_dim 128 and breaks the rotary embedding.
        rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 1e6},
        **text_tokens,
    )
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vision_config = dict(
            depth=vision_depth,
            hidden_size=width,
            intermediate_size=2 * width,
            num_heads=width // 32,
            out_hidden_size=width,
            patch_size=PATCH_SIZE,
            spatial_merge_size=SPATIAL_MERGE_SIZE,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[vision_depth - 1],
        )
        return Qwen2_5_VLConfig(
            text_config=text_config, vision_config=vision_config, **vision_tokens, **text_tokens
        )
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig

        vision_config = dict(
            depth=vision_depth,
            embed_dim=width,
            hidden_size=width,  # output width of the patch merger = the text width
            mlp_ratio=2,
            num_heads=width // 32,
            patch_size=PATCH_SIZE,
            spatial_merge_size=SPATIAL_MERGE_SIZE,
            temporal_patch_size=2,
        )
        return Qwen2VLConfig(
            text_config=text_config, vision_config=vision_config, **vision_tokens, **text_tokens
        )
    raise ValueError(f"unknown tiny VLM family {family!r}; valid: 'qwen2_5_vl', 'qwen2_vl'")


def build_tiny_processor(
    family: TinyFamily,
    tokenizer: PreTrainedTokenizerFast | None = None,
    min_pixels: int = TINY_MIN_PIXELS,
    max_pixels: int = TINY_MAX_PIXELS,
) -> ProcessorMixin:
    """The family's real processor class around the tiny tokenizer and a small-image processor."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer = tokenizer if tokenizer is not None else build_vlm_tokenizer()
    image_processor = Qwen2VLImageProcessor(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=PATCH_SIZE,
        merge_size=SPATIAL_MERGE_SIZE,
        temporal_patch_size=2,
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=PATCH_SIZE,
        merge_size=SPATIAL_MERGE_SIZE,
        temporal_patch_size=2,
    )
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor as processor_cls
    elif family == "qwen2_vl":
        from transformers import Qwen2VLProcessor as processor_cls
    else:
        raise ValueError(f"unknown tiny VLM family {family!r}; valid: 'qwen2_5_vl', 'qwen2_vl'")
    return processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=TINY_CHAT_TEMPLATE,
    )


def build_tiny_vlm(
    family: TinyFamily = "qwen2_5_vl", seed: int = 0
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A randomly initialised tiny VLM of the given family and its processor (float32, CPU)."""
    processor = build_tiny_processor(family)
    tokenizer = processor.tokenizer
    ids = _special_ids(tokenizer)
    config = tiny_vlm_config(
        family,
        vocab_size=len(tokenizer),
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
    )
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLForConditionalGeneration as model_cls
    else:
        from transformers import Qwen2VLForConditionalGeneration as model_cls

    return random_qwen_model(model_cls, config, ids, seed), processor


def random_qwen_model(model_cls, config, ids: dict[str, int], seed: int) -> PreTrainedModel:
    """`model_cls(config)` randomly initialised from `seed`, in eval mode, with Qwen's EOS, pad
    and BOS tokens (`_special_ids`) in its generation config."""
    # Fork the global RNG so that building a model does not disturb the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    return model


def save_tiny_vlm(
    out_dir: str | os.PathLike, family: TinyFamily = "qwen2_5_vl", seed: int = 0
) -> Path:
    """Write a tiny VLM as a checkpoint folder that `from_pretrained` loads like a real one.

    The folder holds `model.safetensors`, `config.json`, `generation_config.json`, the processor
    and image/video processor configs, `tokenizer.json` + `tokenizer_config.json` and
    `chat_template.jinja`, so tests exercise the same loading path as a downloaded checkpoint.
    """
    out = Path(out_dir)
    model, processor = build_tiny_vlm(family, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def tiny_vlm_path(
    family: TinyFamily = "qwen2_5_vl", cache_root: str | os.PathLike | None = None, seed: int = 0
) -> Path:
    """Path of a cached tiny VLM checkpoint, built on first use.

    The build goes to a temporary sibling folder that is renamed into place at the end, so an
    interrupted build never leaves a half-written checkpoint that later runs would trust. The
    default cache root is `$VRL_CACHE` or `~/.cache/vrl`.
    """
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    target = root / f"tiny-{family}-seed{seed}-v{TINY_VERSION}"
    return build_once(
        target, "model.safetensors", lambda folder: save_tiny_vlm(folder, family=family, seed=seed)
    )
