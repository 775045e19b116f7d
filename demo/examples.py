"""Example prompts on the page: shapes-world scenes, each with the scene that says what it means.

A few prompts are written here in the rule-based decomposer's grammar; the rest are drawn like the
benchmark's world split (`vrl.world.sample_scene`, held-out colour-shape pairs included, 1-3
shapes: what a 32 px shapes-world model draws). Their scenes come with them, so the decomposition
of an example never depends on parsing its phrasing.

Hook: once the benchmark's shapes-world split files are built by `vrl bench build` and settled,
`example_scenes` can read its first lines (prompt and scene) instead of drawing its own.
"""

from __future__ import annotations

import random

from vrl.hicogen.decompose import decompose_template
from vrl.hicogen.scene import Scene

WRITTEN_PROMPTS = (
    "a small red circle to the left of a large blue square",
    "a green triangle above a yellow square on a white background",
    "a large purple circle with a red outline below a small green triangle",
)


def example_scenes(drawn: int = 3, seed: int = 0) -> dict[str, Scene]:
    """Prompt -> scene: the written prompts, then `drawn` shapes-world scenes (fixed by `seed`)."""
    from vrl.world import sample_scene

    examples = {prompt: decompose_template(prompt) for prompt in WRITTEN_PROMPTS}
    rng = random.Random(seed)
    while len(examples) < len(WRITTEN_PROMPTS) + drawn:
        scene = sample_scene(
            rng, min_subjects=2, max_subjects=3, relation_prob=0.7, sub_attribute_prob=0.3,
            split="test",
        )  # fmt: skip
        examples.setdefault(scene.prompt(), scene)
    return examples
