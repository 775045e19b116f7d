"""Run by tests/test_diffusion_resume_distributed.py under `torchrun --nproc_per_node 2` (gloo).

Trains 2 diffusion GRPO steps with one prompt x G=4 per step, records what group_advantages saw
and a digest of the weights, and writes rank<k>.json into the folder given as argv[1].
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _helpers import param_digest  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from vrl import core  # noqa: E402
from vrl.config import load_config  # noqa: E402
from vrl.trainers import diffusion_grpo  # noqa: E402
from vrl.trainers.diffusion_config import DiffusionTrainConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path) -> None:
    calls, seen = [], {}
    real_group_advantages, real_prepare = core.group_advantages, Accelerator.prepare

    def recording_group_advantages(rewards, group_size, scale="group"):
        result = real_group_advantages(rewards, group_size, scale)
        calls.append({"rewards": rewards.tolist(), "advantages": result.advantages.tolist()})
        return result

    def recording_prepare(self, *objs):
        seen["state"] = (self.process_index, self.num_processes, self.distributed_type.name)
        seen["initial"] = param_digest(objs[0])
        return real_prepare(self, *objs)

    core.group_advantages = recording_group_advantages
    Accelerator.prepare = recording_prepare
    cfg = load_config(
        DiffusionTrainConfig,
        ROOT / "configs" / "diffusion_tiny_cpu.yaml",
        [
            f"run.output_dir={out / 'run'}",
            "run.max_steps=2",
            "run.save_every=0",
            "run.save_final=false",
            "grpo.prompts_per_step=1",
            "grpo.group_size=4",
            "sampling.num_steps=4",
            "sampling.eval_num_steps=3",
            "prompts.num_eval=2",
        ],
    )
    summary = diffusion_grpo.train(cfg)
    rank, world, kind = seen["state"]
    (out / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "world_size": world,
                "distributed_type": kind,
                "advantage_calls": calls,
                "initial_digest": seen["initial"],
                "param_digest": param_digest(summary["adapter"].transformer),
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
