"""Batches passed between `VLMAdapter` and the trainers: prompts in, completions out.

Kept apart from the adapter so trainers and rewards can type against them without the model code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch


@dataclass
class PromptBatch:
    """Left-padded prompts ready for `model.generate` / `model(...)`, plus image geometry.

    `model_inputs` holds whatever the family's forward needs (`input_ids`, `attention_mask`,
    `pixel_values`, `image_grid_thw`, `mm_token_type_ids`, ...). Sizes are (width, height) of each
    prompt's first image, or None for a prompt without images.
    """

    model_inputs: dict[str, torch.Tensor]
    input_sizes: list[tuple[int, int] | None]
    """Size of the first image as the model saw it (after the processor's resize)."""
    original_sizes: list[tuple[int, int] | None]
    """Size of the first image as given."""
    images_per_prompt: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    """Rendered prompt strings (before image-token expansion), for logging."""
    image_features: tuple[torch.Tensor, ...] | None = None
    """The frozen vision tower's output, one (tokens, width) tensor per image in batch order
    (`VLMAdapter.encode_images`): forwards then take these instead of running the tower on
    `pixel_values` again. Repeated prompts share one tensor."""
    group_sizes: list[int] | None = None
    """Set by `VLMAdapter.generate_groups`: the rows are runs of one prompt repeated (run i is
    `group_sizes[i]` rows), so a scoring forward may run each prompt once for its run
    (`vrl.models.vlm_scoring`). None: no such promise."""

    @property
    def input_ids(self) -> torch.Tensor:
        return self.model_inputs["input_ids"]  # (B, P)

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.model_inputs["attention_mask"]  # (B, P)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> PromptBatch:
        inputs = {k: v.to(device) for k, v in self.model_inputs.items()}
        features = self.image_features
        if features is not None:
            moved = {id(f): f.to(device) for f in features}  # shared tensors stay shared
            features = tuple(moved[id(f)] for f in features)
        return replace(self, model_inputs=inputs, image_features=features)

    def repeat_interleave(self, n: int | Sequence[int]) -> PromptBatch:
        """Each prompt repeated in a row: `n` times, or `n[i]` times for prompt i (GRPO's group of
        completions per prompt; a micro-batch may hold part of a group).

        Flat per-patch tensors (Qwen's `pixel_values` (patches, dim) with `image_grid_thw`) are
        split per image and regrouped, since their first dimension is not the batch; image
        features (`image_features`) are repeated as references, not copied.
        """
        b = len(self)
        counts = [n] * b if isinstance(n, int) else [int(k) for k in n]
        if len(counts) != b or min(counts, default=1) < 0:
            raise ValueError(f"{len(counts)} repeat counts for {b} prompts: {n!r}")
        inputs: dict[str, torch.Tensor] = {}
        grid = self.model_inputs.get("image_grid_thw")
        per_prompt = self.images_per_prompt
        for key, value in self.model_inputs.items():
            if key == "pixel_values" and grid is not None:
                inputs[key] = _repeat_flat_images(value, grid, per_prompt, counts)
            elif key == "image_grid_thw":
                inputs[key] = _repeat_groups(list(value.split(1)), per_prompt, counts)
            elif key == "pixel_values" and value.shape[0] == sum(per_prompt) != b:
                inputs[key] = _repeat_groups(list(value.split(1)), per_prompt, counts)
            elif value.shape[0] == b:
                index = torch.arange(b, device=value.device).repeat_interleave(
                    torch.tensor(counts, device=value.device)
                )
                inputs[key] = value.index_select(0, index)
            else:
                raise NotImplementedError(
                    f"don't know how to repeat input {key!r} of shape {tuple(value.shape)}"
                )
        features = None
        if self.image_features is not None:
            features = tuple(_repeat_groups_list(list(self.image_features), per_prompt, counts))

        def rep(xs):
            return [x for x, k in zip(xs, counts, strict=True) for _ in range(k)]

        return PromptBatch(
            model_inputs=inputs,
            input_sizes=rep(self.input_sizes),
            original_sizes=rep(self.original_sizes),
            images_per_prompt=rep(per_prompt),
            texts=rep(self.texts) if self.texts else [],
            image_features=features,
        )


def _repeat_groups_list(items: list, counts: list[int], repeats: list[int]) -> list:
    """Per-prompt groups of items (prompt i has `counts[i]`), group i repeated `repeats[i]` times
    in place."""
    out, start = [], 0
    for count, n in zip(counts, repeats, strict=True):
        group = items[start : start + count]
        start += count
        out.extend(group * n)
    return out


def _repeat_groups(
    items: list[torch.Tensor], counts: list[int], repeats: list[int]
) -> torch.Tensor:
    return torch.cat(_repeat_groups_list(items, counts, repeats), dim=0)


def _repeat_flat_images(
    pixel_values: torch.Tensor, grid_thw: torch.Tensor, counts: list[int], repeats: list[int]
) -> torch.Tensor:
    patches_per_image = grid_thw.prod(dim=-1).tolist()  # (n_images,)
    per_image = list(pixel_values.split(patches_per_image, dim=0))
    return _repeat_groups(per_image, counts, repeats)


@dataclass
class Completions:
    """Sampled completions, right-padded with the pad token."""

    ids: torch.Tensor
    """(B, L) token ids; positions after the first EOS hold the pad id."""
    mask: torch.Tensor
    """(B, L) long, 1 up to and including the first EOS (or to the end), 0 after."""
    texts: list[str]
    """Decoded completions without special tokens (the `<think>`/`<answer>` tags are kept)."""

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)  # (B,)
