"""The diffusion GRPO recipe (Flow-GRPO / HiCoGen): every setting of `vrl train diffusion`."""

from __future__ import annotations

from typing import Any, Literal

from vrl.config import config, field
from vrl.trainers.settings import LoraSettings, OptimSettings, RunSettings


@config
class DiffusionModelSettings:
    path: str = field(
        "tiny-random:sd3",
        help="diffusers pipeline folder or hub id (SD3/SD3.5, FLUX.1); 'tiny-random:sd3' or "
        "'tiny-random:flux' builds a tiny random pipeline of that architecture offline",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        "auto", help="weights dtype; auto = bfloat16 on a GPU that supports it, float32 on the CPU"
    )
    lora: LoraSettings = field(
        default_factory=lambda: LoraSettings(enabled=True, r=32, alpha=64, dropout=0.0),
        help="LoRA on the transformer's attention projections (published: r 32, alpha 64)",
    )
    gradient_checkpointing: bool = field(False, help="recompute transformer activations")
    reference_lora: str | None = field(
        None,
        help="UNO's multi-reference LoRA (dit_lora.safetensors) merged into a FLUX.1-dev base: "
        "the model then reads reference images as tokens (chain.context auto -> in_context; "
        "chain.positions must be uno)",
    )


@config
class PromptSettings:
    train: str = field(
        "synthetic:shapes",
        help="prompt file (.txt one per line, or .jsonl with 'prompt' + metadata)",
    )
    eval: str | None = field(None, help="evaluation prompt file (None = the first train prompts)")
    num_eval: int = field(8, ge=1, help="evaluation prompts (one image each, fixed noise)")
    skip_bad_lines: bool = field(False, help="skip malformed lines (logged) instead of stopping")


@config
class SamplingSettings:
    height: int = field(32, ge=8, help="image height in pixels")
    width: int = field(32, ge=8, help="image width in pixels")
    num_steps: int = field(
        10, ge=2, help="denoising steps of training rollouts (fewer than evaluation)"
    )
    eval_num_steps: int = field(40, ge=1, help="denoising steps at evaluation (deterministic ODE)")
    guidance_scale: float = field(4.5, ge=0, help="classifier-free guidance (FLUX.1-dev: embedded)")
    step: Literal["sde", "cps"] = field("sde", help="stochastic step: Flow-GRPO SDE or CPS")
    noise: dict[str, Any] = field(
        default_factory=lambda: {"kind": "constant", "level": 0.7},
        help="noise schedule: {kind: constant, level} | {kind: decaying, eta_max, eta_min} | "
        "{kind: window, size, start, inner: {...}}",
    )

    def __post_init__(self):
        from vrl.samplers import from_config

        try:
            from_config(self.noise)
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"sampling.noise: {err}") from None


@config
class DiffusionGRPOSettings:
    group_size: int = field(16, ge=2, help="images per prompt (G)")
    prompts_per_step: int = field(2, ge=1, help="distinct prompts per rollout, over all processes")
    objective: Literal["sde", "awm", "nft"] = field(
        "sde",
        help="sde = Flow-GRPO: the clipped surrogate on the stored SDE transitions' Gaussian "
        "log-probs; awm = Advantage Weighted Matching: the same surrogate with each image's "
        "flow-matching loss (at fresh noise and times) as its negative log-likelihood, far "
        "lower variance than the per-step log-probs; nft = DiffusionNFT: flow matching of each "
        "image through an implicit positive policy, weighted by its optimality r, and an "
        "implicit negative one, weighted by 1 - r, both anchored to the sampling policy (no "
        "likelihood, no ratio). On the shapes world awm gained and sde did not (docs/experiments, "
        "2026-11-24 and -25); nft is experimental: no gain there, "
        "docs/experiments/2026-12-06-nft-and-guided-matching.md",
    )
    awm_times: int = field(
        2,
        ge=1,
        help="objective=awm or nft: noised copies (times t) per image per update (4 measured no "
        "gain over 2 on the shapes world, docs/experiments, 2026-12-06)",
    )
    guided_matching: bool = field(
        False,
        help="objective=awm or nft: match the guided velocity the rollouts were drawn with, "
        "v_u + g (v_c - v_u) with the unconditional half detached, instead of the conditional "
        "one (whose offset from the guided velocity is the same for every image of a prompt). "
        "Experimental: no gain on the shapes world (2 seeds; 8-10 points lost at lr 2e-3), "
        "docs/experiments/2026-12-06-nft-and-guided-matching.md",
    )
    nft_beta: float = field(
        1.0,
        gt=0,
        help="objective=nft: the implicit policies' step, (1 - b) v_old + b v (positive) and "
        "(1 + b) v_old - b v (negative); the loss is least at v_old moved (2r - 1) / b of the "
        "way to the image's flow-matching target",
    )
    sampler_decay: float = field(
        0.0,
        ge=0,
        lt=1,
        help="objective=nft: rollouts and v_old come from an EMA of the trained weights with "
        "this decay (DiffusionNFT's soft-updated sampling policy); 0 = the trained weights. "
        "Experimental: 0.9 moved no level beyond a run's noise on the shapes world, "
        "docs/experiments/2026-12-06-nft-and-guided-matching.md",
    )
    num_iterations: int = field(
        1,
        ge=1,
        help="policy updates per rollout (>1: ratios against the rollout policy's log-probs, "
        "stored while sampling for sde, taken in the first update for awm); 2 measured no gain "
        "over 1 on the shapes world, docs/experiments, 2026-11-25",
    )
    beta: float = field(
        0.0,
        ge=0,
        help="weight of the KL to the reference (sde: Gaussian-mean KL per step; awm, nft: "
        "squared velocity difference); 0 = no reference held",
    )
    eps: float = field(1e-4, gt=0, help="clip range of the per-step ratio (published: 1e-4)")
    adv_clip_max: float = field(
        5.0,
        gt=0,
        help="advantages are clipped to +-this (nft: optimality r = (A + this) / (2 this); 1, "
        "r saturating at |A| = 1, moved no level beyond a run's noise on the shapes world, "
        "docs/experiments/2026-12-06-nft-and-guided-matching.md)",
    )
    advantage_scale: Literal["group", "batch", "none"] = field("group", help="advantage std scale")
    timestep_fraction: float = field(
        1.0,
        gt=0,
        le=1,
        help="fraction of the stochastic steps trained per rollout (drawn at random)",
    )
    skip_last_step: bool = field(True, help="never train the last step (its Gaussian is too sharp)")
    rewards: dict[str, float] = field(
        default_factory=lambda: {"redness": 1.0},
        help="registry reward name -> weight (vrl.rewards), added to the hierarchical reward's "
        "levels when `hierarchical` weights any; {} = the hierarchical reward alone",
    )

    def __post_init__(self):
        from vrl.rewards.registry import check_reward_weights

        for name in self.rewards:
            if name in ("hier_global", "hier_subject", "hier_relation"):
                level = name.removeprefix("hier_")
                raise ValueError(
                    f"grpo.rewards.{name}: the hierarchical reward's levels are weighted in "
                    f"hierarchical.weights (hierarchical.weights.{level}), beside its models"
                )
        check_reward_weights(self.rewards, "image", "grpo.rewards")
        if self.sampler_decay and self.objective != "nft":
            raise ValueError(
                f"grpo.sampler_decay ({self.sampler_decay}) is for objective=nft, "
                f"not {self.objective}"
            )


@config
class ChainSettings:
    enabled: bool = field(
        False,
        help="HiCoGen chain of synthesis: each prompt's units are drawn in turn, each seeing the "
        "passes before it (chain.context), then a final pass with the full prompt; every pass is "
        "a trained trajectory",
    )
    context: Literal["auto", "in_context", "img2img"] = field(
        "auto",
        help="how a pass sees the earlier ones: in_context = from noise, the earlier unit images "
        "as reference tokens (HiCoGen; any FLUX model, trained for it: FLUX.1 Kontext); img2img = from the "
        "previous canvas noised back to chain.strength (any model; may erase earlier subjects); "
        "auto = in_context when the model was trained on reference images (a FluxKontextPipeline), "
        "else img2img",
    )
    references: Literal["all", "last"] = field(
        "all",
        help="in_context: a unit pass sees every earlier unit image, or the latest canvas only "
        "(the final pass always sees every unit image)",
    )
    positions: Literal["kontext", "uno"] = field(
        "kontext",
        help="in_context: reference position ids, kontext = reference k at index k (FLUX.1 "
        "Kontext), uno = offset diagonally past the image and earlier references (UNO)",
    )
    boxes: Literal["none", "world"] = field(
        "none",
        help="in_context: a unit pass also sees where its subjects go, their boxes as one more "
        "reference image; world = laid out by the shapes world's planner, every relation "
        "satisfied (world scenes and square images only; the model must be trained on it: "
        "world-kontext boxes_prob)",
    )
    decompose: Literal["auto", "llm"] = field(
        "auto",
        help="scenes for prompts without scene metadata: auto = the rule-based template parser, "
        "else one unit holding the whole prompt; llm = a local instruction-tuned LM (chain.llm) "
        "with the parser as fallback. A JSONL 'scene' field always wins",
    )
    llm: str | None = field(
        None, help="local causal LM folder for decompose=llm (e.g. a Qwen2.5-Instruct checkpoint)"
    )
    strength: float = field(
        0.7, gt=0, le=1, help="img2img: the sigma a later pass starts from (its re-noising)"
    )
    credit: Literal["final", "unit"] = field(
        "final",
        help="final = every pass gets the final image's advantage; unit = a unit pass gets the "
        "advantage of its own image, graded against the scene drawn so far",
    )
    max_units: int = field(4, ge=1, help="units past this are merged into the last one")
    unit_prompts: Literal["own", "relational", "cumulative"] = field(
        "own",
        help="what a unit's prompt names: its own subjects (own), them and their relations to "
        "the earlier subjects, named by reference (relational), or every subject so far "
        "(cumulative: told only its own, an image-to-image pass may erase its canvas)",
    )
    cumulative_prompts: bool = field(
        False, help="deprecated: the same as unit_prompts=cumulative (kept for old recipes)"
    )

    def chain_kwargs(self, adapter) -> dict[str, Any]:
        """How the chain's passes see each other, for `iter_chain` / `eval_chain` with this model
        (`auto` resolved; in_context on a model without reference inputs is an error)."""
        from vrl.hicogen.chain import resolve_context

        return {
            "strength": self.strength,
            "context": resolve_context(adapter, self.context),
            "references": self.references,
            "positions": self.positions,
        }

    def __post_init__(self):
        if self.cumulative_prompts:
            if self.unit_prompts not in ("own", "cumulative"):
                raise ValueError(
                    f"chain.cumulative_prompts=true contradicts chain.unit_prompts="
                    f"{self.unit_prompts}: set unit_prompts alone"
                )
            self.unit_prompts = "cumulative"
        if self.boxes != "none" and self.context == "img2img":
            raise ValueError("chain.boxes are reference images: they need chain.context in_context")
        if self.decompose == "llm" and not self.llm:
            raise ValueError("chain.decompose=llm needs chain.llm (a local model folder)")


@config
class HierarchicalSettings:
    judge: Literal["models", "world"] = field(
        "models",
        help="what reads the images: models = CLIP / HPS-style preference (global), an open-vocabulary detector (GroundingDINO or OWLv2) + "
        "DINOv2 + a VLM (subject), the VLM + box geometry (relation), logged as hier_global, "
        "hier_subject, hier_relation; world = the shapes world's exact checker, no model, logged "
        "as world_global, world_subject, world_relation",
    )
    weights: dict[str, float] = field(
        default_factory=dict,
        help="{global, subject, relation: weight}: R = sum of weight * level, each level named "
        "built and logged on its own; {} = no hierarchical reward. Every weight of the "
        "hierarchical reward is in this section (these and `terms`), none in grpo.rewards",
    )
    terms: dict[str, dict[str, float]] = field(
        default_factory=dict,
        help="judge=models: the weights inside a level, default 1 each: global {w_clip, w_pref}, "
        "subject {w_dino, w_vlm}, relation {w_vlm, w_geometry}",
    )
    models: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        help="judge=models: {clip, preference, detector, dino, vlm: {path, ...}}, each loaded "
        "once (vrl.rewards.hierarchical_models; path 'tiny-random' builds a tiny random model)",
    )

    def __post_init__(self):
        from vrl.rewards.hierarchical_models import check_hierarchical

        check_hierarchical(self.judge, self.weights, self.terms, self.models)

    def build(self, device="cpu"):
        """The configured `HierarchicalReward` with its models loaded (None when unweighted)."""
        from vrl.rewards.hierarchical_models import build_hierarchical_reward

        return build_hierarchical_reward(
            judge=self.judge, weights=self.weights, terms=self.terms, models=self.models,
            device=device,
        )  # fmt: skip


@config
class EvalSettings:
    every: int = field(0, ge=0, help="evaluate every N steps (0 = only before and after training)")
    ema: bool = field(True, help="evaluate with the EMA of the trainable weights")
    ema_decay: float = field(0.9, ge=0, lt=1, help="EMA decay per optimizer step")


@config
class DiffusionTrainConfig:
    model: DiffusionModelSettings = field(default_factory=DiffusionModelSettings, help="policy")
    prompts: PromptSettings = field(default_factory=PromptSettings, help="prompts")
    sampling: SamplingSettings = field(default_factory=SamplingSettings, help="rollout sampler")
    grpo: DiffusionGRPOSettings = field(default_factory=DiffusionGRPOSettings, help="algorithm")
    optim: OptimSettings = field(
        default_factory=lambda: OptimSettings(lr=1e-4, micro_batch_size=8), help="optimizer"
    )
    chain: ChainSettings = field(default_factory=ChainSettings, help="HiCoGen chain of synthesis")
    hierarchical: HierarchicalSettings = field(
        default_factory=HierarchicalSettings,
        help="HiCoGen's hierarchical reward R = sum of weight * level: its judge, all its "
        "weights and its models",
    )
    eval: EvalSettings = field(default_factory=EvalSettings, help="evaluation and EMA")
    run: RunSettings = field(
        default_factory=lambda: RunSettings(output_dir="runs/diffusion"), help="run folder"
    )

    def __post_init__(self):
        if self.model.reference_lora and self.chain.positions != "uno":
            raise ValueError(
                "model.reference_lora (UNO's LoRA) was trained with UNO's position ids: set "
                "chain.positions=uno"
            )
        if self.chain.boxes == "world" and self.sampling.height != self.sampling.width:
            raise ValueError(
                f"chain.boxes=world lays out square images: sampling.height "
                f"{self.sampling.height} != sampling.width {self.sampling.width}"
            )
        if not self.grpo.rewards and not self.hierarchical.weights:
            raise ValueError(
                "no reward: name one in grpo.rewards (registry rewards) or weight the levels of "
                "the hierarchical reward in hierarchical.weights"
            )
