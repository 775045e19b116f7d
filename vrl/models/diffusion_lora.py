"""LoRA on a diffusion transformer, with the base model as the reference policy.

Flow-GRPO trains a LoRA on the attention projections of the transformer's blocks and uses the
transformer without it as the frozen reference for the KL term. `TransformerLoRA` holds those
methods for `vrl.models.diffusion.FlowMatchingAdapter`, which mixes it in; they act on its
`self.transformer`, a diffusers model with peft's adapter mixin:

- `add_lora` injects the adapter in place and leaves only its weights trainable, so the pipeline
  samples with the policy;
- `disabled_adapter` runs the base model (the reference) without a copy of the weights;
- `lora_state_dict` gives the LoRA weights for a checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

# Attention projections of the joint / single-stream blocks (diffusers' names): image-stream
# q, k, v, out; text-stream (added) q, k, v, out. Flow-GRPO puts its LoRA on exactly these.
ATTENTION_PROJECTIONS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)


class TransformerLoRA:
    """LoRA methods over `self.transformer` (a diffusers transformer with peft's adapter mixin)."""

    transformer: torch.nn.Module

    def lora_target_modules(self) -> list[str]:
        """Suffixes (peft matching) of the attention projections this transformer has."""
        names = [n for n, m in self.transformer.named_modules() if isinstance(m, torch.nn.Linear)]
        found = [s for s in ATTENTION_PROJECTIONS if any(n.endswith("." + s) for n in names)]
        if not found:
            raise ValueError(f"no attention projection found in {type(self.transformer).__name__}")
        return found

    def add_lora(
        self,
        r: int,
        alpha: int,
        target_modules: Sequence[str] | None = None,
        init_lora_weights: bool | str = "gaussian",
    ) -> None:
        """Put a LoRA adapter on the transformer; afterwards only LoRA parameters are trainable.

        The adapter is injected in place (the pipeline's transformer itself), so `pipeline(...)`
        samples with the policy and `disabled_adapter()` gives the reference without a copy.
        """
        from peft import LoraConfig

        if lora_layers(self.transformer):
            raise RuntimeError("the transformer already has a LoRA adapter")
        targets = list(target_modules) if target_modules is not None else self.lora_target_modules()
        config = LoraConfig(
            r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=init_lora_weights
        )
        self.transformer.requires_grad_(False)
        self.transformer.add_adapter(config)  # diffusers' PeftAdapterMixin
        for name, param in self.transformer.named_parameters():
            param.requires_grad_("lora_" in name)

    @contextmanager
    def disabled_adapter(self) -> Iterator[None]:
        """Run the transformer without its LoRA (the reference policy), then restore it."""
        layers = lora_layers(self.transformer)
        if not layers:
            raise RuntimeError("no LoRA adapter to disable: call add_lora first")
        # peft toggles requires_grad when disabling/enabling; give the caller's flags back as set.
        flags = [(p, p.requires_grad) for layer in layers for p in layer.parameters()]
        self.transformer.disable_adapters()
        try:
            yield
        finally:
            self.transformer.enable_adapters()
            for param, flag in flags:
                param.requires_grad_(flag)

    def lora_state_dict(self) -> dict[str, Tensor]:
        """The LoRA weights (peft's key names), e.g. for a checkpoint."""
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.transformer)


def lora_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The peft LoRA layers inside `module` (none before `add_lora`)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
