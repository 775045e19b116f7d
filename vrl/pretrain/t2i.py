"""`vrl pretrain world-t2i`: the shapes world's tiny text-to-image model, trained by rectified flow.

The model is a real diffusers `StableDiffusion3Pipeline` folder, so the project's adapter
(`vrl.models.diffusion.FlowMatchingAdapter.from_pretrained`) and every trainer load it unchanged:

- transformer: `SD3Transformer2DModel` on 32x32 RGB pixels (no VAE: latents are the image in
  [-1, 1]), patch 4 -> 64 image tokens;
- text: two `CLIPTextModelWithProjection` towers (SD3 concatenates their penultimate hidden
  states and their pooled projections) on a CLIP BPE tokenizer cut from open_clip's packaged
  vocabulary, trained jointly with the transformer;
- no T5: SD3 then feeds zeros in its place; `tokenizer_3` is kept only to declare
  `model_max_length = 1`, so that the adapter feeds one zero token, not 256.

Training: x_s = (1 - s) x_0 + s eps with s logit-normal, loss |v - (eps - x_0)|^2 (rectified
flow, SD3's convention), AdamW with warm-up and cosine decay, caption dropout for classifier-free
guidance, EMA weights saved. Data are drawn fresh every step from the world's train split (1-3
subjects, captions in every phrasing of `vrl.world.captions`).

Quality is measured the way RL will see it: ODE samples through the adapter at the recommended
sampler settings, scored by the exact checker (`vrl.world.level_accuracy`) on held-out scenes.

Simplifications: one resolution (32 px), the default light-grey background unless
``background_prob`` asks for named ones, no outlines.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vrl.hicogen.scene import Scene
from vrl.pretrain.common import config_from_extra, lr_factor, swap_ema

IMAGE_SIZE = 32
T5_TOKENS = 1
"""Zero tokens SD3 feeds in place of the absent T5 (declared by ``tokenizer_3``)."""
EVAL_SEED = 20_000
"""Held-out evaluation scenes come from this seed, whatever the training seed."""


@dataclasses.dataclass
class T2IConfig:
    """Recipe of the tiny text-to-image model; every field can be set with --extra key=value."""

    steps: int = 4000
    """Optimizer steps (~32 CPU minutes on one thread). At 1,200 steps (~10 minutes) the model
    drew scattered 4 px patches of the asked colour rather than objects; at 4,000 the objects are
    solid blobs in the right places (two-subject relation right 17% vs 5%,
    docs/experiments/2026-11-24-world-model-pretraining.md)."""
    batch_size: int = 32
    """Images per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate."""
    warmup: int = 200
    """Linear warm-up steps."""
    min_lr_ratio: float = 0.1
    """Cosine decay from lr down to lr * this at the last step (1.0: constant after warm-up)."""
    weight_decay: float = 0.0
    ema: float = 0.995
    """EMA decay of the saved weights (transformer and text towers)."""
    t_mean: float = 1.4
    """Location of the logit-normal noise-level distribution (> 0: more training at high noise,
    where a 32 px image's layout and shapes are decided)."""
    t_std: float = 1.0
    """Scale of the logit-normal noise-level distribution."""
    caption_dropout: float = 0.1
    """Share of captions replaced by "" (the unconditional branch of classifier-free guidance)."""
    subject_mix: tuple[float, ...] = (0.4, 0.6)
    """Relative frequency of scenes with 1, 2, 3, ... subjects."""
    relation_prob: float = 1.0
    """Chance that each subject after the first is tied to an earlier one by a relation."""
    background_prob: float = 0.0
    """Share of scenes drawn on a named background (any of the world's ``BACKGROUNDS``, named in
    the caption); the rest are on the default light grey, which captions do not name."""
    captions: str = "all"
    """"all": every phrasing of `vrl.world.captions` that fits the CLIP context; "prompt":
    `scene.prompt()` only."""
    layers: int = 4
    """Joint transformer blocks."""
    heads: int = 4
    """Attention heads of 32 channels (width = 32 * heads)."""
    patch: int = 4
    """Patch side in pixels (4: 64 image tokens at 32 px)."""
    qk_norm: str = "rms_norm"
    """Query/key normalisation of the joint attention ("rms_norm" or "none")."""
    text_width: int = 64
    """Width of each CLIP text tower (the two are concatenated: 2 x this = the text width)."""
    text_layers: int = 2
    """Layers of each CLIP tower (SD3 reads the penultimate one's hidden states)."""
    text_tokens: int = 24
    """CLIP context length in tokens: phrasings that do not fit are not used (every
    ``scene.prompt()`` of 1-2 subjects fits; 40 holds every 1-2 subject phrasing)."""
    train_text: bool = True
    """Train the text towers with the transformer (False: they stay random and frozen)."""
    shift: float = 1.0
    """Sigma shift of the sampler's schedule (SD3 uses 3.0 at 1024 px)."""
    sample_steps: int = 20
    """Recommended ODE steps when sampling."""
    guidance: float = 4.0
    """Recommended classifier-free guidance scale."""
    fresh: int = 8
    """New scenes drawn per step; the rest of the batch reuses earlier ones (see SceneStream)."""
    eval_scenes: int = 64
    """Evaluation scenes per group (1 or 2 subjects x train or test split)."""
    edge_weight: float = 0.0
    """Extra loss weight on the pixels of shape boundaries (``edge_weights``): a shape's
    identity lives in a few edge pixels, ~1% of a 32 px image, which the plain loss barely sees."""
    init: str = ""
    """Start from this pipeline (a folder or a ``world:`` name) instead of random weights: a
    second stage of training. Its sizes must be this recipe's (an error names any that differ)."""

    def __post_init__(self) -> None:
        if self.captions not in ("all", "prompt"):
            raise ValueError(f"captions must be 'all' or 'prompt', got {self.captions!r}")
        if not self.subject_mix or min(self.subject_mix) < 0 or sum(self.subject_mix) <= 0:
            raise ValueError(f"subject_mix must be non-negative weights, got {self.subject_mix}")
        if len(self.subject_mix) > 3:
            raise ValueError("a 32 px scene holds at most 3 subjects: subject_mix has <= 3 weights")
        if IMAGE_SIZE % self.patch:
            raise ValueError(f"patch must divide {IMAGE_SIZE}, got {self.patch}")
        if not 0.0 <= self.background_prob <= 1.0:
            raise ValueError(f"background_prob must be in [0, 1], got {self.background_prob}")
        if self.edge_weight < 0:
            raise ValueError(f"edge_weight must be >= 0, got {self.edge_weight}")
        if self.qk_norm not in ("rms_norm", "none"):
            raise ValueError(f"qk_norm must be 'rms_norm' or 'none', got {self.qk_norm!r}")

    @classmethod
    def from_overrides(cls, items: Sequence[str]) -> T2IConfig:
        """A config from ``key=value`` strings (the CLI's --extra; `config_from_extra`)."""
        return config_from_extra(cls, items)


# ---------------------------------------------------------------------- the pipeline


def build_pipeline(cfg: T2IConfig, seed: int = 0):
    """A randomly initialised `StableDiffusion3Pipeline` of this recipe's sizes, float32 on CPU."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from vrl.models.tiny_diffusion import build_clip_tokenizer, build_t5_tokenizer

    tokenizer = build_clip_tokenizer(model_max_length=cfg.text_tokens)
    width = 32 * cfg.heads
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        towers = [
            CLIPTextModelWithProjection(
                CLIPTextConfig(
                    vocab_size=len(tokenizer),
                    hidden_size=cfg.text_width,
                    intermediate_size=4 * cfg.text_width,
                    projection_dim=cfg.text_width,
                    num_hidden_layers=cfg.text_layers,
                    num_attention_heads=2,
                    max_position_embeddings=cfg.text_tokens,
                    hidden_act="quick_gelu",
                    bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id,  # pooled = the first eos token
                    pad_token_id=tokenizer.pad_token_id,
                )
            )
            for _ in range(2)
        ]
        transformer = SD3Transformer2DModel(
            sample_size=IMAGE_SIZE,
            patch_size=cfg.patch,
            in_channels=3,
            out_channels=3,
            num_layers=cfg.layers,
            attention_head_dim=32,
            num_attention_heads=cfg.heads,
            joint_attention_dim=2 * cfg.text_width,  # the two towers' hidden states side by side
            caption_projection_dim=width,
            pooled_projection_dim=2 * cfg.text_width,
            pos_embed_max_size=IMAGE_SIZE // cfg.patch,
            qk_norm=None if cfg.qk_norm == "none" else cfg.qk_norm,
        )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=cfg.shift),
        vae=None,
        text_encoder=towers[0],
        tokenizer=tokenizer,
        text_encoder_2=towers[1],
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=build_t5_tokenizer(model_max_length=T5_TOKENS),
    )


def encode(pipeline, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, D) token and (B, P) pooled embeddings through SD3's own `encode_prompt`, with
    gradients (the adapter's `encode_prompts` is the same call under no_grad)."""
    embeds, _, pooled, _ = pipeline.encode_prompt(
        prompt=prompts,
        prompt_2=None,
        prompt_3=None,
        device=torch.device("cpu"),
        do_classifier_free_guidance=False,
        max_sequence_length=T5_TOKENS,
    )
    return embeds, pooled


def count_parameters(pipeline) -> dict[str, int]:
    return {
        name: sum(p.numel() for p in pipeline.components[name].parameters())
        for name in ("transformer", "text_encoder", "text_encoder_2")
    }


# ---------------------------------------------------------------------- data


class SceneStream:
    """Training batches from the world's train split, fixed by the seed.

    Laying a scene out costs ~10 ms of CPU, as much as a training step spends on 30 images, so
    each batch draws only ``cfg.fresh`` new scenes (1..3 subjects by ``cfg.subject_mix``, each
    rendered at 32 px with its own layout seed) and fills the rest from every scene drawn so far;
    each use takes a new caption among the scene's phrasings that fit the CLIP context.
    """

    def __init__(self, cfg: T2IConfig, seed: int, tokenizer=None):
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.tokenizer = tokenizer
        self.pool: list[tuple[list[str], torch.Tensor]] = []  # (captions, (3, 32, 32) uint8)

    def _fitting(self, scene: Scene) -> list[str]:
        from vrl.world import captions

        texts = [scene.prompt()] if self.cfg.captions == "prompt" else captions(scene)
        if self.tokenizer is None:
            return texts
        limit = self.tokenizer.model_max_length
        return [t for t in texts if len(self.tokenizer(t, verbose=False).input_ids) <= limit]

    def _draw(self) -> tuple[list[str], torch.Tensor]:
        from vrl.world import render, sample_scene

        counts = range(1, len(self.cfg.subject_mix) + 1)
        while True:
            n = self.rng.choices(counts, weights=self.cfg.subject_mix)[0]
            # no draw at 0: the stream of a recipe without backgrounds stays what it was
            named = self.cfg.background_prob > 0 and self.rng.random() < self.cfg.background_prob
            scene = sample_scene(
                self.rng,
                min_subjects=n,
                max_subjects=n,
                relation_prob=self.cfg.relation_prob,
                background="random" if named else None,
            )
            texts = self._fitting(scene)
            if texts:
                break
        image = render(scene, IMAGE_SIZE, seed=self.rng.getrandbits(32))
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        return texts, pixels.view(IMAGE_SIZE, IMAGE_SIZE, 3).permute(2, 0, 1)

    def batch(self, size: int) -> tuple[list[str], torch.Tensor]:
        """(captions, (B, 3, 32, 32) images in [-1, 1])."""
        fresh = [self._draw() for _ in range(min(self.cfg.fresh, size))]
        self.pool.extend(fresh)
        items = fresh + [self.rng.choice(self.pool) for _ in range(size - len(fresh))]
        prompts = [self.rng.choice(texts) for texts, _ in items]
        x = torch.stack([pixels for _, pixels in items])  # (B, 3, 32, 32) uint8
        return prompts, x.float() / 127.5 - 1.0


# ---------------------------------------------------------------------- training


EDGE_CONTRAST = 0.1
"""A pixel is on a boundary when its 3x3 neighbourhood spans more than this (images in [-1, 1],
so ~13 of 255 levels) in some channel."""


def edge_weights(x0: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, 1, H, W) per-pixel loss weights of images (B, 3, H, W) in [-1, 1]: 1, plus ``weight``
    on the pixels whose 3x3 neighbourhood is not flat (both sides of every shape boundary)."""
    import torch.nn.functional as F

    hi = F.max_pool2d(x0, 3, stride=1, padding=1)
    lo = -F.max_pool2d(-x0, 3, stride=1, padding=1)
    edge = (hi - lo).amax(dim=1, keepdim=True) > EDGE_CONTRAST
    return 1.0 + weight * edge.to(x0.dtype)


def load_pipeline(source: str, cfg: T2IConfig):
    """A pipeline folder (or ``world:`` name) to continue training, float32 on the CPU; its
    sizes must be those of ``cfg`` (the card describes the model from ``cfg``)."""
    from vrl.models.diffusion import FlowMatchingAdapter
    from vrl.models.paths import resolve_pipeline_path

    pipe = FlowMatchingAdapter.from_pretrained(resolve_pipeline_path(source)).pipeline
    t, text = pipe.transformer.config, pipe.text_encoder.config
    found = {
        "layers": t.num_layers,
        "heads": t.num_attention_heads,
        "patch": t.patch_size,
        "qk_norm": t.qk_norm or "none",
        "text_width": text.hidden_size,
        "text_layers": text.num_hidden_layers,
        "text_tokens": pipe.tokenizer.model_max_length,
    }
    wrong = [
        f"{k}={v} (recipe: {getattr(cfg, k)})" for k, v in found.items() if v != getattr(cfg, k)
    ]
    if wrong:
        raise ValueError(f"init={source!r} does not have this recipe's sizes: {', '.join(wrong)}")
    return pipe


def train(
    cfg: T2IConfig,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, Any], None] | None = None,
    every: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Train a pipeline from scratch (or from ``cfg.init``); returns (pipeline with the EMA
    weights, training stats).

    ``callback(step, pipeline)`` runs every ``every`` steps with the EMA weights swapped in
    (learning curves); its time is not counted as training time.
    """
    from tqdm.auto import tqdm

    pipe = load_pipeline(cfg.init, cfg) if cfg.init else build_pipeline(cfg, seed)
    modules = [pipe.transformer] + ([pipe.text_encoder, pipe.text_encoder_2] * cfg.train_text)

    def train_mode() -> None:
        for module in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2):
            module.requires_grad_(module in modules).train(module in modules)

    train_mode()
    params = [p for m in modules for p in m.parameters()]
    ema = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    stream = SceneStream(cfg, seed, pipe.tokenizer)
    g = torch.Generator().manual_seed(seed)

    losses: list[float] = []
    wall, cpu = -time.perf_counter(), -time.process_time()
    bar = tqdm(range(cfg.steps), desc="world-t2i", disable=not progress, mininterval=2.0)
    for step in bar:
        prompts, x0 = stream.batch(cfg.batch_size)  # (B, 3, 32, 32)
        drop = torch.rand(len(prompts), generator=g) < cfg.caption_dropout
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist(), strict=True)]
        embeds, pooled = encode(pipe, prompts)

        b = x0.shape[0]
        s = torch.sigmoid(cfg.t_mean + cfg.t_std * torch.randn(b, generator=g))  # (B,) noise
        eps = torch.randn(x0.shape, generator=g)
        xs = (1 - s.view(b, 1, 1, 1)) * x0 + s.view(b, 1, 1, 1) * eps
        v = pipe.transformer(
            hidden_states=xs,
            timestep=s * 1000,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        if cfg.edge_weight:
            w = edge_weights(x0, cfg.edge_weight)  # (B, 1, 32, 32)
            loss = ((v - (eps - x0)) ** 2 * w).mean() / w.mean()
        else:
            loss = torch.nn.functional.mse_loss(v, eps - x0)

        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg.steps, cfg.warmup, cfg.min_lr_ratio)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - cfg.ema)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if callback is not None and every and (step + 1) % every == 0 and step + 1 < cfg.steps:
            wall, cpu = wall + time.perf_counter(), cpu + time.process_time()
            swap_ema(params, ema)
            callback(step + 1, pipe)
            swap_ema(params, ema)
            train_mode()  # a callback that loads an adapter freezes the text towers
            wall, cpu = wall - time.perf_counter(), cpu - time.process_time()
    wall, cpu = wall + time.perf_counter(), cpu + time.process_time()

    swap_ema(params, ema)
    for module in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2):
        module.requires_grad_(False).eval()
    stats = {
        "train_seconds": round(wall, 1),
        "train_cpu_seconds": round(cpu, 1),
        "steps": cfg.steps,
        "final_loss": round(sum(losses[-200:]) / len(losses[-200:]), 4),
        "threads": torch.get_num_threads(),
    }
    return pipe, stats


# ---------------------------------------------------------------------- sampling and quality


def eval_scenes(n_subjects: int, split: str, count: int, seed: int = EVAL_SEED) -> list[Scene]:
    """Fixed evaluation scenes: every 2+ subject scene carries relations (relation_prob 1)."""
    from vrl.world import sample_scene

    rng = random.Random(f"{seed}-{n_subjects}-{split}")
    return [
        sample_scene(
            rng, min_subjects=n_subjects, max_subjects=n_subjects, relation_prob=1.0, split=split
        )
        for _ in range(count)
    ]


def generate(
    adapter, prompts: list[str], steps: int, guidance: float, seed: int = 0, batch: int = 64
) -> torch.Tensor:
    """(B, 3, 32, 32) images in [0, 1]: ODE (Euler) samples through the adapter, CFG inside."""
    from vrl.samplers.loop import sample

    out = []
    for lo in range(0, len(prompts), batch):
        chunk = prompts[lo : lo + batch]
        g = torch.Generator(adapter.device).manual_seed(seed * 1_000_003 + lo)
        noise = adapter.initial_noise(len(chunk), IMAGE_SIZE, IMAGE_SIZE, generator=g)
        fn = adapter.velocity_fn(
            adapter.transformer, adapter.encode_prompts(chunk), guidance_scale=guidance
        )
        sigmas = adapter.sigmas(steps, IMAGE_SIZE, IMAGE_SIZE)
        traj = sample(fn, noise, sigmas, step="ode", store_trajectory=False)
        out.append(adapter.decode(traj.latents[:, -1]))
    return torch.cat(out)


def score(scenes: Sequence[Scene], images: torch.Tensor) -> dict[str, float | None]:
    """Mean per-level exact accuracy (DSG dependencies), plus "all": every question right,
    "subjects": every subject there with all its attributes (relations aside),
    "relation_if_found": the relation right among scenes whose subjects were all found, and
    "objects": found subjects / (subjects + extra shapes), which, unlike "exist", does not let
    a noisy image that is full of blobs pass."""
    from vrl.world import check

    levels: dict[str, list[float]] = {
        "exist": [],
        "attribute": [],
        "relation": [],
        "all": [],
        "subjects": [],
        "objects": [],
    }
    found_relation: list[float] = []
    for scene, image in zip(scenes, images, strict=True):
        result = check(scene, image)
        for level, value in result.level_accuracy().items():
            if value is not None:
                levels[level].append(value)
        levels["all"].append(float(all(result.correct.values())))
        levels["subjects"].append(
            float(all(result.correct[q.id] for q in result.questions if q.level != "relation"))
        )
        levels["objects"].append(result.object_score)
        if scene.relations and all(d is not None for d in result.assignment.values()):
            found_relation.append(
                sum(result.answers[q.id] for q in result.questions if q.level == "relation")
                / sum(q.level == "relation" for q in result.questions)
            )
    out = {k: (sum(v) / len(v) if v else None) for k, v in levels.items()}
    out["relation_if_found"] = sum(found_relation) / len(found_relation) if found_relation else None
    return out


def evaluate(
    adapter, steps: int, guidance: float, count: int = 64, seed: int = 0
) -> dict[str, dict[str, float | None]]:
    """Per-level accuracy of 1- and 2-subject scenes of the train and test splits."""
    results = {}
    for n in (1, 2):
        for split in ("test", "train"):
            scenes = eval_scenes(n, split, count)
            images = generate(adapter, [s.prompt() for s in scenes], steps, guidance, seed)
            results[f"{n}-subject {split}"] = score(scenes, images)
    return results


def save_grid(images: torch.Tensor, path: Path, columns: int = 8, scale: int = 3) -> None:
    """A PNG grid of (B, 3, H, W) images in [0, 1], each upscaled by ``scale`` (nearest)."""
    from PIL import Image

    b, _, h, w = images.shape
    rows = math.ceil(b / columns)
    grid = Image.new("RGB", (columns * w * scale, rows * h * scale), (255, 255, 255))
    arrays = images.mul(255).round().byte().permute(0, 2, 3, 1).numpy()
    for i, array in enumerate(arrays):
        tile = Image.fromarray(array).resize((w * scale, h * scale), Image.NEAREST)
        grid.paste(tile, ((i % columns) * w * scale, (i // columns) * h * scale))
    grid.save(path)


def time_sampling(adapter, steps: int, guidance: float, batch: int = 16, repeats: int = 3) -> float:
    """Seconds to sample one batch (best of ``repeats``)."""
    prompts = [s.prompt() for s in eval_scenes(2, "train", batch)]
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        generate(adapter, prompts, steps, guidance)
        best = min(best, time.perf_counter() - start)
    return best


# ---------------------------------------------------------------------- CLI
