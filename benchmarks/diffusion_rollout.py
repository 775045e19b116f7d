"""Rollout cost of diffusion RL: the SDE sampler with log-probs next to a plain Euler loop.

    python benchmarks/diffusion_rollout.py                  # tiny SD3, about 3 minutes on 1 thread
    python benchmarks/diffusion_rollout.py --family flux --json rollout.json

A training rollout (a) is `vrl.samplers.sample(..., step="sde", schedule=ConstantNoise(0.7),
store_trajectory=True)`: every step draws noise, computes the Gaussian log-prob of the transition
in float32 and keeps the latent. The baseline (b) is the loop anyone would write to sample the same
model deterministically, `x = x + v * (s_next - s)`, with the same `velocity_fn`: no noise, no
log-probs, no stored trajectory. The diffusers pipeline's own `__call__` (c) is timed too, for
reference. The goal: an overhead (a) / (b) - 1 of at most 5%.

The same for all three: the model, prompt embeddings (encoded once, before timing), initial noise,
sigmas, guidance (SD3: CFG 4.5, one forward of the batch [uncond, cond]; FLUX: guidance embedded,
3.5), and the work measured: from initial noise to final latents. Prompt encoding and VAE decoding
are the same fixed cost on every side and are left out (the pipeline is given the embeddings and
the noise, with `output_type="latent"`). Each repeat runs the three in turn, in a rotating order, so
that a change of load on the machine hits all of them; warm-up rounds are dropped; figures are
medians over the timed repeats.

Two overheads are printed. End to end: (a) / (b) - 1 from the loop times, with the median and
quartiles of the per-round ratios. On a shared VM the model's step time alone swings by 10-20% from
one round to the next (process CPU time too, which is recorded in the JSON), far more than the
sampler costs, so this figure cannot resolve a few percent. Sampler overhead: the time spent inside
`velocity_fn` is clocked in every loop (`vrl.timing.ModelClock`) and subtracted, which leaves what
each loop costs by itself; (a) minus (b), over the Euler loop's time (`vrl.timing.outside_cost`),
is the overhead the goal is about, and the model's swings cancel within each run. It assumes that the sampler does not make the model
itself slower (through caches or allocations); the end-to-end figure would show a gross case.

Model size. The sampler's extra work per step is noise, a log-prob and a few elementwise operations
on the latents, a cost that does not depend on the model; its share of a step shrinks as the model
grows. So the same measurement runs on three models:
- "tiny": the tiny random pipeline as shipped (a 0.3M-parameter transformer);
- "wide": the same transformer class and config with 2x the layers and 2x the attention heads
  (2x the width), random weights: ~7x the parameters and ~4x the step time of "tiny", still a few
  seconds a loop on a CPU. A real SD3.5-Medium (2.5B parameters, 1024 image tokens) is far beyond
  both, so the overhead there is smaller still;
- "no model": a velocity field that returns a fixed tensor; (a) - (b) is then the sampler's own
  cost per step, which is what any model's step time has to be compared with.
`--image-size 64` (4x the latents) scales the sampler's work and the model's together.

Nothing is downloaded: the tiny pipelines are built locally.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

#### THE FIXED SETUP ####
FAMILY = "sd3"
NUM_IMAGES = 16
NUM_STEPS = 10
GUIDANCE = {"sd3": 4.5, "flux": 3.5}  # SD3: classifier-free guidance; FLUX.1-dev: embedded
NOISE_LEVEL = 0.7  # Flow-GRPO's a for SD3.5-M
IMAGE_SIZE = 32
THREADS = 1
WARMUP = 1
REPEATS = 15
WIDE_LAYERS = 2  # the "wide" model: this many times the layers ...
WIDE_HEADS = 2  # ... and the attention heads (width) of the tiny transformer
SEED = 0
OVERHEAD_GOAL = 0.05

METHODS = ("rollout", "euler", "pipeline")
LABELS = {
    "rollout": "(a) rollout: sde + log-probs + trajectory",
    "euler": "(b) plain Euler loop",
    "pipeline": "(c) diffusers pipeline __call__",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", choices=sorted(GUIDANCE), default=FAMILY, help="tiny model family")
    p.add_argument("--images", type=int, default=NUM_IMAGES, help="images per rollout (batch)")
    p.add_argument("--steps", type=int, default=NUM_STEPS, help="denoising steps")
    p.add_argument("--guidance", type=float, default=None, help="default: 4.5 SD3, 3.5 FLUX")
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="pixels (square)")
    p.add_argument("--threads", type=int, default=THREADS, help="torch intra-op CPU threads")
    p.add_argument("--warmup", type=int, default=WARMUP, help="untimed rounds run first")
    p.add_argument("--repeats", type=int, default=REPEATS, help="timed rounds (median taken)")
    p.add_argument("--wide-layers", type=int, default=WIDE_LAYERS, help="wide model: x layers")
    p.add_argument("--wide-heads", type=int, default=WIDE_HEADS, help="wide model: x heads")
    p.add_argument("--skip-wide", action="store_true", help="time the tiny model only")
    p.add_argument("--device", default="cpu", help="torch device (cuda: peak memory is reported)")
    p.add_argument("--seed", type=int, default=SEED, help="initial noise and SDE noise seed")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument(
        "--cache-root", type=Path, default=None, help="tiny model cache (default $VRL_CACHE/tiny)"
    )
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.images < 1 or args.steps < 1:
        p.error("need --repeats >= 1, --warmup >= 0, --images >= 1, --steps >= 1")
    if args.wide_layers < 1 or args.wide_heads < 1:
        p.error("--wide-layers and --wide-heads are multipliers >= 1")
    if args.guidance is None:
        args.guidance = GUIDANCE[args.family]
    return args


# ---------------------------------------------------------------------------------- the loops


@torch.no_grad()
def euler_loop(velocity_fn: Callable, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """(b): deterministic sampling as written by hand; (B, ...) final latents."""
    x = noise  # (B, ...)
    batch = x.shape[0]
    for i in range(sigmas.shape[0] - 1):
        v = velocity_fn(x, sigmas[i].expand(batch))  # (B, ...)
        x = x + v * (sigmas[i + 1] - sigmas[i])
    return x


def rollout(velocity_fn: Callable, noise: torch.Tensor, sigmas: torch.Tensor, seed: int):
    """(a): a training rollout, as the trainer samples it."""
    from vrl.samplers import ConstantNoise, sample

    generator = torch.Generator(noise.device).manual_seed(seed)
    return sample(
        velocity_fn,
        noise,
        sigmas,
        step="sde",
        schedule=ConstantNoise(NOISE_LEVEL),
        generator=generator,
        store_trajectory=True,
    )


def pipeline_call(adapter, embeds, negative, noise: torch.Tensor, args) -> torch.Tensor:
    """(c): the diffusers pipeline from the same embeddings and noise; final latents."""
    kwargs: dict[str, Any] = {
        "prompt_embeds": embeds.prompt_embeds,
        "pooled_prompt_embeds": embeds.pooled,
        "latents": noise,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "height": args.image_size,
        "width": args.image_size,
        "output_type": "latent",
        "return_dict": False,
    }
    if negative is not None:
        kwargs["negative_prompt_embeds"] = negative.prompt_embeds
        kwargs["negative_pooled_prompt_embeds"] = negative.pooled
    return adapter.pipeline(**kwargs)[0]


def wide_adapter(adapter, layers: int, heads: int, seed: int):
    """The same pipeline with a bigger random transformer of the same class and config."""
    config = {k: v for k, v in adapter.transformer.config.items() if not k.startswith("_")}
    config["num_layers"] *= layers
    config["num_attention_heads"] *= heads
    if "num_single_layers" in config:  # FLUX: single-stream blocks too
        config["num_single_layers"] *= layers
    if "caption_projection_dim" in config:  # SD3: text and image streams share a width
        config["caption_projection_dim"] = (
            config["num_attention_heads"] * config["attention_head_dim"]
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = type(adapter.transformer).from_config(config)
    transformer = transformer.to(adapter.device).eval()
    if transformer.dtype != adapter.dtype:
        transformer = transformer.to(adapter.dtype)
    pipeline = type(adapter.pipeline)(**{**adapter.pipeline.components, "transformer": transformer})
    return type(adapter)(pipeline, max_sequence_length=adapter.max_sequence_length)


def measure(
    name: str, adapter, velocity_fn: Callable, embeds, negative, noise, sigmas, args
) -> dict[str, Any]:
    """Time (a), (b) and, when there is a pipeline, (c) on one model; figures of that model."""
    from vrl.timing import ModelClock, outside_cost, overhead, time_interleaved

    device = noise.device
    steps = sigmas.shape[0] - 1
    clock = ModelClock(velocity_fn, device)
    fns: dict[str, Callable[[], Any]] = {
        "rollout": lambda: rollout(clock, noise, sigmas, args.seed + 1),
        "euler": lambda: euler_loop(clock, noise, sigmas),
    }
    if adapter is not None:
        fns["pipeline"] = lambda: pipeline_call(adapter, embeds, negative, noise, args)
    times = time_interleaved(fns, clock, args.warmup, args.repeats, device)

    trajectory = rollout(velocity_fn, noise, sigmas, args.seed + 1)
    stored = trajectory.latents.numel() * trajectory.latents.element_size()
    stored += trajectory.log_probs.numel() * trajectory.log_probs.element_size()
    row: dict[str, Any] = {
        "model": name,
        "params": (
            sum(p.numel() for p in adapter.transformer.parameters()) if adapter is not None else 0
        ),
        "trajectory_kib": stored / 1024,
        "trajectory_shape": list(trajectory.latents.shape),
        "log_probs_finite": bool(torch.isfinite(trajectory.log_probs).all()),
        "times": times,
    }
    for method, t in times.items():
        row[f"{method}_median_s"] = statistics.median(t["seconds"])
        row[f"{method}_median_cpu_s"] = statistics.median(t["cpu_seconds"])
        if t["peak_mib"]:
            row[f"{method}_peak_mib"] = max(t["peak_mib"])
    row["overhead"] = overhead(times["rollout"]["seconds"], times["euler"]["seconds"])
    row["overhead_cpu"] = overhead(times["rollout"]["cpu_seconds"], times["euler"]["cpu_seconds"])
    # what each loop costs outside the model, per step, and the rollout's extra over the Euler loop
    cost = outside_cost(times["rollout"], times["euler"], steps)
    row["rollout_outside_ms_per_step"] = cost["loop_ms_per_step"]
    row["euler_outside_ms_per_step"] = cost["baseline_ms_per_step"]
    row["sampler_ms_per_step"] = cost["extra_ms_per_step"]
    row["sampler_overhead"] = cost["share"]
    if adapter is not None:
        # the pipeline and the hand-written loop must be the same computation
        diff = pipeline_call(adapter, embeds, negative, noise, args) - euler_loop(
            velocity_fn, noise, sigmas
        )
        row["pipeline_vs_euler_max_abs"] = float(diff.abs().max())
    return row


# ---------------------------------------------------------------------------------- report


def quiet_loading() -> None:
    """No progress bars while the pipeline loads: the table is the output."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def format_table(report: dict[str, Any]) -> str:
    s = report["setup"]
    guidance = (
        f"CFG {s['guidance']} (one forward of {2 * s['images']})"
        if s["cfg_batch"]
        else f"guidance {s['guidance']} embedded (one forward of {s['images']})"
    )
    lines = [
        f"Rollout cost, tiny random {s['family'].upper()}: {s['images']} images x {s['steps']} "
        f"steps, {s['image_size']}x{s['image_size']} px, {guidance}, {s['threads']} thread"
        f"{'s' if s['threads'] != 1 else ''}, {s['device']}; {s['warmup']} warm-up + "
        f"{s['repeats']} timed rounds, interleaved; medians",
        f"(a) sample(step='sde', ConstantNoise({s['noise_level']}), store_trajectory=True)  "
        f"(b) x = x + v * (s_next - s)  (c) pipeline(prompt_embeds=..., latents=..., "
        f"output_type='latent')",
    ]
    if s.get("load_average_before"):
        load = ", ".join(f"{x:.2f}" for x in s["load_average_before"])
        lines.append(f"load average before the run (1, 5, 15 min): {load}")
    lines.append("")
    lines.append(
        f"{'':<19}{'wall seconds per loop':<28}{'(a)/(b) - 1, end to end':<36}"
        f"{'outside the model, ms/step':<30}sampler"
    )
    lines.append(
        f"{'model':<10}{'params':>7} {'(a)':>9}{'(b)':>9}{'(c)':>9}  {'of medians':>11}"
        f"{'paired [IQR]':>23}  {'(a)':>9}{'(b)':>9}{'(a)-(b)':>10}  {'overhead':>9}"
    )
    for r in report["rows"]:
        params = f"{r['params'] / 1e6:.2f}M" if r["params"] else "-"
        pipe = f"{r['pipeline_median_s']:.4f}" if "pipeline_median_s" in r else "-"
        o = r["overhead"]
        ratio, share = f"{o['of_medians']:+.1%}", f"{r['sampler_overhead']:+.1%}"
        paired = f"{o['paired_median']:+.1%} [{o['paired_q1']:+.1%}, {o['paired_q3']:+.1%}]"
        if not r["params"]:  # against a free model a ratio says nothing: see the ms/step
            ratio, paired, share = "-", "-", "-"
        lines.append(
            f"{r['model']:<10}{params:>7} {r['rollout_median_s']:>9.4f}{r['euler_median_s']:>9.4f}"
            f"{pipe:>9}  {ratio:>11}{paired:>23}  {r['rollout_outside_ms_per_step']:>9.3f}"
            f"{r['euler_outside_ms_per_step']:>9.3f}{r['sampler_ms_per_step']:>10.3f}  {share:>9}"
        )
    lines.append("")
    goal = s["overhead_goal"]
    for r in report["rows"]:
        if r["params"]:
            o = r["overhead"]
            verdict = "met" if r["sampler_overhead"] <= goal else "NOT met"
            lines.append(
                f"{r['model']}: sampler overhead {r['sampler_overhead']:+.1%} of the Euler loop "
                f"(goal <= {goal:.0%}: {verdict}); end to end {o['paired_median']:+.1%} "
                f"(paired median; IQR {o['paired_q1']:+.1%} .. {o['paired_q3']:+.1%}); "
                f"pipeline vs Euler loop max |diff| {r['pipeline_vs_euler_max_abs']:.1e}"
            )
        else:
            lines.append(
                f"{r['model']}: the sampler costs {r['sampler_ms_per_step']:.3f} ms/step more than "
                f"the Euler update; with a model step of T ms the overhead is about that / T"
            )
    first = report["rows"][0]
    lines.append(
        f"stored per rollout: latents {tuple(first['trajectory_shape'])} + log-probs = "
        f"{first['trajectory_kib']:.0f} KiB"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; prints the table and returns the figures (also written by --json)."""
    args = parse_args(argv)
    quiet_loading()
    from vrl.data.t2i import prompt_texts, synthetic_prompts
    from vrl.models.diffusion import FlowMatchingAdapter
    from vrl.models.paths import cache_root
    from vrl.models.tiny_diffusion import tiny_pipeline_path

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        path = tiny_pipeline_path(args.family, args.cache_root or cache_root() / "tiny")
        adapter = FlowMatchingAdapter.from_pretrained(path, device=args.device)
        device = adapter.device
        shapes = prompt_texts(synthetic_prompts("shapes"))
        prompts = [shapes[i % len(shapes)] for i in range(args.images)]
        size = (args.image_size, args.image_size)
        cfg_batch = args.guidance > 1.0 and not adapter.guidance_embedded

        embeds = adapter.encode_prompts(prompts)
        negative = adapter.negative_embeds(args.images) if cfg_batch else None
        sigmas = adapter.sigmas(args.steps, *size)
        noise = adapter.initial_noise(
            args.images, *size, torch.Generator(device).manual_seed(args.seed)
        )

        models = [("tiny", adapter)]
        if not args.skip_wide:
            models.append(("wide", wide_adapter(adapter, args.wide_layers, args.wide_heads, 1)))
        load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
        rows = []
        for name, model in models:
            velocity_fn = model.velocity_fn(model.transformer, embeds, args.guidance, negative)
            rows.append(measure(name, model, velocity_fn, embeds, negative, noise, sigmas, args))
        constant_velocity = torch.randn(noise.shape, generator=torch.Generator().manual_seed(2))
        constant_velocity = constant_velocity.to(device)
        rows.append(
            measure(
                "no model", None, lambda x, s: constant_velocity, None, None, noise, sigmas, args
            )
        )
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)

    report = {
        "setup": {
            "family": args.family,
            "images": args.images,
            "steps": args.steps,
            "image_size": args.image_size,
            "guidance": args.guidance,
            "cfg_batch": cfg_batch,
            "noise_level": NOISE_LEVEL,
            "threads": threads,
            "device": str(device),
            "warmup": args.warmup,
            "repeats": args.repeats,
            "wide": {"layers_x": args.wide_layers, "heads_x": args.wide_heads},
            "seed": args.seed,
            "overhead_goal": OVERHEAD_GOAL,
            "load_average_before": load_before,  # other jobs on the machine skew wall time
        },
        "rows": rows,
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
