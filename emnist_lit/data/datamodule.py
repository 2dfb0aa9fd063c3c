"""EMNIST Balanced as a LightningDataModule: charset filtering, the 95/5 split, class balancing, batching."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision.datasets import EMNIST

from emnist_lit.charsets import BALANCED47_CHARSET, resolve_charset
from emnist_lit.data.augment import random_affine
from emnist_lit.data.nist_files import (
    NIST_ARCHIVE,
    download_emnist,
    find_emnist_files,
    load_split,
    missing_files_message,
    read_mapping,
)
from emnist_lit.errors import EMNISTConfigError, EMNISTDataError
from emnist_lit.images import ImageFiles, collate_images, list_images


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a seeded split that keeps `val_fraction` of every class for validation: the same on every run and
    in every process, since it depends on nothing but the labels and the seed."""
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(len(labels), generator=generator)
    order = shuffled[torch.argsort(labels[shuffled], stable=True)]
    counts = torch.bincount(labels)
    rank_in_class = torch.arange(len(labels)) - (counts.cumsum(0) - counts).repeat_interleave(counts)
    is_val = rank_in_class < (counts * val_fraction).round().long().repeat_interleave(counts)
    return order[~is_val].sort().values, order[is_val].sort().values


class IndexedImages(Dataset):
    """uint8 images, labels and an augment flag, fetched a whole batch of indices at a time (`__getitems__`), so a
    DataLoader needs no workers and no per-sample Python to assemble a batch. Item i shows image `rows[i]` (default
    i), so a plain and an augmented copy of the training set share one image tensor."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, augment: torch.Tensor, rows: torch.Tensor | None = None
    ) -> None:
        self.images, self.labels, self.augment, self.rows = images, labels, augment, rows

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        row = index if self.rows is None else self.rows[index]
        return self.images[row], self.labels[index], self.augment[index]

    def __getitems__(self, indices: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, device=self.images.device)
        rows = index if self.rows is None else self.rows[index]
        return self.images[rows], self.labels[index], self.augment[index]

    def to(self, device: torch.device) -> IndexedImages:
        rows = None if self.rows is None else self.rows.to(device)
        return IndexedImages(self.images.to(device), self.labels.to(device), self.augment.to(device), rows)


def keep_batch(batch: object) -> object:
    """Collate for `IndexedImages`: the batch is already stacked."""
    return batch


def mix_seed(*parts: int) -> int:
    """A 64-bit generator seed from several non-negative integers (a base seed, a rank, a counter), hashed by NumPy's
    SeedSequence so that neighbouring inputs give unrelated streams."""
    return int(np.random.SeedSequence(parts).generate_state(1, np.uint64)[0])


def new_generator(device: torch.device) -> torch.Generator:
    """A generator for drawing on `device`; meta tensors (the sync test) have none of their own and take a CPU one."""
    return torch.Generator(device="cpu" if device.type == "meta" else device)


class DeviceBatches:
    """Training batches of an `IndexedImages` held on an accelerator, indexed there: no index list is built on the
    host or copied over, so a step never waits for one. Every epoch draws one permutation (or, given `weights`, one
    draw with replacement in proportion to them) of the whole set from a generator seeded with (seed, epoch), alike
    on every rank; rank r takes every `world_size`-th index from position r, as DistributedSampler does. Only full
    batches are yielded (a last batch of one image would break BatchNorm), unless a rank's share is smaller than
    one batch, which then makes its only batch."""

    def __init__(
        self,
        dataset: IndexedImages,
        batch_size: int,
        weights: torch.Tensor | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.dataset, self.batch_size, self.weights = dataset, batch_size, weights
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    @property
    def sampler(self) -> DeviceBatches:
        """Lightning's fit loop calls `loader.sampler.set_epoch(epoch)` before each epoch."""
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        share = len(self.dataset) // self.world_size
        return max(share // self.batch_size, min(share, 1))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        device, n = self.dataset.images.device, len(self.dataset)
        generator = new_generator(device).manual_seed(mix_seed(self.seed, self.epoch))
        if self.weights is None:
            order = torch.randperm(n, device=device, generator=generator)
        else:
            order = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        share = order[self.rank :: self.world_size][: n // self.world_size]
        size = min(self.batch_size, len(share))
        for start in range(0, len(self) * size, size):
            yield self.dataset.__getitems__(share[start : start + size])


class EMNISTDataModule(L.LightningDataModule):
    """EMNIST Balanced, filtered to a charset, upright, split 95/5 per class, augmented batch-wise after transfer."""

    def __init__(
        self,
        root: str = "data",
        charset: str = "balanced47",
        download: bool = True,
        download_url: str = EMNIST.url,
        download_md5: str | None = EMNIST.md5,
        batch_size: int = 512,
        val_fraction: float = 0.05,
        split_seed: int = 42,
        degrees: float = 10.0,
        translate: float = 0.1,
        shear: float = 10.0,
        scale: tuple[float, float] = (1.0, 1.0),
        include_plain_copy: bool = False,
        balance_classes: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        on_device: bool = False,
        predict_dir: str | None = None,
        predict_files: list[str] | None = None,
        predict_workers: int = 2,
    ) -> None:
        """
        Args:
            root: folder holding EMNIST Balanced in any of the forms `find_emnist_files` accepts.
            charset: `balanced47`, `vin33`, or a string of EMNIST Balanced characters to keep.
            download: fetch NIST's archive (md5-checked) when nothing is found under `root`.
            download_url: where to fetch it from: NIST's URL, or a mirror.
            download_md5: the archive's expected md5 (NIST's by default); null skips the check.
            batch_size: images per batch, in every stage.
            val_fraction: share of every class of the training files held out for validation.
            split_seed: seed of the train/val split; change it only on purpose.
            degrees: RandomAffine rotation range (+/-) for training batches; 0 with translate and shear 0 turns
                augmentation off.
            translate: RandomAffine translation, as a fraction of the image size.
            shear: RandomAffine x-shear range (+/-), in degrees.
            scale: RandomAffine zoom range.
            include_plain_copy: each epoch sees every training image twice, once plain and once augmented, as the
                VIN-alphabet reference did.
            balance_classes: sample training images with probability inverse to their class frequency; under DDP
                the draw is sharded, every rank taking a different part of it.
            num_workers: DataLoader workers; batches are assembled by tensor indexing, so 0 is usually fastest.
            pin_memory: pin host batches for faster copies to a GPU.
            persistent_workers: keep workers alive between epochs (only with num_workers > 0).
            on_device: on a GPU trainer, move the uint8 images to the GPU once (about 90 MB for all of EMNIST
                Balanced) and draw and index training batches there: no per-batch copy, no workers, no step that
                waits on the host. Ignored on CPU.
            predict_dir: folder of images for `predict` (searched recursively).
            predict_files: image files for `predict`, after those of `predict_dir`.
            predict_workers: DataLoader workers decoding images for `predict`.
        """
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise EMNISTConfigError(f"val_fraction must be between 0 and 1, got {val_fraction}")
        if batch_size < 1:
            raise EMNISTConfigError(f"batch_size must be positive, got {batch_size}")
        self.save_hyperparameters()
        self.classes = resolve_charset(charset)
        self.normalization: tuple[float, float] | None = None
        self.train_set: IndexedImages | None = None
        self.val_set: IndexedImages | None = None
        self.test_set: IndexedImages | None = None
        self.predict_set: ImageFiles | None = None
        self._host_sets: dict[str, IndexedImages] = {}  # kept in host memory, so a later trainer may place them anew
        self._seed: int | None = None
        self.augmented_batches = 0
        self._augment_generator: torch.Generator | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def augments(self) -> bool:
        hp = self.hparams
        return bool(hp.degrees or hp.translate or hp.shear or tuple(hp.scale) != (1.0, 1.0))

    def prepare_data(self) -> None:
        if self.trainer is not None and self.trainer.predicting:
            return
        root = Path(self.hparams.root)
        if find_emnist_files(root) is not None:
            return
        if not self.hparams.download:
            raise EMNISTDataError(missing_files_message(root))
        download_emnist(root, self.hparams.download_url, self.hparams.download_md5)
        if find_emnist_files(root) is None:
            raise EMNISTDataError(
                f"{root / 'EMNIST' / 'raw' / NIST_ARCHIVE}: downloaded, but it holds no Balanced split"
            )

    def setup(self, stage: str) -> None:
        if stage == "predict":
            self.predict_set = ImageFiles(list_images(self.hparams.predict_dir, self.hparams.predict_files))
            return
        files = find_emnist_files(self.hparams.root)
        if files is None:
            raise EMNISTDataError(missing_files_message(self.hparams.root))
        if "mapping" in files and (mapping := read_mapping(files["mapping"])) != BALANCED47_CHARSET:
            raise EMNISTDataError(
                f"{files['mapping']}: lists {mapping!r}, not EMNIST Balanced's {BALANCED47_CHARSET!r}"
            )
        host = self._host_sets
        if stage in ("fit", "validate") and "train" not in host:
            images, labels = self._filter(*load_split(files, "train"))
            train_idx, val_idx = stratified_split(labels, self.hparams.val_fraction, self.hparams.split_seed)
            self.normalization = _mean_std(images[train_idx])
            host["train"] = self._training_set(images[train_idx], labels[train_idx])
            host["val"] = IndexedImages(images[val_idx], labels[val_idx], torch.zeros(len(val_idx), dtype=torch.bool))
        if stage == "test" and "test" not in host:
            images, labels = self._filter(*load_split(files, "test"))
            host["test"] = IndexedImages(images, labels, torch.zeros(len(labels), dtype=torch.bool))
        if stage in ("fit", "validate"):
            self.train_set = self._placed(self.train_set, host["train"])
            self.val_set = self._placed(self.val_set, host["val"])
        if stage == "test":
            self.test_set = self._placed(self.test_set, host["test"])

    def _filter(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the charset's classes and renumber them 0..n-1 in NIST's order."""
        to_class = torch.full((len(BALANCED47_CHARSET),), -1, dtype=torch.long)
        for index, char in enumerate(self.classes):
            to_class[BALANCED47_CHARSET.index(char)] = index
        new_labels = to_class[labels]
        keep = new_labels >= 0
        return images[keep], new_labels[keep]

    def _training_set(self, images: torch.Tensor, labels: torch.Tensor) -> IndexedImages:
        augment = torch.full((len(labels),), self.augments)
        if self.hparams.include_plain_copy and self.augments:
            rows = torch.arange(len(labels)).repeat(2)
            return IndexedImages(images, labels.repeat(2), torch.cat([~augment, augment]), rows)
        return IndexedImages(images, labels, augment)

    @property
    def data_device(self) -> torch.device | None:
        """The accelerator (GPU) that holds the datasets when `on_device` is set and the trainer runs on one, else
        None: the data then stay in host memory."""
        if not self.hparams.on_device or self.trainer is None:
            return None
        device = self.trainer.strategy.root_device
        return device if device.type != "cpu" else None

    def _placed(self, current: IndexedImages | None, host: IndexedImages) -> IndexedImages:
        """`host` on the current trainer's data device: a datamodule reused by another trainer follows it."""
        device = self.data_device
        if device is None:
            return host
        if current is not None and current.images.device == device:
            return current
        return host.to(device)

    @property
    def _rank_and_world_size(self) -> tuple[int, int]:
        return getattr(self.trainer, "global_rank", 0), getattr(self.trainer, "world_size", 1)

    def _class_weights(self, labels: torch.Tensor) -> torch.Tensor:
        """Sampling weight of each image, inverse to its class's frequency."""
        return (1.0 / torch.bincount(labels).double())[labels]

    def _loader(self, dataset: IndexedImages | None, train: bool = False) -> DataLoader | DeviceBatches:
        if dataset is None:
            raise RuntimeError("setup() has not prepared this stage's data")
        hp = self.hparams
        on_device = dataset.images.device.type != "cpu"
        rank, world_size = self._rank_and_world_size
        if train and self.data_device is not None:
            host_labels = self._host_sets["train"].labels
            weights = self._class_weights(host_labels).float().to(dataset.images.device) if hp.balance_classes else None
            return DeviceBatches(dataset, hp.batch_size, weights, self.seed, rank, world_size)
        sampler = None
        if train and hp.balance_classes:
            sampler = WeightedRandomSampler(self._class_weights(dataset.labels), len(dataset), replacement=True)
        return DataLoader(
            dataset,
            batch_size=hp.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            collate_fn=keep_batch,
            num_workers=0 if on_device else hp.num_workers,
            pin_memory=hp.pin_memory and not on_device,
            persistent_workers=hp.persistent_workers and hp.num_workers > 0 and not on_device,
            # a last training batch of one image breaks BatchNorm; keep it only if it is a rank's whole share
            drop_last=train and math.ceil(len(dataset) / world_size) >= hp.batch_size,
        )

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        workers = self.hparams.predict_workers
        return DataLoader(
            self.predict_set,
            batch_size=self.hparams.batch_size,
            collate_fn=collate_images,
            num_workers=workers,
            persistent_workers=False,
            pin_memory=self.hparams.pin_memory,
        )

    @property
    def seed(self) -> int:
        """The run's seed (`seed_everything`'s, alike on every rank) or the one a resumed checkpoint stored: it seeds
        the on-device batch order and the augmentation."""
        if self._seed is None:
            self._seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return self._seed

    def augment_generator(self, device: torch.device) -> torch.Generator:
        """The generator for the next training batch's affines, seeded from (seed, global rank, batches augmented so
        far): ranks draw different affines, and a run resumed from a checkpoint (which stores the count) draws what
        the uninterrupted run drew at the same batch."""
        rank, _ = self._rank_and_world_size
        if self._augment_generator is None or self._augment_generator.device != device:
            self._augment_generator = new_generator(device)
        self._augment_generator.manual_seed(mix_seed(self.seed, rank, self.augmented_batches))
        self.augmented_batches += 1
        return self._augment_generator

    def state_dict(self) -> dict[str, int]:
        """Lightning stores this in checkpoints: the augmentation stream's seed and position."""
        return {"seed": self.seed, "augmented_batches": self.augmented_batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._seed = state_dict.get("seed", self._seed)
        self.augmented_batches = state_dict.get("augmented_batches", 0)

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        """Turn uint8 (B, 28, 28) into float (B, 1, 28, 28) in [0, 1] on the batch's device, augmenting the flagged
        training images there, then into the precision plugin's input dtype (bf16 for `bf16-true`). Normalisation
        belongs to the model, so a checkpoint carries it. Nothing here reads a value back to the host."""
        if self.trainer is not None and self.trainer.predicting:
            return batch
        images, labels, augment = batch
        images = images.unsqueeze(1).float().div_(255)
        if self.trainer is not None and self.trainer.training and self.augments:
            hp = self.hparams
            generator = self.augment_generator(images.device)
            augmented = random_affine(images, hp.degrees, hp.translate, hp.shear, tuple(hp.scale), generator)
            images = torch.where(augment.view(-1, 1, 1, 1), augmented, images)
        if (precision := getattr(self.trainer, "precision_plugin", None)) is not None:
            images = precision.convert_input(images)
        return images, labels


def _mean_std(images: torch.Tensor) -> tuple[float, float]:
    pixels = images.flatten().float().div_(255)
    return pixels.mean().item(), pixels.std().item()
