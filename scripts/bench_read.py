"""How well and how fast `read --format vin` reads photos of handwritten VINs: generated photos of VINs composed from
the EMNIST test split (characters the model never trained on), in every style, read through the real `read` command
(DataLoader workers segmenting, one batched forward pass per batch of photos), then scored against the truth.

    python scripts/bench_read.py --ckpt-path CKPT [--photos 210] [--data-root ../shared/data/emnist-sample]
    python scripts/bench_read.py --ckpt-path CKPT --renderer tiled --photos 420   # drawn another way (tiled_photos)
    python scripts/bench_read.py --ckpt-path CKPT --photo-dir DIR   # photos made elsewhere, with DIR/labels.csv

Prints, overall and per style: exact VIN (all 17 right), character accuracy, silently wrong (status valid or
corrected but not the true VIN), the share of each status, and photos/s of the whole read (model load included).
"""

from __future__ import annotations

from emnist_lit.openmp_wait import prefer_passive_wait

prefer_passive_wait(["read"])  # as `python -m emnist_lit read` does, before torch loads

import argparse  # noqa: E402
import contextlib  # noqa: E402
import csv  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from emnist_lit.charsets import BALANCED47_CHARSET  # noqa: E402
from emnist_lit.cli import main as cli_main  # noqa: E402
from emnist_lit.data import find_emnist_files, load_split  # noqa: E402
from emnist_lit.line_photos import LINE_STYLES, write_line_photos  # noqa: E402
from emnist_lit.tiled_photos import TILED_STYLES, write_tiled_photos  # noqa: E402

RENDERERS = {"line_photos": write_line_photos, "tiled": write_tiled_photos}
"""line_photos: the generator the line model trains on (its training split); tiled: a second renderer, made
differently, so a figure that holds only for the first shows up."""

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emnist-sample"
STATUSES = ("valid", "corrected", "unverified")


def newest_checkpoint() -> str | None:
    found = sorted(Path("logs").glob("vin_reader/version_*/checkpoints/epoch*.ckpt"), key=os.path.getmtime)
    return str(found[-1]) if found else None


def score(truth: dict[str, tuple[str, str]], rows: list[dict[str, str]]) -> dict[str, dict[str, float]]:
    """Per style and overall: exact rate, character accuracy, silently-wrong rate and status shares."""
    groups: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for row in rows:
        text, style = truth[Path(row["path"]).name]
        for group in (style, "all"):
            groups[group].append((text, row["text"], row["status"]))
    table = {}
    for group, items in groups.items():
        n = len(items)
        chars = sum(sum(a == b for a, b in zip(true, read, strict=False)) for true, read, _ in items)
        table[group] = {
            "photos": n,
            "exact": sum(true == read for true, read, _ in items) / n,
            "char_accuracy": chars / sum(len(true) for true, _, _ in items),
            "silently_wrong": sum(true != read and status != "unverified" for true, read, status in items) / n,
            **{status: sum(s == status for _, _, s in items) / n for status in STATUSES},
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt-path", default=newest_checkpoint(), help="default: the newest vin_reader checkpoint")
    parser.add_argument("--photos", type=int, default=210, help="photos to generate, the styles taken in turn")
    parser.add_argument("--renderer", choices=sorted(RENDERERS), default="line_photos", help="what draws them")
    parser.add_argument("--photo-dir", type=Path, help="read these photos (DIR/labels.csv: path,text,style) instead")
    parser.add_argument("--data-root", type=Path, default=SAMPLE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photos-per-batch", type=int, default=32)
    parser.add_argument("--min-confidence", type=float, help="read's --reading.min_confidence (default: read's)")
    parser.add_argument("--character-ckpt", help="read's --reading.character_ckpt: a second opinion on a line model's")
    parser.add_argument("--output", type=Path, default=Path("bench/read.json"))
    args = parser.parse_args()
    if not args.ckpt_path:
        parser.error("no checkpoint: pass --ckpt-path (make fit CONFIG=configs/vin_reader.yaml makes one)")

    with tempfile.TemporaryDirectory() as tmp:
        if args.photo_dir is None:
            images, labels = load_split(find_emnist_files(args.data_root), "test")
            folder = Path(tmp) / "photos"
            RENDERERS[args.renderer](folder, args.photos, images, labels, BALANCED47_CHARSET, seed=args.seed)
            source = (
                f"{args.photos} photos drawn by {args.renderer} from the EMNIST test split in {args.data_root}, "
                f"seed {args.seed}"
            )
        else:
            folder, source = args.photo_dir, f"photos in {args.photo_dir}"
        with (folder / "labels.csv").open(newline="", encoding="utf-8") as handle:
            truth = {row["path"]: (row["text"], row.get("style") or "?") for row in csv.DictReader(handle)}
        files = [str(folder / name) for name in truth]
        output = Path(tmp) / "read.csv"
        load = os.getloadavg()
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            cli_main(
                [
                    "read",
                    f"--ckpt_path={args.ckpt_path}",
                    f"--data.predict_files={json.dumps(files)}",
                    f"--photos_per_batch={args.photos_per_batch}",
                    f"--output={output}",
                    *([f"--reading.min_confidence={args.min_confidence}"] if args.min_confidence is not None else []),
                    *([f"--reading.character_ckpt={args.character_ckpt}"] if args.character_ckpt else []),
                ]
            )
        seconds = time.perf_counter() - start
        with output.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))

    table = score(truth, rows)
    result = {
        "checkpoint": args.ckpt_path,
        "character_checkpoint": args.character_ckpt,
        "source": source,
        "photos_per_s": len(rows) / seconds,
        "seconds": seconds,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before_after": [load[0], os.getloadavg()[0]],
        "by_style": table,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(
        f"{source}\ncheckpoint {args.ckpt_path}"
        + (f", second opinion {args.character_ckpt}" if args.character_ckpt else "")
    )
    header = f"{'style':>8} {'photos':>6} {'exact':>6} {'chars':>6} {'silent':>7} " + " ".join(
        f"{s:>10}" for s in STATUSES
    )
    print(header)
    known = [s for s in (*LINE_STYLES, *TILED_STYLES) if s in table]
    for group in (*known, *sorted(set(table) - {*known, "all"}), "all"):
        r = table[group]
        shares = " ".join(f"{r[s]:10.3f}" for s in STATUSES)
        rates = f"{r['exact']:6.3f} {r['char_accuracy']:6.3f} {r['silently_wrong']:7.3f}"
        print(f"{group:>8} {r['photos']:6d} {rates} {shares}")
    speed = f"{result['photos_per_s']:.1f} photos/s end to end (model load included)"
    print(f"{len(rows)} photos in {seconds:.1f} s: {speed}")


if __name__ == "__main__":
    main()
