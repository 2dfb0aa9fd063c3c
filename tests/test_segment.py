"""Cutting a photo of one handwritten line into characters: count and order, form boxes, touching neighbours,
blank and odd input, huge photos, either polarity."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch
from conftest import SAMPLE_ROOT, requires_sample
from PIL import Image, ImageDraw, ImageOps

from emnist_lit.charsets import BALANCED47_CHARSET
from emnist_lit.images import prepare_image
from emnist_lit.segment import Segmentation, segment_line

GLYPH_W, GLYPH_H, STROKE = 34, 48, 6
JITTER = [0, 3, -2, 4, -3, 1, -4, 2]


def glyph(kind: int) -> np.ndarray:
    """One of eight distinct connected shapes drawn with a pen STROKE wide, ink 1.0 on 0.0."""
    canvas = Image.new("L", (GLYPH_W, GLYPH_H), 0)
    draw = ImageDraw.Draw(canvas)
    w, h, s = GLYPH_W - 1, GLYPH_H - 1, STROKE
    strokes = {  # flat strokes slope a little, as a hand draws them: a printed line is straight
        0: [(0, 0, w, 3), (w, 3, w, h), (w, h, 0, h - 2), (0, h - 2, 0, 0)],  # box
        1: [(w // 2, 0, w // 2, h), (0, h // 2, w, h // 2 - 3)],  # plus
        2: [(0, 0, 0, h), (0, h, w, h - 3)],  # L
        3: [(0, 2, w, 0), (w // 2, 1, w // 2, h)],  # T
        4: [(0, 0, 0, h), (w, 0, w, h), (0, h // 2, w, h // 2 + 3)],  # H
        5: [(0, 0, w, 3), (w, 3, 0, h), (0, h, w, h - 3)],  # Z
        6: [(0, 0, w, h), (w, 0, 0, h)],  # X
        7: [(0, 0, 0, h), (0, 0, w, 2), (0, h // 2, w * 2 // 3, h // 2 - 2)],  # F
    }[kind]
    for x0, y0, x1, y1 in strokes:
        draw.line((x0, y0, x1, y1), fill=255, width=s)
    return np.asarray(canvas, dtype=np.float32) / 255.0


TEMPLATES = torch.stack([prepare_image(torch.from_numpy(np.pad(glyph(k), 4))) for k in range(8)])


def line(
    kinds: list[int], gaps: list[int] | int = 18, boxed: bool = False, height: int = 110, margin: int = 30
) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """A grey photo of the glyphs side by side (negative gaps overlap them), a few pixels up or down as a hand
    writes them, dark ink on light paper with a little noise, or each in a printed box that the glyph's foot
    touches; and each glyph's true box."""
    gaps = [gaps] * (len(kinds) - 1) if isinstance(gaps, int) else gaps
    gaps = [*gaps, 0]
    width = margin * 2 + sum(GLYPH_W + g for g in gaps[: len(kinds) - 1]) + GLYPH_W + (30 if boxed else 0)
    ink = np.zeros((height, width), np.float32)
    top = (height - GLYPH_H) // 2
    boxes, x = [], margin + (15 if boxed else 0)
    for i, (kind, gap) in enumerate(zip(kinds, gaps, strict=True)):
        y = top + (0 if boxed else JITTER[i % len(JITTER)])
        ink[y : y + GLYPH_H, x : x + GLYPH_W] = np.maximum(ink[y : y + GLYPH_H, x : x + GLYPH_W], glyph(kind))
        boxes.append((x, y, x + GLYPH_W, y + GLYPH_H))
        x += GLYPH_W + gap
    if boxed:
        edges = [boxes[0][0] - 12] + [(a[2] + b[0]) // 2 for a, b in itertools.pairwise(boxes)]
        edges.append(boxes[-1][2] + 12)
        line_top, line_bottom = top - 12, top + GLYPH_H - 1
        ink[line_top : line_top + 2, edges[0] : edges[-1] + 2] = 1
        ink[line_bottom : line_bottom + 2, edges[0] : edges[-1] + 2] = 1
        for edge in edges:
            ink[line_top : line_bottom + 2, edge : edge + 2] = 1
    rng = np.random.default_rng(0)
    photo = 0.9 - 0.75 * ink + rng.normal(0, 0.02, ink.shape)
    return Image.fromarray(np.clip(photo * 255, 0, 255).astype(np.uint8), mode="L"), boxes


def identities(result: Segmentation) -> list[int]:
    """Which template each segment looks most like."""
    flat = result.characters.flatten(1)
    templates = TEMPLATES.flatten(1)
    similarity = torch.nn.functional.normalize(flat, dim=1) @ torch.nn.functional.normalize(templates, dim=1).T
    return similarity.argmax(dim=1).tolist()


def assert_on_truth(result: Segmentation, truth: list[tuple[int, int, int, int]]) -> None:
    assert len(result) == len(truth), result.note
    for (left, top, right, bottom), (t_left, t_top, t_right, t_bottom) in zip(result.boxes, truth, strict=True):
        assert t_left <= (left + right) / 2 <= t_right and t_top <= (top + bottom) / 2 <= t_bottom


KINDS = [3, 0, 5, 1, 4, 2, 6, 7]


def test_count_order_and_shapes() -> None:
    image, truth = line(KINDS)
    result = segment_line(image)
    assert result.characters.shape == (8, 1, 28, 28) and result.characters.dtype == torch.float32
    assert_on_truth(result, truth)
    assert identities(result) == KINDS
    assert result.note == ""
    assert float(result.characters[:, :, :2].max()) < 0.05, "a dark margin as in EMNIST"


def test_uneven_gaps_and_expected_count() -> None:
    image, truth = line(KINDS, gaps=[4, 40, 10, 70, 6, 25, 8])
    result = segment_line(image, expected_count=8)
    assert_on_truth(result, truth)
    assert identities(result) == KINDS


def test_form_box_lines_are_removed() -> None:
    image, truth = line(KINDS, gaps=26, boxed=True)
    for expected in (None, 8):
        result = segment_line(image, expected_count=expected)
        assert_on_truth(result, truth)
        assert identities(result) == KINDS, "box lines left in the crops would change their shapes"


def comb_line(kinds: list[int], tick: int = 16) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """A line of glyphs written into a form's comb: a printed baseline under them with a short tick between every
    two cells and at both ends."""
    image, truth = line(kinds, gaps=26)
    draw = ImageDraw.Draw(image)
    baseline = max(bottom for _, _, _, bottom in truth) + 6
    edges = [truth[0][0] - 13] + [(a[2] + b[0]) // 2 for a, b in itertools.pairwise(truth)] + [truth[-1][2] + 13]
    draw.rectangle((edges[0], baseline, edges[-1] + 1, baseline + 1), fill=40)
    for edge in edges:
        draw.rectangle((edge, baseline - tick, edge + 1, baseline), fill=40)
    return image, truth


def test_comb_ticks_are_removed() -> None:
    image, truth = comb_line(KINDS)
    for expected in (None, 8):
        result = segment_line(image, expected_count=expected)
        assert_on_truth(result, truth)
        assert identities(result) == KINDS, "a tick left standing would be read as a character"


def test_strokes_standing_on_an_underline_are_kept() -> None:
    """Tick removal must not take characters: six bars (ones) written on an underline, touching it."""
    canvas = np.zeros((110, 300), np.float32)
    for i in range(6):
        canvas[30:78, 30 + 40 * i : 36 + 40 * i] = 1
    canvas[78:80, 20:280] = 1
    image = Image.fromarray(np.clip((0.9 - 0.75 * canvas) * 255, 0, 255).astype(np.uint8), mode="L")
    assert len(segment_line(image)) == 6


def test_touching_neighbours_are_split() -> None:
    kinds = [0, 4, 0, 1, 5]
    image, truth = line(kinds, gaps=[-3, 20, -2, 20])
    result = segment_line(image, expected_count=5)
    assert_on_truth(result, truth)
    assert identities(result) == kinds


def test_without_count_a_wide_character_stays_whole() -> None:
    image, truth = line(KINDS)
    pixels = np.asarray(image).copy()
    left, top, right, _ = truth[1]
    w_glyph = Image.new("L", (GLYPH_W * 19 // 10, GLYPH_H), 0)
    w, h = w_glyph.width - 1, GLYPH_H - 1
    ImageDraw.Draw(w_glyph).line([(0, 0), (w // 4, h), (w // 2, h // 3), (3 * w // 4, h), (w, 0)], fill=190, width=6)
    canvas = Image.new("L", (image.width + w_glyph.width, image.height), int(np.median(pixels)))
    canvas.paste(image.crop((0, 0, left, image.height)), (0, 0))
    canvas.paste(ImageOps.invert(w_glyph), (left, top))
    canvas.paste(image.crop((right, 0, image.width, image.height)), (left + w_glyph.width, 0))
    result = segment_line(canvas)
    assert len(result) == 8, "a W is wider than its neighbours, not two characters"
    wide_left, _, wide_right, _ = result.boxes[1]
    assert abs(wide_left - left) <= 4 and abs(wide_right - (left + w_glyph.width)) <= 4


def test_broken_character_is_joined() -> None:
    image, truth = line([3, 0, 4])
    pixels = np.asarray(image).copy()
    t_left, t_top, t_right, _ = truth[0]
    pixels[t_top + STROKE + 1 : t_top + STROKE + 5, t_left:t_right] = 230  # the T's stem parts from its bar
    result = segment_line(Image.fromarray(pixels), expected_count=3)
    assert_on_truth(result, truth)
    assert segment_line(Image.fromarray(pixels)).boxes == result.boxes


def test_inverted_polarity_reads_the_same() -> None:
    image, _ = line(KINDS, gaps=[4, 30, -2, 30, 6, 25, 8])
    dark_on_light = segment_line(image, expected_count=8)
    light_on_dark = segment_line(ImageOps.invert(image), expected_count=8)
    assert dark_on_light.boxes == light_on_dark.boxes
    assert torch.allclose(dark_on_light.characters, light_on_dark.characters, atol=0.05)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "I;16", "I", "F", "1", "CMYK"])
def test_any_image_mode(mode: str) -> None:
    image, truth = line(KINDS)
    converted = image.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    assert_on_truth(segment_line(converted), truth)


def test_blank_and_tiny_images_give_nothing() -> None:
    rng = np.random.default_rng(1)
    paper = Image.fromarray(np.clip(rng.normal(200, 4, (120, 600)), 0, 255).astype(np.uint8))
    for image in (
        Image.new("L", (600, 120), 255),
        Image.new("RGB", (50, 50), (0, 0, 0)),
        paper,
        Image.new("L", (2, 2)),
    ):
        result = segment_line(image, expected_count=17)
        assert len(result) == 0 and result.characters.shape == (0, 1, 28, 28)
        assert result.note.startswith("blank"), result.note


def test_odd_input_never_raises() -> None:
    one, truth = line([4])
    assert_on_truth(segment_line(one), truth)
    assert len(segment_line(one, expected_count=17)) == 1
    top, _ = line(KINDS[:4])
    bottom, _ = line(KINDS[4:])
    two_lines = Image.new("L", (top.width, top.height * 2))
    two_lines.paste(top, (0, 0))
    two_lines.paste(bottom, (0, top.height))
    for image in (two_lines, one.resize((5, 400)), Image.new("L", (0, 0)), one.crop((0, 0, 40, 3))):
        result = segment_line(image, expected_count=17)
        assert isinstance(result, Segmentation) and not result.note.startswith("failed"), result.note
    rng = np.random.default_rng(2)
    page = Image.fromarray((rng.random((600, 800)) < 0.3).astype(np.uint8) * 255)
    result = segment_line(page, expected_count=17)
    assert not result.note.startswith("failed") and len(result) <= 512


def test_unreadable_image_gives_a_reason() -> None:
    class Broken(Image.Image):
        size = (100, 40)

        def convert(self, *args: object, **kwargs: object) -> Image.Image:
            raise OSError("truncated file")

    result = segment_line(Broken())
    assert len(result) == 0 and result.note.startswith("failed") and "truncated" in result.note


def test_huge_photo_is_shrunk_first() -> None:
    image, truth = line(KINDS)
    factor = 12000 // image.width + 1
    huge = Image.new("L", (12000, 4000), 230)
    huge.paste(image.resize((image.width * factor, image.height * factor)), (0, 1500))
    started = time.process_time()
    result = segment_line(huge, expected_count=8, max_side=1500)
    elapsed = time.process_time() - started
    assert len(result) == 8 and identities(result) == KINDS
    assert elapsed < 3.0, f"{elapsed:.1f} s of CPU for a 48-megapixel photo capped to 1500 pixels"
    for (left, _, right, _), (t_left, _, t_right, _) in zip(result.boxes, truth, strict=True):
        assert abs((left + right) / 2 - factor * (t_left + t_right) / 2) < factor * GLYPH_W / 2, "boxes in input pixels"


def test_reader_is_asked_about_split_candidates() -> None:
    asked = []

    def reader(images: torch.Tensor) -> torch.Tensor:
        asked.append(len(images))
        return torch.full((len(images),), 0.9)

    kinds = [0, 4, 0, 1, 5]
    image, truth = line(kinds, gaps=[-3, 20, -2, 20])
    result = segment_line(image, expected_count=5, reader=reader)
    assert asked and sum(asked) >= 5
    assert_on_truth(result, truth)


@requires_sample
@pytest.mark.parametrize("style", ["free", "tight", "boxed"])
def test_real_handwriting_lines(style: str) -> None:
    from emnist_lit.data import find_emnist_files, load_split
    from emnist_lit.line_photos import GlyphBank, random_vin, render_line

    images, labels = load_split(find_emnist_files(SAMPLE_ROOT), "test")
    bank = GlyphBank(images, labels, BALANCED47_CHARSET)
    rng = np.random.default_rng(11)
    right = 0
    for _ in range(8):
        photo = render_line(random_vin(rng), bank, None, BALANCED47_CHARSET, style, rng)
        result = segment_line(photo.image, expected_count=17)
        right += len(result) == 17
    assert right >= 7


def test_crops_are_prepared_exactly_as_prepare_image_does() -> None:
    from emnist_lit.segment import crop_to_emnist

    rng = np.random.default_rng(0)
    for _ in range(50):
        height, width = rng.integers(3, 90, 2)
        crop = np.zeros((height + 4, width + 4), np.float32)
        crop[2:-2, 2:-2] = np.clip(rng.random((height, width)) * 1.5 - 0.3, 0, 1) * (rng.random((height, width)) < 0.5)
        if crop.max() <= 0.05:
            continue
        assert torch.allclose(crop_to_emnist(crop), prepare_image(torch.from_numpy(crop)), atol=1e-4)
    assert crop_to_emnist(np.zeros((10, 10), np.float32)) is None
