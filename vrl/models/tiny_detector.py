"""A tiny random GroundingDINO, built offline and cached like the other tiny models.

``tiny-random:grounding_dino`` resolves (``vrl.models.paths.resolve_detector_path``) to a folder
written once into ``$VRL_CACHE/tiny``: ``model.safetensors`` + ``config.json`` of a
``GroundingDinoForObjectDetection`` (a 4-stage Swin of width 8, a one-layer BERT of width 16,
``d_model`` 32, 12 queries) and a ``GroundingDinoProcessor`` (image processor at 64..96 pixels, a
local BERT WordPiece tokenizer). Loading it goes through ``from_pretrained`` exactly as a real
checkpoint does.

The tokenizer keeps real BERT's ids for what GroundingDINO reads by id: ``[CLS]`` 101, ``[SEP]``
102, ``.`` 1012 and ``?`` 1029 (the model's phrase delimiters, hard-coded in ``transformers``).
Its vocabulary is BERT-uncased's layout (``[PAD]``, unused slots, specials, then the printable
ASCII characters from id 999) followed by their ``##`` forms and a few object words, so any text
tokenises (at worst character by character) without a download.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from vrl.models.build_cache import build_once, default_cache_root

TINY_DETECTOR_VERSION = 1
TINY_DETECTOR_FAMILIES = ("grounding_dino",)
BERT_FIRST_CHAR_ID = 999
"""Real BERT-uncased's id of "!", the first of its single-character tokens."""
_WORDS = (
    "a", "an", "the", "of", "red", "green", "blue", "yellow", "purple", "orange", "white",
    "black", "pink", "brown", "small", "large", "big", "tiny", "shiny", "circle", "square",
    "triangle", "star", "rectangle", "cube", "sphere", "ball", "cat", "dog", "car", "tree",
    "house", "person", "bird", "boat", "chair", "cup", "box", "table", "bottle",
)  # fmt: skip

TINY_GROUNDING_DINO = {
    "backbone_config": {
        "model_type": "swin",
        "embed_dim": 8,
        "depths": [1, 1, 1, 1],
        "num_heads": [1, 1, 1, 1],
        "window_size": 4,
        "image_size": 64,
        "patch_size": 4,
        "out_indices": [2, 3, 4],
    },
    "text": {
        "model_type": "bert",
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 64,
    },
    # d_model: GroupNorm(32, d_model) needs a multiple of 32; decoder_layers: transformers ties
    # the box heads of layers 1.. to layer 0, which fails with a single decoder layer.
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 2,
    "encoder_ffn_dim": 32,
    "decoder_ffn_dim": 32,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_n_points": 1,
    "decoder_n_points": 1,
    "num_queries": 12,
    "max_text_len": 64,
}
TINY_GROUNDING_DINO_SIZE = {"shortest_edge": 64, "longest_edge": 96}


def build_bert_tokenizer(words: Iterable[str] = _WORDS, model_max_length: int = 64):
    """A BERT-uncased WordPiece tokenizer with real BERT's ids for its specials and characters."""
    from transformers import BertTokenizer

    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]  # "!" .. "~", uncased
    tokens = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"[unused{i}]" for i in range(99, 99 + BERT_FIRST_CHAR_ID - len(tokens))]
    tokens += chars + ["##" + c for c in chars] + [w for w in words if w not in chars]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return BertTokenizer(vocab=vocab, model_max_length=model_max_length)


def build_tiny_grounding_dino(seed: int = 0):
    """(GroundingDinoForObjectDetection, GroundingDinoProcessor), random and tiny, in eval mode."""
    from transformers import (
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    arch = dict(TINY_GROUNDING_DINO)
    tokenizer = build_bert_tokenizer(model_max_length=arch["max_text_len"])
    text = {**arch.pop("text"), "vocab_size": len(tokenizer), "pad_token_id": 0}
    config = GroundingDinoConfig(text_config=text, **arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(config).eval()
    image_processor = GroundingDinoImageProcessor(size=dict(TINY_GROUNDING_DINO_SIZE))
    return model, GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_tiny_grounding_dino(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write the tiny GroundingDINO as a checkpoint folder that ``from_pretrained`` loads."""
    out = Path(out_dir)
    model, processor = build_tiny_grounding_dino(seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def tiny_detector_path(
    family: str = "grounding_dino", cache_root: str | os.PathLike | None = None, seed: int = 0
) -> Path:
    """Path of a cached tiny detector checkpoint, built on first use.

    The build goes to a temporary sibling folder renamed into place at the end, so an interrupted
    build never leaves a half-written checkpoint that later runs would trust.
    """
    savers: dict[str, Callable[..., Path]] = {"grounding_dino": save_tiny_grounding_dino}
    if family not in savers:
        raise ValueError(f"unknown tiny detector {family!r}; valid: {', '.join(savers)}")
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    target = root / f"tiny-{family}-seed{seed}-v{TINY_DETECTOR_VERSION}"
    return build_once(target, "model.safetensors", lambda folder: savers[family](folder, seed=seed))
