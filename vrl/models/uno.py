"""UNO's multi-reference LoRA merged into a diffusers FLUX transformer.

UNO (ByteDance, "Less-to-More Generalization") conditions FLUX.1-dev on several reference images
through a LoRA on every block's attention, written for Black Forest Labs' own FLUX code: a fused
q|k|v projection per stream and, in the single-stream blocks, one output projection over the
attention output and the MLP activation together. Its file (`dit_lora.safetensors`) holds, per
block, ``down`` (r, in) and ``up`` (out, r) of each LoRA, applied unscaled:

    double_blocks.{i}.processor.qkv_lora1 / proj_lora1   image stream: q|k|v, attention out
    double_blocks.{i}.processor.qkv_lora2 / proj_lora2   text stream:  q|k|v, attention out
    single_blocks.{i}.processor.qkv_lora  / proj_lora    q|k|v; out over [attention | MLP]

diffusers splits the fused q|k|v into `to_q`, `to_k`, `to_v` (the text stream's into `add_q_proj`,
...) by rows in that order, so a fused delta up @ down is split the same way. The LoRA is merged
into the weights: it is part of the base policy (and of the KL reference), and an RL LoRA trains
on top of it. References then take UNO's diagonal position ids (`positions: uno`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

_DOUBLE = {
    "qkv_lora1": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "proj_lora1": ("attn.to_out.0",),
    "qkv_lora2": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "proj_lora2": ("attn.to_add_out",),
}
_SINGLE = {
    "qkv_lora": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "proj_lora": ("proj_out",),
}
_KEY = re.compile(r"^(double|single)_blocks\.(\d+)\.processor\.(\w+)\.(down|up)\.weight$")


def uno_deltas(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """diffusers weight name -> the delta (out, in) UNO's LoRA adds to it."""
    pairs: dict[tuple[str, int, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        match = _KEY.match(key)
        table = {"double": _DOUBLE, "single": _SINGLE}.get(match.group(1)) if match else None
        if match is None or match.group(3) not in table:
            raise ValueError(
                f"UNO LoRA: unexpected key {key!r} (not a UNO double/single block LoRA)"
            )
        kind, block, name, part = match.groups()
        pairs.setdefault((kind, int(block), name), {})[part] = value
    deltas: dict[str, Tensor] = {}
    for (kind, block, name), parts in sorted(pairs.items()):
        if set(parts) != {"down", "up"}:
            raise ValueError(f"UNO LoRA: {kind}_blocks.{block}.{name} lacks its down or up weight")
        delta = parts["up"].float() @ parts["down"].float()  # (out, in)
        prefix = "transformer_blocks" if kind == "double" else "single_transformer_blocks"
        targets = (_DOUBLE if kind == "double" else _SINGLE)[name]
        for target, chunk in zip(targets, delta.chunk(len(targets)), strict=True):
            deltas[f"{prefix}.{block}.{target}.weight"] = chunk
    return deltas


@torch.no_grad()
def merge_uno_lora(transformer: torch.nn.Module, path: str | Path) -> int:
    """Add UNO's LoRA (a safetensors file) into `transformer`'s weights; returns how many weights
    changed. A key or a shape the transformer does not have is an error naming it."""
    from safetensors.torch import load_file

    params = dict(transformer.named_parameters())
    deltas = uno_deltas(load_file(str(path)))
    for name, delta in deltas.items():
        if name not in params:
            raise ValueError(f"UNO LoRA {path}: this transformer has no weight {name}")
        weight = params[name]
        if weight.shape != delta.shape:
            raise ValueError(
                f"UNO LoRA {path}: {name} is {tuple(weight.shape)}, the LoRA's delta "
                f"{tuple(delta.shape)}: made for another FLUX size"
            )
        weight.add_(delta.to(weight.device, weight.dtype))
    return len(deltas)
