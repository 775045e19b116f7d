"""Quality of the in-context world model (`vrl.pretrain.kontext`), as RL will see it: ODE
samples through the adapter scored by the world's exact checker on held-out scenes."""

from __future__ import annotations

from typing import Any

import torch

from vrl.pretrain.kontext import IMAGE_SIZE, KontextConfig


@torch.no_grad()
def vae_quality(vae, count: int = 64) -> dict[str, float | None]:
    """Checker accuracy of VAE round trips of held-out one- and two-subject renders: the ceiling
    of what the transformer can draw through this VAE."""
    from vrl.pretrain.kontext_data import to_tensor
    from vrl.pretrain.t2i import eval_scenes, score
    from vrl.world import render

    out = {}
    for n in (1, 2):
        scenes = eval_scenes(n, "test", count)
        x = torch.stack([to_tensor(render(s, IMAGE_SIZE)) for s in scenes]).float() / 127.5 - 1
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample
        result = score(scenes, (recon * 0.5 + 0.5).clamp(0, 1))
        out[f"{n}-subject test exist"] = result["exist"]
        out[f"{n}-subject test attribute"] = result["attribute"]
    return out


def shape_exist(scenes, images) -> dict[str, float]:
    """Share of one-subject scenes whose subject was found (as its shape) by the checker, per
    shape: a square, circle or triangle drawn as such."""
    from vrl.world import check, shape_spec

    found: dict[str, list[float]] = {}
    for scene, image in zip(scenes, images, strict=True):
        shape = shape_spec(scene.subjects[0]).shape
        found.setdefault(shape, []).append(float(all(check(scene, image).assignment.values())))
    return {k: sum(v) / len(v) for k, v in sorted(found.items())}


def chain_quality(
    adapter, cfg: KontextConfig, count: int, seed: int = 0, form: str = "own", boxes=False
) -> dict[str, Any]:
    """Two-subject test-split scenes drawn by the in-context chain (unit 1, unit 2 seeing unit 1,
    the final pass seeing both), unit prompts in `form` (`Scene.unit_prompt`), with `boxes` each
    unit pass seeing its box image too (`plan_boxes`), every image scored against what it
    should show."""
    from vrl.hicogen.chain import plan_boxes, plan_chain, synthesize_chain
    from vrl.pretrain.t2i import eval_scenes, score

    scenes = eval_scenes(2, "test", count)
    plans = [plan_chain(s, s.prompt(), form=form) for s in scenes]
    box_images = None
    if boxes:
        per_plan = [plan_boxes(p, IMAGE_SIZE) for p in plans]
        box_images = [torch.stack([b[k] for b in per_plan]) for k in range(2)]
    chain = synthesize_chain(
        adapter, adapter.transformer,
        [[p.unit_prompts[k] for p in plans] for k in range(2)], [p.final_prompt for p in plans],
        batch_size=len(scenes), height=IMAGE_SIZE, width=IMAGE_SIZE,
        num_steps=cfg.sample_steps, guidance_scale=cfg.guidance, context="in_context",
        references="all", box_images=box_images, step="ode", generator=torch.Generator().manual_seed(seed),
        store_trajectory=False,
    )  # fmt: skip
    return {
        "unit 1": score([p.partial_scene(0) for p in plans], chain.steps[0].image),
        "unit 2": score(scenes, chain.steps[1].image),
        "final": score(scenes, chain.steps[2].image),
    }


def evaluate(adapter, cfg: KontextConfig, count: int, seed: int = 0) -> dict[str, Any]:
    """Held-out one-subject scenes as plain text-to-image (what unit 1 of every chain is), the
    same on train-split scenes, and two-subject chains in context (told where unit 2 goes too,
    when the model was trained on it)."""
    from vrl.pretrain.t2i import eval_scenes, generate, score

    out: dict[str, Any] = {}
    for split in ("test", "train"):
        scenes = eval_scenes(1, split, count)
        images = generate(
            adapter, [s.prompt() for s in scenes], cfg.sample_steps, cfg.guidance, seed
        )
        out[f"1-subject {split}"] = {
            **score(scenes, images),
            "by_shape": shape_exist(scenes, images),
        }
    out["2-subject chain (test)"] = chain_quality(adapter, cfg, max(4, count // 2), seed)
    if cfg.relational_prob > 0:
        out["2-subject chain, relational (test)"] = chain_quality(
            adapter, cfg, max(4, count // 2), seed, form="relational"
        )
    if cfg.boxes_prob > 0:
        out["2-subject chain, boxes (test)"] = chain_quality(
            adapter, cfg, max(4, count // 2), seed, boxes=True
        )
    return out
