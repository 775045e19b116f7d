"""What `VLMAdapter` needs from torch and transformers beyond the model's own API: unwrapping
DDP and peft, the family of a config, the generation keywords of the installed transformers,
float32 log-probs of the sampled tokens, a Qwen image processor's pixel bounds."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import contextmanager

import torch

Box = tuple[float, float, float, float]


def _set_pixel_bounds(processor, min_pixels: int | None, max_pixels: int | None) -> None:
    """Override a Qwen-style image processor's resize bounds (stored as shortest/longest edge).

    Done on the loaded object rather than through `from_pretrained` kwargs, which transformers
    forwards to every sub-processor and then passes again, deprecated, at each call.
    """
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None)
    bounds = dict(size) if isinstance(size, dict) else dict(vars(size)) if size is not None else {}
    if bounds.get("longest_edge") is None:
        raise ValueError(
            f"min_pixels/max_pixels need a Qwen-style image processor, got {type(image_processor)}"
        )
    if min_pixels is not None:
        bounds["shortest_edge"] = min_pixels
    if max_pixels is not None:
        bounds["longest_edge"] = max_pixels
    image_processor.size = type(size)(**bounds)
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and hasattr(image_processor, name):  # older transformers read these
            setattr(image_processor, name, value)


def _default_family(config, families) -> str:
    """The adapter family of a model config: its model_type when listed, "text" for a text-only
    causal LM (no image-text-to-text class in transformers), else "generic"."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", "")
    if model_type in families:
        return model_type
    if (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    ):
        return "text"
    return "generic"


def _four(box: Sequence[float]) -> Box:
    values = [float(v) for v in box]
    if len(values) != 4:
        raise ValueError(f"a box has 4 numbers (x1, y1, x2, y2), got {len(values)}: {box!r}")
    return values[0], values[1], values[2], values[3]


def _selected_logprobs(
    logits: torch.Tensor, ids: torch.Tensor, temperature: float, suppressed: torch.Tensor
) -> torch.Tensor:
    """log softmax(logits / T)[ids] over the unsuppressed vocabulary, in float32.

    logits (..., L, V), ids (..., L) -> (..., L).
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    if suppressed.numel():
        logits = logits.index_fill(-1, suppressed, float("-inf"))
    picked = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # (..., L)
    return picked - torch.logsumexp(logits, dim=-1)


_LOGSOFTMAX_ELEMENTS = 1 << 24
"""Most logits (64 MiB in float32) log-softmaxed at once by `_completion_logprobs`."""


def _completion_logprobs(
    logits: torch.Tensor, ids: torch.Tensor, temperature: float, suppressed: torch.Tensor
) -> torch.Tensor:
    """`_selected_logprobs` of a batch, logits (B, L, V), ids (B, L) -> (B, L), over as many rows
    at once as keep the float32 copy within `_LOGSOFTMAX_ELEMENTS` (one row at least): one pass
    for a small vocabulary, a row or a few at a time for a 150k one."""
    rows = max(1, _LOGSOFTMAX_ELEMENTS // max(1, logits.shape[1] * logits.shape[2]))
    return torch.cat(
        [
            _selected_logprobs(logits[i : i + rows], ids[i : i + rows], temperature, suppressed)
            for i in range(0, logits.shape[0], rows)
        ]
    )


def _unwrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DistributedDataParallel-style wrappers (they have no `generate`)."""
    while not hasattr(model, "generate") and hasattr(model, "module"):
        model = model.module
    return model


def _unwrap_all(model: torch.nn.Module) -> torch.nn.Module:
    """The underlying transformers model, through DDP and peft wrappers."""
    model = _unwrap_ddp(model)
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def _cache_keyword(model: torch.nn.Module) -> str:
    """What `generate` calls a key/value cache handed in: `cache` (transformers >= 5.2x) or
    `past_key_values`."""
    names = inspect.signature(_unwrap_all(model).forward).parameters
    return "cache" if "cache" in names else "past_key_values"


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(_unwrap_all(model).forward).parameters


@contextmanager
def _eval_mode(model: torch.nn.Module):
    """Generate without dropout (LoRA dropout included), then restore the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
