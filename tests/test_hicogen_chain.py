"""Chain of Synthesis on a tiny SD3: N units give N + 1 images, yielded pass by pass; the
deterministic evaluation chain."""

from __future__ import annotations

import pytest
import torch

from vrl.hicogen.chain import eval_chain, img2img_start, iter_chain, synthesize_chain
from vrl.models.diffusion import FlowMatchingAdapter
from vrl.models.paths import resolve_pipeline_path

UNITS = ["a red circle", "a blue square", "a green triangle"]
FINAL = "a red circle left of a blue square above a green triangle"


@pytest.fixture
def adapter():
    a = FlowMatchingAdapter.from_pretrained(resolve_pipeline_path("tiny-random:sd3"))
    a.add_lora(4, 8)
    return a


def test_img2img_start_index():
    sigmas = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    assert img2img_start(sigmas, 1.0) == 0
    assert img2img_start(sigmas, 0.6) == 2
    assert img2img_start(sigmas, 0.5) == 3
    with pytest.raises(ValueError, match="strength"):
        img2img_start(sigmas, 0.0)


def test_three_units_give_four_images_each_starting_from_the_last_canvas(adapter):
    chain = synthesize_chain(
        adapter, adapter.transformer, UNITS, FINAL, batch_size=2, height=32, width=32,
        num_steps=6, strength=0.6, schedule={"kind": "decaying", "eta_max": 1.0, "eta_min": 0.2},
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert len(chain.images) == 4 and [s.prompt for s in chain.steps] == [*UNITS, FINAL]
    assert all(img.shape == (2, 3, 32, 32) for img in chain.images)
    first, later = chain.steps[0].trajectory, chain.steps[1].trajectory
    assert first.num_steps == 6 and later.num_steps < 6  # image-to-image skips the noisiest steps
    assert later.sigmas[0] <= 0.6 + 1e-6
    assert torch.isfinite(first.log_probs).all() and (first.log_probs[:, :-1] != 0).all()
    # each step starts from the previous canvas: its first latent mixes the canvas and fresh noise
    prev, s0 = chain.steps[0].trajectory.final, later.sigmas[0]
    noise = (later.latents[:, 0] - (1 - s0) * prev) / s0
    assert noise.std().item() == pytest.approx(1.0, rel=0.3)


def test_the_chain_yields_each_pass_as_it_is_made_and_collects_the_same(adapter):
    settings = dict(
        batch_size=2, height=32, width=32, num_steps=4, strength=0.6,
        schedule={"kind": "constant", "level": 0.5},
    )  # fmt: skip
    passes = iter_chain(
        adapter, adapter.transformer, UNITS, FINAL, generator=torch.Generator().manual_seed(3),
        store_trajectory=False, **settings,
    )  # fmt: skip
    first = next(passes)  # unit 1 is there before unit 2 is drawn
    assert first.prompt == UNITS[0] and first.trajectory.latents.shape[1] == 1
    streamed = [first, *passes]
    chain = synthesize_chain(
        adapter, adapter.transformer, UNITS, FINAL, generator=torch.Generator().manual_seed(3),
        **settings,
    )  # fmt: skip
    assert [p.prompt for p in streamed] == [*UNITS, FINAL]
    for ours, theirs in zip(streamed, chain.steps, strict=True):
        assert torch.equal(ours.image, theirs.image)
    alone = list(iter_chain(adapter, adapter.transformer, (), FINAL, **settings))
    assert len(alone) == 1 and alone[0].trajectory.num_steps == 4  # no unit: one pass from noise


def test_the_evaluation_chain_is_an_ode_chain_seeded_per_prompt(adapter):
    from vrl.hicogen.decompose import decompose_template

    prompt = "a red circle to the left of a blue square"
    scene = decompose_template(prompt)
    settings = dict(height=32, width=32, num_steps=3, guidance_scale=1.0, strength=0.7)
    plan, chain = eval_chain(
        adapter, adapter.transformer, scene, prompt, seed=5, images=2, **settings
    )
    again = synthesize_chain(
        adapter, adapter.transformer, plan.unit_prompts, prompt, batch_size=2, step="ode",
        generator=torch.Generator().manual_seed(5), num_steps=3, height=32, width=32,
        strength=0.7,
    )  # fmt: skip
    assert len(chain.images) == 3 and plan.final_prompt == prompt
    for ours, theirs in zip(chain.images, again.images, strict=True):
        assert torch.equal(ours, theirs)
    assert all((s.trajectory.noise_levels == 0).all() for s in chain.steps)


# ------------------------------------------------------------------ in context (FLUX)


@pytest.fixture(scope="module")
def flux():
    return FlowMatchingAdapter.from_pretrained(resolve_pipeline_path("tiny-random:flux"))


@pytest.mark.parametrize("references, seen", [("all", [0, 1, 2, 3]), ("last", [0, 1, 1, 3])])
def test_in_context_every_pass_starts_from_noise_and_sees_earlier_units(flux, references, seen):
    """Unit k sees the earlier unit images as tokens (all, or the last canvas); the final pass
    sees every unit image; no pass is redrawn from a canvas."""
    chain = synthesize_chain(
        flux, flux.transformer, UNITS, FINAL, batch_size=2, height=32, width=32, num_steps=4,
        context="in_context", references=references, schedule={"kind": "constant", "level": 0.7},
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert len(chain.steps) == 4
    counts = [0 if s.embeds.references is None else s.embeds.references.count for s in chain.steps]
    assert counts == seen
    assert all(s.trajectory.num_steps == 4 for s in chain.steps)  # all from sigma 1
    final = chain.steps[-1].embeds.references
    units = torch.cat([s.trajectory.final for s in chain.steps[:3]], dim=1)
    assert torch.equal(final.tokens, units)  # the unit passes' own latents, no VAE round trip
    # a stored transition of a pass re-scores bit for bit from the step's own conditioning
    from vrl.samplers import score_step

    traj = chain.steps[2].trajectory
    with torch.no_grad():
        v = flux.velocity(
            flux.transformer, traj.latents[:, 1], traj.sigmas[1], chain.steps[2].embeds
        )
    assert torch.equal(score_step(traj, 1, v).log_prob, traj.log_probs[:, 1])


def test_in_context_needs_a_model_that_takes_references(adapter, flux):
    from vrl.errors import ConfigError
    from vrl.hicogen.chain import resolve_context

    assert resolve_context(flux, "auto") == "img2img"  # FLUX.1-dev never saw references
    assert resolve_context(flux, "in_context") == "in_context"  # but may be told to take them
    from vrl.models.diffusion import FluxAdapter
    from vrl.models.tiny_diffusion import build_tiny_flux_kontext

    assert resolve_context(FluxAdapter(build_tiny_flux_kontext()), "auto") == "in_context"
    assert resolve_context(adapter, "auto") == "img2img"
    with pytest.raises(ConfigError, match="sd3 does not: use img2img or auto"):
        resolve_context(adapter, "in_context")
    with pytest.raises(ValueError, match="in_context needs a model that takes reference images"):
        next(iter_chain(adapter, adapter.transformer, UNITS, FINAL, batch_size=1, height=32,
                        width=32, num_steps=2, context="in_context"))  # fmt: skip
