"""How well lines of handwriting are cut into characters: per style, the share of photos with the expected number of
segments, the share whose segments each sit on their true character, the time per photo, and, with a checkpoint,
the character and exact-line accuracy of plain argmax reading.

    python scripts/measure_segmentation.py --root ../shared/data/emnist-sample --per-style 60 \
        [--checkpoint CKPT] [--photos DIR_WITH_labels.csv]
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from emnist_lit.charsets import BALANCED47_CHARSET
from emnist_lit.data import find_emnist_files, load_split
from emnist_lit.line_photos import LINE_STYLES, GlyphBank, encode_photo, random_text, random_vin, render_line
from emnist_lit.segment import segment_line


def rendered_cases(root: Path, per_style: int, seed: int, kind: str) -> list[tuple[Image.Image, str, str, list, list]]:
    """Photos from the TEST split, written and read back through PNG/JPEG as files would be, with their true boxes
    and the EMNIST images drawn."""
    images, labels = load_split(find_emnist_files(root), "test")
    rendered_cases.images = images
    bank = GlyphBank(images, labels, BALANCED47_CHARSET)
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(per_style):
        for style in LINE_STYLES:
            text = random_vin(rng) if kind == "vin" else random_text(rng, bank.available)
            photo = render_line(text, bank, None, BALANCED47_CHARSET, style, rng)
            data, _ = encode_photo(photo.image, rng)
            cases.append((Image.open(io.BytesIO(data)), text, style, photo.boxes, photo.sources))
    return cases


def folder_cases(folder: Path) -> list[tuple[Image.Image, str, str, list | None]]:
    with (folder / "labels.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    return [(Image.open(folder / row["path"]), row["text"], row.get("style", "?"), None, None) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("../shared/data/emnist-sample"))
    parser.add_argument("--per-style", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kind", choices=("vin", "text"), default="vin")
    parser.add_argument("--photos", type=Path, help="measure the photos listed in this folder's labels.csv instead")
    parser.add_argument("--checkpoint", type=Path, help="an EMNISTClassifier checkpoint to read the segments with")
    parser.add_argument("--no-count", action="store_true", help="do not tell the segmenter how many to expect")
    parser.add_argument("--reader", action="store_true", help="let the checkpoint's model help place the cuts")
    args = parser.parse_args()
    torch.set_num_threads(1)

    cases = (
        folder_cases(args.photos) if args.photos else rendered_cases(args.root, args.per_style, args.seed, args.kind)
    )
    model = None
    if args.checkpoint:
        from emnist_lit.module import EMNISTClassifier

        model = EMNISTClassifier.load_from_checkpoint(args.checkpoint, map_location="cpu", weights_only=True).eval()
    reader = (lambda x: model(x).softmax(1).amax(1)) if args.reader and model is not None else None
    stats: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for image, text, style, boxes, sources in cases:
        image.load()
        started = time.process_time()
        result = segment_line(image, None if args.no_count else len(text), reader=reader)
        elapsed = time.process_time() - started
        row = stats[style]
        row["photos"] += 1
        row["seconds"] += elapsed
        row["max_seconds"] = max(row["max_seconds"], elapsed)
        exact = len(result) == len(text)
        row["exact_count"] += exact
        row["with_truth_boxes"] += boxes is not None
        if exact and boxes is not None:
            centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in result.boxes]
            row["aligned"] += all(
                t[0] <= x <= t[2] and t[1] <= y <= t[3] for (x, y), t in zip(centres, boxes, strict=True)
            )
        if model is not None and sources is not None:
            glyphs = rendered_cases.images[sources].float().div(255).unsqueeze(1)
            with torch.no_grad():
                predicted = model(glyphs).argmax(dim=1).tolist()
            row["glyphs"] += len(text)
            row["glyphs_right"] += sum(model.classes[i] == c for i, c in zip(predicted, text, strict=True))
        if model is not None and exact:
            with torch.no_grad():
                predicted = model(result.characters).argmax(dim=1).tolist()
            read = "".join(model.classes[i] for i in predicted)
            right = sum(a == b for a, b in zip(read, text, strict=True))
            row["chars"] += len(text)
            row["chars_right"] += right
            row["exact_line"] += right == len(text)
    header = f"{'style':6} {'photos':>6} {'count ok':>8} {'aligned':>8} {'cpu ms':>8} {'max ms':>7}"
    header += f" {'char acc':>8} {'glyph acc':>9} {'line ok':>7}" if model is not None else ""
    print(header)
    total: dict[str, float] = defaultdict(float)
    for style in sorted(stats):
        row = stats[style]
        for key, value in row.items():
            total[key] = max(total[key], value) if key == "max_seconds" else total[key] + value
        _print_row(style, row, model is not None)
    _print_row("all", total, model is not None)


def _print_row(name: str, row: dict[str, float], with_model: bool) -> None:
    n = row["photos"]
    aligned = f"{row['aligned'] / n:8.3f}" if row["with_truth_boxes"] else f"{'-':>8}"
    line = f"{name:6} {int(n):6d} {row['exact_count'] / n:8.3f} {aligned}"
    line += f" {1000 * row['seconds'] / n:8.1f} {1000 * row['max_seconds']:7.1f}"
    if with_model:
        glyph_acc = row["glyphs_right"] / row["glyphs"] if row["glyphs"] else float("nan")
        line += f" {row['chars_right'] / max(row['chars'], 1):8.3f} {glyph_acc:9.3f} {row['exact_line'] / n:7.3f}"
    print(line)


if __name__ == "__main__":
    main()
