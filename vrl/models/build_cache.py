"""Things vrl builds once and keeps (the tiny random models): where, and how, atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def default_cache_root() -> Path:
    """$VRL_CACHE, or ~/.cache/vrl."""
    env = os.environ.get("VRL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vrl"


def build_once(target: Path, done: str, build: Callable[[Path], object]) -> Path:
    """`target`, built by `build(folder)` the first time it is asked for.

    The build writes a temporary sibling folder that is renamed into place at the end, so an
    interrupted build never leaves a half-written folder that later runs would trust; the file
    `done` (e.g. "model.safetensors") marks a complete one. Two processes building at once are
    fine: the second rename fails and the first folder serves both."""
    if (target / done).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / done).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
