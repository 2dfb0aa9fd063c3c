"""Training throughput of the reference data path (per-sample PIL RandomAffine in DataLoader workers) against this
project's (batched uint8 indexing, RandomAffine for the whole batch in one grid_sample), same model and batch size.

    python scripts/benchmark.py --data-root ../shared/data/emnist-sample [--model resnet34] [--output bench/bench.json]

Both paths run in one process, alternating in rounds, so a busy machine slows both alike; each figure is the median
over the rounds. The last line states the ratio of training images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from emnist_lit.data import EMNISTDataModule
from emnist_lit.models import build_backbone

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


class PILImages(Dataset):
    """The reference's dataset: one PIL image per item, as torchvision's EMNIST returns, then the transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable) -> None:
        self.images, self.labels, self.transform = images.numpy(), labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index], mode="L")), int(self.labels[index])


def forever(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def reference_batches(dm: EMNISTDataModule, batch_size: int, workers: int) -> Batches:
    """Per-sample RandomAffine(10, (0.1, 0.1), 10) + ToTensor + Normalize on PIL images in `workers` processes."""
    mean, std = dm.normalization
    transform = transforms.Compose(
        [
            transforms.RandomAffine(degrees=10, translate=(0.1, 0.1), shear=10),
            transforms.ToTensor(),
            transforms.Normalize((mean,), (std,)),
        ]
    )
    dataset = PILImages(dm.train_set.images, dm.train_set.labels, transform)
    loader = DataLoader(
        dataset, batch_size, shuffle=True, drop_last=True, num_workers=workers, persistent_workers=workers > 0
    )
    return forever(loader)


def project_batches(dm: EMNISTDataModule) -> Batches:
    """The datamodule's loader and its `on_after_batch_transfer` (augmentation), then the normalisation that
    `EMNISTClassifier.forward` applies."""
    dm.trainer = SimpleNamespace(training=True, predicting=False)  # what on_after_batch_transfer consults
    mean, std = dm.normalization
    for batch in forever(dm.train_dataloader()):
        images, labels = dm.on_after_batch_transfer(batch, 0)
        yield (images - mean) / std, labels


def images_per_second(batches: Batches, steps: int, warmup: int, step: Callable | None) -> float:
    for _ in range(warmup):
        images, labels = next(batches)
        if step is not None:
            step(images, labels)
    count, start = 0, time.perf_counter()
    for _ in range(steps):
        images, labels = next(batches)
        if step is not None:
            step(images, labels)
        count += len(labels)
    return count / (time.perf_counter() - start)


def training_step(model: nn.Module, channels_last: bool) -> Callable:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--model", default="lenet", choices=["lenet", "cnn", "resnet18", "resnet34", "resnet50"])
    parser.add_argument("--stem", default="small", choices=["small", "imagenet"], help="ResNet stem")
    parser.add_argument("--channels-last", action="store_true", help="run the model in NHWC memory order")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference path")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches before each measurement")
    parser.add_argument("--steps", type=int, default=25, help="timed training steps per round")
    parser.add_argument("--data-steps", type=int, default=100, help="timed batches per round, data path alone")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default="bench/bench.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    load_before = os.getloadavg()

    dm = EMNISTDataModule(root=args.data_root, batch_size=args.batch_size, degrees=10, translate=0.1, shear=10)
    dm.setup("fit")
    paths = {
        "reference": reference_batches(dm, args.batch_size, args.workers),
        "project": project_batches(dm),
    }
    model = build_backbone(args.model, dm.num_classes, stem=args.stem)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = training_step(model.train(), args.channels_last)

    data: dict[str, list[float]] = {name: [] for name in paths}
    train: dict[str, list[float]] = {name: [] for name in paths}
    for round_ in range(args.rounds):
        for name, batches in paths.items():
            data[name].append(images_per_second(batches, args.data_steps, args.warmup, None))
            train[name].append(images_per_second(batches, args.steps, args.warmup, step))
            print(
                f"round {round_ + 1}/{args.rounds} {name:9s} data {data[name][-1]:8.0f} img/s, "
                f"train {train[name][-1]:7.0f} img/s",
                flush=True,
            )

    result = {
        name: {
            "data_images_per_s": statistics.median(data[name]),
            "train_images_per_s": statistics.median(train[name]),
            "data_rounds": data[name],
            "train_rounds": train[name],
        }
        for name in paths
    }
    ref, proj = result["reference"], result["project"]
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "settings": vars(args),
        "train_images": len(dm.train_set),
        "results": result,
        "train_ratio": proj["train_images_per_s"] / ref["train_images_per_s"],
        "data_ratio": proj["data_images_per_s"] / ref["data_images_per_s"],
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")

    model_name = args.model + (" channels-last" if args.channels_last else "")
    print(
        f"\n{model_name}, batch {args.batch_size}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"load {load_before[0]:.2f} -> {report['machine']['load_average_after'][0]:.2f}; median of {args.rounds}"
    )
    print(f"{'path':44s} {'data only img/s':>16s} {'train img/s':>12s}")
    rows = [(f"reference (PIL, {args.workers} workers)", ref), ("project (batched, on_after_batch_transfer)", proj)]
    for label, values in rows:
        print(f"{label:44s} {values['data_images_per_s']:16.0f} {values['train_images_per_s']:12.0f}")
    print(f"{'ratio':44s} {report['data_ratio']:15.1f}x {report['train_ratio']:11.1f}x")
    print(f"wrote {output}")
    print(
        f"project path is {report['train_ratio']:.1f}x the reference style "
        f"(images/s {proj['train_images_per_s']:.0f} vs {ref['train_images_per_s']:.0f})"
    )


if __name__ == "__main__":
    main()
