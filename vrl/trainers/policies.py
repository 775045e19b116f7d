"""The trainable policies of both trainers, loaded from a recipe's ``model`` settings.

Each loader returns the model adapter, the policy (LoRA through peft, or full fine-tuning) and the
reference policy for the KL term: under LoRA the reference is the policy with its adapter
disabled, so no copy is made; with full fine-tuning it is a frozen copy, and none at all when
``grpo.beta`` is 0.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from vrl.models.paths import resolve_dtype, resolve_model_path, resolve_pipeline_path

logger = logging.getLogger(__name__)


def make_reference(policy: torch.nn.Module, beta: float, lora: bool) -> torch.nn.Module | None:
    """A frozen reference copy, only when there is a KL term and no adapter to switch off."""
    if beta == 0.0 or lora:
        return None
    ref = copy.deepcopy(policy).eval()
    ref.requires_grad_(False)
    return ref


def load_vlm_policy(cfg, accelerator) -> tuple[Any, torch.nn.Module, torch.nn.Module | None]:
    """Adapter + trainable policy (LoRA or full, vision frozen) + reference model (or None)."""
    from vrl.models.vlm import VLMAdapter

    m = cfg.model
    adapter = VLMAdapter.from_pretrained(
        resolve_model_path(m.path),
        dtype=resolve_dtype(m.dtype, accelerator.device),
        attn_implementation=m.attn_implementation,
        box_convention=m.box_convention,
        min_pixels=m.min_pixels,
        max_pixels=m.max_pixels,
    )
    model = adapter.model
    if m.freeze_vision or m.lora.enabled:
        for p in adapter.vision_parameters(model):
            p.requires_grad_(False)
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if m.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=m.lora.r,
            lora_alpha=m.lora.alpha,
            lora_dropout=m.lora.dropout,
            target_modules=m.lora.target_modules or adapter.lora_target_modules(),
        )
        model = get_peft_model(model, lora)
        if m.gradient_checkpointing:
            model.enable_input_require_grads()
    ref = make_reference(model, cfg.grpo.beta, m.lora.enabled)
    if ref is not None:
        ref.to(accelerator.device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("policy %s: %d / %d parameters trainable", m.path, trainable, total)
    return adapter, model, ref


def load_diffusion_policy(cfg, accelerator):
    """Adapter with LoRA (or full fine-tuning) on the transformer, and the reference (or None)."""
    from vrl.models.diffusion import FlowMatchingAdapter

    m = cfg.model
    adapter = FlowMatchingAdapter.from_pretrained(
        resolve_pipeline_path(m.path),
        dtype=resolve_dtype(m.dtype, accelerator.device),
        device=accelerator.device,
    )
    adapter.pipeline.set_progress_bar_config(disable=True)
    if m.reference_lora:  # part of the base policy and of the reference, under the RL LoRA
        from vrl.models.uno import merge_uno_lora

        merge_uno_lora(adapter.transformer, m.reference_lora)
        adapter.reference_lora = m.reference_lora
    if m.gradient_checkpointing:
        adapter.transformer.enable_gradient_checkpointing()
    ref = None
    if m.lora.enabled:
        adapter.add_lora(m.lora.r, m.lora.alpha, target_modules=_targets(m.lora.target_modules))
    else:
        adapter.transformer.requires_grad_(True)
        if cfg.grpo.beta != 0.0:
            ref = copy.deepcopy(adapter.transformer).eval().requires_grad_(False)
    return adapter, ref


def _targets(spec: str | None):
    return None if spec is None else [s.strip() for s in spec.split(",") if s.strip()]
