"""Config: YAML recipe + key=value overrides, validated with errors that name the field."""

from typing import Literal

import pytest
import yaml

from vrl.config import ConfigError, config, config_help, field, load_config, save_config


@config
class Optim:
    lr: float = field(1e-5, help="learning rate")
    schedule: Literal["constant", "cosine"] = field("constant", help="LR schedule")

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")


@config
class Recipe:
    optim: Optim = field(default_factory=Optim, help="optimiser settings")
    steps: int = field(10, help="number of steps")
    rewards: dict[str, float] = field(default_factory=lambda: {"format": 1.0}, help="weights")


def test_yaml_then_overrides_win(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 0.001\nsteps: 5\n")
    cfg = load_config(Recipe, recipe, ["steps=7", "rewards={rec_iou: 2, format: 0.5}"])
    assert cfg.optim.lr == 0.001 and cfg.optim.schedule == "constant"
    assert cfg.steps == 7
    assert cfg.rewards == {"rec_iou": 2.0, "format": 0.5}


@pytest.mark.parametrize(
    "override, needle",
    [
        ("optim.lr=abc", "optim.lr: Input should be a valid number"),
        ("optim.schedule=linear", "optim.schedule: Input should be 'constant' or 'cosine'"),
        ("optim.lrr=1", "optim.lrr: unknown key"),
        ("optim.lr=-1", "optim.lr must be > 0, got -1.0"),
        ("steps", "not of the form key=value"),
    ],
)
def test_errors_name_the_field(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(Recipe, None, [override])
    assert needle in str(err.value)


def test_bad_recipe_file_is_named(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(Recipe, recipe)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Recipe, tmp_path / "missing.yaml")


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(Recipe, None, ["optim.lr=3e-4", "optim.schedule=cosine"])
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["optim"]["lr"] == 3e-4
    assert load_config(Recipe, tmp_path / "config.yaml") == cfg


def test_help_lists_every_leaf_with_its_text():
    text = "\n".join(config_help(Recipe))
    assert "optim.lr (float, default 1e-05): learning rate" in text
    assert "'constant' | 'cosine'" in text
    assert "steps (int, default 10): number of steps" in text


def test_inline_mapping_replaces_and_dotted_key_sets_one_entry(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rewards: {format: 1.0, accuracy: 1.0}\n")
    assert load_config(Recipe, recipe, ["rewards={iou: 2}"]).rewards == {"iou": 2.0}
    cfg = load_config(Recipe, recipe, ["rewards.accuracy=3"])
    assert cfg.rewards == {"format": 1.0, "accuracy": 3.0}
    with pytest.raises(ConfigError, match="rewards.accuracy is not a section"):
        load_config(Recipe, recipe, ["rewards.accuracy.x=1"])


def test_overrides_move_in_front_of_list_options_and_keep_their_order():
    import argparse

    from vrl.config import overrides_first

    argv = ["--rewards", "a", "b", "optim.lr=1e-3", "--out=runs/x", "grpo.beta=0", "runs/a=b"]
    moved = overrides_first(argv)
    assert moved == ["optim.lr=1e-3", "grpo.beta=0", "--rewards", "a", "b", "--out=runs/x",
                     "runs/a=b"]  # fmt: skip
    parser = argparse.ArgumentParser()
    parser.add_argument("--rewards", nargs="+", choices=["a", "b"])
    parser.add_argument("overrides", nargs="*")
    with pytest.raises(SystemExit):  # as typed, --rewards swallows the override
        parser.parse_args(argv[:4])
    args = parser.parse_args(overrides_first(argv[:4]))
    assert args.rewards == ["a", "b"] and args.overrides == ["optim.lr=1e-3"]
