"""The second VIN-photo renderer: every style draws a readable photo of a valid VIN, the same seed the same files,
labels.csv as bench_read reads it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import upright_samples
from PIL import Image

from emnist_lit.charsets import BALANCED47_CHARSET
from emnist_lit.line_ink import find_line_ink
from emnist_lit.tiled_photos import TILED_STYLES, write_tiled_photos
from emnist_lit.vin import is_valid_vin


@pytest.fixture(scope="module")
def samples() -> tuple[np.ndarray, np.ndarray]:
    return upright_samples(per_class=3, seed=0)


def test_every_style_writes_a_photo_of_a_valid_vin(tmp_path: Path, samples: tuple[np.ndarray, np.ndarray]) -> None:
    written = write_tiled_photos(tmp_path, 2 * len(TILED_STYLES), *samples, BALANCED47_CHARSET, seed=3)
    with (tmp_path / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["path"], row["text"], row["style"]) for row in rows] == [(p.name, t, s) for p, t, s in written]
    assert [row["style"] for row in rows] == [*TILED_STYLES, *TILED_STYLES]
    for row in rows:
        assert is_valid_vin(row["text"])
        path = tmp_path / row["path"]
        assert path.suffix == (".jpg" if row["style"] == "phone" else ".png")
        with Image.open(path) as image:
            image.load()
            assert image.width > 4 * image.height, "one line of 17 characters (turned at most 9 degrees)"
            assert not isinstance(find_line_ink(image), str), f"{row['style']}: no ink found"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*(row["path"] for row in rows), "labels.csv"])


def test_same_seed_same_files(tmp_path: Path, samples: tuple[np.ndarray, np.ndarray]) -> None:
    first = write_tiled_photos(tmp_path / "a", len(TILED_STYLES), *samples, BALANCED47_CHARSET, seed=1)
    again = write_tiled_photos(tmp_path / "b", len(TILED_STYLES), *samples, BALANCED47_CHARSET, seed=1)
    other = write_tiled_photos(tmp_path / "c", len(TILED_STYLES), *samples, BALANCED47_CHARSET, seed=2)
    assert [p.read_bytes() for p, _, _ in first] == [p.read_bytes() for p, _, _ in again]
    assert [t for _, t, _ in first] != [t for _, t, _ in other]


def test_unknown_style_is_named(tmp_path: Path, samples: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="'cursive'"):
        write_tiled_photos(tmp_path, 1, *samples, BALANCED47_CHARSET, styles=["cursive"])  # type: ignore[list-item]
    assert not any(tmp_path.iterdir())
