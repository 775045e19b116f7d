"""The `vrl` command: train, eval, quickstart, demo.

vrl train vlm --config configs/vlm_tiny_cpu.yaml optim.lr=1e-5 run.max_steps=20
vrl train vlm --help-config
vrl eval rec --model runs/vlm/final --data data/rec.jsonl --images data/images
vrl quickstart
vrl pretrain world-t2i --seed 0
vrl bench build hicoprompt --seed 0 && vrl bench eval hicoprompt --prompts F --images D --judge exact
vrl demo --model tiny-random:sd3 --lora runs/diffusion/final
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import traceback
from pathlib import Path

from vrl.config import config_help, load_config
from vrl.errors import VRLError


def _train(args: argparse.Namespace) -> int:
    if args.trainer == "vlm":
        from vrl.trainers.vlm_config import VLMTrainConfig as config_cls
    else:
        from vrl.trainers.diffusion_config import DiffusionTrainConfig as config_cls
    if args.help_config:
        print("\n".join(config_help(config_cls)))
        return 0
    overrides = list(args.overrides) + (["run.resume=true"] if args.resume else [])
    cfg = load_config(config_cls, args.config, overrides)
    if args.trainer == "vlm":
        from vrl.trainers.vlm_grpo import train
    else:
        from vrl.trainers.diffusion_grpo import train
    summary = train(cfg)
    printable = {k: v for k, v in summary.items() if isinstance(v, str | int | float | dict)}
    print(json.dumps(printable, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from vrl.data.vlm_r1 import load_vlm_r1_jsonl
    from vrl.evaluate import evaluate_answers, evaluate_rec
    from vrl.models.paths import resolve_model_path
    from vrl.models.vlm import VLMAdapter

    samples = load_vlm_r1_jsonl(args.data, args.images, skip_bad_lines=args.skip_bad_lines)
    if args.max_samples:
        samples = samples[: args.max_samples]
    adapter = VLMAdapter.from_pretrained(resolve_model_path(args.model))
    model = adapter.model
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter)
    out = Path(args.out)
    kw = dict(
        per_sample_path=out / "samples.jsonl",
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
    )
    if args.task == "rec":
        summary = evaluate_rec(adapter, model, samples, args.template or "rec", **kw)
    else:
        summary = evaluate_answers(adapter, model, samples, args.template or "answer_only", **kw)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from vrl.quickstart import run_quickstart

    run_quickstart(
        Path(args.out),
        seed=args.seed,
        steps=args.steps,
        hicogen_steps=args.hicogen_steps,
        halves=(args.only,) if args.only else ("vlm", "hicogen"),
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from vrl.demo.app import run_from_args  # Gradio loads only for this command

    return run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vrl", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run an RL trainer from a YAML recipe")
    train_sub = train.add_subparsers(dest="trainer", required=True)
    for name, text in (
        ("vlm", "VLM-R1 GRPO for vision-language models"),
        ("diffusion", "GRPO for flow-matching text-to-image models (SD3, FLUX)"),
    ):
        trainer = train_sub.add_parser(name, help=text)
        trainer.add_argument("--config", help="YAML recipe (see configs/)")
        trainer.add_argument(
            "--resume", action="store_true", help="continue from the last checkpoint"
        )
        trainer.add_argument("--help-config", action="store_true", help="list every setting, exit")
        trainer.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-5")
        trainer.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="evaluate a VLM with greedy decoding")
    ev.add_argument(
        "task", choices=["rec", "answers"], help="rec: Acc@IoU>=0.5; answers: accuracy reward"
    )
    ev.add_argument("--model", required=True, help="model folder, hub id, or tiny-random:<family>")
    ev.add_argument("--adapter", help="a LoRA adapter folder written by training (final/)")
    ev.add_argument(
        "--data",
        required=True,
        help="VLM-R1 data: .jsonl, .json arrays or a data config .yaml, ':'-separated",
    )
    ev.add_argument("--images", default=None, help="image folder(s), ':'-separated")
    ev.add_argument("--template", default=None, help="prompt template (default: rec / answer_only)")
    ev.add_argument("--out", default="runs/eval", help="folder for summary.json and samples.jsonl")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--max-new-tokens", type=int, default=128)
    ev.add_argument(
        "--max-samples", type=int, default=0, help="evaluate only the first N (0 = all)"
    )
    ev.add_argument("--skip-bad-lines", action="store_true")
    ev.set_defaults(func=_eval)

    qs = sub.add_parser(
        "quickstart", help="the embedded default job: both trainers on the shapes world, CPU"
    )
    qs.add_argument("--out", default="runs/quickstart", help="run folder")
    qs.add_argument("--seed", type=int, default=0)
    qs.add_argument(
        "--steps", type=int, default=None, help="VLM GRPO steps (default: the recipe's)"
    )
    qs.add_argument(
        "--hicogen-steps", type=int, default=None, help="HiCoGen steps (default: the recipe's)"
    )
    qs.add_argument(
        "--only", choices=["vlm", "hicogen"], default=None, help="run one half (default: both)"
    )
    qs.set_defaults(func=_quickstart)

    from vrl.pretrain import add_parser as add_pretrain_parser  # modules load on use

    add_pretrain_parser(sub)

    from vrl.bench.cli import add_parser as add_bench_parser  # argparse only: nothing heavy

    add_bench_parser(sub)

    from vrl.demo.settings import add_demo_arguments  # stdlib only: no Gradio, no torch

    demo = sub.add_parser("demo", help="the Gradio demo: watch the chain of synthesis (HiCoGen)")
    add_demo_arguments(demo)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except Exception as err:  # noqa: BLE001 - the user gets one line, never a traceback
        print(f"vrl: {error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vrl: interrupted", file=sys.stderr)
        return 130


def error_line(err: BaseException) -> str:
    """The one line `vrl` prints for an error.

    The user's mistakes (`VRLError`: config, data, run folder) and files that cannot be read are
    their message alone (a data error lists its bad lines, one per line). Anything else also gets its type, and its traceback goes to a file named
    in the line, so that a failed run loses nothing and the console stays readable."""
    if isinstance(err, VRLError):
        return str(err)
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    with tempfile.NamedTemporaryFile(
        "w", prefix="vrl-traceback-", suffix=".txt", delete=False
    ) as f:
        traceback.print_exception(err, file=f)
    return f"{type(err).__name__}: {err} (traceback in {f.name})"


if __name__ == "__main__":
    sys.exit(main())
