"""The ink of a photo of one handwritten line, cleaned for reading: the paper's tone and uneven light divided out,
thresholded, the tilt straightened and a form's printed box lines removed. The segmenter and the line model both
start from it."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from emnist_lit.images import to_grayscale


def rotate_about_centre(layer: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """`layer` (float) rotated by `angle` degrees about its centre onto a canvas enlarged to hold all of it (new
    area 0), and the 2x3 matrix mapping input (x, y, 1) to output coordinates."""
    height, width = layer.shape
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    new_w = math.ceil(abs(width * cos) + abs(height * sin))
    new_h = math.ceil(abs(width * sin) + abs(height * cos))
    cx, cy, ncx, ncy = width / 2, height / 2, new_w / 2, new_h / 2
    inverse = (cos, sin, cx - cos * ncx - sin * ncy, -sin, cos, cy + sin * ncx - cos * ncy)
    rotated = Image.fromarray(np.ascontiguousarray(layer, dtype=np.float32), mode="F").transform(
        (new_w, new_h), Image.Transform.AFFINE, inverse, resample=Image.Resampling.BILINEAR, fillcolor=0.0
    )
    forward = np.array([[cos, -sin, ncx - cos * cx + sin * cy], [sin, cos, ncy - sin * cx - cos * cy]])
    return np.asarray(rotated, dtype=np.float32), forward


def _working_gray(image: Image.Image, max_side: int) -> tuple[np.ndarray, float]:
    """The image as float grey in [0, 1], shrunk by a whole factor first when its longer side exceeds max_side
    (so a 200-megapixel photo costs one box filter, not minutes), and that factor."""
    factor = max(1, math.ceil(max(image.size) / max_side))
    if factor > 1:
        if image.mode not in ("L", "RGB", "RGBA", "LA", "I", "F"):
            image = image.convert("I" if image.mode.startswith("I;16") else "RGBA")
        image = image.reduce(factor)
    gray = to_grayscale(image).numpy()
    return np.nan_to_num(gray, nan=1.0).astype(np.float32, copy=False), float(factor)


def _ink_map(gray: np.ndarray) -> np.ndarray:
    """How much darker than the paper around it each pixel is, in [0, 1] (light ink on a dark page is turned
    first): the paper's own tone and uneven light are divided out by a coarse grey closing."""
    dark_ink = 1.0 - gray if np.median(gray) < 0.5 else gray
    height, width = dark_ink.shape
    step = max(1, round(max(height, width) / 400))
    trimmed = dark_ink[: height - height % step or height, : width - width % step or width]
    small = trimmed.reshape(trimmed.shape[0] // step, step, trimmed.shape[1] // step, step).mean(axis=(1, 3))
    window = max(3, round(0.3 * min(height, width) / step)) | 1
    paper_small = ndimage.uniform_filter(ndimage.grey_closing(small, size=(window, window)), size=window)
    paper = np.asarray(Image.fromarray(paper_small, mode="F").resize((width, height), Image.Resampling.BILINEAR))
    return np.clip((paper - dark_ink) / np.maximum(paper, 0.05), 0.0, 1.0)


def _otsu(values: np.ndarray) -> float:
    """The threshold between dark and bright that keeps each side's spread smallest (Otsu's)."""
    counts, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)
    total = weight[-1]
    mean = np.cumsum(counts * centres)
    between = (mean[-1] * weight / total - mean) ** 2 / np.maximum(weight * (total - weight), 1)
    return float(centres[int(np.argmax(between[:-1]))])


def _binarise(ink: np.ndarray, high: float) -> np.ndarray:
    """Ink pixels by hysteresis: faint pixels count when they touch a clearly dark one, so thin stroke parts stay
    attached to their character while faint noise goes."""
    low_mask = ink > high * 0.5
    labels, count = ndimage.label(low_mask, structure=np.ones((3, 3)))
    if count == 0:
        return low_mask
    strong = np.zeros(count + 1, bool)
    strong[labels[ink > high]] = True
    strong[0] = False
    return strong[labels]


def _skew_angle(binary: np.ndarray) -> float:
    """The rotation (degrees, within +/- 8) that makes the ink's rows sharpest: box lines and the line of text
    become horizontal."""
    ys, xs = np.nonzero(binary)
    if len(ys) < 20:
        return 0.0
    stride = max(1, len(ys) // 5000)
    ys, xs = ys[::stride].astype(np.float64), xs[::stride].astype(np.float64)

    def sharpness(angle: float) -> float:
        rad = math.radians(angle)
        rows = np.round(xs * math.sin(rad) + ys * math.cos(rad))
        counts = np.bincount((rows - rows.min()).astype(np.int64))
        return float(np.dot(counts, counts))

    best = 0.0
    for span, step in ((8.0, 1.0), (1.0, 0.25), (0.25, 0.05)):
        angles = best + np.arange(-span, span + step / 2, step)
        best = float(max(angles, key=sharpness))
    return best


def _runs(binary: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Pixels lying on a straight run of at least `length` ink pixels along `axis` (a 1-D opening)."""
    length = max(3, length) | 1
    eroded = ndimage.minimum_filter1d(binary.view(np.uint8), length, axis=axis)
    return ndimage.maximum_filter1d(eroded, length, axis=axis).astype(bool)


def _closing(binary: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Gaps shorter than `length` along `axis` filled (a 1-D closing)."""
    length = max(3, length) | 1
    dilated = ndimage.maximum_filter1d(binary.view(np.uint8), length, axis=axis)
    return ndimage.minimum_filter1d(dilated, length, axis=axis).astype(bool)


def _clusters(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of consecutive True values."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _is_thin_ridge(coverage: np.ndarray, start: int, stop: int, text_height: float) -> bool:
    """Whether rows start:stop, covered by long runs, are a printed line: thin, with rows a little above and below
    it far less covered (through the middle of touching characters the rows around are covered too)."""
    thickness = stop - start
    if thickness > max(5, 0.15 * text_height):
        return False
    away = thickness + 3
    around = [
        coverage[row]
        for row in (start - away, start - away - 2, stop - 1 + away, stop + 1 + away)
        if 0 <= row < len(coverage)
    ]
    return max(around, default=0) < 0.3 * coverage[start:stop].max()


def _spans_the_line(columns: np.ndarray, text_width: float, text_height: float) -> bool:
    """Whether long runs in these columns make one printed line: across the whole text and longer than a character
    is high, broken at most by the narrow gaps between separate boxes (flat strokes of characters that happen to
    align leave wide gaps; one character's bar is short)."""
    runs = _clusters(columns)
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(runs)]
    span = runs[-1][1] - runs[0][0]
    return span >= max(0.8 * text_width, 2 * text_height) and max(gaps, default=0) <= 0.5 * text_height


def _remove_form_lines(binary: np.ndarray, faint: np.ndarray) -> tuple[np.ndarray, int]:
    """The ink without a form's printed box lines: rows mostly covered by long horizontal runs, then vertical runs
    spanning from the top line to the bottom one, both looked for in `faint` (ink at a lower threshold: printed
    lines are often paler than the pen, and stay long and straight where noise does not). Strokes crossing a
    removed line are bridged back. Returns the cleaned ink and how many lines went."""
    ys, xs = np.nonzero(binary)
    text_height = max(8.0, float(np.percentile(ys, 97) - np.percentile(ys, 3)))
    text_width = max(8.0, float(np.percentile(xs, 99) - np.percentile(xs, 1)))
    if faint.sum(axis=1).max() < 0.5 * text_width:
        return binary, 0
    tolerant = ndimage.maximum_filter1d(faint.view(np.uint8), 3, axis=0).astype(bool)
    horizontal = _runs(tolerant, round(0.6 * text_height), axis=1) & faint
    coverage = horizontal.sum(axis=1)
    rows = [
        (start, stop)
        for start, stop in _clusters(coverage >= 0.5 * text_width)
        if _is_thin_ridge(coverage, start, stop, text_height)
        and _spans_the_line(horizontal[start:stop].any(axis=0), text_width, text_height)
    ]
    if not rows:
        return binary, 0
    line_rows = np.zeros(len(coverage), bool)
    for start, stop in rows:
        line_rows[max(start - 1, 0) : stop + 1] = True
    h_lines = horizontal & line_rows[:, None]
    v_lines = np.zeros_like(faint)
    if len(rows) >= 2:
        (top_start, top_stop), (bottom_start, bottom_stop) = rows[0], rows[-1]
        band = bottom_start - top_stop
        tolerant = ndimage.maximum_filter1d(faint.view(np.uint8), 3, axis=1).astype(bool)
        vertical = _runs(tolerant, round(0.8 * band), axis=0) & faint
        vertical[: max(top_start - 2, 0)] = False
        vertical[bottom_stop + 2 :] = False
        labels, _ = ndimage.label(vertical)
        for index, found in enumerate(ndimage.find_objects(labels), start=1):
            if found is not None and found[0].start <= top_stop + 2 and found[0].stop >= bottom_start - 2:
                v_lines |= labels == index
    rest = binary & ~h_lines & ~v_lines
    thickness = max(stop - start for start, stop in rows)
    bridged_h = _closing(rest, thickness + 4, axis=0)
    bridged_v = _closing(rest, thickness + 4, axis=1)
    kept = rest | (h_lines & bridged_h) | (v_lines & ~h_lines & bridged_v)
    kept, ticks = _remove_comb_ticks(kept, rows, text_height)
    return kept, len(rows) + int(v_lines.any() or ticks)


COMB_TICKS = 4
"""At least this many short vertical strokes of one height standing on a removed line make a comb's ticks."""


def _remove_comb_ticks(kept: np.ndarray, rows: list[tuple[int, int]], text_height: float) -> tuple[np.ndarray, bool]:
    """The ink without the ticks of a form's comb (a baseline with a short mark between cells): once the baseline
    is gone they stand alone, and a segmenter would count each as a character. Ticks are thin, shorter than the
    text, touch the removed line and share one height; a character's stroke that touches the line is none of that
    four times over."""
    near = np.zeros(kept.shape[0], bool)
    for start, stop in rows:
        near[max(start - 3, 0) : stop + 3] = True
    labels, _ = ndimage.label(kept, structure=np.ones((3, 3)))
    candidates = []
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        height, width = found[0].stop - found[0].start, found[1].stop - found[1].start
        if height <= 0.6 * text_height and height >= 2 * width and near[found[0]].any():
            candidates.append((index, height))
    if len(candidates) < COMB_TICKS:
        return kept, False
    typical = float(np.median([height for _, height in candidates]))
    ticks = [index for index, height in candidates if abs(height - typical) <= 0.15 * typical + 1]
    if len(ticks) < COMB_TICKS:
        return kept, False
    return kept & ~np.isin(labels, ticks), True


@dataclass
class LineInk:
    """A photo's ink, straightened: `ink` (how much darker than the paper each pixel is, in [0, 1]), `binary` (the
    ink pixels, box lines removed), `threshold` (between ink and paper in `ink`), `forward` (2x3: working-image
    (x, y, 1) to `ink` coordinates) and `scale` (input pixels per working pixel)."""

    ink: np.ndarray
    binary: np.ndarray
    threshold: float
    forward: np.ndarray
    scale: float


def find_line_ink(image: Image.Image, max_side: int = 2048) -> LineInk | str:
    """The photo's cleaned ink, or a note saying why there is none to read ('blank: ...')."""
    gray, scale = _working_gray(image, max_side)
    if gray.size == 0 or min(gray.shape) < 3:
        return "blank: image too small"
    ink = ndimage.gaussian_filter(_ink_map(gray), 0.7)
    if ink.max() < 0.2 or np.count_nonzero(ink > 0.12) < 20:
        return "blank: no ink found"
    threshold = max(_otsu(ink[::2, ::2]), 0.08)
    angle = _skew_angle(_binarise(ink, threshold))
    forward = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    if abs(angle) >= 0.1:
        ink, forward = rotate_about_centre(ink, angle)
    binary = _binarise(ink, threshold)
    if binary.sum() < 10:
        return "blank: no ink found"
    binary, _ = _remove_form_lines(binary, ink > 0.3 * threshold)
    if not binary.any():
        return "blank: nothing but box lines"
    return LineInk(ink, binary, threshold, forward, scale)


LINE_HEIGHT = 28
"""Height of a line model's input: EMNIST's, so a character model's convolutions can start it."""

TEXT_HEIGHT = 20
"""Height the ink of a line is scaled to inside LINE_HEIGHT, as EMNIST centres a character's ink in its 28 pixels."""

LINE_MARGIN = 4
"""Blank columns left and right of the ink."""


def count_ink_bands(binary: np.ndarray) -> int:
    """How many lines of writing the ink holds: runs of inked rows, joined across gaps under a third of the tallest
    run, counted when at least half as tall as it (a dot or a stray stroke is not a line)."""
    profile = binary.sum(axis=1)
    runs = _clusters(profile > max(2, 0.01 * profile.max()))
    if not runs:
        return 0
    tallest = max(stop - start for start, stop in runs)
    bands = [list(runs[0])]
    for start, stop in runs[1:]:
        if start - bands[-1][1] < tallest / 3:
            bands[-1][1] = stop
        else:
            bands.append([start, stop])
    return sum(stop - start >= tallest / 2 for start, stop in bands)


def to_line_image(found: LineInk) -> np.ndarray:
    """The line as a line model reads it: (LINE_HEIGHT, W) float in [0, 1], light ink on dark, `line_crop` scaled
    to TEXT_HEIGHT rows of ink, with LINE_MARGIN blank columns either side."""
    return scale_line(line_crop(found))


def line_crop(found: LineInk) -> np.ndarray:
    """The photo's line of ink at its own resolution, float in [0, 1], light on dark: cropped to the ink (specks a
    twentieth of a typical blob or smaller dropped), strokes scaled so that half of their pixels saturate (EMNIST
    strokes are bright through their width)."""
    labels, count = ndimage.label(found.binary, structure=np.ones((3, 3)))
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    kept = np.concatenate([[False], areas > 0.05 * np.median(areas)])[labels]
    rows, cols = np.flatnonzero(kept.any(axis=1)), np.flatnonzero(kept.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    mask = ndimage.binary_dilation(kept[top:bottom, left:right])
    crop = np.where(mask, found.ink[top:bottom, left:right], 0.0)
    core = crop[kept[top:bottom, left:right]]
    strength = float(np.median(core)) if core.size else 1.0
    return np.clip(crop / max(strength, 1e-3), 0.0, 1.0).astype(np.float32)


def scale_line(crop: np.ndarray) -> np.ndarray:
    """A `line_crop` as the line model's input: TEXT_HEIGHT rows of ink centred in LINE_HEIGHT, LINE_MARGIN blank
    columns either side."""
    width = max(1, round(crop.shape[1] * TEXT_HEIGHT / crop.shape[0]))
    resized = np.asarray(Image.fromarray(crop, mode="F").resize((width, TEXT_HEIGHT), Image.Resampling.BILINEAR))
    line = np.zeros((LINE_HEIGHT, width + 2 * LINE_MARGIN), np.float32)
    offset = (LINE_HEIGHT - TEXT_HEIGHT) // 2
    line[offset : offset + TEXT_HEIGHT, LINE_MARGIN : LINE_MARGIN + width] = np.clip(resized, 0.0, 1.0)
    return line
