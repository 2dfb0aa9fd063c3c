"""A second opinion on a line model's reading: the line image cut where the line model's best alignment puts each
character, each piece read by a character model, and the two readers' per-character tables weighed together. The
line model finds touching characters that a segmenter cannot part; a character model sees each one whole, at full
size (bench-read on 420 tiled photos: 0.717 exact by the line model alone, 0.776 with this second opinion)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from emnist_lit.checkpoints import load_model_of_kind
from emnist_lit.errors import CheckpointError
from emnist_lit.line_ink import LINE_MARGIN, TEXT_HEIGHT
from emnist_lit.line_model import FRAME_STRIDE
from emnist_lit.module import EMNISTClassifier
from emnist_lit.segment import crop_to_emnist

INK_LEVEL = 0.3
"""A line crop's pixel is ink above this (its strokes are scaled so that half of their pixels saturate)."""

WHOLE_SHARE = 0.7
"""A blob with this share of its ink between one character's cuts belongs to that character whole; a blob spread
wider is two or more touching characters and is sliced at the cuts."""


def cut_characters(
    crop: np.ndarray, spans: list[tuple[int, int]], positions: Sequence[int] | None = None
) -> torch.Tensor:
    """EMNIST-like images (len(positions), 1, 28, 28) of characters of a line (all, by default), cut from its
    `line_ink.line_crop` (full resolution: a character model reads a character best at the size it was trained
    on); `spans` are every character's first and last frame (`ctc.spans_of`) of the line model's input made from
    that crop. Cuts fall halfway between neighbouring characters' centres; each piece keeps the blobs it holds and
    its neighbours lose theirs. A piece without ink is all zeros."""
    height, width = crop.shape
    columns_per_input = width / max(1, round(width * TEXT_HEIGHT / height))  # as line_ink.scale_line resizes it
    centres = [((first + last + 1) / 2 * FRAME_STRIDE - LINE_MARGIN) * columns_per_input for first, last in spans]
    cuts = [round((a + b) / 2) for a, b in itertools.pairwise(centres)]
    piece_of_column = np.searchsorted(np.array(cuts), np.arange(width), side="right")
    labels, count = ndimage.label(crop > INK_LEVEL, structure=np.ones((3, 3)))
    ys, xs = np.nonzero(labels)
    per_piece = np.zeros((count + 1, len(spans)), np.int64)
    np.add.at(per_piece, (labels[ys, xs], piece_of_column[xs]), 1)
    whole = per_piece.max(1) >= WHOLE_SHARE * per_piece.sum(1).clip(min=1)
    owner = np.where(whole, per_piece.argmax(1), -1)  # the piece a blob belongs to whole; -1: sliced, or background
    owner[0] = -1
    boxes = ndimage.find_objects(labels)
    bounds = np.concatenate([[0], cuts, [width]])
    positions = range(len(spans)) if positions is None else positions
    pieces = torch.zeros(len(positions), 1, 28, 28)
    for piece, k in enumerate(positions):
        blobs = np.flatnonzero(owner == k)
        left = min([bounds[k], *(boxes[b - 1][1].start for b in blobs)])
        right = max([bounds[k + 1], *(boxes[b - 1][1].stop for b in blobs)])
        window = labels[:, left:right]  # only this piece's columns: the line is many pieces wide
        own = owner[window]
        mine = (own == k) | ((window > 0) & (own == -1) & (piece_of_column[left:right] == k)[None, :])
        if mine.any():
            kept = np.where(ndimage.binary_dilation(mine), crop[:, left:right], 0.0).astype(np.float32)
            prepared = crop_to_emnist(np.pad(kept, 2))
            if prepared is not None:
                pieces[piece] = prepared
    return pieces


def combine_tables(line_tables: np.ndarray, character_probs: np.ndarray, character_weight: float) -> np.ndarray:
    """The two readers' per-character class probabilities (..., K) weighed as a geometric mean, renormalised: a
    class either reader rules out stays unlikely, and where both hesitate the one more certain decides."""
    floor = 1e-12
    log_line = np.log(np.clip(line_tables, floor, 1.0))
    log_character = np.log(np.clip(character_probs, floor, 1.0))
    combined = np.exp((1 - character_weight) * log_line + character_weight * log_character)
    return combined / combined.sum(-1, keepdims=True)


def load_character_reader(path: str, classes: str) -> EMNISTClassifier:
    """The character model of `path` for a second opinion on a line model of `classes`, refused by name when it is
    a line model itself or reads other characters."""
    wanted = "reading.character_ckpt takes a character model (EMNISTClassifier, configs/vin_reader.yaml)"
    reader, _ = load_model_of_kind(path, EMNISTClassifier, wanted)
    if reader.classes != classes:
        raise CheckpointError(
            f"checkpoint {path}: reads the classes {reader.classes!r}, but the line model reads {classes!r}; "
            "reading.character_ckpt needs a character model of the same classes (configs/vin_reader.yaml)"
        )
    return reader


def read_cut_characters(
    reader: EMNISTClassifier,
    crops: list[np.ndarray],
    spans: list[list[tuple[int, int]]],
    positions: list[Sequence[int]],
) -> list[np.ndarray]:
    """The character model's calibrated class probabilities (len(positions), K) for the characters at `positions`
    of each line, all lines' in one forward pass."""
    pieces = [cut_characters(*line) for line in zip(crops, spans, positions, strict=True)]
    if not pieces:
        return []
    with torch.inference_mode():
        probs = reader.predict_step((torch.cat(pieces).to(reader.device),), 0).float().cpu().numpy()
    return np.split(probs, np.cumsum([len(p) for p in pieces])[:-1])
