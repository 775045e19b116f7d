"""Within-group sample diversity of noise schedules at the same mean noise level.

    python experiments/diffusion_diversity.py                # tiny SD3, about 30 s on 1 thread
    python experiments/diffusion_diversity.py --family flux --json diversity.json

HiCoGen claims that sample diversity is largest when noise is spent early in generation (its
decaying stochasticity schedule, `docs/algorithms.md` section 3.7). This script measures
that claim on the project's tiny models: for each of a few prompts, a GRPO group of G images from
the same policy with different seeds is sampled with the Flow-GRPO SDE step and each schedule:

- constant, decaying (cosine, eta_min = 0) and windowed noise, all built by
  `vrl.samplers.equal_mean` so that their mean noise level over the steps is the same (0.5);
- windows of 4 steps at a random start (Flow-GRPO-Fast; one draw per group, from a generator of
  its own so that the noise stream stays the same), at the first steps and at the last steps;
- the deterministic ODE as the floor: its diversity comes from the initial noise alone.

The seeds are the same across schedules: group p starts from the same G initial noises whatever the
schedule (the step noise comes after them from the same generator).

Diversity of a group, over its G (G - 1) / 2 pairs (`vrl.metrics.group_diversity`):
- pairwise L2: root-mean-square difference per pixel value (L2 / sqrt(3 H W), images in [0, 1]);
- pairwise SSIM (Gaussian window 11, sigma 1.5, per channel; lower = more diverse);
- latent L2: the same RMS difference on the final latents, before the VAE;
- scale-free: latent L2 / (sqrt(2) x the latents' RMS); 1 = as far apart as independent draws of
  that size. A schedule that only shrinks or inflates the latents moves latent L2, not this.
Each is averaged over the prompts; +- is the standard deviation over prompts. "last-step std" is
the noise the last SDE step (to sigma 0) leaves in the final latents, which any L2 counts as
diversity.

Read with care: the tiny random model is NOT the paper's setting (a trained FLUX-based model with
real images). Its transformer and VAE are random, so its images are close to decoded noise and the
pixel metrics say as much about the random VAE as about the schedule; the latent column is less
dominated by it. This table is the measurement the project reports, whichever way it comes out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

#### THE FIXED SETUP ####
FAMILY = "sd3"
NUM_PROMPTS = 4
GROUP_SIZE = 16  # images per prompt (G)
NUM_STEPS = 10
MEAN_NOISE = 0.5  # the mean noise level every schedule is scaled to
WINDOW_SIZE = 4
GUIDANCE = {"sd3": 4.5, "flux": 3.5}  # SD3: classifier-free guidance; FLUX.1-dev: embedded
IMAGE_SIZE = 32
THREADS = 1  # more threads than free cores slows the tiny models down badly on a shared machine
SEED = 0
WINDOW_SEED_OFFSET = 1_000_003  # random window starts: a stream apart from the noise seeds
METRICS = ("pixel_l2", "ssim", "latent_l2", "latent_scale_free")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", choices=sorted(GUIDANCE), default=FAMILY, help="tiny model family")
    p.add_argument("--prompts", type=int, default=NUM_PROMPTS, help="prompts (groups)")
    p.add_argument("--group-size", type=int, default=GROUP_SIZE, help="images per prompt (G)")
    p.add_argument("--steps", type=int, default=NUM_STEPS, help="denoising steps")
    p.add_argument("--mean-noise", type=float, default=MEAN_NOISE, help="mean noise level")
    p.add_argument("--window", type=int, default=WINDOW_SIZE, help="noisy steps of the windows")
    p.add_argument("--guidance", type=float, default=None, help="default: 4.5 SD3, 3.5 FLUX")
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="pixels (square)")
    p.add_argument("--threads", type=int, default=THREADS, help="torch intra-op CPU threads")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--seed", type=int, default=SEED, help="group p uses seed + p")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument(
        "--cache-root", type=Path, default=None, help="tiny model cache (default $VRL_CACHE/tiny)"
    )
    args = p.parse_args(argv)
    if args.prompts < 1 or args.group_size < 2 or args.steps < 2:
        p.error("need --prompts >= 1, --group-size >= 2 and --steps >= 2")
    if not 1 <= args.window <= args.steps:
        p.error(f"--window must be between 1 and --steps ({args.steps})")
    if not args.mean_noise > 0:
        p.error("--mean-noise must be > 0")
    if args.guidance is None:
        args.guidance = GUIDANCE[args.family]
    return args


# ---------------------------------------------------------------------------------- sampling


def schedules(mean: float, steps: int, window: int) -> list[tuple[str, Any]]:
    """(label, schedule) rows of the table, every noisy one at the same mean level."""
    from vrl.samplers import equal_mean

    decaying = equal_mean("decaying", mean, steps)
    last = steps - window
    return [
        ("ode", None),
        (f"constant {mean:g}", equal_mean("constant", mean, steps)),
        (f"decaying {decaying.eta_max:.1f} -> {decaying.eta_min:.1f}", decaying),
        (f"window {window} steps", equal_mean("window", mean, steps, size=window, start="random")),
        (f"window at 0-{window - 1}", equal_mean("window", mean, steps, size=window, start=0)),
        (
            f"window at {last}-{steps - 1}",
            equal_mean("window", mean, steps, size=window, start=last),
        ),
    ]


def last_step_std(level: float, sigmas: torch.Tensor) -> float:
    """Std of the noise the last SDE step (to sigma 0) leaves in the final latents."""
    from vrl.samplers import sde_step

    zero = torch.zeros(1, 1)
    out = sde_step(zero, sigmas[-2], sigmas[-1], zero, noise_level=level, noise=zero)
    return float(out.std.reshape(()))


def pick_prompts(n: int) -> list[str]:
    """n prompts spread evenly over the synthetic "shapes" set (colours and shapes vary)."""
    from vrl.data.t2i import prompt_texts, synthetic_prompts

    rows = prompt_texts(synthetic_prompts("shapes"))
    if n > len(rows):
        raise ValueError(f"at most {len(rows)} prompts in the shapes set, asked for {n}")
    if n == 1:
        return rows[:1]
    return [rows[round(i * (len(rows) - 1) / (n - 1))] for i in range(n)]


@torch.no_grad()
def measure(adapter, prompts: list[str], args) -> dict[str, Any]:
    """Diversity of every schedule on every prompt's group; per-prompt figures and summaries."""
    from vrl.metrics import group_diversity
    from vrl.samplers import sample

    size = (args.image_size, args.image_size)
    sigmas = adapter.sigmas(args.steps, *size)
    device = adapter.device
    rows = {
        label: {"per_prompt": [], "levels": [], "schedule": schedule}
        for label, schedule in schedules(args.mean_noise, args.steps, args.window)
    }
    for p, prompt in enumerate(prompts):
        embeds = adapter.encode_prompts([prompt] * args.group_size)
        velocity_fn = adapter.velocity_fn(adapter.transformer, embeds, args.guidance)
        for row in rows.values():
            schedule = row["schedule"]
            # the window (if random) from a generator of its own: the noise stream stays the same
            window_gen = torch.Generator().manual_seed(WINDOW_SEED_OFFSET + args.seed + p)
            levels = (
                torch.zeros(args.steps)
                if schedule is None
                else schedule.levels(args.steps, generator=window_gen)
            )  # (T,)
            gen = torch.Generator(device).manual_seed(args.seed + p)
            noise = adapter.initial_noise(args.group_size, *size, gen)  # same for every schedule
            trajectory = sample(
                velocity_fn,
                noise,
                sigmas,
                step="ode" if schedule is None else "sde",
                schedule=None if schedule is None else levels,
                generator=gen,
                store_trajectory=False,
            )
            images = adapter.decode(trajectory.final, size)  # (G, 3, H, W) in [0, 1]
            row["per_prompt"].append(group_diversity(images.cpu(), trajectory.final.cpu()))
            row["levels"].append([round(v, 4) for v in levels.tolist()])

    results = []
    for label, row in rows.items():
        summary: dict[str, Any] = {"schedule": label, "levels": row["levels"]}
        for key in METRICS:
            values = [d[key] for d in row["per_prompt"]]
            summary[key] = statistics.fmean(values)
            summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[f"{key}_per_prompt"] = values
        last_levels = {levels[-1] for levels in row["levels"]}
        summary["last_step_std"] = max(last_step_std(a, sigmas) for a in last_levels)
        summary["mean_level"] = statistics.fmean(statistics.fmean(lv) for lv in row["levels"])
        results.append(summary)
    return {"rows": results, "sigmas": [round(s, 4) for s in sigmas.tolist()]}


def paired_differences(rows: list[dict[str, Any]], base: str, other: str) -> dict[str, Any]:
    """Per-prompt differences base - other (same prompts, same seeds): mean and std."""
    by_name = {r["schedule"]: r for r in rows}
    out = {}
    for key in METRICS:
        diffs = [
            a - b
            for a, b in zip(
                by_name[base][f"{key}_per_prompt"], by_name[other][f"{key}_per_prompt"], strict=True
            )
        ]
        out[key] = statistics.fmean(diffs)
        out[f"{key}_std"] = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return out


# ---------------------------------------------------------------------------------- report


def format_table(report: dict[str, Any]) -> str:
    s = report["setup"]
    guidance = f"CFG {s['guidance']}" if s["cfg_batch"] else f"guidance {s['guidance']} embedded"
    lines = [
        f"Within-group diversity, tiny random {s['family'].upper()}: {s['prompts']} prompts x "
        f"{s['group_size']} images (same seeds for every schedule), {s['steps']} SDE steps, "
        f"{s['image_size']}x{s['image_size']} px, {guidance}; mean +- std over prompts",
        "NOTE: a tiny RANDOM model (images close to decoded noise), NOT the paper's setting "
        "(HiCoGen: a trained FLUX-based model).",
        "This table is the measurement the project reports, whichever way it comes out.",
        "",
    ]
    first = f"schedule (mean noise {s['mean_noise']:g})"
    head = (
        f"{first:<28}{'pairwise L2':<19}"
        f"{'pairwise SSIM (lower = more diverse)':<39}{'latent L2':<19}{'scale-free':<19}"
        "last-step std"
    )
    lines.append(head)
    for r in report["rows"]:

        def cell(key: str, r: dict[str, Any] = r) -> str:
            return f"{r[key]:.4f} +- {r[f'{key}_std']:.4f}"

        lines.append(
            f"{r['schedule']:<28}{cell('pixel_l2'):<19}{cell('ssim'):<39}"
            f"{cell('latent_l2'):<19}{cell('latent_scale_free'):<19}{r['last_step_std']:.4f}"
        )
    lines.append(
        "scale-free = latent L2 / (sqrt(2) x latent RMS): 1 = as far apart as independent draws "
        "of that size; last-step std = noise the last step leaves in the latents"
    )
    lines.append("")
    lines.append("noise level per step (first group; 'window N steps' draws its start per prompt):")
    for r in report["rows"]:
        levels = " ".join(f"{v:.2f}" for v in r["levels"][0])
        lines.append(f"  {r['schedule']:<26}{levels}   mean {r['mean_level']:.3f}")
    lines.append("")
    noisy = [r for r in report["rows"] if r["schedule"] != "ode"]
    most = {
        "pixel_l2": max(noisy, key=lambda r: r["pixel_l2"])["schedule"],
        "ssim": min(noisy, key=lambda r: r["ssim"])["schedule"],
        "latent_l2": max(noisy, key=lambda r: r["latent_l2"])["schedule"],
        "latent_scale_free": max(noisy, key=lambda r: r["latent_scale_free"])["schedule"],
    }
    lines.append(
        f"most diverse noisy schedule: by pixel L2 '{most['pixel_l2']}', by SSIM '{most['ssim']}', "
        f"by latent L2 '{most['latent_l2']}', scale-free '{most['latent_scale_free']}'"
    )
    for other, d in report["decaying_minus"].items():
        lines.append(
            f"decaying - {other:<20} per prompt: pixel L2 {d['pixel_l2']:+.4f} +- "
            f"{d['pixel_l2_std']:.4f}, SSIM {d['ssim']:+.4f} +- {d['ssim_std']:.4f}, "
            f"latent L2 {d['latent_l2']:+.4f} +- {d['latent_l2_std']:.4f}, scale-free "
            f"{d['latent_scale_free']:+.4f} +- {d['latent_scale_free_std']:.4f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; prints the table and returns the figures (also written by --json)."""
    args = parse_args(argv)
    import diffusers
    import transformers

    from vrl.models.diffusion import FlowMatchingAdapter
    from vrl.models.paths import cache_root
    from vrl.models.tiny_diffusion import tiny_pipeline_path

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        path = tiny_pipeline_path(args.family, args.cache_root or cache_root() / "tiny")
        adapter = FlowMatchingAdapter.from_pretrained(path, device=args.device)
        prompts = pick_prompts(args.prompts)
        measured = measure(adapter, prompts, args)
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)

    rows = measured["rows"]
    decaying = rows[2]["schedule"]
    report = {
        "setup": {
            "family": args.family,
            "prompts": args.prompts,
            "prompt_texts": prompts,
            "group_size": args.group_size,
            "steps": args.steps,
            "mean_noise": args.mean_noise,
            "window": args.window,
            "image_size": args.image_size,
            "guidance": args.guidance,
            "cfg_batch": args.guidance > 1.0 and not adapter.guidance_embedded,
            "seed": args.seed,
            "threads": threads,
            "device": str(adapter.device),
            "sigmas": measured["sigmas"],
            "seconds": time.perf_counter() - start,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "rows": rows,
        "decaying_minus": {
            r["schedule"]: paired_differences(rows, decaying, r["schedule"])
            for r in rows
            if r["schedule"] != decaying
        },
    }
    table = format_table(report)
    report["table"] = table
    print(table)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
