"""Scoring completions whose prompts repeat: each distinct prompt through the model once.

A GRPO group's G completions share one prompt. The plain scoring forward runs prompt +
completion for every row, so the prompt's P tokens go through the network G times, with their
gradient. Here each distinct prompt runs once, with its key/value cache (and gradient) kept; the
cache is repeated to the group's rows, which then run only their completion tokens on top of it.
The positions are the ones the plain forward computes (the model's own 3D M-RoPE index over
prompt + completion), the attention is the same causal attention over the same keys, so the
log-probs and their gradients equal the plain forward's within float tolerance; on the tiny and
the realistic benchmark setups the scoring forward/backward handles about half and 40% of the
tokens.

Used by `VLMAdapter.token_logprobs` on batches from `generate_groups` (`PromptBatch.group_sizes`)
where nothing makes the two forwards differ: not for a forward with its gradient under DDP or
FSDP (one model call per backward there; their no-grad forwards, the old and reference
log-probs, do share, so a sharded and an unsharded run score alike), not with gradient
checkpointing (it turns the cache off) or active dropout (a prompt's dropout mask would be
shared by its group instead of drawn per row); otherwise the plain forward runs.
"""

from __future__ import annotations

from itertools import accumulate
from typing import Any

import torch

from vrl.models.batch import PromptBatch
from vrl.models.vlm_helpers import _accepts_logits_to_keep, _cache_keyword, _unwrap_all
from vrl.sharding import is_sharded


def can_share_prompts(model: torch.nn.Module, batch: PromptBatch) -> bool:
    """Whether `shared_prompt_logits` may score `batch` on `model` (see the module's note)."""
    if batch.group_sizes is None or len(batch.group_sizes) == len(batch):
        return False  # no promise, or no prompt repeats: nothing to save
    if batch.image_features is None and "pixel_values" in batch.model_inputs:
        return False  # a tower that trains runs in the loss forward, per row
    if "video_grid_thw" in batch.model_inputs:
        return False  # videos: not exercised here
    distributed = isinstance(model, torch.nn.parallel.DistributedDataParallel) or is_sharded(model)
    if distributed and torch.is_grad_enabled():
        return False  # DDP and FSDP expect one model call per backward
    base = _unwrap_all(model)
    inner = getattr(base, "model", None)
    if not hasattr(inner, "compute_3d_position_ids"):
        return False  # only models whose positions we can take from the model itself
    checkpointing = getattr(base, "is_activation_checkpointing", None)  # transformers >= 5.2x
    if checkpointing is None:
        checkpointing = getattr(base, "is_gradient_checkpointing", False)
    if torch.is_grad_enabled() and checkpointing:
        return False
    return not (model.training and _has_active_dropout(model))


def plain_logits(
    model: torch.nn.Module,
    batch: PromptBatch,
    inputs: dict[str, Any],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
) -> torch.Tensor:
    """(B, L, V) logits predicting each completion token, from one forward over prompt +
    completion per row (`inputs`: the batch's model inputs). Only the L + 1 last positions get
    logits when the model supports `logits_to_keep`."""
    length = completion_ids.shape[1]
    inputs = dict(inputs)
    inputs["input_ids"] = torch.cat([batch.input_ids, completion_ids], dim=1)  # (B, P+L)
    inputs["attention_mask"] = torch.cat([batch.attention_mask, completion_mask], dim=1)
    if "mm_token_type_ids" in inputs:  # completion tokens are text (type 0) for M-RoPE
        types = inputs["mm_token_type_ids"]
        inputs["mm_token_type_ids"] = torch.cat([types, types.new_zeros(completion_ids.shape)], 1)
    if _accepts_logits_to_keep(model):
        inputs["logits_to_keep"] = length + 1
    logits = model(**inputs, use_cache=False).logits  # (B, L+1 or P+L, V)
    return logits[:, -(length + 1) : -1]  # position t predicts token t+1


def shared_prompt_logits(
    model: torch.nn.Module,
    batch: PromptBatch,
    inputs: dict[str, Any],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
) -> torch.Tensor:
    """(B, L, V) logits predicting each completion token (position t predicts token t), as the
    plain forward over `inputs` (the batch's model inputs, image features in place of pixels)
    + completions gives them, with each run of `batch.group_sizes` prefilled once."""
    sizes = batch.group_sizes
    device = batch.input_ids.device
    prompt_len, length = batch.input_ids.shape[1], completion_ids.shape[1]
    index = torch.arange(len(sizes), device=device).repeat_interleave(
        torch.as_tensor(sizes, device=device)
    )  # (B,) the run of each row
    first = torch.as_tensor([0, *accumulate(sizes)][:-1], device=device)  # each run's row 0
    ids = torch.cat([batch.input_ids, completion_ids], dim=1)  # (B, P+L)
    mask = torch.cat([batch.attention_mask, completion_mask], dim=1)
    types = inputs.get("mm_token_type_ids")
    if types is not None:  # completion tokens are text (type 0)
        types = torch.cat([types, types.new_zeros(completion_ids.shape)], dim=1)
    # the plain forward's positions, from the model's own index over prompt + completion
    positions = _unwrap_all(model).model.compute_3d_position_ids(
        input_ids=ids,
        inputs_embeds=None,
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=None,
        attention_mask=mask,
        cache=None,
        mm_token_type_ids=types,
    )  # (3, B, P+L)
    if positions is None:  # no M-RoPE index (no images): the plain forward's own positions
        return plain_logits(model, batch, inputs, completion_ids, completion_mask)

    prompt_inputs = {
        key: inputs[key].index_select(0, first)
        for key in ("input_ids", "attention_mask", "mm_token_type_ids")
        if key in inputs
    }
    if "mm_encoder_outputs" in inputs:  # the image features of each run's first row
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        starts = [0, *accumulate(batch.images_per_prompt)]  # row r's first image
        features = tuple(
            f
            for r in first.tolist()
            for f in batch.image_features[starts[r] : starts[r] + batch.images_per_prompt[r]]
        )
        prompt_inputs["mm_encoder_outputs"] = {
            "image": BaseModelOutputWithPooling(pooler_output=features)
        }
    prompt_inputs["position_ids"] = positions[:, first, :prompt_len]
    out = model(**prompt_inputs, use_cache=True, logits_to_keep=1)
    head = out.logits[:, -1:].index_select(0, index)  # (B, 1, V): predicts completion token 0
    if length == 1:
        return head
    cache = getattr(out, "cache", None) or out.past_key_values
    cache.batch_select_indices(index)  # differentiable: the gradient reaches the prompt's pass
    rest_inputs: dict[str, Any] = {
        "input_ids": completion_ids[:, :-1],
        "attention_mask": mask[:, : prompt_len + length - 1],
        "position_ids": positions[:, :, prompt_len : prompt_len + length - 1],
        _cache_keyword(model): cache,
    }
    rest = model(**rest_inputs, use_cache=True).logits  # (B, L-1, V)
    return torch.cat([head, rest], dim=1)


def _has_active_dropout(model: torch.nn.Module) -> bool:
    config = getattr(_unwrap_all(model), "config", None)
    text = getattr(config, "text_config", config)
    if getattr(text, "attention_dropout", 0.0):
        return True
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
