"""A tiny random Qwen2 causal LM built offline, to test `LLMDecomposer.from_pretrained` end to end.

The model is untrained, so its replies are gibberish: exactly what exercises the decomposer's
retry and fallback path through the real loading, chat-template and `generate` code.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

__all__ = ["CHAT_TEMPLATE", "build_tiny_causal_lm", "save_tiny_causal_lm"]

# Qwen's ChatML layout, text-only.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus(seed: int, n_prompts: int = 300) -> list[str]:
    """Templated prompts, their scene JSON and the instruction: the text the tokenizer will see."""
    from vrl.hicogen.decompose import COLOURS, DECOMPOSE_INSTRUCTION, SHAPES, decompose_template

    rng = random.Random(seed)
    relations = ["to the left of", "to the right of", "above", "below", "next to", "on", "in"]
    texts = [DECOMPOSE_INSTRUCTION]
    for _ in range(n_prompts):
        first = f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)}"
        second = f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)}"
        prompt = f"{first} {rng.choice(relations)} {second} on a {rng.choice(COLOURS)} background"
        texts.append(prompt)
        scene = decompose_template(prompt)
        if scene is not None:
            texts.append(scene.to_json())
    return texts


def build_tiny_causal_lm(seed: int = 0, vocab_size: int = 600) -> tuple[Any, Any]:
    """(Qwen2ForCausalLM, PreTrainedTokenizerFast): hidden 64, 2 layers, 2 heads, local byte-level BPE.

    Deterministic for a given seed: the corpus is generated from it and the weights are initialised
    under `torch.manual_seed(seed)`.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(seed), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=_SPECIAL_TOKENS[1:],
        chat_template=CHAT_TEMPLATE,
    )
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def save_tiny_causal_lm(out_dir: str | Path, seed: int = 0) -> Path:
    """Write model and tokenizer (with chat template) so loading takes the downloaded-checkpoint path."""
    out = Path(out_dir)
    model, tokenizer = build_tiny_causal_lm(seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
