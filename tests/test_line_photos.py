"""The line-photo generator: valid VINs, the three styles, determinism, formats and modes, labels.csv."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_ROOT, requires_sample, upright_samples
from PIL import Image

from emnist_lit.charsets import BALANCED47_CHARSET, VIN_CHARSET
from emnist_lit.line_photos import GlyphBank, random_vin, render_line, write_line_photos
from emnist_lit.vin import is_valid_vin


@pytest.fixture(scope="module")
def bank() -> GlyphBank:
    images, labels = upright_samples(per_class=3, seed=0)
    return GlyphBank(images, labels, BALANCED47_CHARSET)


def test_random_vins_are_valid() -> None:
    rng = np.random.default_rng(0)
    vins = [random_vin(rng) for _ in range(300)]
    for vin in vins:
        assert len(vin) == 17
        assert set(vin) <= set(VIN_CHARSET)
        assert vin[9] not in "UZ0"
        assert is_valid_vin(vin)
    assert {vin[8] for vin in vins} >= set("0123456789X"), "every check character should turn up"
    assert len(set(vins)) == len(vins)


@pytest.mark.parametrize("style", ["free", "tight", "boxed"])
def test_same_seed_same_photo(bank: GlyphBank, style: str) -> None:
    first = render_line("1M8GDM9AXKP042788", bank, None, BALANCED47_CHARSET, style, np.random.default_rng(7))
    again = render_line("1M8GDM9AXKP042788", bank, None, BALANCED47_CHARSET, style, np.random.default_rng(7))
    other = render_line("1M8GDM9AXKP042788", bank, None, BALANCED47_CHARSET, style, np.random.default_rng(8))
    assert first.image.tobytes() == again.image.tobytes() and first.boxes == again.boxes
    assert first.image.tobytes() != other.image.tobytes()


def test_photo_is_dark_ink_on_light_paper_with_one_box_per_character(bank: GlyphBank) -> None:
    photo = render_line("ABC123", bank, None, BALANCED47_CHARSET, "free", np.random.default_rng(1))
    gray = np.asarray(photo.image.convert("L"), dtype=np.float32)
    assert np.median(gray) > 150, "the paper is light"
    assert len(photo.boxes) == 6 and len(photo.sources) == 6
    for box, source, char in zip(photo.boxes, photo.sources, "ABC123", strict=True):
        left, top, right, bottom = box
        assert 0 <= left < right <= photo.image.width and 0 <= top < bottom <= photo.image.height
        assert bank.class_of(char) == next(c for c in bank.classes if source in bank.by_class[c])
        assert gray[top:bottom, left:right].min() < np.median(gray) - 60, "ink inside every character's box"
    centres = [(b[0] + b[2]) / 2 for b in photo.boxes]
    assert centres == sorted(centres), "characters run left to right"


def test_boxed_photos_have_printed_boxes(bank: GlyphBank) -> None:
    for seed in range(4):
        photo = render_line("ABCDEFGH", bank, None, BALANCED47_CHARSET, "boxed", np.random.default_rng(seed), 0)
        gray = np.asarray(photo.image.convert("L"), dtype=np.float32)
        paper = np.median(gray)
        assert len(photo.frames) == 8
        for (left, top, right, bottom), box in zip(photo.frames, photo.boxes, strict=True):
            for edge in (gray[top, left:right], gray[bottom - 1, left:right], gray[top:bottom, left]):
                assert edge.mean() < paper - 10, "each printed edge is darker than the paper all along"
            assert _overlap(box, (left, top, right, bottom)) > 0.5 * (box[2] - box[0]) * (box[3] - box[1])
        lefts = [frame[0] for frame in photo.frames]
        assert lefts == sorted(lefts)
    free = render_line("ABCDEFGH", bank, None, BALANCED47_CHARSET, "free", np.random.default_rng(0), 0)
    assert free.frames == []


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def test_tight_neighbours_touch_and_free_ones_do_not(bank: GlyphBank) -> None:
    touching = {"tight": 0, "free": 0}
    for style in touching:
        for seed in range(4):
            photo = render_line("ABCDEFGHJK", bank, None, BALANCED47_CHARSET, style, np.random.default_rng(seed), 0)
            touching[style] += sum(a[2] >= b[0] for a, b in itertools.pairwise(photo.boxes))
    assert touching["tight"] >= 4 * 9 * 0.6, "most tight neighbours touch or overlap"
    assert touching["free"] == 0


def test_merged_case_classes_and_unknown_characters(bank: GlyphBank) -> None:
    assert bank.class_of("c") == "C" and bank.class_of("a") == "a"
    with pytest.raises(ValueError, match="'#'"):
        render_line("AB#", bank, None, BALANCED47_CHARSET, "free", np.random.default_rng(0))
    with pytest.raises(ValueError, match="style 'cursive'"):
        render_line("AB", bank, None, BALANCED47_CHARSET, "cursive", np.random.default_rng(0))  # type: ignore[arg-type]


def test_write_line_photos(tmp_path: Path) -> None:
    images, labels = upright_samples(per_class=2, seed=3)
    written = write_line_photos(tmp_path / "out", 12, images, labels, BALANCED47_CHARSET, seed=5)
    with (tmp_path / "out" / "labels.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(tmp_path / "out" / r["path"], r["text"], r["style"]) for r in rows] == written
    assert [style for _, _, style in written] == ["free", "tight", "boxed"] * 4
    formats, modes = set(), set()
    for path, text, _ in written:
        assert len(text) == 17 and is_valid_vin(text)
        with Image.open(path) as image:
            formats.add(image.format)
            modes.add(image.mode)
            assert path.suffix == {"PNG": ".png", "JPEG": ".jpg"}[image.format]
    assert formats == {"PNG", "JPEG"} and modes == {"RGB", "L"}
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")], "no temporary files left"
    again = write_line_photos(tmp_path / "again", 12, images, labels, BALANCED47_CHARSET, seed=5)
    assert [p.read_bytes() for p, _, _ in again] == [p.read_bytes() for p, _, _ in written]


def test_write_text_lines(tmp_path: Path) -> None:
    images, labels = upright_samples(per_class=2, seed=3)
    written = write_line_photos(tmp_path, 4, images, labels, BALANCED47_CHARSET, ["tight"], seed=1, kind="text")
    assert all(style == "tight" and 3 <= len(text) <= 12 for _, text, style in written)
    assert all(set(text) <= set(BALANCED47_CHARSET) for _, text, _ in written)
    with pytest.raises(ValueError, match="kind"):
        write_line_photos(tmp_path, 1, images, labels, BALANCED47_CHARSET, kind="poem")  # type: ignore[arg-type]


@requires_sample
def test_real_sample_lines(tmp_path: Path) -> None:
    from emnist_lit.data import find_emnist_files, load_split

    images, labels = load_split(find_emnist_files(SAMPLE_ROOT), "test")
    written = write_line_photos(tmp_path, 3, images, labels, BALANCED47_CHARSET, seed=0)
    for path, text, _ in written:
        with Image.open(path) as image:
            assert 30 <= image.height <= 400 and image.width > 17 * 20
        assert len(text) == 17
