"""`vrl bench`: build HiCoPrompt, and evaluate images or a model on it or on GenEval.

vrl bench build hicoprompt --seed 0 --out data/hicoprompt --vocab both
vrl bench eval hicoprompt --prompts data/hicoprompt/world/test_1-3.jsonl --images imgs/ --judge exact
vrl bench eval hicoprompt --prompts data/hicoprompt/open/test_4-6.jsonl \
    --model tiny-random:sd3 --height 32 --width 32 --steps 4 --judge vlm --vlm tiny-random:qwen2_5_vl
vrl bench eval geneval --prompts geneval/prompts/evaluation_metadata.jsonl --images outputs/ \
    --judge geometry --detector /models/owlv2 --colour-clip-weights /models/clip-vit-l-14.bin
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from vrl.hicogen.scene import UNIT_PROMPT_FORMS

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    """Register `bench build` and `bench eval` on the top-level `vrl` parser."""
    bench = subparsers.add_parser(
        "bench", help="build HiCoPrompt; evaluate on HiCoPrompt or GenEval"
    )
    sub = bench.add_subparsers(dest="bench_command", required=True)

    b = sub.add_parser("build", help="write the HiCoPrompt benchmark files")
    b.add_argument("benchmark", choices=["hicoprompt"])
    b.add_argument("--seed", type=int, default=0, help="the same seed gives identical files")
    b.add_argument("--out", default="data/hicoprompt", help="folder; one subfolder per vocabulary")
    b.add_argument("--vocab", choices=["open", "world", "both"], default="both")
    b.add_argument("--splits", default=None, help="comma-separated splits to build (default: all)")
    b.add_argument("--max-prompts", type=int, default=None, help="cap every split (quick tries)")
    b.set_defaults(func=_build)

    e = sub.add_parser("eval", help="judge images (or generate them first) and report accuracies")
    e.add_argument("benchmark", choices=["hicoprompt", "geneval"])
    e.add_argument("--prompts", help="HiCoPrompt JSONL, or GenEval's evaluation_metadata.jsonl")
    e.add_argument("--images", help="image folder (named by prompt id; GenEval: its layout)")
    e.add_argument("--out", default=None, help="results folder (default runs/bench/<prompts>)")
    e.add_argument("--limit", type=int, default=0, help="only the first N prompts (0 = all)")
    g = e.add_argument_group("generation (with --model)")
    g.add_argument(
        "--model", help="diffusers folder, hub id in the local cache, or tiny-random:sd3"
    )
    g.add_argument("--lora", help="LoRA folder written by vrl train diffusion (final/)")
    g.add_argument("--lora-scale", type=float, default=None,
                   help="alpha/r for a LoRA file without metadata (default: from the run config)")  # fmt: skip
    g.add_argument("--images-per-prompt", type=int, default=1)
    g.add_argument("--height", type=int, default=512)
    g.add_argument("--width", type=int, default=512)
    g.add_argument("--steps", type=int, default=28, help="denoising steps (deterministic ODE)")
    g.add_argument("--guidance", type=float, default=4.5, help="classifier-free guidance scale")
    g.add_argument("--seed", type=int, default=0, help="image k of prompt p uses seed(seed, p, k)")
    g.add_argument("--gen-batch-size", type=int, default=4)
    g.add_argument("--chain", action="store_true", help="chain of synthesis: unit by unit")
    g.add_argument("--context", choices=["auto", "in_context", "img2img"], default="auto",
                   help="chain: earlier units as reference tokens (FLUX) or image-to-image; auto "
                   "picks by model")  # fmt: skip
    g.add_argument("--references", choices=["all", "last"], default="all",
                   help="chain in context: a unit sees every earlier unit image, or the last")  # fmt: skip
    g.add_argument("--positions", choices=["kontext", "uno"], default="kontext",
                   help="chain in context: reference position ids (FLUX.1 Kontext or UNO)")  # fmt: skip
    g.add_argument("--strength", type=float, default=0.7, help="chain img2img: re-noising sigma")
    g.add_argument("--save-units", action="store_true",
                   help="chain: keep each unit's image too, under <images>/units/")  # fmt: skip
    g.add_argument("--unit-prompts", choices=UNIT_PROMPT_FORMS, default="own",
                   help="chain: a unit's prompt names its own subjects, them and their relations "
                   "to the earlier ones (relational), or every subject so far (cumulative)")  # fmt: skip
    g.add_argument("--boxes", choices=["none", "world"], default="none",
                   help="chain in context: each unit pass also sees its subjects' boxes, laid "
                   "out by the shapes world's planner (world prompts)")  # fmt: skip
    g.add_argument("--cumulative", dest="unit_prompts", action="store_const", const="cumulative",
                   help="chain: the same as --unit-prompts cumulative")  # fmt: skip
    g.add_argument("--dtype", default="float32", help="float32, bfloat16, float16")
    j = e.add_argument_group("judging")
    j.add_argument(
        "--judge", required=True, help="exact, vlm, geometry, openai, or e.g. geometry+vlm"
    )
    j.add_argument("--vlm", help="vlm judge: VLM folder or tiny-random:qwen2_5_vl")
    j.add_argument(
        "--detector",
        help="geometry judge: OWLv2 or GroundingDINO folder (picked by its config's model_type), "
        "or tiny-random:owlv2 / tiny-random:grounding_dino",
    )
    j.add_argument(
        "--detection-threshold", type=float, default=0.1,
        help="geometry judge: the least box score (GroundingDINO's box threshold)",
    )  # fmt: skip
    j.add_argument("--counting-threshold", type=float, default=None, help="default: as detection")
    j.add_argument("--colour-clip-model", default="ViT-L-14", help="GenEval colour rule's CLIP")
    j.add_argument("--colour-clip-weights", help="local weights: enables the colour rule")
    j.add_argument("--openai-base-url", help="openai judge: e.g. https://api.openai.com/v1")
    j.add_argument("--openai-model", default="gpt-4o")
    j.add_argument("--threshold", type=float, default=0.5, help="a value >= this is a yes")
    j.add_argument("--batch-size", type=int, default=8, help="images per judge call")
    j.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    s = e.add_argument_group("global scores (optional: None without weights)")
    s.add_argument("--clip-model", default="ViT-L-14")
    s.add_argument("--clip-weights", help="local open_clip weights file for CLIPScore")
    s.add_argument("--hps-model", default="ViT-H-14")
    s.add_argument("--hps-weights", help="local HPSv2 weights (HPS_v2_compressed.pt)")
    e.add_argument("--no-plots", action="store_true")
    e.set_defaults(func=_eval_or_explain)


def _build(args: argparse.Namespace) -> int:
    from vrl.bench.build import SPLITS, build_hicoprompt

    splits = dict(SPLITS)
    if args.splits:
        names = [s.strip() for s in args.splits.split(",") if s.strip()]
        unknown = [n for n in names if n not in SPLITS]
        if unknown:
            raise SystemExit(
                f"vrl bench build: unknown split {unknown[0]!r}; valid: {list(SPLITS)}"
            )
        splits = {n: SPLITS[n] for n in names}
    if args.max_prompts is not None:
        splits = {n: (min(c, args.max_prompts), lo, hi) for n, (c, lo, hi) in splits.items()}
    t0 = time.perf_counter()
    manifests = build_hicoprompt(args.out, seed=args.seed, vocab=args.vocab, splits=splits)
    seconds = time.perf_counter() - t0
    for vocab, manifest in manifests.items():
        for name, info in manifest["files"].items():
            print(f"{Path(args.out) / vocab / name}: {info['prompts']} prompts, "
                  f"subjects {info['subjects']}, {info['questions']} questions")  # fmt: skip
    print(f"built {manifest['version']} (seed {args.seed}) in {seconds:.1f} s")
    return 0


def _eval_or_explain(args: argparse.Namespace) -> int:
    """Bad input (an unreadable prompt file, a judge that does not fit the prompts) is reported
    in one line, not as a traceback."""
    try:
        return _eval(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"vrl bench eval: {err}", file=sys.stderr)
        return 2


def _eval(args: argparse.Namespace) -> int:
    from vrl.bench.evaluate import evaluate_items
    from vrl.bench.generate import FlatLayout, GenEvalLayout, generate_missing, load_generator
    from vrl.bench.judges import JudgeOptions, build_judge

    if not args.prompts and not (args.benchmark == "geneval" and args.images):
        raise SystemExit(
            "vrl bench eval: --prompts is required (GenEval: or --images in its layout)"
        )
    if not args.images and not args.model:
        raise SystemExit("vrl bench eval: give --images (a folder) or --model (to generate)")
    items = _load_items(args)
    if args.limit:
        items = items[: args.limit]
    stem = Path(args.prompts).stem if args.prompts else Path(args.images).name
    out = Path(args.out or f"runs/bench/{args.benchmark}-{stem}")
    image_dir = Path(args.images) if args.images else out / "images"
    layout = GenEvalLayout(image_dir) if args.benchmark == "geneval" else FlatLayout(image_dir)

    settings = {"benchmark": "GenEval" if args.benchmark == "geneval" else "HiCoPrompt",
                "prompts_file": args.prompts, "images": str(image_dir)}  # fmt: skip
    if args.model:
        generation = {
            "model": args.model, "lora": args.lora, "images_per_prompt": args.images_per_prompt,
            "height": args.height, "width": args.width, "num_steps": args.steps,
            "guidance_scale": args.guidance, "seed": args.seed, "chain": args.chain,
            "strength": args.strength if args.chain else None,
            "unit_prompts": args.unit_prompts if args.chain else None,
            **({"context": args.context, "references": args.references,
                "positions": args.positions, "save_units": args.save_units,
                "boxes": args.boxes} if args.chain else {}),
        }  # fmt: skip
        t0 = time.perf_counter()
        n = generate_missing(
            items, layout,
            lambda: load_generator(args.model, args.lora, args.device, args.dtype, args.lora_scale),
            batch_size=args.gen_batch_size,
            **{k: v for k, v in generation.items()
               if k not in ("model", "lora", "strength", "unit_prompts", "context", "references",
                            "positions", "save_units", "boxes")},
            strength=args.strength, prompt_form=args.unit_prompts, context=args.context,
            references=args.references, positions=args.positions, boxes=args.boxes,
            save_units=args.save_units and args.chain,
        )  # fmt: skip
        print(f"generated {n} images in {time.perf_counter() - t0:.1f} s into {image_dir}")
        (image_dir / "generation.json").write_text(json.dumps(generation, indent=2) + "\n")
        settings["generation"] = generation

    colour_clip = clip = hps = None
    if args.colour_clip_weights:
        from vrl.rewards.hierarchical_global import CLIPScorer

        colour_clip = CLIPScorer.from_pretrained(args.colour_clip_model, args.colour_clip_weights,
                                                 device=args.device or "cpu")  # fmt: skip
    if args.clip_weights:
        from vrl.rewards.hierarchical_global import CLIPScorer

        clip = CLIPScorer.from_pretrained(
            args.clip_model, args.clip_weights, device=args.device or "cpu"
        )
    if args.hps_weights:
        from vrl.rewards.hierarchical_global import PreferenceScorer

        hps = PreferenceScorer.from_pretrained(
            args.hps_model, args.hps_weights, device=args.device or "cpu"
        )
    options = JudgeOptions(
        vlm=args.vlm, vlm_batch_size=args.batch_size, detector=args.detector,
        detection_threshold=args.detection_threshold, counting_threshold=args.counting_threshold,
        colour_clip=colour_clip, openai_base_url=args.openai_base_url,
        openai_model=args.openai_model, device=args.device,
    )  # fmt: skip
    settings["judge"] = args.judge
    settings["judge_options"] = {
        k: v for k, v in dataclasses.asdict(options).items() if k not in ("colour_clip", "device")
    }
    settings["judge_options"]["colour_clip_weights"] = args.colour_clip_weights
    images = layout.find(items)
    made = settings.get("generation") or _generation_settings(image_dir)
    width, height, per_prompt = (_count(made, k) for k in ("width", "height", "images_per_prompt"))
    size = (width, height) if width and height else None
    summary = evaluate_items(
        items, images, lambda: build_judge(args.judge, options), out / args.judge, clip=clip, hps=hps, threshold=args.threshold,
        batch_size=args.batch_size, settings=settings, plots=not args.no_plots,
        image_size=size, images_per_prompt=per_prompt,
    )  # fmt: skip
    print((out / args.judge / "summary.md").read_text())
    print(f"results in {out / args.judge}")
    return 0 if summary["images"] else 1  # 1: not one image could be judged


def _generation_settings(image_dir: Path) -> dict:
    """What generated the images (generation.json, written by a run with --model), or {}: the
    expected image size and count then come from the images themselves."""
    path = image_dir / "generation.json"
    if not path.is_file():
        return {}
    try:
        made = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        logger.warning(
            "%s is unreadable (%s): image sizes are checked against most images", path, err
        )
        return {}
    return made if isinstance(made, dict) else {}


def _count(settings: dict, key: str) -> int | None:
    value = settings.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _load_items(args):
    if args.benchmark == "geneval":
        from vrl.bench.geneval import load_geneval_folder, load_geneval_metadata

        return (
            load_geneval_metadata(args.prompts)
            if args.prompts
            else load_geneval_folder(args.images)
        )
    from vrl.bench.data import load_items

    return load_items(args.prompts)
