"""The hierarchical reward built from a run's config: its levels, their weights and their models.

A recipe gives the whole reward in one section, ``hierarchical``, the one place for its weights::

    hierarchical:
      weights: {global: 1.0, subject: 1.0, relation: 1.0}   # R = sum of weight * level
      terms:                                                # weights inside a level (default 1)
        global: {w_clip: 1.0, w_pref: 1.0}
        subject: {w_dino: 1.0, w_vlm: 1.0}
        relation: {w_vlm: 1.0, w_geometry: 1.0}
      models:
        clip: {model: ViT-H-14, path: /ckpt/open_clip_vit_h14.bin}
        preference: {model: ViT-H-14, path: /ckpt/HPS_v2_compressed.pt}
        detector: {kind: grounding_dino, path: IDEA-Research/grounding-dino-base,
                   box_threshold: 0.35, text_threshold: 0.25}
        dino: {path: facebook/dinov2-base}
        vlm: {path: Qwen/Qwen2.5-VL-7B-Instruct}

``build_hierarchical_reward`` builds only the levels that ``weights`` names and only the models
those levels use, each once (the VLM is shared by the subject and relation levels), and returns a
``HierarchicalReward`` whose levels a trainer logs as ``hier_global`` / ``hier_subject`` /
``hier_relation``. Nothing is registered: the registry holds the rewards that import defines. A
model whose entry is missing is left out and its term dropped (each level documents how); a level
left with no model at all is an error that names the missing entries. ``judge: world`` is the
shapes world's exact checker instead (``rewards/world.py``: no model, levels ``world_global``,
...).

The detector is GroundingDINO (``kind: grounding_dino``; options ``box_threshold``,
``text_threshold``) or OWLv2 (``kind: owlv2``; option ``threshold``); without ``kind`` it is read
from the checkpoint's config ``model_type`` (``rewards/hierarchical_detectors.py``).

``path: tiny-random`` builds a tiny random model of the same architecture offline (for the VLM
also ``tiny-random:qwen2_vl``; the detector is OWLv2 unless ``kind: grounding_dino``): the CPU
recipes and tests use it to exercise the real code paths without any checkpoint. ``clip: {path: world:clip}`` is the shapes world's trained CLIP
(``vrl pretrain world-clip``, committed; another folder it wrote: ``world:clip:<folder>``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .hierarchical import LEVELS, HierarchicalReward, LevelFn
from .hierarchical_detectors import check_detector_entry

SECTION = "hierarchical"
"""The config section, named in error messages."""
JUDGES = ("models", "world")
# Models each level can use: global clip, preference; subject detector, dino, vlm; relation vlm,
# detector. It needs at least one of _REQUIRED (the detector alone cannot judge a subject: it
# only finds the crop that DINOv2 and the VLM look at).
_REQUIRED = {
    "global": ("clip", "preference"),
    "subject": ("dino", "vlm"),
    "relation": ("vlm", "detector"),
}
MODELS = ("clip", "preference", "detector", "dino", "vlm")
TERMS = {
    "global": ("w_clip", "w_pref"),
    "subject": ("w_dino", "w_vlm"),
    "relation": ("w_vlm", "w_geometry"),
}
"""The weights inside each level (keyword arguments of its reward; default 1 each)."""
TINY = "tiny-random"
WORLD_CLIP = "world:clip"

# Architectures of the tiny random backends (`path: tiny-random`): one layer each, built in ~1 s.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_DINO = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 8,
    "image_size": 32,
}


def check_hierarchical(
    judge: str = "models",
    weights: Mapping[str, float] | None = None,
    terms: Mapping[str, Mapping[str, float]] | None = None,
    models: Mapping[str, Any] | None = None,
) -> None:
    """Validate the ``hierarchical`` section without loading anything; errors name the field."""
    weights, terms, models = dict(weights or {}), dict(terms or {}), dict(models or {})
    if judge not in JUDGES:
        raise ValueError(f"{SECTION}.judge: {judge!r} is not one of {', '.join(JUDGES)}")
    for level in weights:
        if level not in LEVELS:
            raise ValueError(
                f"{SECTION}.weights.{level}: unknown level; valid: {', '.join(LEVELS)}"
            )
    if not weights and (terms or models):
        given = f"{SECTION}.{'terms' if terms else 'models'}"
        raise ValueError(f"{given} is given but {SECTION}.weights names no level to train on")
    if judge == "world":
        for name, value in (("terms", terms), ("models", models)):
            if value:
                raise ValueError(
                    f"{SECTION}.{name}: judge=world reads the images with the shapes world's "
                    "exact checker, which has no models and no terms; leave it out"
                )
        return
    for level, level_terms in terms.items():
        if level not in LEVELS:
            raise ValueError(f"{SECTION}.terms.{level}: unknown level; valid: {', '.join(LEVELS)}")
        if not isinstance(level_terms, Mapping):
            raise ValueError(
                f"{SECTION}.terms.{level}: give a mapping, e.g. {{{TERMS[level][0]}: 1.0}}"
            )
        for term in level_terms:
            if term not in TERMS[level]:
                raise ValueError(
                    f"{SECTION}.terms.{level}.{term}: unknown term; valid: "
                    + ", ".join(TERMS[level])
                )
    for name, entry in models.items():
        if name not in MODELS:
            raise ValueError(f"{SECTION}.models.{name}: unknown model; valid: {', '.join(MODELS)}")
        if entry and not (isinstance(entry, Mapping) and entry.get("path")):
            raise ValueError(
                f"{SECTION}.models.{name}: give a mapping with a path (or 'tiny-random')"
            )
        if entry and name == "detector":
            check_detector_entry(entry, f"{SECTION}.models.detector")
    for level in weights:
        if not any(models.get(name) for name in _REQUIRED[level]):
            needed = " or ".join(f"{SECTION}.models.{n}" for n in _REQUIRED[level])
            raise ValueError(f"the {level} level ({SECTION}.weights.{level}) needs {needed}")


def build_hierarchical_reward(
    *,
    judge: str = "models",
    weights: Mapping[str, float] | None = None,
    terms: Mapping[str, Mapping[str, float]] | None = None,
    models: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> HierarchicalReward | None:
    """The hierarchical reward of a ``hierarchical`` section (None when ``weights`` names no
    level): the levels ``weights`` names, weighted by it, on their models, each built once."""
    check_hierarchical(judge, weights, terms, models)
    if not weights:
        return None
    if judge == "world":
        from .world import make_world_reward

        return make_world_reward(weights)
    built: dict[str, Any] = {}
    levels = build_level_rewards(models or {}, weights, terms=terms, device=device, built=built)
    reward = HierarchicalReward(
        levels.get("global"), levels.get("subject"), levels.get("relation"), weights
    )
    reward.models = built
    return reward


def build_level_rewards(
    models: Mapping[str, Any],
    levels: Iterable[str],
    *,
    terms: Mapping[str, Mapping[str, float]] | None = None,
    device: str | torch.device = "cpu",
    built: dict[str, Any] | None = None,
) -> dict[str, LevelFn]:
    """{level: reward fn} for the requested levels on ``models`` (the ``hierarchical.models``
    entries); each model is built once, shared by the levels and kept in ``built``."""
    from .hierarchical_global import build_global_reward
    from .hierarchical_relation import RelationReward
    from .hierarchical_subject import SubjectReward

    levels = list(levels)
    terms = dict(terms or {})
    check_hierarchical("models", dict.fromkeys(levels, 1.0), terms, models)
    built = {} if built is None else built

    def model(name: str):
        if not models.get(name):
            return None
        if name not in built:
            built[name] = _build_model(name, dict(models[name]), device)
        return built[name]

    out: dict[str, LevelFn] = {}
    for level in levels:
        w = dict(terms.get(level) or {})
        if level == "global":
            out[level] = build_global_reward(model("clip"), model("preference"), **w)
        elif level == "subject":
            out[level] = SubjectReward(model("detector"), model("dino"), model("vlm"), **w)
        else:
            out[level] = RelationReward(model("vlm"), model("detector"), **w)
    return out


def _build_model(name: str, entry: dict[str, Any], device: str | torch.device):
    """One backend from its config entry: {path: ..., model: ..., other options}."""
    path = entry.pop("path", None)
    if not path:
        raise ValueError(f"{SECTION}.models.{name}: give a path (or 'tiny-random')")
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
            raise ValueError(f"{SECTION}.models.{name}: name the open_clip architecture in 'model'")
        return cls.from_pretrained(arch, path, device=device, **entry)
    if name == "detector":
        from .hierarchical_detectors import load_detector

        return load_detector(path, device=device, field=f"{SECTION}.models.detector", **entry)
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
    raise ValueError(f"{SECTION}.models: unknown model {name!r}")
