"""Demo engines shared by the demo's function tests and its browser test, so that the tiny SD3
pipeline is built once per test session."""

from __future__ import annotations

import functools


@functools.cache
def shared_engine():
    """The page as `vrl demo` serves it by default (the shapes world's reward, DEFAULT_MODEL)."""
    from vrl.demo.engine import DemoEngine
    from vrl.demo.settings import DemoSettings

    return DemoEngine(DemoSettings())


@functools.cache
def unscored_engine():
    """The same model without a reward: for tests about the images only (scoring costs time)."""
    from vrl.demo.engine import DemoEngine

    engine = shared_engine()
    return DemoEngine(engine.settings, adapter=engine.adapter, reward=("none", None))


PROMPT = "a small red circle to the left of a large blue square"
