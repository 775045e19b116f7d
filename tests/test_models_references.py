"""Reference images as tokens (FLUX.1 Kontext, UNO): the adapter against `FluxKontextPipeline`,
the position ids of several references, stored log-probs re-scored bit for bit, clear errors."""

from __future__ import annotations

import pytest
import torch

from vrl.models.conditioning import PromptEmbeds, References
from vrl.models.diffusion import FlowMatchingAdapter, FluxAdapter
from vrl.models.tiny_diffusion import TINY_IMAGE_SIZE, tiny_pipeline_path
from vrl.samplers import sample, score_step

S = TINY_IMAGE_SIZE
PROMPT = ["a red circle to the left of a blue square"]


@pytest.fixture(scope="module")
def kontext(tmp_path_factory):
    path = tiny_pipeline_path("flux_kontext", tmp_path_factory.mktemp("tiny_kontext"))
    return FlowMatchingAdapter.from_pretrained(path)


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return FlowMatchingAdapter.from_pretrained(
        tiny_pipeline_path("sd3", tmp_path_factory.mktemp("tiny_sd3"))
    )


def _image(seed: int, height: int = S, width: int = S, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
@pytest.mark.parametrize("height, width", [(S, S), (S, 2 * S)])
def test_one_reference_reproduces_flux_kontext_pipeline(kontext, height, width):
    assert isinstance(kontext, FluxAdapter) and kontext.takes_references
    reference = _image(1, height, width)
    embeds = kontext.encode_prompts(PROMPT)
    embeds = embeds.with_references(kontext.encode_references([reference]))
    sigmas = kontext.sigmas(3, height, width)
    x = kontext.initial_noise(1, height, width, generator=torch.Generator().manual_seed(0))
    for i in range(3):
        v = kontext.velocity(
            kontext.transformer, x, sigmas[i], embeds, guidance_scale=2.5,
            image_size=(height, width),
        )  # fmt: skip
        x = x + v * (sigmas[i + 1] - sigmas[i])
    expected = kontext.pipeline(
        image=reference,
        prompt=PROMPT,
        height=height,
        width=width,
        num_inference_steps=3,
        guidance_scale=2.5,
        max_area=height * width,
        _auto_resize=False,
        max_sequence_length=kontext.max_sequence_length,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    ).images
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)
    # the reference matters: without it the same loop ends elsewhere
    plain = kontext.velocity(kontext.transformer, x, sigmas[0], embeds.with_references(None))
    with_ref = kontext.velocity(kontext.transformer, x, sigmas[0], embeds)
    assert not torch.allclose(plain, with_ref)


def test_position_ids_of_several_references():
    refs = References(torch.zeros(1, 4 + 6, 8), grids=((2, 2), (2, 3)), positions="kontext")
    ids = refs.ids((4, 4))
    assert ids[:4].tolist() == [[1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1]]
    assert ids[4:, 0].tolist() == [2] * 6 and ids[-1].tolist() == [2, 1, 2]
    uno = References(torch.zeros(1, 10, 8), grids=((2, 2), (2, 3)), positions="uno")
    ids = uno.ids((4, 4))
    # reference 1 starts where the 4x4 noisy grid ends, reference 2 where reference 1 ends
    assert ids[:4].tolist() == [[0, 4, 4], [0, 4, 5], [0, 5, 4], [0, 5, 5]]
    assert ids[4].tolist() == [0, 6, 6] and ids[-1].tolist() == [0, 7, 8]


@torch.no_grad()
def test_a_stored_transition_with_references_rescores_bit_for_bit(kontext):
    """A rollout conditioned on two references (UNO positions): each stored step re-scored from
    the conditioning rebuilt out of its two micro-batches gives back the stored log-prob."""
    refs = kontext.encode_references([_image(2, batch=4), _image(3, batch=4)], positions="uno")
    assert refs.count == 2 and refs.tokens.shape[:2] == (4, 2 * 16)
    embeds = kontext.encode_prompts(PROMPT * 4).with_references(refs)
    sigmas = kontext.sigmas(4, S, S)
    generator = torch.Generator().manual_seed(0)
    noise = kontext.initial_noise(4, S, S, generator=generator)
    velocity = kontext.velocity_fn(kontext.transformer, embeds, guidance_scale=3.0)
    trajectory = sample(
        velocity, noise, sigmas, step="sde", schedule=torch.full((4,), 0.7), generator=generator
    )
    rebuilt = PromptEmbeds.cat([embeds[:2], embeds[2:]])  # references travel with their rows
    for j in range(4):
        v = kontext.velocity(
            kontext.transformer, trajectory.latents[:, j], trajectory.sigmas[j], rebuilt,
            guidance_scale=3.0,
        )  # fmt: skip
        assert torch.equal(score_step(trajectory, j, v).log_prob, trajectory.log_probs[:, j])
    swapped = embeds.with_references(refs.map_batch(lambda t: t.flip(0)))  # other references
    v = kontext.velocity(kontext.transformer, trajectory.latents[:, 1], sigmas[1], swapped,
                         guidance_scale=3.0)  # fmt: skip
    assert not torch.equal(score_step(trajectory, 1, v).log_prob, trajectory.log_probs[:, 1])


def test_wrong_references_are_named(kontext, sd3):
    with pytest.raises(ValueError, match=r"reference 2 of 2: flux: height and width must be"):
        kontext.encode_references([_image(0), _image(1, S + 4, S)])
    with pytest.raises(ValueError, match="reference 2 of 2 has a batch of 2, reference 1 of 1"):
        kontext.encode_references([_image(0), _image(1, batch=2)])
    refs = kontext.encode_references([_image(0, batch=2)])
    with pytest.raises(ValueError, match="references for a batch of 2, prompts for a batch of 1"):
        kontext.encode_prompts(PROMPT).with_references(refs)
    embeds = sd3.encode_prompts(PROMPT).with_references(kontext.encode_references([_image(0)]))
    x = sd3.initial_noise(1, S, S)
    with pytest.raises(ValueError, match="sd3 takes no reference images .*chain.context=img2img"):
        sd3.velocity(sd3.transformer, x, 1.0, embeds)


# ----------------------------------------------------------------------- UNO's LoRA


def _uno_lora(path, hidden: int, mlp: int, double: int, single: int, rank: int = 2) -> dict:
    """A UNO-format LoRA file (its key names and shapes) with random weights."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(7)
    state = {}

    def add(key: str, n_in: int, n_out: int) -> None:
        state[f"{key}.down.weight"] = torch.randn(rank, n_in, generator=g) * 0.1
        state[f"{key}.up.weight"] = torch.randn(n_out, rank, generator=g) * 0.1

    for i in range(double):
        for stream in ("1", "2"):
            add(f"double_blocks.{i}.processor.qkv_lora{stream}", hidden, 3 * hidden)
            add(f"double_blocks.{i}.processor.proj_lora{stream}", hidden, hidden)
    for i in range(single):
        add(f"single_blocks.{i}.processor.qkv_lora", hidden, 3 * hidden)
        add(f"single_blocks.{i}.processor.proj_lora", hidden + mlp, hidden)
    save_file(state, str(path))
    return state


def test_uno_lora_merges_into_the_split_diffusers_projections(tmp_path):
    from vrl.models.tiny_diffusion import build_tiny_flux
    from vrl.models.uno import merge_uno_lora

    transformer = build_tiny_flux().transformer  # hidden 64, MLP 256, 1 double + 2 single blocks
    before = {n: p.detach().clone() for n, p in transformer.named_parameters()}
    state = _uno_lora(tmp_path / "dit_lora.safetensors", 64, 256, double=1, single=2)
    assert merge_uno_lora(transformer, tmp_path / "dit_lora.safetensors") == 16  # 8 + 2 x 4
    after = dict(transformer.named_parameters())

    def delta(key: str) -> torch.Tensor:
        return state[f"{key}.up.weight"] @ state[f"{key}.down.weight"]

    qkv = delta("double_blocks.0.processor.qkv_lora1")  # rows: q | k | v
    for k, name in enumerate(("to_q", "to_k", "to_v")):
        moved = (
            after[f"transformer_blocks.0.attn.{name}.weight"]
            - before[f"transformer_blocks.0.attn.{name}.weight"]
        )
        torch.testing.assert_close(moved, qkv[64 * k : 64 * (k + 1)])
    text_v = delta("double_blocks.0.processor.qkv_lora2")[128:]
    moved = (
        after["transformer_blocks.0.attn.add_v_proj.weight"]
        - before["transformer_blocks.0.attn.add_v_proj.weight"]
    )
    torch.testing.assert_close(moved, text_v)
    moved = (
        after["single_transformer_blocks.1.proj_out.weight"]
        - before["single_transformer_blocks.1.proj_out.weight"]
    )
    torch.testing.assert_close(moved, delta("single_blocks.1.processor.proj_lora"))
    untouched = [n for n in before if "norm" in n or n.endswith("bias")]
    assert untouched and all(torch.equal(before[n], after[n]) for n in untouched)


def test_a_uno_lora_that_does_not_fit_is_named(tmp_path):
    from safetensors.torch import save_file

    from vrl.models.tiny_diffusion import build_tiny_flux
    from vrl.models.uno import merge_uno_lora

    transformer = build_tiny_flux().transformer
    _uno_lora(tmp_path / "big.safetensors", 128, 512, double=1, single=0)
    with pytest.raises(
        ValueError, match=r"to_out.0.weight is \(64, 64\), the LoRA's delta \(128, 128\)"
    ):
        merge_uno_lora(transformer, tmp_path / "big.safetensors")
    _uno_lora(tmp_path / "deep.safetensors", 64, 256, double=3, single=0)
    with pytest.raises(ValueError, match="this transformer has no weight transformer_blocks.1"):
        merge_uno_lora(transformer, tmp_path / "deep.safetensors")
    save_file({"lora_unet_x.alpha": torch.ones(1)}, str(tmp_path / "kohya.safetensors"))
    with pytest.raises(ValueError, match="unexpected key 'lora_unet_x.alpha'"):
        merge_uno_lora(transformer, tmp_path / "kohya.safetensors")


def test_a_flux_with_uno_merged_goes_in_context_with_uno_positions(tmp_path):
    from vrl.config import ConfigError, load_config
    from vrl.hicogen.chain import resolve_context
    from vrl.trainers.common import make_accelerator
    from vrl.trainers.diffusion_config import DiffusionTrainConfig
    from vrl.trainers.policies import load_diffusion_policy

    lora = tmp_path / "dit_lora.safetensors"
    _uno_lora(lora, 64, 256, double=1, single=2)
    args = [
        "model.path=tiny-random:flux",
        f"model.reference_lora={lora}",
        f"run.output_dir={tmp_path}",
    ]
    with pytest.raises(ConfigError, match="set chain.positions=uno"):
        load_config(DiffusionTrainConfig, None, args)
    cfg = load_config(DiffusionTrainConfig, None, [*args, "chain.positions=uno"])
    adapter, _ = load_diffusion_policy(cfg, make_accelerator(cfg.run))
    assert adapter.reference_lora == str(lora) and adapter.trained_on_references
    assert resolve_context(adapter, "auto") == "in_context"


def test_a_pixel_space_flux_draws_image_channels():
    """FLUX's input width is four packed pixels: its pixel-space noise has 3 channels, not 12."""
    from vrl.models.tiny_diffusion import build_tiny_flux

    pipe = build_tiny_flux()
    pipe.vae = None  # as a pipeline saved without a VAE loads
    pipe.transformer.register_to_config(in_channels=12)
    adapter = FluxAdapter(pipe)
    noise = adapter.initial_noise(2, 8, 8)
    assert noise.shape == (2, 16, 12)  # 4 x 4 tokens of 2 x 2 x 3 pixels
    assert adapter.decode(noise, (8, 8)).shape == (2, 3, 8, 8)
