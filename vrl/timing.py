"""Timing helpers for the performance benchmarks: interleaved rounds, the model's share of a loop,
and overheads computed from paired rounds.

On a shared machine the same loop swings by 10-20% from one run to the next, far more than a
sampler's few percent of extra work. Two things make a small overhead measurable anyway:

- `time_interleaved` runs the compared functions once each per round, in an order that rotates
  from round to round, so that a change of load hits all of them; `overhead` reads the ratio both
  from the medians and from the per-round (paired) ratios, with their quartiles;
- `ModelClock` wraps a velocity function and adds up the seconds spent inside it; a loop's time
  minus its model time is what the loop itself costs (`outside_cost`), and the model's swings
  cancel within each round.

Every clock is a parameter (`time.perf_counter` and `time.process_time` by default), so the
arithmetic can be checked with fake clocks of known durations.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

Clock = Callable[[], float]


def synchronize(device: torch.device | None) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class ModelClock:
    """A velocity_fn that adds up the seconds spent inside it: the model's share of a loop.

    A loop's time minus its model time is what the loop itself costs (the sampler's steps, noise,
    log-probs, storage). On a shared machine the model's step time swings by 10-20% from one run
    to the next, far more than the sampler costs; subtracting it within each run leaves a figure
    that such swings do not reach.
    """

    def __init__(
        self,
        velocity_fn: Callable,
        device: torch.device | None = None,
        *,
        clock: Clock = time.perf_counter,
    ):
        self.velocity_fn, self.device, self.clock, self.seconds = velocity_fn, device, clock, 0.0

    def __call__(self, latents: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        synchronize(self.device)
        start = self.clock()
        v = self.velocity_fn(latents, sigma)
        synchronize(self.device)
        self.seconds += self.clock() - start
        return v


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    model_clock: ModelClock | None,
    warmup: int,
    repeats: int,
    device: torch.device | None = None,
    *,
    wall: Clock = time.perf_counter,
    cpu: Clock = time.process_time,
) -> dict[str, dict[str, list[float]]]:
    """Wall, process CPU and in-model seconds of each fn, one call of each per round, the order
    rotating from round to round; the first `warmup` rounds are dropped.

    Returns {name: {"seconds", "cpu_seconds", "model_seconds", "peak_mib"}: per timed round}.
    "model_seconds" is what `model_clock` counted during that call (0 for a fn that does not go
    through it); "peak_mib" is filled on CUDA only.
    """
    names = list(fns)
    keys = ("seconds", "cpu_seconds", "model_seconds", "peak_mib")
    times = {n: {k: [] for k in keys} for n in names}
    cuda = device is not None and device.type == "cuda"
    for r in range(warmup + repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            if model_clock is not None:
                model_clock.seconds = 0.0
            synchronize(device)
            start_wall, start_cpu = wall(), cpu()
            fns[name]()
            synchronize(device)
            seconds, cpu_seconds = wall() - start_wall, cpu() - start_cpu
            if r >= warmup:
                times[name]["seconds"].append(seconds)
                times[name]["cpu_seconds"].append(cpu_seconds)
                in_model = model_clock.seconds if model_clock is not None else 0.0
                times[name]["model_seconds"].append(in_model)
                if cuda:
                    times[name]["peak_mib"].append(torch.cuda.max_memory_allocated(device) / 2**20)
    return times


def overhead(a: list[float], b: list[float]) -> dict[str, float]:
    """(a) over (b) - 1: from the medians, and the median and quartiles of the per-round ratios
    (round i of a against round i of b)."""
    paired = [x / y - 1 for x, y in zip(a, b, strict=True)]
    q1, _, q3 = statistics.quantiles(paired, n=4) if len(paired) > 1 else [paired[0]] * 3
    return {
        "of_medians": statistics.median(a) / statistics.median(b) - 1,
        "paired_median": statistics.median(paired),
        "paired_q1": q1,
        "paired_q3": q3,
    }


def outside_ms_per_step(times: dict[str, list[float]], steps: int) -> float:
    """Median over rounds of a loop's seconds minus its in-model seconds, in ms per step: what the
    loop costs by itself."""
    outside = [w - m for w, m in zip(times["seconds"], times["model_seconds"], strict=True)]
    return 1000 * statistics.median(outside) / steps


def outside_cost(
    loop: dict[str, list[float]], baseline: dict[str, list[float]], steps: int
) -> dict[str, float]:
    """What `loop` costs outside the model beyond `baseline` (both `time_interleaved` rows):
    each one's ms per step outside the model, the difference, and that difference over the
    baseline's median loop time (the share of a loop it adds)."""
    loop_ms, baseline_ms = outside_ms_per_step(loop, steps), outside_ms_per_step(baseline, steps)
    extra_ms = loop_ms - baseline_ms
    return {
        "loop_ms_per_step": loop_ms,
        "baseline_ms_per_step": baseline_ms,
        "extra_ms_per_step": extra_ms,
        "share": extra_ms * steps / 1000 / statistics.median(baseline["seconds"]),
    }
