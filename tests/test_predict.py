"""`predict` on people's own images: formats, modes, polarity, bad files, the reference output format, the CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import class_templates, render
from PIL import Image

from emnist_lit.charsets import BALANCED47_CHARSET
from emnist_lit.cli import main
from emnist_lit.images import prepare_image, to_grayscale


def scan(class_index: int, cell: int = 8, margin: int = 12, dark_on_light: bool = True) -> np.ndarray:
    """A synthetic glyph as a person would scan it: uint8, any size, dark ink on paper by default."""
    light = render(class_templates()[class_index], cell=cell, margin=margin)
    return ((1 - light if dark_on_light else light) * 255).astype(np.uint8)


def write_mixed_folder(folder: Path) -> dict[str, str]:
    """One image per format and mode, plus bad files; returns the expected character of each good path."""
    (folder / "sub dir").mkdir(parents=True)
    expected = {}

    def save(name: str, image: Image.Image, class_index: int, **kwargs) -> None:
        image.save(folder / name, **kwargs)
        expected[str(folder / name)] = BALANCED47_CHARSET[class_index]

    save("a_gray.png", Image.fromarray(scan(10)), 10)
    save("b_rgb.jpg", Image.fromarray(scan(11, cell=13)).convert("RGB"), 11, quality=95)
    save("c_gray.bmp", Image.fromarray(scan(12, margin=40)), 12)
    save("d_16bit.tiff", Image.fromarray(scan(13).astype(np.uint16) * 257), 13)
    assert Image.open(folder / "d_16bit.tiff").mode.startswith("I;16")
    rgba = np.zeros((*scan(14).shape, 4), dtype=np.uint8)
    rgba[..., 3] = 255 - scan(14)  # black ink, transparent paper: composited on white it reads dark-on-light
    save("e_alpha.webp", Image.fromarray(rgba, "RGBA"), 14, lossless=True)
    save("sub dir/f_palette.png", Image.fromarray(scan(15, cell=5)).convert("P"), 15)
    save("sub dir/g light, on dark é.png", Image.fromarray(scan(16, dark_on_light=False)), 16)
    (folder / "h_truncated.png").write_bytes((folder / "a_gray.png").read_bytes()[:60])
    (folder / "i_notes.txt").write_text("not an image")
    (folder / "j_empty.png").write_bytes(b"")
    return expected


def test_predict_prints_reference_lines_reports_bad_files_and_writes_csv(
    trained_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    expected = write_mixed_folder(tmp_path / "scans")
    output = tmp_path / "out" / "predictions.csv"
    args = ["predict", f"--ckpt_path={trained_checkpoint}", f"--data.predict_dir={tmp_path / 'scans'}"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, f"--output={output}", "--data.batch_size=3"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines == [f"{ord(char)}, {path}" for path, char in sorted(expected.items())]
    for bad in ("h_truncated.png", "i_notes.txt", "j_empty.png"):
        assert any(bad in line and line.startswith("error: ") for line in captured.err.splitlines()), bad
    assert "3 of 10 files failed" in captured.err
    with output.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["path"] for row in rows] == sorted(expected)
    assert all(row["char"] == expected[row["path"]] and int(row["ascii"]) == ord(row["char"]) for row in rows)
    assert all(0.0 < float(row["confidence"]) <= 1.0 and len(row["top3"].split()) == 3 for row in rows)
    assert [p.name for p in output.parent.iterdir()] == ["predictions.csv"], "no temporary files left behind"


def test_dark_on_light_and_light_on_dark_give_the_same_prediction(
    trained_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    for index in range(0, 47, 5):
        Image.fromarray(scan(index)).save(tmp_path / f"{index:02d}_dark.png")
        Image.fromarray(scan(index, cell=11, dark_on_light=False)).save(tmp_path / f"{index:02d}_light.png")
    main(["predict", f"--ckpt_path={trained_checkpoint}", f"--data.predict_dir={tmp_path}"])
    codes = [int(line.split(",")[0]) for line in capsys.readouterr().out.strip().splitlines()]
    assert codes[0::2] == codes[1::2]
    assert [chr(c) for c in codes[0::2]] == [BALANCED47_CHARSET[i] for i in range(0, 47, 5)]


def test_predict_on_an_empty_folder_is_a_clear_error(trained_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=f"error: no files to predict on in {tmp_path}"):
        main(["predict", f"--ckpt_path={trained_checkpoint}", f"--data.predict_dir={tmp_path}"])
    with pytest.raises(SystemExit, match=r"error: predict_dir .*missing: not a folder"):
        main(["predict", f"--ckpt_path={trained_checkpoint}", f"--data.predict_dir={tmp_path / 'missing'}"])


def test_preparation_matches_emnist_geometry() -> None:
    tall = torch.zeros(200, 100)
    tall[20:180, 45:55] = 1.0  # a light bar on dark, 16:1
    prepared = prepare_image(tall)
    assert prepared.shape == (1, 28, 28)
    rows = torch.nonzero(prepared[0].amax(dim=1) > 0.3).flatten()
    cols = torch.nonzero(prepared[0].amax(dim=0) > 0.3).flatten()
    assert rows.min() == 2 and rows.max() == 25, "the long side fills 24 pixels inside a 2-pixel border"
    assert cols.min() >= 12 and cols.max() <= 15, "aspect ratio kept, centred"
    assert torch.allclose(prepare_image(1 - tall), prepared), "dark ink on light paper is inverted"


def test_grayscale_handles_16_bit_and_transparency() -> None:
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert to_grayscale(sixteen).min() == 1.0
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_grayscale(clear).min() == 1.0, "transparent pixels are paper (white)"
    with pytest.raises(ValueError, match="no ink"):
        prepare_image(torch.ones(10, 10))
