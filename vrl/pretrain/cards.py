"""Model cards of the shapes world's tiny models: the README.md written beside each checkpoint.

Each card states the architecture, the command and seed that reproduce the checkpoint, the
training time and machine, and the held-out quality, from the summary that training returns.
"""

from __future__ import annotations

from typing import Any

from vrl.pretrain.clip import CONFIG, TOKENIZER
from vrl.pretrain.grounding import SFT_RECIPE
from vrl.pretrain.t2i import EVAL_SEED, IMAGE_SIZE, T5_TOKENS
from vrl.pretrain.vlm import DEFAULTS as VLM_DEFAULTS
from vrl.world.tasks import DEFAULT_SUBJECTS, TASK_SUBJECTS


def vlm_card(summary: dict[str, Any]) -> str:
    """world-vlm's README.md: recipe, seed, time, machine and held-out accuracy."""
    s = summary["settings"]
    rows = "\n".join(f"| {task} | {value:.1%} |" for task, value in summary["held_out"].items())
    curve = "\n".join(
        f"| {r['step']} | {r['loss']:.3f} | "
        + " | ".join(f"{v:.1%}" for v in r.get("held_out", {}).values())
        + " |"
        for r in summary["history"]
    )
    header = " | ".join(summary["held_out"])
    scenes = "; ".join(
        f"{task}: {low}-{high} shapes" if low != high else f"{task}: {low} shape"
        for task in s["tasks"].split(",")
        for low, high in [{**DEFAULT_SUBJECTS, **TASK_SUBJECTS}[task.strip()]]
    )
    return f"""# world-vlm: a tiny Qwen2.5-VL that answers questions about the shapes world

`Qwen2_5_VLForConditionalGeneration`, {summary["parameters"] / 1e6:.2f}M parameters (text: 4
layers, width 128; vision: {s["vision_depth"]} blocks, width 128, patch 14, merge 2), a byte-level
BPE tokenizer of {summary["vocab"]} tokens trained on the task text, {s["image_size"]} px input
(16 image tokens). Load it like any checkpoint: `VLMAdapter.from_pretrained(path)`, or
`model.path: world:vlm` in a `vrl train vlm` recipe (`configs/vlm_world_grpo.yaml`).

## Recipe

`vrl pretrain world-vlm --seed {summary["seed"]}` (defaults of `vrl/pretrain/vlm.py`):
SFT on `vrl.world.tasks` files ({s["tasks"]}; {s["train_per_task"]} train-split samples per
task, scenes on a {s["canvas"]} px canvas resized to {s["image_size"]} px, pixels normalised
around the world's grey background), prompts in the `{s["template"]}` template, loss on the
answer tokens `<answer>X</answer><|im_end|>` only; AdamW, lr {s["lr"]}, {s["warmup"]} warm-up
steps then cosine to 10%, batch {s["batch_size"]}, {s["steps"]} steps.

Training time: {summary["train_minutes"]:.1f} min wall, {summary["train_cpu_minutes"]:.1f} min
CPU, {summary["threads"]} thread(s), on {summary["machine"]} (shared with other jobs), plus
{summary["data_minutes"]:.1f} min writing the data.

## Held-out accuracy

Greedy decoding, scored by the `accuracy` reward, {s["held_out_per_task"]} questions per task
about test-split scenes (every one holds a (colour, shape) pair never seen in training):

| task | accuracy |
|---|---|
{rows}

Scenes: {scenes}. Every training scene is on the world's light-grey background; on other
backgrounds accuracy drops (colour of a lone shape on dark grey: 67.5%), which is the gap the
GRPO recipe `configs/vlm_world_grpo.yaml` closes with the rule reward
(`python experiments/world_vlm_grpo.py`). Counting is not learned in this budget: the model
gives the most frequent count, so its figure is the majority baseline.

During training (step, mean training loss, held-out {header}):

| step | loss | {header} |
|---|---|{"---|" * len(summary["held_out"])}
{curve}
"""


def vlm_rec_card(summary: dict[str, Any]) -> str:
    """world-vlm-rec's README.md: recipe, seed, time, machine and Acc@0.5 / mean IoU on the four
    evaluation sets of ``vrl.pretrain.grounding``."""
    s = summary["settings"]
    recipe = {**VLM_DEFAULTS, **SFT_RECIPE}
    changed = "".join(
        f" {k}={_cli_value(v)}" for k, v in s.items() if k in recipe and v != recipe[k]
    )
    command = f"vrl pretrain world-vlm-rec --seed {summary['seed']} --threads {summary['threads']}"
    if changed:
        command += f" --extra{changed}"
    extra = " ".join(
        f"{k}={_cli_value(v)}" for k, v in s.items() if k in SFT_RECIPE or v != recipe.get(k, v)
    )
    sets = summary["sets"]
    rows = "\n".join(
        f"| {name} | {row['acc']:.1%} | {row['iou']:.1%} | "
        + ", ".join(f"{k.removeprefix('acc ')} {v:.1%}" for k, v in row.items() if " " in k)
        + " |"
        for name, row in sets.items()
    )
    curve = "\n".join(
        f"| {r['step']} | {r['loss']:.3f} | {r['held_out']['refer']:.1%} | "
        f"{r['held_out']['refer iou']:.1%} |"
        for r in summary["history"]
        if "held_out" in r
    )
    return f"""# world-vlm-rec: a tiny Qwen2.5-VL that grounds referring expressions in the shapes world

`Qwen2_5_VLForConditionalGeneration`, {summary["parameters"] / 1e6:.2f}M parameters (text: 4
layers, width 128, M-RoPE base {s["rope_theta"]:g}; vision: {s["vision_depth"]} blocks, width 128,
patch 14, merge 2), a byte-level BPE tokenizer of {summary["vocab"]} tokens trained on the task
text, every integer 0..{s["image_size"]} one token, {s["image_size"]} px input (16 image tokens).
It answers "Locate the blue square left of the red circle in the image." with
`<answer>[x1, y1, x2, y2]</answer>`, the box in pixels of its own {s["image_size"]} px input (the
REC parser maps it back to image pixels). Load it like any checkpoint:
`VLMAdapter.from_pretrained(path)`, or `model.path: world:vlm-rec` in a `vrl train vlm` recipe
(`configs/quickstart_vlm.yaml`, the quickstart's grounding GRPO).

## Recipe

`{command}`, the same as
`vrl pretrain world-vlm --seed {summary["seed"]} --extra {extra}`
(`vrl.pretrain.grounding.SFT_RECIPE`): SFT on the `refer` task of `vrl.world.tasks`
({s["train_per_task"]} train-split scenes of 2-3 subjects on a {s["canvas"]} px light-grey
canvas, resized to {s["image_size"]} px), prompts in the `{s["template"]}` template, loss on the
answer tokens only; AdamW, lr {s["lr"]}, {s["warmup"]} warm-up steps then cosine to 10%, batch
{s["batch_size"]}, {s["steps"]} steps.

Training time: {summary["train_minutes"]:.1f} min wall, {summary["train_cpu_minutes"]:.1f} min
CPU, {summary["threads"]} thread(s), on {summary["machine"]} (shared with other jobs), plus
{summary["data_minutes"]:.1f} min writing the data.

## Held-out quality

Greedy decoding, {s["held_out_per_task"]} questions per set (seed 10000, never trained on),
scored as the `rec_iou` reward scores them (`vrl.pretrain.grounding.evaluate_sets`): Acc@IoU>=0.5,
mean IoU, and Acc@0.5 per expression kind. In domain: new scenes of the training distribution;
held-out pairs: the target is a (colour, shape) pair never seen in training; dark grey: a
background never trained on; 4 subjects: trained on 2-3.

| set | Acc@0.5 | mean IoU | Acc@0.5 by kind |
|---|---|---|---|
{rows}

During training (step, mean training loss, held-out pairs Acc@0.5 and mean IoU):

| step | loss | Acc@0.5 | mean IoU |
|---|---|---|---|
{curve}
"""


def t2i_quality_table(results: dict[str, dict[str, float | None]]) -> str:
    keys = ("exist", "attribute", "relation", "relation_if_found", "subjects", "all", "objects")
    lines = ["| scenes | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for group, row in results.items():
        cells = ["-" if row[k] is None else f"{100 * row[k]:.1f}" for k in keys]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def t2i_card(summary: dict[str, Any]) -> str:
    """world-t2i's model card (README.md of the pipeline folder) from a training summary."""
    cfg, params = summary["config"], summary["parameters"]
    overrides = " ".join(f"{k}={_cli_value(v)}" for k, v in summary["overrides"].items())
    command = f"vrl pretrain world-t2i --seed {summary['seed']} --threads {summary['threads']}"
    lines = [
        "# world-t2i: the shapes world's tiny text-to-image model",
        "",
        "A `StableDiffusion3Pipeline` folder (SD3 transformer in pixel space, two CLIP text "
        "towers, no VAE, no T5) trained "
        + (f"further from `{cfg['init']}` (a second stage)" if cfg["init"] else "from scratch")
        + " by rectified flow on 32x32 renders of the shapes world (`vrl.world`). Load it like "
        "any SD3 checkpoint:",
        "",
        "```python",
        "from vrl.models.diffusion import FlowMatchingAdapter",
        "from vrl.models.paths import resolve_pipeline_path",
        "",
        'adapter = FlowMatchingAdapter.from_pretrained(resolve_pipeline_path("world:t2i"))',
        "```",
        "",
        "or `model.path: world:t2i` in a `vrl train diffusion` recipe. Images are 32x32; "
        "latents are the pixels in [-1, 1].",
        "",
        "## Architecture",
        "",
        f"- transformer: `SD3Transformer2DModel`, {cfg['layers']} joint blocks, "
        f"{cfg['heads']} heads x 32, patch {cfg['patch']} ({(IMAGE_SIZE // cfg['patch']) ** 2} "
        f"image tokens), q/k norm {cfg['qk_norm']}: {params['transformer']:,} parameters",
        f"- text: 2 x `CLIPTextModelWithProjection` (width {cfg['text_width']}, "
        f"{cfg['text_layers']} layers, {cfg['text_tokens']} tokens): "
        f"{params['text_encoder']:,} + {params['text_encoder_2']:,} parameters "
        f"({'trained jointly' if cfg['train_text'] else 'random, frozen'}); CLIP BPE tokenizer "
        "cut after 4000 merges of open_clip's vocabulary",
        f"- no T5 (SD3 feeds {T5_TOKENS} zero token in its place; `tokenizer_3` only declares "
        "that length); no VAE",
        f"- scheduler: flow-match Euler, shift {cfg['shift']}",
        "",
        "## Recipe",
        "",
        f"`{command}{' --extra ' + overrides if overrides else ''}` reproduces it "
        f"(seed {summary['seed']}). Rectified flow (x_s = (1 - s) x0 + s eps, target eps - x0), "
        f"s = sigmoid(N({cfg['t_mean']}, {cfg['t_std']})); AdamW lr {cfg['lr']} "
        f"({cfg['warmup']} warm-up steps, cosine to {cfg['min_lr_ratio']} x), batch {cfg['batch_size']}, {cfg['steps']} steps, grad clip "
        f"1.0, EMA {cfg['ema']}, caption dropout {cfg['caption_dropout']} (for CFG)"
        + (
            f", loss weight 1 + {cfg['edge_weight']} on shape-boundary pixels"
            if cfg["edge_weight"]
            else ""
        )
        + ". Data: "
        f"fresh train-split scenes (subjects 1..{len(cfg['subject_mix'])} weighted "
        f"{list(cfg['subject_mix'])}, relation probability {cfg['relation_prob']}), "
        f"{cfg['fresh']} new scenes per batch, captions: {cfg['captions']}.",
        "",
        f"Training time: {summary['train_seconds'] / 60:.1f} min wall, "
        f"{summary['train_cpu_seconds'] / 60:.1f} min CPU, {summary['threads']} thread(s) on "
        f"{summary['machine']}; final loss {summary['final_loss']}.",
        "",
        "## Held-out quality",
        "",
        f"Exact checker (`vrl.world.level_accuracy`, DSG dependencies) on {cfg['eval_scenes']} "
        f"fixed scenes per row (seed {EVAL_SEED}; every 2-subject scene has a relation; test = at "
        "least one held-out (colour, shape) pair), prompt = `scene.prompt()`, "
        f"{cfg['sample_steps']} Euler (ODE) steps, guidance {cfg['guidance']}:",
        "",
        t2i_quality_table(summary["quality"]),
        "",
        "`relation_if_found`: the relation among scenes whose subjects were all found; "
        "`subjects`: every subject there with all its attributes; `all`: every question of the "
        "scene right (relations too); `objects`: found subjects / (subjects + extra "
        "shapes). Read `exist` with care: a random pipeline's noise images hold many blobs, one "
        "of which often has the asked shape, so exist alone is far above 0 for random images.",
        "",
        f"Sampling 16 images ({cfg['sample_steps']} steps, CFG): "
        f"{summary['sample_seconds']:.2f} s on {summary['threads']} thread(s).",
    ]
    return "\n".join(lines) + "\n"


def _kontext_stages(stages: list[dict[str, Any]], seed: int) -> str:
    """The card's training stages: one command each, every one after the first continuing from
    the folder the one before saved (``init=``), with its CPU time and held-out figure."""
    if not stages:
        return ""
    lines = ["", "| stage | command | steps | CPU min | threads | 1-subject test exist |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for i, st in enumerate(stages, start=1):
        extra = " ".join(f"{k}={_cli_value(v)}" for k, v in st["extra"].items())
        extra += " init=<stage " + str(i - 1) + ">" if i > 1 else ""
        command = f"vrl pretrain world-kontext --seed {seed}" + (
            f" --extra {extra}" if extra else ""
        )
        cpu = st["cpu_minutes"] + st["vae_cpu_minutes"]
        exist = st["one_subject_exist"]
        lines.append(
            f"| {i} | `{command}` | {st['steps']:,}" + (f" (+ VAE {st['vae_steps']:,})" if
            st["vae_steps"] else "") + f" | {cpu:.1f} | {st['threads']} | "
            + (f"{exist:.1%}" if exist is not None else "-") + " |"
        )  # fmt: skip
    total = sum(st["cpu_minutes"] + st["vae_cpu_minutes"] for st in stages)
    return "\n".join([*lines, "", f"{sum(st['steps'] for st in stages):,} steps, "
                       f"{total:.1f} CPU minutes in all."])  # fmt: skip


def _cli_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def quality_table(quality: dict[str, dict[str, float]]) -> str:
    """Markdown rows of ``held_out_quality``: one per canvas."""
    rows = [
        f"| {canvas} | {f['n']} | {f['vs_colour']:.1%} | {f['vs_shape']:.1%} | "
        f"{f['vs_relation']:.1%} | {f['all']:.1%} | {f['clipscore_true']:.2f} | "
        f"{f['clipscore_gap']:+.2f} |"
        for canvas, f in quality.items()
    ]
    header = (
        "| render | scenes | vs colour | vs shape | vs relation | above all | CLIPScore | gap |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([header, *rows])


def clip_card(summary: dict[str, Any]) -> str:
    """world-clip's README.md: architecture, recipe, seed, time, machine, held-out quality."""
    s, v, t = summary["settings"], CONFIG["vision_cfg"], CONFIG["text_cfg"]
    cpu_minutes = summary.get("train_cpu_minutes")
    cpu = "not recorded" if cpu_minutes is None else f"{cpu_minutes:.1f} min"
    return f"""# world-clip: a tiny open_clip CLIP for the shapes world's global reward

`open_clip.CLIP(**config["model_cfg"])`, {summary["parameters"] / 1e6:.2f}M parameters: a
{v["image_size"]} px ViT ({v["layers"]} blocks, width {v["width"]}, patch {v["patch_size"]}), a
text transformer ({t["layers"]} blocks, width {t["width"]}, context {t["context_length"]}) on
open_clip's packaged `{TOKENIZER}` BPE (its 49,408-row token table is most of the parameters),
embedding {CONFIG["embed_dim"]}. Pixels are normalised around the world's grey background
(`preprocess_cfg`). Load it as the global reward loads any config-built open_clip model:

```python
from vrl.pretrain.clip import load_world_clip

scorer = load_world_clip()  # CLIPScorer.from_config(config["model_cfg"], weights_path=...)
```

## Recipe

`vrl pretrain world-clip --seed {summary["seed"]}` (defaults of `vrl/pretrain/clip.py`):
{s["pool"]} train-split scenes (1-{s["max_subjects"]} subjects, half on a named background),
each rendered once at a canvas of {s["canvases"]} px and resized to {v["image_size"]} px;
captions from `vrl.world.captions` (5 phrasings). Symmetric InfoNCE with, for every image, three
hard negatives (one subject's colour changed, one subject's shape changed, one relation
inverted; never forming a held-out pair); AdamW (sparse Adam for the token table), lr {s["lr"]},
{s["warmup"]} warm-up steps then cosine, batch {s["batch_size"]} images, {s["steps"]} steps.

Training time: {summary["train_minutes"]:.1f} min wall, {cpu} CPU, {summary["threads"]}
thread(s), on {summary["machine"]} (shared with other jobs), plus
{summary["data_minutes"]:.1f} min rendering.

## Held-out quality

Test-split scenes (every one holds a (colour, shape) pair never seen in training, not even in a
negative). "vs X": how often the true caption (`scene.prompt()`) has a higher cosine than the
same caption with X altered (chance 50%); "above all": higher than every negative the scene has
(chance 25-33%); CLIPScore (2.5 * max(cos, 0)) of the true caption, and its mean gap to the
altered ones.

{quality_table(summary["held_out"])}

The same on train-split scenes that were not in the training pool (pairs seen in training):

{quality_table(summary["seen_pairs"])}
"""


def kontext_card(summary: dict[str, Any]) -> str:
    """world-kontext's README.md: architecture, recipe, seed, CPU time and held-out quality."""
    c, p = summary["config"], summary["parameters"]
    q = summary["quality"]
    chains = [
        ("chain", "2-subject chain (test)"),
        ("relational chain", "2-subject chain, relational (test)"),
        ("chain with boxes", "2-subject chain, boxes (test)"),
    ]
    rows = "\n".join(
        f"| {name} | {r['exist']:.1%} | {r['attribute']:.1%} | "
        f"{'-' if r.get('relation') is None else format(r['relation'], '.1%')} |"
        for name, r in (
            [(k, v) for k, v in q.items() if "exist" in v]
            + [(f"{label} {k}", v) for label, key in chains for k, v in q.get(key, {}).items()]
        )
    )
    stages = summary.get("lineage") or []
    return f"""# world-kontext: a tiny FLUX.1 Kontext-architecture model of the shapes world

`FluxKontextPipeline`: `FluxTransformer2DModel` ({p["transformer"] / 1e6:.2f}M parameters,
{c["layers"]} double + {c["single_layers"]} single blocks, {c["heads"]} heads of 32, no guidance
embedding: true CFG), a tiny `AutoencoderKL` ({p["vae"] / 1e6:.2f}M, {c["vae_down"]}x
downsampling, {c["latent_channels"]} channels: a 32 px image is
{(32 // c["vae_down"] // 2) ** 2} tokens), `CLIPTextModel` (pooled) and `T5EncoderModel`
(width {c["text_width"]}, {c["text_tokens"]} tokens). Load it with
`FlowMatchingAdapter.from_pretrained(path)`: a `FluxAdapter` trained on references, so a
chain's `context=auto` runs in context.

## Recipe

`vrl/pretrain/kontext.py`: a VAE (stage 1, {c["vae_steps"]} steps of batch {c["vae_batch"]}),
then rectified-flow steps of batch {c["batch_size"]} on `kontext_data` triples (every pass of a
world scene's chain, plain text-to-image at {c["plain_fraction"]:.0%}), the loss on the noisy
tokens only. Seed {summary["seed"]}, on {summary["machine"]}.
{_kontext_stages(stages, summary["seed"])}
Final loss {summary["final_loss"]}.

## Held-out quality

{c["sample_steps"]} ODE steps, guidance {c["guidance"]}, scored by the exact checker:

| images | exist | attribute | relation |
|---|---|---|---|
{rows}

Test scenes hold a (colour, shape) pair never seen in training. One-subject test scenes found,
by shape: {", ".join(f"{k} {v:.1%}" for k, v in q["1-subject test"]["by_shape"].items())}.
"""
