"""Where the chain of synthesis keeps and loses subjects, on the shapes world's held-out scenes.

    python experiments/hicogen_chain_stages.py --models world:t2i world:t2i-shapes
    python experiments/hicogen_chain_stages.py --models <a FluxKontextPipeline> --contexts in_context img2img

The HiCoGen half draws each two-subject scene as a chain: unit 1 (the first subject) from
noise, unit 2 (the second subject) from unit 1's canvas noised back to sigma = strength, then a
final pass with the whole prompt from unit 2's canvas (`--contexts img2img`, the only context a
stock text-to-image model can get); or in context, every pass from noise with the earlier unit
images as reference tokens (`in_context`, a model trained on reference tokens). This prints, per
model, context and way of writing the unit prompts (each unit's own subjects, the
quickstart's; relational: them placed against the earlier subjects; cumulative: every subject
so far; `--unit-prompts`):

- the share of the first subject found in unit 1's image, in unit 2's image and in the final
  image, i.e. whether a later pass keeps what an earlier one drew;
- per-level accuracy (exist, attribute, relation; DSG dependencies, exact checker) of unit 2's
  image, of the final image, and of one pass of the whole prompt from the same initial noise
  (flat: no chain).

Chains are deterministic (ODE, the quickstart's sampling settings); the scenes are those of the
quickstart's held-out set for `--seed`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vrl.hicogen.scene import UNIT_PROMPT_FORMS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["world:t2i", "world:t2i-shapes"])
    parser.add_argument(
        "--seed", type=int, default=0, help="held-out scene set (as the quickstart's)"
    )
    parser.add_argument("--scenes", type=int, default=64)
    parser.add_argument("--images", type=int, default=8, help="chains per scene")
    parser.add_argument("--strength", type=float, default=None, help="default: the recipe's")
    parser.add_argument(
        "--contexts", nargs="+", default=["img2img"], choices=["img2img", "in_context"],
        help="chain contexts to compare (in_context needs a model trained on reference tokens)",
    )  # fmt: skip
    parser.add_argument(
        "--unit-prompts", nargs="+", default=["own", "cumulative"], choices=UNIT_PROMPT_FORMS,
        help="ways of writing the unit prompts to compare (Scene.unit_prompt)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write every figure here")
    args = parser.parse_args(argv)

    import tempfile

    import torch

    from vrl.models.diffusion import FlowMatchingAdapter
    from vrl.models.paths import resolve_pipeline_path
    from vrl.quickstart.hicogen import (
        HELD_OUT_SEED_OFFSET,
        LEVELS,
        RECIPE,
        chain_stages,
        token_fit,
        world_scenes,
        write_prompts,
    )

    torch.set_num_threads(args.threads)
    smp = RECIPE["sampling"]
    strength = args.strength if args.strength is not None else RECIPE["chain"]["strength"]
    held_seed = args.seed + HELD_OUT_SEED_OFFSET
    scenes = world_scenes(args.scenes, held_seed, "test")
    print(
        f"{args.scenes} held-out scenes (seed {args.seed}) x {args.images} chains; ODE, "
        f"{smp['eval_num_steps']} steps, guidance {smp['guidance_scale']}, strength {strength}"
    )
    print(
        "| model | context | unit prompts | first subject found: unit 1 / unit 2 / final | unit 2 image "
        + " / ".join(LEVELS)
        + " | final image | flat (no chain) | minutes |"
    )
    print("|---" * 8 + "|")

    def cell(levels: dict[str, float]) -> str:  # "-": no scene asked a question of that level
        return " / ".join(f"{100 * levels[k]:.1f}" if k in levels else "-" for k in LEVELS)

    results = []
    for model in args.models:
        path = resolve_pipeline_path(model)
        adapter = FlowMatchingAdapter.from_pretrained(path)
        with tempfile.TemporaryDirectory() as tmp:
            prompts = write_prompts(
                Path(tmp) / "held_out.jsonl", scenes, held_seed, token_fit(path)
            )
            rows = [json.loads(line) for line in prompts.read_text().splitlines()]
        for context in args.contexts:
            for form in args.unit_prompts:
                t0 = time.perf_counter()
                r = chain_stages(
                    adapter, rows, images_per_scene=args.images,
                    num_steps=smp["eval_num_steps"], guidance_scale=smp["guidance_scale"],
                    strength=strength, height=smp["height"], width=smp["width"],
                    prompt_form=form, seed=args.seed, context=context,
                )  # fmt: skip
                minutes = (time.perf_counter() - t0) / 60
                results.append(
                    {"model": model, "context": context, "unit_prompts": form,
                     "minutes": minutes, **r}
                )  # fmt: skip
                found = " / ".join(f"{100 * v:.1f}" for v in r["first_unit_found"])
                prompts_kind = "own subjects" if form == "own" else form
                print(
                    f"| {model} | {context} | {prompts_kind} | {found} | {cell(r['last_unit'])} "
                    f"| {cell(r['final'])} | {cell(r['flat'])} | {minutes:.1f} |",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
