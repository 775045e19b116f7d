"""Batches passed between `VLMAdapter` and the trainers: prompts in, completions out.

Kept apart from the adapter so trainers and rewards can type against them without the model code.
"""

from __future__ import annotations

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
        return replace(self, model_inputs=inputs)

    def repeat_interleave(self, n: int) -> PromptBatch:
        """Each prompt repeated `n` times in a row (GRPO's group of completions per prompt).

        Flat per-patch tensors (Qwen's `pixel_values` (patches, dim) with `image_grid_thw`) are
        split per image and regrouped, since their first dimension is not the batch.
        """
        b = len(self)
        inputs: dict[str, torch.Tensor] = {}
        grid = self.model_inputs.get("image_grid_thw")
        for key, value in self.model_inputs.items():
            if key == "pixel_values" and grid is not None:
                inputs[key] = _repeat_flat_images(value, grid, self.images_per_prompt, n)
            elif key == "image_grid_thw":
                inputs[key] = _repeat_groups(list(value.split(1)), self.images_per_prompt, n)
            elif key == "pixel_values" and value.shape[0] == sum(self.images_per_prompt) != b:
                inputs[key] = _repeat_groups(list(value.split(1)), self.images_per_prompt, n)
            elif value.shape[0] == b:
                inputs[key] = value.repeat_interleave(n, dim=0)
            else:
                raise NotImplementedError(
                    f"don't know how to repeat input {key!r} of shape {tuple(value.shape)}"
                )
        return PromptBatch(
            model_inputs=inputs,
            input_sizes=[s for s in self.input_sizes for _ in range(n)],
            original_sizes=[s for s in self.original_sizes for _ in range(n)],
            images_per_prompt=[k for k in self.images_per_prompt for _ in range(n)],
            texts=[t for t in self.texts for _ in range(n)],
        )


def _repeat_groups(items: list[torch.Tensor], counts: list[int], n: int) -> torch.Tensor:
    """Concatenate per-prompt groups of items, each group repeated n times in place."""
    out, start = [], 0
    for count in counts:
        group = items[start : start + count]
        start += count
        out.extend(group * n)
    return torch.cat(out, dim=0)


def _repeat_flat_images(
    pixel_values: torch.Tensor, grid_thw: torch.Tensor, counts: list[int], n: int
) -> torch.Tensor:
    patches_per_image = grid_thw.prod(dim=-1).tolist()  # (n_images,)
    per_image = list(pixel_values.split(patches_per_image, dim=0))
    return _repeat_groups(per_image, counts, n)


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
