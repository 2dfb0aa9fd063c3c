"""People's own scans and photos, decoded safely and made to look like EMNIST samples for `predict`."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from emnist_lit.errors import ImageInputError

IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
"""Formats `predict` and `read` accept, decided by the file's content rather than its name."""

MAX_PIXELS = 256_000_000
"""Largest image decoded (a 16,000 x 16,000 scan); above it a file is refused as a decompression bomb by name. PIL's
own limit, about 179 megapixels, would refuse a 200-megapixel phone photo of a form."""
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # PIL warns above it and refuses twice it; `open_image` refuses above it

DRAFT_SIDE = 4000
"""JPEGs are decoded at a reduced scale (PIL's draft mode) when both sides exceed this: a line needs no more."""

READ_ERRORS = (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError)
"""What a broken, foreign or hostile file raises while being opened and decoded."""


def open_image(path: str | Path) -> Image.Image:
    """Decode an image file by its content, whole, within `MAX_PIXELS`; large JPEGs in draft mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by size, with the reason
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            if image.width * image.height > MAX_PIXELS:
                raise Image.DecompressionBombError(
                    f"{image.width}x{image.height} pixels: more than {MAX_PIXELS}, refused as a possible "
                    "decompression bomb"
                )
            if min(image.size) > DRAFT_SIDE:
                image.draft("RGB" if image.mode == "RGB" else "L", (DRAFT_SIDE, DRAFT_SIDE))
            image.load()
            return image


def to_grayscale(image: Image.Image) -> torch.Tensor:
    """Any PIL mode as a float (H, W) tensor in [0, 1]: transparency composited on white, 16-bit kept at full
    precision rather than clipped to 8 bits."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        return torch.from_numpy(array / peak).clamp_(0, 1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)


def prepare_image(gray: torch.Tensor, size: int = 28, border: int = 2) -> torch.Tensor:
    """Make a scan look like an EMNIST sample: light ink on dark, cropped to the ink, centred in a square with a
    `border`-pixel margin, resized to `size` x `size`. Returns (1, size, size) in [0, 1].

    The pixel work before the resize is numpy: on a character-sized image each torch call costs more in dispatch than
    in arithmetic, and this runs once per image in `predict`'s workers and in `read`."""
    pixels = gray.numpy(force=True)
    edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    middle = (len(edge) - 1) // 2  # torch's median of an even count: the lower of the two middle values
    if np.partition(edge, middle)[middle] > 0.5:
        pixels = 1.0 - pixels
    pixels = pixels - pixels.min()
    peak = pixels.max()
    if peak <= 0.05:
        raise ValueError("no ink found (the image is blank)")
    pixels = pixels / peak
    ink_mask = pixels > 0.3
    rows, cols = np.flatnonzero(ink_mask.any(axis=1)), np.flatnonzero(ink_mask.any(axis=0))
    ink = pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = ink.shape
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    square = np.zeros((1, 1, side, side), dtype=ink.dtype)
    square[0, 0, top : top + height, left : left + width] = ink
    inner = size - 2 * border
    resized = F.interpolate(
        torch.from_numpy(square), size=(inner, inner), mode="bilinear", antialias=True, align_corners=False
    )
    return F.pad(resized[0], (border,) * 4).clamp_(0, 1)


def list_images(directory: str | Path | None, files: list[str] | None) -> list[str]:
    """The files to predict on: every non-hidden file below `directory` (recursive, sorted, symlinked folders
    not followed) and then `files`, in the order given."""
    paths: list[str] = []
    if directory is not None:
        if not Path(directory).is_dir():
            raise ImageInputError(f"predict_dir {directory}: not a folder")
        for folder, subfolders, names in os.walk(directory):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            paths += [os.path.join(folder, n) for n in sorted(names) if not n.startswith(".")]
    paths += list(files or [])
    if not paths:
        raise ImageInputError(f"no files to predict on in {directory if directory is not None else files}")
    return paths


class ImageFiles(Dataset):
    """People's own images, decoded and prepared in DataLoader workers; a file that cannot be read yields its
    reason instead of an image, so one bad file never stops the others."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, str, str | None]:
        path = self.paths[index]
        try:
            return prepare_image(to_grayscale(open_image(path))), path, None
        except READ_ERRORS as err:
            return None, path, str(err) or type(err).__name__


def collate_images(items: list[tuple[torch.Tensor | None, str, str | None]]) -> tuple:
    """Stack the readable images; keep (path, reason) of the others for the writer to report."""
    good = [(image, path) for image, path, error in items if image is not None]
    images = torch.stack([image for image, _ in good]) if good else torch.empty(0, 1, 28, 28)
    return images, [path for _, path in good], [(path, error) for image, path, error in items if image is None]
