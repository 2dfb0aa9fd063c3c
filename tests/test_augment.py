"""The batched RandomAffine: shapes and ranges, independence per image, torchvision's ranges, and upright output."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torchvision import transforms

from emnist_lit.data import EMNISTDataModule, random_affine

SIZE = 28
CENTRE = (SIZE - 1) / 2


def blank(n: int = 1) -> torch.Tensor:
    return torch.zeros(n, 1, SIZE, SIZE)


def centred_dot(n: int) -> torch.Tensor:
    images = blank(n)
    images[:, :, 13:15, 13:15] = 1.0
    return images


def centred_bar(n: int, vertical: bool = False) -> torch.Tensor:
    images = blank(n)
    images[:, :, 13:15, 4:24] = 1.0
    return images.transpose(-1, -2) if vertical else images


def letter_l(n: int) -> torch.Tensor:
    images = blank(n)
    images[:, :, 5:23, 7:10] = 1.0
    images[:, :, 20:23, 7:21] = 1.0
    return images


def centroids(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ink centroid (x, y) of each image, in pixels."""
    coords = torch.arange(SIZE, dtype=torch.float32)
    ink = images[:, 0]
    total = ink.sum(dim=(1, 2))
    return (ink.sum(dim=1) * coords).sum(1) / total, (ink.sum(dim=2) * coords).sum(1) / total


def angles(images: torch.Tensor) -> torch.Tensor:
    """Orientation of each image's principal ink axis, in degrees from horizontal, from second moments."""
    x, y = centroids(images)
    coords = torch.arange(SIZE, dtype=torch.float32)
    dx = coords.view(1, 1, SIZE) - x.view(-1, 1, 1)
    dy = coords.view(1, SIZE, 1) - y.view(-1, 1, 1)
    ink = images[:, 0]
    cxx, cyy, cxy = (ink * dx * dx).sum((1, 2)), (ink * dy * dy).sum((1, 2)), (ink * dx * dy).sum((1, 2))
    return torch.rad2deg(0.5 * torch.atan2(2 * cxy, cxx - cyy))


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_shape_dtype_and_range_are_kept() -> None:
    images = torch.rand(16, 1, SIZE, SIZE, generator=seeded())
    out = random_affine(images, 10, 0.1, 10, generator=seeded())
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6
    assert not torch.allclose(out, images)


def test_zero_ranges_are_the_identity() -> None:
    images = torch.rand(8, 1, SIZE, SIZE, generator=seeded())
    torch.testing.assert_close(random_affine(images, 0, 0, 0), images, atol=1e-5, rtol=0)


def test_every_image_gets_its_own_transform() -> None:
    out = random_affine(letter_l(64), 10, 0.1, 10, generator=seeded())
    assert len(torch.unique(out.flatten(1), dim=0)) == 64


def test_translation_stays_within_a_tenth_of_the_image_and_reaches_it() -> None:
    x, y = centroids(random_affine(centred_dot(2000), 10, 0.1, 10, generator=seeded()))
    limit = 0.1 * SIZE
    for shift in (x - CENTRE, y - CENTRE):
        assert shift.abs().max() <= limit + 0.05
        assert shift.max() > 0.9 * limit and shift.min() < -0.9 * limit
        assert abs(shift.mean()) < 0.15


def test_rotation_and_shear_ranges_match_torchvision() -> None:
    """x-shear leaves horizontal strokes horizontal, so a horizontal bar shows the rotation alone (up to 10 degrees)
    and a vertical bar rotation plus shear (up to 20); torchvision's RandomAffine gives the same spreads."""
    torch.manual_seed(0)
    reference = transforms.RandomAffine(degrees=10, translate=(0.1, 0.1), shear=10)
    for vertical, limit in ((False, 10.0), (True, 20.0)):
        bars = centred_bar(250, vertical)
        ours = angles(random_affine(bars, 10, 0.1, 10, generator=seeded()))
        theirs = angles(torch.stack([reference(bar) for bar in bars]))
        offset = 90.0 if vertical else 0.0
        ours, theirs = (ours - offset + 90) % 180 - 90, (theirs - offset + 90) % 180 - 90
        assert ours.abs().max() <= limit + 1.0
        assert ours.abs().max() > 0.8 * limit
        assert ours.std().item() == pytest.approx(theirs.std().item(), rel=0.2)


def test_output_stays_upright() -> None:
    """An 'L' keeps its ink bottom-left: no flip, transpose or half-turn sneaks into the batched transform."""
    out = random_affine(letter_l(500), 10, 0.1, 10, generator=seeded())
    x, y = centroids(out)
    assert (x < CENTRE).float().mean() > 0.95 and (y > CENTRE).float().mean() > 0.95
    half = SIZE // 2
    bottom_left, top_right = out[:, 0, half:, :half].sum((1, 2)), out[:, 0, :half, half:].sum((1, 2))
    assert (bottom_left > 2 * top_right).all()


def test_scale_zooms_about_the_centre() -> None:
    bars = blank(1)
    bars[:, :, 13:15, 9:19] = 1.0
    zoomed = random_affine(bars, 0, 0, 0, scale=(2.0, 2.0))
    width = lambda images: (images[0, 0].sum(0) > 0.5).sum().item()  # noqa: E731
    assert width(zoomed) == pytest.approx(2 * width(bars), abs=2)
    assert math.isclose(centroids(zoomed)[0].item(), CENTRE, abs_tol=0.3)


def batch_from(dm: EMNISTDataModule, training: bool) -> tuple[tuple, tuple]:
    dm.trainer = SimpleNamespace(training=training, predicting=False)
    batch = next(iter(dm.train_dataloader()))
    return batch, dm.on_after_batch_transfer(batch, 0)


def test_after_transfer_augments_training_batches_and_keeps_labels(emnist_root: Path) -> None:
    dm = EMNISTDataModule(root=str(emnist_root), batch_size=32)
    dm.setup("fit")
    (raw, labels, _), (images, out_labels) = batch_from(dm, training=True)
    assert images.shape == (32, 1, SIZE, SIZE) and images.dtype == torch.float32
    assert torch.equal(out_labels, labels)
    plain = raw.unsqueeze(1).float() / 255
    assert not torch.allclose(images, plain)
    assert images.min() >= 0 and images.max() <= 1 + 1e-6


def test_after_transfer_leaves_evaluation_batches_plain(emnist_root: Path) -> None:
    dm = EMNISTDataModule(root=str(emnist_root), batch_size=32)
    dm.setup("fit")
    (raw, labels, _), (images, out_labels) = batch_from(dm, training=False)
    torch.testing.assert_close(images, raw.unsqueeze(1).float() / 255)
    assert torch.equal(out_labels, labels)


def test_plain_copy_is_left_unaugmented(emnist_root: Path) -> None:
    dm = EMNISTDataModule(root=str(emnist_root), batch_size=4096, include_plain_copy=True)
    dm.setup("fit")
    (raw, _, augment), (images, _) = batch_from(dm, training=True)
    plain = raw.unsqueeze(1).float() / 255
    assert augment.float().mean() == pytest.approx(0.5, abs=0.01)
    torch.testing.assert_close(images[~augment], plain[~augment])
    assert not torch.allclose(images[augment], plain[augment])


def test_a_wide_line_is_slanted_by_the_shear_angle_in_pixels() -> None:
    """affine_grid's coordinates run -1..1 along each side; taken as they are, a 10-degree shear of a 28 x 280 line
    would move its top row ten times as far as the angle says."""
    line = torch.zeros(32, 1, 28, 280)
    line[:, :, :, 139:141] = 1.0  # one upright stroke in the middle
    slanted = random_affine(line, degrees=0, translate=0, shear=10, generator=torch.Generator().manual_seed(0))
    top = (slanted[:, 0, 2] * torch.arange(280)).sum(1) / slanted[:, 0, 2].sum(1)
    bottom = (slanted[:, 0, 25] * torch.arange(280)).sum(1) / slanted[:, 0, 25].sum(1)
    drift = (top - bottom).abs()
    assert drift.max() <= 23 * math.tan(math.radians(10)) + 0.5
    assert drift.max() >= 2.0, "the shear was not applied"
