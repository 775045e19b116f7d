"""Flow-matching text-to-image models behind one small interface, for the diffusion RL trainers.

A trainer needs six things from a pipeline: encode prompts (frozen text encoders), the sigma
schedule the family's own pipeline would use, initial noise in the layout the transformer consumes,
the velocity prediction (with classifier-free guidance), decoding latents to images, and LoRA on
the transformer with the base model available as the reference policy. `FlowMatchingAdapter` holds
the shared logic; a family is one small subclass (`SD3Adapter`, `FluxAdapter`) that says how to
encode, which scheduler call to make, how latents are laid out and how the transformer is called.

Conventions (`docs/algorithms.md`, section 3.1): x_t = (1 - s) x_0 + s eps, sampling
runs from s = 1 to s = 0, and the transformer's output v = eps - x_0 is used as is by diffusers'
`FlowMatchEulerDiscreteScheduler.step`: x_next = x + (s_next - s) * v. So `velocity` returns the
transformer output (after guidance) and an Euler loop with it reproduces the pipeline exactly.
Timesteps: SD3's transformer takes t = s * 1000; FLUX's takes s and multiplies by 1000 inside.

A pipeline saved without a VAE (`vae` null in `model_index.json`, e.g. the shapes world's tiny
text-to-image model, an SD3 pipeline) works in pixel space: its latents are the images themselves
in [-1, 1], with the transformer's input channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from vrl.models.conditioning import PromptEmbeds as PromptEmbeds
from vrl.models.conditioning import ReferencePositions, References, grid_ids
from vrl.models.diffusion_lora import ATTENTION_PROJECTIONS as ATTENTION_PROJECTIONS
from vrl.models.diffusion_lora import TransformerLoRA
from vrl.models.diffusion_lora import lora_layers as _lora_layers  # noqa: F401 (demo's import)

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


REFERENCE_PIPELINES = {"FluxKontextPipeline"}
"""Pipeline classes whose transformers were trained with reference images as tokens."""

# Pipeline class name (model_index.json's `_class_name`) -> adapter class.
_ADAPTERS: dict[str, type[FlowMatchingAdapter]] = {}


def register_adapter(cls: type[FlowMatchingAdapter]) -> type[FlowMatchingAdapter]:
    """Class decorator: route the pipeline classes in `cls.pipeline_classes` to `cls`."""
    for name in cls.pipeline_classes:
        if name in _ADAPTERS:
            raise ValueError(f"{name} already maps to {_ADAPTERS[name].__name__}")
        _ADAPTERS[name] = cls
    return cls


class FlowMatchingAdapter(TransformerLoRA):
    """Shared logic of a flow-matching text-to-image family; subclasses fill in the `_` hooks.

    LoRA on the transformer (`add_lora`, `disabled_adapter`, `lora_state_dict`) comes from
    `vrl.models.diffusion_lora.TransformerLoRA`.

    Latents handled here are float32 whatever the model dtype: the transformer gets them cast to
    its dtype and its output comes back in the latents' dtype, so sampler math stays in float32.
    """

    family: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]]
    default_max_sequence_length: ClassVar[int]

    def __init__(self, pipeline: DiffusionPipeline, max_sequence_length: int | None = None):
        self.pipeline = pipeline
        self.transformer: torch.nn.Module = pipeline.transformer
        if max_sequence_length is None:
            # The pipeline's default, unless the T5 tokenizer declares a shorter maximum (the tiny
            # test pipelines do; real T5 tokenizers declare 512).
            t5_max = getattr(self._t5_tokenizer(), "model_max_length", None) or math.inf
            max_sequence_length = int(min(self.default_max_sequence_length, t5_max))
        self.max_sequence_length = max_sequence_length
        """T5 tokens per prompt (padded to this length; smaller is much cheaper on a CPU)."""
        self.reference_lora: str | None = None
        """A LoRA merged in that taught the weights reference tokens (UNO's), or None."""
        self._negative: PromptEmbeds | None = None
        self._packed_grids: dict[int, set[tuple[int, int]]] = {}
        for name, component in pipeline.components.items():
            if isinstance(component, torch.nn.Module) and name != "transformer":
                component.requires_grad_(False)  # text encoders and VAE are never trained
                component.eval()
        pipeline.set_progress_bar_config(disable=True)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        max_sequence_length: int | None = None,
        **pipeline_kwargs: Any,
    ) -> FlowMatchingAdapter:
        """Load a pipeline folder or hub id (through the local HF cache) into its family's adapter.

        The adapter class is picked from `_class_name` in the pipeline's `model_index.json`.
        Full precision on the CPU by default; pass `dtype=torch.bfloat16, device="cuda"` on a GPU.
        """
        from diffusers import DiffusionPipeline

        config = DiffusionPipeline.load_config(str(path))
        class_name = config["_class_name"]
        adapter_cls = _ADAPTERS.get(class_name)
        if adapter_cls is None:
            raise ValueError(
                f"no flow-matching adapter for pipeline class {class_name!r} ({path}); "
                f"supported: {sorted(_ADAPTERS)}"
            )
        if not issubclass(adapter_cls, cls):
            raise ValueError(f"{path} is a {class_name}, not a {cls.__name__} pipeline")
        # diffusers saves an absent component (vae=None) as [null, null] but refuses to load the
        # folder unless that component is passed again as None.
        absent = {name: None for name, value in config.items() if value == [None, None]}
        pipeline = DiffusionPipeline.from_pretrained(
            str(path), **_dtype_kwarg(dtype), **{**absent, **pipeline_kwargs}
        )
        if device is not None:
            pipeline.to(device)
        return adapter_cls(pipeline, max_sequence_length=max_sequence_length)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def vae_scale_factor(self) -> int:
        if self.pipeline.vae is None:  # pixel space
            return 1
        return 2 ** (len(self.pipeline.vae.config.block_out_channels) - 1)

    @property
    def guidance_embedded(self) -> bool:
        """True for guidance-distilled models (FLUX.1-dev): the scale is an input, no CFG batch."""
        return False

    takes_references: ClassVar[bool] = False
    """Whether the transformer takes reference images as tokens (`encode_references`)."""

    @property
    def trained_on_references(self) -> bool:
        """Whether the weights were trained to read reference tokens (FLUX.1 Kontext, or UNO's
        LoRA merged in): what a chain's `context=auto` goes by. Any FLUX transformer takes them; FLUX.1-dev alone has
        never seen them."""
        kontext = type(self.pipeline).__name__ in REFERENCE_PIPELINES
        return self.takes_references and (kontext or self.reference_lora is not None)

    # ------------------------------------------------------------------ text

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> PromptEmbeds:
        """Embeddings of a batch of prompts with the frozen text encoders (no grad)."""
        if isinstance(prompts, str):
            raise TypeError("encode_prompts takes a list of prompts, not a single string")
        return self._encode(list(prompts))

    def negative_embeds(self, n: int) -> PromptEmbeds:
        """Empty-prompt embeddings for CFG's unconditional branch, encoded once and cached."""
        if self._negative is None or self._negative.prompt_embeds.device != self.device:
            self._negative = self.encode_prompts([""])
        return self._negative.repeat_interleave(n)

    # ------------------------------------------------------------------ schedule and latents

    def sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        """(num_steps + 1,) float32 sigmas from 1 down to 0, as the family's pipeline sets them.

        Computed by the pipeline's scheduler class itself (a fresh copy, so the pipeline's own
        scheduler state is untouched), with the same arguments the pipeline passes.
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self._check_size(height, width)
        scheduler_config = self.pipeline.scheduler.config
        scheduler = type(self.pipeline.scheduler).from_config(scheduler_config)
        self._set_timesteps(scheduler, num_steps, height, width)
        return scheduler.sigmas.to(device=self.device, dtype=torch.float32)

    def initial_noise(
        self,
        batch: int,
        height: int,
        width: int,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> Tensor:
        """Standard normal float32 latents in the transformer's layout (the pipeline's own draw).

        With the same generator, this is exactly the noise the pipeline would start from.
        """
        from diffusers.utils.torch_utils import randn_tensor

        self._check_size(height, width)
        channels, h, w = self._latent_chw(height, width)
        noise = randn_tensor(
            (batch, channels, h, w), generator=generator, device=self.device, dtype=torch.float32
        )
        return self._pack(noise)

    def _check_size(self, height: int, width: int) -> None:
        multiple = self._size_multiple()
        if height % multiple or width % multiple or height <= 0 or width <= 0:
            raise ValueError(
                f"{self.family}: height and width must be positive multiples of {multiple}, "
                f"got {height}x{width}"
            )

    # ------------------------------------------------------------------ model

    def velocity(
        self,
        transformer: torch.nn.Module,
        latents: Tensor,
        sigma: Tensor | float,
        embeds: PromptEmbeds,
        *,
        guidance_scale: float = 1.0,
        negative: PromptEmbeds | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> Tensor:
        """Velocity v (Euler step x + v * (s_next - s)) of `latents` at noise level `sigma`.

        `transformer` is passed explicitly so that a DDP- or peft-wrapped module can be used.
        `sigma`: a scalar or (B,). With `guidance_scale > 1` on a model without a guidance
        embedding, classifier-free guidance runs as ONE forward of the batch [uncond, cond]
        (`negative` defaults to the empty prompt) and the unconditional half is detached:
        v = v_u + g (v_c - v_u). A guidance-embedded model (FLUX.1-dev) gets the scale as input
        (one forward of B; `negative` is not used).
        `image_size` (H, W) is only needed for packed layouts whose grid is ambiguous.
        `embeds.references` (in-context FLUX) are tokens after the noisy ones; the output is the
        noisy tokens' velocity alone.
        """
        b = latents.shape[0]
        if len(embeds) != b:
            raise ValueError(f"{len(embeds)} prompt embeddings for a batch of {b} latents")
        if embeds.references is not None and not self.takes_references:
            raise ValueError(
                f"{self.family} takes no reference images (in-context conditioning needs a FLUX "
                "transformer): use chain.context=img2img"
            )
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=latents.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(b)
        if sigma.shape != (b,):
            raise ValueError(f"sigma must be a scalar or of shape ({b},), got {tuple(sigma.shape)}")
        embeds = embeds.to(latents.device, self.dtype)
        x = latents.to(self.dtype)

        if guidance_scale > 1.0 and not self.guidance_embedded:
            if negative is None:
                negative = self.negative_embeds(b)
            if len(negative) == 1 and b > 1:
                negative = negative.repeat_interleave(b)
            if len(negative) != b:
                raise ValueError(f"{len(negative)} negative embeddings for a batch of {b}")
            # the unconditional branch sees the same references (as Kontext's true CFG does)
            negative = negative.with_references(embeds.references).to(latents.device, self.dtype)
            both = PromptEmbeds.cat([negative, embeds])  # (2B, ...): [uncond, cond]
            out = self._forward(
                transformer, torch.cat([x, x]), sigma.repeat(2), both, None, image_size
            )
            v_uncond, v_cond = out.chunk(2)
            v_uncond = v_uncond.detach()
            v = v_uncond + guidance_scale * (v_cond - v_uncond)
        else:
            guidance = None
            if self.guidance_embedded:
                guidance = torch.full((b,), guidance_scale, dtype=torch.float32, device=x.device)
            v = self._forward(transformer, x, sigma, embeds, guidance, image_size)
        return v.to(latents.dtype)

    def velocity_fn(
        self,
        transformer: torch.nn.Module,
        embeds: PromptEmbeds,
        guidance_scale: float = 1.0,
        negative: PromptEmbeds | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """`fn(latents (B, ...), sigma (B,)) -> v (B, ...)` for a sampling loop."""

        def fn(latents: Tensor, sigma: Tensor) -> Tensor:
            return self.velocity(
                transformer,
                latents,
                sigma,
                embeds,
                guidance_scale=guidance_scale,
                negative=negative,
                image_size=image_size,
            )

        return fn

    def decode(self, latents: Tensor, image_size: tuple[int, int] | None = None) -> Tensor:
        """(B, 3, H, W) float32 images in [0, 1] from latents in the transformer's layout."""
        latents = self._unpack(latents, image_size)  # (B, C, h, w)
        vae = self.pipeline.vae
        if vae is None:  # pixel space: latents are the image in [-1, 1]
            return (latents.float() * 0.5 + 0.5).clamp(0, 1)
        shift = vae.config.shift_factor or 0.0
        z = latents.to(vae.dtype) / vae.config.scaling_factor + shift
        image = vae.decode(z, return_dict=False)[0]  # (B, 3, H, W) in about [-1, 1]
        return (image.float() * 0.5 + 0.5).clamp(0, 1)

    def encode_images(self, images: Tensor) -> Tensor:
        """Latents in the transformer's layout from (B, 3, H, W) images in [0, 1]: the inverse
        of `decode` (the VAE posterior mean, scaled and shifted), for image-to-image."""
        vae = self.pipeline.vae
        if vae is None:  # pixel space
            return self._pack(images.to(self.device, torch.float32) * 2 - 1)
        x = images.to(self.device, vae.dtype) * 2 - 1
        z = vae.encode(x, return_dict=False)[0].mean  # (B, C, h, w)
        shift = vae.config.shift_factor or 0.0
        return self._pack(((z - shift) * vae.config.scaling_factor).float())

    # ------------------------------------------------------------------ family hooks

    def _encode(self, prompts: list[str]) -> PromptEmbeds:
        raise NotImplementedError

    def _t5_tokenizer(self):
        raise NotImplementedError

    def _set_timesteps(self, scheduler, num_steps: int, height: int, width: int) -> None:
        raise NotImplementedError

    def _size_multiple(self) -> int:
        raise NotImplementedError

    def _latent_chw(self, height: int, width: int) -> tuple[int, int, int]:
        """(channels, h, w) of the VAE latent of an image of the given size (pixel space: the
        image itself, with the transformer's input channels)."""
        vae = self.pipeline.vae
        channels = self._pixel_channels() if vae is None else vae.config.latent_channels
        return channels, height // self.vae_scale_factor, width // self.vae_scale_factor

    def _pixel_channels(self) -> int:
        """Image channels a pixel-space transformer takes per latent position."""
        return self.transformer.config.in_channels

    def _pack(self, latents: Tensor) -> Tensor:
        """VAE latents (B, C, h, w) -> the transformer's layout (identity unless packed)."""
        return latents

    def _unpack(self, latents: Tensor, image_size: tuple[int, int] | None) -> Tensor:
        return latents

    def _forward(
        self,
        transformer: torch.nn.Module,
        latents: Tensor,
        sigma: Tensor,
        embeds: PromptEmbeds,
        guidance: Tensor | None,
        image_size: tuple[int, int] | None,
    ) -> Tensor:
        raise NotImplementedError


@register_adapter
class SD3Adapter(FlowMatchingAdapter):
    """Stable Diffusion 3 / 3.5: latents (B, 16, h, w), CFG by batch doubling, t = sigma * 1000."""

    family = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    default_max_sequence_length = 256

    def _t5_tokenizer(self):
        return self.pipeline.tokenizer_3

    def _encode(self, prompts: list[str]) -> PromptEmbeds:
        prompt_embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return PromptEmbeds(prompt_embeds, pooled)  # (B, 77 + L, D), (B, P)

    def _size_multiple(self) -> int:
        return self.vae_scale_factor * self.transformer.config.patch_size

    def _set_timesteps(self, scheduler, num_steps: int, height: int, width: int) -> None:
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", False):  # SD3.5 variants with mu
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
                calculate_shift,
            )

            patch = self.transformer.config.patch_size
            _, h, w = self._latent_chw(height, width)
            kwargs["mu"] = calculate_shift(
                (h // patch) * (w // patch),
                scheduler.config.get("base_image_seq_len", 256),
                scheduler.config.get("max_image_seq_len", 4096),
                scheduler.config.get("base_shift", 0.5),
                scheduler.config.get("max_shift", 1.16),
            )
        scheduler.set_timesteps(num_steps, device=self.device, **kwargs)

    def _forward(self, transformer, latents, sigma, embeds, guidance, image_size) -> Tensor:
        num_train_timesteps = self.pipeline.scheduler.config.num_train_timesteps
        return transformer(
            hidden_states=latents,  # (B, C, h, w)
            timestep=sigma * num_train_timesteps,  # (B,) as the scheduler's timesteps
            encoder_hidden_states=embeds.prompt_embeds,
            pooled_projections=embeds.pooled,
            return_dict=False,
        )[0]


@register_adapter
class FluxAdapter(FlowMatchingAdapter):
    """FLUX.1: 2x2 patches packed into tokens (B, h/2 * w/2, 4C), timestep = sigma, RoPE ids.

    FLUX.1-dev (`guidance_embeds=True`) takes the guidance scale as an input; a model without the
    guidance embedding gets true CFG by batch doubling when `guidance_scale > 1`.
    """

    family = "flux"
    pipeline_classes = ("FluxPipeline", "FluxKontextPipeline")
    default_max_sequence_length = 512
    takes_references = True

    @torch.no_grad()
    def encode_references(
        self, images: Sequence[Tensor], positions: ReferencePositions = "kontext"
    ) -> References:
        """Reference images as tokens, encoded once (clean latents, packed like the noisy ones).

        `images`: one (B, 3, H, W) tensor in [0, 1] per reference, each sample of the batch with
        its own; sizes may differ between references but must suit the VAE and 2x2 packing.
        `positions`: their RoPE ids, `kontext` (FLUX.1 Kontext) or `uno` (UNO's diagonal)."""
        if not images:
            raise ValueError("encode_references needs at least one reference image")
        batch = images[0].shape[0]
        tokens, grids = [], []
        for k, image in enumerate(images, start=1):
            if image.ndim != 4 or image.shape[1] != 3:
                raise ValueError(
                    f"reference {k} of {len(images)}: expected (B, 3, H, W), got {tuple(image.shape)}"
                )
            if image.shape[0] != batch:
                raise ValueError(
                    f"reference {k} of {len(images)} has a batch of {image.shape[0]}, "
                    f"reference 1 of {batch}"
                )
            height, width = image.shape[2:]
            try:
                self._check_size(height, width)
            except ValueError as err:
                raise ValueError(f"reference {k} of {len(images)}: {err}") from None
            tokens.append(self.encode_images(image))
            _, h, w = self._latent_chw(height, width)
            grids.append((h // 2, w // 2))
        return References(torch.cat(tokens, dim=1), tuple(grids), positions)

    def references_from_latents(
        self,
        latents: Sequence[Tensor],
        image_size: tuple[int, int],
        positions: ReferencePositions = "kontext",
    ) -> References:
        """References from latents this adapter made (a chain's earlier passes, all of
        `image_size`): what `encode_references` of their decoded images would give, without
        the VAE round trip."""
        _, h, w = self._latent_chw(*image_size)
        tokens = torch.cat([x.detach() for x in latents], dim=1)  # (B, n * seq, 4C)
        return References(tokens, ((h // 2, w // 2),) * len(latents), positions)

    def _t5_tokenizer(self):
        return self.pipeline.tokenizer_2

    @property
    def guidance_embedded(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    def _encode(self, prompts: list[str]) -> PromptEmbeds:
        prompt_embeds, pooled, text_ids = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=self.device,
            max_sequence_length=self.max_sequence_length,
        )
        return PromptEmbeds(prompt_embeds, pooled, text_ids)  # (B, L, D), (B, P), (L, 3)

    def _size_multiple(self) -> int:
        return self.vae_scale_factor * 2  # the VAE's downsampling, then 2x2 packing

    def _pixel_channels(self) -> int:
        return self.transformer.config.in_channels // 4  # its input is packed 2x2 patches

    def _set_timesteps(self, scheduler, num_steps: int, height: int, width: int) -> None:
        import numpy as np
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        _, h, w = self._latent_chw(height, width)
        config = scheduler.config
        mu = calculate_shift(
            (h // 2) * (w // 2),  # image tokens: the shift grows with the resolution
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        # FluxPipeline passes explicit linear sigmas, which the scheduler then shifts by mu.
        sigmas = None
        if not config.get("use_flow_sigmas", False):
            sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        scheduler.set_timesteps(num_steps, device=self.device, sigmas=sigmas, mu=mu)

    def _pack(self, latents: Tensor) -> Tensor:
        b, c, h, w = latents.shape
        self._packed_grids.setdefault((h // 2) * (w // 2), set()).add((h, w))
        x = latents.view(b, c, h // 2, 2, w // 2, 2)
        x = x.permute(0, 2, 4, 1, 3, 5)  # (B, h/2, w/2, C, 2, 2): a token per 2x2 patch
        return x.reshape(b, (h // 2) * (w // 2), c * 4)  # (B, seq, 4C)

    def _unpack(self, latents: Tensor, image_size: tuple[int, int] | None) -> Tensor:
        b, seq, c4 = latents.shape
        h, w = self._latent_hw(seq, image_size)
        x = latents.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c4 // 4, h, w)  # (B, C, h, w)

    def _latent_hw(self, seq: int, image_size: tuple[int, int] | None) -> tuple[int, int]:
        """Latent (h, w) of packed latents with `seq` tokens: from `image_size`, from the shapes
        `initial_noise` produced, or square."""
        if image_size is not None:
            _, h, w = self._latent_chw(*image_size)
            if (h // 2) * (w // 2) != seq:
                raise ValueError(f"image_size {image_size} does not give {seq} latent tokens")
            return h, w
        grids = self._packed_grids.get(seq, set())
        if len(grids) == 1:
            return next(iter(grids))
        side = math.isqrt(seq)
        if not grids and side * side == seq:
            return 2 * side, 2 * side
        raise ValueError(f"cannot tell the image shape of {seq} packed tokens: pass image_size")

    def _forward(self, transformer, latents, sigma, embeds, guidance, image_size) -> Tensor:
        seq = latents.shape[1]
        h, w = self._latent_hw(seq, image_size)
        img_ids = grid_ids(h // 2, w // 2, device=latents.device, dtype=latents.dtype)  # (seq, 3)
        refs = embeds.references
        if refs is not None:  # in context: [noisy | references], cut back to the noisy tokens
            if refs.tokens.shape[2] != latents.shape[2]:
                raise ValueError(
                    f"reference tokens have {refs.tokens.shape[2]} channels, the noisy latents "
                    f"{latents.shape[2]}: the references were encoded for another model"
                )
            latents = torch.cat([latents, refs.tokens.to(latents.dtype)], dim=1)
            ref_ids = refs.ids((h // 2, w // 2), latents.device, latents.dtype)
            img_ids = torch.cat([img_ids, ref_ids])
        return transformer(
            hidden_states=latents,  # (B, seq [+ R], 4C)
            timestep=sigma,  # FLUX multiplies by 1000 inside
            guidance=guidance,
            pooled_projections=embeds.pooled,
            encoder_hidden_states=embeds.prompt_embeds,
            txt_ids=embeds.text_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0][:, :seq]


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    # Recent diffusers renamed `torch_dtype` to `dtype` (the old name warns); older ones know only
    # `torch_dtype`. Loading in the right dtype matters: a float32 load of FLUX then cast is 2x RAM.
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}
