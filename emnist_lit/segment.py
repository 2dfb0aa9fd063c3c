"""Split a photo of one handwritten line (a VIN on a form, any short string) into character images prepared like
EMNIST samples, left to right, so a character classifier can read the line."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from emnist_lit.line_ink import find_line_ink

Box = tuple[int, int, int, int]
"""(left, top, right, bottom) in pixels of the input image, right and bottom exclusive."""

MAX_COMPONENTS = 512
"""More ink blobs than this is no line of characters (a page, a texture): only the largest are looked at."""


@dataclass
class Segmentation:
    """The characters of a line, left to right: `characters` (N, 1, 28, 28) light ink on dark in [0, 1], `boxes`
    where each was found in the input image, and `note` saying why the result may be wrong ('' when nothing
    looked odd), for the caller to mark the reading unverified."""

    characters: torch.Tensor = field(default_factory=lambda: torch.empty(0, 1, 28, 28))
    boxes: list[Box] = field(default_factory=list)
    note: str = ""
    several_lines: bool = False
    """Ink in two or more bands with a blank gap between them: no reading of it can be trusted as one line."""

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass
class _Piece:
    """One candidate character: its box in the working image and the component labels (and columns) it owns."""

    left: int
    top: int
    right: int
    bottom: int
    labels: list[int]
    area: int
    columns: tuple[int, int] | None = None

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def centre_x(self) -> float:
        return (self.left + self.right) / 2

    def merged(self, other: _Piece) -> _Piece:
        return _Piece(
            min(self.left, other.left),
            min(self.top, other.top),
            max(self.right, other.right),
            max(self.bottom, other.bottom),
            self.labels + other.labels,
            self.area + other.area,
        )


def _overlap(a0: int, a1: int, b0: int, b1: int) -> int:
    return min(a1, b1) - max(a0, b0)


def _components(binary: np.ndarray) -> tuple[np.ndarray, list[_Piece]]:
    """Connected ink blobs (8-connected) as pieces, at most MAX_COMPONENTS of the largest."""
    labels, count = ndimage.label(binary, structure=np.ones((3, 3)))
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    pieces = [
        _Piece(found[1].start, found[0].start, found[1].stop, found[0].stop, [index], int(areas[index]))
        for index, found in enumerate(ndimage.find_objects(labels), start=1)
        if found is not None
    ]
    if len(pieces) > MAX_COMPONENTS:
        pieces = sorted(pieces, key=lambda p: -p.area)[:MAX_COMPONENTS]
    return labels, pieces


def _drop_specks(pieces: list[_Piece]) -> tuple[list[_Piece], float]:
    """Pieces without noise specks and box-line leftovers, and the typical character height."""
    big_area = np.percentile([p.area for p in pieces], 90)
    big = [p for p in pieces if p.area >= 0.1 * big_area]
    char_height = float(np.median([p.height for p in big]))
    typical_area = float(np.median([p.area for p in big]))
    kept = [p for p in pieces if max(p.height, p.width) >= 0.25 * char_height and p.area >= 0.03 * typical_area]
    band_top = np.median([p.top for p in big])
    band_bottom = np.median([p.bottom for p in big])
    kept = [p for p in kept if _overlap(p.top, p.bottom, band_top, band_bottom) > 0 or p.area >= 0.5 * typical_area]
    return kept, char_height


def _ink_bands(pieces: list[_Piece], char_height: float) -> int:
    """How many horizontal bands of writing the pieces form: their vertical extents merged wherever they overlap or
    lie closer than a third of a character, bands shorter than half a character ignored."""
    bands: list[list[int]] = []
    for piece in sorted(pieces, key=lambda p: p.top):
        if bands and piece.top <= bands[-1][1] + char_height / 3:
            bands[-1][1] = max(bands[-1][1], piece.bottom)
        else:
            bands.append([piece.top, piece.bottom])
    return sum(bottom - top >= char_height / 2 for top, bottom in bands)


def _attach_small(pieces: list[_Piece], char_height: float) -> list[_Piece]:
    """Give each small fragment (a stroke end cut off by blur or a removed box line, a detached bar) to the
    character sharing most of its columns; drop it when it shares none."""
    typical_area = float(np.median([p.area for p in pieces]))
    small = [p.area < 0.15 * typical_area and p.height < 0.5 * char_height for p in pieces]
    big = [p for p, is_small in zip(pieces, small, strict=True) if not is_small]
    if not big:
        return pieces
    for piece, is_small in zip(pieces, small, strict=True):
        if not is_small:
            continue
        shares = [_overlap(piece.left, piece.right, b.left, b.right) for b in big]
        best = int(np.argmax(shares))
        if shares[best] > 0:
            big[best] = big[best].merged(piece)
    return big


def _merge_stacked(pieces: list[_Piece]) -> list[_Piece]:
    """Join pieces of one broken character: one above the other, sharing most of their columns."""
    pieces = sorted(pieces, key=lambda p: p.centre_x)
    changed = True
    while changed and len(pieces) > 1:
        changed = False
        for i in range(len(pieces) - 1):
            a, b = pieces[i], pieces[i + 1]
            x_share = _overlap(a.left, a.right, b.left, b.right) / max(min(a.width, b.width), 1)
            y_share = _overlap(a.top, a.bottom, b.top, b.bottom) / max(min(a.height, b.height), 1)
            if x_share >= 0.6 and (y_share <= 0.3 or min(a.area, b.area) < 0.25 * max(a.area, b.area)):
                pieces[i : i + 2] = [a.merged(b)]
                changed = True
                break
    return pieces


WIDTH_WEIGHT = 3.0
"""How much a character's width straying from the typical width costs, against cutting through one stroke."""

NARROW_DISCOUNT = 0.2
"""Narrow characters (1, I, J, L) are common, so narrowness costs this fraction of the same excess width."""

EXTRA_COST = 1.0
"""With no count given, what one more character than the blobs show must save in cost to be cut out."""

MISSING_COST = 3.0
"""What one character fewer than expected costs: a cut dearer than this is not made just to reach the count."""

READER_WEIGHT = 0.5
"""How much a part's unlikeness to any character (minus the log of the reader's top probability) costs."""

HEIGHT_WEIGHT = 3.0
"""How much a part much lower than a character (a bar or stroke end cut off its character) costs."""


def _width_cost(widths: np.ndarray, char_width: float) -> np.ndarray:
    """Cost of pieces this wide: zero at the typical width, less for narrow ones (1, I, J are) than wide ones."""
    log_ratio = np.log(np.maximum(widths, 1) / char_width)
    return WIDTH_WEIGHT * np.where(log_ratio < 0, NARROW_DISCOUNT, 1.0) * log_ratio**2


def _column_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every vertical run of ink in `mask`: its column and its length."""
    height = mask.shape[0]
    flat = np.vstack([mask, np.zeros((1, mask.shape[1]), bool)]).T.ravel()
    starts = flat & ~np.concatenate([[False], flat[:-1]])
    run_ids = np.cumsum(starts) * flat
    lengths = np.bincount(run_ids)[1:]
    columns = np.flatnonzero(starts) // (height + 1)
    return columns, lengths


def _stroke_width(masks: list[np.ndarray]) -> float:
    """Typical pen width: the median length of vertical or of horizontal ink runs, whichever is shorter (most runs
    cross a stroke; along upright or flat strokes they run long)."""
    vertical = np.concatenate([_column_runs(mask)[1] for mask in masks])
    horizontal = np.concatenate([_column_runs(mask.T)[1] for mask in masks])
    if not len(vertical):
        return 1.0
    return max(min(float(np.median(vertical)), float(np.median(horizontal))), 1.0)


def _crossings(mask: np.ndarray, stroke: float) -> np.ndarray:
    """Per column, the strokes a vertical cut there would go through: one per run of ink, less for a run thinner
    than a stroke (where touching characters meet), so a cut along a stroke costs one, like a cut across it."""
    columns, lengths = _column_runs(mask)
    return np.bincount(columns, weights=np.minimum(lengths / stroke, 1.0), minlength=mask.shape[1])


@dataclass
class _Cuts:
    """The best way to cut one blob into 1, 2, ... parts: cost[k - 1] and the cut columns of each."""

    cost: list[float]
    columns: list[list[int]]


def _range_extremes(values: np.ndarray, starts: np.ndarray, stops: np.ndarray, reduce: np.ufunc) -> np.ndarray:
    """reduce(values[start:stop]) for many ranges at once (stop > start), from a sparse table of power-of-two
    windows: two overlapping lookups per range."""
    table = [values]
    while 2 ** len(table) <= len(values):
        half = 2 ** (len(table) - 1)
        table.append(reduce(table[-1][:-half], table[-1][half:]))
    lengths = np.maximum(stops - starts, 1)
    levels = np.floor(np.log2(lengths)).astype(np.int64)
    padded = np.full((len(table), len(values)), values[0])
    for level, row in enumerate(table):
        padded[level, : len(row)] = row
    return reduce(padded[levels, starts], padded[levels, np.maximum(stops - 2**levels, starts)])


def _part_costs(mask: np.ndarray, steps: np.ndarray, char_width: float, char_height: float) -> np.ndarray:
    """cost[end, i]: how unlike one character the columns [end - steps[i], end) of the blob are, by their width
    and by the height of their ink (a cut-off bar or stroke end is much lower than a character)."""
    width = mask.shape[1]
    inked = mask.any(axis=0)
    tops = np.where(inked, mask.argmax(axis=0), np.inf)
    bottoms = np.where(inked, mask.shape[0] - mask[::-1].argmax(axis=0), -np.inf)
    ends = np.arange(width + 1)[:, None]
    starts = np.clip(ends - steps[None, :], 0, width - 1)
    stops = np.clip(ends, starts + 1, width)
    heights = _range_extremes(bottoms, starts, stops, np.maximum) - _range_extremes(tops, starts, stops, np.minimum)
    too_low = np.maximum(np.log(0.6 * char_height / np.maximum(np.nan_to_num(heights, neginf=0.0), 1.0)), 0.0)
    cost = _width_cost(steps.astype(np.float64), char_width)[None, :] + HEIGHT_WEIGHT * too_low**2
    return np.where(ends >= steps[None, :], cost, np.inf)


def _whole_cost(width: float, height: float, char_width: float, char_height: float) -> float:
    """How unlike one character a blob this wide and high is."""
    too_low = max(math.log(0.6 * char_height / max(height, 1.0)), 0.0)
    return float(_width_cost(np.array([float(width)]), char_width)[0]) + HEIGHT_WEIGHT * too_low**2


def _best_cuts(
    mask: np.ndarray, crossings: np.ndarray, char_width: float, char_height: float, max_parts: int, stroke: float
) -> _Cuts:
    """For each number of parts up to max_parts, the cuts minimising the strokes cut through plus how unlike a
    character each part is: a shortest path over columns (dynamic programming), each part between a fifth and
    thrice the typical width, and no narrower than a pen stroke."""
    width = mask.shape[1]
    rows = np.flatnonzero(mask.any(axis=1))
    cost = [_whole_cost(width, float(rows[-1] - rows[0] + 1) if len(rows) else 0.0, char_width, char_height)]
    columns: list[list[int]] = [[]]
    if max_parts < 2:
        return _Cuts(cost, columns)
    min_w = max(2, round(0.2 * char_width), round(stroke))
    steps = np.arange(min_w, max(min_w, min(round(3 * char_width), width)) + 1)
    part_cost = _part_costs(mask, steps, char_width, char_height)
    positions = np.arange(width + 1)
    best = np.full(width + 1, np.inf)
    best[0] = 0.0
    parents = []
    cut_cost = np.append(crossings, np.inf)
    for _ in range(1, max_parts):
        starts = positions[:, None] - steps[None, :]
        candidates = best[np.clip(starts, 0, width)] + part_cost
        choice = np.argmin(candidates, axis=1)
        best = candidates[positions, choice] + cut_cost
        parents.append(starts[positions, choice])
        tail = width - positions[:-1]
        in_range = (tail >= steps[0]) & (tail <= steps[-1])
        tail_cost = part_cost[width, np.clip(tail - steps[0], 0, len(steps) - 1)]
        total = np.where(in_range, best[:-1] + tail_cost, np.inf)
        last = int(np.argmin(total))
        if not np.isfinite(total[last]):
            cost.append(np.inf)
            columns.append([])
            continue
        path = [last]
        for parent in reversed(parents[1:]):
            path.append(int(parent[path[-1]]))
        cost.append(float(total[last]))
        columns.append(sorted(path))
    return _Cuts(cost, columns)


def _split(labels: np.ndarray, piece: _Piece, cuts: list[int]) -> list[_Piece]:
    """The piece cut at the given columns (relative to its left edge), each part shrunk to its own ink."""
    window = _owned(labels[piece.top : piece.bottom, piece.left : piece.right], piece.labels)
    bounds = [0, *cuts, piece.width]
    result = []
    for start, stop in itertools.pairwise(bounds):
        rows = np.flatnonzero(window[:, start:stop].any(axis=1))
        if stop <= start or not len(rows):
            continue
        result.append(
            _Piece(
                piece.left + start,
                piece.top + int(rows[0]),
                piece.left + stop,
                piece.top + int(rows[-1]) + 1,
                piece.labels,
                int(window[:, start:stop].sum()),
                (piece.left + start, piece.left + stop),
            )
        )
    return result


def _cheapest(option: _Cuts) -> int:
    """With no count to reach, how many parts a blob holds: each character beyond the first must pay for itself
    (a wide M or W is not two characters)."""
    return int(np.argmin(np.array(option.cost) + EXTRA_COST * np.arange(len(option.cost)))) + 1


def _allocate(options: list[_Cuts], total: int) -> list[int]:
    """How many parts to cut each blob into so that they add up to `total` (or as near below as possible) at the
    least summed cost: a small knapsack over blobs."""
    best = np.full(total + 1, np.inf)
    best[0] = 0.0
    choices = []
    for option in options:
        cost = np.array(option.cost)
        candidates = np.full((total + 1, len(cost)), np.inf)
        for k in range(1, len(cost) + 1):
            candidates[k:, k - 1] = best[: total + 1 - k] + cost[k - 1]
        choice = np.argmin(candidates, axis=1)
        best = candidates[np.arange(total + 1), choice]
        choices.append(choice + 1)
    reachable = np.flatnonzero(np.isfinite(best))
    shortfall = MISSING_COST * (total - np.arange(total + 1))
    left = int(np.argmin(best + shortfall)) if len(reachable) else len(options)
    parts = []
    for choice in reversed(choices):
        parts.append(int(choice[left]) if len(reachable) else 1)
        left -= parts[-1]
    return parts[::-1]


def _fit_count(
    labels: np.ndarray,
    pieces: list[_Piece],
    expected: int | None,
    char_height: float,
    unlikeness: Callable[[list[_Piece]], np.ndarray] | None = None,
) -> tuple[list[_Piece], str]:
    """Split blobs of touching characters where cutting is cheaper than their odd width, or, given the expected
    count, choose the cuts (and joins of the closest fragments) that reach it at the least cost, while plausible.
    With `unlikeness` (how little each piece looks like a character to a reader), the numbers of parts next to the
    best guess are weighed by it too. Returns the pieces and a note when the count could not be met."""
    widths = np.array([p.width for p in pieces], dtype=np.float64)
    extent = max(p.right for p in pieces) - min(p.left for p in pieces)
    free_width = max(min(float(np.median(widths)), 0.7 * char_height), 2.0)
    looks_like = int(np.maximum(np.round(widths / free_width), 1).sum())
    note = ""
    if expected and not (len(pieces) / 2 <= expected <= 1.5 * looks_like + 1):
        note = f"expected {expected} characters, the line looks like {looks_like}"
        expected = None
    char_width = min(float(np.median(widths)), extent / expected) if expected else free_width
    char_width = max(char_width, 0.45 * char_height, 2.0)
    while expected and len(pieces) > expected:
        costs = []
        for i in range(len(pieces) - 1):
            a, b = pieces[i], pieces[i + 1]
            joined = max(a.right, b.right) - min(a.left, b.left)
            gap = max(0, b.left - a.right) / char_width
            change = _width_cost(np.array([joined, a.width, b.width], dtype=np.float64), char_width)
            costs.append((change[0] - change[1] - change[2] + 2 * gap, joined, i))
        _, joined, i = min(costs)
        if joined > 2 * char_width:
            break
        pieces[i : i + 2] = [pieces[i].merged(pieces[i + 1])]

    spare = max(expected - len(pieces), 0) if expected else 0
    stroke = 0.0
    options = []
    for piece in pieces:
        most = max(1, min(piece.width // max(2, round(0.2 * char_width)), 1 + (spare if expected else 8)))
        if most == 1 or (not expected and piece.width < 1.4 * char_width):
            options.append(_Cuts([_whole_cost(piece.width, piece.height, char_width, char_height)], [[]]))
            continue
        stroke = stroke or _stroke_width([labels > 0])
        mask = _owned(labels[piece.top : piece.bottom, piece.left : piece.right], piece.labels)
        options.append(_best_cuts(mask, _crossings(mask, stroke), char_width, char_height, most, stroke))
    parts = _allocate(options, expected) if expected else [_cheapest(o) for o in options]
    if unlikeness is not None and (any(k > 1 for k in parts) or (expected and len(pieces) != expected)):
        options = _reweigh(labels, pieces, options, parts, unlikeness)
        parts = _allocate(options, expected) if expected else [_cheapest(o) for o in options]
    result = []
    for piece, option, k in zip(pieces, options, parts, strict=True):
        result += _split(labels, piece, option.columns[k - 1]) if k > 1 else [piece]
    if expected and len(result) != expected:
        note = f"found {len(result)} characters, expected {expected}"
    return result, note


def _reweigh(
    labels: np.ndarray,
    pieces: list[_Piece],
    options: list[_Cuts],
    parts: list[int],
    unlikeness: Callable[[list[_Piece]], np.ndarray],
) -> list[_Cuts]:
    """The options narrowed to one part fewer or more than the first guess for each blob, each cost raised by how
    unlike characters its parts look to the reader (read in one batch)."""
    candidates = []
    for piece, option, k in zip(pieces, options, parts, strict=True):
        for count in (k - 1, k, k + 1):
            if 1 <= count <= len(option.cost) and np.isfinite(option.cost[count - 1]):
                split = _split(labels, piece, option.columns[count - 1]) if count > 1 else [piece]
                candidates.append((piece, count, split))
    flat = [part for _, _, split in candidates for part in split]
    scores = iter(unlikeness(flat).tolist()) if flat else iter(())
    reweighed = {id(piece): [np.inf] * len(option.cost) for piece, option in zip(pieces, options, strict=True)}
    for piece, count, split in candidates:
        option = options[pieces.index(piece)]
        reweighed[id(piece)][count - 1] = option.cost[count - 1] + READER_WEIGHT * sum(next(scores) for _ in split)
    return [_Cuts(reweighed[id(piece)], option.columns) for piece, option in zip(pieces, options, strict=True)]


def _crop(ink: np.ndarray, labels: np.ndarray, piece: _Piece) -> np.ndarray:
    """The piece's own ink (neighbours' ink and box lines masked out, its faint edge kept), scaled so that half
    of its ink saturates: EMNIST strokes are bright through their width, and a reader trained on them reads bold
    strokes better than faint ones. With a dark margin."""
    top, bottom = max(piece.top - 1, 0), min(piece.bottom + 1, ink.shape[0])
    left, right = max(piece.left - 1, 0), min(piece.right + 1, ink.shape[1])
    mask = _owned(labels[top:bottom, left:right], piece.labels)
    if piece.columns is not None:
        columns = np.arange(left, right)
        mask &= (columns >= piece.columns[0]) & (columns < piece.columns[1])
    window = ink[top:bottom, left:right]
    core = window[mask]
    strength = float(np.partition(core, core.size // 2)[core.size // 2]) if core.size else 1.0
    mask = ndimage.maximum_filter(mask.view(np.uint8), size=3).astype(bool)
    padded = np.zeros((bottom - top + 4, right - left + 4), np.float32)
    padded[2:-2, 2:-2] = np.clip(np.where(mask, window, 0.0) / max(strength, 1e-3), 0.0, 1.0)
    return padded


def crop_to_emnist(crop: np.ndarray, size: int = 28, border: int = 2) -> torch.Tensor | None:
    """`emnist_lit.images.prepare_image` for a crop that is already light ink on a dark margin, in numpy and PIL
    (whose antialiased resize torch's follows) at a fraction of its per-call cost; None when it holds no ink."""
    peak = float(crop.max())
    if peak <= 0.05:
        return None
    gray = crop / peak
    rows = np.flatnonzero((gray > 0.3).any(axis=1))
    cols = np.flatnonzero((gray > 0.3).any(axis=0))
    ink = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = ink.shape
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    square = np.zeros((side, side), np.float32)
    square[top : top + height, left : left + width] = ink
    inner = size - 2 * border
    resized = np.asarray(Image.fromarray(square, mode="F").resize((inner, inner), Image.Resampling.BILINEAR))
    out = torch.zeros(1, size, size)
    out[0, border:-border, border:-border] = torch.from_numpy(np.clip(resized, 0.0, 1.0))
    return out


def _owned(labels: np.ndarray, owners: list[int]) -> np.ndarray:
    """Where `labels` is one of `owners`."""
    return labels == owners[0] if len(owners) == 1 else np.isin(labels, owners)


Reader = Callable[[torch.Tensor], torch.Tensor]
"""A character reader's confidence: (N, 1, 28, 28) EMNIST-like images -> (N,) top class probability in (0, 1]."""


def segment_line(
    image: Image.Image, expected_count: int | None = None, max_side: int = 2048, reader: Reader | None = None
) -> Segmentation:
    """Find the characters of one handwritten line, left to right. Never raises on odd input (blank, one character,
    several lines, a page, light ink on dark): the result is a best effort and `note` says what looked wrong.
    `expected_count` (17 for a VIN) decides how many touching characters to split or fragments to join; a
    `reader` (e.g. `lambda x: model(x).softmax(1).amax(1)`) helps decide where touching characters part."""
    try:
        return _segment(image, expected_count, max_side, reader)
    except Exception as err:  # the caller marks the reading unverified; one odd photo must not stop a batch
        return Segmentation(note=f"failed: {type(err).__name__}: {err}")


def _segment(image: Image.Image, expected_count: int | None, max_side: int, reader: Reader | None) -> Segmentation:
    found = find_line_ink(image, max_side)
    if isinstance(found, str):
        return Segmentation(note=found)
    ink, binary, forward, scale = found.ink, found.binary, found.forward, found.scale
    labels, pieces = _components(binary)
    notes = ["more ink blobs than a line holds"] if len(pieces) == MAX_COMPONENTS else []
    pieces, char_height = _drop_specks(pieces)
    several_lines = _ink_bands(pieces, char_height) > 1
    if several_lines:
        notes.append("more than one line of writing")
    pieces = _merge_stacked(_attach_small(pieces, char_height))
    prepared: dict[tuple, torch.Tensor | None] = {}

    def prepare(piece: _Piece) -> torch.Tensor | None:
        key = (tuple(piece.labels), piece.left, piece.right, piece.columns)
        if key not in prepared:
            prepared[key] = crop_to_emnist(_crop(ink, labels, piece))
        return prepared[key]

    def unlikeness(candidates: list[_Piece]) -> np.ndarray:
        images = [prepare(piece) for piece in candidates]
        readable = [image for image in images if image is not None]
        with torch.inference_mode():
            confidence = iter(reader(torch.stack(readable)).float().clamp(1e-6, 1).tolist() if readable else [])
        return np.array([-math.log(next(confidence)) if image is not None else 10.0 for image in images])

    pieces, note = _fit_count(labels, pieces, expected_count, char_height, unlikeness if reader else None)
    notes += [note] if note else []
    pieces.sort(key=lambda p: p.centre_x)

    backward = np.linalg.inv(np.vstack([forward, [0.0, 0.0, 1.0]]))[:2]
    characters, boxes = [], []
    for piece in pieces:
        character = prepare(piece)
        if character is None:
            continue
        characters.append(character)
        corners = np.array(
            [
                [piece.left, piece.top, 1],
                [piece.right, piece.top, 1],
                [piece.left, piece.bottom, 1],
                [piece.right, piece.bottom, 1],
            ],
            dtype=np.float64,
        )
        xs, ys = (backward @ corners.T) * scale
        boxes.append(
            (
                max(math.floor(xs.min()), 0),
                max(math.floor(ys.min()), 0),
                min(math.ceil(xs.max()), image.width),
                min(math.ceil(ys.max()), image.height),
            )
        )
    stacked = torch.stack(characters) if characters else torch.empty(0, 1, 28, 28)
    return Segmentation(characters=stacked, boxes=boxes, note="; ".join(notes), several_lines=several_lines)
