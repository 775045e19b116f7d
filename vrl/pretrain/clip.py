"""`vrl pretrain world-clip`: a tiny open_clip CLIP trained contrastively on the shapes world.

    vrl pretrain world-clip --out runs/world-clip --seed 0 --threads 2 --extra steps=1500

It is the global level of the hierarchical world reward: ``load_world_clip()`` returns a
``vrl.rewards.hierarchical_global.CLIPScorer`` built by ``CLIPScorer.from_config`` (the way any
config-built open_clip model loads) from ``config.json`` + ``model.safetensors``
(``open_clip.load_checkpoint`` reads safetensors).

The recipe, top to bottom:

1. Data: a pool of train-split scenes (1-3 subjects, half on a named background), each rendered
   once at 32 or 64 px (the text-to-image model's canvas and the next one) and resized to the
   model's 64 px by the scorer's own ``preprocess``; its captions are ``vrl.world.captions``.
2. Hard negatives, NegCLIP-style: for each scene, the same phrasing of the scene with one
   subject's colour changed, one subject's shape changed, or one relation inverted. Without them
   a contrastive model learns a bag of words and cannot tell "red circle, blue square" from
   "blue circle, red square".
3. Loss: symmetric InfoNCE; image -> text runs over the batch's captions and all their hard
   negatives (one of each kind per image),
   text -> image over the batch's images. Captions equal to an image's own are not negatives.
4. Held-out quality on test-split scenes (the (colour, shape) pairs never seen in training):
   how often the true caption outranks each kind of hard negative and all of them at once, and
   the CLIPScore gap between the true and the altered captions.

Simplifications: no outlines (sub-attributes), no augmentation, a fixed pool (no fresh scenes per
step). open_clip's packaged "ViT-B-32" BPE tokenizer is used as it is (offline); its 49,408-row
embedding is most of the parameters, which is why the text tower is narrow.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vrl.hicogen.scene import Relation, Scene
from vrl.models.paths import WORLD_WEIGHTS
from vrl.pretrain import machine_description

DEFAULTS: dict[str, Any] = {
    "steps": 1500,  # optimizer steps
    "batch_size": 64,  # images per step (texts: 4x, with three hard negatives each)
    "lr": 1e-3,
    "warmup": 100,
    "pool": 12000,  # training scenes, rendered once
    "held_out": 300,  # test-split scenes for the quality figures (per canvas)
    "max_subjects": 3,
    "canvases": "32,64",  # render sizes drawn per scene
    "eval_every": 500,  # steps between held-out evaluations (0: only at the end)
}

CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 96, "layers": 3, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
}
"""open_clip.CLIP(**CONFIG): a 32 px ViT (64 patches of 4 px, so a shape's silhouette spans
2-3 patches) and a narrow text transformer."""

PREPROCESS: dict[str, Any] = {"mean": (200 / 255,) * 3, "std": (0.3,) * 3}
"""Input normalisation: the world's default light-grey background is the mean, so an empty
canvas is zero input and the shapes are the signal (with CLIP's own statistics the grey
background was a large constant that every patch carried)."""

TOKENIZER = "ViT-B-32"
"""open_clip's packaged BPE tokenizer (context 77); it needs no download."""

NEGATIVE_KINDS: tuple[str, ...] = ("colour", "shape", "relation")

HELD_OUT_SEED = 10_000
WEIGHTS_DIR = WORLD_WEIGHTS / "world-clip"
"""The committed checkpoint: ``config.json`` + ``model.safetensors`` + a model card."""


# ---------------------------------------------------------------------- hard negatives


def _with_subject(scene: Scene, index: int, **changes: Any) -> Scene:
    subjects = list(scene.subjects)
    subjects[index] = dataclasses.replace(subjects[index], **changes)
    return dataclasses.replace(scene, subjects=tuple(subjects))


def _descriptions(scene: Scene) -> list[tuple[str, ...]]:
    return [(*s.attributes, s.name) for s in scene.subjects]


def altered_scene(
    scene: Scene, kind: str, rng: random.Random, avoid: frozenset = frozenset()
) -> Scene | None:
    """The scene with one fact made false: a subject's colour ("colour") or shape ("shape")
    changed, or a relation inverted ("relation"); None when the scene offers no such change
    (no relations) or the change would duplicate another subject's description.

    ``avoid`` lists (colour, shape) pairs a change must not create. Training passes the held-out
    pairs: negatives made of them would teach "a red triangle is always a wrong caption", and
    every test-split caption holds one.
    """
    from vrl.world.vocabulary import COLOURS, INVERSE_RELATION, SHAPES

    if kind == "relation":
        if not scene.relations:
            return None
        i = rng.randrange(len(scene.relations))
        relations = list(scene.relations)
        r = relations[i]
        relations[i] = Relation(r.subject, INVERSE_RELATION[r.predicate], r.object)
        return dataclasses.replace(scene, relations=tuple(relations))
    if kind not in ("colour", "shape"):
        raise ValueError(f"unknown negative kind {kind!r}; valid: {', '.join(NEGATIVE_KINDS)}")
    taken = set(_descriptions(scene))
    options = []
    for i, subject in enumerate(scene.subjects):
        size, colour = subject.attributes
        if kind == "colour":
            changed = [((size, c), subject.name) for c in COLOURS if c != colour]
        else:
            changed = [(subject.attributes, s) for s in SHAPES if s != subject.name]
        options += [
            (i, attrs, name)
            for attrs, name in changed
            if (*attrs, name) not in taken and (attrs[1], name) not in avoid
        ]
    if not options:
        return None
    i, attributes, name = rng.choice(options)
    return _with_subject(scene, i, attributes=attributes, name=name)


def phrasing(scene: Scene, index: int) -> str:
    """The ``index``-th of ``captions(scene)`` (the last one if there are fewer)."""
    from vrl.world import captions

    texts = captions(scene)
    return texts[min(index, len(texts) - 1)]


# ---------------------------------------------------------------------- data


@dataclasses.dataclass
class WorldPool:
    """Scenes with one render each, as the model's (N, 3, 64, 64) uint8 input before normalising."""

    scenes: list[Scene]
    pixels: torch.Tensor  # (N, 3, S, S) uint8
    canvases: list[int]


def render_pool(
    scorer, n: int, seed: int, split: str, canvases: list[int], max_subjects: int
) -> WorldPool:
    """``n`` scenes of ``split``, each rendered at a canvas drawn from ``canvases`` and resized
    to the model's input by the scorer's ``preprocess`` path (kept as uint8 to save memory)."""
    import numpy as np

    from vrl.world import render, sample_scene

    rng = random.Random(f"world-clip/{split}/{seed}")
    scenes, images, sizes = [], [], []
    for i in range(n):
        background = "random" if rng.random() < 0.5 else None
        scene = sample_scene(rng, max_subjects=max_subjects, background=background, split=split)
        canvas = canvases[i % len(canvases)]
        image = torch.from_numpy(np.array(render(scene, canvas, seed=i))).permute(2, 0, 1)
        scenes.append(scene)
        images.append(resize_for(scorer, image[None].float() / 255.0))
        sizes.append(canvas)
    pixels = (torch.cat(images) * 255.0).round().to(torch.uint8)
    return WorldPool(scenes, pixels, sizes)


def resize_for(scorer, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> the scorer's input size, still in [0, 1] (not normalised)."""
    mean = torch.tensor(scorer.mean).view(1, 3, 1, 1)
    std = torch.tensor(scorer.std).view(1, 3, 1, 1)
    return scorer.preprocess(images) * std + mean


def normalise(scorer, pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pool pixels -> normalised model input."""
    mean = torch.tensor(scorer.mean).view(1, 3, 1, 1)
    std = torch.tensor(scorer.std).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


# ---------------------------------------------------------------------- model


def build_scorer(seed: int, weights_path: str | Path | None = None):
    """A CLIPScorer on ``open_clip.CLIP(**CONFIG)``: random (seeded) or from a weights file."""
    from vrl.rewards.hierarchical_global import CLIPScorer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPScorer.from_config(
            CONFIG, weights_path=weights_path, tokenizer_name=TOKENIZER, preprocess_cfg=PREPROCESS
        )


def load_world_clip(path: str | Path | None = None, device: str | torch.device = "cpu", **kwargs):
    """The trained world CLIP as a ``CLIPScorer`` (default: the committed checkpoint)."""
    from vrl.rewards.hierarchical_global import CLIPScorer

    return CLIPScorer.from_folder(
        path if path is not None else WEIGHTS_DIR, device=device, **kwargs
    )


def encode_text(model, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens, normalize=True)`` on tokens cut after the batch's longest
    caption: the mask is causal and the feature is read at the end token, so the padding that
    follows changes nothing, and training skips ~2/3 of the text positions."""
    length = int((tokens != 0).sum(dim=1).max())
    tokens = tokens[:, :length]  # (B, L)
    x = model.token_embedding(tokens) + model.positional_embedding[:length]  # (B, L, W)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]  # (B, W) at the end token
    projection = model.text_projection
    x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return F.normalize(x, dim=-1)  # (B, D)


# ---------------------------------------------------------------------- evaluation


@torch.no_grad()
def held_out_quality(scorer, pool: WorldPool, seed: int = 0) -> dict[str, Any]:
    """Ranking of the true caption (``scene.prompt()``) against each kind of hard negative.

    Per canvas: "vs_<kind>" = fraction of scenes where the true caption's cosine beats the
    altered one (chance 0.5); "all" = fraction where it beats every negative the scene has
    (chance 1 / (1 + #negatives)); "clipscore_gap" = mean CLIPScore(true) - CLIPScore(altered).
    """
    rng = random.Random(f"world-clip/negatives/{seed}")
    images = normalise(scorer, pool.pixels)
    model = scorer.model.eval()
    image_features = torch.cat(
        [
            model.encode_image(images[i : i + 128], normalize=True)
            for i in range(0, len(images), 128)
        ]
    )  # (N, D)
    per_scene: list[dict[str, str]] = []
    for scene in pool.scenes:
        texts = {"true": scene.prompt()}
        for kind in NEGATIVE_KINDS:
            altered = altered_scene(scene, kind, rng)
            if altered is not None:
                texts[kind] = altered.prompt()
        per_scene.append(texts)
    flat = [t for texts in per_scene for t in texts.values()]
    text_features = torch.cat(
        [encode_text(model, scorer.tokenizer(flat[i : i + 256])) for i in range(0, len(flat), 256)]
    )  # (T, D)
    rows, start = [], 0
    for texts, feature, canvas in zip(per_scene, image_features, pool.canvases, strict=True):
        cosines = (text_features[start : start + len(texts)] @ feature).tolist()
        start += len(texts)
        rows.append((canvas, dict(zip(texts, cosines, strict=True))))
    w = getattr(scorer, "w", 2.5)
    result: dict[str, Any] = {}
    for canvas in sorted(set(pool.canvases)):
        mine = [r for c, r in rows if c == canvas]
        figures: dict[str, float] = {"n": len(mine)}
        gaps = []
        for kind in NEGATIVE_KINDS:
            pairs = [(r["true"], r[kind]) for r in mine if kind in r]
            figures[f"vs_{kind}"] = sum(t > a for t, a in pairs) / max(len(pairs), 1)
            gaps += [w * (max(t, 0.0) - max(a, 0.0)) for t, a in pairs]
        figures["all"] = sum(all(r["true"] > v for k, v in r.items() if k != "true") for r in mine)
        figures["all"] /= max(len(mine), 1)
        figures["clipscore_true"] = sum(w * max(r["true"], 0.0) for r in mine) / max(len(mine), 1)
        figures["clipscore_gap"] = sum(gaps) / max(len(gaps), 1)
        result[f"{canvas}px"] = figures
    return result


# ---------------------------------------------------------------------- training


def train_clip(
    scorer, pool: WorldPool, settings: dict[str, Any], seed: int, evaluate=None, log=print
) -> list[dict[str, Any]]:
    """Contrastive training of ``scorer.model`` on the pool, with hard negatives in every batch."""
    model = scorer.model.train().requires_grad_(True)
    steps, batch_size = settings["steps"], settings["batch_size"]
    # The 49,408-row token table gets sparse gradients and its own optimizer: world captions use
    # ~60 of its rows, and a dense AdamW update of all of them was a fifth of each step.
    model.token_embedding.sparse = True
    table = model.token_embedding.weight
    rest = [(n, p) for n, p in model.named_parameters() if p is not table]
    decay = [p for n, p in rest if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in rest if not (p.ndim >= 2 and "embedding" not in n)]
    optimizers = [
        torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
            lr=settings["lr"],
            betas=(0.9, 0.98),
        ),
        torch.optim.SparseAdam([table], lr=settings["lr"], betas=(0.9, 0.98)),
    ]
    warmup = max(1, settings["warmup"])

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine to 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lr_factor) for o in optimizers]
    from vrl.world import HELD_OUT_PAIRS

    avoid = frozenset(HELD_OUT_PAIRS)
    rng = random.Random(f"world-clip/train/{seed}")
    token_cache: dict[str, torch.Tensor] = {}  # open_clip's BPE is pure Python: tokenise once

    def tokenize(texts: list[str]) -> torch.Tensor:
        new = [t for t in dict.fromkeys(texts) if t not in token_cache]
        if new:
            token_cache.update(zip(new, scorer.tokenizer(new), strict=True))
        return torch.stack([token_cache[t] for t in texts])

    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, Any]] = []
    t0, losses = time.perf_counter(), []
    eval_every = settings["eval_every"] or steps
    for step in range(steps):
        model.train()
        index = torch.randint(len(pool.scenes), (batch_size,), generator=generator).tolist()
        positives, negatives = [], []
        for i in index:
            scene = pool.scenes[i]
            k = rng.randrange(5)  # one phrasing, shared by the caption and its negatives
            positives.append(phrasing(scene, k))
            for kind in NEGATIVE_KINDS:  # every kind, every image: the signal for each fact
                altered = altered_scene(scene, kind, rng, avoid)
                negatives.append(phrasing(altered, k) if altered is not None else positives[-1])
        images = normalise(scorer, pool.pixels[index])  # (B, 3, S, S)
        image_features = model.encode_image(images, normalize=True)  # (B, D)
        texts = positives + negatives
        text_features = encode_text(model, tokenize(texts))  # (B + 3B, D)
        scale = model.logit_scale.exp()
        logits = scale * image_features @ text_features.T  # (B, 4B)
        # a caption equal to the image's own (another scene, same words) is not a negative,
        # nor is a "negative" that no change could be made for
        same = torch.tensor([[t == p for t in texts] for p in positives])  # (B, 4B)
        same[torch.arange(batch_size), torch.arange(batch_size)] = False
        logits = logits.masked_fill(same, float("-inf"))
        target = torch.arange(batch_size)
        loss_i2t = F.cross_entropy(logits, target)
        loss_t2i = F.cross_entropy(logits[:, :batch_size].T, target)
        loss = (loss_i2t + loss_t2i) / 2
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in rest], 1.0)
        for optimizer, scheduler in zip(optimizers, schedulers, strict=True):
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        done = step + 1
        if done % eval_every == 0 or done == steps:
            record = {
                "step": done,
                "loss": sum(losses) / len(losses),
                "minutes": (time.perf_counter() - t0) / 60,
            }
            losses = []
            if evaluate is not None:
                record["held_out"] = evaluate(done)
            history.append(record)
            log(json.dumps(record))
    model.token_embedding.sparse = False
    model.eval().requires_grad_(False)
    return history


# ---------------------------------------------------------------------- the command


def save_world_clip(scorer, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """``model.safetensors`` + ``config.json`` ({"model_cfg", "preprocess_cfg", "tokenizer",
    ...extra})."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in scorer.model.state_dict().items()}
    save_file(state, folder / "model.safetensors")
    config = {
        "model_cfg": CONFIG,
        "preprocess_cfg": {"size": CONFIG["vision_cfg"]["image_size"], **PREPROCESS},
        "tokenizer": TOKENIZER,
        **(extra or {}),
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def pretrain(out: str | Path, seed: int = 0, log=print, **overrides: Any) -> dict[str, Any]:
    """Render the pools, train, evaluate and save a world CLIP in ``out``; returns the summary."""
    settings = {**DEFAULTS, **overrides}
    out = Path(out)
    canvases = [int(c) for c in str(settings["canvases"]).split(",")]
    scorer = build_scorer(seed)
    parameters = sum(p.numel() for p in scorer.model.parameters())
    t0 = time.perf_counter()
    pool = render_pool(scorer, settings["pool"], seed, "train", canvases, settings["max_subjects"])
    held_out = render_pool(
        scorer, settings["held_out"] * len(canvases), HELD_OUT_SEED, "test", canvases,
        settings["max_subjects"],
    )  # fmt: skip
    # train-split scenes the pool does not hold: how much of the held-out gap is composition
    seen = render_pool(
        scorer, settings["held_out"] * len(canvases), HELD_OUT_SEED, "train", canvases,
        settings["max_subjects"],
    )  # fmt: skip
    data_minutes = (time.perf_counter() - t0) / 60
    log(f"[world-clip] {parameters / 1e6:.2f}M parameters; {len(pool.scenes)} training scenes")

    def evaluate(step: int) -> dict[str, Any]:
        return held_out_quality(scorer, held_out)

    t1, cpu = time.perf_counter(), time.process_time()
    history = train_clip(scorer, pool, settings, seed, evaluate, log)
    train_minutes = (time.perf_counter() - t1) / 60
    train_cpu_minutes = (time.process_time() - cpu) / 60
    summary = {
        "seed": seed,
        "settings": settings,
        "parameters": parameters,
        "threads": torch.get_num_threads(),
        "data_minutes": data_minutes,
        "train_minutes": train_minutes,
        "train_cpu_minutes": train_cpu_minutes,
        "held_out": history[-1]["held_out"],
        "seen_pairs": held_out_quality(scorer, seen),
        "history": history,
        "machine": machine_description(),
    }
    save_world_clip(scorer, out / "model", {"seed": seed})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
