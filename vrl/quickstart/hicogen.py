"""The quickstart's HiCoGen half: RL over the chain of synthesis in context on the shapes world,
and per-level held-out accuracy of a flat pass, the image-to-image chain, the chain in context
and the chain in context after RL.

The recipe (``configs/quickstart_hicogen.yaml``) trains the committed ``world:kontext`` (FLUX.1
Kontext architecture, 32 px: earlier unit images enter a pass as reference tokens) over the chain
of synthesis (one unit per subject, each from noise with the earlier unit images in context, then
a final pass with the full prompt and every unit image) with the decaying noise schedule and the
world's exact hierarchical reward (``world_global``, ``world_subject``, ``world_relation``), by
Advantage Weighted Matching with a KL to the base model.

``run`` writes train-split scenes of 2-3 subjects with spatial relations as the training prompts
and held-out test-split scenes (each holds a (colour, shape) pair never seen in training), then
measures per-level accuracy (exist, attribute, relation; DSG dependencies) with HiCoPrompt's
evaluator (``vrl bench eval hicoprompt``, exact judge) on deterministic images (ODE, seeds from
the prompt ids), ``SEEDS_PER_SCENE`` images a scene, drawn each way of ``CONDITIONS`` and by the
trained policy in context. Beside the levels it reports what each chain carried (``carried``: of
the subjects a unit drew, the share still in the final image), the off-palette share of the
images (``vrl.world.off_palette_share``: texture instead of shapes) and the subjects found per
asked shape. ``bench_command`` gives the command line that redraws and rejudges the images;
``chain_stages`` shows where a chain keeps and loses subjects."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vrl.bench.data import load_items
from vrl.bench.evaluate import evaluate_items
from vrl.bench.generate import FlatLayout, generate_missing
from vrl.bench.judges import JudgeOptions, build_judge
from vrl.config import apply_overrides, build_config, load_recipe
from vrl.data.t2i import ImageSample, load_prompts
from vrl.hicogen.chain import eval_chain
from vrl.hicogen.scene import Scene
from vrl.models.diffusion import FlowMatchingAdapter
from vrl.models.paths import resolve_pipeline_path
from vrl.samplers import sample
from vrl.trainers.diffusion_config import DiffusionTrainConfig
from vrl.trainers.diffusion_grpo import train
from vrl.world import captions, check, off_palette_share, sample_scene

LEVELS = ("exist", "attribute", "relation")

RECIPE: dict[str, Any] = load_recipe("quickstart_hicogen.yaml")
TRAIN_SCENES = 512
HELD_OUT_SCENES = 64
SEEDS_PER_SCENE = 8
"""Held-out images per scene (512 in all): at 2 a scene the before/after difference moved by
3.4-4.9 points with the noise draw alone."""
GRID_SCENES = 8
"""Held-out scenes whose chains the report shows."""
HELD_OUT_SEED_OFFSET = 10_000
SUBJECTS = (2, 3)
"""Subjects per scene (lowest, highest): three is what a 32 px canvas holds."""


def world_scenes(
    n: int,
    seed: int,
    split: str,
    subjects: tuple[int, int] = (2, 2),
    fits: Callable[[str], bool] | None = None,
    tries: int = 1000,
    form: str = "own",
) -> list[Scene]:
    """n scenes at the 32 px canvas, each subject after the first with one spatial relation to an
    earlier one; the subject count of each scene uniform over `subjects` (lowest, highest).

    With `fits` (`token_fit`), a scene is drawn again (with the same subject count) until one of
    its captions and each of its unit prompts (in `form`) fit the text encoder, as the world models were
    trained: a truncated prompt asks for what it no longer names. At 24 tokens few three-subject
    scenes fit (about 1 in 13), so drawing the count first keeps them a fair share of the set."""
    from vrl.hicogen.chain import plan_chain

    rng = random.Random(seed)
    low, high = subjects
    scenes: list[Scene] = []
    for _ in range(n):
        count = rng.randint(low, high) if low != high else low
        for _ in range(tries):
            scene = sample_scene(
                rng, min_subjects=count, max_subjects=count, relation_prob=1.0, split=split,
                canvas=32,
            )  # fmt: skip
            if fits is None or (
                any(fits(t) for t in captions(scene))
                and all(fits(t) for t in plan_chain(scene, scene.prompt(), form=form).unit_prompts)
            ):
                scenes.append(scene)
                break
        else:
            raise ValueError(
                f"no {count}-subject {split} scene in {tries} draws has prompts that fit the text "
                "encoder: ask for fewer subjects"
            )
    return scenes


def write_prompts(
    path: Path, scenes: Sequence[Scene], seed: int, fits: Callable[[str], bool] | None = None
) -> Path:
    """JSONL prompt file: an id (`<file stem>-<index>`, naming the scene's images in `vrl
    bench`), a caption of each scene in one of the world's phrasings (among those `fits`
    accepts, e.g. that fit the text encoder's context; else `scene.prompt()`), and the scene."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i, scene in enumerate(scenes):
            texts = [t for t in captions(scene) if fits is None or fits(t)] or [scene.prompt()]
            row = {"id": f"{path.stem}-{i:05d}", "prompt": rng.choice(texts)}
            f.write(json.dumps({**row, "scene": scene.to_dict()}) + "\n")
    return path


def token_fit(path: str | Path) -> Callable[[str], bool] | None:
    """Whether a prompt fits the pipeline's CLIP tokenizer context (None: no tokenizer there)."""
    from transformers import CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    except (OSError, ValueError):
        return None
    limit = tokenizer.model_max_length
    return lambda text: len(tokenizer(text, verbose=False).input_ids) <= limit


def boxes_for(ch, context: str) -> str:
    """The recipe's box planner (`chain.boxes`) for a chain drawn with this context: none for
    image-to-image, which has no reference inputs to show boxes in."""
    return "none" if context == "img2img" else ch.boxes


@torch.no_grad()
def chain_strips(
    adapter, transformer, samples: Sequence[ImageSample], cfg, context: str | None = None
) -> list[torch.Tensor]:
    """One deterministic chain per sample (`eval_chain`, noise fixed by the run seed, so before
    and after see the same noise): (passes, 3, H, W) per sample, unit images then the final
    image, for the report's grids. `context` overrides `chain.context`."""
    smp, ch = cfg.sampling, cfg.chain
    settings = ch.chain_kwargs(adapter)
    if context is not None:
        settings["context"] = context
    settings["boxes"] = boxes_for(ch, settings["context"])
    strips = []
    for k, item in enumerate(samples):
        _, chain = eval_chain(
            adapter, transformer, item.scene, item.prompt, seed=cfg.run.seed * 7919 + k,
            height=smp.height, width=smp.width, num_steps=smp.eval_num_steps,
            guidance_scale=smp.guidance_scale, prompt_form=ch.unit_prompts,
            max_units=ch.max_units, **settings,
        )  # fmt: skip
        strips.append(torch.cat(chain.images))
    return strips


@torch.no_grad()
def chain_stages(
    adapter,
    rows: Sequence[dict[str, Any] | ImageSample],
    *,
    images_per_scene: int,
    num_steps: int,
    guidance_scale: float,
    strength: float,
    height: int = 32,
    width: int = 32,
    prompt_form: str = "own",
    seed: int = 0,
    context: str = "img2img",
    references: str = "all",
) -> dict[str, Any]:
    """Where a chain of synthesis keeps and loses its subjects, read by the exact checker on
    deterministic chains (`eval_chain`) of prompt rows (`write_prompts`' rows: "prompt" and
    "scene") or samples.

    - "first_unit_found": per chain image (unit 1, unit 2, ..., final), the share of the first
      unit's subjects found in it (by the checker, against the whole scene): whether a later
      pass keeps what an earlier one drew;
    - "last_unit" / "final": per-level accuracy (DSG dependencies) of the last unit's image and of
      the final image against the whole scene;
    - "flat": the same for one pass of the final prompt from the chain's own initial noise (no
      chain), the baseline the chain is read against.

    `prompt_form` is how unit prompts name the scene (`Scene.unit_prompt`); `context` and `references`
    are the chain's (`chain.context`: img2img, in_context, auto). Every scene must make the
    same number of units (e.g. `world_scenes`: two subjects, two units)."""
    from vrl.hicogen.chain import resolve_context

    context = resolve_context(adapter, context)
    first: list[list[float]] = []
    levels: dict[str, dict[str, list[float]]] = {k: {} for k in ("last_unit", "final", "flat")}

    def add(kind: str, result) -> None:
        for level, value in result.level_accuracy().items():
            if value is not None:
                levels[kind].setdefault(level, []).append(value)

    sigmas = adapter.sigmas(num_steps, height, width)
    for k, row in enumerate(rows):
        item = ImageSample.from_row(row)
        units = len(item.scene.default_units())
        if first and units + 1 != len(first[0]):
            raise ValueError(
                f"row {k} ({item.get('id', 'no id')}) makes {units} units, the rows "
                f"before it {len(first[0]) - 1}: chain_stages compares chains of one length"
            )
        plan, chain = eval_chain(
            adapter, adapter.transformer, item.scene, item.prompt, seed=seed * 7919 + k,
            images=images_per_scene, height=height, width=width, num_steps=num_steps,
            guidance_scale=guidance_scale, strength=strength, prompt_form=prompt_form,
            context=context, references=references,
        )  # fmt: skip
        # the chain's first draw is unit 1's initial noise: the flat pass starts from it too
        noise = adapter.initial_noise(
            images_per_scene, height, width,
            torch.Generator(adapter.device).manual_seed(seed * 7919 + k),
        )  # fmt: skip
        embeds = adapter.encode_prompts([item.prompt] * images_per_scene)
        flat = sample(
            adapter.velocity_fn(adapter.transformer, embeds, guidance_scale), noise, sigmas,
            step="ode", store_trajectory=False,
        )  # fmt: skip
        flat_images = adapter.decode(flat.final, (height, width))
        scene = item.scene
        ids = plan.units[0].subjects
        for i in range(images_per_scene):
            # read against the whole scene, so that the checker tells the first unit's subjects
            # from the later ones by what the scene calls them (a lone circle is "the circle")
            results = [check(scene, step.image[i]) for step in chain.steps]
            first.append(
                [sum(r.assignment[s] is not None for s in ids) / len(ids) for r in results]
            )
            add("last_unit", results[-2])
            add("final", results[-1])
            add("flat", check(scene, flat_images[i]))
    return {
        "first_unit_found": [sum(col) / len(col) for col in zip(*first, strict=True)],
        **{
            kind: {level: sum(v) / len(v) for level, v in by_level.items()}
            for kind, by_level in levels.items()
        },
        "chains": len(first),
    }


CONDITIONS: dict[str, dict[str, Any]] = {
    "flat": {"chain": False},
    "img2img": {"chain": True, "context": "img2img"},
    "in_context": {"chain": True, "context": "in_context"},
}
"""How the held-out images are drawn: one pass of the whole prompt; the chain of synthesis with
image-to-image context (the canvas re-noised to `chain.strength`); the chain in context (earlier
unit images as reference tokens). The trained policy is read in context."""


def bench_command(
    prompts: Path, out: Path, cfg, lora: Path | None = None, condition: str = "in_context"
) -> list[str]:
    """The `vrl bench eval hicoprompt` command line that draws and judges what `bench_accuracy`
    does with these settings (the same images, the same figures)."""
    smp, ch = cfg.sampling, cfg.chain
    how = CONDITIONS[condition]
    chain = [
        "--chain", "--context", how["context"], "--references", ch.references,
        "--positions", ch.positions, "--strength", str(ch.strength), "--save-units",
        *(["--unit-prompts", ch.unit_prompts] if ch.unit_prompts != "own" else []),
        *(["--boxes", boxes] if (boxes := boxes_for(ch, how["context"])) != "none" else []),
    ] if how["chain"] else []  # fmt: skip
    return [
        "vrl", "bench", "eval", "hicoprompt", "--prompts", str(prompts),
        "--model", str(cfg.model.path), *(["--lora", str(lora)] if lora else []), *chain,
        "--steps", str(smp.eval_num_steps), "--guidance", str(smp.guidance_scale),
        "--height", str(smp.height), "--width", str(smp.width),
        "--images-per-prompt", str(SEEDS_PER_SCENE), "--seed", str(cfg.run.seed),
        "--judge", "exact", "--out", str(out),
    ]  # fmt: skip


def bench_accuracy(
    adapter, prompts: Path, out: Path, cfg, condition: str = "in_context"
) -> dict[str, float]:
    """Held-out per-level accuracy through HiCoPrompt's evaluator (`vrl.bench`): images drawn by
    `vrl bench`'s generator as `condition` says (`CONDITIONS`; ODE, `SEEDS_PER_SCENE` images per
    prompt, seeds from the prompt ids; a chain keeps its unit images) into `out/images`, read by
    the exact judge with DSG dependencies. `bench_command(prompts, out, cfg, lora, condition)`
    reproduces it from the command line. `out` is emptied first."""
    shutil.rmtree(out, ignore_errors=True)  # vrl bench resumes: no image of an earlier model
    smp, ch = cfg.sampling, cfg.chain
    how = CONDITIONS[condition]
    chain = {
        "chain": True, "context": how["context"], "references": ch.references,
        "positions": ch.positions, "strength": ch.strength, "prompt_form": ch.unit_prompts,
        "boxes": boxes_for(ch, how["context"]), "save_units": True,
    } if how["chain"] else {}  # fmt: skip
    items = load_items(prompts)
    layout = FlatLayout(out / "images")
    generate_missing(
        items, layout, adapter, images_per_prompt=SEEDS_PER_SCENE, height=smp.height,
        width=smp.width, num_steps=smp.eval_num_steps, guidance_scale=smp.guidance_scale,
        seed=cfg.run.seed, batch_size=SEEDS_PER_SCENE, **chain,
    )  # fmt: skip
    summary = evaluate_items(
        items, layout.find(items), build_judge("exact", JudgeOptions()), out / "exact",
        settings={"judge": "exact"}, plots=False,
    )  # fmt: skip
    return {level: summary["dependencies"][level] for level in LEVELS}


def carried(prompts: Path, images: Path, form: str = "own") -> dict[str, float | int]:
    """Whether a chain keeps what its units drew: of the subjects each unit drew (its own
    subjects that the exact checker finds in its unit image), the share it finds in the chain's
    final image. Every image is read against the whole scene, so the checker tells the subjects
    apart by what the scene calls them. Reads the unit images `bench_accuracy` keeps beside the
    final ones (`images/units/`); returns {"carried": share, "drawn": subjects drawn}."""
    from PIL import Image

    from vrl.bench.generate import unit_path
    from vrl.hicogen.chain import plan_chain

    def read(path: Path):
        with Image.open(path) as image:
            return image.convert("RGB")

    drawn = kept = 0
    items = load_items(prompts)
    finals = FlatLayout(images).find(items)
    for item in items:
        plan = plan_chain(item.scene, item.prompt, form=form)
        for k, final_path in enumerate(finals.get(item.id, [])):
            final = check(item.scene, read(final_path)).assignment
            for j, unit in enumerate(plan.units, start=1):
                found = check(item.scene, read(unit_path(images, item.id, k, j))).assignment
                for subject in unit.subjects:
                    if found[subject] is not None:
                        drawn += 1
                        kept += final[subject] is not None
    return {"carried": kept / drawn if drawn else float("nan"), "drawn": drawn}


def judged_images(prompts: Path, out: Path):
    """(scene as a dict, the judge's answers) per image, from the prompt file and the per-image
    answers `bench_accuracy` wrote under `out`."""
    scenes = {}
    for line in Path(prompts).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        scenes[row["id"]] = row["scene"]
    per_prompt = Path(out) / "exact" / "per_prompt.jsonl"
    for line in per_prompt.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        for image in row["images"]:
            yield scenes[row["id"]], image["answers"]


def found_by_shape(prompts: Path, out: Path) -> dict[str, dict[str, float | int]]:
    """Per asked shape: the share of held-out subjects the judge found (their `exist` answers,
    `judged_images`) and how many were asked. The exist level is their mean; this says which
    shapes it misses (squares, which the world model draws as round blobs). Unanswered questions
    are left out."""
    found: dict[str, list[float]] = {}
    for scene, answers in judged_images(prompts, out):
        shapes = {s["id"]: s["name"] for s in scene["subjects"]}
        for key, value in answers.items():
            subject, _, question = key.partition("/")
            if question == "exist" and value is not None:
                found.setdefault(shapes[subject], []).append(float(value))
    return {
        shape: {"found": sum(values) / len(values), "subjects": len(values)}
        for shape, values in sorted(found.items())
    }


def relation_if_found(prompts: Path, out: Path) -> dict[str, float | int]:
    """The relation questions whose two subjects the judge found, and the share of them answered
    right (`judged_images`): where the subjects are drawn, is their placement right? The relation
    level (DSG dependencies) also counts a relation wrong when a subject is missing, so it rises
    with exist alone; this does not."""
    right = asked = 0
    for scene, answers in judged_images(prompts, out):
        for i, relation in enumerate(scene["relations"]):
            subject, obj = relation["subject"], relation["object"]
            if answers.get(f"{subject}/exist") and answers.get(f"{obj}/exist"):
                asked += 1
                right += bool(answers.get(f"rel/{i}"))
    return {"relation_if_found": right / asked if asked else float("nan"), "found_pairs": asked}


def off_palette(folder: Path) -> float:
    """Mean `vrl.world.off_palette_share` of the images in a folder (the PNGs `bench_accuracy`
    drew): ~2% for the world model, 14-22% once a policy has turned its images into texture."""
    import numpy as np
    from PIL import Image

    files = sorted(Path(folder).glob("*.png"))
    if not files:
        raise FileNotFoundError(f"no PNG images in {folder}")
    shares = []
    for file in files:
        with Image.open(file) as image:
            shares.append(off_palette_share(np.asarray(image.convert("RGB"))))
    return sum(shares) / len(shares)


def run(
    out: Path,
    seed: int = 0,
    steps: int | None = None,
    overrides: Sequence[str] = (),
    train_scenes: int | None = None,
):
    """Train and evaluate the HiCoGen half; returns its summary: per-level held-out accuracy of
    every condition of `CONDITIONS` on the base model and of the chain in context after RL
    ("table"; "before" and "after" are the in-context rows), what the chains carried, the
    off-palette share. `train_scenes` (default `TRAIN_SCENES`): how many training scenes the
    prompts cycle over."""
    out = Path(out)
    recipe = json.loads(json.dumps(RECIPE))
    recipe["run"].update(output_dir=str(out / "run"), seed=seed)
    if steps is not None:
        recipe["run"]["max_steps"] = steps
    recipe = apply_overrides(recipe, list(overrides))
    train_file, held_file = out / "data" / "train.jsonl", out / "data" / "held_out.jsonl"
    recipe["prompts"].update(train=str(train_file), eval=str(held_file))
    cfg = build_config(DiffusionTrainConfig, recipe, "quickstart HiCoGen recipe")
    form = cfg.chain.unit_prompts
    path = resolve_pipeline_path(cfg.model.path)
    fits = token_fit(path)
    scenes = world_scenes(train_scenes or TRAIN_SCENES, seed, "train", SUBJECTS, fits, form=form)
    write_prompts(train_file, scenes, seed, fits)
    held_seed = seed + HELD_OUT_SEED_OFFSET
    held_scenes = world_scenes(HELD_OUT_SCENES, held_seed, "test", SUBJECTS, fits, form=form)
    write_prompts(held_file, held_scenes, held_seed, fits)
    held_out = load_prompts(held_file)

    def measure(adapter, name: str, condition: str, lora: Path | None = None) -> dict[str, Any]:
        folder = out / "bench" / name
        row: dict[str, Any] = bench_accuracy(adapter, held_file, folder, cfg, condition)
        row["off_palette"] = off_palette(folder / "images")
        if CONDITIONS[condition]["chain"]:
            row.update(carried(held_file, folder / "images", form))
        row["found_by_shape"] = found_by_shape(held_file, folder)
        row.update(relation_if_found(held_file, folder))
        row["command"] = bench_command(held_file, folder, cfg, lora, condition)
        return row

    t0 = time.perf_counter()
    grid_samples = held_out[:GRID_SCENES]
    base = FlowMatchingAdapter.from_pretrained(path)
    table = {name: measure(base, name, name) for name in CONDITIONS}
    strips = {
        "img2img": chain_strips(base, base.transformer, grid_samples, cfg, context="img2img"),
        "before": chain_strips(base, base.transformer, grid_samples, cfg),
    }
    del base
    summary = train(cfg)
    tuned = summary["adapter"]
    final = Path(cfg.run.output_dir) / "final"
    table["in_context_rl"] = measure(tuned, "in_context_rl", "in_context", lora=final)
    strips["after"] = chain_strips(tuned, tuned.transformer, grid_samples, cfg)
    levels = {name: {k: row[k] for k in LEVELS} for name, row in table.items()}
    return {
        "table": table,
        "before": levels["in_context"],
        "after": levels["in_context_rl"],
        "off_palette": {
            "before": table["in_context"]["off_palette"],
            "after": table["in_context_rl"]["off_palette"],
        },
        "found_by_shape": {
            "before": table["in_context"]["found_by_shape"],
            "after": table["in_context_rl"]["found_by_shape"],
        },
        "steps": cfg.run.max_steps,
        "held_out_images": len(held_out) * SEEDS_PER_SCENE,
        "subjects": list(SUBJECTS),
        "minutes": (time.perf_counter() - t0) / 60,
        "rewards": summary["rewards"],
        "bench_commands": {
            "before": table["in_context"]["command"],
            "after": table["in_context_rl"]["command"],
        },
        "strips": strips,
        "config": cfg,
    }
