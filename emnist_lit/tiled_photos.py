"""A second, deliberately different way to make photos of handwritten VINs, to check that reading does not depend on
`line_photos`' renderer (the one the line model trains on): whole 28x28 EMNIST tiles side by side at a fixed pitch,
never cropped to their ink nor scaled one by one, the photo scaled as a whole, with form furniture and capture
conditions `line_photos` never draws (a red comb, a closed grid, a phone's large JPEG, thin strokes, a 6-9 degree
turn)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from PIL import Image, ImageFilter
from scipy import ndimage

from emnist_lit.line_photos import GlyphBank, random_vin, write_photo_set

TiledStyle = Literal["tiles", "touching", "comb", "grid", "phone", "thin", "rotated"]
"""tiles: tiles edge to edge, black on white; touching: tiles overlapping by 8-10 of their 28 pixels; comb: a form's
baseline with a tick between cells, in red; grid: a closed grid of dark cells; phone: large, blurred, noisy, JPEG
quality 40-60, colour; thin: strokes eroded, small, blurred; rotated: the photo turned 6-9 degrees."""

TILED_STYLES: tuple[TiledStyle, ...] = get_args(TiledStyle)

TILE = 28
"""EMNIST's image side: each character is drawn as its whole image, margins included."""


def _tiles(text: str, bank: GlyphBank, rng: np.random.Generator, overlap: int = 0) -> np.ndarray:
    """Ink (28, W) in [0, 1] of one random EMNIST image per character at a pitch of 28 - overlap pixels (a negative
    overlap leaves a gap)."""
    pitch = TILE - overlap
    ink = np.zeros((TILE, pitch * (len(text) - 1) + TILE), np.float32)
    for i, char in enumerate(text):
        x = i * pitch
        ink[:, x : x + TILE] = np.maximum(ink[:, x : x + TILE], bank.ink(bank.draw(char, rng)))
    return ink


def _cells(count: int, pitch: int, height: int, comb: bool) -> np.ndarray:
    """Form lines (height, count * pitch + 2) at 1: a comb (baseline and ticks between cells) or a closed grid."""
    lines = np.zeros((height, count * pitch + 2), np.float32)
    lines[-2:, :] = 1
    if not comb:
        lines[:2, :] = 1
    for i in range(count + 1):
        lines[(height * 2 // 3 if comb else 0) :, i * pitch : i * pitch + 2] = 1
    return lines


def _photo(
    ink: np.ndarray,
    rng: np.random.Generator,
    scale: float,
    lines: np.ndarray | None = None,
    line_colour: tuple[float, float, float] = (0.2, 0.2, 0.2),
    paper: float = 1.0,
    pen: tuple[float, float, float] = (0.0, 0.0, 0.0),
    blur: float = 0.0,
    noise: float = 0.0,
) -> Image.Image:
    """Dark ink (and form lines) on paper, the whole scaled by `scale` (bicubic), with a margin of 10 tile pixels."""
    height, width = ink.shape
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    margin = round(10 * scale)
    pen_layer = np.pad(np.clip(np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.BICUBIC)), 0, 1), margin)
    rgb = np.full((*pen_layer.shape, 3), paper, np.float32)
    if lines is not None:
        line_layer = np.pad(np.asarray(Image.fromarray(lines).resize(size, Image.Resampling.NEAREST)), margin)
        rgb = rgb * (1 - line_layer[..., None]) + np.array(line_colour, np.float32) * line_layer[..., None]
    rgb = rgb * (1 - pen_layer[..., None]) + np.array(pen, np.float32) * pen_layer[..., None]
    image = Image.fromarray(np.clip(rgb * 255, 0, 255).astype(np.uint8), mode="RGB")
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    if noise:
        noisy = np.asarray(image, np.float32) + rng.normal(0, noise, (image.height, image.width, 3))
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), mode="RGB")
    return image


def render_tiled(
    text: str, bank: GlyphBank, style: TiledStyle, rng: np.random.Generator
) -> tuple[Image.Image, int | None]:
    """A photo of `text` in `style` and the JPEG quality to save it at (None: save it as a PNG)."""
    if style == "tiles":
        return _photo(_tiles(text, bank, rng), rng, scale=rng.uniform(1, 3)).convert("L"), None
    if style == "touching":
        ink = _tiles(text, bank, rng, overlap=int(rng.integers(8, 11)))
        return _photo(ink, rng, scale=rng.uniform(1.5, 3)).convert("L"), None
    if style in ("comb", "grid"):
        gap = 6
        ink = np.pad(_tiles(text, bank, rng, overlap=-gap), ((6, 6), (gap // 2 + 1, gap // 2 + 1)))
        lines = _cells(len(text), TILE + gap, ink.shape[0], comb=style == "comb")[:, : ink.shape[1]]
        colour = (0.85, 0.2, 0.2) if style == "comb" else (0.2, 0.2, 0.2)
        return _photo(ink, rng, scale=rng.uniform(2, 3), lines=lines, line_colour=colour), None
    if style == "phone":
        ink = _tiles(text, bank, rng, overlap=4)
        photo = _photo(ink, rng, rng.uniform(6, 9), paper=0.85, pen=(0.1, 0.1, 0.4), blur=2.0, noise=6)
        return photo, int(rng.integers(40, 61))
    if style == "thin":
        ink = ndimage.grey_erosion(_tiles(text, bank, rng, overlap=2), size=(2, 2))
        return _photo(ink, rng, scale=rng.uniform(1, 1.5), blur=0.6, noise=4).convert("L"), None
    if style == "rotated":
        photo = _photo(_tiles(text, bank, rng, overlap=3), rng, scale=2).convert("L")
        angle = float(rng.choice([-1, 1]) * rng.uniform(6, 9))
        return photo.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255), None
    raise ValueError(f"style {style!r}: use one of {TILED_STYLES}")


def write_tiled_photos(
    out_dir: str | Path,
    n: int,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    classes: str,
    styles: Sequence[TiledStyle] = TILED_STYLES,
    seed: int = 0,
) -> list[tuple[Path, str, str]]:
    """Write `n` VIN photos (styles taken in turn) and a labels.csv of `path,text,style`, as `write_line_photos`
    does, each file atomically; the same seed writes the same photos."""
    for style in styles:
        if style not in TILED_STYLES:
            raise ValueError(f"style {style!r}: use one of {TILED_STYLES}")
    bank = GlyphBank(images, labels, classes)

    def draw(style: TiledStyle, rng: np.random.Generator) -> tuple[str, bytes, str]:
        text = random_vin(rng)
        image, quality = render_tiled(text, bank, style, rng)
        buffer = io.BytesIO()
        if quality is None:
            image.save(buffer, format="PNG")
            return text, buffer.getvalue(), ".png"
        image.save(buffer, format="JPEG", quality=quality)
        return text, buffer.getvalue(), ".jpg"

    return write_photo_set(out_dir, n, styles, seed, draw)  # type: ignore[arg-type]
