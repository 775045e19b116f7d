"""The global level of the hierarchical (HiCoGen) reward: CLIPScore and an HPS-style preference.

R_global = w_clip * CLIPScore + w_pref * preference, both computed per image on an open_clip
backbone (see docs/algorithms.md, section 5.4):

- ``CLIPScorer``: CLIPScore (Hessel et al., 2021), ``w * max(cos(image, text), 0)`` with
  ``w = 2.5`` by default, so a score lies in [0, w]. The paper's w stretches the typical cosines
  of real images (about 0.2-0.4) over a wider range; it is a parameter, not a constant.
- ``PreferenceScorer``: the HPSv2 convention, ``scale * cos(image, text)`` on the preference-tuned
  backbone, with ``scale = 1.0`` by default as HPSv2's own ``score()`` returns it (about 0.2-0.35
  for real images; papers often print it times 100, which ``scale=100`` reproduces). No clamp.

Both load their model once, from a local weights file (``from_pretrained``; nothing is downloaded,
a missing file is an error) or from an architecture dict (``from_config``; the tests use a tiny
random ViT). Images (B, 3, H, W) in [0, 1] on any device are resized, centre-cropped and
normalised on their own device with the model's preprocessing settings (the tensor twin of
open_clip's PIL ``preprocess``), then scored in chunks under ``torch.no_grad()``. Each distinct
prompt of a batch is encoded once (a GRPO group repeats its prompt).

``build_global_reward`` turns the scorers into a plain reward ``fn(images, samples)`` for the
registry; its ``breakdown(images, samples)`` gives the per-component scores for logging.
Nothing is registered here: the scorers need weights that only the run's config knows, e.g.::

    clip = CLIPScorer.from_pretrained("ViT-L-14", "/models/clip-vit-l-14.bin", device="cuda")
    register_reward("global")(build_global_reward(clip, None))
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .registry import Sample

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class OpenCLIPScorer:
    """An open_clip model with its tokenizer and preprocessing, scoring (image, prompt) pairs.

    The base of ``CLIPScorer`` and ``PreferenceScorer``; ``cosine`` is the shared measurement.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        *,
        preprocess_cfg: Mapping[str, Any] | None = None,
        batch_size: int = 32,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        cfg = dict(preprocess_cfg or {})
        size = cfg.get("size", getattr(model.visual, "image_size", 224))
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        self.mean = tuple(cfg.get("mean") or OPENAI_MEAN)
        self.std = tuple(cfg.get("std") or OPENAI_STD)
        self.interpolation: str = cfg.get("interpolation") or "bicubic"
        self.resize_mode: str = cfg.get("resize_mode") or "shortest"
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(
                f"resize_mode {self.resize_mode!r} is not supported; use 'shortest' or 'squash'"
            )
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(
                f"interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}"
            )

    @classmethod
    def from_pretrained(
        cls,
        model_name: str,
        weights_path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        **kwargs: Any,
    ):
        """An open_clip architecture by name (e.g. "ViT-H-14") with weights from a local file."""
        import open_clip

        if not os.path.isfile(weights_path):
            raise FileNotFoundError(
                f"no weights file at {weights_path!r}; {cls.__name__} loads local files only "
                "(download the checkpoint first, e.g. HPSv2's HPS_v2_compressed.pt)"
            )
        model = open_clip.create_model(
            model_name, pretrained=os.fspath(weights_path), device=device, precision=precision
        )
        return cls(
            model,
            open_clip.get_tokenizer(model_name),
            preprocess_cfg=open_clip.get_model_preprocess_cfg(model),
            **kwargs,
        )

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        *,
        weights_path: str | os.PathLike | None = None,
        tokenizer_name: str = "ViT-B-32",
        device: str | torch.device = "cpu",
        preprocess_cfg: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        """An open_clip ``CLIP`` built from an architecture dict (``embed_dim``, ``vision_cfg``,
        ``text_cfg``), random unless ``weights_path`` names a local checkpoint. The tokenizer is
        open_clip's packaged BPE of ``tokenizer_name`` (offline for the OpenAI-style models)."""
        import open_clip

        model = open_clip.CLIP(**config)
        if weights_path is not None:
            open_clip.load_checkpoint(model, os.fspath(weights_path))
        model.to(device)
        return cls(
            model, open_clip.get_tokenizer(tokenizer_name), preprocess_cfg=preprocess_cfg, **kwargs
        )

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, device: str | torch.device = "cpu", **kwargs):
        """A config-built model saved as ``config.json`` ({"model_cfg", "preprocess_cfg",
        "tokenizer"}) + ``model.safetensors``, as the shapes world's CLIP (``world:clip``) is."""
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        return cls.from_config(
            config["model_cfg"],
            weights_path=folder / "model.safetensors",
            tokenizer_name=config.get("tokenizer", "ViT-B-32"),
            preprocess_cfg=config.get("preprocess_cfg"),
            device=device,
            **kwargs,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def pil_transform(self):
        """open_clip's own eval transform for PIL images with this scorer's settings."""
        import open_clip

        return open_clip.image_transform(
            self.image_size,
            is_train=False,
            mean=self.mean,
            std=self.std,
            resize_mode=self.resize_mode,
            interpolation=self.interpolation,
        )

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, h, w) normalised model input, on the images' device."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        images = _check_images(images)
        mode = (
            InterpolationMode.BICUBIC
            if self.interpolation == "bicubic"
            else InterpolationMode.BILINEAR
        )
        target_h, target_w = self.image_size
        if self.resize_mode == "squash":
            images = TF.resize(images, [target_h, target_w], interpolation=mode, antialias=True)
        else:  # shortest side to the target, then centre crop, as open_clip's eval transform
            height, width = images.shape[-2:]
            scale = max(target_h / height, target_w / width)
            new_size = [max(target_h, int(height * scale)), max(target_w, int(width * scale))]
            if target_h == target_w:  # torchvision's Resize(int): the long side is truncated
                short, long = sorted((height, width))
                new_long = int(target_h * long / short)
                new_size = [target_h, new_long] if height <= width else [new_long, target_h]
            images = TF.resize(images, new_size, interpolation=mode, antialias=True)
            images = TF.center_crop(images, [target_h, target_w])
        # PIL clamps bicubic overshoot when it rounds to uint8; do the same
        images = images.clamp(0.0, 1.0)
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    @torch.no_grad()
    def cosine(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """(B,) float32 cosine similarity of each image with its prompt, on the images' device."""
        images = _check_images(images)
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        if any(not isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be strings")
        device = self.device
        dtype = next(self.model.parameters()).dtype
        unique = list(dict.fromkeys(prompts))  # a GRPO group shares its prompt: encode it once
        text_features = []
        for start in range(0, len(unique), self.batch_size):
            tokens = self.tokenizer(unique[start : start + self.batch_size]).to(device)
            text_features.append(self.model.encode_text(tokens, normalize=True).float())
        text_features = torch.cat(text_features)  # (U, D)
        index = {prompt: i for i, prompt in enumerate(unique)}
        text_per_image = text_features[[index[p] for p in prompts]]  # (B, D)
        scores = []
        for start in range(0, images.shape[0], self.batch_size):
            pixels = self.preprocess(images[start : start + self.batch_size])
            pixels = pixels.to(device=device, dtype=dtype)
            image_features = self.model.encode_image(pixels, normalize=True).float()  # (b, D)
            text = text_per_image[start : start + self.batch_size]
            scores.append((image_features * text).sum(dim=-1))  # (b,)
        return torch.cat(scores).to(images.device)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError


class CLIPScorer(OpenCLIPScorer):
    """CLIPScore: ``w * max(cos(image, text), 0)`` in [0, w], w = 2.5 as in Hessel et al."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, w: float = 2.5, **kwargs: Any):
        super().__init__(model, tokenizer, **kwargs)
        if not w > 0:
            raise ValueError(f"CLIPScore weight w must be positive, got {w!r}")
        self.w = float(w)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """(B,) CLIPScore of each image with its prompt."""
        return self.w * self.cosine(images, prompts).clamp(min=0.0)


class PreferenceScorer(OpenCLIPScorer):
    """HPS-style preference: ``scale * cos(image, text)`` on a preference-tuned CLIP (HPSv2:
    ``from_pretrained("ViT-H-14", "HPS_v2_compressed.pt")``); scale 1.0 is HPSv2's convention."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, scale: float = 1.0, **kwargs: Any):
        super().__init__(model, tokenizer, **kwargs)
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        self.scale = float(scale)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """(B,) preference score of each image with its prompt."""
        return self.scale * self.cosine(images, prompts)


def make_clip_reward(
    scorer: OpenCLIPScorer,
) -> Callable[[torch.Tensor, Sequence[Sample]], list[float | None]]:
    """A registry reward ``fn(images, samples)`` scoring each image against ``sample["prompt"]``."""

    def reward(images: torch.Tensor, samples: Sequence[Sample]) -> list[float | None]:
        return scorer.score(images, _prompts(images, samples)).float().cpu().tolist()

    reward.__qualname__ = f"{type(scorer).__name__}_reward"
    return reward


class GlobalReward:
    """``w_clip * CLIPScore + w_pref * preference`` per image; a component left out counts 0.

    Call it as a registry reward; ``breakdown`` returns {"clip", "preference", "global"} lists
    (only the components given), and ``last_breakdown`` keeps the latest call's for logging.
    """

    def __init__(
        self,
        clip: CLIPScorer | None,
        preference: PreferenceScorer | None,
        w_clip: float = 1.0,
        w_pref: float = 1.0,
    ):
        if clip is None and preference is None:
            raise ValueError("build_global_reward needs a CLIPScorer, a PreferenceScorer, or both")
        self.clip, self.preference = clip, preference
        self.w_clip, self.w_pref = float(w_clip), float(w_pref)
        self.last_breakdown: dict[str, list[float]] = {}

    def breakdown(self, images: torch.Tensor, samples: Sequence[Sample]) -> dict[str, list[float]]:
        """Unweighted component scores and the weighted total, one float per image."""
        prompts = _prompts(images, samples)
        total = torch.zeros(len(prompts), dtype=torch.float32)
        parts: dict[str, list[float]] = {}
        if self.clip is not None:
            clip = self.clip.score(images, prompts).float().cpu()  # (B,)
            parts["clip"] = clip.tolist()
            total += self.w_clip * clip
        if self.preference is not None:
            pref = self.preference.score(images, prompts).float().cpu()  # (B,)
            parts["preference"] = pref.tolist()
            total += self.w_pref * pref
        parts["global"] = total.tolist()
        return parts

    def __call__(self, images: torch.Tensor, samples: Sequence[Sample]) -> list[float | None]:
        self.last_breakdown = self.breakdown(images, samples)
        return list(self.last_breakdown["global"])

    def __repr__(self) -> str:
        parts = []
        if self.clip is not None:
            parts.append(f"{self.w_clip} * clip")
        if self.preference is not None:
            parts.append(f"{self.w_pref} * preference")
        return f"GlobalReward({' + '.join(parts)})"


def build_global_reward(
    clip: CLIPScorer | None,
    preference: PreferenceScorer | None,
    w_clip: float = 1.0,
    w_pref: float = 1.0,
) -> GlobalReward:
    """R_global = w_clip * CLIPScore + w_pref * preference, as a registry reward."""
    return GlobalReward(clip, preference, w_clip, w_pref)


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"image rewards take a (B, 3, H, W) tensor in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floats in [0, 1], got {images.dtype}; divide uint8 by 255")
    return images.float()  # preprocessing in float32: half-precision bicubic is not everywhere


def _prompts(images: torch.Tensor, samples: Sequence[Sample]) -> list[str]:
    if len(samples) != len(images):
        raise ValueError(f"{len(images)} images but {len(samples)} samples")
    try:
        return [sample["prompt"] for sample in samples]
    except KeyError:
        raise KeyError("global rewards read sample['prompt']; a sample has no 'prompt'") from None
