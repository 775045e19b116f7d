"""What a flow-matching transformer is conditioned on: the prompt's embeddings and, for in-context
models (FLUX.1 Kontext, UNO), reference images as tokens beside the noisy ones.

A batch's conditioning travels as one `PromptEmbeds`; its `references` are the clean latents of
the reference images, packed like the noisy latents, encoded once per chain pass (not once per
denoising step). Every batch operation (select, repeat, concatenate) keeps text and references
together, so a trajectory re-scored for the loss sees exactly the references its rollout saw.

Position ids (FLUX's RoPE ids are (index, row, column) per token; the noisy tokens are (0, i, j)):

- ``kontext``: reference k (1-based) is (k, i, j). For one reference this is FLUX.1 Kontext's
  convention: the reference overlaps the noisy grid and is told apart by the first coordinate.
- ``uno``: reference k is (0, i + R_k, j + C_k), where R_k and C_k are the noisy grid's rows and
  columns plus those of the references before k: UNO's diagonal layout ("UnoPE"), which keeps
  every reference's positions apart from the noisy grid and from one another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

ReferencePositions = Literal["kontext", "uno"]


@dataclass
class References:
    """Reference images of a batch as transformer tokens: every reference's packed clean latents,
    one after another, and the size of each one's token grid."""

    tokens: Tensor
    """(B, R, D): the references' packed latents concatenated along the sequence (R tokens)."""
    grids: tuple[tuple[int, int], ...]
    """(rows, columns) of each reference's token grid, in order; their products sum to R."""
    positions: ReferencePositions = "kontext"

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3:
            raise ValueError(f"reference tokens must be (B, R, D), got {tuple(self.tokens.shape)}")
        total = sum(r * c for r, c in self.grids)
        if total != self.tokens.shape[1]:
            raise ValueError(
                f"reference grids {self.grids} hold {total} tokens, not {self.tokens.shape[1]}"
            )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def count(self) -> int:
        """Reference images per sample."""
        return len(self.grids)

    def ids(self, noisy_grid: tuple[int, int], device=None, dtype=None) -> Tensor:
        """(R, 3) RoPE ids of the reference tokens, beside a noisy grid of (rows, columns)."""
        parts = []
        row_offset, col_offset = noisy_grid
        for k, (rows, cols) in enumerate(self.grids, start=1):
            if self.positions == "kontext":
                parts.append(grid_ids(rows, cols, index=k, device=device, dtype=dtype))
            else:
                parts.append(grid_ids(rows, cols, 0, row_offset, col_offset, device, dtype))
                row_offset, col_offset = row_offset + rows, col_offset + cols
        return torch.cat(parts)

    def map_batch(self, fn: Callable[[Tensor], Tensor]) -> References:
        return replace(self, tokens=fn(self.tokens))

    @staticmethod
    def cat(items: Sequence[References]) -> References:
        """Concatenate batches; they must have the same references layout."""
        layouts = {(r.grids, r.positions, r.tokens.shape[2]) for r in items}
        if len(layouts) != 1:
            raise ValueError(
                f"cannot concatenate references of different layouts: {sorted(layouts)}"
            )
        return replace(items[0], tokens=torch.cat([r.tokens for r in items]))


def grid_ids(
    rows: int, cols: int, index: int = 0, row_offset: int = 0, col_offset: int = 0,
    device=None, dtype=None,
) -> Tensor:  # fmt: skip
    """(rows * cols, 3) RoPE ids (index, row, column) of a token grid, row-major."""
    ids = torch.zeros(rows, cols, 3, device=device, dtype=dtype)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(rows, device=device, dtype=dtype)[:, None] + row_offset
    ids[..., 2] = torch.arange(cols, device=device, dtype=dtype)[None, :] + col_offset
    return ids.reshape(rows * cols, 3)


@dataclass
class PromptEmbeds:
    """The conditioning of a batch: text, in whatever form the family's transformer takes, and the
    reference images' tokens for an in-context model."""

    prompt_embeds: Tensor
    """(B, L, D) token embeddings (SD3: CLIP-L/G hidden states padded and stacked on T5's)."""
    pooled: Tensor | None = None
    """(B, P) pooled text embedding (SD3: CLIP-L + CLIP-G projections; FLUX: CLIP pooled)."""
    text_ids: Tensor | None = None
    """(L, 3) RoPE position ids of the text tokens (FLUX); shared by the whole batch."""
    references: References | None = None
    """Reference images as tokens (in-context FLUX), or None."""

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> PromptEmbeds:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        references = self.references
        if references is not None:
            references = references.map_batch(move)
        return PromptEmbeds(
            move(self.prompt_embeds), move(self.pooled), move(self.text_ids), references
        )

    def with_references(self, references: References | None) -> PromptEmbeds:
        """The same text with these references (one set per sample of the batch)."""
        if references is not None and len(references) != len(self):
            raise ValueError(
                f"references for a batch of {len(references)}, prompts for a batch of {len(self)}"
            )
        return replace(self, references=references)

    def _map_batch(self, fn: Callable[[Tensor], Tensor]) -> PromptEmbeds:
        pooled = None if self.pooled is None else fn(self.pooled)
        references = None if self.references is None else self.references.map_batch(fn)
        return replace(
            self, prompt_embeds=fn(self.prompt_embeds), pooled=pooled, references=references
        )

    def index_select(self, idx: Tensor | Sequence[int]) -> PromptEmbeds:
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.prompt_embeds.device)
        return self._map_batch(lambda t: t.index_select(0, idx.to(t.device)))

    def __getitem__(self, idx: int | slice | Tensor | Sequence[int]) -> PromptEmbeds:
        """Rows of the batch; an int keeps the batch dimension (a batch of one)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        if isinstance(idx, slice):
            return self._map_batch(lambda t: t[idx])
        return self.index_select(idx)

    def repeat_interleave(self, n: int) -> PromptEmbeds:
        """Each prompt `n` times in a row (GRPO's group of images per prompt)."""
        return self._map_batch(lambda t: t.repeat_interleave(n, dim=0))

    @staticmethod
    def cat(items: Sequence[PromptEmbeds]) -> PromptEmbeds:
        """Concatenate batches (same sequence length; FLUX's shared `text_ids` must agree; all
        with references of one layout, or none)."""
        first = items[0]
        lengths = {e.prompt_embeds.shape[1:] for e in items}
        if len(lengths) != 1:
            raise ValueError(f"cannot concatenate prompt embeddings of shapes {sorted(lengths)}")
        pooled = None if first.pooled is None else torch.cat([e.pooled for e in items])
        with_refs = [e.references is not None for e in items]
        if any(with_refs) and not all(with_refs):
            raise ValueError("cannot concatenate conditionings with and without references")
        references = References.cat([e.references for e in items]) if all(with_refs) else None
        return PromptEmbeds(
            torch.cat([e.prompt_embeds for e in items]), pooled, first.text_ids, references
        )
