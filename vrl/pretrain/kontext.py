"""`vrl pretrain world-kontext`: the shapes world's in-context model (FLUX.1 Kontext architecture).

A real diffusers `FluxKontextPipeline` folder, so `FlowMatchingAdapter.from_pretrained` loads it
as a `FluxAdapter` whose `trained_on_references` is True and the chain of synthesis runs in
context on it (`vrl.hicogen.chain`, ``context="auto"``):

- VAE: a tiny `AutoencoderKL` trained here on world renders (stage 1), ``vae_down`` x
  downsampling; the transformer packs 2x2 latent patches, so a 32 px image is
  (32 / vae_down / 2)^2 tokens (4x: 16 tokens, 2x: 64). Pixel space (no VAE) would be 256 tokens
  per image, and a final pass with 3 references holds 4 images: see the design note
  docs/experiments/2026-12-06-world-kontext-design.md for the measured step times;
- transformer: `FluxTransformer2DModel` (double- then single-stream blocks, 3-axis RoPE), no
  guidance embedding (trained with caption dropout, sampled with true CFG);
- text: a `CLIPTextModel` (FLUX reads its pooled output) on the CLIP BPE tokenizer world:t2i
  uses, and a `T5EncoderModel` (its hidden states are the text tokens) on a T5 Unigram tokenizer
  trained on world captions, both tiny and trained with the transformer.

Stage 2 trains the transformer and text towers by rectified flow on `kontext_data` triples:
x_s = (1 - s) x_0 + s eps on the target's tokens only, the references' clean latents after them
in the sequence with FLUX.1 Kontext's position ids (reference k: index k), loss on the noisy
tokens' velocity. A batch is split by reference count (one transformer call per count).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vrl.pretrain.common import config_from_extra, lr_factor, swap_ema
from vrl.pretrain.kontext_data import TripleStream, as_images, group_by_references

IMAGE_SIZE = 32


@dataclasses.dataclass
class KontextConfig:
    """Recipe of the in-context world model; every field can be set with --extra key=value."""

    steps: int = 3000
    """Transformer optimizer steps."""
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.1
    ema: float = 0.995
    t_mean: float = 0.5
    """Location of the logit-normal noise-level distribution."""
    t_std: float = 1.0
    caption_dropout: float = 0.1
    subject_mix: tuple[float, ...] = (0.4, 0.3, 0.3)
    """Relative frequency of scenes with 1, 2, 3 subjects."""
    plain_fraction: float = 0.3
    """Share of plain text-to-image items (no references) in a batch."""
    last_prob: float = 0.5
    """Chance that a unit pass sees only the last unit image (chain.references=last)."""
    cumulative_prob: float = 0.0
    """Chance that a unit pass is told every subject so far and the relations among them
    (chain.unit_prompts=cumulative), not only its own subjects: where to put its subject."""
    relational_prob: float = 0.0
    """Chance that a unit pass is told its subjects and their relations to the earlier ones,
    named by reference (chain.unit_prompts=relational): where to put its subject relative to
    what it sees in context."""
    boxes_prob: float = 0.0
    """Chance that a unit pass sees its subjects' boxes as one more reference (chain.boxes=world):
    where to put them."""
    fresh: int = 8
    layers: int = 2
    """Double-stream (joint) blocks."""
    single_layers: int = 4
    """Single-stream blocks."""
    heads: int = 4
    """Attention heads of 32 channels (width = 32 * heads)."""
    text_width: int = 64
    """Width of the CLIP and T5 towers."""
    text_layers: int = 2
    text_tokens: int = 24
    """CLIP and T5 context length in tokens (prompts that do not fit are not used)."""
    train_text: bool = True
    vae_down: int = 4
    """VAE downsampling (2 or 4; 1 = pixel space, for timing only: the adapter cannot sample it)."""
    latent_channels: int = 8
    vae_width: int = 16
    """Channels of the VAE's first block (then 2x)."""
    vae_steps: int = 1000
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_kl: float = 1e-6
    shift: float = 1.0
    """Sigma shift of the sampler's schedule (static: no resolution-dependent shift)."""
    sample_steps: int = 20
    guidance: float = 4.0
    eval_scenes: int = 64
    vae: str = ""
    """A trained VAE folder (`AutoencoderKL.save_pretrained`) to reuse: stage 1 is skipped."""
    init: str = ""
    """A world-kontext folder to continue from: its transformer and text towers (and its VAE
    unless `vae` is given), same architecture settings; the optimizer and the LR schedule start
    afresh, so `steps` more steps run."""

    def __post_init__(self) -> None:
        if self.vae_down not in (1, 2, 4):
            raise ValueError(f"vae_down must be 1, 2 or 4, got {self.vae_down}")
        if len(self.subject_mix) > 3 or not self.subject_mix:
            raise ValueError("a 32 px scene holds at most 3 subjects: subject_mix has 1-3 weights")

    @property
    def grid(self) -> int:
        """Token rows (= columns) of one 32 px image."""
        return IMAGE_SIZE // self.vae_down // 2

    @property
    def channels(self) -> int:
        """Latent channels (3 in pixel space)."""
        return 3 if self.vae_down == 1 else self.latent_channels

    @classmethod
    def from_overrides(cls, items: Sequence[str]) -> KontextConfig:
        """A config from ``key=value`` strings (the CLI's --extra; `config_from_extra`)."""
        return config_from_extra(cls, items)


def world_words(scenes: int = 300, seed: int = 0) -> list[str]:
    """Every word of the world's captions and unit prompts (both splits), lower and title case."""
    from vrl.hicogen.chain import plan_chain
    from vrl.world import BACKGROUNDS, COLOURS, captions, sample_scene

    rng = random.Random(seed)
    words = {*COLOURS, *(w for name in BACKGROUNDS for w in name.split())}
    for i in range(scenes):
        split = "test" if i % 5 == 0 else "train"
        scene = sample_scene(rng, min_subjects=1, max_subjects=3, relation_prob=1.0, split=split)
        for text in captions(scene) + list(plan_chain(scene, "").unit_prompts):
            words.update(w.strip(".,;") for w in text.split())
    words.discard("")
    return sorted(words | {w.lower() for w in words} | {w.capitalize() for w in words})


def build_world_t5_tokenizer(max_length: int):
    """A T5 (Unigram) tokenizer with one piece per world word (so a caption is about one token
    a word) and single characters for anything else. A Unigram tokenizer *trained* on world
    captions kept only a few words whole (36 distinct words are too few for its pruning) and
    split a 2-subject caption into ~50 pieces."""
    import string

    from transformers import T5Tokenizer

    specials = ["<pad>", "</s>", "<unk>"]
    chars = list(string.ascii_letters + string.digits + string.punctuation) + ["\u2581"]
    vocab = [(t, 0.0) for t in specials] + [("\u2581" + w, -1.0) for w in world_words()]
    vocab += [(c, -10.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def build_vae(cfg: KontextConfig):
    from diffusers import AutoencoderKL

    blocks = {2: 2, 4: 3}[cfg.vae_down]
    widths = (cfg.vae_width, 2 * cfg.vae_width, 2 * cfg.vae_width)[:blocks]
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=widths,
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
        scaling_factor=1.0,  # set from the latents' statistics after training
        shift_factor=0.0,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_transformer(cfg: KontextConfig):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * cfg.channels,  # 2x2 packed latent patches
        num_layers=cfg.layers,
        num_single_layers=cfg.single_layers,
        attention_head_dim=32,
        num_attention_heads=cfg.heads,
        joint_attention_dim=cfg.text_width,
        pooled_projection_dim=cfg.text_width,
        guidance_embeds=False,
        axes_dims_rope=(8, 12, 12),  # (reference index, row, column)
    )


def build_pipeline(cfg: KontextConfig, seed: int = 0, vae=None):
    """A `FluxKontextPipeline` of this recipe, random but for ``vae`` (a trained one), float32."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline
    from transformers import CLIPTextModel

    from vrl.models.tiny_diffusion import build_clip_tokenizer, clip_text_config, t5_encoder

    if cfg.vae_down == 1:
        raise ValueError("vae_down=1 (pixel space) is for timing only: FluxAdapter samples FLUX "
                         "in latent space")  # fmt: skip
    clip_tokenizer = build_clip_tokenizer(model_max_length=cfg.text_tokens)
    t5_tokenizer = build_world_t5_tokenizer(cfg.text_tokens)
    w = cfg.text_width
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = CLIPTextModel(
            clip_text_config(
                len(clip_tokenizer),
                w,
                clip_tokenizer,
                layers=cfg.text_layers,
                intermediate_size=4 * w,
                max_positions=cfg.text_tokens,
            )  # fmt: skip
        )
        t5 = t5_encoder(w, t5_tokenizer, layers=cfg.text_layers)
        transformer = build_transformer(cfg)
        vae = vae if vae is not None else build_vae(cfg)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=cfg.shift, use_dynamic_shifting=False
    )
    pipe = FluxKontextPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_parameters(pipe) -> dict[str, int]:
    names = ("transformer", "text_encoder", "text_encoder_2", "vae")
    return {n: sum(p.numel() for p in pipe.components[n].parameters()) for n in names}


# ---------------------------------------------------------------------- latents


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): FLUX's 2x2 packing (`FluxAdapter._pack`)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


@torch.no_grad()
def to_tokens(vae, images: torch.Tensor) -> torch.Tensor:
    """Packed latents of (B, 3, H, W) images in [0, 1], as `FluxAdapter.encode_images` makes
    them (the posterior mean, shifted and scaled); pixel space without a VAE."""
    x = images * 2 - 1
    if vae is None:
        return pack(x)
    z = vae.encode(x, return_dict=False)[0].mean
    return pack((z - vae.config.shift_factor) * vae.config.scaling_factor)


def world_images(rng: random.Random, count: int, split: str = "train") -> torch.Tensor:
    """(count, 3, 32, 32) uint8 renders of random 1-3 subject scenes."""
    from vrl.pretrain.kontext_data import to_tensor
    from vrl.world import render, sample_scene

    out = []
    for _ in range(count):
        n = rng.randint(1, 3)
        scene = sample_scene(rng, min_subjects=n, max_subjects=n, relation_prob=1.0, split=split)
        out.append(to_tensor(render(scene, IMAGE_SIZE, seed=rng.getrandbits(32))))
    return torch.stack(out)


def train_vae(cfg: KontextConfig, seed: int = 0, progress: bool = True):
    """Stage 1: the VAE on world renders (L1 + MSE + a small KL), its latents then normalised
    (``shift_factor`` = mean, ``scaling_factor`` = 1 / std). Returns (vae, stats)."""
    from tqdm.auto import tqdm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = build_vae(cfg)
    rng = random.Random(f"vae-{seed}")
    pool = world_images(rng, 4 * cfg.vae_batch)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    g = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    cpu = -time.process_time()
    vae.train()
    for step in tqdm(range(cfg.vae_steps), desc="world-kontext vae", disable=not progress):
        if step % 4 == 0:  # a few new scenes every step or so, most of the batch reused
            pool = torch.cat([pool, world_images(rng, cfg.vae_batch // 4)])[-4000:]
        idx = torch.randint(len(pool), (cfg.vae_batch,), generator=g)
        x = pool[idx].float() / 127.5 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=g)).sample
        loss = (recon - x).abs().mean() + ((recon - x) ** 2).mean()
        loss = loss + cfg.vae_kl * posterior.kl().mean()
        for group in optimizer.param_groups:
            group["lr"] = cfg.vae_lr * lr_factor(step, cfg.vae_steps, 50, 0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    cpu += time.process_time()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        z = vae.encode(pool[:512].float() / 127.5 - 1).latent_dist.mean
    vae.register_to_config(shift_factor=z.mean().item(), scaling_factor=1.0 / z.std().item())
    stats = {
        "vae_steps": cfg.vae_steps,
        "vae_cpu_seconds": round(cpu, 1),
        "vae_final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
    }
    return vae, stats


# ---------------------------------------------------------------------- training


def flow_loss(pipe, cfg: KontextConfig, triples, embeds, pooled, text_ids, g) -> torch.Tensor:
    """Summed per-sample rectified-flow loss of a batch of triples, one transformer call per
    reference count: the target's tokens noised, the references' clean tokens after them."""
    from vrl.models.conditioning import References, grid_ids

    grid = (cfg.grid, cfg.grid)
    vae = pipe.vae if cfg.vae_down > 1 else None
    index = {id(t): i for i, t in enumerate(triples)}
    total = torch.zeros(())
    for count, group in group_by_references(triples).items():
        rows = torch.tensor([index[id(t)] for t in group])
        x0 = to_tokens(vae, as_images([t.target for t in group]))  # (b, seq, 4C)
        b, seq = x0.shape[:2]
        s = torch.sigmoid(cfg.t_mean + cfg.t_std * torch.randn(b, generator=g))
        eps = torch.randn(x0.shape, generator=g)
        hidden = (1 - s.view(b, 1, 1)) * x0 + s.view(b, 1, 1) * eps
        ids = grid_ids(*grid)
        if count:
            refs = [
                to_tokens(vae, as_images([t.references[j] for t in group])) for j in range(count)
            ]
            refs = References(torch.cat(refs, dim=1), (grid,) * count, "kontext")
            hidden = torch.cat([hidden, refs.tokens], dim=1)
            ids = torch.cat([ids, refs.ids(grid)])
        v = pipe.transformer(
            hidden_states=hidden,
            timestep=s,
            guidance=None,
            pooled_projections=pooled[rows],
            encoder_hidden_states=embeds[rows],
            txt_ids=text_ids,
            img_ids=ids,
            return_dict=False,
        )[0][:, :seq]
        total = total + ((v - (eps - x0)) ** 2).mean(dim=(1, 2)).sum()
    return total


def encode(pipe, prompts: list[str], tokens: int):
    """(B, L, D) T5 states, (B, P) CLIP pooled, (L, 3) text ids, with gradients."""
    return pipe.encode_prompt(
        prompt=prompts, prompt_2=None, device=torch.device("cpu"), max_sequence_length=tokens
    )


def train(
    cfg: KontextConfig,
    seed: int = 0,
    vae=None,
    progress: bool = True,
    callback: Callable[[int, Any], None] | None = None,
    every: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Stage 2 (and stage 1 unless ``vae`` is given): returns (pipeline with the EMA weights,
    stats with the loss curve every 50 steps)."""
    from tqdm.auto import tqdm

    stats: dict[str, Any] = {}
    vae_folder = cfg.vae or (f"{cfg.init}/vae" if cfg.init else "")
    if vae is None and vae_folder:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(vae_folder)
        stats["vae_from"] = vae_folder
    if vae is None:
        vae, stats = train_vae(cfg, seed, progress)
    pipe = build_pipeline(cfg, seed, vae)
    if cfg.init:  # continue a saved run from its weights
        from diffusers import FluxKontextPipeline

        saved = FluxKontextPipeline.from_pretrained(cfg.init)
        for name in ("transformer", "text_encoder", "text_encoder_2"):
            getattr(pipe, name).load_state_dict(getattr(saved, name).state_dict())
        stats["init"] = cfg.init
    pipe.vae.eval().requires_grad_(False)
    modules = [pipe.transformer] + [pipe.text_encoder, pipe.text_encoder_2] * cfg.train_text

    def train_mode() -> None:
        for module in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2):
            module.requires_grad_(module in modules).train(module in modules)

    train_mode()
    params = [p for m in modules for p in m.parameters()]
    ema = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    stream = TripleStream(
        seed,
        size=IMAGE_SIZE,
        subject_mix=cfg.subject_mix,
        plain_fraction=cfg.plain_fraction,
        last_prob=cfg.last_prob,
        cumulative_prob=cfg.cumulative_prob,
        relational_prob=cfg.relational_prob,
        boxes_prob=cfg.boxes_prob,
        fresh=cfg.fresh,
        tokenizer=(pipe.tokenizer, pipe.tokenizer_2),
    )
    g = torch.Generator().manual_seed(seed)

    losses: list[float] = []
    cpu = -time.process_time()
    bar = tqdm(range(cfg.steps), desc="world-kontext", disable=not progress, mininterval=2.0)
    for step in bar:
        triples = stream.batch(cfg.batch_size)
        drop = torch.rand(len(triples), generator=g) < cfg.caption_dropout
        prompts = ["" if d else t.prompt for t, d in zip(triples, drop.tolist(), strict=True)]
        embeds, pooled, text_ids = encode(pipe, prompts, cfg.text_tokens)
        loss = flow_loss(pipe, cfg, triples, embeds, pooled, text_ids, g) / len(triples)
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
            cpu += time.process_time()
            swap_ema(params, ema)
            callback(step + 1, pipe)
            swap_ema(params, ema)
            train_mode()
            cpu -= time.process_time()
    cpu += time.process_time()
    swap_ema(params, ema)
    for module in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2):
        module.requires_grad_(False).eval()
    curve = [round(sum(losses[i : i + 50]) / len(losses[i : i + 50]), 4)
             for i in range(0, len(losses), 50)]  # fmt: skip
    stats.update(
        steps=cfg.steps,
        train_cpu_seconds=round(cpu, 1),
        final_loss=curve[-1] if curve else None,  # steps=0: the init weights, saved as they are
        loss_curve=curve,
        losses=losses,
        threads=torch.get_num_threads(),
    )
    return pipe, stats


def lineage(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Every training stage behind a saved folder, oldest first: a run with ``init=`` continues
    the stages its init folder's ``quality.json`` lists (or, for a folder saved before this list
    was kept, the chain of its ``init`` fields), then adds its own. Each stage: its ``--extra``
    settings (folders left out: each stage starts from the one before), steps, CPU minutes of the
    VAE and the transformer, threads, final loss and held-out one-subject exist."""

    def stage(s: dict[str, Any]) -> dict[str, Any]:
        one = s.get("quality", {}).get("1-subject test", {})
        return {
            "extra": {k: v for k, v in s["overrides"].items() if k not in ("init", "vae")},
            "vae_steps": s.get("vae_steps", 0),
            "vae_cpu_minutes": round(s.get("vae_cpu_seconds", 0) / 60, 1),
            "steps": s["steps"],
            "cpu_minutes": round(s["train_cpu_seconds"] / 60, 1),
            "threads": s["threads"],
            "final_loss": s["final_loss"],
            "one_subject_exist": one.get("exist"),
        }

    before: list[dict[str, Any]] = []
    init = summary.get("init")
    if init and (Path(init) / "quality.json").is_file():
        previous = json.loads((Path(init) / "quality.json").read_text())
        before = previous.get("lineage") or lineage(previous)
    return [*before, stage(summary)]


# ---------------------------------------------------------------------- timing


def time_step(cfg: KontextConfig, references: int, repeats: int = 3, batch: int = 16) -> float:
    """Seconds of one transformer forward + backward of ``batch`` targets with ``references``
    reference images each (best of ``repeats``; text, VAE and data left out)."""
    from vrl.models.conditioning import References, grid_ids

    transformer = build_transformer(cfg).train()
    grid = (cfg.grid, cfg.grid)
    seq = cfg.grid**2
    text = torch.randn(batch, cfg.text_tokens, cfg.text_width)
    best = math.inf
    for _ in range(repeats + 1):
        hidden = torch.randn(batch, seq * (1 + references), 4 * cfg.channels)
        ids = grid_ids(*grid)
        if references:
            refs = References(hidden[:, seq:], (grid,) * references, "kontext")
            ids = torch.cat([ids, refs.ids(grid)])
        start = time.perf_counter()
        v = transformer(
            hidden_states=hidden,
            timestep=torch.rand(batch),
            guidance=None,
            pooled_projections=torch.randn(batch, cfg.text_width),
            encoder_hidden_states=text,
            txt_ids=torch.zeros(cfg.text_tokens, 3),
            img_ids=ids,
            return_dict=False,
        )[0][:, :seq]
        v.square().mean().backward()
        best = min(best, time.perf_counter() - start)
    return best
