"""`read`: photos of handwritten lines to text through the CLI, with VIN decoding, bad input and the CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import class_templates, render
from PIL import Image, ImageDraw
from test_robustness import huge_png

from emnist_lit.charsets import BALANCED47_CHARSET
from emnist_lit.cli import main
from emnist_lit.vin import is_valid_vin

KNOWN_VIN = "WVM482228WVXMVXWV"
"""A valid VIN (check character 8, its ninth) written only with synthetic glyphs whose cells form one connected
shape, so that each character is one ink component, as a handwritten character usually is."""

CSV_HEADER = ["path", "text", "status", "confidence", "characters", "top3_per_character"]


def line_photo(text: str, gap: int = 14, cell: int = 6, dark_on_light: bool = True) -> Image.Image:
    """The synthetic glyphs of `text` side by side on paper, as a person's photo of a form would show them."""
    glyphs = [render(class_templates()[BALANCED47_CHARSET.index(c)], cell=cell, margin=0) for c in text]
    height = glyphs[0].shape[0]
    spacer = np.zeros((height, gap), dtype=np.float32)
    row = np.concatenate([part for glyph in glyphs for part in (glyph, spacer)], axis=1)
    light = np.pad(row, ((30, 30), (40, 40 - gap)))
    return Image.fromarray(((1 - light if dark_on_light else light) * 255).astype(np.uint8))


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def run_read(args: list[str]) -> int:
    try:
        main(["read", *args])
    except SystemExit as exit_info:
        return int(exit_info.code or 0)
    return 0


def test_read_gives_the_vin_on_the_photo_valid_and_as_text(trained_checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert is_valid_vin(KNOWN_VIN)
    photos = tmp_path / "photos"
    photos.mkdir()
    line_photo(KNOWN_VIN).save(photos / "vin.png")
    line_photo(KNOWN_VIN).convert("RGB").save(photos / "vin.jpg", quality=92)
    output = tmp_path / "out" / "read.csv"

    assert run_read([f"--ckpt_path={trained_checkpoint}", f"--data.predict_dir={photos}", f"--output={output}"]) == 0
    expected = [f"{KNOWN_VIN}, {photos / 'vin.jpg'}", f"{KNOWN_VIN}, {photos / 'vin.png'}"]
    assert capsys.readouterr().out.splitlines() == expected
    rows = read_rows(output)
    assert rows[0] == CSV_HEADER
    for row in rows[1:]:
        assert row[1:3] == [KNOWN_VIN, "valid"]
        assert float(row[3]) >= 0.9
        assert row[4] == "17"
        alternatives = row[5].split(" | ")
        assert len(alternatives) == 17
        assert [position.split(" ")[0].split(":")[0] for position in alternatives] == list(KNOWN_VIN)

    one_file = f"--data.predict_files=[{photos / 'vin.png'}]"
    assert run_read([f"--ckpt_path={trained_checkpoint}", one_file, "--format=text"]) == 0
    assert capsys.readouterr().out.strip() == f"{KNOWN_VIN}, {photos / 'vin.png'}"


ODD_PHOTOS = ("b_blank.png", "c_one_character.png", "d_two_lines.png", "e_printed_page.png", "f_200_megapixels.png")
"""Readable photos that hold no VIN a reader could vouch for."""


def write_odd_photos(photos: Path) -> Path:
    """A good line (a_good), the ODD_PHOTOS, the good line in light ink on dark (g_light_on_dark) and a truncated
    file (h_truncated) in `photos`."""
    photos.mkdir()
    line_photo(KNOWN_VIN).save(photos / "a_good.png")
    Image.new("L", (800, 120), 235).save(photos / "b_blank.png")
    line_photo(KNOWN_VIN[:1]).save(photos / "c_one_character.png")
    two_lines = np.concatenate([np.asarray(line_photo(KNOWN_VIN)), np.asarray(line_photo(KNOWN_VIN[::-1]))])
    Image.fromarray(two_lines).save(photos / "d_two_lines.png")
    page = Image.new("L", (1200, 1600), 255)
    draw = ImageDraw.Draw(page)
    for line in range(40):
        draw.text((60, 40 + 38 * line), "The quick brown fox jumps over the lazy dog 0123456789 " * 2, fill=0)
    page.save(photos / "e_printed_page.png")
    huge_png(photos / "f_200_megapixels.png", side=14200)  # 201.6 megapixels, under the 256 MP limit
    line_photo(KNOWN_VIN, dark_on_light=False).save(photos / "g_light_on_dark.png")
    (photos / "h_truncated.png").write_bytes((photos / "a_good.png").read_bytes()[:80])
    return photos


def test_read_marks_odd_photos_unverified_names_unreadable_ones_and_reads_the_rest(
    trained_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    photos = write_odd_photos(tmp_path / "photos")
    output = tmp_path / "read.csv"

    code = run_read([f"--ckpt_path={trained_checkpoint}", f"--data.predict_dir={photos}", f"--output={output}"])
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {photos / 'h_truncated.png'}: ")
    rows = {Path(row[0]).name: row for row in read_rows(output)[1:]}
    assert sorted(rows) == [p.name for p in sorted(photos.iterdir()) if p.name != "h_truncated.png"]
    printed = [line.rsplit(", ", 1)[1] for line in captured.out.splitlines()]
    assert [Path(p).name for p in printed] == list(rows)
    assert rows["a_good.png"][1:3] == [KNOWN_VIN, "valid"]
    assert rows["g_light_on_dark.png"][1:3] == [KNOWN_VIN, "valid"]
    for name in ODD_PHOTOS:
        assert rows[name][2] == "unverified", name
        assert float(rows[name][3]) < 0.9, name


def test_read_refuses_a_bad_option_value_in_one_line(trained_checkpoint: Path, tmp_path: Path, capsys) -> None:
    code = run_read([f"--ckpt_path={trained_checkpoint}", f"--data.predict_dir={tmp_path}", "--format=roman"])
    assert code != 0
    error = capsys.readouterr().err.split("\nerror: ", 1)[1]  # the usage text above lists every option
    assert error.startswith('Parser key "format"')
    assert "Got value: roman" in error


@pytest.mark.parametrize("check_digit", [True, False])
def test_read_european_switch_keeps_a_vin_without_a_valid_check_digit(
    trained_checkpoint: Path, tmp_path: Path, capsys, check_digit: bool
) -> None:
    european = KNOWN_VIN[:8] + "2" + KNOWN_VIN[9:]  # position 9 is a serial character, not a check digit
    assert not is_valid_vin(european)
    line_photo(european).save(tmp_path / "eu.png")
    args = [f"--ckpt_path={trained_checkpoint}", f"--data.predict_files=[{tmp_path / 'eu.png'}]"]
    args += [f"--reading.check_digit={str(check_digit).lower()}", f"--output={tmp_path / 'eu.csv'}"]
    assert run_read(args) == 0
    text, status = read_rows(tmp_path / "eu.csv")[1][1:3]
    if check_digit:
        assert status != "valid"
    else:
        assert (text, status) == (european, "valid")
