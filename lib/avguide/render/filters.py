"""Image filters shared by the renderer's users (corpus degradation, image losses)."""

import torch


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) images, sigma in pixels, borders replicated; differentiable."""
    if sigma <= 0:
        return images
    r = max(1, int(round(3 * sigma)))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=images.dtype, device=images.device) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    x = images[:, None]
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x[:, 0]
