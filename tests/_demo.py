"""Demo engines shared by the demo's function tests and its browser test, so that the tiny SD3
pipeline and the tiny reward backends are built once per test session."""

from __future__ import annotations

import functools


@functools.cache
def shared_engine():
    """Tiny SD3 with the tiny random hierarchical reward (the page as `vrl demo` serves it)."""
    from vrl.demo.engine import DemoEngine
    from vrl.demo.settings import DemoSettings

    return DemoEngine(DemoSettings(model="tiny-random:sd3", reward="tiny-random"))


@functools.cache
def unscored_engine():
    """The same model without a reward: for tests about the images only (scoring costs time)."""
    from vrl.demo.engine import DemoEngine

    engine = shared_engine()
    return DemoEngine(engine.settings, adapter=engine.adapter, reward=("none", None))


PROMPT = "a small red circle to the left of a large blue square"
