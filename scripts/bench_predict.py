"""Predict throughput: the project's batched `predict` (DataLoader workers + BasePredictionWriter) against a
one-image-at-a-time loop (open, prepare, forward per file), same model, same PNGs, side by side in one run, with the
threads, workers and OpenMP wait policy both ran under. OMP_WAIT_POLICY=ACTIVE in the environment shows what
OpenMP's spinning default costs on a busy machine."""

from __future__ import annotations

from emnist_lit.openmp_wait import prefer_passive_wait

prefer_passive_wait(["predict"])  # as `python -m emnist_lit predict` does, before torch loads

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from emnist_lit import quiet  # noqa: E402
from emnist_lit.charsets import VIN_CHARSET  # noqa: E402
from emnist_lit.data import EMNISTDataModule, find_emnist_files, load_split  # noqa: E402
from emnist_lit.images import list_images, prepare_image, to_grayscale  # noqa: E402
from emnist_lit.inference import InferenceSetup  # noqa: E402
from emnist_lit.module import EMNISTClassifier  # noqa: E402
from emnist_lit.prediction import CharacterWriter  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emnist-sample"


def write_pngs(folder: Path, count: int, data_root: Path) -> str:
    """`count` dark-on-light 64x64 PNGs: real EMNIST test characters when the sample is there, else noise blobs."""
    files = find_emnist_files(data_root) if data_root.is_dir() else None
    if files is not None:
        images = load_split(files, "test")[0][:count].numpy()
        source = f"EMNIST sample test images ({data_root})"
    else:
        rng = np.random.default_rng(0)
        images = (rng.random((count, 28, 28)) > 0.7).astype(np.uint8) * 255
        source = "random blobs (EMNIST sample not found)"
    for i, image in enumerate(images):
        big = Image.fromarray(255 - image).resize((56, 56), Image.BILINEAR)
        padded = Image.new("L", (64, 64), 255)
        padded.paste(big, (4, 4))
        padded.save(folder / f"{i:05d}.png")
    return source


def one_at_a_time(model: EMNISTClassifier, paths: list[str]) -> list[str]:
    """What a naive inference script does: per file, open, prepare, forward a batch of one."""
    chars = []
    with torch.inference_mode():
        for path in paths:
            with Image.open(path) as image:
                x = prepare_image(to_grayscale(image))
            chars.append(model.classes[model(x[None]).argmax(1).item()])
    return chars


def batched(model: EMNISTClassifier, folder: Path, batch_size: int, workers: int, threads: int | None) -> None:
    """`predict` as the CLI runs it: decoding workers, InferenceSetup's threads and memory format, the writer."""
    data = EMNISTDataModule(predict_dir=str(folder), batch_size=batch_size, predict_workers=workers)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=[InferenceSetup(threads=threads), CharacterWriter()],
        enable_model_summary=False,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.predict(model, datamodule=data, return_predictions=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--backbone", default="resnet34")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="predict's intra-op threads (default: torch's)")
    parser.add_argument("--data-root", type=Path, default=SAMPLE)
    parser.add_argument("--output", type=Path, default=Path("bench/predict.json"))
    args = parser.parse_args()
    quiet.silence_library_chatter()
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    model = EMNISTClassifier(classes=VIN_CHARSET, backbone=args.backbone, stem_activation="prelu", dropout=0.5).eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = write_pngs(folder, args.count, args.data_root)
        paths = list_images(folder, None)
        one_at_a_time(model, paths[:20])  # warm-up of both paths
        batched(model, folder, args.batch_size, args.workers, args.threads)
        start = time.perf_counter()
        one_at_a_time(model, paths)
        loop_s = time.perf_counter() - start
        start = time.perf_counter()
        batched(model, folder, args.batch_size, args.workers, args.threads)
        batched_s = time.perf_counter() - start
    result = {
        "images": len(paths),
        "source": source,
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "cpus_usable": len(os.sched_getaffinity(0)),
        "loop_torch_threads": torch.get_num_threads(),
        "predict_torch_threads": args.threads or torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (spin, then sleep)"),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "one_at_a_time_images_per_s": len(paths) / loop_s,
        "batched_images_per_s": len(paths) / batched_s,
        "ratio": loop_s / batched_s,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(
        f"batched predict is {result['ratio']:.1f}x the one-at-a-time loop "
        f"({result['batched_images_per_s']:.0f} vs {result['one_at_a_time_images_per_s']:.0f} images/s, "
        f"{len(paths)} PNGs, {args.backbone}, CPU)\n"
        f"setup: {result['cpus_usable']} usable CPUs; batched: torch {result['predict_torch_threads']} threads, "
        f"{args.workers} DataLoader workers decoding, batch {args.batch_size}; "
        f"loop: torch {result['loop_torch_threads']} threads; "
        f"OMP_WAIT_POLICY {result['omp_wait_policy']}, load {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )


if __name__ == "__main__":
    main()
