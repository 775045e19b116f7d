"""Example prompts on the page: shapes-world scenes that the rule-based decomposer parses.

Hook: once the benchmark's shapes-world split exists (vrl.bench), `example_prompts` should take its
first prompts from there instead of this list, so that the page shows what the benchmark grades.
"""

from __future__ import annotations

EXAMPLE_PROMPTS = (
    "a small red circle to the left of a large blue square",
    "a green triangle above a yellow star on a white background",
    "two purple hexagons and an orange diamond",
    "a blue square with a red outline below a green circle",
    "a large yellow circle to the right of a small black triangle next to a pink heart",
)


def example_prompts(limit: int = 8) -> list[str]:
    """The prompts offered as examples (at most `limit`)."""
    return list(EXAMPLE_PROMPTS[:limit])
