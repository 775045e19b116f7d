"""`vrl pretrain <model>`: reproduce one of the shapes world's tiny models from a fixed seed.

Each entry names a module with ``add_arguments(parser)`` and ``main(args) -> int``; the module is
imported only when its command runs, so `vrl --help` stays fast.

    vrl pretrain world-t2i     # text-to-image flow model (SD3 architecture) + its text encoders
    vrl pretrain world-vlm     # Qwen2.5-VL-architecture VLM + tokenizer, SFT on world tasks
    vrl pretrain world-clip    # open_clip CLIP for the global reward

Each prints its training time and held-out quality figures and writes a safetensors checkpoint
with a model card; the committed ones live in `vrl/world/weights/<name>/`.
"""

from __future__ import annotations

import argparse
import importlib

MODELS: dict[str, tuple[str, str]] = {
    "world-t2i": ("vrl.world.t2i_model", "text-to-image flow model (SD3 architecture)"),
    "world-vlm": ("vrl.world.vlm_model", "Qwen2.5-VL-architecture VLM, SFT on world tasks"),
    "world-clip": ("vrl.world.clip_model", "open_clip CLIP for the global reward"),
}


def add_parser(sub) -> None:
    """Register `vrl pretrain <model>` on the CLI's subparsers."""
    pretrain = sub.add_parser("pretrain", help="train one of the shapes world's tiny models")
    models = pretrain.add_subparsers(dest="model", required=True)
    for name, (module, text) in MODELS.items():
        parser = models.add_parser(name, help=text)
        parser.set_defaults(func=_runner(module), _module=module)
        parser.add_argument("--out", default=None, help="output folder (default: a run folder)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        parser.add_argument(
            "--extra", nargs="*", default=[], help="model-specific key=value settings"
        )


def _runner(module: str):
    def run(args: argparse.Namespace) -> int:
        return importlib.import_module(module).main(args)

    return run
