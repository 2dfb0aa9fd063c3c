"""Batched augmentation: one random affine per image, applied to a whole batch on whatever device holds it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_affine(
    images: torch.Tensor,
    degrees: float,
    translate: float,
    shear: float,
    scale: tuple[float, float] = (1.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """torchvision's RandomAffine drawn independently for every image of a (B, C, H, W) float batch, in one
    `affine_grid`/`grid_sample` call, so augmentation runs batched on whatever device holds the batch, without
    waiting on the host. Angles are in pixels whatever the aspect (a wide line is slanted, not smeared);
    translation is a fraction of each side, as torchvision's. `generator` must live on the batch's device."""
    n, device = images.shape[0], images.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device) * (high - low) + low

    angle = torch.deg2rad(uniform(-degrees, degrees))
    shear_x = torch.deg2rad(uniform(-shear, shear))
    zoom = uniform(*scale)
    shift = torch.stack([uniform(-translate, translate), uniform(-translate, translate)], dim=1) * 2
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear_x)
    # forward map = zoom * rotation @ shear_x; the grid needs its inverse (output pixel -> input pixel), in closed form
    # unshear_x @ rotation^T / zoom: torch.linalg.inv would check for singular matrices by reading back to the host
    inverse = torch.stack([cos + tan * sin, sin - tan * cos, -sin, cos], dim=1).view(n, 2, 2) / zoom.view(n, 1, 1)
    height, width = images.shape[-2:]
    if height != width:  # affine_grid's -1..1 spans each side: rescale the cross terms so angles are in pixels
        inverse = inverse * torch.tensor([[1.0, height / width], [width / height, 1.0]], device=device)
    theta = torch.cat([inverse, -(inverse @ shift.unsqueeze(-1))], dim=2)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
