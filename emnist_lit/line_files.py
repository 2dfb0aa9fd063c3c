"""Photos of handwritten lines for `read`, decoded and prepared in DataLoader workers: cut into characters for a
character model, or made into one line image for a line model."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from emnist_lit.data.lines import pad_lines
from emnist_lit.images import READ_ERRORS, open_image
from emnist_lit.line_ink import count_ink_bands, find_line_ink, line_crop, scale_line
from emnist_lit.segment import segment_line

SEVERAL_LINES = "several lines"
"""Marks a readable photo whose ink lies in more than one line: its reading is never trusted."""

NO_INK = "no ink"
"""Marks a readable photo with nothing a line model could read (blank, or nothing but box lines)."""


class LinePhotoFiles(Dataset):
    """Photos of one handwritten line each, decoded and cut into characters in DataLoader workers. A file that cannot
    be decoded yields its reason; one that decodes but holds no line (blank, a printed page) yields what the
    segmenter found, possibly nothing, and the writer marks it `unverified`."""

    def __init__(self, paths: list[str], expected_count: int | None = None) -> None:
        self.paths, self.expected_count = paths, expected_count

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, str, str | None]:
        path = self.paths[index]
        try:
            image = open_image(path)
        except READ_ERRORS as err:
            return None, path, str(err) or type(err).__name__
        segmentation = segment_line(image, expected_count=self.expected_count)
        return segmentation.characters, path, "" if not segmentation.several_lines else SEVERAL_LINES


def collate_lines(items: list[tuple[torch.Tensor | None, str, str | None]]) -> tuple:
    """All characters of the readable photos in one tensor, with each photo's count, so the model classifies the
    whole batch at once; (path, reason) of the others for the writer to report."""
    good = [(characters, path) for characters, path, error in items if characters is not None]
    several = [error == SEVERAL_LINES for characters, _, error in items if characters is not None]
    characters = torch.cat([c for c, _ in good]) if good else torch.empty(0, 1, 28, 28)
    counts = [len(c) for c, _ in good]
    failures = [(path, error) for characters, path, error in items if characters is None]
    return characters, [path for _, path in good], failures, counts, several


class LineImageFiles(Dataset):
    """Photos of one handwritten line each, decoded and made into a line model's input (`line_ink.to_line_image`) in
    DataLoader workers, and with `keep_crops` the line at its own resolution too (`line_ink.line_crop`), for a
    character model to read its characters. A file that cannot be decoded yields its reason; a photo without ink
    yields an empty image marked NO_INK, one with several lines of writing is marked SEVERAL_LINES, for the writer
    to mark unverified."""

    def __init__(self, paths: list[str], keep_crops: bool = False) -> None:
        self.paths, self.keep_crops = paths, keep_crops

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray | None, str, str, np.ndarray | None]:
        path = self.paths[index]
        try:
            image = open_image(path)
        except READ_ERRORS as err:
            return None, path, str(err) or type(err).__name__, None
        line, note, crop = prepare_line(image, self.keep_crops)
        return line, path, note, crop


def prepare_line(image: Image.Image, keep_crop: bool = False) -> tuple[np.ndarray, str, np.ndarray | None]:
    """A decoded photo as a line model's input, its note (NO_INK, SEVERAL_LINES or none) and, with `keep_crop`, the
    line at its own resolution. Never raises: one odd photo must not stop a batch; the writer marks it unverified."""
    try:
        found = find_line_ink(image)
        if isinstance(found, str):
            return np.zeros((28, 8), np.float32), NO_INK, None
        crop = line_crop(found)
        note = SEVERAL_LINES if count_ink_bands(found.binary) > 1 else ""
        return scale_line(crop), note, crop if keep_crop else None
    except Exception:
        return np.zeros((28, 8), np.float32), NO_INK, None


def collate_line_images(items: list[tuple[np.ndarray | None, str, str, np.ndarray | None]]) -> tuple:
    """The readable photos' line images padded into one batch with their frame counts, paths, notes and crops;
    (path, reason) of the others."""
    good = [(image, path, note, crop) for image, path, note, crop in items if image is not None]
    failures = [(path, note) for image, path, note, _ in items if image is None]
    if good:
        images, frames = pad_lines([image for image, _, _, _ in good])
        images = images.unsqueeze(1)
    else:
        images, frames = torch.empty(0, 1, 28, 8), torch.empty(0, dtype=torch.long)
    frames = torch.where(torch.tensor([note == NO_INK for _, _, note, _ in good], dtype=torch.bool), 0, frames)
    several = [note == SEVERAL_LINES for _, _, note, _ in good]
    return images, frames, [path for _, path, _, _ in good], failures, several, [crop for *_, crop in good]


def line_photo_loader(
    paths: list[str],
    expected_count: int | None,
    photos_per_batch: int,
    workers: int,
    line_model: bool = False,
    keep_crops: bool = False,
) -> DataLoader:
    """Batches of photos the model reads together; workers decode and prepare them in parallel: each photo cut into
    characters for a character model, or made into one line image for a line model (and kept at its own resolution
    with `keep_crops`)."""
    if line_model:
        dataset, collate = LineImageFiles(paths, keep_crops), collate_line_images
    else:
        dataset, collate = LinePhotoFiles(paths, expected_count), collate_lines
    return DataLoader(dataset, batch_size=photos_per_batch, collate_fn=collate, num_workers=workers)
