"""How fast HiCoPrompt is built and judged: images per second of the exact judge on one core.

    python benchmarks/hicoprompt_judge.py                 # judge speed, about a minute
    python benchmarks/hicoprompt_judge.py --build         # also time the full build, per vocab

The judge is timed the way `vrl bench eval` runs it: `ExactJudge.answer` (the shapes world's
checker) on one PIL image at a time, then DSG scoring of its answers with and without
dependencies (`vrl.bench.scoring.score_questions`). Images are world renders of HiCoPrompt world
prompts (the test splits, rendered at `vrl.world.canvas_for(subjects)`: 32 px for 1-3 subjects,
64 or 128 px for 4-12), made before the clock starts; one thread, one process. The goal in
issue 6 is at least 200 images per second.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, before numpy / torch load

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def judge_speed(n_prompts: int, rounds: int, seed: int) -> list[dict]:
    import torch

    import vrl.world as world
    from vrl.bench.build import build_hicoprompt
    from vrl.bench.data import load_items
    from vrl.bench.judges import ExactJudge
    from vrl.bench.scoring import score_questions

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        splits = {"test_1-3": (n_prompts, 1, 3), "test": (n_prompts, 4, 12)}
        build_hicoprompt(tmp, seed=seed, vocab="world", splits=splits, workers=1)
        for split, label in (("test_1-3", "1-3 subjects"), ("test", "4-12 subjects")):
            items = load_items(Path(tmp) / "world" / f"{split}.jsonl")
            images = [
                world.render(it.scene, world.canvas_for(it.subject_count), seed=0) for it in items
            ]
            judge = ExactJudge()
            rates, correct = [], []
            for _ in range(rounds):
                t0 = time.process_time()
                for item, image in zip(items, images, strict=True):
                    (answers,) = judge.answer([image], [item.scene], [item.questions])
                    dep = score_questions(item.questions, answers)
                    score_questions(item.questions, answers, dependencies=False)
                    correct.append(dep.accuracy["all"])
                rates.append(len(items) / (time.process_time() - t0))
            rows.append(
                {
                    "images": label,
                    "canvas_px": sorted({im.size[0] for im in images}),
                    "questions_per_image": round(
                        statistics.mean(len(it.questions) for it in items), 1
                    ),
                    "images_per_s": round(statistics.median(rates), 1),
                    "rounds": [round(r, 1) for r in rates],
                    "ground_truth_accuracy": statistics.mean(correct),
                }
            )
    return rows


def build_speed(seed: int) -> list[dict]:
    from vrl.bench.build import SPLITS, build_hicoprompt

    rows = []
    for vocab in ("open", "world"):
        for workers in (1, os.cpu_count() or 1):
            with tempfile.TemporaryDirectory() as tmp:
                t0, c0 = time.perf_counter(), time.process_time()
                manifest = build_hicoprompt(tmp, seed=seed, vocab=vocab, workers=workers)[vocab]
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            files = manifest["files"]
            prompts = sum(f["prompts"] for n, f in files.items() if n[: -len(".jsonl")] in SPLITS)
            rows.append({"vocab": vocab, "workers": workers, "prompts": prompts,
                         "wall_s": round(wall, 1), "main_process_cpu_s": round(cpu, 1)})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=300, help="world prompts per size group")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build", action="store_true", help="also time the full benchmark build")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    result = {"judge": judge_speed(args.prompts, args.rounds, args.seed)}
    print("\nexact judge + DSG scoring, one thread (CPU time):")
    print("| images | canvas px | questions / image | images / s | rounds | ground-truth Acc_all |")
    print("|---|---|---|---|---|---|")
    for r in result["judge"]:
        print(f"| {r['images']} | {r['canvas_px']} | {r['questions_per_image']} | "
              f"{r['images_per_s']} | {r['rounds']} | {r['ground_truth_accuracy']:.3f} |")  # fmt: skip
    if args.build:
        result["build"] = build_speed(args.seed)
        print("\nfull build (15,000 prompts of 4-12 subjects + 1,500 of 1-3), per vocabulary:")
        print("| vocab | workers | prompts | wall s | main-process CPU s |")
        print("|---|---|---|---|---|")
        for r in result["build"]:
            print(f"| {r['vocab']} | {r['workers']} | {r['prompts']} | {r['wall_s']} | "
                  f"{r['main_process_cpu_s']} |")  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
