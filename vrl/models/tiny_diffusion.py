"""Tiny random text-to-image pipelines of the real SD3 and FLUX architectures, built offline.

Tests and CPU demos of the diffusion trainers need pipelines that go through the *real* diffusers
code (`StableDiffusion3Pipeline` / `FluxPipeline`, their `encode_prompt`, latent packing, the
flow-matching scheduler with the family's shift, `from_pretrained` loading of every component) but
run a full sampling loop in a fraction of a second. Every component here is a tiny, randomly
initialised instance of the real class:

- transformer: `SD3Transformer2DModel` shaped like SD3.5-Medium (joint blocks, one dual-attention
  block, RMS q/k norm) or `FluxTransformer2DModel` (double- and single-stream blocks, 3-axis RoPE,
  guidance embedding as in FLUX.1-dev);
- VAE: `AutoencoderKL` with 16 latent channels and the family's scaling/shift factors, 3 blocks
  (downsampling x4), so a 32x32 image has an 8x8x16 latent;
- text encoders: CLIP (`CLIPTextModelWithProjection` x2 for SD3, `CLIPTextModel` for FLUX) and a
  `T5EncoderModel`, all 2 layers wide 32-128;
- tokenizers: a CLIP BPE tokenizer made from the first merges of the real CLIP vocabulary (shipped
  inside open_clip, so token ids coincide with real CLIP's for the tokens kept), and a T5 Unigram
  tokenizer trained locally on a generated corpus of prompts.

Nothing is downloaded; the weights are random. `tiny_pipeline_path` caches a saved pipeline folder
that `DiffusionPipeline.from_pretrained` loads exactly like a downloaded checkpoint.
"""

from __future__ import annotations

import gzip
import os
import random
import string
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from vrl.models.build_cache import build_once, default_cache_root

if TYPE_CHECKING:
    from diffusers import FluxKontextPipeline, FluxPipeline, StableDiffusion3Pipeline
    from transformers import CLIPTokenizer, T5Tokenizer

TinyDiffusionFamily = Literal["sd3", "flux", "flux_kontext"]

# Bump when the builders change, so that `tiny_pipeline_path` never reuses a stale cached folder.
TINY_DIFFUSION_VERSION = 1
# Default (and tested) resolution of the tiny pipelines: 32x32 pixels -> 8x8x16 latents.
TINY_IMAGE_SIZE = 32
# VAE with 3 blocks: spatial downsampling 2 ** (3 - 1) = 4 (the real SD3 / FLUX VAEs use 8).
TINY_VAE_BLOCKS = (16, 32, 32)
LATENT_CHANNELS = 16
# First merges of the CLIP BPE vocabulary kept by the tiny CLIP tokenizer: 512 byte tokens + 4000
# merges + 2 specials = 4514 tokens; common English words ("red", "circle", "square") stay whole.
CLIP_NUM_MERGES = 4000
CLIP_MAX_LENGTH = 77
T5_VOCAB_SIZE = 1000
T5_MAX_LENGTH = 32

# The real VAE normalisation constants of each family (latents = (z - shift) * scaling).
SD3_VAE_SCALING, SD3_VAE_SHIFT = 1.5305, 0.0609
FLUX_VAE_SCALING, FLUX_VAE_SHIFT = 0.3611, 0.1159

_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "brown"]
_SHAPES = ["circle", "square", "triangle", "star", "rectangle", "cube", "sphere", "ball"]
_OBJECTS = ["cat", "dog", "car", "tree", "house", "person", "bird", "boat", "chair", "cup",
            "flower", "horse", "apple", "bicycle", "clock", "book", "sign", "mountain"]  # fmt: skip
_RELATIONS = ["to the left of", "to the right of", "above", "below", "next to", "on top of",
              "behind", "in front of", "near"]  # fmt: skip
_COUNTS = ["a", "one", "two", "three", "four", "five", "some", "many"]
_ADJECTIVES = ["small", "large", "big", "tiny", "bright", "dark", "shiny", "old", "beautiful"]
_STYLES = ["a photo of", "a painting of", "an image of", "a drawing of", "a picture showing"]


def _prompt_corpus(n_samples: int = 3000, seed: int = 0) -> Iterator[str]:
    """Ordinary text-to-image prompts, generated from a fixed seed (same tokenizer every call)."""
    rng = random.Random(seed)
    yield "A cat holding a sign that says hello world, high quality, detailed, 4k photograph."
    for _ in range(n_samples):
        things = _SHAPES + _OBJECTS
        a, b = rng.choice(things), rng.choice(things)
        ca, cb = rng.choice(_COLOURS), rng.choice(_COLOURS)
        adj, count = rng.choice(_ADJECTIVES), rng.choice(_COUNTS)
        yield f"{rng.choice(_STYLES)} {count} {adj} {ca} {a}s"
        yield f"a {ca} {a} {rng.choice(_RELATIONS)} a {cb} {b}"
        yield f"A {adj} {ca} {a} and a {cb} {b} on a light grey background."
        yield f"{count} {a}s, {rng.randint(0, 99)} {b}s; {ca}, {cb} and {adj}!"


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 byte -> printable character map (the alphabet of the byte-level BPE).

    Printable bytes map to themselves; the others to code points from 256 up, in byte order. The
    order matters: it fixes the ids of the 256 base tokens, which then match real CLIP's.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    mapping = {b: chr(b) for b in printable}  # dict order = token order: printable bytes first
    mapping.update({b: chr(256 + i) for i, b in enumerate(others)})
    return mapping


def build_clip_tokenizer(
    num_merges: int = CLIP_NUM_MERGES, model_max_length: int = CLIP_MAX_LENGTH
) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the real CLIP BPE vocabulary cut after `num_merges`.

    The merges come from `bpe_simple_vocab_16e6.txt.gz`, which open_clip ships inside its package.
    The vocabulary is laid out as in real CLIP (256 byte tokens, the same with `</w>`, one token per
    merge, then `<|startoftext|>` / `<|endoftext|>`), so every kept token has its real CLIP id and
    any text still tokenises (at worst byte by byte).
    """
    import open_clip
    from transformers import CLIPTokenizer

    bpe_file = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not bpe_file.is_file():
        raise FileNotFoundError(f"open_clip's BPE vocabulary is missing: {bpe_file}")
    lines = gzip.open(bpe_file).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + num_merges]]  # line 0 is a header
    base = list(_bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def build_t5_tokenizer(
    corpus: Iterable[str] | None = None,
    vocab_size: int = T5_VOCAB_SIZE,
    model_max_length: int = T5_MAX_LENGTH,
) -> T5Tokenizer:
    """A T5 (SentencePiece-style Unigram) tokenizer trained on a corpus of prompts.

    `model_max_length` is what the adapters take as the default T5 sequence length (the pipelines
    themselves pad to 256 / 512 tokens unless told otherwise): text tokens, not image tokens, would
    otherwise dominate the cost of a tiny transformer.

    Special tokens follow T5: `<pad>` = 0, `</s>` = 1 (appended to every sequence), `<unk>` = 2.
    Printable ASCII is in the initial alphabet, so any English prompt tokenises without `<unk>`.
    """
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    backend = Tokenizer(models.Unigram())
    # The same pre-tokenisation as T5Tokenizer, so trained pieces carry the "▁" word prefix.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    specials = ["<pad>", "</s>", "<unk>"]
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        unk_token="<unk>",
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation) + ["▁"],
        show_progress=False,
    )
    backend.train_from_iterator(corpus if corpus is not None else _prompt_corpus(), trainer)
    pieces = json.loads(backend.to_str())["model"]["vocab"]  # [[piece, log-prob], ...]
    vocab = [(tok, 0.0) for tok in specials] + [(p, s) for p, s in pieces if p not in specials]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def clip_text_config(
    vocab_size: int,
    hidden_size: int,
    tokenizer: CLIPTokenizer,
    *,
    layers: int = 2,
    intermediate_size: int | None = None,
    max_positions: int = CLIP_MAX_LENGTH,
):
    """A small CLIP text tower's config (2 heads, quick-GELU; 2 layers by default: SD3 reads the
    penultimate hidden state), its special tokens the tokenizer's."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=max_positions,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # the pooled output is taken at the first eos
        pad_token_id=tokenizer.pad_token_id,
    )


def t5_encoder(d_model: int, tokenizer: T5Tokenizer, layers: int = 2):
    """A small T5 v1.1 encoder (4 heads, gated GELU), its special tokens the tokenizer's."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=2 * d_model,
        num_layers=layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as in SD3 and FLUX
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config)


def _tiny_vae(scaling_factor: float, shift_factor: float):
    from diffusers import AutoencoderKL

    n = len(TINY_VAE_BLOCKS)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=TINY_VAE_BLOCKS,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=TINY_IMAGE_SIZE,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,  # as in the SD3 and FLUX VAEs
        use_post_quant_conv=False,
    )


def build_tiny_sd3(seed: int = 0) -> StableDiffusion3Pipeline:
    """A random `StableDiffusion3Pipeline` (SD3.5-Medium layout), float32 on CPU, 1.4M parameters.

    Transformer (0.33M): 2 joint blocks (the first with SD3.5's extra self-attention), 2 heads of
    32, patch 2, RMS q/k norm; 32x32 images -> 8x8x16 latents -> 16 image tokens. Text: CLIP widths 32
    and 48 (pooled 80, hidden states concatenated and zero-padded to T5's width 128), T5 width 128.
    Scheduler: flow-match Euler with SD3's shift 3.0.
    """
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    clip_tokenizer = build_clip_tokenizer()
    t5_tokenizer = build_t5_tokenizer()
    clip_widths, t5_width = (32, 48), 128
    latent_size = TINY_IMAGE_SIZE // 2 ** (len(TINY_VAE_BLOCKS) - 1)

    with torch.random.fork_rng(devices=[]):  # do not disturb the caller's random stream
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=latent_size,
            patch_size=2,
            in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS,
            num_layers=2,
            attention_head_dim=32,
            num_attention_heads=2,
            joint_attention_dim=t5_width,
            caption_projection_dim=64,  # = heads * head_dim: text and image streams share a width
            pooled_projection_dim=sum(clip_widths),
            pos_embed_max_size=16,  # up to 16x16 patches: images up to 128x128
            dual_attention_layers=(0,),
            qk_norm="rms_norm",
        )
        vae = _tiny_vae(SD3_VAE_SCALING, SD3_VAE_SHIFT)
        text_encoders = [
            CLIPTextModelWithProjection(clip_text_config(len(clip_tokenizer), w, clip_tokenizer))
            for w in clip_widths
        ]
        text_encoder_3 = t5_encoder(t5_width, t5_tokenizer)

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoders[0],
        tokenizer=clip_tokenizer,
        text_encoder_2=text_encoders[1],
        tokenizer_2=clip_tokenizer,
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tokenizer,
    )
    return _finish(pipe)


def build_tiny_flux(seed: int = 0, guidance_embeds: bool = True) -> FluxPipeline:
    """A random `FluxPipeline`, float32 on CPU, 0.86M parameters.

    Transformer (0.34M): 1 double-stream and 2 single-stream blocks, 2 heads of 32, RoPE axes (8, 12, 12);
    packed 2x2 latent patches (64 channels) of 32x32 images -> 16 image tokens. With
    `guidance_embeds=True` (default) it is a guidance-distilled model like FLUX.1-dev (the guidance
    scale is an input, no CFG batch); with False, like FLUX.1-schnell. Text: CLIP width 32 (pooled),
    T5 width 64. Scheduler: flow-match Euler with FLUX's resolution-dependent dynamic shift.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    clip_tokenizer = build_clip_tokenizer()
    t5_tokenizer = build_t5_tokenizer()
    clip_width, t5_width = 32, 64

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * LATENT_CHANNELS,  # 2x2 packed patches
            num_layers=1,
            num_single_layers=2,
            attention_head_dim=32,
            num_attention_heads=2,
            joint_attention_dim=t5_width,
            pooled_projection_dim=clip_width,
            guidance_embeds=guidance_embeds,
            axes_dims_rope=(8, 12, 12),  # (text/index axis, row, column); sums to head_dim
        )
        vae = _tiny_vae(FLUX_VAE_SCALING, FLUX_VAE_SHIFT)
        text_encoder = CLIPTextModel(
            clip_text_config(len(clip_tokenizer), clip_width, clip_tokenizer)
        )
        text_encoder_2 = t5_encoder(t5_width, t5_tokenizer)

    # FLUX.1's scheduler config: the shift exp(mu) grows with the number of image tokens.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    return _finish(pipe)


def _finish(pipe):
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sd3(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Save a tiny SD3 pipeline as a folder that `DiffusionPipeline.from_pretrained` loads."""
    out = Path(out_dir)
    build_tiny_sd3(seed=seed).save_pretrained(out)
    return out


def save_tiny_flux(out_dir: str | os.PathLike, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """Save a tiny FLUX pipeline as a folder that `DiffusionPipeline.from_pretrained` loads."""
    out = Path(out_dir)
    build_tiny_flux(seed=seed, guidance_embeds=guidance_embeds).save_pretrained(out)
    return out


def build_tiny_flux_kontext(seed: int = 0) -> FluxKontextPipeline:
    """A random `FluxKontextPipeline`: the tiny FLUX's components (guidance-embedded, as
    FLUX.1 Kontext [dev]) behind the in-context pipeline, which takes one reference image."""
    from diffusers import FluxKontextPipeline

    return _finish(FluxKontextPipeline(**build_tiny_flux(seed=seed).components))


def save_tiny_flux_kontext(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    out = Path(out_dir)
    build_tiny_flux_kontext(seed=seed).save_pretrained(out)
    return out


def tiny_pipeline_path(
    family: TinyDiffusionFamily, cache_root: str | os.PathLike | None = None, seed: int = 0
) -> Path:
    """Path of a cached tiny pipeline folder of `family`, built on first use.

    The build goes to a temporary sibling folder renamed into place at the end, so an interrupted
    build never leaves a half-written folder that later runs would trust. The default cache root
    is `$VRL_CACHE` or `~/.cache/vrl`.
    """
    savers = {"sd3": save_tiny_sd3, "flux": save_tiny_flux, "flux_kontext": save_tiny_flux_kontext}
    if family not in savers:
        raise ValueError(f"unknown tiny diffusion family {family!r}; valid: {sorted(savers)}")
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    target = root / f"tiny-{family}-seed{seed}-v{TINY_DIFFUSION_VERSION}"
    return build_once(target, "model_index.json", lambda folder: savers[family](folder, seed=seed))
