"""EMNIST Balanced as a LightningDataModule: finding NIST's files, orientation, charsets, split, augmentation."""

from __future__ import annotations

import gzip
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision.datasets import EMNIST
from torchvision.datasets.utils import download_url

from emnist_lit.images import ImageFiles, collate_images, list_images

BALANCED47_CHARSET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt"
"""EMNIST Balanced's 47 classes in NIST's label order (its mapping file)."""

VIN_CHARSET = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ"
"""Characters allowed in a Vehicle Identification Number: digits and capitals without I, O and Q."""

NAMED_CHARSETS = {"balanced47": BALANCED47_CHARSET, "vin33": VIN_CHARSET}

SPLIT_FILES = {
    "train_images": "emnist-balanced-train-images-idx3-ubyte",
    "train_labels": "emnist-balanced-train-labels-idx1-ubyte",
    "test_images": "emnist-balanced-test-images-idx3-ubyte",
    "test_labels": "emnist-balanced-test-labels-idx1-ubyte",
}
MAPPING_FILE = "emnist-balanced-mapping.txt"
NIST_ARCHIVE = "gzip.zip"

_IDX_DTYPES = {0x08: torch.uint8, 0x09: torch.int8, 0x0B: torch.int16, 0x0C: torch.int32, 0x0D: torch.float32}


class EMNISTDataError(RuntimeError):
    """EMNIST files are missing, corrupt or inconsistent; the message names the file and the fix."""


class EMNISTConfigError(ValueError):
    """A datamodule option has a value that cannot work; the message names the option and the value."""


def resolve_charset(charset: str) -> str:
    """Turn a charset name (`balanced47`, `vin33`) or an explicit string of characters into the characters, in
    NIST's label order, so that the same characters always get the same class index."""
    chars = NAMED_CHARSETS.get(charset, charset)
    unknown = sorted(set(chars) - set(BALANCED47_CHARSET))
    if not chars or unknown:
        problem = "empty" if not chars else f"characters not in EMNIST Balanced: {''.join(unknown)!r}"
        raise EMNISTConfigError(
            f"charset {charset!r}: {problem}; use one of {sorted(NAMED_CHARSETS)} or a string of characters "
            f"from {BALANCED47_CHARSET!r}"
        )
    if len(set(chars)) != len(chars):
        raise EMNISTConfigError(f"charset {charset!r}: repeated characters")
    return "".join(c for c in BALANCED47_CHARSET if c in chars)


def fix_orientation(images: torch.Tensor) -> torch.Tensor:
    """NIST stores every EMNIST image transposed; swap the last two axes of the whole (N, H, W) tensor at once."""
    return images.transpose(-1, -2).contiguous()


@dataclass(frozen=True)
class FileSource:
    """Where one NIST file lives: a plain or gzip'd file, or a gzip'd member of NIST's `gzip.zip`."""

    path: Path
    member: str | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    def read_bytes(self) -> bytes:
        try:
            if self.member is not None:
                with zipfile.ZipFile(self.path) as archive:
                    member = archive.read(self.member)
                return gzip.decompress(member) if self.member.endswith(".gz") else member  # NIST's mapping: plain
            data = self.path.read_bytes()
            return gzip.decompress(data) if self.path.suffix == ".gz" else data
        except (OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
            raise EMNISTDataError(f"{self}: cannot read ({err})") from err


def parse_idx(data: bytes, name: str) -> torch.Tensor:
    """Decode NIST's IDX format (big-endian header, then the array), checking every size so that a truncated or
    foreign file fails here, by name, rather than as a shape error deep in training."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise EMNISTDataError(f"{name}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise EMNISTDataError(f"{name}: IDX header truncated or has {ndim} dimensions")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = _IDX_DTYPES[data[2]]
    expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if len(data) - header != expected:
        raise EMNISTDataError(
            f"{name}: IDX body has {len(data) - header} bytes, header {shape} needs {expected} (truncated or corrupt)"
        )
    array = torch.frombuffer(bytearray(data[header:]), dtype=dtype)
    if dtype != torch.uint8:
        array = array.view(torch.uint8).view(-1, array.element_size()).flip(-1).contiguous().view(dtype)
    return array.view(shape)


def find_emnist_files(root: str | Path) -> dict[str, FileSource] | None:
    """Find EMNIST Balanced under `root` in the forms people have: torchvision's extracted `EMNIST/raw/`, the gzip'd
    IDX files (in `root` or `EMNIST/raw/`), or NIST's `gzip.zip`. Returns None when a split file is missing."""
    root = Path(root)
    folders = [root / "EMNIST" / "raw", root]
    found: dict[str, FileSource] = {}
    archives = [f / NIST_ARCHIVE for f in folders if (f / NIST_ARCHIVE).is_file()]
    for key, name in [*SPLIT_FILES.items(), ("mapping", MAPPING_FILE)]:
        candidates = [f / n for f in folders for n in (name, f"{name}.gz")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is not None:
            found[key] = FileSource(path)
            continue
        for archive in archives:
            try:
                with zipfile.ZipFile(archive) as z:
                    members = [m for m in z.namelist() if Path(m).name in (name, f"{name}.gz")]
            except (OSError, zipfile.BadZipFile) as err:
                raise EMNISTDataError(f"{archive}: not a readable zip archive ({err}); delete it and retry") from err
            if members:
                found[key] = FileSource(archive, members[0])
                break
    return found if all(k in found for k in SPLIT_FILES) else None


def missing_files_message(root: str | Path) -> str:
    names = ", ".join(f"{n}.gz" for n in SPLIT_FILES.values())
    return (
        f"EMNIST Balanced not found under {Path(root).resolve()}. Put NIST's gzip'd files ({names}) in that folder "
        f"or in its EMNIST/raw/, or NIST's {NIST_ARCHIVE} there, or set download: true on a machine that reaches "
        f"{EMNIST.url}"
    )


def download_emnist(root: str | Path, url: str = EMNIST.url, md5: str | None = EMNIST.md5) -> Path:
    """Download NIST's archive into a temporary file next to its destination, check its md5 and that it opens as a
    zip, then move it into place, so an interrupted or corrupt download never leaves anything that a later run
    mistakes for data."""
    raw = Path(root) / "EMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=raw, prefix=".download-") as tmp:
        try:
            download_url(url, tmp, filename=NIST_ARCHIVE, md5=md5)
            with zipfile.ZipFile(Path(tmp) / NIST_ARCHIVE):
                pass  # a cut-short zip lacks its central directory: caught here even without an md5
        except Exception as err:  # urllib, socket, md5 and zip failures all mean the same to a user
            raise EMNISTDataError(f"download of {url} failed ({err}). {missing_files_message(root)}") from err
        os.replace(Path(tmp) / NIST_ARCHIVE, raw / NIST_ARCHIVE)
    return raw / NIST_ARCHIVE


def read_mapping(source: FileSource) -> str:
    """Read NIST's `label ascii-code` mapping into the characters it lists, in label order."""
    lines = source.read_bytes().decode("ascii", errors="replace").split()
    try:
        pairs = sorted((int(label), chr(int(code))) for label, code in zip(lines[::2], lines[1::2], strict=True))
    except ValueError as err:
        raise EMNISTDataError(f"{source}: not a 'label ascii-code' mapping ({err})") from err
    return "".join(char for _, char in pairs)


def load_split(files: dict[str, FileSource], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split as upright uint8 images (N, 28, 28) and int64 labels, checked against each other."""
    images = parse_idx(files[f"{split}_images"].read_bytes(), str(files[f"{split}_images"]))
    labels = parse_idx(files[f"{split}_labels"].read_bytes(), str(files[f"{split}_labels"]))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise EMNISTDataError(
            f"{files[f'{split}_images']} and {files[f'{split}_labels']}: shapes {list(images.shape)} and "
            f"{list(labels.shape)} do not make a labelled image set"
        )
    labels = labels.long()
    if len(labels) and (labels.min() < 0 or labels.max() >= len(BALANCED47_CHARSET)):
        raise EMNISTDataError(
            f"{files[f'{split}_labels']}: labels {labels.min().item()}..{labels.max().item()} outside EMNIST "
            f"Balanced's 0..{len(BALANCED47_CHARSET) - 1}"
        )
    return fix_orientation(images), labels


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


def random_affine(
    images: torch.Tensor,
    degrees: float,
    translate: float,
    shear: float,
    scale: tuple[float, float] = (1.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """torchvision's RandomAffine drawn independently for every image of a (B, C, H, W) float batch, in one
    `affine_grid`/`grid_sample` call, so augmentation runs batched on whatever device holds the batch."""
    n, device = images.shape[0], images.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device) * (high - low) + low

    angle = torch.deg2rad(uniform(-degrees, degrees))
    shear_x = torch.deg2rad(uniform(-shear, shear))
    zoom = uniform(*scale)
    shift = torch.stack([uniform(-translate, translate), uniform(-translate, translate)], dim=1) * 2
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear_x)
    # forward map = zoom * rotation @ shear_x; the grid needs its inverse (output pixel -> input pixel)
    forward = torch.stack([cos, cos * tan - sin, sin, sin * tan + cos], dim=1).view(n, 2, 2) * zoom.view(n, 1, 1)
    inverse = torch.linalg.inv(forward)
    theta = torch.cat([inverse, -(inverse @ shift.unsqueeze(-1))], dim=2)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


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

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, device=self.images.device)
        rows = index if self.rows is None else self.rows[index]
        return self.images[rows], self.labels[index], self.augment[index]

    def to(self, device: torch.device) -> IndexedImages:
        rows = None if self.rows is None else self.rows.to(device)
        return IndexedImages(self.images.to(device), self.labels.to(device), self.augment.to(device), rows)


def keep_batch(batch: object) -> object:
    """Collate for `IndexedImages`: the batch is already stacked."""
    return batch


class EMNISTDataModule(L.LightningDataModule):
    """EMNIST Balanced, filtered to a charset, upright, split 95/5 per class, augmented batch-wise after transfer."""

    def __init__(
        self,
        root: str = "data",
        charset: str = "balanced47",
        download: bool = False,
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
            download: fetch NIST's archive when nothing is found under `root`.
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
            balance_classes: sample training images with probability inverse to their class frequency.
            num_workers: DataLoader workers; batches are assembled by tensor indexing, so 0 is usually fastest.
            pin_memory: pin host batches for faster copies to a GPU.
            persistent_workers: keep workers alive between epochs (only with num_workers > 0).
            on_device: on a CUDA trainer, move the uint8 images to the GPU once (about 90 MB for all of EMNIST
                Balanced) and index batches there: no per-batch copy, no workers. Ignored on CPU.
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
        if stage in ("fit", "validate") and self.train_set is None:
            images, labels = self._filter(*load_split(files, "train"))
            train_idx, val_idx = stratified_split(labels, self.hparams.val_fraction, self.hparams.split_seed)
            self.normalization = _mean_std(images[train_idx])
            self.train_set = self._training_set(images[train_idx], labels[train_idx])
            self.val_set = IndexedImages(images[val_idx], labels[val_idx], torch.zeros(len(val_idx), dtype=torch.bool))
            self.train_set, self.val_set = self._on_device(self.train_set), self._on_device(self.val_set)
        if stage == "test" and self.test_set is None:
            images, labels = self._filter(*load_split(files, "test"))
            self.test_set = self._on_device(IndexedImages(images, labels, torch.zeros(len(labels), dtype=torch.bool)))

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
        """The CUDA device that holds the datasets when `on_device` is set and the trainer runs on one, else None."""
        if not self.hparams.on_device or self.trainer is None:
            return None
        device = self.trainer.strategy.root_device
        return device if device.type == "cuda" else None

    def _on_device(self, dataset: IndexedImages) -> IndexedImages:
        device = self.data_device
        if device is None:
            return dataset
        return dataset.to(device)

    def _loader(self, dataset: IndexedImages | None, train: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError("setup() has not prepared this stage's data")
        hp = self.hparams
        on_device = dataset.images.device.type != "cpu"
        sampler = None
        if train and hp.balance_classes:
            labels = dataset.labels.cpu()
            weights = (1.0 / torch.bincount(labels).double())[labels]
            sampler = WeightedRandomSampler(weights, num_samples=len(dataset), replacement=True)
        return DataLoader(
            dataset,
            batch_size=hp.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            collate_fn=keep_batch,
            num_workers=0 if on_device else hp.num_workers,
            pin_memory=hp.pin_memory and not on_device,
            persistent_workers=hp.persistent_workers and hp.num_workers > 0 and not on_device,
        )

    def train_dataloader(self) -> DataLoader:
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

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        """Turn uint8 (B, 28, 28) into float (B, 1, 28, 28) in [0, 1] on the batch's device, augmenting the flagged
        training images there; normalisation belongs to the model, so a checkpoint carries it."""
        if self.trainer is not None and self.trainer.predicting:
            return batch
        images, labels, augment = batch
        images = images.unsqueeze(1).float().div_(255)
        if self.trainer is not None and self.trainer.training and augment.any():
            hp = self.hparams
            images[augment] = random_affine(images[augment], hp.degrees, hp.translate, hp.shear, tuple(hp.scale))
        return images, labels


def _mean_std(images: torch.Tensor) -> tuple[float, float]:
    pixels = images.flatten().float().div_(255)
    return pixels.mean().item(), pixels.std().item()
