"""A mistake typed on the command line or written in a recipe is one line on stderr, never a
traceback (issue 20, item 5), and it comes before any model loads."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vrl import cli
from vrl.trainers import diffusion_grpo, vlm_grpo

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VLM = ["train", "vlm", "--config", str(CONFIGS / "vlm_tiny_cpu.yaml")]
DIFFUSION = ["train", "diffusion", "--config", str(CONFIGS / "diffusion_tiny_cpu.yaml")]


@pytest.fixture
def no_training(monkeypatch):
    """Trainers that record the config they were given instead of training on it."""
    given_configs = []

    def record(cfg):
        given_configs.append(cfg)
        return {"steps": cfg.run.max_steps}

    monkeypatch.setattr(vlm_grpo, "train", record)
    monkeypatch.setattr(diffusion_grpo, "train", record)
    return given_configs


def run_cli(capsys, argv) -> tuple[int, list[str]]:
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err.splitlines()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (VLM + ["optim.micro_batch_size=0"], "optim.micro_batch_size: must be >= 1 (got 0)"),
        (VLM + ["grpo.prompts_per_step=0"], "grpo.prompts_per_step: must be >= 1 (got 0)"),
        (VLM + ["grpo.max_completion_length=0"], "grpo.max_completion_length: must be >= 1"),
        (VLM + ["optim.lr=.nan"], "optim.lr: must be a finite number (got nan)"),
        (VLM + ["optim.lr=.inf"], "optim.lr: must be a finite number (got inf)"),
        (VLM + ["data.template=bogus"], "data.template: no template 'bogus'; the templates are"),
        (VLM + ["grpo.rewards={bogus: 1}"], "grpo.rewards.bogus: no such reward; text rewards:"),
        (VLM + ["grpo.rewards={rec_iou: .nan}"], "grpo.rewards.rec_iou: must be a finite number"),
        (VLM + ["grpo.rewards={redness: 1}"], "grpo.rewards.redness scores image outputs"),
        (VLM + ["run.max_steps=0"], "run.max_steps: must be >= 1 (got 0)"),
        (VLM + ["grpo.group_size=1"], "grpo.group_size: must be >= 2 (got 1)"),
        (VLM + ["optim.adam_betas=[0.9, 1.5]"], "optim.adam_betas must each be in [0, 1)"),
        (VLM + ["model.lora.dropout=1"], "model.lora.dropout: must be < 1"),
        (VLM + ["optim.lr=[1"], "override 'optim.lr=[1': not valid YAML (line 1, column 3"),
        (DIFFUSION + ["sampling.height=0"], "sampling.height: must be >= 8 (got 0)"),
        (DIFFUSION + ["grpo.eps=0"], "grpo.eps: must be > 0"),
        (DIFFUSION + ["chain.strength=2"], "chain.strength: must be <= 1"),
        (DIFFUSION + ["eval.ema_decay=1"], "eval.ema_decay: must be < 1"),
        (DIFFUSION + ["grpo.rewards={accuracy: 1}"], "grpo.rewards.accuracy scores text outputs"),
    ],
)
def test_a_config_mistake_is_one_line_naming_the_field(capsys, no_training, argv, needle):
    rc, lines = run_cli(capsys, argv)
    assert rc == 2 and not no_training
    assert len(lines) == 1 and lines[0].startswith("vrl: ")
    assert needle in lines[0]


def test_an_empty_recipe_names_the_missing_data(tmp_path, capsys, no_training):
    """Before: a 23-line ValueError traceback from the data section's default."""
    recipe = tmp_path / "empty.yaml"
    recipe.write_text("")
    rc, lines = run_cli(capsys, ["train", "vlm", "--config", str(recipe)])
    assert rc == 2 and len(lines) == 1 and "data.train_files is empty" in lines[0]


def test_a_recipe_without_data_still_reports_its_unknown_keys(tmp_path, capsys, no_training):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("optim:\n  lrr: 0.1\n")
    rc, lines = run_cli(capsys, ["train", "vlm", "--config", str(recipe)])
    assert rc == 2 and len(lines) == 1
    assert "optim.lrr: unknown key" in lines[0]


def test_invalid_yaml_is_one_line_with_its_position(tmp_path, capsys, no_training):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("optim:\n  lr: [1\nrun: {}\n")
    rc, lines = run_cli(capsys, ["train", "vlm", "--config", str(recipe)])
    assert rc == 2 and len(lines) == 1 and "is not valid YAML: line 3, column" in lines[0]


def test_an_output_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    rc, lines = run_cli(capsys, VLM + [f"run.output_dir={tmp_path / 'taken'}"])
    assert rc == 2 and lines == [
        f"vrl: run.output_dir {tmp_path / 'taken'} is a file, not a folder: give a folder for the run"
    ]


def test_an_unexpected_error_is_one_line_and_its_traceback_is_kept(capsys, monkeypatch):
    def broken(cfg):
        raise TypeError("boom")

    monkeypatch.setattr(vlm_grpo, "train", broken)
    rc, lines = run_cli(capsys, VLM)
    assert (
        rc == 2 and len(lines) == 1 and lines[0].startswith("vrl: TypeError: boom (traceback in ")
    )
    kept = Path(lines[0].split("traceback in ")[1].rstrip(")"))
    text = kept.read_text()
    kept.unlink()
    assert "Traceback" in text and "in broken" in text


# --------------------------------------------------------------------------- fuzz: the loader

SECTIONS = {
    "vlm": ["model", "data", "grpo", "optim", "run"],
    "diffusion": ["model", "prompts", "sampling", "grpo", "optim", "chain", "hierarchical", "eval"],
}
KEYS = [
    "lr", "micro_batch_size", "group_size", "prompts_per_step", "max_steps", "template", "path",
    "train_files", "rewards", "noise", "height", "strength", "weights", "judge", "lora", "r",
    "adam_betas", "output_dir", "max_completion_length", "temperature", "top_p", "every", "bogus",
]  # fmt: skip
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**13), 10**13)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([math.nan, 1e39, -0.0, "auto", "rec", "tiny-random:sd3", ""])
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def recipes(draw, trainer: str):
    sections = st.sampled_from(SECTIONS[trainer] + ["bogus"])
    body = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4)
    return draw(st.dictionaries(sections, body | VALUES, max_size=4))


OVERRIDES = st.lists(
    st.builds(
        lambda section, key, raw: f"{section}.{key}={raw}",
        st.sampled_from(SECTIONS["diffusion"] + SECTIONS["vlm"]),
        st.sampled_from(KEYS),
        st.text(max_size=10) | st.sampled_from(["0", "-1", ".nan", "[1", "{a: 1}", "1e39"]),
    )
    | st.text(max_size=12),
    max_size=3,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(trainer=st.sampled_from(["vlm", "diffusion"]), data=st.data())
def test_fuzz_the_config_loader_never_prints_a_traceback(
    tmp_path, capsys, no_training, trainer, data
):
    recipe = tmp_path / "fuzz.yaml"
    if data.draw(st.booleans()):
        recipe.write_text(yaml.safe_dump(data.draw(recipes(trainer)), allow_unicode=True))
    else:  # raw text: YAML that does not parse, a list, a scalar, control characters
        recipe.write_bytes(data.draw(st.binary(max_size=60)))
    overrides = [o for o in data.draw(OVERRIDES) if not o.startswith("-")]  # not an option
    rc, lines = run_cli(capsys, ["train", trainer, "--config", str(recipe), *overrides])
    assert rc in (0, 2)
    if rc == 2:  # a ConfigError's message; an unexpected error would name its traceback file
        assert len(lines) == 1 and lines[0].startswith("vrl: ") and "traceback in" not in lines[0]


# ----------------------------------------------------------------------- fuzz: the data files


class DataRead(BaseException):  # not an Exception: the CLI lets it through
    """Raised where the trainer would load its model: the data was read without error."""


@pytest.fixture
def stop_after_data(monkeypatch):
    def stop(*args, **kwargs):
        raise DataRead

    monkeypatch.setattr(vlm_grpo, "load_vlm_policy", stop)
    monkeypatch.setattr(diffusion_grpo, "load_diffusion_policy", stop)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(trainer=st.sampled_from(["vlm", "diffusion"]), data=st.data())
def test_fuzz_the_data_files_never_print_a_traceback(
    tmp_path_factory, capsys, stop_after_data, trainer, data
):
    """Arbitrary bytes and near-JSON lines as a VLM-R1 file or a prompt file, through `vrl
    train`: the CLI reads them to the point of loading the model, or prints one line per bad
    line of the file, never a traceback."""
    from PIL import Image
    from test_data_fuzz import T2I_KEYS, VLM_KEYS, _files

    root = tmp_path_factory.mktemp("fuzz")
    Image.new("RGB", (4, 4), "red").save(root / "a.png")
    (root / "not_an_image.png").write_bytes(b"plain text")
    skip = data.draw(st.booleans())
    if trainer == "vlm":
        (root / "data.jsonl").write_bytes(data.draw(_files(VLM_KEYS)))
        argv = VLM + [f"data.train_files={root / 'data.jsonl'}", f"data.image_folders={root}"]
        argv += [f"data.skip_bad_lines={str(skip).lower()}"]
    else:
        name = data.draw(st.sampled_from(["prompts.jsonl", "prompts.txt"]))
        (root / name).write_bytes(data.draw(_files(T2I_KEYS)))
        argv = DIFFUSION + [f"prompts.train={root / name}"]
        argv += [f"prompts.skip_bad_lines={str(skip).lower()}"]
    argv += [f"run.output_dir={root / 'run'}"]
    try:
        rc, lines = run_cli(capsys, argv)
    except DataRead:  # read whole: the trainer went on to its model
        return
    assert rc == 2 and lines and all(line.strip() for line in lines)
    assert lines[0].startswith("vrl: ") and "traceback in" not in lines[0]
