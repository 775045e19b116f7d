"""vrl.metrics: SSIM checked by hand, and the within-group diversity figures."""

import statistics

import pytest
import torch

from vrl.metrics import group_diversity, pairwise_rms, pairwise_ssim, ssim


def test_ssim_hand_checked_values():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert (ssim(x, 1 - x) < 0).all()  # the photographic negative
    assert ssim(x, x.flip(0)).tolist() == pytest.approx(ssim(x.flip(0), x).tolist())
    # flat images: only the luminance term is left, (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.2, 0.8, 0.01**2
    flat_a, flat_b = torch.full((1, 1, 12, 12), a), torch.full((1, 1, 12, 12), b)
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(flat_a, flat_b).item() == pytest.approx(expected, rel=1e-5)
    # an image smaller than the 11-pixel window still works (the window is cut to 7)
    small = torch.rand(1, 3, 7, 8)
    assert ssim(small, small).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="two"):
        ssim(x, x[:, :2])


def test_pairwise_metrics_count_every_pair_once():
    images = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4), torch.full((3, 4, 4), 0.5)])
    distances = pairwise_rms(images)
    assert distances.tolist() == pytest.approx([1.0, 0.5, 0.5])  # (0,1), (0,2), (1,2)
    assert statistics.fmean(distances.tolist()) == pytest.approx(2 / 3)
    assert pairwise_ssim(torch.rand(4, 3, 11, 11)).shape == (6,)


def test_group_diversity_scale_free_latent_figure():
    # 1 for independent draws, blind to the latents' overall size
    latents = torch.randn(32, 4096, generator=torch.Generator().manual_seed(0))
    images = torch.rand(32, 3, 8, 8)
    figures = group_diversity(images, latents)
    assert set(figures) == {"pixel_l2", "ssim", "latent_l2", "latent_scale_free"}
    free = figures["latent_scale_free"]
    assert free == pytest.approx(1.0, abs=0.02)
    assert group_diversity(images, 3 * latents)["latent_scale_free"] == pytest.approx(free)
    assert group_diversity(images, 3 * latents)["latent_l2"] == pytest.approx(
        3 * figures["latent_l2"]
    )
    shared = latents + 2 * torch.randn(1, 4096)  # a common component: closer together
    assert group_diversity(images, shared)["latent_scale_free"] < 0.5
    same = group_diversity(images[:1].expand(4, -1, -1, -1), latents[:4])
    assert same["pixel_l2"] == 0 and same["ssim"] == pytest.approx(1.0, abs=1e-6)
