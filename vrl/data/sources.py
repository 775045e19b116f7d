"""Training data named in a recipe: VLM-R1 data files, or data that vrl writes first.

``data.train_files`` is one of

- ``file.jsonl[:file2.json:rec.yaml...]``: VLM-R1 data (``data.image_folders`` beside them):
  JSONL files, ``.json`` arrays, or VLM-R1 data configs (``datasets: - json_path: ...`` with an
  optional ``sampling_strategy``, seeded by ``run.seed``), records in the conversations form or
  VLM-R1's REC form (``vrl.data.vlm_r1``);
- ``synthetic:<name>``: a generated set (``colour_yes_no``, ``is_it_red``, ``rec_boxes``,
  ``detection``) of ``data.synthetic_size`` samples;
- ``world:<task>[,<task>...][@<background>[+<background>...]]``: shapes-world task files
  (``data.synthetic_size`` per task), from scenes of seed ``run.seed + WORLD_DATA_SEED_OFFSET``.

Whatever the source, the samples go through the same validating loader as user data.
"""

from __future__ import annotations

from pathlib import Path

from vrl.data.vlm_r1 import load_vlm_r1_jsonl
from vrl.models.paths import WORLD_PREFIX
from vrl.rewards.accuracy import ACCURACY_METHODS
from vrl.world.tasks import parse_world_data, write_task_files

SYNTHETIC_PREFIX = "synthetic:"


WORLD_DATA_SEED_OFFSET = 1_000
"""world:<tasks> training files use scenes of seed run.seed + this, not those the SFT saw."""


def load_vlm_dataset(cfg) -> list:
    """The training samples, validated whole; synthetic:<name> writes a generated set first, and
    world:<task>[,<task>...][@<background>[+<background>...]] shapes-world task files
    (synthetic_size per task)."""
    files, folders = cfg.data.train_files, cfg.data.image_folders or None
    if files.startswith(SYNTHETIC_PREFIX):
        files, folders = write_synthetic(
            files[len(SYNTHETIC_PREFIX) :],
            Path(cfg.run.output_dir) / "data",
            n=cfg.data.synthetic_size,
            seed=cfg.run.seed,
        )
    elif files.startswith(WORLD_PREFIX):
        tasks, background = parse_world_data(files[len(WORLD_PREFIX) :])
        out = Path(cfg.run.output_dir) / "data" / "world"
        seed = cfg.run.seed + WORLD_DATA_SEED_OFFSET
        paths = write_task_files(
            out, tasks, cfg.data.synthetic_size, seed, "train", background=background
        )
        files, folders = ":".join(map(str, paths)), None  # images beside each file
    return load_vlm_r1_jsonl(
        files,
        folders,
        skip_bad_lines=cfg.data.skip_bad_lines,
        allowed_reward_methods=ACCURACY_METHODS,
        seed=cfg.run.seed,
    )


def write_synthetic(name: str, out_dir: Path, n: int, seed: int) -> tuple[str, str]:
    from functools import partial

    from vrl.data import synthetic

    writers = {
        "colour_yes_no": synthetic.write_colour_yes_no,
        "is_it_red": partial(synthetic.write_colour_yes_no, asked="red"),
        "rec_boxes": synthetic.write_rec_boxes,
        "detection": synthetic.write_detection,
    }
    if name not in writers:
        raise ValueError(f"unknown synthetic dataset {name!r}; choose one of {sorted(writers)}")
    jsonl = writers[name](out_dir / name, n=n, seed=seed)
    return str(jsonl), str(Path(jsonl).parent)
