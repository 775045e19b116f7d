"""Images per second that the shapes world's exact checker scores on one CPU core.

    python benchmarks/world_checker.py                  # about 20 s
    python benchmarks/world_checker.py --images 400 --repeats 5 --json checker.json

Two settings: 32 px with 1-3 subjects (the tiny text-to-image model's world) and 128 px with
4-12 subjects (the benchmark's scenes). Scenes (with relations, outlines on a third of the
subjects, random backgrounds) are sampled and rendered first, outside the timing; then
``level_accuracy(scene, image)`` is timed over all of them, on PIL images and on (3, H, W) float
tensors (the reward's input), best of ``--repeats`` passes. One thread: ``torch.set_num_threads(1)``.
The goal is >= 200 images/s in every row. Wall time depends on the machine's load: write down
``uptime`` with the figures; the CPU-time column moves much less.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torchvision.transforms.functional import pil_to_tensor

from vrl.world import level_accuracy, render, sample_scene

SETTINGS = ((32, 1, 3), (128, 4, 12))  # (canvas px, min subjects, max subjects)


def _time(fn, repeats: int) -> tuple[float, float]:
    """Best (wall, cpu) seconds of ``repeats`` calls of ``fn``."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200, help="images per setting")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best is kept")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = []
    for size, low, high in SETTINGS:
        scenes = [
            sample_scene(
                seed,
                min_subjects=low,
                max_subjects=high,
                sub_attribute_prob=0.3,
                background="random",
                split="all",
                canvas=size,
            )
            for seed in range(args.images)
        ]
        images = [render(scene, size, seed) for seed, scene in enumerate(scenes)]
        tensors = [pil_to_tensor(image).float() / 255 for image in images]  # (3, H, W) in [0, 1]
        for kind, inputs in (("PIL", images), ("tensor", tensors)):
            results: list[dict] = []

            def score(scenes=scenes, inputs=inputs, results=results) -> None:
                results[:] = [level_accuracy(s, x) for s, x in zip(scenes, inputs, strict=True)]

            wall, cpu = _time(score, args.repeats)
            perfect = sum(all(v in (None, 1.0) for v in r.values()) for r in results)
            rows.append(
                {
                    "canvas": size,
                    "subjects": f"{low}-{high}",
                    "input": kind,
                    "images_per_s": len(scenes) / wall,
                    "images_per_cpu_s": len(scenes) / cpu,
                    "all_questions_right": f"{perfect}/{len(scenes)}",
                }
            )

    print(f"load: {os.getloadavg()[0]:.2f} (1-minute average), 1 thread")
    print(f"{'canvas':>6} {'subjects':>8} {'input':>6} {'img/s':>8} {'img/cpu-s':>9}  all right")
    for r in rows:
        print(
            f"{r['canvas']:>6} {r['subjects']:>8} {r['input']:>6} {r['images_per_s']:>8.0f} "
            f"{r['images_per_cpu_s']:>9.0f}  {r['all_questions_right']}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
