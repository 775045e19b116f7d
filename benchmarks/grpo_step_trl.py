"""The trl side of `benchmarks/grpo_step.py`: trl's GRPOTrainer on the same model folder,
samples, shapes and reward as vrl's trainer (imported by that script's trl worker only; the
shared constants come in the worker's spec)."""

from __future__ import annotations

import statistics
import time
from itertools import pairwise
from typing import Any


def run_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """trl's GRPOTrainer on the same model folder, samples, shapes and reward."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import (
        AutoProcessor,
        Qwen2_5_VLForConditionalGeneration,
        TrainerCallback,
    )

    from vrl.data.prompts import build_messages
    from vrl.data.vlm_r1 import load_image, load_vlm_r1_jsonl
    from vrl.rewards import accuracy_score, parse_completion

    cuda = torch.cuda.is_available()
    samples = load_vlm_r1_jsonl(spec["jsonl"])
    # The prompts are vrl's own chat messages ({"type": "image"} + text); trl fills the image slot
    # from the "image" column.
    dataset = Dataset.from_list(
        [
            {
                "prompt": build_messages(s, spec["template"]),
                "image": load_image(s.images[0]),
                "solution": s.solution,
                "accu_reward_method": s.accu_reward_method,
            }
            for s in samples
        ]
    )

    lengths: list[float] = []  # mean completion length per step, to check the forcing

    def accuracy(completions, completion_ids, solution, accu_reward_method, **_) -> list[float]:
        """vrl's accuracy reward, per completion (conversational completions: one assistant turn)."""
        lengths.append(statistics.fmean(len(ids) for ids in completion_ids))
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [
            accuracy_score(parse_completion(t), {"solution": s, "accu_reward_method": m})
            for t, s, m in zip(texts, solution, accu_reward_method, strict=True)
        ]

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        spec["model_path"], dtype=torch.float32
    )
    model.model.visual.requires_grad_(False)
    processor = AutoProcessor.from_pretrained(spec["model_path"])
    processor.tokenizer.padding_side = "left"  # not restored by from_pretrained
    # vrl's suppressed set (trl alone would suppress only the image pad).
    placeholders = ("image_token_id", "video_token_id", "vision_start_token_id")
    suppressed = sorted({getattr(model.config, k) for k in placeholders})

    steps = spec["warmup"] + spec["steps"]
    batch = spec["prompts"] * spec["group_size"]
    args = trl.GRPOConfig(
        output_dir=spec["run_dir"],
        per_device_train_batch_size=batch,  # generation batch = this x 1 process x 1 accumulation
        gradient_accumulation_steps=1,
        num_generations=spec["group_size"],
        max_completion_length=spec["new_tokens"],
        generation_kwargs={"min_new_tokens": spec["new_tokens"], "suppress_tokens": suppressed},
        temperature=spec["temperature"],
        top_p=1.0,
        top_k=0,
        beta=spec["beta"],
        num_iterations=spec["num_iterations"],
        epsilon=0.2,
        loss_type="grpo",
        scale_rewards="group",
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.99,
        optim="adamw_torch",
        max_grad_norm=1.0,
        max_steps=steps,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=not cuda,
        use_vllm=False,
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=spec["seed"],
    )

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.begin = self.cpu_begin = 0.0
            self.seconds: list[float] = []  # on_step_begin -> on_step_end, wall
            self.cpu_seconds: list[float] = []  # the same, process CPU time
            self.ends: list[float] = []

        def _now(self) -> float:
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = self._now()
            self.cpu_begin = time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            now = self._now()
            self.cpu_seconds.append(time.process_time() - self.cpu_begin)
            self.seconds.append(now - self.begin)
            self.ends.append(now)

    timer = StepTimer()
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=[accuracy],
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        callbacks=[timer],
    )
    if trainer.args.gradient_checkpointing:
        raise RuntimeError("gradient checkpointing is on: the comparison would be unfair")
    trainer.train()
    if len(timer.seconds) != steps:
        raise RuntimeError(f"expected {steps} timed trl steps, got {len(timer.seconds)}")
    warm = spec["warmup"]
    return {
        "seconds": timer.seconds[warm:],
        "cpu_seconds": timer.cpu_seconds[warm:],
        # step i's end minus step i-1's end: everything, dataloader and callbacks included
        "seconds_end_to_end": [b - a for a, b in pairwise(timer.ends[max(warm - 1, 0) :])],
        "completion_length": statistics.fmean(lengths[warm:]),
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "version": trl.__version__,
    }
