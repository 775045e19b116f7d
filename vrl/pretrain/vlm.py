"""`vrl pretrain world-vlm`: a tiny Qwen2.5-VL SFT-trained on shapes-world questions.

    vrl pretrain world-vlm --out runs/world-vlm --seed 0 --threads 1   # ~4 CPU minutes

The recipe, top to bottom:

1. Data: ``vrl.world.tasks`` writes VLM-R1 JSONL + PNG files (train-split scenes) for each task of
   ``tasks``, read back by ``vrl.data.load_vlm_r1_jsonl``: the path a user's data takes. The
   held-out files use test-split scenes (they hold the (colour, shape) pairs never seen in
   training) and another seed.
2. Tokenizer: ``vrl.models.tiny.build_vlm_tokenizer`` trained on the prompts and answers of the
   training files, so a question is a handful of tokens.
3. Model: the tiny Qwen2.5-VL config of ``vrl.models.tiny`` (112 px -> 16 image tokens), random.
4. SFT: cross-entropy on the answer tokens only (``<answer>X</answer><|im_end|>``), prompts built
   with the GRPO trainer's template, AdamW with warm-up and cosine decay, tasks mixed uniformly.
5. Held-out accuracy per task by ``vrl.evaluate.evaluate_answers`` (greedy, the accuracy reward),
   then ``save_pretrained`` (safetensors) with the processor, so ``VLMAdapter.from_pretrained``
   and ``vrl train vlm`` (``model.path``) load the folder unchanged.

The grounding model ``world:vlm-rec`` (the ``refer`` task, ~10 CPU minutes; the settings are
``vrl.pretrain.grounding.SFT_RECIPE``, and the command also scores its four evaluation sets):

    vrl pretrain world-vlm-rec --seed 0 --threads 1

Box answers are written in the model's own convention (pixels of its 112 px input; the parser
maps them back to image pixels before IoU), each coordinate one token (``coordinate_tokens``),
and the language model's M-RoPE base is 20 so that it can tell the image tokens' rows and
columns apart (``build_model``); docs/experiments/2026-12-06-world-grounding.md has the figures.

Settings go through ``--extra key=value`` (``DEFAULTS`` lists them). Simplifications: one image
size, single-image prompts, no packing, the vision tower trained with the rest.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from vrl.data.prompts import build_messages
from vrl.models.paths import WORLD_WEIGHTS
from vrl.pretrain import machine_description
from vrl.world.tasks import TASK_CANVAS as CANVAS
from vrl.world.tasks import write_task_files

DEFAULTS: dict[str, Any] = {
    "tasks": "colour,counting",  # comma-separated vrl.world.tasks names
    "train_per_task": 2000,  # training samples written per task
    "held_out_per_task": 200,  # held-out (test-split) samples per task
    "canvas": CANVAS,  # world canvas the scenes are rendered at (pixels)
    "image_size": 112,  # model input side: the processor resizes to it (112 -> 16 image tokens)
    "vision_depth": 2,  # vision transformer blocks
    "steps": 400,  # SFT optimizer steps
    "batch_size": 32,
    "lr": 2e-3,
    "warmup": 50,
    "eval_every": 200,  # steps between held-out evaluations (0: only at the end)
    "template": "answer_only",  # prompt template of vrl.data.prompts, shared with GRPO
    "vocab_size": 512,
    # 1: every integer 0..image_size is one token (box coordinates in the model's 112 px input
    # convention); 0: numbers spelled digit by digit
    "coordinate_tokens": 0,
    # backgrounds of the training and held-out files, "+"-joined ("": the default light grey);
    # training samples are shared out between the training backgrounds
    "train_background": "",
    "held_out_background": "",
    # base of the language model's M-RoPE; the image tokens' row and column offsets (0-3) turn
    # the height and width sections, which get the lowest frequencies (see build_model)
    "rope_theta": 1e6,
}


IMAGE_MEAN = (200 / 255,) * 3
IMAGE_STD = (0.3,) * 3
"""Pixel normalisation of the processor: the world's light-grey background is the mean, so an
empty canvas is zero input. With CLIP's statistics (the processor default) the background was a
large constant in every patch, the shapes a ~1% change of the image tokens, and SFT did not learn
even the colour of a lone shape in 450 steps; with these it does in ~100."""

WEIGHTS_DIR = WORLD_WEIGHTS / "world-vlm"
"""The committed checkpoint (``model.path: world:vlm``), with its model card."""

HELD_OUT_SEED = 10_000
"""Seed of the held-out files (test-split scenes), the same for SFT and every GRPO run."""

MAX_ANSWER_TOKENS = 8
"""Greedy decoding budget: ``<answer>``, the answer, ``</answer>``, EOS."""

BOX_TASKS = frozenset({"grounding", "refer"})
"""Tasks answered by one box, scored by IoU (``vrl.evaluate.evaluate_rec``)."""

MAX_BOX_TOKENS = 24
"""Greedy budget of a box answer: ``[x1, y1, x2, y2]`` in tags, spelled digit by digit (4 x 3
digits, 3 separators, brackets and tags); coordinate tokens need about 14."""


# ---------------------------------------------------------------------- settings


# ---------------------------------------------------------------------- data


def load_task_samples(paths: Sequence[Path]) -> dict[str, list]:
    """Samples of each file, keyed by task, through the validating VLM-R1 loader."""
    from vrl.data.vlm_r1 import load_vlm_r1_jsonl
    from vrl.rewards.accuracy import ACCURACY_METHODS

    by_task: dict[str, list] = {}
    for path in paths:
        for sample in load_vlm_r1_jsonl(path, allowed_reward_methods=ACCURACY_METHODS):
            by_task.setdefault(sample.extra["task"], []).append(sample)
    return by_task


def answer_text(sample, box_map=None) -> str:
    """The SFT target of a sample: its solution in answer tags (what ``answer_only`` asks for).

    A solution that is one box ``[x1, y1, x2, y2]`` (original-image pixels) is written in the
    model's own coordinate convention when ``box_map`` (original -> model box) is given, rounded
    to integers: the parser maps the model's answers back with the inverse before any IoU.
    """
    solution = sample.solution
    if box_map is not None and (box := single_box(solution)) is not None:
        solution = json.dumps([round(v) for v in box_map(box)])
    return f"<answer>{solution}</answer>"


def single_box(solution: str) -> list[float] | None:
    """The box of a solution that is exactly ``[x1, y1, x2, y2]``, else None."""
    try:
        value = json.loads(solution)
    except ValueError:
        return None
    if (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, int | float) for v in value)
    ):
        return [float(v) for v in value]
    return None


def tokenizer_corpus(samples: Iterable, template: str) -> Iterator[str]:
    """Prompt and answer texts of the training samples: what the tokenizer will ever see."""
    from vrl.data.prompts import format_prompt

    for sample in samples:
        yield "user\n" + format_prompt(sample.question, template)
        yield "assistant\n" + answer_text(sample)


# ---------------------------------------------------------------------- model


def build_model(tokenizer, seed: int, vision_depth: int = 2, rope_theta: float | None = None):
    """A random tiny Qwen2.5-VL (``vrl.models.tiny.tiny_vlm_config``, ``vision_depth`` blocks in
    the vision tower, the last one with full attention) for this tokenizer.

    ``rope_theta`` replaces the language model's M-RoPE base (1e6). M-RoPE splits the 16
    frequency pairs of a 32-wide head into time, height and width sections in that order, so the
    width section holds the slowest ones: at 1e6 an image token one column to the right is turned
    by at most 2e-4 rad, the language model cannot tell the image tokens' columns apart, and
    nothing else in the architecture says where a token is (the vision tower's RoPE is relative).
    """
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vrl.models.tiny import _special_ids, tiny_vlm_config

    ids = _special_ids(tokenizer)
    config = tiny_vlm_config(
        "qwen2_5_vl",
        vocab_size=len(tokenizer),
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
    )
    if rope_theta is not None:
        config.text_config.rope_parameters["rope_theta"] = float(rope_theta)
    config.vision_config.depth = vision_depth
    config.vision_config.fullatt_block_indexes = [vision_depth - 1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    return model


def sft_batch(adapter, samples: Sequence, template: str) -> tuple[dict[str, torch.Tensor], Any]:
    """Model inputs of prompt + answer + EOS, and labels that are -100 except on the answer.

    Prompts are padded on the left, so every answer ends at the last position; it starts with the
    ``<answer>`` token, an added token, so tokenising it alone gives the same ids as in context.
    """
    from vrl.data.vlm_r1 import load_image

    tokenizer = adapter.tokenizer
    eos = tokenizer.eos_token
    prompts = [
        adapter.processor.apply_chat_template(
            build_messages(s, template), tokenize=False, add_generation_prompt=True
        )
        for s in samples
    ]
    images = [load_image(s.images[0]) for s in samples]
    answers = [
        answer_text(s, model_box_map(adapter, image.size)) + eos
        for s, image in zip(samples, images, strict=True)
    ]
    encoded = adapter.processor(
        text=[p + a for p, a in zip(prompts, answers, strict=True)],
        images=images,
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    inputs = {k: v for k, v in encoded.items() if isinstance(v, torch.Tensor)}
    labels = torch.full_like(inputs["input_ids"], -100)  # (B, T)
    for row, answer in enumerate(answers):
        n = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
        labels[row, -n:] = inputs["input_ids"][row, -n:]
    return inputs, labels


def model_box_map(adapter, original_size: tuple[int, int]):
    """Original pixels -> the adapter's box convention for an image of ``original_size``: the
    inverse of the map the parser applies to the model's answers (the input size is read, as
    ``VLMAdapter.prepare_inputs`` reads it, from the processor's patch grid)."""
    from PIL import Image

    ip = adapter.processor.image_processor
    blank = Image.new("RGB", tuple(original_size))
    _, grid_h, grid_w = ip(images=[blank], return_tensors="pt")["image_grid_thw"][0].tolist()
    patch = int(getattr(ip, "patch_size", 14))
    input_size = (grid_w * patch, grid_h * patch)
    return lambda box: adapter.box_from_original(box, original_size, input_size)


# ---------------------------------------------------------------------- evaluation


def held_out_accuracy(
    adapter, model, held_out: dict[str, list], template: str, progress: bool = False
) -> dict[str, float]:
    """Greedy accuracy (the accuracy reward) per task, and their mean under "mean"; box tasks
    count Acc@IoU>=0.5 (and add their mean IoU as "<task> iou", outside the mean)."""
    from vrl.evaluate import evaluate_answers, evaluate_rec

    scores, ious = {}, {}
    for task, samples in held_out.items():
        if task in BOX_TASKS:
            rec = evaluate_rec(
                adapter, model, samples, template, max_new_tokens=MAX_BOX_TOKENS,
                batch_size=50, progress=progress,
            )  # fmt: skip
            scores[task], ious[f"{task} iou"] = rec["acc@0.5"], rec["mean_iou"]
            continue
        scores[task] = evaluate_answers(
            adapter,
            model,
            samples,
            template,
            max_new_tokens=MAX_ANSWER_TOKENS,
            batch_size=50,
            progress=progress,
        )["accuracy"]
    scores["mean"] = sum(scores.values()) / len(scores)
    return {**scores, **ious}


def write_held_out(
    out_dir: str | Path,
    tasks: Iterable[str],
    n: int,
    size: int = CANVAS,
    background: str | None = None,
) -> dict[str, list]:
    """The held-out files (test-split scenes, ``HELD_OUT_SEED``) and their samples by task."""
    paths = write_task_files(out_dir, tasks, n, HELD_OUT_SEED, "test", size, background=background)
    return load_task_samples(paths)


# ---------------------------------------------------------------------- training


def train_sft(
    adapter,
    train: dict[str, list],
    settings: dict[str, Any],
    seed: int,
    evaluate=None,
    log=print,
) -> list[dict[str, Any]]:
    """SFT of ``adapter.model`` on the training samples; ``evaluate(step)`` -> dict of scores.

    Each batch draws its tasks uniformly, then a sample of that task from a shuffled pass over
    the task's samples. Returns the log: one record per evaluation.
    """
    model = adapter.model
    steps, batch_size = settings["steps"], settings["batch_size"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=0.01)
    warmup = max(1, settings["warmup"])

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine to 10% (or constant)
        if step < warmup:
            return (step + 1) / warmup
        if settings.get("schedule", "cosine") == "constant":
            return 1.0
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    rng = random.Random(f"world-vlm/sft/{seed}")
    tasks = sorted(train)
    queues: dict[str, list] = {task: [] for task in tasks}

    def draw(task: str):
        if not queues[task]:
            queues[task] = rng.sample(train[task], len(train[task]))
        return queues[task].pop()

    history: list[dict[str, Any]] = []
    t0, losses = time.perf_counter(), []
    eval_every = settings["eval_every"] or steps
    for step in range(steps):
        model.train()
        samples = [draw(rng.choice(tasks)) for _ in range(batch_size)]
        inputs, labels = sft_batch(adapter, samples, settings["template"])
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        done = step + 1
        if done % eval_every == 0 or done == steps:
            record = {
                "step": done,
                "loss": sum(losses) / len(losses),
                "minutes": (time.perf_counter() - t0) / 60,
            }
            losses = []
            if evaluate is not None:
                record["held_out"] = evaluate(done)
            history.append(record)
            log(json.dumps(record))
    return history


# ---------------------------------------------------------------------- the command


def pretrain(out: str | Path, seed: int = 0, log=print, **overrides: Any) -> dict[str, Any]:
    """Write the data, train, evaluate and save a world VLM in ``out``; returns the summary."""
    from vrl.models.tiny import build_tiny_processor, build_vlm_tokenizer
    from vrl.models.vlm import VLMAdapter

    settings = {**DEFAULTS, **overrides}
    out = Path(out)
    tasks = [t.strip() for t in settings["tasks"].split(",") if t.strip()]
    canvas, side, template = settings["canvas"], settings["image_size"], settings["template"]
    t0 = time.perf_counter()
    train_files = write_task_files(
        out / "data", tasks, settings["train_per_task"], seed, "train", canvas,
        background=settings["train_background"] or None,
    )  # fmt: skip
    train = load_task_samples(train_files)
    held_out = write_held_out(
        out / "data", tasks, settings["held_out_per_task"], canvas,
        background=settings["held_out_background"] or None,
    )  # fmt: skip
    data_minutes = (time.perf_counter() - t0) / 60

    corpus = tokenizer_corpus((s for samples in train.values() for s in samples), template)
    numbers = side + 1 if settings["coordinate_tokens"] else 0
    tokenizer = build_vlm_tokenizer(
        corpus, vocab_size=settings["vocab_size"], number_tokens=numbers
    )
    processor = build_tiny_processor("qwen2_5_vl", tokenizer, side * side, side * side)
    processor.image_processor.image_mean = list(IMAGE_MEAN)
    processor.image_processor.image_std = list(IMAGE_STD)
    adapter = VLMAdapter(
        build_model(tokenizer, seed, settings["vision_depth"], settings["rope_theta"]), processor
    )
    parameters = sum(p.numel() for p in adapter.model.parameters())
    log(f"[world-vlm] {parameters / 1e6:.2f}M parameters, tasks {tasks}, {settings['steps']} steps")

    def evaluate(step: int) -> dict[str, float]:
        return held_out_accuracy(adapter, adapter.model, held_out, template)

    t1, cpu = time.perf_counter(), time.process_time()
    history = train_sft(adapter, train, settings, seed, evaluate, log)
    train_minutes = (time.perf_counter() - t1) / 60
    train_cpu_minutes = (time.process_time() - cpu) / 60

    weights = out / "model"
    adapter.model.save_pretrained(weights, safe_serialization=True)
    processor.save_pretrained(weights)
    summary = {
        "seed": seed,
        "settings": settings,
        "parameters": parameters,
        "vocab": len(tokenizer),
        "threads": torch.get_num_threads(),
        "data_minutes": data_minutes,
        "train_minutes": train_minutes,
        "train_cpu_minutes": train_cpu_minutes,
        "held_out": history[-1].get("held_out", {}),
        "history": history,
        "machine": machine_description(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
