"""Chain of Synthesis: a complex prompt made unit by unit, each step seeing the canvas so far.

Unit 1 is sampled from noise. Each next unit starts from the previous canvas, noised back to
sigma = `strength` (image-to-image), and is denoised with that unit's prompt; a final pass with the
full prompt composes the scene the same way. With N units the chain returns N + 1 images.

Simplifications, stated: the canvas is carried as latents (what a VAE round trip of the decoded
image would give back, minus the VAE's error); every chain in a batch shares its unit prompts (a
GRPO group: G samples of one scene); context is given by image-to-image, the stock-model form of
the paper's in-context conditioning (docs/algorithms.md, section 5.3).

For RL every step of the chain keeps its trajectory (latents and per-step log-probs), and
`chain_policy_loss` trains them all with the shared policy-gradient core. The credit rule is a
setting: "final" gives the final image's advantage to every step of the chain; "unit" gives each
unit's trajectory the advantage of its own image's reward (the final pass keeps the final one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from vrl import core
from vrl.hicogen.scene import Scene, SynthesisUnit
from vrl.samplers import from_config, sample, score_step
from vrl.samplers.loop import Trajectory

CreditRule = Literal["final", "unit"]


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
    scene: Scene, final_prompt: str, *, cumulative: bool = False, max_units: int | None = None
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
    # unit_prompt(cumulative=True) looks a unit up in the scene's own list: give it these units
    planned = Scene(
        scene.subjects, scene.relations, units, background=scene.background, style=scene.style
    )
    prompts = tuple(planned.unit_prompt(u, cumulative=cumulative) for u in units)
    return ChainPlan(scene, units, prompts, final_prompt)


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


def synthesize_chain(
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
    step: Literal["sde", "cps", "ode"] = "sde",
    schedule=None,
    generator: torch.Generator | None = None,
    encode: Callable[[list[str]], object] | None = None,
    level_generator: torch.Generator | None = None,
) -> ChainResult:
    """Run the chain for `batch_size` samples of one scene; every step stores its trajectory.

    A prompt may also be a list of `batch_size` prompts (one per sample): chains of different
    scenes with the same number of units then run as one batch.

    `generator` draws the initial and SDE noise; `level_generator` (CPU) draws a schedule's random
    choices (a window's position), so that processes sharing it train the same kind of steps.
    """
    if not unit_prompts:
        raise ValueError("a chain needs at least one unit prompt")
    encode = encode or adapter.encode_prompts
    sigmas = adapter.sigmas(num_steps, height, width).to(adapter.device)  # (T + 1,)
    start = img2img_start(sigmas, strength)
    schedule = from_config(schedule) if isinstance(schedule, dict | str) else schedule
    steps: list[ChainStep] = []
    canvas: torch.Tensor | None = None  # latents of the previous step's image
    for prompt in [*unit_prompts, final_prompt]:
        noise = adapter.initial_noise(batch_size, height, width, generator)
        if canvas is None:
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
        with torch.no_grad():
            traj = sample(
                adapter.velocity_fn(transformer, embeds, guidance_scale),
                x,
                step_sigmas,
                step=step if levels is not None else "ode",
                schedule=levels,
                generator=generator,
            )
            image = adapter.decode(traj.final, (height, width))
        steps.append(ChainStep(prompt, image, traj, embeds))
        canvas = traj.final
    return ChainResult(steps)


def chain_policy_loss(
    adapter,
    policy: torch.nn.Module,
    chain: ChainResult,
    final_rewards: torch.Tensor,
    *,
    group_size: int,
    unit_rewards: Sequence[torch.Tensor] | None = None,
    credit: CreditRule = "final",
    guidance_scale: float = 1.0,
    eps: float = 1e-4,
    adv_clip_max: float = 5.0,
    skip_last_step: bool = True,
    backward: Callable[[torch.Tensor], None] | None = None,
) -> dict[str, float]:
    """Clipped GRPO loss over every stochastic step of every chain step; backpropagates per step.

    final_rewards: (B,) rewards of the final images, B = P * group_size. unit_rewards: one (B,)
    tensor per unit image, needed for credit="unit". Returns the summed loss and diagnostics.
    """
    if credit == "unit" and (unit_rewards is None or len(unit_rewards) != len(chain.steps) - 1):
        raise ValueError("credit='unit' needs one reward tensor per unit image")
    backward = backward or (lambda loss: loss.backward())

    def advantages(rewards: torch.Tensor) -> torch.Tensor:
        adv = core.group_advantages(rewards.float().cpu(), group_size).advantages
        return adv.clamp(-adv_clip_max, adv_clip_max)

    final_adv = advantages(final_rewards)
    per_step_adv = [
        advantages(unit_rewards[k]) if credit == "unit" and k < len(chain.steps) - 1 else final_adv
        for k in range(len(chain.steps))
    ]
    trained = [
        (k, j)
        for k, s in enumerate(chain.steps)
        for j in range(s.trajectory.num_steps)
        if s.trajectory.noise_levels[j] > 0
        and not (skip_last_step and j == s.trajectory.num_steps - 1)
    ]
    if not trained:
        raise ValueError(
            "no stochastic step in the chain to train: sample with an SDE/CPS schedule"
        )
    total, ratios, clipped = 0.0, [], []
    for k, j in trained:
        s = chain.steps[k]
        v = adapter.velocity(
            policy, s.trajectory.latents[:, j], s.trajectory.sigmas[j], s.embeds,
            guidance_scale=guidance_scale,
        )  # fmt: skip
        out = score_step(s.trajectory, j, v)
        pl = core.policy_loss(
            out.log_prob[:, None],
            s.trajectory.log_probs[:, j, None],
            per_step_adv[k].to(out.log_prob.device),
            torch.ones_like(out.log_prob[:, None]),
            eps_low=eps,
            eps_high=eps,
            num_sequences=len(final_rewards) * len(trained),
        )
        backward(pl.loss)
        total += pl.loss.item()
        ratios.append(pl.ratio_mean.item())
        clipped.append(pl.clip_fraction.item())
    return {
        "loss": total,
        "trained_steps": len(trained),
        "ratio_mean": sum(ratios) / len(ratios),
        "clip_fraction": sum(clipped) / len(clipped),
    }
