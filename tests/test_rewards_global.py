"""Global level of the hierarchical reward on a tiny random open_clip ViT built offline."""

import numpy as np
import pytest
import torch
from PIL import Image

from vrl.rewards.hierarchical_global import (
    CLIPScorer,
    PreferenceScorer,
    build_global_reward,
    make_clip_reward,
)
from vrl.rewards.registry import WeightedReward, register_reward, unregister_reward

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
PROMPTS = ["a red cube on a blue sphere", "two cats", "a red cube on a blue sphere", "a dog"]


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return CLIPScorer.from_config(TINY_CLIP)


@pytest.fixture(scope="module")
def preference():
    torch.manual_seed(1)
    return PreferenceScorer.from_config(TINY_CLIP, batch_size=3)


def images(batch=4, height=48, width=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=generator)


def test_build_is_offline_and_frozen(monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("building the scorer tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    scorer = CLIPScorer.from_config(TINY_CLIP)
    assert not any(p.requires_grad for p in scorer.model.parameters())
    assert not scorer.model.training


def test_clip_score_shape_range_and_determinism(clip):
    x = images()
    scores = clip.score(x, PROMPTS)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    assert (scores >= 0).all() and (scores <= clip.w).all()
    assert torch.equal(scores, clip.score(x.clone(), list(PROMPTS)))
    # CLIPScore is w * max(cos, 0), checked against the raw cosine
    cosine = clip.cosine(x, PROMPTS)
    torch.testing.assert_close(scores, 2.5 * cosine.clamp(min=0))
    assert (cosine.abs() <= 1 + 1e-5).all()


def test_clip_score_weight_is_a_parameter():
    torch.manual_seed(0)
    scorer = CLIPScorer.from_config(TINY_CLIP, w=1.0)
    torch.manual_seed(0)
    reference = CLIPScorer.from_config(TINY_CLIP)
    x = images()
    torch.testing.assert_close(2.5 * scorer.score(x, PROMPTS), reference.score(x, PROMPTS))
    with pytest.raises(ValueError, match="positive"):
        CLIPScorer.from_config(TINY_CLIP, w=0.0)


def test_cosine_matches_open_clip_forward(clip):
    # the model's own forward gives normalised features; its diagonal logits / scale are our cosine
    x = images()
    pixels = clip.preprocess(x)
    tokens = clip.tokenizer(PROMPTS)
    with torch.no_grad():
        image_features, text_features, _ = clip.model(pixels, tokens)
    expected = (image_features * text_features).sum(-1)
    torch.testing.assert_close(clip.cosine(x, PROMPTS), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", ["clip", "preference"])
def test_batched_equals_one_by_one(which, clip, preference):
    scorer = clip if which == "clip" else preference
    x = images(batch=5, seed=3)
    prompts = PROMPTS + ["a lighthouse at night"]
    batched = scorer.score(x, prompts)
    single = torch.cat([scorer.score(x[i : i + 1], prompts[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_identical_image_and_prompt_score_identically(clip):
    x = images(batch=1).expand(3, -1, -1, -1)
    scores = clip.score(x, ["two cats"] * 3)
    assert torch.allclose(scores, scores[0].expand(3), atol=1e-6)


def test_preprocess_matches_open_clip_pil_transform(clip):
    # a smooth image: bicubic in PIL and in torch differ most on pixel noise
    height, width = 60, 44
    yy, xx = np.mgrid[0:height, 0:width]
    array = np.stack(
        [
            127 + 100 * np.sin(xx / 7.0),
            127 + 100 * np.cos(yy / 5.0),
            255 * (xx + yy) / (height + width),
        ],
        axis=-1,
    ).astype(np.uint8)  # (H, W, 3)
    expected = clip.pil_transform()(Image.fromarray(array))  # (3, 32, 32)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float().div(255)[None]
    ours = clip.preprocess(tensor)[0]
    assert ours.shape == expected.shape == (3, 32, 32)
    difference = (ours - expected).abs()
    # normalised units (1/std ~ 3.7 per unit of [0, 1]); uint8 rounding alone is ~0.01
    assert difference.mean() < 0.03, difference.mean()
    assert difference.max() < 0.2, difference.max()


def test_preprocess_handles_square_and_wide_images(clip):
    for height, width in [(32, 32), (64, 64), (20, 80), (90, 30)]:
        out = clip.preprocess(torch.rand(2, 3, height, width))
        assert out.shape == (2, 3, 32, 32)
    # a constant grey image stays constant: (0.5 - mean) / std on each channel
    grey = clip.preprocess(torch.full((1, 3, 50, 70), 0.5))
    mean, std = torch.tensor(clip.mean), torch.tensor(clip.std)
    torch.testing.assert_close(grey[0, :, 0, 0], (0.5 - mean) / std)


def test_preference_score_is_scaled_cosine(preference):
    x = images()
    scores = preference.score(x, PROMPTS)
    assert scores.shape == (4,) and torch.isfinite(scores).all()
    torch.testing.assert_close(scores, preference.cosine(x, PROMPTS))


def test_weights_load_from_a_local_checkpoint(tmp_path, preference):
    # HPSv2 ships {"state_dict": ...}; open_clip's loader reads that layout
    path = tmp_path / "hps.pt"
    torch.save({"state_dict": preference.model.state_dict(), "epoch": 1}, path)
    torch.manual_seed(123)  # a different random init, overwritten by the checkpoint
    loaded = PreferenceScorer.from_config(TINY_CLIP, weights_path=path)
    x = images()
    torch.testing.assert_close(loaded.score(x, PROMPTS), preference.score(x, PROMPTS))


def test_from_pretrained_refuses_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="local files only"):
        PreferenceScorer.from_pretrained("ViT-H-14", tmp_path / "missing.pt")


def test_make_clip_reward_reads_sample_prompts(clip):
    reward = make_clip_reward(clip)
    x = images()
    samples = [{"prompt": p, "tag": "x"} for p in PROMPTS]
    scores = reward(x, samples)
    assert isinstance(scores, list) and all(isinstance(s, float) for s in scores)
    np.testing.assert_allclose(scores, clip.score(x, PROMPTS).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="4 images but 3 samples"):
        reward(x, samples[:3])
    with pytest.raises(KeyError, match="prompt"):
        reward(x, [{"caption": p} for p in PROMPTS])


def test_global_reward_weighted_sum_and_breakdown(clip, preference):
    x = images()
    samples = [{"prompt": p} for p in PROMPTS]
    reward = build_global_reward(clip, preference, w_clip=2.0, w_pref=0.5)
    parts = reward.breakdown(x, samples)
    assert set(parts) == {"clip", "preference", "global"}
    expected = 2.0 * clip.score(x, PROMPTS) + 0.5 * preference.score(x, PROMPTS)
    np.testing.assert_allclose(parts["global"], expected.numpy(), atol=1e-5)
    total = reward(x, samples)
    np.testing.assert_allclose(total, parts["global"], atol=1e-6)
    assert reward.last_breakdown == parts

    only_clip = build_global_reward(clip, None)
    assert set(only_clip.breakdown(x, samples)) == {"clip", "global"}
    np.testing.assert_allclose(only_clip(x, samples), clip.score(x, PROMPTS).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="needs a CLIPScorer"):
        build_global_reward(None, None)


def test_global_reward_through_the_registry(clip, preference):
    name = "test_hierarchical_global"
    register_reward(name)(build_global_reward(clip, preference))
    try:
        x = images()
        result = WeightedReward({name: 3.0})(x, [{"prompt": p} for p in PROMPTS])
        assert result.num_errors == 0
        expected = clip.score(x, PROMPTS) + preference.score(x, PROMPTS)
        torch.testing.assert_close(result.components[name], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(result.total, 3.0 * expected, atol=1e-5, rtol=0)
    finally:
        unregister_reward(name)


def test_bad_images_are_refused(clip):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        clip.score(torch.rand(3, 32, 32), ["a"])
    with pytest.raises(TypeError, match="floats"):
        clip.score(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), ["a"])
    with pytest.raises(ValueError, match="1 images but 2 prompts"):
        clip.score(torch.rand(1, 3, 32, 32), ["a", "b"])
