"""Seconds per GRPO step and peak memory: vrl's trainer next to trl's GRPOTrainer.

    python benchmarks/grpo_step.py                 # both setups; trl when installed (`peers` extra)
    python benchmarks/grpo_step.py --setups tiny --skip-trl --steps 3 --json bench.json
    python benchmarks/grpo_step.py --table bench.json    # the table of a saved report, no run

Two fixed setups (`SETUPS`), the same on every side: random Qwen2.5-VL models built offline, the
synthetic "is the image red?" data set, 4 prompts x 8 completions per step, every completion
exactly as long as the setup says, full fine-tuning of the language model with the vision tower
frozen, AdamW at lr 1e-5, one CPU thread:

- tiny: the tests' 1.9M-parameter model, 56 px images (4 image tokens), 24-token completions;
- realistic: VLM-R1's proportions at a CPU's scale, a wider model (width 256, 4 vision blocks,
  8.3M parameters), 448 px images (256 image tokens), 128-token completions.

Three trainers per setup and beta: vrl; vrl with `rollout.share_prompts=false` (the vision tower
per sample, a prefill per sample and prompt + completion per sample in the loss forward, what vrl
did before it shared them: the "before" of the same run); trl. A few warm-up steps are run and
dropped, then N steps are timed.

How the two sides are made comparable (beyond the shared constants below):
- Completion length is forced the same way on both sides: `min_new_tokens = max_new_tokens = 24`
  in the `GenerationConfig` (EOS is masked until the 24th token). vrl's adapter pins
  `min_new_tokens=0`, so the vrl worker patches `VLMAdapter.generation_config`; trl gets it through
  `generation_kwargs`. The same placeholder tokens (image pad, video pad, vision start) are
  suppressed while sampling on both sides.
- One generation batch of 32 sequences and one forward/backward of 32 per step on both sides:
  vrl `optim.micro_batch_size=32`; trl `per_device_train_batch_size=32`, gradient accumulation 1.
- Gradient checkpointing off (trl turns it on by default), no mixed precision, float32 weights,
  no logging/reporting/checkpointing inside the timed steps, the same loss normaliser ("grpo"),
  AdamW betas (0.9, 0.99), constant LR, grad clipping 1.0.
- Each trainer runs in its own fresh subprocess, so peak RSS (`ru_maxrss`) is that trainer's alone
  (imports included: `import_rss_mib` in the JSON says how much of it is just the libraries).
- vrl's time is the `seconds` its trainer writes per step (rollout + reward + training). trl's time
  is from `on_step_begin` to `on_step_end` of a `TrainerCallback`; that leaves out the dataloader
  fetch before `on_step_begin`, so the JSON also has trl's end-to-end interval between steps.
- Wall time is the headline. The process CPU time per step is printed next to it: with one thread
  it moves much less than wall time when other jobs share the cores.
- Left as each library does it: trl also computes token entropies in its loss forward (its
  fused LM head), vrl only log-softmaxes the completion logits; trl runs the frozen vision tower
  on all 32 (repeated) images in generation and again in each loss forward and prefills each
  prompt 8 times, vrl runs it once per distinct image per step, prefills each prompt once, and in
  its loss (and reference) forward runs each prompt once for its group, the completions on its
  cache.

Nothing is downloaded: the model, tokenizer and data are built locally.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

#### THE FIXED SETUPS ####
FAMILY = "qwen2_5_vl"


@dataclass(frozen=True)
class Setup:
    """One model and step shape, the same for every trainer."""

    description: str
    width: int  # text and vision width (vrl.models.tiny.tiny_vlm_config)
    layers: int  # text decoder blocks
    vision_depth: int  # vision blocks
    image: int  # image side in pixels; (image / 28)^2 image tokens after the 2x2 merge
    prompts: int  # distinct prompts per step
    group_size: int  # completions per prompt (G)
    new_tokens: int  # every completion is exactly this long
    warmup: int  # untimed steps
    steps: int  # timed steps

    @property
    def image_tokens(self) -> int:
        return (self.image // 28) ** 2


SETUPS: dict[str, Setup] = {
    # the committed tiny model of the tests (56 px images: 4 image tokens)
    "tiny": Setup("tiny Qwen2.5-VL", 128, 4, 2, 56, 4, 8, 24, 2, 10),
    # VLM-R1's proportions at a CPU's scale: 256 image tokens a prompt, 128-token completions
    "realistic": Setup("wider Qwen2.5-VL", 256, 4, 4, 448, 4, 8, 128, 1, 3),
}
BETAS = (0.0, 0.04)  # KL weight; 0 = no reference model
NUM_ITERATIONS = 1
LEARNING_RATE = 1e-5
TEMPERATURE = 1.0
THREADS = 1
DATA_SIZE = 64
DATA_SEED = 0
ASKED_COLOUR = "red"
TEMPLATE = "plain"
REWARD = "accuracy"
SEED = 0

MIB = 1024 * 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS),
                   help="model and step shapes to measure (SETUPS)")  # fmt: skip
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: the setup's)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default: the setup's)")
    p.add_argument("--threads", type=int, default=THREADS, help="torch intra-op CPU threads")
    p.add_argument("--prompts", type=int, default=None, help="prompts per step")
    p.add_argument("--group-size", type=int, default=None, help="completions per prompt")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens per completion")
    p.add_argument(
        "--betas", type=float, nargs="+", default=list(BETAS), help="KL weights to measure"
    )
    p.add_argument("--lr", type=float, default=LEARNING_RATE, help="AdamW learning rate")
    p.add_argument("--skip-trl", action="store_true", help="measure vrl only")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument(
        "--table", type=Path, default=None, help="print the table of a saved --json report; no run"
    )
    p.add_argument(
        "--cache-root",
        type=Path,
        default=None,
        help="where the tiny model is built once (default: vrl's cache, $VRL_CACHE/tiny)",
    )
    p.add_argument(
        "--work-dir", type=Path, default=None, help="data and run folders (default: a temp dir)"
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # JSON spec of one run
    args = p.parse_args(argv)
    if (args.steps is not None and args.steps < 1) or (args.warmup is not None and args.warmup < 0):
        p.error("need --steps >= 1 and --warmup >= 0")
    return args


# ---------------------------------------------------------------------------------- workers


def run_vrl(spec: dict[str, Any]) -> dict[str, Any]:
    """Drive the real vrl trainer; its metrics.jsonl has the wall time of every step."""
    from vrl.config import build_config
    from vrl.models.vlm import VLMAdapter
    from vrl.trainers.common import MetricsWriter, read_metrics
    from vrl.trainers.vlm_config import VLMTrainConfig
    from vrl.trainers.vlm_grpo import train

    # The adapter pins min_new_tokens=0; force every completion to the full length, as on trl.
    original = VLMAdapter.generation_config

    def fixed_length_generation_config(self, *, max_new_tokens: int, **kwargs):
        config = original(self, max_new_tokens=max_new_tokens, **kwargs)
        config.min_new_tokens = max_new_tokens
        return config

    VLMAdapter.generation_config = fixed_length_generation_config

    # The trainer writes one metrics record per step: the process CPU time between two writes is
    # a step's CPU time, which other people's load on the machine barely changes (1 thread).
    cpu_marks: list[float] = []
    write = MetricsWriter.write

    def write_and_mark(self, record):
        cpu_marks.append(time.process_time())
        write(self, record)

    MetricsWriter.write = write_and_mark

    steps = spec["warmup"] + spec["steps"]
    batch = spec["prompts"] * spec["group_size"]
    cfg = build_config(
        VLMTrainConfig,
        {
            "model": {
                "path": spec["model_path"],
                "dtype": "float32",
                "freeze_vision": True,
                "gradient_checkpointing": False,
                "lora": {"enabled": False},
            },
            "data": {"train_files": spec["jsonl"], "template": TEMPLATE},
            "rollout": {"share_prompts": spec["trainer"] != "vrl-plain"},
            "grpo": {
                "group_size": spec["group_size"],
                "prompts_per_step": spec["prompts"],
                "num_iterations": NUM_ITERATIONS,
                "beta": spec["beta"],
                "loss_aggregation": "grpo",
                "max_completion_length": spec["new_tokens"],
                "temperature": TEMPERATURE,
                "rewards": {REWARD: 1.0},
            },
            "optim": {"lr": spec["lr"], "micro_batch_size": batch, "max_grad_norm": 1.0},
            "run": {
                "output_dir": spec["run_dir"],
                "max_steps": steps,
                "seed": SEED,
                "save_every": 0,  # the one checkpoint comes after the last timed step
                "save_final": False,
            },
        },
        origin="benchmark",
    )
    summary = train(cfg)
    records = read_metrics(Path(spec["run_dir"]) / "metrics.jsonl")
    if len(records) != steps:
        raise RuntimeError(f"expected {steps} metric records, found {len(records)}")
    warm = spec["warmup"]
    timed = records[warm:]
    model = summary.get("model")  # the trained model, for the parameter counts
    return {
        "seconds": [r["seconds"] for r in timed],
        "cpu_seconds": [b - a for a, b in pairwise(cpu_marks[max(warm - 1, 0) :])],
        "completion_length": statistics.fmean(r["completion_length"] for r in timed),
        "params": sum(p.numel() for p in model.parameters()) if model is not None else None,
        "trainable_params": (
            sum(p.numel() for p in model.parameters() if p.requires_grad)
            if model is not None
            else None
        ),
    }


def worker_main(spec: dict[str, Any]) -> None:
    """Entry point of one subprocess: one trainer at one beta; writes its figures as JSON."""
    import torch

    torch.set_num_threads(spec["threads"])
    import_rss = _current_rss_mib()
    import logging
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("vrl").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    if spec["trainer"] == "trl":
        from grpo_step_trl import run_trl  # beside this file: only the trl worker needs it

        run = run_trl
    else:
        run = run_vrl
    result = run(spec)
    result["threads"] = torch.get_num_threads()
    result["import_rss_mib"] = import_rss
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    if torch.cuda.is_available():
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / MIB
    Path(spec["result"]).write_text(json.dumps(result))


def _current_rss_mib() -> float:
    """Resident set size now (Linux /proc); NaN elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return math.nan
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


# ---------------------------------------------------------------------------------- driver


def run_in_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one trainer in a fresh interpreter, so that its peak memory is its own."""
    env = dict(os.environ)
    # nothing may be downloaded; an accidental hub call must fail fast
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(spec["threads"]),
        MKL_NUM_THREADS=str(spec["threads"]),
    )
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise RuntimeError(f"{spec['trainer']} worker (beta={spec['beta']}) failed:\n{tail}")
    return json.loads(Path(spec["result"]).read_text())


def trl_version() -> str | None:
    """The installed trl's version, or None; checked without importing trl."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trl")
    except PackageNotFoundError:
        return None


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    seconds = result["seconds"]
    return {
        **result,
        "median_s": statistics.median(seconds),
        "mean_s": statistics.fmean(seconds),
        "median_cpu_s": statistics.median(result["cpu_seconds"]) if result["cpu_seconds"] else None,
    }


TRAINER_LABELS = {"vrl": "vrl", "vrl-plain": "vrl, unshared"}
"""vrl-plain: vrl with rollout.share_prompts=false, the tower, the prefill and the loss forward's
prompt per sample (what vrl did before it shared them: the "before" of the same run)."""


def format_setup(name: str, s: dict[str, Any], rows_by_beta: dict[str, Any]) -> list[str]:
    size = (
        f"{s['params'] / 1e6:.1f}M params, {s['trainable_params'] / 1e6:.1f}M trained"
        if s.get("params") is not None
        else "size unknown"
    )
    tokens = f", {s['image_tokens']} image tokens" if "image_tokens" in s else ""
    lines = [
        f"[{name}] GRPO step, {s.get('description', 'tiny Qwen2.5-VL')} ({size}{tokens}), "
        f"{s['prompts']} prompts x {s['group_size']} completions x {s['new_tokens']} tokens, "
        f"{s['threads']} thread{'s' if s['threads'] != 1 else ''}, {s['device']}; "
        f"{s['warmup']} warm-up + {s['steps']} timed steps",
    ]
    memory = "peak CUDA MiB" if s["device"] == "cuda" else "peak RSS MiB"
    for beta, rows in rows_by_beta.items():
        lines += ["", f"beta={beta}"]
        lines.append(
            f"{'trainer':<16}{'median s/step':<15}{'mean s/step':<13}{memory:<14}median CPU s/step"
        )
        for trainer, r in rows.items():
            mem = r.get("peak_cuda_mib", r["peak_rss_mib"])
            label = f"trl {r['version']}" if trainer == "trl" else TRAINER_LABELS[trainer]
            cpu = f"{r['median_cpu_s']:.3f}" if r.get("median_cpu_s") is not None else "-"
            lines.append(f"{label:<16}{r['median_s']:<15.3f}{r['mean_s']:<13.3f}{mem:<14.0f}{cpu}")
        if "vrl-plain" in rows:
            speedup = rows["vrl-plain"]["median_s"] / rows["vrl"]["median_s"]
            lines.append(f"vrl unshared/shared: {speedup:.2f}")
        if "trl" in rows:
            ratio = rows["trl"]["median_s"] / rows["vrl"]["median_s"]
            lines.append(f"ratio trl/vrl: {ratio:.2f} (goal >= 1.5)")
            cpu_vrl, cpu_trl = rows["vrl"].get("median_cpu_s"), rows["trl"].get("median_cpu_s")
            if cpu_vrl and cpu_trl:
                lines.append(f"ratio of CPU time, trl/vrl: {cpu_trl / cpu_vrl:.2f}")
            between = rows["trl"].get("seconds_end_to_end")
            if between:
                lines.append(
                    f"(trl between step ends, dataloader included: median "
                    f"{statistics.median(between):.3f} s)"
                )
    return lines


def format_table(report: dict[str, Any]) -> str:
    if "setups" not in report:  # a report of the single-setup benchmark (before 2026-12-06)
        setups = {"tiny": (report["setup"], report["results"])}
    else:
        setups = {n: (report["setups"][n], report["results"][n]) for n in report["setups"]}
    lines: list[str] = []
    load = report.get("load_average_before") or next(iter(setups.values()))[0].get(
        "load_average_before"
    )
    if load:
        lines.append(
            f"load average before the run (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in load)}"
        )
    for name, (setup, rows) in setups.items():
        lines += ["", *format_setup(name, setup, rows)]
    if report["trl_skipped"]:
        lines += ["", report["trl_skipped"]]
    return "\n".join(lines).strip("\n")


def setup_of(args: argparse.Namespace, name: str) -> Setup:
    """The named setup with the command line's overrides."""
    overrides = {
        k: getattr(args, k)
        for k in ("steps", "warmup", "prompts", "group_size", "new_tokens")
        if getattr(args, k) is not None
    }
    return replace(SETUPS[name], **overrides)


def setup_model(name: str, setup: Setup, root: Path) -> Path:
    """The setup's model folder, built once under `root` (the tiny one is the tests' model)."""
    from vrl.models.tiny import tiny_vlm_path

    if name == "tiny":
        return tiny_vlm_path(FAMILY, root)
    from vrl.models.build_cache import build_once

    target = (
        root / f"bench-{name}-w{setup.width}-l{setup.layers}-v{setup.vision_depth}-{setup.image}px"
    )
    return build_once(target, "model.safetensors", lambda folder: _save_model(setup, folder))


def _save_model(setup: Setup, folder: Path) -> Path:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vrl.models.tiny import _special_ids, build_tiny_processor, tiny_vlm_config

    processor = build_tiny_processor(FAMILY, max_pixels=setup.image * setup.image)
    ids = _special_ids(processor.tokenizer)
    config = tiny_vlm_config(
        FAMILY, len(processor.tokenizer), width=setup.width, layers=setup.layers,
        vision_depth=setup.vision_depth, pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def run_all(
    args: argparse.Namespace, setup: Setup, trainers: list[str], work: Path, model_path: Path,
    jsonl: Path,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every trainer at every beta, each in its own subprocess; figures keyed by beta, trainer."""
    results: dict[str, dict[str, Any]] = {}
    for beta in args.betas:
        rows = {}
        for name in trainers:
            run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-beta{beta}-", dir=work))
            spec = {
                "trainer": name,
                "beta": beta,
                "model_path": str(model_path),
                "jsonl": str(jsonl),
                "run_dir": str(run_dir),
                "result": str(run_dir / "result.json"),
                "threads": args.threads,
                "warmup": setup.warmup,
                "steps": setup.steps,
                "prompts": setup.prompts,
                "group_size": setup.group_size,
                "new_tokens": setup.new_tokens,
                "lr": args.lr,
                "template": TEMPLATE,
                "temperature": TEMPERATURE,
                "num_iterations": NUM_ITERATIONS,
                "seed": SEED,
            }
            rows[name] = summarise(run_in_subprocess(spec))
        results[str(beta)] = rows
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; prints the table and returns the figures (also written by --json)."""
    args = parse_args(argv)
    if args.worker is not None:
        worker_main(json.loads(args.worker))
        return {}
    if args.table is not None:
        report = json.loads(args.table.read_text())
        print(format_table(report))
        return report

    import torch

    from vrl.data.synthetic import write_colour_yes_no
    from vrl.models.paths import cache_root

    trainers = ["vrl", "vrl-plain"]
    trl_skipped = ""
    if args.skip_trl:
        trl_skipped = "trl skipped (--skip-trl)"
    elif trl_version() is None:
        trl_skipped = "trl is not installed (pip install 'vrl[peers]'): vrl only"
    else:
        trainers.append("trl")

    temporary = args.work_dir is None
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="vrl-bench-grpo-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    setups, results = {}, {}
    try:
        for name in args.setups:
            setup = setup_of(args, name)
            # built here, once, so that no worker pays (or times) the build
            model_path = setup_model(name, setup, args.cache_root or cache_root() / "tiny")
            jsonl = write_colour_yes_no(
                work / f"data-{name}", n=DATA_SIZE, seed=DATA_SEED, size=setup.image,
                asked=ASKED_COLOUR,
            )  # fmt: skip
            results[name] = run_all(args, setup, trainers, work, model_path, jsonl)
            counted = [r for rows in results[name].values() for r in rows.values()]
            setups[name] = {
                **asdict(setup),
                "family": FAMILY,
                "image_tokens": setup.image_tokens,
                "params": counted[0]["params"],
                "trainable_params": counted[0]["trainable_params"],
                "threads": args.threads,
                "device": "cuda" if torch.cuda.is_available() else "cpu",
                "lr": args.lr,
                "num_iterations": NUM_ITERATIONS,
            }
    finally:
        if temporary:  # the runs leave checkpoints behind
            shutil.rmtree(work, ignore_errors=True)

    report = {
        "setups": setups,
        "results": results,
        "trl_skipped": trl_skipped,
        "load_average_before": load_before,  # other jobs on the machine skew wall time
    }
    table = format_table(report)
    report["table"] = table
    print(table)
    for name, by_beta in results.items():
        for beta, rows in by_beta.items():
            for trainer, r in rows.items():
                if r["completion_length"] != setups[name]["new_tokens"]:
                    print(
                        f"warning: [{name}] {trainer} (beta={beta}) completions averaged "
                        f"{r['completion_length']:.2f} tokens, not {setups[name]['new_tokens']}"
                    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
