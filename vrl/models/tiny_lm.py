"""A tiny random text-only Qwen2 causal LM, built offline: the language-model path of the VLM
trainer (text-only prompts), and the model the vLLM rollout engine is tested with.

It shares the tiny VLMs' tokenizer and chat template (`vrl.models.tiny`). Its attention heads are
64 wide: vLLM's CPU attention takes no head size below 32, and 64 is the common size it serves on
every backend. Width 128, 2 layers, 0.46M parameters: a few dozen GRPO steps run in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from vrl.models.build_cache import build_once, default_cache_root
from vrl.models.tiny import _special_ids, build_vlm_tokenizer, random_qwen_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

# Bump when the builder changes, so `tiny_lm_path` never reuses a stale cached folder.
TINY_LM_VERSION = 1


def build_tiny_lm(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A randomly initialised tiny Qwen2ForCausalLM and its tokenizer (float32, CPU)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_vlm_tokenizer()
    ids = _special_ids(tokenizer)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    return random_qwen_model(Qwen2ForCausalLM, config, ids, seed), tokenizer


def save_tiny_lm(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write the tiny LM as a checkpoint folder (weights, configs, tokenizer, chat template)."""
    out = Path(out_dir)
    model, tokenizer = build_tiny_lm(seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_lm_path(cache_root: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Path of the cached tiny LM checkpoint, built on first use (atomically, as tiny_vlm_path)."""
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    target = root / f"tiny-qwen2-seed{seed}-v{TINY_LM_VERSION}"
    return build_once(target, "model.safetensors", lambda folder: save_tiny_lm(folder, seed=seed))
