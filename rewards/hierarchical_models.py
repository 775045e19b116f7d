"""The hierarchical reward's levels built from a run's config, with each model loaded once.

A recipe names the levels it trains on among its rewards and says where their models are::

    grpo:
      rewards: {hier_global: 1.0, hier_subject: 1.0, hier_relation: 1.0}
    reward_models:
      clip: {model: ViT-H-14, path: /ckpt/open_clip_vit_h14.bin}
      preference: {model: ViT-H-14, path: /ckpt/HPS_v2_compressed.pt}
      detector: {path: google/owlv2-base-patch16-ensemble}
      dino: {path: facebook/dinov2-base}
      vlm: {path: Qwen/Qwen2.5-VL-7B-Instruct}
      weights: {global: {w_clip: 1.0, w_pref: 1.0}, subject: {w_dino: 1.0, w_vlm: 1.0}}

``register_level_rewards`` builds only the levels that the rewards name and only the models
those levels use (the VLM once, shared by the subject and relation levels), then registers them
under ``hier_global`` / ``hier_subject`` / ``hier_relation`` so that ``WeightedReward`` weights
them and the trainer logs each level on its own. A model whose entry is missing is left out and
its term dropped (each level documents how); a level left with no model at all is an error that
names the missing entries.

``path: tiny-random`` builds a tiny random model of the same architecture offline (for the VLM
also ``tiny-random:qwen2_vl``): the CPU recipes and tests use it to exercise the real code paths
without any checkpoint. ``clip: {path: world:clip}`` is the shapes world's trained CLIP
(``vrl pretrain world-clip``, committed; another folder it wrote: ``world:clip:<folder>``), the
global level of the world's HiCoGen half.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .hierarchical import LevelFn
from .registry import register_reward, unregister_reward

LEVEL_REWARDS = {"hier_global": "global", "hier_subject": "subject", "hier_relation": "relation"}
"""Registry name -> level of the hierarchical reward."""

# Models each level can use; it needs at least one of _REQUIRED (the detector alone cannot judge
# a subject: it only finds the crop that DINOv2 and the VLM look at).
_LEVEL_MODELS = {
    "global": ("clip", "preference"),
    "subject": ("detector", "dino", "vlm"),
    "relation": ("vlm", "detector"),
}
_REQUIRED = {
    "global": ("clip", "preference"),
    "subject": ("dino", "vlm"),
    "relation": ("vlm", "detector"),
}
_KNOWN_KEYS = {"clip", "preference", "detector", "dino", "vlm", "weights"}
TINY = "tiny-random"
WORLD_CLIP = "world:clip"

# Architectures of the tiny random backends (`path: tiny-random`): one layer each, built in ~1 s.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_OWL_VISION = {
    "image_size": 64,
    "patch_size": 16,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}
TINY_OWL_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "max_position_embeddings": 16,
}
TINY_DINO = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 8,
    "image_size": 32,
}


def levels_named(reward_names: Iterable[str]) -> list[str]:
    """The hierarchical levels among a config's reward names, in level order."""
    wanted = {LEVEL_REWARDS[n] for n in reward_names if n in LEVEL_REWARDS}
    return [level for level in ("global", "subject", "relation") if level in wanted]


def check_spec(spec: Mapping[str, Any] | None, levels: Iterable[str]) -> dict[str, Any]:
    """Validate a ``reward_models`` mapping for the given levels without loading anything."""
    spec = dict(spec or {})
    unknown = set(spec) - _KNOWN_KEYS
    if unknown:
        raise ValueError(
            f"reward_models: unknown entries {sorted(unknown)}; valid: {sorted(_KNOWN_KEYS)}"
        )
    bad = set(spec.get("weights") or {}) - set(_LEVEL_MODELS)
    if bad:
        raise ValueError(f"reward_models.weights: unknown levels {sorted(bad)}")
    for level in levels:
        if not any(spec.get(name) for name in _REQUIRED[level]):
            needed = " or ".join(f"reward_models.{n}" for n in _REQUIRED[level])
            raise ValueError(f"the {level} level (hier_{level}) needs {needed}")
    for name, entry in spec.items():
        if name != "weights" and entry and not (isinstance(entry, Mapping) and entry.get("path")):
            raise ValueError(f"reward_models.{name}: give a mapping with a path (or 'tiny-random')")
    return spec


def build_level_rewards(
    spec: Mapping[str, Any], levels: Iterable[str], *, device: str | torch.device = "cpu"
) -> dict[str, LevelFn]:
    """{level: reward fn} for the requested levels; each model is built once and shared."""
    from .hierarchical_global import build_global_reward
    from .hierarchical_relation import RelationReward
    from .hierarchical_subject import SubjectReward

    levels = list(levels)
    spec = check_spec(spec, levels)
    weights = dict(spec.get("weights") or {})

    models: dict[str, Any] = {}

    def model(name: str):
        if not spec.get(name):
            return None
        if name not in models:
            models[name] = _build_model(name, dict(spec[name]), device)
        return models[name]

    out: dict[str, LevelFn] = {}
    for level in levels:
        w = dict(weights.get(level) or {})
        if level == "global":
            out[level] = build_global_reward(model("clip"), model("preference"), **w)
        elif level == "subject":
            out[level] = SubjectReward(model("detector"), model("dino"), model("vlm"), **w)
        else:
            out[level] = RelationReward(model("vlm"), model("detector"), **w)
    return out


def register_level_rewards(
    spec: Mapping[str, Any], reward_names: Iterable[str], *, device: str | torch.device = "cpu"
) -> dict[str, LevelFn]:
    """Build the levels the config's rewards name and (re)register them as ``hier_<level>``.

    A name registered by an earlier run in the same process is replaced: the registry holds the
    current run's models. Returns {registry name: reward fn}.
    """
    from .registry import available_rewards

    built = build_level_rewards(spec, levels_named(reward_names), device=device)
    registered = {}
    for level, fn in built.items():
        name = f"hier_{level}"
        if name in available_rewards():
            unregister_reward(name)
        registered[name] = register_reward(name, modality="image")(fn)
    return registered


def _build_model(name: str, entry: dict[str, Any], device: str | torch.device):
    """One backend from its config entry: {path: ..., model: ..., other options}."""
    path = entry.pop("path", None)
    if not path:
        raise ValueError(f"reward_models.{name}: give a path (or 'tiny-random')")
    tiny = path == TINY
    if name in ("clip", "preference"):
        from .hierarchical_global import CLIPScorer, PreferenceScorer

        cls = CLIPScorer if name == "clip" else PreferenceScorer
        arch = entry.pop("model", None)
        if name == "clip" and (path == WORLD_CLIP or path.startswith(WORLD_CLIP + ":")):
            from vrl.models.paths import world_weights_path

            folder = path.removeprefix(WORLD_CLIP).removeprefix(":") or world_weights_path("clip")
            return CLIPScorer.from_folder(folder, device=device, **entry)
        if tiny:
            return cls.from_config(TINY_CLIP, device=device, **entry)
        if not arch:
            raise ValueError(f"reward_models.{name}: name the open_clip architecture in 'model'")
        return cls.from_pretrained(arch, path, device=device, **entry)
    if name == "detector":
        from .hierarchical_subject import OpenVocabDetector

        detector = (
            OpenVocabDetector.from_config(TINY_OWL_VISION, TINY_OWL_TEXT, **entry)
            if tiny
            else OpenVocabDetector.from_pretrained(path, **entry)
        )
        detector.model.to(device)
        return detector
    if name == "dino":
        from .hierarchical_subject import DinoSimilarity

        dino = (
            DinoSimilarity.from_config(**{**TINY_DINO, **entry})
            if tiny
            else DinoSimilarity.from_pretrained(path, **entry)
        )
        dino.model.to(device)
        return dino
    if name == "vlm":
        from vrl.models.paths import resolve_model_path
        from vrl.models.vlm import VLMAdapter

        from .hierarchical_subject import VLMYesProbability

        batch_size = entry.pop("batch_size", None)
        adapter = VLMAdapter.from_pretrained(
            resolve_model_path(f"{TINY}:qwen2_5_vl" if tiny else path), **entry
        )
        adapter.model.to(device)
        return VLMYesProbability(adapter, batch_size=batch_size)
    raise ValueError(f"reward_models: unknown model {name!r}")
