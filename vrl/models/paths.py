"""Model names to folders, and dtype names to dtypes: the one resolver every layer uses.

A model path in a recipe, a CLI flag or the demo is one of

- a folder or hub id: passed through unchanged, so real checkpoints load as they always did;
- ``tiny-random:<family>``: a tiny random model of a real architecture, built offline once into
  ``$VRL_CACHE/tiny`` (VLMs: ``qwen2_5_vl``, ``qwen2_vl``; the text-only LM ``qwen2``; pipelines: ``sd3``, ``flux``, ``flux_kontext``;
  detectors: ``grounding_dino``);
- ``world:<name>``: a committed shapes-world checkpoint, ``vrl/world/weights/world-<name>``
  (``world:t2i``, ``world:t2i-shapes``, ``world:kontext``, ``world:vlm``, ``world:vlm-rec``,
  ``world:clip``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from vrl.models.build_cache import default_cache_root

TINY_PREFIX = "tiny-random:"
WORLD_PREFIX = "world:"
WORLD_WEIGHTS = Path(__file__).resolve().parent.parent / "world" / "weights"
"""The committed shapes-world checkpoints (written by `vrl pretrain`)."""


def cache_root() -> Path:
    """Where vrl keeps things it builds once (tiny models): $VRL_CACHE or ~/.cache/vrl."""
    return default_cache_root()


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on a CUDA device that supports it, float32 elsewhere."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def world_weights_path(name: str) -> Path:
    """The committed shapes-world checkpoint folder ``vrl/world/weights/world-<name>``."""
    folder = WORLD_WEIGHTS / f"world-{name}"
    if not folder.is_dir():
        found = sorted(p.name.removeprefix("world-") for p in WORLD_WEIGHTS.glob("world-*"))
        raise FileNotFoundError(
            f"no shapes-world checkpoint {WORLD_PREFIX}{name} ({folder}); committed: "
            f"{', '.join(WORLD_PREFIX + n for n in found) or 'none'}"
        )
    return folder


def resolve_model_path(path: str, seed: int = 0) -> str:
    """A VLM folder or hub id passes through; ``tiny-random:<family>`` is built offline once
    (``tiny-random:qwen2``: the text-only tiny LM); ``world:vlm`` is the committed shapes-world
    VLM."""
    if path.startswith(WORLD_PREFIX):
        return str(world_weights_path(path[len(WORLD_PREFIX) :]))
    if not path.startswith(TINY_PREFIX):
        return path
    if path == f"{TINY_PREFIX}qwen2":
        from vrl.models.tiny_lm import tiny_lm_path

        return str(tiny_lm_path(cache_root() / "tiny", seed=seed))
    from vrl.models.tiny import tiny_vlm_path

    return str(tiny_vlm_path(path[len(TINY_PREFIX) :], cache_root() / "tiny"))


def resolve_pipeline_path(path: str, seed: int = 0) -> str:
    """A diffusers pipeline folder or hub id passes through; ``tiny-random:<sd3|flux|flux_kontext>`` is built
    once; ``world:t2i`` (and ``world:t2i-shapes``) are the committed shapes-world models."""
    if path.startswith(WORLD_PREFIX):
        return str(world_weights_path(path[len(WORLD_PREFIX) :]))
    if not path.startswith(TINY_PREFIX):
        return path
    from vrl.models.tiny_diffusion import tiny_pipeline_path

    return str(tiny_pipeline_path(path[len(TINY_PREFIX) :], cache_root() / "tiny", seed=seed))


def resolve_detector_path(path: str, seed: int = 0) -> str:
    """A detector folder or hub id passes through; ``tiny-random:grounding_dino`` is built once."""
    if not path.startswith(TINY_PREFIX):
        return path
    from vrl.models.tiny_detector import tiny_detector_path

    return str(tiny_detector_path(path[len(TINY_PREFIX) :], cache_root() / "tiny", seed=seed))
