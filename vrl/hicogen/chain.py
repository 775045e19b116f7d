"""Chain of Synthesis: a complex prompt made unit by unit, each step seeing the passes before it.

Unit 1 is sampled from noise with its prompt; each next unit, then a final pass with the full
prompt, sees the earlier passes in one of two ways (`context`):

- ``in_context`` (HiCoGen; a model that takes reference images, FLUX): every pass starts from
  noise, and the earlier passes' latents are reference tokens beside the noisy ones. A unit pass
  sees every earlier unit image (``references="all"``) or the latest one (``"last"``); the final
  pass sees every unit image. Nothing is redrawn over, so earlier subjects can stay.
- ``img2img`` (any model, SD3 included): a pass starts from the previous canvas noised back to
  sigma = `strength` and is denoised with its prompt. Measured on the shapes world, a unit pass
  may erase the subject before it (docs/experiments/2026-12-06-chain-stages.md).

A unit pass can also be told where its subjects go (`boxes`): one more reference image, white
boxes on black, from a layout planner of the whole scene (``"world"``: the shapes world's, whose
boxes satisfy every relation), so that placing each subject in its box makes the relations hold.
Text alone did not teach the world models placement (docs/experiments/
2026-12-06-relational-unit-prompts.md); copying a position from context they already do.

With N units the chain returns N + 1 images. Simplifications, stated: earlier passes are carried
as latents (what a VAE round trip of the decoded image would give back, minus the VAE's error);
every chain in a batch shares its unit prompts (a GRPO group: G samples of one scene).

The chain is written once, in `iter_chain`, which yields each pass as it is made (the demo shows
them as they come); `synthesize_chain` collects the passes (the trainer's rollouts keep every
pass's trajectory and train it), and `eval_chain` is the deterministic chain that the trainer's
evaluation, `vrl bench` and the quickstart draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from vrl.errors import ConfigError
from vrl.hicogen.scene import Scene, SynthesisUnit
from vrl.models.conditioning import ReferencePositions
from vrl.samplers import from_config, sample
from vrl.samplers.loop import Trajectory

ChainContextMode = Literal["in_context", "img2img"]
BoxPlanner = Literal["none", "world"]


def resolve_context(adapter, context: str) -> ChainContextMode:
    """`auto`: in context when the model was trained on reference images (FLUX.1 Kontext), else
    image-to-image. A setting the model cannot follow is the user's to change: a ConfigError
    names it."""
    if context == "auto":
        return "in_context" if adapter.trained_on_references else "img2img"
    if context not in ("in_context", "img2img"):
        raise ConfigError(f"chain context must be auto, in_context or img2img, got {context!r}")
    if context == "in_context" and not adapter.takes_references:
        raise ConfigError(
            f"chain context in_context needs a model that takes reference images (FLUX); "
            f"{adapter.family} does not: use img2img or auto"
        )
    return context  # type: ignore[return-value]


@dataclass(frozen=True)
class ChainPlan:
    """What a chain synthesises for one scene: its units, their prompts and the final prompt."""

    scene: Scene
    units: tuple[SynthesisUnit, ...]
    unit_prompts: tuple[str, ...]
    final_prompt: str

    def partial_scene(self, k: int) -> Scene:
        """The scene as drawn after unit k: the subjects introduced so far and their relations.

        Unit images are graded against it (credit="unit"): unit 2's image should hold units 1-2.
        """
        ids = {sid for unit in self.units[: k + 1] for sid in unit.subjects}
        scene = self.scene
        return Scene(
            subjects=tuple(s for s in scene.subjects if s.id in ids),
            relations=tuple(r for r in scene.relations if r.subject in ids and r.object in ids),
            units=self.units[: k + 1],
            background=scene.background,
            style=scene.style,
        )

    def partial_prompt(self, k: int) -> str:
        """Text of everything introduced up to unit k (what unit k's image should show)."""
        return self.partial_scene(k).prompt()

    def references(self, chain: ChainResult, i: int) -> dict[str, torch.Tensor]:
        """Subject id -> the unit image (3, H, W) of sample i that introduced it, for R_subject."""
        return {
            sid: chain.steps[k].image[i]
            for k, unit in enumerate(self.units)
            for sid in unit.subjects
        }


def plan_chain(
    scene: Scene, final_prompt: str, *, form: str = "own", max_units: int | None = None
) -> ChainPlan:
    """The scene's synthesis units (one per subject if it names none) and their prompts.

    With `max_units`, the units past the limit are merged into the last one: the chain's cost
    grows with its length, and a 12-subject prompt need not take 13 passes.
    """
    units = scene.default_units()
    if max_units is not None and len(units) > max_units:
        if max_units < 1:
            raise ValueError(f"max_units must be >= 1, got {max_units}")
        tail = tuple(sid for unit in units[max_units - 1 :] for sid in unit.subjects)
        units = (*units[: max_units - 1], SynthesisUnit(tail))
    # unit_prompt(form=relational|cumulative) looks a unit up in the scene's own list: give it
    # these units
    planned = Scene(
        scene.subjects, scene.relations, units, background=scene.background, style=scene.style
    )
    prompts = tuple(planned.unit_prompt(u, form) for u in units)
    return ChainPlan(scene, units, prompts, final_prompt)


def box_image(boxes: Sequence[Sequence[float]], height: int, width: int) -> torch.Tensor:
    """(3, H, W) float image in [0, 1]: the pixels each box (x1, y1, x2, y2) covers white, the
    rest black. What a unit pass sees of where its subjects go."""
    image = torch.zeros(3, height, width)
    for x1, y1, x2, y2 in boxes:
        rows = slice(max(0, int(y1)), min(height, math.ceil(y2)))
        cols = slice(max(0, int(x1)), min(width, math.ceil(x2)))
        image[:, rows, cols] = 1.0
    return image


BOX_GAP_SCALE = 2
"""The chain's boxes are planned this many times the world's gap apart (``layout_gap``: 2 px on
a 32 px canvas, so 4 px). A model draws a shape a pixel or so past its box; at the world's own gap
two neighbours then touch, and a square that loses a corner to its neighbour is no longer a
square to the checker. On world:kontext (seed 0, 512 held-out chains) the wider gap took the
chain from exist / relation 82.0 / 66.0 to 86.8 / 72.7 (docs/experiments/
2026-12-07-where-the-chain-loses-subjects.md)."""


def plan_boxes(plan: ChainPlan, size: int, seed: int = 0) -> list[torch.Tensor]:
    """One box image per unit of `plan` (`box_image`, ``size`` x ``size``): its subjects' boxes in
    one layout of the whole scene by the shapes world's planner (`vrl.world.layout`, every
    relation satisfied), ``BOX_GAP_SCALE`` times the world's gap apart where the scene has room
    for it, else at the world's own gap. A scene outside the world's vocabulary gets a ValueError
    naming it."""
    from vrl.world import layout
    from vrl.world.vocabulary import layout_gap

    try:
        try:
            boxes = layout(plan.scene, size, seed, gap=BOX_GAP_SCALE * layout_gap(size))
        except ValueError:  # no room for the wider gap (or no layout at all: asked again below)
            boxes = layout(plan.scene, size, seed)
    except ValueError as err:
        raise ValueError(f"no world layout for {plan.final_prompt!r}: {err}") from None
    return [box_image([boxes[s] for s in unit.subjects], size, size) for unit in plan.units]


@dataclass
class ChainStep:
    prompt: str | Sequence[str]  # one for the batch, or one per sample
    image: torch.Tensor  # (B, 3, H, W) in [0, 1]
    trajectory: Trajectory  # latents (B, T_k + 1, ...), log_probs (B, T_k), sigmas (T_k + 1,)
    embeds: object  # PromptEmbeds of the step's prompt, batch B


@dataclass
class ChainResult:
    steps: list[ChainStep]  # one per unit, then the final pass

    @property
    def images(self) -> list[torch.Tensor]:
        return [s.image for s in self.steps]

    @property
    def final(self) -> torch.Tensor:
        return self.steps[-1].image


def img2img_start(sigmas: torch.Tensor, strength: float) -> int:
    """Index of the first sigma at or below `strength`: the chain step starts denoising there."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    below = (sigmas[:-1] <= strength + 1e-6).nonzero()
    return int(below[0]) if len(below) else len(sigmas) - 2


def iter_chain(
    adapter,
    transformer: torch.nn.Module,
    unit_prompts: Sequence[str | Sequence[str]],
    final_prompt: str | Sequence[str],
    *,
    batch_size: int,
    height: int,
    width: int,
    num_steps: int = 10,
    guidance_scale: float = 1.0,
    strength: float = 0.7,
    context: Literal["auto", "in_context", "img2img"] = "img2img",
    references: Literal["all", "last"] = "all",
    positions: ReferencePositions = "kontext",
    box_images: Sequence[torch.Tensor] | None = None,
    step: Literal["sde", "cps", "ode"] = "sde",
    schedule=None,
    generator: torch.Generator | None = None,
    encode: Callable[[list[str]], object] | None = None,
    level_generator: torch.Generator | None = None,
    store_trajectory: bool = True,
) -> Iterator[ChainStep]:
    """The chain's passes for `batch_size` samples of one scene, each yielded as soon as it is
    made: unit 1 (from noise), unit 2, ..., then the final pass. Every pass keeps its trajectory
    (only its final latent with `store_trajectory=False`, enough to look at the images).

    With no unit prompt the chain is one pass of the final prompt from noise. A prompt may also
    be a list of `batch_size` prompts (one per sample): chains of different scenes with the same
    number of units then run as one batch.

    `context`, `references` and `positions`: how a pass sees the earlier ones (module docstring;
    `strength` is for img2img only). `box_images`, in context only: one image per unit ((3, H, W)
    for the batch or (B, 3, H, W), in [0, 1]; `plan_boxes`), the unit pass's last reference.

    `generator` draws the initial and SDE noise, pass after pass; `level_generator` (CPU) draws
    a schedule's random choices (a window's position), so that processes sharing it train the
    same kind of steps. The work of a pass runs when it is asked for, so a caller may change the
    model's state (an adapter on or off) between passes.
    """
    encode = encode or adapter.encode_prompts
    context = resolve_context(adapter, context)  # a ConfigError if the model cannot follow it
    sigmas = adapter.sigmas(num_steps, height, width).to(adapter.device)  # (T + 1,)
    start = img2img_start(sigmas, strength)
    schedule = from_config(schedule) if isinstance(schedule, dict | str) else schedule
    canvas: torch.Tensor | None = None  # latents of the previous pass's image
    unit_latents: list[torch.Tensor] = []  # in context: the unit passes' final latents
    prompts = [*unit_prompts, final_prompt]
    if box_images is not None:
        if context != "in_context":
            raise ConfigError("chain boxes are reference images: they need context in_context")
        if len(box_images) != len(unit_prompts):
            raise ValueError(f"{len(box_images)} box images for {len(unit_prompts)} units")
    for k, prompt in enumerate(prompts):
        noise = adapter.initial_noise(batch_size, height, width, generator)
        if canvas is None or context == "in_context":
            step_sigmas, x = sigmas, noise
        else:  # flow matching: x_s = (1 - s) x_0 + s eps, from the canvas as x_0
            step_sigmas = sigmas[start:]
            s0 = step_sigmas[0].to(noise.dtype)
            x = (1 - s0) * canvas + s0 * noise
        levels = None
        if schedule is not None and step != "ode":
            levels = schedule.levels(len(step_sigmas) - 1, generator=level_generator).to(
                adapter.device
            )
        texts = [prompt] * batch_size if isinstance(prompt, str) else list(prompt)
        if len(texts) != batch_size:
            raise ValueError(f"{len(texts)} prompts for a batch of {batch_size}")
        embeds = encode(texts)
        final = k == len(prompts) - 1
        seen = unit_latents if final or references == "all" else unit_latents[-1:]
        if box_images is not None and not final:  # encoded once per pass, not per step
            box = box_images[k]
            if tuple(box.shape) not in ((batch_size, 3, height, width), (3, height, width)):
                raise ValueError(
                    f"box image of unit {k + 1} has shape {tuple(box.shape)}, expected "
                    f"({batch_size}, 3, {height}, {width}) or (3, {height}, {width})"
                )
            if box.dim() == 3:  # one image for the batch: one VAE encode, its latents shared
                tokens = adapter.encode_images(box[None]).expand(batch_size, -1, -1)
            else:
                tokens = adapter.encode_images(box)
            seen = [*seen, tokens]
        if seen:  # in context: earlier passes (and the unit's boxes) as reference tokens
            embeds = embeds.with_references(
                adapter.references_from_latents(seen, (height, width), positions)
            )
        with torch.no_grad():
            traj = sample(
                adapter.velocity_fn(transformer, embeds, guidance_scale),
                x,
                step_sigmas,
                step=step if levels is not None else "ode",
                schedule=levels,
                generator=generator,
                store_trajectory=store_trajectory,
            )
            image = adapter.decode(traj.final, (height, width))
        canvas = traj.final
        if context == "in_context" and k < len(prompts) - 1:
            unit_latents.append(traj.final)
        yield ChainStep(prompt, image, traj, embeds)


def synthesize_chain(
    adapter,
    transformer: torch.nn.Module,
    unit_prompts: Sequence[str | Sequence[str]],
    final_prompt: str | Sequence[str],
    **settings,
) -> ChainResult:
    """Every pass of `iter_chain` (same arguments), collected: N units give N + 1 images."""
    return ChainResult(
        list(iter_chain(adapter, transformer, unit_prompts, final_prompt, **settings))
    )


@torch.no_grad()
def eval_chain(
    adapter,
    transformer: torch.nn.Module,
    scene: Scene,
    prompt: str,
    *,
    seed: int,
    images: int = 1,
    height: int,
    width: int,
    num_steps: int,
    guidance_scale: float,
    strength: float,
    prompt_form: str = "own",
    max_units: int | None = None,
    context: ChainContextMode = "img2img",
    references: Literal["all", "last"] = "all",
    positions: ReferencePositions = "kontext",
    boxes: BoxPlanner = "none",
) -> tuple[ChainPlan, ChainResult]:
    """The deterministic evaluation chain of a prompt and its scene: ODE passes, every noise
    draw from one generator seeded with `seed` on the adapter's device, `images` chains in one
    batch.

    The trainer's evaluation, `vrl bench` and the quickstart all draw their chains here, each
    with its own seed per prompt (the run seed plus the prompt's index; a CRC of the prompt id);
    only the final latents are kept. With ``boxes="world"`` every unit pass also sees its
    subjects' boxes (`plan_boxes`). Returns the chain's plan (units, prompts, references) and
    its passes.
    """
    plan = plan_chain(scene, prompt, form=prompt_form, max_units=max_units)
    if boxes not in ("none", "world"):
        raise ConfigError(f"chain boxes must be none or world, got {boxes!r}")
    if boxes == "world" and height != width:
        raise ConfigError(f"chain boxes=world lays out square canvases, not {height}x{width}")
    box_images = plan_boxes(plan, height) if boxes == "world" else None
    chain = synthesize_chain(
        adapter, transformer, list(plan.unit_prompts), plan.final_prompt, batch_size=images,
        height=height, width=width, num_steps=num_steps, guidance_scale=guidance_scale,
        strength=strength, context=context, references=references, positions=positions,
        box_images=box_images, step="ode", generator=torch.Generator(adapter.device).manual_seed(seed),
        store_trajectory=False,
    )  # fmt: skip
    return plan, chain
