"""Run by tests/test_sharded_training.py, 2 processes, under `accelerate launch` with
configs/accelerate/fsdp.yaml (FSDP2) or under `torchrun` (unsharded, the reference).

    dist_sharded_train.py vlm|diffusion RUN_DIR STEPS [--resume]

Trains the trainer's tiny CPU recipe with LoRA for STEPS steps (a checkpoint every 2) and writes
RUN_DIR/launch-rank<k>.json: the distributed type, whether the prepared model was sharded and
into how many FSDP modules (the root and each wrapped transformer block).
The VLM's reward is the completion's length, so that a group's rewards differ and the LoRA moves.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from torch.distributed.fsdp import FSDPModule  # noqa: E402

from vrl.config import load_config  # noqa: E402
from vrl.rewards import register_reward  # noqa: E402
from vrl.sharding import is_sharded  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

COMMON = ["run.save_every=2", "run.keep_checkpoints=10", "optim.schedule=constant"]
VLM = [
    "data.synthetic_size=16",
    "model.lora.enabled=true",
    "grpo.prompts_per_step=2",
    "grpo.group_size=4",
    "grpo.num_iterations=2",  # old log-probs, and two optimizer steps per step
    "grpo.beta=0.04",  # the reference: the adapter disabled
    "grpo.max_completion_length=6",
    "grpo.rewards={test_completion_length: 1.0}",
    "optim.micro_batch_size=2",  # two micro-batches per process: no_sync, then a synced one
]
DIFFUSION = [
    "grpo.prompts_per_step=1",
    "grpo.group_size=4",
    "grpo.beta=0.04",
    "sampling.num_steps=4",
    "sampling.eval_num_steps=3",
    "prompts.num_eval=2",
    "optim.micro_batch_size=1",
    "eval.ema=true",
]


@register_reward("test_completion_length")
def completion_length(completions, samples):
    return [len(c.text) / 10 for c in completions]


def main(trainer: str, run_dir: Path, steps: int, resume: bool) -> None:
    torch.set_num_threads(1)
    seen = {}
    real_prepare = Accelerator.prepare

    def recording_prepare(self, *objs):
        out = real_prepare(self, *objs)
        seen.update(
            rank=self.process_index,
            world_size=self.num_processes,
            distributed_type=self.distributed_type.name,
            sharded=is_sharded(out[0]),
            fsdp_modules=sum(isinstance(m, FSDPModule) for m in out[0].modules()),
        )
        return out

    Accelerator.prepare = recording_prepare
    overrides = [f"run.output_dir={run_dir}", f"run.max_steps={steps}", *COMMON]
    overrides += ["run.resume=true"] if resume else []
    if trainer == "vlm":
        from vrl.trainers import vlm_grpo
        from vrl.trainers.vlm_config import VLMTrainConfig

        cfg = load_config(VLMTrainConfig, ROOT / "configs" / "vlm_tiny_cpu.yaml", overrides + VLM)
        vlm_grpo.train(cfg)
    else:
        from vrl.trainers import diffusion_grpo
        from vrl.trainers.diffusion_config import DiffusionTrainConfig

        recipe = ROOT / "configs" / "diffusion_tiny_cpu.yaml"
        cfg = load_config(DiffusionTrainConfig, recipe, overrides + DIFFUSION)
        diffusion_grpo.train(cfg)
    (run_dir / f"launch-rank{seen['rank']}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), "--resume" in sys.argv[4:])
