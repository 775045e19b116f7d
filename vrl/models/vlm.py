"""One adapter between the RL trainers and a Hugging Face vision-language model.

The GRPO trainer and the evaluation code need five things from a VLM: turn chat messages and
images into model inputs, sample completions, score completions token by token, map predicted
boxes back to the original image, and know which modules LoRA may touch. Families differ only in
small, declarative ways (which class loads them, which box convention their answers use), so those
differences live in one `FamilySpec` table and the code is shared: a new family is one table entry.

Box conventions (see `docs/algorithms.md`, section 2.3):
- `resized_pixels`: pixels of the image as fed to the model, after the processor resized it
  (Qwen2.5-VL, which sees absolute coordinates of its own input).
- `norm_1000`: a 0..1000 grid over the image, independent of resizing (Qwen2-VL).
- `original_pixels`: pixels of the original image (the generic default).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from vrl.models.batch import Completions, PromptBatch
from vrl.models.vlm_helpers import (
    _cache_keyword,
    _completion_logprobs,
    _default_family,
    _eval_mode,
    _four,
    _set_pixel_bounds,
    _unwrap_all,
    _unwrap_ddp,
)
from vrl.models.vlm_scoring import can_share_prompts, plain_logits, shared_prompt_logits
from vrl.sharding import is_sharded, root_unsharded

if TYPE_CHECKING:
    from PIL.Image import Image
    from transformers import GenerationConfig, PreTrainedModel, ProcessorMixin

BoxConvention = Literal["resized_pixels", "norm_1000", "original_pixels"]
Box = tuple[float, float, float, float]

_LM_PROJECTIONS = "q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"


@dataclass(frozen=True)
class FamilySpec:
    """What differs between model families; everything else is shared code."""

    box_convention: BoxConvention
    model_class: str | None
    """`transformers` class name that loads the checkpoint; None = `AutoModelForImageTextToText`."""
    vision_pattern: str
    """Regex searched in parameter/module names that marks the vision tower (frozen, never LoRA)."""
    language_pattern: str
    """Regex (full match) for the language model's attention and MLP projections (LoRA targets)."""
    nested_images: bool = False
    """Pass images to the processor as one list per prompt (some processors need that)."""


FAMILIES: dict[str, FamilySpec] = {
    "qwen2_5_vl": FamilySpec(
        box_convention="resized_pixels",
        model_class="Qwen2_5_VLForConditionalGeneration",
        vision_pattern=r"(^|\.)visual\.",
        language_pattern=rf".*language_model\.layers\.\d+\.(self_attn|mlp)\.({_LM_PROJECTIONS})",
    ),
    "qwen2_vl": FamilySpec(
        box_convention="norm_1000",
        model_class="Qwen2VLForConditionalGeneration",
        vision_pattern=r"(^|\.)visual\.",
        language_pattern=rf".*language_model\.layers\.\d+\.(self_attn|mlp)\.({_LM_PROJECTIONS})",
    ),
    "generic": FamilySpec(
        box_convention="original_pixels",
        model_class=None,
        vision_pattern=r"(^|\.)(visual|vision_tower|vision_model|vision_encoder)\.",
        language_pattern=rf".*language_model\..*\.({_LM_PROJECTIONS})",
        nested_images=True,
    ),
    # a text-only causal LM (e.g. Qwen2) on text-only prompts: no vision tower, no boxes to map
    "text": FamilySpec(
        box_convention="original_pixels",
        model_class="AutoModelForCausalLM",
        vision_pattern=r"(^|\.)(visual|vision_tower|vision_model)\.",
        language_pattern=rf"(.*\.)?layers\.\d+\.(self_attn|mlp)\.({_LM_PROJECTIONS})",
    ),
}

# Config attributes naming placeholder tokens that must never be sampled: a generated
# `<|image_pad|>` makes the next forward fail ("Image features and image tokens do not match").
_PLACEHOLDER_TOKEN_KEYS = (
    "image_token_id",
    "image_token_index",
    "video_token_id",
    "video_token_index",
    "vision_start_token_id",
)


class VLMAdapter:
    """A vision-language model and its processor, with the operations RL training needs.

    Methods that run the network take the model explicitly: the trainer may hand in an
    accelerate-wrapped, DDP-wrapped or peft model (or the reference model), and the adapter must
    not keep its own opinion about which copy is current.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        *,
        family: str | None = None,
        box_convention: BoxConvention | None = None,
    ) -> None:
        self.family = family or _default_family(model.config, FAMILIES)
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; valid: {sorted(FAMILIES)}")
        self.spec = FAMILIES[self.family]
        self.box_convention: BoxConvention = box_convention or self.spec.box_convention
        if self.box_convention not in ("resized_pixels", "norm_1000", "original_pixels"):
            raise ValueError(
                f"unknown box_convention {self.box_convention!r}; valid: "
                "'resized_pixels', 'norm_1000', 'original_pixels'"
            )
        self.model = model
        self.processor = processor
        # Batched generation appends new tokens on the right, so prompts must be padded on the
        # left; the setting is not reliably restored by `from_pretrained`, so force it here.
        self.tokenizer.padding_side = "left"

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype | str = torch.float32,
        attn_implementation: str | None = None,
        box_convention: BoxConvention | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        family: str | None = None,
    ) -> VLMAdapter:
        """Load a checkpoint folder or hub id (resolved through the local HF cache as usual).

        The family comes from `config.model_type` (`family="generic"` forces the
        `AutoModelForImageTextToText` path; a text-only causal LM gets the "text" family). `dtype` defaults to float32, full precision, which
        is what a CPU wants; pass `"auto"` for the checkpoint's own dtype (e.g. bf16 on a GPU).
        `min_pixels` / `max_pixels` override the image processor's resize bounds (Qwen).
        """
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        config = AutoConfig.from_pretrained(path)
        family = family or _default_family(config, FAMILIES)
        spec = FAMILIES.get(family)
        if spec is None:
            raise ValueError(f"unknown family {family!r}; valid: {sorted(FAMILIES)}")
        if spec.model_class is None:
            model_cls = AutoModelForImageTextToText
        else:
            import transformers

            model_cls = getattr(transformers, spec.model_class)
        model_kwargs: dict[str, Any] = {"dtype": dtype}
        if attn_implementation is not None:
            model_kwargs["attn_implementation"] = attn_implementation
        model = model_cls.from_pretrained(path, **model_kwargs)

        processor = AutoProcessor.from_pretrained(path)
        if min_pixels is not None or max_pixels is not None:
            _set_pixel_bounds(processor, min_pixels, max_pixels)
        return cls(model, processor, family=family, box_convention=box_convention)

    # ------------------------------------------------------------------ tokens

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.eos_token_ids[0]

    @property
    def eos_token_ids(self) -> list[int]:
        """Tokens that end a completion: the tokenizer's EOS and the generation config's."""
        ids: list[int] = []
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        gen_config = getattr(self.model, "generation_config", None)
        gen_eos = getattr(gen_config, "eos_token_id", None)
        for token in [gen_eos] if isinstance(gen_eos, int) else gen_eos or []:
            if token not in ids:
                ids.append(token)
        if not ids:
            raise ValueError("neither the tokenizer nor the generation config defines an EOS token")
        return ids

    @property
    def suppressed_token_ids(self) -> list[int]:
        """Image/video placeholder tokens, which must never be sampled."""
        ids = {getattr(self.model.config, key, None) for key in _PLACEHOLDER_TOKEN_KEYS}
        return sorted(i for i in ids if isinstance(i, int) and i >= 0)

    # ------------------------------------------------------------------ inputs

    def prepare_inputs(
        self, messages: Sequence[list[dict]], images: Sequence[Sequence[Image]]
    ) -> PromptBatch:
        """Render chat prompts (with the assistant turn opened), tokenise left-padded, process images.

        `messages[i]` is one conversation whose image items ({"type": "image"}) correspond, in
        order, to `images[i]`.
        """
        if len(messages) != len(images):
            raise ValueError(f"{len(messages)} conversations but {len(images)} image lists")
        texts = [
            self.processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
            for conv in messages
        ]
        image_token = getattr(self.processor, "image_token", None)
        if image_token is not None:
            for i, (text, imgs) in enumerate(zip(texts, images, strict=True)):
                if text.count(image_token) != len(imgs):
                    raise ValueError(
                        f"prompt {i} has {text.count(image_token)} image placeholders but "
                        f"{len(imgs)} images were given"
                    )
        flat_images = [img for imgs in images for img in imgs]
        if not flat_images:
            image_arg = None
        elif self.spec.nested_images:
            image_arg = [list(imgs) for imgs in images]
        else:
            image_arg = flat_images
        encoded = self.processor(
            text=list(texts),
            images=image_arg,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        model_inputs = {k: v for k, v in encoded.items() if isinstance(v, torch.Tensor)}
        counts = [len(imgs) for imgs in images]
        return PromptBatch(
            model_inputs=model_inputs,
            input_sizes=self._input_sizes(model_inputs, images, counts),
            original_sizes=[tuple(imgs[0].size) if imgs else None for imgs in images],
            images_per_prompt=counts,
            texts=texts,
        )

    def _input_sizes(
        self,
        model_inputs: dict[str, torch.Tensor],
        images: Sequence[Sequence[Image]],
        counts: list[int],
    ) -> list[tuple[int, int] | None]:
        """(width, height) of each prompt's first image after the processor's resize."""
        first_index = [sum(counts[:i]) for i in range(len(counts))]  # flat index of first image
        grid = model_inputs.get("image_grid_thw")
        pixels = model_inputs.get("pixel_values")
        sizes: list[tuple[int, int] | None] = []
        for i, imgs in enumerate(images):
            if not imgs:
                sizes.append(None)
            elif grid is not None:
                # Qwen resizes to a multiple of the patch size and reports the patch grid.
                patch = int(getattr(self.processor.image_processor, "patch_size", 14))
                _, grid_h, grid_w = grid[first_index[i]].tolist()
                sizes.append((grid_w * patch, grid_h * patch))
            elif pixels is not None and pixels.ndim >= 4:
                sizes.append((int(pixels.shape[-1]), int(pixels.shape[-2])))
            else:
                sizes.append(tuple(imgs[0].size))
        return sizes

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def generate(
        self,
        model: torch.nn.Module,
        batch: PromptBatch,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        do_sample: bool = True,
    ) -> Completions:
        """Sample (or greedily decode) one completion per prompt.

        The sampling distribution is exactly softmax(logits / temperature), cut by top-k / top-p,
        with the image placeholders removed: every other knob a checkpoint's generation_config
        may carry (repetition penalty, min-p, ...) is reset to neutral, because RL needs the
        log-probabilities of the distribution that was actually sampled.
        """
        gen_config = self.generation_config(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            do_sample=do_sample,
        )
        return self._sample(_unwrap_ddp(model), batch, gen_config)

    def _sample(
        self, generator: torch.nn.Module, batch: PromptBatch, gen_config, cache=None
    ) -> Completions:
        """`generator.generate` on `batch` (continuing from `cache`, which holds all but the last
        prompt token, when given), cut to the completions."""
        prompt_len = batch.input_ids.shape[1]
        inputs = self._forward_inputs(batch)
        if cache is not None:  # the images are in the cache already
            inputs.pop("pixel_values", None)
            inputs.pop("mm_encoder_outputs", None)
            inputs[_cache_keyword(generator)] = cache
        # sharded (FSDP2): the root's own weights gathered for the inner model, and a process
        # whose samples have ended keeps stepping until every process's have (forwards gather)
        with _eval_mode(generator), root_unsharded(generator):
            sequences = generator.generate(
                **inputs, generation_config=gen_config, synced_gpus=is_sharded(generator) or None
            )
        ids = sequences[:, prompt_len:]  # (B, L)
        mask = self.completion_mask(ids)  # (B, L)
        ids = ids.masked_fill(mask == 0, self.pad_token_id)
        texts = [
            self.tokenizer.decode(row[: int(n)], skip_special_tokens=True)
            for row, n in zip(ids, mask.sum(dim=1), strict=True)
        ]
        return Completions(ids=ids, mask=mask, texts=texts)

    @torch.no_grad()
    def generate_groups(
        self,
        model: torch.nn.Module,
        prompts: PromptBatch,
        counts: Sequence[int],
        **sampling: Any,
    ) -> tuple[PromptBatch, Completions]:
        """`counts[i]` completions of each distinct prompt i (a GRPO group, or the part of one in
        this micro-batch): the repeated batch and its completions, as `generate` on
        `prompts.repeat_interleave(counts)` with the same `sampling` settings (`max_new_tokens`,
        `temperature`, `top_p`, `top_k`, `do_sample`) gives them.

        Where the model takes precomputed vision output (`takes_image_features`), each distinct
        prompt is prefilled once, with its images through the tower once, and its key/value cache
        is shared by its samples, which then only decode: a group of G costs one prefill, not G.
        The samples come from the same logits and the same random draws (prefill consumes none),
        so the completions match `generate`'s within float tolerance.
        """
        batch = prompts.repeat_interleave(counts)
        gen_config = self.generation_config(**sampling)
        generator = _unwrap_ddp(model)
        if not self.takes_image_features or prompts.input_ids.shape[1] < 2:
            return batch, self._sample(generator, batch, gen_config)
        # the returned batch carries image features only if the caller's did: a tower that
        # trains needs its forward in the loss, not this step's no-grad output
        encoded = (
            prompts
            if prompts.image_features is not None
            else self.encode_images(generator, prompts)
        )
        index = torch.arange(len(prompts), device=prompts.input_ids.device).repeat_interleave(
            torch.as_tensor(list(counts), device=prompts.input_ids.device)
        )
        # all but the last prompt token (left padding puts it in the last column for every
        # prompt): generate computes that one itself, and its logits give the first sample
        inputs = self._forward_inputs(encoded)
        for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
            if key in inputs:
                inputs[key] = inputs[key][:, :-1]
        with _eval_mode(generator):
            out = generator(**inputs, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or out.past_key_values
        cache.batch_select_indices(index)
        inner = _unwrap_all(generator).model
        if getattr(inner, "rope_deltas", None) is not None:  # M-RoPE offsets of each prompt
            inner.rope_deltas = inner.rope_deltas.index_select(0, index)
        batch = replace(batch, group_sizes=[int(k) for k in counts])  # scored a prompt at once
        return batch, self._sample(generator, batch, gen_config, cache)

    # ------------------------------------------------------------------ work shared per step

    @functools.cached_property
    def takes_image_features(self) -> bool:
        """Whether the model's forward takes precomputed vision output (`mm_encoder_outputs`:
        Qwen2-VL and Qwen2.5-VL in transformers 5): then the frozen tower runs once per distinct
        image per step and a prompt's prefill is shared by its group (`generate_groups`)."""
        inner = getattr(_unwrap_all(self.model), "model", None)
        forward = getattr(inner, "forward", None)
        return forward is not None and "mm_encoder_outputs" in inspect.signature(forward).parameters

    @torch.no_grad()
    def encode_images(self, model: torch.nn.Module, batch: PromptBatch) -> PromptBatch:
        """`batch` with its images through `model`'s vision tower once (`image_features`), which
        later forwards of the batch (or of its repeats) reuse instead of `pixel_values`. Only for
        a frozen tower: its output must not need a gradient. Unchanged for a model that cannot
        take features, or a batch without images."""
        pixels = batch.model_inputs.get("pixel_values")
        if pixels is None or not self.takes_image_features:
            return batch
        inner = _unwrap_all(model).model
        with _eval_mode(inner), root_unsharded(model):  # the tower is called on its own
            out = inner.get_image_features(
                pixels, batch.model_inputs.get("image_grid_thw"), return_dict=True
            )
        return replace(batch, image_features=tuple(f.detach() for f in out.pooler_output))

    def _forward_inputs(self, batch: PromptBatch) -> dict[str, Any]:
        """The model's keyword inputs for `batch`: its tensors, with the vision tower's output in
        place of the pixels when the batch carries it."""
        inputs: dict[str, Any] = dict(batch.model_inputs)
        if batch.image_features is not None:
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            inputs.pop("pixel_values", None)
            inputs["mm_encoder_outputs"] = {
                "image": BaseModelOutputWithPooling(pooler_output=batch.image_features)
            }
        return inputs

    def generation_config(
        self,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        do_sample: bool = True,
    ) -> GenerationConfig:
        """The `GenerationConfig` that `generate` uses (public so callers can add output flags)."""
        from transformers import GenerationConfig

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        greedy = not do_sample or temperature == 0
        # Values left unset would be filled from the checkpoint's generation_config (Qwen ships
        # temperature 0.1, top_k 1, repetition_penalty 1.05), so every knob is set explicitly.
        if greedy:
            # Unused when greedy; these are transformers' defaults, which it does not warn about.
            sampling = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50}
        else:
            sampling = {
                "do_sample": True,
                "temperature": temperature,
                "top_p": top_p,
                "top_k": top_k,
                "min_p": 0.0,
                "typical_p": 1.0,
                "epsilon_cutoff": 0.0,
                "eta_cutoff": 0.0,
            }
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            suppress_tokens=self.suppressed_token_ids or None,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            num_beams=1,
            use_cache=True,
            **sampling,
        )

    def completion_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) long mask: 1 up to and including the first EOS, 0 after."""
        stop = torch.tensor(self.eos_token_ids, device=ids.device)
        is_eos = torch.isin(ids, stop).long()  # (B, L)
        after_first_eos = (is_eos.cumsum(dim=1) - is_eos) > 0  # (B, L)
        return (~after_first_eos).long()

    # ------------------------------------------------------------------ scoring

    def token_logprobs(
        self,
        model: torch.nn.Module,
        batch: PromptBatch,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        *,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """(B, L) log pi(token | prefix) of each completion token; 0 where the mask is 0.

        pi is the distribution `generate` samples from: softmax(logits / temperature) over the
        vocabulary without the image placeholder tokens (which `generate` never emits), so these
        values equal `log_softmax` of generate's `output_scores` when top-k/top-p are off.
        One forward over prompt + completion, or, for a batch of `generate_groups` (rows sharing
        a prompt), one over each distinct prompt and one over the completions on its repeated
        cache (`vrl.models.vlm_scoring`). Only the completion positions get logits, and the
        log-softmax is taken in float32 over as many rows at a time as fit 64 MiB (a row or a few
        of a 150k vocabulary), so neither the prompt's logits nor a float32 (B, L, V) copy of a large
        vocabulary is ever materialised.
        """
        inputs = self._forward_inputs(batch)
        completion_mask = completion_mask.to(batch.attention_mask.dtype)
        # each repeated prompt through the model once where it can be, else prompt + completion
        score = shared_prompt_logits if can_share_prompts(model, batch) else plain_logits
        logits = score(model, batch, inputs, completion_ids, completion_mask)  # (B, L, V)
        suppressed = torch.tensor(self.suppressed_token_ids, device=logits.device, dtype=torch.long)
        logprobs = _completion_logprobs(logits, completion_ids, temperature, suppressed)  # (B, L)
        return logprobs * completion_mask.to(logprobs.dtype)

    # ------------------------------------------------------------------ boxes

    def box_to_original(
        self,
        box: Sequence[float],
        original_size: tuple[int, int],
        input_size: tuple[int, int] | None = None,
    ) -> Box:
        """A box (x1, y1, x2, y2) in this model's convention -> pixels of the original image.

        Sizes are (width, height); `input_size` (the resized model input, `PromptBatch.input_sizes`)
        is needed only for the `resized_pixels` convention.
        """
        sx, sy = self._scale_to_original(original_size, input_size)
        x1, y1, x2, y2 = _four(box)
        return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)

    def box_from_original(
        self,
        box: Sequence[float],
        original_size: tuple[int, int],
        input_size: tuple[int, int] | None = None,
    ) -> Box:
        """Inverse of `box_to_original`: original pixels -> this model's convention (SFT targets)."""
        sx, sy = self._scale_to_original(original_size, input_size)
        x1, y1, x2, y2 = _four(box)
        return (x1 / sx, y1 / sy, x2 / sx, y2 / sy)

    def _scale_to_original(
        self, original_size: tuple[int, int], input_size: tuple[int, int] | None
    ) -> tuple[float, float]:
        orig_w, orig_h = original_size
        if self.box_convention == "original_pixels":
            return 1.0, 1.0
        if self.box_convention == "norm_1000":
            return orig_w / 1000.0, orig_h / 1000.0
        if input_size is None:
            raise ValueError("the 'resized_pixels' convention needs input_size (the resized image)")
        in_w, in_h = input_size
        return orig_w / in_w, orig_h / in_h

    # ------------------------------------------------------------------ parameters

    def lora_target_modules(self) -> str:
        """Regex (peft full-match semantics) of the language model's attention and MLP projections.

        Checked against the model: it must match something and nothing in the vision tower
        (Qwen2.5-VL's vision MLP also has gate/up/down_proj).
        """
        pattern = self.spec.language_pattern
        names = [name for name, _ in _unwrap_all(self.model).named_modules()]
        matched = [n for n in names if re.fullmatch(pattern, n)]
        if not matched:
            raise ValueError(
                f"LoRA pattern {pattern!r} matches no module of {type(self.model).__name__}"
            )
        leaked = [n for n in matched if re.search(self.spec.vision_pattern, n)]
        if leaked:
            raise ValueError(f"LoRA pattern {pattern!r} matches vision modules, e.g. {leaked[0]}")
        return pattern

    def vision_parameters(self, model: torch.nn.Module | None = None) -> list[torch.nn.Parameter]:
        """Parameters of the vision tower (including its patch merger), which the trainer freezes."""
        model = self.model if model is None else model
        return [p for n, p in model.named_parameters() if re.search(self.spec.vision_pattern, n)]
