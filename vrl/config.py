"""Configs: plain dataclasses with a help string per field, YAML recipes, `key=value` overrides.

A trainer's config is a tree of dataclasses. `load_config` reads a YAML recipe, applies
command-line overrides (`optim.lr=1e-5 grpo.group_size=8`), and validates the result with pydantic,
which checks every type (including Literal choices), every field's range (`field(ge=1)`), refuses
NaN and infinities, and names the failing field. Each dataclass may add cross-field checks in
`__post_init__`, raising `ValueError` with a message that names its fields in full.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from vrl.errors import ConfigError

T = TypeVar("T")


_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def field(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    default_factory: Any = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field carrying its help text (shown by `vrl ... --help-config`) and its range.

    The bounds (``ge``: >=, ``gt``: >, ``le``: <=, ``lt``: <) are checked by pydantic when a recipe
    is validated, which reads them from the field's metadata; for an optional field they bound the
    value when it is not None."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    kw: dict[str, Any] = {"metadata": {"help": help, **bounds}}
    if default_factory is not None:
        kw["default_factory"] = default_factory
    elif default is not dataclasses.MISSING:
        kw["default"] = default
    return dataclasses.field(**kw)


def field_range(f: dataclasses.Field) -> str:
    """A field's bounds as text, e.g. '>= 1', '> 0, <= 1', or '' when unbounded."""
    return ", ".join(f"{op} {f.metadata[k]:g}" for k, op in _BOUNDS.items() if k in f.metadata)


def config(cls: type[T]) -> type[T]:
    """Decorator: a dataclass that refuses unknown keys, NaN and infinities when validated."""
    cls = dataclasses.dataclass(cls)
    cls.__pydantic_config__ = pydantic.ConfigDict(  # type: ignore[attr-defined]
        extra="forbid", allow_inf_nan=False
    )
    return cls


def parse_overrides(overrides: Sequence[str]) -> list[tuple[list[str], Any]]:
    """['a.b=1', 'c={x: 2}'] -> [(['a', 'b'], 1), (['c'], {'x': 2})]; values are parsed as YAML."""
    parsed: list[tuple[list[str], Any]] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-5)"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: not valid YAML ({_yaml_problem(err)})") from None
        parsed.append((key.strip().split("."), value))
    return parsed


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: where (line, column) and what."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(problem.split())


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def overrides_first(argv: Sequence[str]) -> list[str]:
    """``argv`` with its ``key.path=value`` arguments moved to the front, order kept otherwise.

    For command lines that take overrides as a positional list beside options with
    ``nargs="+"``: argparse lets such an option swallow the overrides typed after it
    (``--rewards a b optim.lr=1e-3``); in front they parse wherever they were typed. An option
    value of that form would move too, so use it where no option takes one."""
    is_override = [bool(_OVERRIDE.match(a)) for a in argv]
    return [a for a, o in zip(argv, is_override, strict=True) if o] + [
        a for a, o in zip(argv, is_override, strict=True) if not o
    ]


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set each key path in order. `a.b=1` sets one entry; `a={b: 1}` replaces `a` whole (so
    `grpo.rewards={x: 1}` means exactly that reward, not the recipe's rewards plus x)."""
    data = copy.deepcopy(data)
    for parts, value in parse_overrides(overrides):
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"override {'.'.join(parts)}: {where} is not a section")
            node = child
        node[parts[-1]] = value
    return data


_MESSAGES = {
    "extra_forbidden": "unknown key (check the spelling; `--help-config` lists the valid keys)",
    "unexpected_keyword_argument": "unknown key (check the spelling; `--help-config` lists the valid keys)",
    "greater_than": "must be > {gt:g}",
    "greater_than_equal": "must be >= {ge:g}",
    "less_than": "must be < {lt:g}",
    "less_than_equal": "must be <= {le:g}",
    "finite_number": "must be a finite number",
}


def _format_validation_error(err: pydantic.ValidationError, origin: str) -> str:
    """One line: `origin: field: what is wrong (got value); field: ...`."""
    problems = []
    for e in err.errors():
        # a Literal's or a union's branch adds its own name to the location; the field is enough
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("literal[", "function-")))
        msg = _MESSAGES.get(e["type"], e["msg"]).format(**e.get("ctx", {}))
        if e["type"] == "value_error":  # a section's own check names its fields in full
            problems.append(msg.removeprefix("Value error, "))
            continue
        got = e.get("input")
        shown = "" if isinstance(got, dict) or e["type"] == "missing" else f" (got {got!r})"
        problems.append(f"{loc or '<root>'}: {msg}{shown}")
    return f"invalid config ({origin}): " + "; ".join(dict.fromkeys(problems))


def build_config(cls: type[T], data: dict[str, Any], origin: str = "config") -> T:
    """Validate a plain dict into the dataclass tree `cls`, or raise ConfigError naming the fields."""
    try:
        return pydantic.TypeAdapter(cls).validate_python(data)
    except pydantic.ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Read a YAML recipe (optional), apply key=value overrides, validate into `cls`."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_bytes())  # bytes: YAML reads UTF-8/16 and a BOM
        except yaml.YAMLError as err:
            raise ConfigError(f"recipe {path} is not valid YAML: {_yaml_problem(err)}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"recipe {path}: the top level must be a mapping of sections")
        data = loaded or {}
        origin = str(path)
    if overrides:
        data = apply_overrides(data, overrides)
        origin += " + command-line overrides"
    return build_config(cls, data, origin)


RECIPES = Path(__file__).resolve().parent.parent / "configs"
"""The repository's recipe folder (`configs/`), where the quickstart's recipes live too."""


def load_recipe(name: str) -> dict[str, Any]:
    """The YAML recipe ``configs/<name>`` as a plain dict (its comments give the reasons)."""
    path = RECIPES / name
    if not path.is_file():
        raise FileNotFoundError(f"no recipe {path}: vrl reads its recipes from the source checkout")
    return yaml.safe_load(path.read_text())


def to_dict(cfg: Any) -> dict[str, Any]:
    return pydantic.TypeAdapter(type(cfg)).dump_python(cfg, mode="json")


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (the run folder keeps what was really run)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_help(cls: type, prefix: str = "", defaults: Any = None) -> list[str]:
    """One line per leaf field: `section.key (type, default): help`.

    Defaults are read from an instance, so a nested section built by a default factory (e.g. the
    diffusion trainer's LoRA r=32) shows its own values, not its class's.
    """
    lines: list[str] = []
    hints = typing.get_type_hints(cls)
    if defaults is None:
        try:
            defaults = cls()
        except (TypeError, ValueError):  # a required field, or validation of empty defaults
            defaults = None
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        ftype = hints[f.name]
        value = getattr(defaults, f.name, dataclasses.MISSING)
        if dataclasses.is_dataclass(ftype):
            lines.append(f"{name}: {f.metadata.get('help', '')}")
            nested = value if value is not dataclasses.MISSING else None
            lines.extend(config_help(ftype, prefix=f"{name}.", defaults=nested))
            continue
        if value is not dataclasses.MISSING:
            default = repr(value)
        elif f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "required"
        if typing.get_origin(ftype) is typing.Literal:
            type_name = " | ".join(repr(a) for a in typing.get_args(ftype))
        else:
            type_name = str(ftype).replace("typing.", "").replace("<class '", "").replace("'>", "")
        if bounds := field_range(f):
            type_name += f" {bounds}"
        lines.append(f"  {name} ({type_name}, default {default}): {f.metadata.get('help', '')}")
    return lines
