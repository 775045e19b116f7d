"""The demo's model side, free of Gradio: load once, check a request, run the chain pass by pass.

`DemoEngine.generate(request)` is a generator of `DemoState` snapshots: first the decomposition,
then one snapshot after every pass of the chain of synthesis (for every model shown: the base and
the RL-tuned adapter alternate, on the same seed), then the rewards. The page renders each
snapshot as it comes, so a person watches the scene being built unit by unit.

The passes come from `vrl.hicogen.chain.iter_chain`, the chain the trainer and `synthesize_chain`
run (a test checks the images are equal), one at a time as it yields them and without storing
trajectories, which display does not need.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vrl.data.t2i import ImageSample
from vrl.demo.examples import example_scenes
from vrl.demo.rewards import RewardReport, build_reward, score_images
from vrl.demo.settings import DemoSettings, Limits
from vrl.hicogen.chain import (
    ChainPlan,
    img2img_start,
    iter_chain,
    plan_boxes,
    plan_chain,
    resolve_context,
)
from vrl.hicogen.decompose import decompose_template, fallback_scene
from vrl.hicogen.scene import Scene, SynthesisUnit
from vrl.samplers import ConstantNoise, DecayingNoise, NoiseSchedule, WindowNoise

logger = logging.getLogger(__name__)

SAMPLERS = ("ode", "sde")
SCHEDULE_KINDS = ("constant", "decaying", "window")
MAX_SEED = 2**31 - 1
# Weight files that are pickles (torch.load runs code from them): never loaded by the demo.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
LABELS = {"model": "model", "tuned": "RL-tuned adapter", "base": "base model"}


class LimitError(ValueError):
    """A request outside the launch limits or otherwise unusable; the message is for the person."""


class DemoSetupError(RuntimeError):
    """The demo cannot start with these settings (missing model, unsafe weights, ...)."""


class UnsafeWeightsError(DemoSetupError):
    """Weights in a pickle-based format: the demo loads safetensors only."""


# ---------------------------------------------------------------------- requests


@dataclass(frozen=True)
class GenerationRequest:
    """One press of "Generate", checked (`check_request` builds it from the page's raw values)."""

    prompt: str
    seed: int = 0
    steps: int = 8
    guidance: float = 1.0
    chain: bool = True
    sampler: str = "sde"
    schedule: str = "decaying"
    noise_level: float = 0.7
    strength: float = 0.7
    num_images: int = 1


def _shown(value: Any, limit: int = 60) -> str:
    """`value`'s repr, cut short: a refusal must not echo a megabyte back (or into the log)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text)} characters)"


def _whole_number(name: str, value: Any, low: int, high: int) -> int:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or int(value) != value or not low <= value <= high:
        raise LimitError(
            f"{name}: must be a whole number from {low} to {high}, got {_shown(value)}"
        )
    return int(value)


def _number(name: str, value: Any, low: float, high: float) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        raise LimitError(f"{name}: must be a number from {low:g} to {high:g}, got {_shown(value)}")
    return float(value)


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):  # "no", "false", 0: ambiguous or a mistake, never guessed
        raise LimitError(f"{name}: must be true or false (a JSON boolean), got {_shown(value)}")
    return value


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise LimitError(f"{name}: must be one of {', '.join(choices)}, got {_shown(value)}")
    return value


def check_request(
    limits: Limits,
    prompt: Any,
    seed: Any = 0,
    steps: Any = 8,
    guidance: Any = 1.0,
    chain: Any = True,
    sampler: Any = "sde",
    schedule: Any = "decaying",
    noise_level: Any = 0.7,
    strength: Any = 0.7,
    num_images: Any = 1,
) -> GenerationRequest:
    """The page's raw values as a request, or `LimitError` naming the argument that is wrong.

    Everything from the page is untrusted (a client can post any JSON to the API), so types are
    checked as well as ranges: numbers must be JSON numbers (not strings, not NaN or infinite,
    not booleans), whole where a count is meant; `chain` a JSON boolean; `sampler` and
    `schedule` one of their choices. Messages start with the argument's API name
    (``seed: must be a whole number from 0 to 2147483647, got 'abc'``).
    """
    if not isinstance(prompt, str):
        raise LimitError(f"prompt: must be text, got {_shown(prompt)}")
    if not prompt.strip():
        raise LimitError("prompt: is empty. Type a prompt first.")
    prompt = prompt.strip()
    if len(prompt) > limits.max_prompt_chars:
        raise LimitError(
            f"prompt: has {len(prompt)} characters; this demo takes at most "
            f"{limits.max_prompt_chars}. Shorten it and try again."
        )
    return GenerationRequest(
        prompt=prompt,
        seed=_whole_number("seed", seed, 0, MAX_SEED),
        steps=_whole_number("steps", steps, 1, limits.max_steps),
        guidance=_number("guidance", guidance, 0.0, limits.max_guidance),
        chain=_boolean("chain", chain),
        sampler=_choice("sampler", sampler, SAMPLERS),
        schedule=_choice("schedule", schedule, SCHEDULE_KINDS),
        noise_level=_number("noise_level", noise_level, 0.0, 1.0),
        strength=_number("strength", strength, 0.05, 1.0),
        num_images=_whole_number("num_images", num_images, 1, limits.max_images),
    )


def noise_schedule(request: GenerationRequest, shortest_pass: int) -> NoiseSchedule | None:
    """The SDE's noise levels for the request (None: the deterministic ODE sampler).

    decaying: HiCoGen's cosine from the level down to a tenth of it; window: the level on the first
    half of each pass's steps, ODE after (sized on the shortest pass so that it fits every pass).
    """
    if request.sampler == "ode":
        return None
    level = request.noise_level
    if request.schedule == "constant":
        return ConstantNoise(level)
    if request.schedule == "decaying":
        return DecayingNoise(eta_max=level, eta_min=level / 10)
    return WindowNoise(ConstantNoise(level), size=max(1, shortest_pass // 2), start=0)


# ---------------------------------------------------------------------- decomposition and state


@dataclass(frozen=True)
class Decomposition:
    """The prompt as a scene and the passes of its chain: one per unit, then the final prompt."""

    scene: Scene
    source: str  # "example", "template", "llm" or "fallback"
    units: tuple[SynthesisUnit, ...]
    unit_prompts: tuple[str, ...]
    final_prompt: str
    merged: int = 0  # units merged into the last one by Limits.max_units


@dataclass
class PassResult:
    prompt: str
    images: torch.Tensor  # (B, 3, H, W) in [0, 1], on the CPU


@dataclass
class DemoState:
    """What the page shows, as it grows: filled in pass by pass, then with the rewards."""

    request: GenerationRequest
    decomposition: Decomposition
    labels: tuple[str, ...]
    total: int
    done: int = 0
    message: str = ""
    passes: dict[str, list[PassResult]] = field(default_factory=dict)
    reports: dict[str, RewardReport] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    finished: bool = False

    def final(self, label: str) -> torch.Tensor | None:
        """(B, 3, H, W) final images of `label` once its last pass is done."""
        wanted = len(self.decomposition.units) + 1 if self.request.chain else 1
        passes = self.passes.get(label, [])
        return passes[-1].images if len(passes) == wanted else None


# ---------------------------------------------------------------------- loading


def find_lora_weights(path: str | Path) -> Path:
    """The .safetensors file of a LoRA adapter (a folder or the file itself); pickles refused."""
    p = Path(path)
    if not p.exists():
        raise DemoSetupError(f"LoRA adapter {path}: no such file or folder")
    refuse = (
        "the demo loads safetensors weights only: pickle-based formats ({}) can run code when "
        "loaded. Convert it with safetensors.torch.save_file, or save it again with "
        "`vrl train diffusion` (which writes pytorch_lora_weights.safetensors)"
    )
    if p.is_file():
        if p.suffix != ".safetensors":
            raise UnsafeWeightsError(
                f"LoRA adapter {path}: {refuse.format(p.suffix or 'no extension')}"
            )
        return p
    found = sorted(p.glob("*.safetensors"))
    if not found:
        pickles = sorted(f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise UnsafeWeightsError(
                f"LoRA adapter {path} holds {', '.join(pickles)}; {refuse.format(', '.join(PICKLE_SUFFIXES))}"
            )
        raise DemoSetupError(f"LoRA adapter {path}: no .safetensors file in the folder")
    preferred = [f for f in found if f.name == "pytorch_lora_weights.safetensors"]
    if preferred:
        return preferred[0]
    if len(found) > 1:
        raise DemoSetupError(
            f"LoRA adapter {path}: several .safetensors files ({', '.join(f.name for f in found)}); "
            "name the file itself"
        )
    return found[0]


def load_lora(adapter, path: str | Path) -> list[str]:
    """Put the adapter's LoRA on the transformer (safetensors only); returns notes for the page."""
    from safetensors import safe_open

    from vrl.models.diffusion import _lora_layers

    weights = find_lora_weights(path)
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata() or {}
    try:
        # use_safetensors with an explicit .safetensors file: diffusers never unpickles here.
        adapter.pipeline.load_lora_weights(
            str(weights.parent), weight_name=weights.name, use_safetensors=True
        )
    except Exception as err:
        raise DemoSetupError(f"LoRA adapter {path} does not fit this model: {err}") from err
    if not _lora_layers(adapter.transformer):
        raise DemoSetupError(f"LoRA adapter {path} holds no LoRA weights for the transformer")
    notes = []
    if "lora_adapter_metadata" not in metadata:  # diffusers then assumes alpha = rank (scale 1)
        scale = trained_lora_scale(weights)
        if scale is None:
            notes.append(
                "The adapter file records no LoRA alpha and no training config.yaml was found "
                "beside it: it is applied at scale 1 (alpha = rank)."
            )
        elif scale != 1.0:
            pipeline = adapter.pipeline
            pipeline.set_adapters(pipeline.get_active_adapters(), [scale])
            notes.append(f"LoRA scale {scale:g} (alpha / rank) read from the run's config.yaml.")
    return notes


def trained_lora_scale(weights: Path) -> float | None:
    """alpha / r of the training run that wrote `weights` (its config.yaml, next to final/ or in
    it), for adapter files that do not record their own alpha; None if there is none."""
    import yaml

    for config in (weights.parent / "config.yaml", weights.parent.parent / "config.yaml"):
        if config.is_file():
            data = yaml.safe_load(config.read_text()) or {}
            lora = (data.get("model") or {}).get("lora") or {}
            if lora.get("r") and lora.get("alpha"):
                return float(lora["alpha"]) / float(lora["r"])
    return None


def load_adapter(model: str, device: torch.device):
    """A flow-matching adapter for the model, safetensors weights only."""
    from vrl.models.diffusion import FlowMatchingAdapter
    from vrl.models.paths import resolve_dtype, resolve_pipeline_path

    path = resolve_pipeline_path(model)
    try:
        return FlowMatchingAdapter.from_pretrained(
            path,
            dtype=resolve_dtype("auto", device),
            device=device,
            use_safetensors=True,
        )
    except (OSError, ValueError) as err:
        raise DemoSetupError(
            f"cannot load the model {model!r} (a diffusers SD3/FLUX pipeline folder with "
            f"safetensors weights is needed): {err}"
        ) from err


def resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_size(adapter, settings: DemoSettings) -> int:
    if settings.size:
        return settings.size
    if settings.is_tiny:
        from vrl.models.tiny_diffusion import TINY_IMAGE_SIZE

        return TINY_IMAGE_SIZE
    if settings.model.startswith("world:"):
        # the world models draw the world's 32 px canvas; world:kontext's pipeline class keeps
        # FLUX's default sample size (128 latents), which is not what it was trained on
        from vrl.pretrain.kontext import IMAGE_SIZE

        return IMAGE_SIZE
    sample_size = getattr(adapter.pipeline, "default_sample_size", None)
    # the adapter's factor, not the pipeline's: a pixel-space pipeline (no VAE, e.g. world:t2i)
    # draws at sample_size itself, where diffusers would assume a VAE's 8x
    return int(sample_size * adapter.vae_scale_factor) if sample_size else 512


# ---------------------------------------------------------------------- the engine


class DemoEngine:
    """The loaded model (and adapter), decomposer and reward, and the generation loop.

    `adapter` and `reward` may be passed in already built (tests share them between apps);
    otherwise they are built from the settings.
    """

    def __init__(
        self,
        settings: DemoSettings,
        *,
        adapter=None,
        reward: tuple[str, Any] | None = None,
    ):
        self.settings = settings
        self.notes: list[str] = []
        self.adapter = adapter or load_adapter(settings.model, resolve_device(settings.device))
        self.has_lora = settings.lora is not None
        if self.has_lora:
            self.notes += load_lora(self.adapter, settings.lora)
        self.size = default_size(self.adapter, settings)
        try:
            self.adapter.sigmas(1, self.size, self.size)  # checks the size fits the model
        except ValueError as err:
            raise DemoSetupError(str(err)) from err
        self.reward_name, self.reward = reward if reward is not None else build_reward(settings)
        self.decomposer = None
        if settings.decomposer:
            from vrl.hicogen.decompose import LLMDecomposer

            self.decomposer = LLMDecomposer.from_pretrained(settings.decomposer)
        self.examples = example_scenes()
        """Example prompt -> its scene (shown on the page; used instead of parsing the prompt)."""
        # Passes toggle the adapter on and off: one pass at a time touches the model. The lock is
        # never held across a yield, so an abandoned page cannot leave it taken.
        self._lock = threading.Lock()

    @property
    def labels(self) -> tuple[str, ...]:
        return ("tuned", "base") if self.has_lora else ("model",)

    def decompose(self, prompt: str) -> Decomposition:
        """An example's own scene, else rules (shapes-world prompts), else the local LM if one was
        given, else the whole prompt as one unit."""
        scene, source = self.examples.get(prompt.strip()), "example"
        if scene is None:
            scene, source = decompose_template(prompt), "template"
        if scene is None and self.decomposer is not None:
            result = self.decomposer(prompt)
            scene, source = result.scene, result.source
        if scene is None:
            scene, source = fallback_scene(prompt), "fallback"
        limit = self.settings.limits.max_units
        plan = plan_chain(scene, prompt.strip(), max_units=limit)
        merged = max(len(scene.default_units()) - limit, 0)
        return Decomposition(
            scene, source, plan.units, plan.unit_prompts, plan.final_prompt, merged
        )

    def _policy(self, label: str):
        return self.adapter.disabled_adapter() if label == "base" else contextlib.nullcontext()

    def generate(self, request: GenerationRequest) -> Iterator[DemoState]:
        """Snapshots of the state: after the decomposition, after every pass, after the rewards."""
        adapter, size, batch = self.adapter, self.size, request.num_images
        dec = self.decompose(request.prompt)
        prompts = [*dec.unit_prompts, dec.final_prompt] if request.chain else [dec.final_prompt]
        labels = self.labels
        scoring = self.reward is not None
        state = DemoState(
            request,
            dec,
            labels,
            total=len(prompts) * len(labels) + (len(labels) if scoring else 0),
            passes={label: [] for label in labels},
            message=f"decomposed into {len(dec.units)} unit(s) ({dec.source})",
        )
        if dec.merged:
            state.notes.append(
                f"{dec.merged} unit(s) past the limit of {self.settings.limits.max_units} were "
                "merged into the last one."
            )
        yield state

        # in context (FLUX) every pass runs every step; image-to-image (SD3) later passes fewer
        context = resolve_context(adapter, "auto")
        sigmas = adapter.sigmas(request.steps, size, size)  # (T + 1,)
        start = img2img_start(sigmas, request.strength)
        shortest = (
            request.steps - start if len(prompts) > 1 and context == "img2img" else request.steps
        )
        schedule = noise_schedule(request, shortest)
        units = dec.unit_prompts if request.chain else ()
        boxes = None
        if units and context == "in_context" and self.settings.shows_boxes:
            plan = ChainPlan(dec.scene, dec.units, dec.unit_prompts, dec.final_prompt)
            try:
                boxes = plan_boxes(plan, size)
            except ValueError as err:
                state.notes.append(f"{err}: each unit is placed by its prompt alone.")
        # one chain per label, each from its own generator on the same seed; the passes are made
        # one at a time, in turn, each with its label's adapter state (`iter_chain` works lazily)
        chains = {
            label: iter_chain(
                adapter,
                adapter.transformer,
                units,
                dec.final_prompt,
                batch_size=batch,
                height=size,
                width=size,
                num_steps=request.steps,
                guidance_scale=request.guidance,
                strength=request.strength,
                context=context,
                box_images=boxes,
                step=request.sampler,
                schedule=schedule,
                generator=torch.Generator(adapter.device).manual_seed(request.seed),
                store_trajectory=False,
            )
            for label in labels
        }
        for k, prompt in enumerate(prompts):
            for label in labels:
                with self._lock, torch.no_grad(), self._policy(label):
                    images = next(chains[label]).image.float().cpu()
                state.passes[label].append(PassResult(prompt, images))
                state.done += 1
                what = "final pass" if k == len(prompts) - 1 else f"unit {k + 1}"
                state.message = f"{LABELS[label]}: {what} of {len(prompts)}: {prompt}"
                yield state

        if scoring:
            for label in labels:
                samples = self._reward_samples(state, label)
                try:
                    with self._lock:
                        state.reports[label] = score_images(
                            self.reward, state.final(label), samples
                        )
                except Exception as err:  # a failing backend must not take the images away
                    logger.exception("reward failed")
                    state.notes.append(f"The reward failed for the {LABELS[label]}: {err}")
                state.done += 1
                state.message = f"scored the {LABELS[label]}"
                yield state
        state.finished = True
        state.message = "done"
        yield state

    def _reward_samples(self, state: DemoState, label: str) -> list[ImageSample]:
        """One sample per image: the scene, and each subject's unit image as its reference."""
        dec, passes = state.decomposition, state.passes[label]
        samples = []
        for i in range(state.request.num_images):
            references = {}
            if state.request.chain:
                references = {
                    sid: passes[k].images[i]
                    for k, unit in enumerate(dec.units)
                    for sid in unit.subjects
                }
            samples.append(ImageSample(dec.final_prompt, dec.scene, references))
        return samples
