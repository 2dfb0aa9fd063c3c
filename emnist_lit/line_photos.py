"""Photos of handwritten strings composed from EMNIST characters, with the variation real forms show, so reading a
line (segmenting it, then classifying each character) can be measured against a known truth."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from PIL import Image, ImageFilter

from emnist_lit.atomic import write_atomically
from emnist_lit.charsets import VIN_CHARSET
from emnist_lit.line_ink import rotate_about_centre
from emnist_lit.vin import CHECK_POSITION, MODEL_YEAR_POSITION, VIN_LENGTH, vin_allowed_characters, vin_check_character

LineStyle = Literal["free", "tight", "boxed"]
"""free: uneven gaps, size and baseline; tight: neighbours touching or overlapping; boxed: one printed box each."""

LINE_STYLES: tuple[LineStyle, ...] = get_args(LineStyle)

Box = tuple[int, int, int, int]
"""(left, top, right, bottom) in pixels, right and bottom exclusive."""


def random_vin(rng: np.random.Generator) -> str:
    """A VIN that passes its check character: 17 characters of VIN_CHARSET, the model year (position 10) never
    U, Z or 0."""
    chars = [VIN_CHARSET[i] for i in rng.integers(0, len(VIN_CHARSET), VIN_LENGTH)]
    year_chars = vin_allowed_characters(MODEL_YEAR_POSITION)
    chars[MODEL_YEAR_POSITION] = year_chars[rng.integers(0, len(year_chars))]
    chars[CHECK_POSITION] = vin_check_character("".join(chars))
    return "".join(chars)


def random_text(rng: np.random.Generator, charset: str, min_length: int = 3, max_length: int = 12) -> str:
    """A random string of `charset` characters, for lines that are not VINs."""
    length = int(rng.integers(min_length, max_length + 1))
    return "".join(charset[i] for i in rng.integers(0, len(charset), length))


@dataclass
class LinePhoto:
    """A rendered line and its truth: the text and, per character, the box its ink was drawn into and the index of
    the EMNIST image drawn; for the boxed style, the printed boxes (axis-aligned around them when tilted)."""

    image: Image.Image
    text: str
    style: LineStyle
    boxes: list[Box]
    sources: list[int]
    frames: list[Box]


class GlyphBank:
    """The EMNIST images grouped by character, so each character of a line draws a random instance of its class."""

    def __init__(self, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, classes: str) -> None:
        self.images = np.asarray(images, dtype=np.uint8)
        labels = np.asarray(labels)
        if self.images.ndim != 3 or len(self.images) != len(labels):
            raise ValueError(f"images {self.images.shape} and labels {labels.shape} do not make a labelled set")
        self.classes = classes
        self.by_class = {classes[k]: np.flatnonzero(labels == k) for k in range(len(classes))}
        self.available = "".join(c for c in classes if len(self.by_class[c]))

    def class_of(self, char: str) -> str:
        """The class that draws `char`; EMNIST Balanced merges case for c k l m o p s u v w x y z."""
        for candidate in (char, char.upper(), char.lower()):
            if len(self.by_class.get(candidate, ())):
                return candidate
        raise ValueError(f"character {char!r}: no image of it among the classes {self.classes!r}")

    def draw(self, char: str, rng: np.random.Generator) -> int:
        """The index of a random image of `char`."""
        indices = self.by_class[self.class_of(char)]
        return int(indices[rng.integers(0, len(indices))])

    def ink(self, index: int) -> np.ndarray:
        """Image `index` as float ink in [0, 1] (light on dark, as EMNIST stores it)."""
        return self.images[index].astype(np.float32) / 255.0


def _scaled_glyph(glyph: np.ndarray, height: float, max_width: float) -> np.ndarray:
    """The glyph cropped to its ink and resized to `height` pixels tall (narrower if it would exceed max_width)."""
    rows = np.flatnonzero(glyph.max(axis=1) > 0.1)
    cols = np.flatnonzero(glyph.max(axis=0) > 0.1)
    if not len(rows):
        return np.zeros((1, 1), np.float32)
    crop = glyph[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = min(height / crop.shape[0], max_width / crop.shape[1])
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    return np.asarray(Image.fromarray(crop, mode="F").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def _smooth_field(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-frequency variation in [0, 1] across the photo: uneven light and paper."""
    grid = rng.random((int(rng.integers(2, 5)), int(rng.integers(2, 7)))).astype(np.float32)
    field = Image.fromarray(grid, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :] * rng.uniform(-1, 1)
    return np.clip(np.asarray(field) * 0.7 + ramp * 0.3 + 0.15, 0, 1)


def _layout(
    glyphs: list[np.ndarray], style: LineStyle, height: float, rng: np.random.Generator
) -> tuple[list[tuple[int, int]], list[Box], int, int]:
    """Top-left corner of every glyph, the printed boxes (boxed style), and the canvas size, margins included."""
    margin_x = int(height * rng.uniform(0.3, 1.5))
    margin_y = int(height * rng.uniform(0.3, 1.0))
    corners: list[tuple[int, int]] = []
    frames: list[Box] = []
    n = len(glyphs)
    if style == "boxed":
        cell_w = height * rng.uniform(0.95, 1.45)
        cell_h = height * rng.uniform(1.15, 1.5)
        separate = rng.random() < 0.3
        pitch = cell_w + (height * rng.uniform(0.1, 0.4) if separate else 0.0)
        top = margin_y
        for i, glyph in enumerate(glyphs):
            left = margin_x + i * pitch
            frames.append((round(left), round(top), round(left + cell_w), round(top + cell_h)))
            gh, gw = glyph.shape
            slack_x, slack_y = (cell_w - gw) / 2, (cell_h - gh) / 2
            x = left + slack_x + rng.uniform(-1, 1) * (0.7 * max(slack_x, 0) + 0.12 * gw)
            y = top + slack_y + rng.uniform(-1, 1) * (0.7 * max(slack_y, 0) + 0.1 * gh)
            corners.append((round(x), round(y)))
        width = round(margin_x * 2 + (n - 1) * pitch + cell_w)
        canvas_h = round(margin_y * 2 + cell_h)
        return corners, frames, width, canvas_h
    if style == "free":
        mean_gap = height * rng.uniform(0.12, 0.55)
        gaps = mean_gap * rng.uniform(0.3, 1.7, n)
        jitter = height * rng.uniform(0.0, 0.1)
    else:
        gaps = height * rng.uniform(-0.14, 0.03, n)
        jitter = height * rng.uniform(0.0, 0.05)
    curve = height * rng.uniform(-0.15, 0.15)
    baseline = margin_y + height * 1.2
    x = float(margin_x)
    for i, glyph in enumerate(glyphs):
        gh, gw = glyph.shape
        bend = curve * (2 * i / max(n - 1, 1) - 1) ** 2
        corners.append((round(x), round(baseline + bend + rng.normal(0, jitter + 1e-6) - gh)))
        x += gw + gaps[i]
    top = min(y for _, y in corners)
    if top < margin_y // 2:
        corners = [(cx, cy + margin_y // 2 - top) for cx, cy in corners]
    right = max(cx + g.shape[1] for (cx, _), g in zip(corners, glyphs, strict=True))
    bottom = max(cy + g.shape[0] for (_, cy), g in zip(corners, glyphs, strict=True))
    return corners, frames, right + margin_x, bottom + margin_y


def render_line(
    text: str,
    images: torch.Tensor | np.ndarray | GlyphBank,
    labels: torch.Tensor | np.ndarray | None,
    classes: str,
    style: LineStyle,
    rng: np.random.Generator,
    max_tilt: float = 4.0,
) -> LinePhoto:
    """Compose a photo of `text` handwritten in one line: each character a random EMNIST image of its class, laid
    out in `style`, the whole tilted up to `max_tilt` degrees, dark ink on uneven light paper, blurred and noisy,
    RGB or grey.
    `images` (upright uint8 (N, 28, 28), light ink on dark) and `labels` (indices into `classes`) may be given once
    as a GlyphBank when many lines are drawn from them."""
    if style not in LINE_STYLES:
        raise ValueError(f"style {style!r}: use one of {LINE_STYLES}")
    if not text:
        raise ValueError("text is empty: a line needs at least one character")
    bank = images if isinstance(images, GlyphBank) else GlyphBank(images, labels, classes)
    height = rng.uniform(30, 60)
    size_jitter = {"free": 0.15, "tight": 0.08, "boxed": 0.1}[style]
    fill = rng.uniform(0.65, 0.95) if style == "boxed" else 1.0
    glyphs, sources = [], []
    for char in text:
        sources.append(bank.draw(char, rng))
        glyph_h = height * fill * (1 + rng.uniform(-size_jitter, size_jitter))
        glyph = _scaled_glyph(bank.ink(sources[-1]), glyph_h, max_width=glyph_h * 1.3)
        glyphs.append(np.clip(glyph * rng.uniform(1.0, 1.6), 0, 1) ** rng.uniform(0.7, 1.4))
    corners, frames, width, canvas_h = _layout(glyphs, style, height, rng)

    ink = np.zeros((canvas_h, width), np.float32)
    boxes: list[Box] = []
    for (x, y), glyph in zip(corners, glyphs, strict=True):
        gh, gw = glyph.shape
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + gw, width), min(y + gh, canvas_h)
        ink[y0:y1, x0:x1] = np.maximum(ink[y0:y1, x0:x1], glyph[y0 - y : y1 - y, x0 - x : x1 - x])
        boxes.append((x0, y0, x1, y1))
    lines = np.zeros_like(ink)
    thickness = max(1, round(height * rng.uniform(0.02, 0.06)))
    for left, top, right, bottom in frames:
        lines[top : top + thickness, left : right + thickness] = 1
        lines[bottom : bottom + thickness, left : right + thickness] = 1
        lines[top : bottom + thickness, left : left + thickness] = 1
        lines[top : bottom + thickness, right : right + thickness] = 1

    angle = rng.uniform(-max_tilt, max_tilt)
    ink, forward = rotate_about_centre(ink, angle)
    lines, _ = rotate_about_centre(lines, angle)
    boxes = [_rotated_box(box, forward, ink.shape) for box in boxes]
    frames = [_rotated_box((x0, y0, x1 + thickness, y1 + thickness), forward, ink.shape) for x0, y0, x1, y1 in frames]

    out_h, out_w = ink.shape
    paper_tone = rng.uniform(0.72, 0.97)
    paper = np.array([1.0, rng.uniform(0.95, 1.0), rng.uniform(0.8, 1.0)], np.float32) * paper_tone
    shade = 1 - rng.uniform(0.0, 0.3) * _smooth_field(rng, out_h, out_w)
    photo = paper[None, None, :] * shade[..., None]
    line_rgb = np.array(rng.uniform(0.0, 0.35, 3), np.float32)
    photo = photo * (1 - lines[..., None] * rng.uniform(0.6, 1.0)) + line_rgb * lines[..., None]
    pens = ([0.1, 0.12, 0.45], [0.08, 0.08, 0.1], [0.2, 0.2, 0.22], [0.05, 0.1, 0.3])
    pen = np.array(pens[rng.integers(0, len(pens))], np.float32) * rng.uniform(0.6, 1.4)
    alpha = ink[..., None] * rng.uniform(0.7, 1.0)
    photo = photo * (1 - alpha) + pen * alpha
    image = Image.fromarray(np.clip(photo * 255, 0, 255).astype(np.uint8), mode="RGB")
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.5) * height / 45))
    noisy = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(1, 10), (out_h, out_w, 3))
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), mode="RGB")
    if rng.random() < 0.35:
        image = image.convert("L")
    return LinePhoto(image=image, text=text, style=style, boxes=boxes, sources=sources, frames=frames)


def _rotated_box(box: Box, forward: np.ndarray, shape: tuple[int, int]) -> Box:
    """The axis-aligned box around `box`'s corners after the rotation `forward`."""
    left, top, right, bottom = box
    corners = np.array([[left, top, 1], [right, top, 1], [left, bottom, 1], [right, bottom, 1]], np.float64)
    xs, ys = (forward @ corners.T).round().astype(int)
    return (max(int(xs.min()), 0), max(int(ys.min()), 0), min(int(xs.max()), shape[1]), min(int(ys.max()), shape[0]))


def encode_photo(image: Image.Image, rng: np.random.Generator) -> tuple[bytes, str]:
    """The photo as a PNG or a JPEG of quality 70-95, as a phone or scanner might save it; returns (bytes, suffix)."""
    buffer = io.BytesIO()
    if rng.random() < 0.5:
        image.save(buffer, format="PNG")
        return buffer.getvalue(), ".png"
    image.save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
    return buffer.getvalue(), ".jpg"


def write_line_photos(
    out_dir: str | Path,
    n: int,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    classes: str,
    styles: Sequence[LineStyle] = LINE_STYLES,
    seed: int = 0,
    kind: Literal["vin", "text"] = "vin",
) -> list[tuple[Path, str, LineStyle]]:
    """Write `n` line photos (styles taken in turn) and a labels.csv of `path,text,style` (paths relative to
    `out_dir`), each file atomically; the same seed writes the same photos."""
    if kind not in ("vin", "text"):
        raise ValueError(f"kind {kind!r}: use 'vin' or 'text'")
    for style in styles:
        if style not in LINE_STYLES:
            raise ValueError(f"style {style!r}: use one of {LINE_STYLES}")
    bank = GlyphBank(images, labels, classes)

    def draw(style: LineStyle, rng: np.random.Generator) -> tuple[str, bytes, str]:
        text = random_vin(rng) if kind == "vin" else random_text(rng, bank.available)
        photo = render_line(text, bank, None, classes, style, rng)
        return (text, *encode_photo(photo.image, rng))

    return write_photo_set(out_dir, n, styles, seed, draw)  # type: ignore[return-value]


PhotoDrawer = Callable[[str, np.random.Generator], tuple[str, bytes, str]]
"""Draws one photo of a style: (its text, its encoded bytes, the file suffix)."""


def write_photo_set(
    out_dir: str | Path, n: int, styles: Sequence[str], seed: int, draw: PhotoDrawer
) -> list[tuple[Path, str, str]]:
    """`n` photos drawn by `draw` (styles taken in turn, one random generator seeded `seed` for all), each written
    atomically, and `out_dir`/labels.csv: `path,text,style` per photo, paths relative to `out_dir`, as `bench_read
    --photo-dir` reads them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written: list[tuple[Path, str, str]] = []
    for index in range(n):
        style = styles[index % len(styles)]
        text, data, suffix = draw(style, rng)
        path = out_dir / f"{index:06d}_{style}{suffix}"
        write_atomically(path, lambda tmp, data=data: tmp.write_bytes(data))
        written.append((path, text, style))

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["path", "text", "style"])
            writer.writerows((path.name, text, style) for path, text, style in written)

    write_atomically(out_dir / "labels.csv", write_csv)
    return written
