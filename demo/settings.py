"""What `vrl demo` is launched with: the model, the adapter, the reward, and the request limits.

Everything a page could abuse is fixed here, at launch: the model and adapter paths are never page
inputs, and every page input is checked against `Limits` before any compute is spent.
Importing this module loads neither Gradio nor torch (the `vrl` command builds its parser from it).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

DEFAULT_MODEL = "world:kontext"
"""The model `vrl demo` loads without --model: the committed in-context shapes-world checkpoint
(FLUX.1 Kontext architecture, 32 px: the chain runs in context; the quickstart's LoRA is trained
on it; a chain draws in about a second on a CPU). Also accepted: world:t2i (SD3, image-to-image
chain), a diffusers flow-matching pipeline folder, a hub id in the local cache, or
tiny-random:<sd3|flux|flux_kontext>."""

REWARD_CHOICES = ("auto", "world", "tiny-random", "none")
BOX_CHOICES = ("auto", "world", "none")


@dataclass(frozen=True)
class Limits:
    """Bounds on one request from the page; a request outside them is refused with a message."""

    max_prompt_chars: int = 300
    """Characters in a prompt (a scene of a dozen subjects fits in ~250)."""
    max_steps: int = 50
    """Denoising steps per pass of the chain."""
    max_images: int = 4
    """Images per request (one batch; each is drawn by the base model too when an adapter is loaded)."""
    max_guidance: float = 15.0
    """Classifier-free guidance scale."""
    max_units: int = 6
    """Synthesis units per chain: units past this are merged into the last one (not refused)."""
    concurrency: int = 1
    """Requests generating at once (they share one model; more would only split the CPU)."""
    max_queue: int = 16
    """Requests waiting in the queue; more are turned away with Gradio's "queue is full"."""

    def __post_init__(self) -> None:
        for name in ("max_prompt_chars", "max_steps", "max_images", "max_units", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"limits.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class DemoSettings:
    """The launch-time settings of the demo (paths are fixed here, never taken from the page)."""

    model: str = DEFAULT_MODEL
    """Diffusers flow-matching pipeline (SD3 / FLUX family) folder, hub id, world:t2i, or
    tiny-random:<family>."""
    lora: str | None = None
    """LoRA adapter written by `vrl train diffusion` (its final/ folder or the .safetensors file);
    the page then shows the base model and the tuned one side by side."""
    reward: str = "auto"
    """Reward backends: "world" (the shapes world's exact checkers, vrl.rewards.world),
    "tiny-random" (the hierarchical reward on tiny random models: real code, meaningless scores),
    "none", or "auto" (world when available, else tiny-random)."""
    decomposer: str | None = None
    """Local instruction-tuned LM folder for free-text prompts; shapes-world prompts are parsed by
    rules, and anything else falls back to a single unit without one."""
    device: str = "auto"
    """"auto" (the accelerator if there is one, else the CPU), "cpu", "cuda", ..."""
    size: int | None = None
    """Image height and width in pixels; default: 32 for tiny-random models, else the pipeline's."""
    default_steps: int | None = None
    """Steps shown when the page opens; default: 8 for tiny-random models, 20 for world: models,
    else 28."""
    default_guidance: float | None = None
    """Guidance shown when the page opens; default: 1 (off) for tiny-random models, else 4."""
    boxes: str = "auto"
    """Whether a chain in context shows each unit its boxes (`chain.boxes`): "world" (the shapes
    world's layout, for prompts it can lay out), "none", or "auto" (world for world: models,
    which are trained on them; other models never saw a box image)."""
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.reward not in REWARD_CHOICES:
            raise ValueError(f"reward must be one of {REWARD_CHOICES}, got {self.reward!r}")
        if self.boxes not in BOX_CHOICES:
            raise ValueError(f"boxes must be one of {BOX_CHOICES}, got {self.boxes!r}")

    @property
    def shows_boxes(self) -> bool:
        return self.boxes == "world" or (self.boxes == "auto" and self.model.startswith("world:"))

    @property
    def is_tiny(self) -> bool:
        return self.model.startswith("tiny-random:")

    @property
    def steps(self) -> int:
        world = self.model.startswith("world:")  # its model card: 20 ODE steps
        steps = self.default_steps or (8 if self.is_tiny else 20 if world else 28)
        return min(steps, self.limits.max_steps)

    @property
    def guidance(self) -> float:
        guidance = self.default_guidance or (1.0 if self.is_tiny else 4.0)
        return min(guidance, self.limits.max_guidance)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The `vrl demo` options (kept here so that vrl/cli.py only wires the subcommand)."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="diffusers flow-matching pipeline folder, world:kontext, world:t2i or "
        "tiny-random:<sd3|flux|flux_kontext> "
        f"(default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--lora", default=None, help="LoRA adapter folder from training (final/); safetensors only"
    )
    parser.add_argument(
        "--reward",
        default="auto",
        choices=REWARD_CHOICES,
        help="reward backends (auto: the shapes world's checkers when available, else tiny-random)",
    )
    parser.add_argument(
        "--decomposer", default=None, help="local instruction-tuned LM folder for free-text prompts"
    )
    parser.add_argument(
        "--boxes",
        default="auto",
        choices=BOX_CHOICES,
        help="chain in context: show each unit where its subjects go, laid out by the shapes "
        "world (auto: for world: models)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--size", type=int, default=None, help="image height and width in pixels")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--share",
        default="no",
        choices=["no", "yes"],
        help="yes: ask Gradio for a public share link (needs the internet)",
    )


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    return DemoSettings(
        model=args.model,
        lora=args.lora,
        reward=args.reward,
        decomposer=args.decomposer,
        boxes=args.boxes,
        device=args.device,
        size=args.size,
    )
