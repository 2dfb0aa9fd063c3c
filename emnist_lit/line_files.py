"""Photos of handwritten lines for `read`: decoded and cut into characters in DataLoader workers."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from emnist_lit.images import READ_ERRORS, open_image
from emnist_lit.segment import segment_line

SEVERAL_LINES = "several lines"
"""Marks a readable photo whose ink lies in more than one line: its reading is never trusted."""


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


def line_photo_loader(paths: list[str], expected_count: int | None, photos_per_batch: int, workers: int) -> DataLoader:
    """Batches of photos whose characters the model classifies together; workers decode and segment in parallel."""
    return DataLoader(
        LinePhotoFiles(paths, expected_count),
        batch_size=photos_per_batch,
        collate_fn=collate_lines,
        num_workers=workers,
    )
