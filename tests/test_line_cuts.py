"""The second opinion on a line model's reading: where the line is cut, what each piece keeps, how the two readers'
tables are weighed together."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emnist_lit.line_cuts import combine_tables, cut_characters
from emnist_lit.line_ink import LINE_MARGIN, TEXT_HEIGHT
from emnist_lit.line_model import FRAME_STRIDE
from emnist_lit.segment import crop_to_emnist

HEIGHT = 40
"""Rows of the test crops: twice the line model's TEXT_HEIGHT, so a crop column is half an input column."""


def spans_at(columns: list[tuple[int, int]], crop_width: int) -> list[tuple[int, int]]:
    """The frames a line model would give characters lying between these crop columns."""
    per_input = crop_width / round(crop_width * TEXT_HEIGHT / HEIGHT)
    frame = [round((c / per_input + LINE_MARGIN) / FRAME_STRIDE) for pair in columns for c in pair]
    return [(frame[i], max(frame[i], frame[i + 1] - 1)) for i in range(0, len(frame), 2)]


def shapes() -> list[np.ndarray]:
    """Three distinct ink shapes, each HEIGHT tall: a bar, a box, a cross."""
    bar = np.zeros((HEIGHT, 16), np.float32)
    bar[:, 6:10] = 1
    box = np.zeros((HEIGHT, 30), np.float32)
    box[:4], box[-4:], box[:, :4], box[:, -4:] = 1, 1, 1, 1
    cross = np.zeros((HEIGHT, 30), np.float32)
    cross[18:22], cross[:, 13:17] = 1, 1
    return [bar, box, cross]


def line_of(pieces: list[np.ndarray], gap: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The pieces side by side `gap` columns apart (a negative gap overlaps them), and each one's columns."""
    width = sum(p.shape[1] for p in pieces) + gap * (len(pieces) - 1)
    crop = np.zeros((HEIGHT, width), np.float32)
    columns, x = [], 0
    for piece in pieces:
        crop[:, x : x + piece.shape[1]] = np.maximum(crop[:, x : x + piece.shape[1]], piece)
        columns.append((x, x + piece.shape[1]))
        x += piece.shape[1] + gap
    return crop, columns


def test_each_piece_is_its_character_alone_prepared_as_emnist() -> None:
    crop, columns = line_of(shapes(), gap=20)
    pieces = cut_characters(crop, spans_at(columns, crop.shape[1]))
    assert pieces.shape == (3, 1, 28, 28)
    for piece, shape in zip(pieces, shapes(), strict=True):
        torch.testing.assert_close(piece, crop_to_emnist(np.pad(shape, 2)), atol=0.02, rtol=0)


def test_a_character_reaching_past_the_cut_stays_whole() -> None:
    """The line model places the box's centre a little left of where its ink is: its right edge lies past the cut,
    yet the whole box (most of its ink on its side) goes with it, and none of it to the cross."""
    crop, columns = line_of(shapes(), gap=4)
    (bar, box, cross) = columns
    shifted = [bar, (box[0] - 12, box[1] - 12), cross]
    pieces = cut_characters(crop, spans_at(shifted, crop.shape[1]))
    torch.testing.assert_close(pieces[1], crop_to_emnist(np.pad(shapes()[1], 2)), atol=0.02, rtol=0)
    torch.testing.assert_close(pieces[2], crop_to_emnist(np.pad(shapes()[2], 2)), atol=0.02, rtol=0)


def test_touching_characters_are_sliced_at_the_cut() -> None:
    """A box and a cross overlapping by six columns are one blob: each piece takes its side of the cut."""
    _, box, cross = shapes()
    crop, columns = line_of([box, cross], gap=-6)
    pieces = cut_characters(crop, spans_at(columns, crop.shape[1]))
    templates = [crop_to_emnist(np.pad(shape, 2)).flatten() for shape in (box, cross)]
    for piece, own in zip(pieces, (0, 1), strict=True):
        similarity = [float(torch.nn.functional.cosine_similarity(piece.flatten(), t, dim=0)) for t in templates]
        assert similarity[own] > similarity[1 - own] and similarity[own] > 0.6, similarity


def test_a_piece_without_ink_is_blank() -> None:
    crop, columns = line_of(shapes()[:1], gap=0)
    crop = np.pad(crop, ((0, 0), (0, 200)))
    pieces = cut_characters(crop, spans_at([columns[0], (150, 180)], crop.shape[1]))
    assert pieces[0].amax() > 0.9 and pieces[1].amax() == 0


def test_combine_tables_is_a_weighted_geometric_mean() -> None:
    line = np.array([[0.6, 0.4, 0.0], [0.5, 0.25, 0.25]])
    character = np.array([[0.1, 0.9, 0.0], [0.25, 0.25, 0.5]])
    np.testing.assert_allclose(combine_tables(line, character, 0.0), line, atol=1e-9)
    np.testing.assert_allclose(combine_tables(line, character, 1.0), character, atol=1e-9)
    halfway = np.sqrt(line * character)
    np.testing.assert_allclose(combine_tables(line, character, 0.5), halfway / halfway.sum(1, keepdims=True), atol=1e-9)
    assert combine_tables(line, character, 0.5)[0].argmax() == 1, "the more certain reader decides"
    assert combine_tables(np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]]), 0.5).sum() == pytest.approx(1.0)
