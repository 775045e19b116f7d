"""Image and sample similarity: SSIM and the within-group diversity of a batch of samples.

Used to measure how far apart the images of one GRPO group are (`experiments/
diffusion_diversity.py` compares noise schedules with them): a group whose members are alike gives
GRPO's advantages nothing to tell apart.

- `ssim`: structural similarity of two batches of images (Gaussian window 11, sigma 1.5, the
  usual constants), in float64, with no dependency beyond torch;
- `pairwise_rms`, `pairwise_ssim`: the figure for every unordered pair of a group;
- `group_diversity`: a group's mean pairwise pixel L2 and SSIM, the L2 of its latents, and that
  L2 made scale-free (so a schedule that only shrinks or inflates the latents does not move it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """(size,) float64 normalised 1-d Gaussian, centred."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    data_range: float = 1.0,
    window_size: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
) -> torch.Tensor:
    """(B,) structural similarity of two batches of images (B, C, H, W), in [-1, 1].

    Local means, variances and covariance under a Gaussian window (valid positions only, each
    channel on its own), combined as
        ((2 mu_x mu_y + C1)(2 cov + C2)) / ((mu_x^2 + mu_y^2 + C1)(var_x + var_y + C2)),
    C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L the data range, and averaged over positions and
    channels. A window wider than the image is cut to the image's smaller side (kept odd).
    Computed in float64.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"ssim takes two (B, C, H, W) batches, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    channels, height, width = x.shape[1:]
    size = min(window_size, height, width)
    size -= 1 - size % 2  # odd
    g = gaussian_window(size, sigma).to(x.device)
    kernel_h = g.reshape(1, 1, size, 1).expand(channels, 1, size, 1)  # (C, 1, k, 1)
    kernel_w = g.reshape(1, 1, 1, size).expand(channels, 1, 1, size)  # (C, 1, 1, k)

    def blur(t: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H-k+1, W-k+1)
        return F.conv2d(F.conv2d(t, kernel_h, groups=channels), kernel_w, groups=channels)

    x, y = x.double(), y.double()
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.flatten(1).mean(dim=1).float()  # (B,)


def pairwise_rms(x: torch.Tensor) -> torch.Tensor:
    """(G (G-1) / 2,) RMS difference per value between every pair of the G items of x (G, ...)."""
    flat = x.flatten(1).double()  # (G, D)
    return (torch.pdist(flat) / math.sqrt(flat.shape[1])).float()


def pairwise_ssim(images: torch.Tensor) -> torch.Tensor:
    """(G (G-1) / 2,) SSIM of every pair of the G images (G, C, H, W)."""
    i, j = torch.triu_indices(images.shape[0], images.shape[0], offset=1)
    return ssim(images[i], images[j])


def group_diversity(images: torch.Tensor, latents: torch.Tensor) -> dict[str, float]:
    """Mean pairwise L2 and SSIM of a group's images, L2 of its final latents, and that L2 over
    sqrt(2) x the latents' RMS: 1 = as far apart as independent zero-mean draws of the same size,
    so a schedule that only shrinks or inflates the latents does not move it."""
    latent_l2 = float(pairwise_rms(latents).mean())
    latent_rms = float(latents.double().pow(2).mean().sqrt())
    return {
        "pixel_l2": float(pairwise_rms(images).mean()),
        "ssim": float(pairwise_ssim(images).mean()),
        "latent_l2": latent_l2,
        "latent_scale_free": latent_l2 / (math.sqrt(2) * latent_rms),
    }
