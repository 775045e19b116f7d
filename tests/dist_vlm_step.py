"""Run by tests/test_vlm_resume_distributed.py under `torchrun --nproc_per_node 2` (gloo, CPU).

Trains 2 GRPO steps with one prompt x G=4 per step, records what group_advantages saw and a
digest of the weights, and writes rank<k>.json into the folder given as argv[1].
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


from _helpers import param_digest  # noqa: E402

from vrl import core  # noqa: E402
from vrl.config import load_config  # noqa: E402
from vrl.rewards import register_reward  # noqa: E402
from vrl.trainers import vlm_grpo  # noqa: E402
from vrl.trainers.common import read_metrics  # noqa: E402
from vrl.trainers.vlm_config import VLMTrainConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path) -> None:
    calls, completions = [], []

    def recording_group_advantages(rewards, group_size, scale="group"):
        result = real_group_advantages(rewards, group_size, scale)
        calls.append({"rewards": rewards.tolist(), "advantages": result.advantages.tolist()})
        return result

    @register_reward("test_completion_length")
    def completion_length(comps, samples):
        completions.extend(c.text for c in comps)
        return [len(c.text) / 10 for c in comps]

    real_group_advantages = core.group_advantages
    core.group_advantages = recording_group_advantages
    initial = {}
    from accelerate import Accelerator

    real_prepare = Accelerator.prepare

    def recording_prepare(self, *objs):
        initial["digest"] = param_digest(objs[0])
        initial["state"] = (self.process_index, self.num_processes, self.distributed_type.name)
        return real_prepare(self, *objs)

    Accelerator.prepare = recording_prepare
    cfg = load_config(
        VLMTrainConfig,
        ROOT / "configs" / "vlm_tiny_cpu.yaml",
        [
            f"run.output_dir={out / 'run'}",
            "run.max_steps=2",
            "run.save_every=0",
            "run.save_final=false",
            "data.synthetic_size=16",
            "grpo.prompts_per_step=1",
            "grpo.group_size=4",
            "grpo.rewards={test_completion_length: 1.0}",
            "optim.schedule=linear",  # to 0 over the 2 steps, stepped once per step on each rank
        ],
    )
    summary = vlm_grpo.train(cfg)
    rank, world, kind = initial["state"]
    (out / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "world_size": world,
                "distributed_type": kind,
                "local_samples": len(completions) // cfg.run.max_steps,
                "advantage_calls": calls,
                "completions": completions,
                "initial_digest": initial["digest"],
                "param_digest": param_digest(summary["model"]),
                "lrs": [r["lr"] for r in read_metrics(out / "run" / "metrics.jsonl")],
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
