"""`vrl pretrain <model>`: reproduce one of the shapes world's tiny models from a fixed seed.

    vrl pretrain world-t2i     # text-to-image flow model (SD3 architecture) + its text encoders
    vrl pretrain world-vlm     # Qwen2.5-VL-architecture VLM + tokenizer, SFT on world tasks
    vrl pretrain world-vlm-rec # the same VLM, SFT on referring-expression grounding (boxes)
    vrl pretrain world-clip    # open_clip CLIP for the global reward
    vrl pretrain world-kontext # in-context model (FLUX.1 Kontext architecture), tiny VAE

One module per model and its training (``t2i``, ``vlm``, ``clip``, ``kontext``; ``grounding``
holds world-vlm-rec's recipe and evaluation sets); ``cards`` writes the model
cards and ``cli`` runs the commands. The committed checkpoints live in
``vrl/world/weights/world-<name>/``. Only the argument parser is defined here: the training
modules load when their command runs, so ``vrl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable
from pathlib import Path


def machine_description() -> str:
    """CPU model and core count, for model cards."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


MODELS: dict[str, tuple[str, str]] = {
    "world-t2i": ("t2i_main", "text-to-image flow model (SD3 architecture)"),
    "world-vlm": ("vlm_main", "Qwen2.5-VL-architecture VLM, SFT on world tasks"),
    "world-vlm-rec": (
        "vlm_rec_main",
        "the same VLM, SFT on referring-expression grounding (the refer task, boxes)",
    ),
    "world-clip": ("clip_main", "open_clip CLIP for the global reward"),
    "world-kontext": (
        "kontext_main",
        "in-context model (FLUX.1 Kontext architecture): draws a scene from reference images",
    ),
}


def add_parser(sub) -> None:
    """Register `vrl pretrain <model>` on the CLI's subparsers."""
    pretrain = sub.add_parser("pretrain", help="train one of the shapes world's tiny models")
    models = pretrain.add_subparsers(dest="model", required=True)
    for name, (runner, text) in MODELS.items():
        parser = models.add_parser(name, help=text)
        parser.set_defaults(func=_runner(runner))
        parser.add_argument("--out", default=None, help="output folder (default: a run folder)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        parser.add_argument(
            "--extra", nargs="*", default=[], help="model-specific key=value settings"
        )


def _runner(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from vrl.pretrain import cli

        return getattr(cli, name)(args)

    return run
