"""Pixel-statistics rewards for text-to-image models: cheap, exact, and movable by tiny models.

They take an image batch (B, 3, H, W) in [0, 1] (any device) and score each image; the learning
tests and the CPU recipes use them where a learned reward model would be too slow or untrained.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .registry import Sample, register_reward


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"image rewards take a (B, 3, H, W) tensor in [0, 1], got {shape}")
    return images.float()


@register_reward("redness", modality="image")
def redness_reward(images: torch.Tensor, samples: Sequence[Sample]) -> list[float | None]:
    """Mean over pixels of R - (G + B) / 2, in [-1, 1]: 1 for pure red, -1 for cyan."""
    x = _check_images(images)
    score = x[:, 0] - 0.5 * (x[:, 1] + x[:, 2])  # (B, H, W)
    return score.mean(dim=(1, 2)).tolist()


@register_reward("brightness", modality="image")
def brightness_reward(images: torch.Tensor, samples: Sequence[Sample]) -> list[float | None]:
    """Mean pixel value in [0, 1]."""
    return _check_images(images).mean(dim=(1, 2, 3)).tolist()
