"""The `vrl pretrain <model>` commands: train, save with a model card, print the figures.

Each command trains (``vrl.pretrain.t2i`` / ``vlm`` / ``clip``), saves a safetensors checkpoint
with its model card (``vrl.pretrain.cards``), and prints its training time and held-out quality.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vrl.pretrain import clip, machine_description, t2i, vlm
from vrl.pretrain.cards import (
    clip_card,
    kontext_card,
    quality_table,
    t2i_card,
    t2i_quality_table,
    vlm_card,
    vlm_rec_card,
)
from vrl.pretrain.common import recipe_summary, save_pipeline


def parse_extra(pairs: Sequence[str], defaults: dict[str, Any]) -> dict[str, Any]:
    """``["steps=5", "lr=1e-3"]`` over ``defaults``, each value cast to its default's type."""
    settings = dict(defaults)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in defaults:
            raise ValueError(
                f"--extra {pair!r}: expected key=value with a key of {sorted(defaults)}"
            )
        kind = type(defaults[key])
        if kind is bool:
            settings[key] = value.lower() in ("1", "true", "yes")
        else:
            settings[key] = kind(value)
    return settings


def t2i_main(args: argparse.Namespace) -> int:
    """Train, save the pipeline folder (with samples.png, quality.json and a model card), and
    print the training time and held-out quality."""
    from vrl.models.diffusion import FlowMatchingAdapter

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = t2i.T2IConfig.from_overrides(args.extra)
    out = Path(args.out or f"runs/world-t2i-seed{args.seed}")

    pipe, stats = t2i.train(cfg, seed=args.seed)
    save_pipeline(pipe, out)
    adapter = FlowMatchingAdapter.from_pretrained(out)  # the folder, as RL will load it

    results = t2i.evaluate(adapter, cfg.sample_steps, cfg.guidance, cfg.eval_scenes, args.seed)
    grid_scenes = t2i.eval_scenes(2, "train", 16) + t2i.eval_scenes(1, "test", 16)
    grid = t2i.generate(adapter, [s.prompt() for s in grid_scenes], cfg.sample_steps, cfg.guidance)
    t2i.save_grid(grid, out / "samples.png")
    summary = {
        **recipe_summary(cfg),
        "seed": args.seed,
        "parameters": t2i.count_parameters(pipe),
        **stats,
        "sample_seconds": round(t2i.time_sampling(adapter, cfg.sample_steps, cfg.guidance), 3),
        "machine": machine_description(),
        "quality": results,
    }
    (out / "quality.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "README.md").write_text(t2i_card(summary))
    print(
        f"trained {stats['steps']} steps in {stats['train_seconds'] / 60:.1f} min "
        f"({stats['train_cpu_seconds'] / 60:.1f} CPU min) on {stats['threads']} thread(s)"
    )
    print(f"held-out quality ({cfg.sample_steps} ODE steps, guidance {cfg.guidance}):")
    print(t2i_quality_table(results))
    print(f"sampling 16 images: {summary['sample_seconds']:.2f} s")
    print(f"pipeline: {out}  (model card README.md, samples.png, quality.json)")
    return 0


def vlm_main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = parse_extra(args.extra, vlm.DEFAULTS)
    out = Path(args.out or f"runs/world-vlm-seed{args.seed}")
    summary = vlm.pretrain(out, seed=args.seed, **settings)
    (out / "model" / "README.md").write_text(vlm_card(summary))
    scores = ", ".join(f"{k} {v:.1%}" for k, v in summary["held_out"].items())
    print(
        f"[world-vlm] SFT {summary['train_minutes']:.1f} min on {summary['threads']} thread(s); "
        f"held-out accuracy (test-split scenes, greedy): {scores}. Model: {out / 'model'}"
    )
    return 0


def vlm_rec_main(args: argparse.Namespace) -> int:
    """world-vlm's SFT with the grounding recipe (``vrl.pretrain.grounding.SFT_RECIPE``), then
    Acc@0.5 and mean IoU on the four evaluation sets, kept in summary.json and the model card."""
    from vrl.pretrain import grounding

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = parse_extra(args.extra, {**vlm.DEFAULTS, **grounding.SFT_RECIPE})
    out = Path(args.out or f"runs/world-vlm-rec-seed{args.seed}")
    summary = vlm.pretrain(out, seed=args.seed, **settings)
    summary = evaluate_rec_sets(out, summary, n=settings["held_out_per_task"])
    print(f"[world-vlm-rec] SFT {summary['train_minutes']:.1f} min wall, "
          f"{summary['train_cpu_minutes']:.1f} CPU min on {summary['threads']} thread(s)")  # fmt: skip
    for name, row in summary["sets"].items():
        print(f"  {name:<16} Acc@0.5 {row['acc']:6.1%}  mean IoU {row['iou']:6.1%}")
    print(f"[world-vlm-rec] model: {out / 'model'}")
    return 0


def evaluate_rec_sets(out: Path, summary: dict[str, Any], n: int) -> dict[str, Any]:
    """Score the grounding checkpoint in ``out/model`` on ``n`` questions of each evaluation set;
    rewrite summary.json and the model card with the figures."""
    from vrl.models.vlm import VLMAdapter
    from vrl.pretrain import grounding

    adapter = VLMAdapter.from_pretrained(out / "model")
    sets = grounding.write_sets(out / "eval", n)
    summary = {**summary, "sets": grounding.evaluate_sets(adapter, adapter.model, sets)[0]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "model" / "README.md").write_text(vlm_rec_card(summary))
    return summary


def clip_main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = parse_extra(args.extra, clip.DEFAULTS)
    out = Path(args.out or f"runs/world-clip-seed{args.seed}")
    summary = clip.pretrain(out, seed=args.seed, **settings)
    (out / "model" / "README.md").write_text(clip_card(summary))
    print(
        f"[world-clip] {summary['train_minutes']:.1f} min wall, "
        f"{summary['train_cpu_minutes']:.1f} min CPU on {summary['threads']} thread(s). "
        "Held-out test-split scenes: the true caption against each hard negative"
    )
    print(quality_table(summary["held_out"]))
    print("Train-split scenes not trained on (seen pairs):")
    print(quality_table(summary["seen_pairs"]))
    print(f"[world-clip] model: {out / 'model'}")
    return 0


def kontext_main(args: argparse.Namespace) -> int:
    """Train the VAE (unless --extra vae=FOLDER) and the in-context transformer, save the
    `FluxKontextPipeline` folder with quality.json, samples.png and a model card, print figures."""
    from vrl.models.diffusion import FlowMatchingAdapter
    from vrl.pretrain import kontext, kontext_eval

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = kontext.KontextConfig.from_overrides(args.extra)
    out = Path(args.out or f"runs/world-kontext-seed{args.seed}")
    pipe, stats = kontext.train(cfg, seed=args.seed)
    save_pipeline(pipe, out)
    adapter = FlowMatchingAdapter.from_pretrained(out)  # the folder, as RL will load it
    quality = kontext_eval.evaluate(adapter, cfg, cfg.eval_scenes, args.seed)
    grid_scenes = t2i.eval_scenes(1, "test", 16)
    grid = t2i.generate(adapter, [s.prompt() for s in grid_scenes], cfg.sample_steps, cfg.guidance)
    t2i.save_grid(grid, out / "samples.png")
    losses = stats.pop("losses")
    summary = {
        **recipe_summary(cfg),
        "seed": args.seed,
        "parameters": kontext.count_parameters(pipe),
        **stats,
        "vae_quality": kontext_eval.vae_quality(pipe.vae, cfg.eval_scenes),
        "machine": machine_description(),
        "quality": quality,
    }
    summary["lineage"] = kontext.lineage(summary)
    (out / "quality.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "losses.json").write_text(json.dumps([round(v, 5) for v in losses]) + "\n")
    (out / "README.md").write_text(kontext_card(summary))
    one = quality["1-subject test"]
    print(
        f"trained {stats['steps']} steps, {stats['train_cpu_seconds'] / 60:.1f} CPU min "
        f"(VAE {stats.get('vae_cpu_seconds', 0) / 60:.1f}); loss every 50 steps: "
        f"{stats['loss_curve']}"
    )
    print(f"held-out 1-subject: exist {one['exist']:.1%}, by shape {one['by_shape']}")
    for name in ("2-subject chain (test)", "2-subject chain, relational (test)"):
        if name in quality:
            print(f"{name} in context, exist (relation): " + ", ".join(
                f"{k} {v['exist']:.1%} ({v['relation'] or 0:.1%})" for k, v in quality[name].items()
            ))  # fmt: skip
    print(f"pipeline: {out}  (model card README.md, samples.png, quality.json)")
    return 0
