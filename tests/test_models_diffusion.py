"""Tiny SD3 / FLUX pipelines built offline, loaded like real checkpoints, driven by the adapters.

The key test is `test_euler_loop_reproduces_pipeline`: a plain Euler loop written with the adapter
(noise, sigmas, velocity with CFG or guidance embedding, decode) must give the diffusers pipeline's
own output. It fails on any wrong convention: noise layout, packing, timestep scale, CFG order,
VAE scaling/shift.
"""

from __future__ import annotations

import json

import pytest
import torch

from vrl.models.diffusion import FlowMatchingAdapter, FluxAdapter, PromptEmbeds, SD3Adapter
from vrl.models.tiny_diffusion import (
    TINY_IMAGE_SIZE,
    build_clip_tokenizer,
    build_t5_tokenizer,
    build_tiny_flux,
    tiny_pipeline_path,
)

S = TINY_IMAGE_SIZE
PROMPTS = ["a red circle to the left of a blue square", "two small green triangles"]


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_diffusion")


@pytest.fixture(scope="session")
def tiny_paths(cache_root):
    return {family: tiny_pipeline_path(family, cache_root) for family in ("sd3", "flux")}


@pytest.fixture(scope="session")
def adapters(tiny_paths):
    """Adapters loaded through `from_pretrained`, plus a FLUX without guidance embedding (true
    CFG, like FLUX.1-schnell) built in memory. Tests must not add LoRA to these."""
    loaded = {family: FlowMatchingAdapter.from_pretrained(p) for family, p in tiny_paths.items()}
    loaded["flux_cfg"] = FluxAdapter(build_tiny_flux(seed=1, guidance_embeds=False))
    return loaded


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def _euler(adapter, prompts, steps, height, width, guidance_scale, seed=0):
    """The sampling loop a trainer writes: noise, then x <- x + v * (s_next - s)."""
    embeds = adapter.encode_prompts(prompts)
    sigmas = adapter.sigmas(steps, height, width)
    x = adapter.initial_noise(len(prompts), height, width, generator=_generator(seed))
    for i in range(steps):
        v = adapter.velocity(
            adapter.transformer,
            x,
            sigmas[i],
            embeds,
            guidance_scale=guidance_scale,
            image_size=(height, width),
        )
        x = x + v * (sigmas[i + 1] - sigmas[i])
    return x, adapter.decode(x, image_size=(height, width))


def _pipeline_kwargs(adapter, guidance_scale):
    kwargs = {"guidance_scale": guidance_scale}
    if isinstance(adapter, FluxAdapter) and not adapter.guidance_embedded:
        kwargs = {"true_cfg_scale": guidance_scale, "negative_prompt": ""}
    return {**kwargs, "max_sequence_length": adapter.max_sequence_length}


def _count_forwards(module: torch.nn.Module, batch_sizes: list[int]):
    def hook(_module, _args, kwargs):
        batch_sizes.append(kwargs["hidden_states"].shape[0])

    return module.register_forward_pre_hook(hook, with_kwargs=True)


# ---------------------------------------------------------------------- building and loading


def test_tiny_pipeline_path_builds_once_and_leaves_no_temp_folders(tiny_paths, cache_root):
    assert tiny_pipeline_path("sd3", cache_root) == tiny_paths["sd3"]
    assert sorted(p.name for p in cache_root.iterdir()) == sorted(
        p.name for p in tiny_paths.values()
    )
    for family, cls in [("sd3", "StableDiffusion3Pipeline"), ("flux", "FluxPipeline")]:
        index = json.loads((tiny_paths[family] / "model_index.json").read_text())
        assert index["_class_name"] == cls
    with pytest.raises(ValueError, match="valid"):
        tiny_pipeline_path("sdxl", cache_root)


def test_from_pretrained_picks_the_family(adapters, tiny_paths, tmp_path):
    sd3, flux = adapters["sd3"], adapters["flux"]
    assert type(sd3) is SD3Adapter and sd3.family == "sd3"
    assert type(flux) is FluxAdapter and flux.family == "flux"
    assert type(sd3.pipeline).__name__ == "StableDiffusion3Pipeline"
    assert type(flux.pipeline).__name__ == "FluxPipeline"
    assert flux.guidance_embedded and not adapters["flux_cfg"].guidance_embedded
    # the tiny T5 tokenizer declares 32 tokens, which the adapters take as their default
    assert sd3.max_sequence_length == flux.max_sequence_length == 32
    for adapter in (sd3, flux):
        assert adapter.dtype == torch.float32 and adapter.device.type == "cpu"
        for name, component in adapter.pipeline.components.items():
            if isinstance(component, torch.nn.Module) and name != "transformer":
                assert not any(p.requires_grad for p in component.parameters()), name

    with pytest.raises(ValueError, match="not a SD3Adapter"):
        SD3Adapter.from_pretrained(tiny_paths["flux"])
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline"})
    )
    with pytest.raises(ValueError, match="no flow-matching adapter"):
        FlowMatchingAdapter.from_pretrained(tmp_path)


def test_tiny_clip_tokenizer_is_a_prefix_of_real_clip():
    import open_clip

    tiny = build_clip_tokenizer()
    real = open_clip.get_tokenizer("ViT-B-32")
    text = "a red square to the left of a blue circle"
    tiny_ids = tiny(text).input_ids[1:-1]  # without <|startoftext|> / <|endoftext|>
    real_ids = [i for i in real([text])[0].tolist()[1:] if i not in (0, 49407)]
    # words of the kept merges get real CLIP's ids; "circle" is split (its merge is cut off)
    assert tiny_ids[:9] == real_ids[:9]
    assert len(tiny) == 512 + 4000 + 2 and max(tiny(text).input_ids) < len(tiny)


def test_tiny_t5_tokenizer_has_no_unknown_words():
    tok = build_t5_tokenizer()
    ids = tok("A photo of 3 purple zebras, eating pizza!").input_ids
    assert tok.unk_token_id not in ids and ids[-1] == tok.eos_token_id == 1
    assert tok.pad_token_id == 0


def test_tiny_pipeline_runs(adapters):
    out = adapters["sd3"].pipeline(
        "a red circle", num_inference_steps=2, height=S, width=S, output_type="pt"
    )
    assert out.images.shape == (1, 3, S, S)


# ---------------------------------------------------------------------- prompts


@pytest.mark.parametrize(
    "family, shape, pooled",
    [("sd3", (77 + 32, 128), 32 + 48), ("flux", (32, 64), 32)],
)
def test_encode_prompts(adapters, family, shape, pooled):
    adapter = adapters[family]
    embeds = adapter.encode_prompts([PROMPTS[0], PROMPTS[1], PROMPTS[0]])
    assert len(embeds) == 3
    assert embeds.prompt_embeds.shape == (3, *shape)
    assert embeds.pooled.shape == (3, pooled)
    assert torch.equal(embeds.prompt_embeds[0], embeds.prompt_embeds[2])
    assert torch.equal(embeds.pooled[0], embeds.pooled[2])
    assert not torch.allclose(embeds.prompt_embeds[0], embeds.prompt_embeds[1])
    assert not torch.allclose(embeds.pooled[0], embeds.pooled[1])
    assert not embeds.prompt_embeds.requires_grad
    if family == "flux":
        assert embeds.text_ids.shape == (shape[0], 3)
    else:
        assert embeds.text_ids is None
    with pytest.raises(TypeError):
        adapter.encode_prompts("a single string")
    negative = adapter.negative_embeds(2)
    assert len(negative) == 2 and torch.equal(
        negative.prompt_embeds[0], adapter.encode_prompts([""]).prompt_embeds[0]
    )


def test_prompt_embeds_batch_operations(adapters):
    embeds = adapters["flux"].encode_prompts(PROMPTS)
    assert torch.equal(embeds[1].prompt_embeds, embeds.prompt_embeds[1:2])
    assert torch.equal(embeds[-1].pooled, embeds.pooled[1:])
    picked = embeds.index_select([1, 0, 1])
    assert torch.equal(picked.pooled, embeds.pooled[[1, 0, 1]])
    assert torch.equal(embeds[[1, 0]].prompt_embeds, embeds.prompt_embeds[[1, 0]])
    repeated = embeds.repeat_interleave(3)
    assert len(repeated) == 6 and torch.equal(repeated.pooled[2], embeds.pooled[0])
    assert torch.equal(repeated.pooled[3], embeds.pooled[1])
    both = PromptEmbeds.cat([embeds, picked])
    assert len(both) == 5 and torch.equal(both.text_ids, embeds.text_ids)
    half = embeds.to(dtype=torch.bfloat16)
    assert half.prompt_embeds.dtype == half.pooled.dtype == torch.bfloat16


# ---------------------------------------------------------------------- schedule


@pytest.mark.parametrize("family", ["sd3", "flux"])
@pytest.mark.parametrize("steps, height, width", [(3, S, S), (10, S, 2 * S), (7, 4 * S, 4 * S)])
def test_sigmas_match_the_pipeline(adapters, family, steps, height, width):
    adapter = adapters[family]
    sigmas = adapter.sigmas(steps, height, width)
    adapter.pipeline(
        "x",
        num_inference_steps=steps,
        height=height,
        width=width,
        output_type="latent",
        max_sequence_length=adapter.max_sequence_length,
    )
    expected = adapter.pipeline.scheduler.sigmas  # what the pipeline just sampled with
    assert sigmas.dtype == torch.float32 and sigmas.shape == (steps + 1,)
    assert torch.equal(sigmas, expected)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and (sigmas.diff() < 0).all()


def test_flux_shift_depends_on_resolution_and_sd3_does_not(adapters):
    sd3, flux = adapters["sd3"], adapters["flux"]
    assert torch.equal(sd3.sigmas(5, S, S), sd3.sigmas(5, 4 * S, 4 * S))
    small, large = flux.sigmas(5, S, S), flux.sigmas(5, 4 * S, 4 * S)
    assert (large[1:-1] > small[1:-1]).all()  # more image tokens -> more time at high noise
    # SD3's static shift 3: s = 3 t / (1 + 2 t) of the linear schedule
    t = torch.linspace(1.0, 0.0, 6)[1:-1]
    assert not torch.allclose(sd3.sigmas(5, S, S)[1:-1], t)
    with pytest.raises(ValueError, match="multiples of 8"):
        flux.sigmas(4, S + 4, S)


# ---------------------------------------------------------------------- the conventions


@pytest.mark.parametrize(
    "family, guidance_scale, prompts, height, width",
    [
        ("sd3", 1.0, PROMPTS[:1], S, S),
        ("sd3", 4.5, PROMPTS, S, 2 * S),  # CFG by batch doubling
        ("flux", 3.5, PROMPTS[:1], S, S),  # guidance embedding (FLUX.1-dev)
        ("flux", 1.0, PROMPTS, 2 * S, S),
        ("flux_cfg", 4.0, PROMPTS, S, 2 * S),  # true CFG without guidance embedding
    ],
)
def test_euler_loop_reproduces_pipeline(adapters, family, guidance_scale, prompts, height, width):
    adapter = adapters[family]
    latents, images = _euler(adapter, prompts, 3, height, width, guidance_scale)
    common = dict(
        prompt=prompts,
        num_inference_steps=3,
        height=height,
        width=width,
        **_pipeline_kwargs(adapter, guidance_scale),
    )
    expected_latents = adapter.pipeline(**common, generator=_generator(), output_type="latent")
    expected_images = adapter.pipeline(**common, generator=_generator(), output_type="pt")
    torch.testing.assert_close(latents, expected_latents.images, rtol=0, atol=1e-5)
    torch.testing.assert_close(images, expected_images.images, rtol=0, atol=1e-5)
    assert images.shape == (len(prompts), 3, height, width)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.01


@pytest.mark.parametrize("family", ["sd3", "flux_cfg"])
def test_cfg_is_one_batched_forward_with_a_detached_uncond_branch(adapters, family):
    adapter = adapters[family]
    embeds = adapter.encode_prompts(PROMPTS)
    negative = adapter.negative_embeds(2)
    x = adapter.initial_noise(2, S, S, generator=_generator(3))
    sigma = torch.tensor([0.9, 0.4])
    tf = adapter.transformer

    with torch.no_grad():
        v_cond = adapter.velocity(tf, x, sigma, embeds, guidance_scale=1.0)
        v_uncond = adapter.velocity(tf, x, sigma, negative, guidance_scale=1.0)
        calls: list[int] = []
        handle = _count_forwards(tf, calls)
        try:
            v_cfg = adapter.velocity(tf, x, sigma, embeds, guidance_scale=5.0)
        finally:
            handle.remove()
    assert calls == [4]  # one forward of [uncond, cond]
    torch.testing.assert_close(v_cfg, v_uncond + 5.0 * (v_cond - v_uncond), rtol=0, atol=1e-5)
    assert not torch.allclose(v_cfg, v_cond, atol=1e-3)
    # guidance 1.0 is the conditional prediction: no unconditional forward at all
    with torch.no_grad():
        torch.testing.assert_close(adapter.velocity(tf, x, sigma, embeds), v_cond, rtol=0, atol=0)

    # detached uncond branch: d v_cfg / d x = g * d v_cond / d x (the uncond term adds nothing)
    x_cfg = x.clone().requires_grad_(True)
    adapter.velocity(tf, x_cfg, sigma, embeds, guidance_scale=5.0).sum().backward()
    x_cond = x.clone().requires_grad_(True)
    adapter.velocity(tf, x_cond, sigma, embeds).sum().backward()
    torch.testing.assert_close(x_cfg.grad, 5.0 * x_cond.grad, rtol=1e-4, atol=1e-5)


def test_flux_guidance_embedding_is_an_input_not_a_batch(adapters):
    adapter = adapters["flux"]
    embeds = adapter.encode_prompts(PROMPTS[:1])
    x = adapter.initial_noise(1, S, S, generator=_generator(1))
    calls: list[int] = []
    handle = _count_forwards(adapter.transformer, calls)
    with torch.no_grad():
        try:
            v1 = adapter.velocity(adapter.transformer, x, 0.7, embeds, guidance_scale=1.0)
            v4 = adapter.velocity(adapter.transformer, x, 0.7, embeds, guidance_scale=4.0)
        finally:
            handle.remove()
    assert calls == [1, 1]
    assert not torch.allclose(v1, v4, atol=1e-4)


def test_velocity_fn_and_argument_checks(adapters):
    adapter = adapters["sd3"]
    embeds = adapter.encode_prompts(PROMPTS)
    x = adapter.initial_noise(2, S, S, generator=_generator(2))
    sigma = torch.full((2,), 0.5)
    fn = adapter.velocity_fn(adapter.transformer, embeds, guidance_scale=3.0)
    with torch.no_grad():
        expected = adapter.velocity(adapter.transformer, x, 0.5, embeds, guidance_scale=3.0)
        torch.testing.assert_close(fn(x, sigma), expected, rtol=0, atol=0)
        with pytest.raises(ValueError, match="prompt embeddings"):
            adapter.velocity(adapter.transformer, x, sigma, embeds[0])
        with pytest.raises(ValueError, match="sigma"):
            adapter.velocity(adapter.transformer, x, torch.ones(3), embeds)


def test_initial_noise_layouts(adapters):
    sd3, flux = adapters["sd3"], adapters["flux"]
    noise = sd3.initial_noise(3, S, 2 * S, generator=_generator())
    assert noise.shape == (3, 16, S // 4, S // 2) and noise.dtype == torch.float32
    packed = flux.initial_noise(3, S, 2 * S, generator=_generator())
    assert packed.shape == (3, (S // 8) * (S // 4), 64)
    # the same draw: packing only moves 2x2 latent patches into the channel dimension
    assert torch.equal(packed[0, 0].view(16, 2, 2), noise[0, :, :2, :2])
    assert torch.equal(flux._unpack(packed, (S, 2 * S)), noise)


def test_decode_range_and_packed_shape_errors(adapters):
    flux = adapters["flux"]
    images = flux.decode(flux.initial_noise(2, S, 2 * S), image_size=(S, 2 * S))
    assert images.shape == (2, 3, S, 2 * S) and images.min() >= 0 and images.max() <= 1
    fresh = FluxAdapter(flux.pipeline)
    with pytest.raises(ValueError, match="image_size"):
        fresh.decode(torch.randn(1, 18, 64))  # 18 tokens: a 3x6 grid, never seen, not square
    images = fresh.decode(torch.randn(1, 16, 64))  # square grid by default
    assert images.shape == (1, 3, S, S)


# ---------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_lora_trains_only_attention_adapters_and_disables_to_the_base_model(tiny_paths, family):
    adapter = FlowMatchingAdapter.from_pretrained(tiny_paths[family])  # fresh: LoRA mutates it
    targets = adapter.lora_target_modules()
    expected = {"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}
    assert expected <= set(targets) and "to_out.0" in targets
    linear_names = [
        n
        for n, m in adapter.transformer.named_modules()
        if isinstance(m, torch.nn.Linear) and any(n.endswith("." + t) for t in targets)
    ]

    embeds = adapter.encode_prompts(PROMPTS)
    x = adapter.initial_noise(2, S, S, generator=_generator(5))
    sigma = torch.tensor([0.8, 0.3])
    guidance = 3.0
    with torch.no_grad():
        v_base = adapter.velocity(adapter.transformer, x, sigma, embeds, guidance_scale=guidance)

    torch.manual_seed(0)
    adapter.add_lora(r=4, alpha=8)
    lora_modules = [n for n, m in adapter.transformer.named_modules() if hasattr(m, "lora_A")]
    assert sorted(lora_modules) == sorted(linear_names)
    assert all(".attn" in n for n in lora_modules)
    trainable = {n for n, p in adapter.transformer.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert len(trainable) == 2 * len(lora_modules)
    for name, component in adapter.pipeline.components.items():
        if isinstance(component, torch.nn.Module) and name != "transformer":
            assert not any(p.requires_grad for p in component.parameters())
    with pytest.raises(RuntimeError, match="already"):
        adapter.add_lora(r=4, alpha=8)

    # lora_B starts at zero: the adapted model is the base model until it trains
    with torch.no_grad():
        v_init = adapter.velocity(adapter.transformer, x, sigma, embeds, guidance_scale=guidance)
    torch.testing.assert_close(v_init, v_base, rtol=0, atol=1e-6)
    with torch.no_grad():  # stand-in for training: move the LoRA weights
        for n, p in adapter.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)

    v = adapter.velocity(adapter.transformer, x, sigma, embeds, guidance_scale=guidance)
    v.square().mean().backward()
    for n, p in adapter.transformer.named_parameters():
        if n in trainable:
            assert p.grad is not None, n
        else:
            assert p.grad is None, n
    assert any(
        p.grad.abs().sum() > 0 for n, p in adapter.transformer.named_parameters() if "lora_A" in n
    )
    assert not torch.allclose(v.detach(), v_base, atol=1e-4)

    with adapter.disabled_adapter(), torch.no_grad():
        v_ref = adapter.velocity(adapter.transformer, x, sigma, embeds, guidance_scale=guidance)
    assert torch.equal(v_ref, v_base)
    assert {n for n, p in adapter.transformer.named_parameters() if p.requires_grad} == trainable
    assert set(adapter.lora_state_dict()) == {n.replace(".default", "") for n in trainable}


def test_bfloat16_model_keeps_float32_latents(tiny_paths, adapters):
    adapter = FlowMatchingAdapter.from_pretrained(tiny_paths["flux"], dtype=torch.bfloat16)
    assert adapter.dtype == torch.bfloat16 and adapter.pipeline.vae.dtype == torch.bfloat16
    latents, images = _euler(adapter, PROMPTS[:1], 3, S, S, 3.5)
    assert latents.dtype == images.dtype == torch.float32
    reference, _ = _euler(adapters["flux"], PROMPTS[:1], 3, S, S, 3.5)
    # same noise and schedule, bf16 rounding only (another noise draw differs by ~1)
    assert (latents - reference).abs().mean() < 0.05
