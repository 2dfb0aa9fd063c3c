"""How well `read --format vin` could read with a character model if cutting a photo into characters never failed:
VINs composed of the EMNIST test split's own 28x28 images (each character a random test image of its class), the
checkpoint's calibrated probabilities (as `predict` gives them), and the VIN decoder. Prints the exact rate of the
per-character best and of the decoder, and how many readings are trusted (confidence >= 0.9) and wrong.

    python scripts/perfect_segmentation.py --ckpt-path CKPT [--vins 2000] [--data-root ../shared/data/emnist-sample]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from emnist_lit.charsets import BALANCED47_CHARSET
from emnist_lit.data import find_emnist_files, load_split
from emnist_lit.line_photos import random_vin
from emnist_lit.module import EMNISTClassifier
from emnist_lit.vin import DEFAULT_MIN_CONFIDENCE, decode_vins

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emnist-sample"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt-path", required=True, help="a character model's checkpoint with the VIN alphabet")
    parser.add_argument("--vins", type=int, default=2000)
    parser.add_argument("--data-root", type=Path, default=SAMPLE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = EMNISTClassifier.load_from_checkpoint(args.ckpt_path, map_location="cpu", weights_only=True).eval()
    images, labels = load_split(find_emnist_files(args.data_root), "test")
    chars = np.array([BALANCED47_CHARSET[label] for label in labels.tolist()])
    keep = np.isin(chars, list(model.classes))
    batch = images[torch.from_numpy(keep)].float().div(255).unsqueeze(1)
    with torch.no_grad():
        probs = torch.cat([model.predict_step((part,), 0) for part in batch.split(512)]).numpy()
    truth = chars[keep]
    accuracy = float((np.array([model.classes[i] for i in probs.argmax(1)]) == truth).mean())

    rng = np.random.default_rng(args.seed)
    by_char = {c: np.flatnonzero(truth == c) for c in model.classes}
    vins = [random_vin(rng) for _ in range(args.vins)]
    tables = np.stack([probs[[by_char[c][rng.integers(len(by_char[c]))] for c in vin]] for vin in vins])
    readings = decode_vins(tables, model.classes)
    best = ["".join(model.classes[i] for i in table.argmax(1)) for table in tables]
    trusted = [r.confidence >= DEFAULT_MIN_CONFIDENCE for r in readings]
    print(f"{args.ckpt_path}: test accuracy {accuracy:.4f} on {len(truth)} characters; {args.vins} VINs")
    print(f"exact, per-character best: {np.mean([b == v for b, v in zip(best, vins, strict=True)]):.4f}")
    print(f"exact, VIN decoder:        {np.mean([r.text == v for r, v in zip(readings, vins, strict=True)]):.4f}")
    wrong = np.mean([t and r.text != v for t, r, v in zip(trusted, readings, vins, strict=True)])
    print(f"trusted (confidence >= {DEFAULT_MIN_CONFIDENCE}): {np.mean(trusted):.4f}; trusted and wrong: {wrong:.4f}")


if __name__ == "__main__":
    main()
