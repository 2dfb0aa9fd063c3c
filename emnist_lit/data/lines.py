"""Lines of handwriting composed from EMNIST characters, as a LightningDataModule for training and measuring a line
model: every line is rendered as a photo (`line_photos`) and prepared exactly as `read` prepares a photo
(`line_ink`), so the model learns from what it will be shown."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from emnist_lit.charsets import VIN_CHARSET
from emnist_lit.data.augment import random_affine
from emnist_lit.data.datamodule import EMNISTDataModule, IndexedImages
from emnist_lit.errors import EMNISTConfigError
from emnist_lit.line_ink import find_line_ink, to_line_image
from emnist_lit.line_model import FRAME_STRIDE
from emnist_lit.line_photos import LINE_STYLES, GlyphBank, LineStyle, encode_photo, random_text, random_vin, render_line

SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}
"""Mixed into every line's seed, so the three sets never repeat each other's layouts."""


class RenderedLines(Dataset):
    """Line i of a set, rendered from `bank` with its own generator (seed, split, i), whichever worker draws it: a
    VIN with probability `vin_fraction` (when the charset holds the VIN alphabet), else random text."""

    def __init__(
        self,
        bank: GlyphBank,
        count: int,
        seed: int,
        styles: Sequence[LineStyle],
        vin_fraction: float,
        text_lengths: tuple[int, int],
    ) -> None:
        self.bank, self.count, self.seed = bank, count, seed
        self.styles, self.vin_fraction, self.text_lengths = list(styles), vin_fraction, text_lengths

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[np.ndarray, str] | None:
        rng = np.random.default_rng([self.seed, index])
        style = self.styles[index % len(self.styles)]
        if rng.random() < self.vin_fraction:
            text = random_vin(rng)
        else:
            text = random_text(rng, self.bank.available, *self.text_lengths)
        photo = render_line(text, self.bank, None, self.bank.classes, style, rng)
        data, _ = encode_photo(photo.image, rng)
        found = find_line_ink(Image.open(io.BytesIO(data)))
        if isinstance(found, str):
            return None
        return np.round(to_line_image(found) * 255).astype(np.uint8), text


def _as_is(item: object) -> object:
    return item


def render_all(lines: RenderedLines, workers: int) -> tuple[list[np.ndarray], list[str]]:
    """Every line of the set, rendered by `workers` DataLoader processes; lines the preparation found blank (none
    expected) are left out."""
    loader = DataLoader(lines, batch_size=None, num_workers=workers, collate_fn=_as_is)
    rendered = [item for item in loader if item is not None]
    return [image for image, _ in rendered], [text for _, text in rendered]


class LineImages(Dataset):
    """Prepared line images (uint8 (28, W), widths differ) and their texts."""

    def __init__(self, images: list[np.ndarray], texts: list[str], classes: str) -> None:
        self.images, self.texts, self.classes = images, texts, classes

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        return self.images[index], self.texts[index]


def pad_lines(images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Line images side by side in one (B, 28, W) tensor, padded with blank columns to a width the network's stride
    divides, and each one's frame count."""
    width = math.ceil(max(image.shape[1] for image in images) / FRAME_STRIDE) * FRAME_STRIDE
    batch = torch.zeros(len(images), images[0].shape[0], width, dtype=torch.from_numpy(images[0]).dtype)
    for row, image in enumerate(images):
        batch[row, :, : image.shape[1]] = torch.from_numpy(image)
    frames = torch.tensor([image.shape[1] // FRAME_STRIDE for image in images])
    return batch, frames


class LineCollate:
    """Batches of lines: padded images, frame counts, CTC targets (class index + 1; 0 is the blank), lengths, texts."""

    def __init__(self, classes: str) -> None:
        self.index = {char: i + 1 for i, char in enumerate(classes)}

    def __call__(self, items: list[tuple[np.ndarray, str]]) -> tuple:
        images, frames = pad_lines([image for image, _ in items])
        texts = [text for _, text in items]
        targets = torch.tensor([self.index[char] for text in texts for char in text], dtype=torch.long)
        lengths = torch.tensor([len(text) for text in texts], dtype=torch.long)
        return images, frames, targets, lengths, texts


class LineDataModule(EMNISTDataModule):
    """EMNIST characters composed into photographed lines (free, tight, boxed): training lines from the training
    split's characters only, validation lines from the validation split's, test lines from the test files'. Each
    set is rendered once per run, in `render_workers` processes, and the training lines are slanted anew every
    epoch (`shear`; `degrees` tilts them, but a wide line turned about its centre soon loses its ends)."""

    def __init__(
        self,
        train_lines: int = 12_000,
        val_lines: int = 600,
        test_lines: int = 600,
        vin_fraction: float = 0.7,
        text_lengths: tuple[int, int] = (3, 17),
        styles: list[LineStyle] | None = None,
        line_seed: int = 0,
        render_workers: int = 2,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            train_lines: lines rendered for training.
            val_lines: lines rendered from the validation split.
            test_lines: lines rendered from the test files.
            vin_fraction: share of lines that are valid VINs (when the charset holds the VIN alphabet); the rest are
                random strings of the charset.
            text_lengths: shortest and longest random string.
            styles: line styles to render, taken in turn (default: all of free, tight, boxed).
            line_seed: seed of the rendered lines (the same seed renders the same lines).
            render_workers: processes rendering lines.
            **kwargs: EMNISTDataModule's arguments, with its defaults; for lines set `batch_size` (lines per batch),
                `degrees` and `translate` small or 0 (a wide line turned or shifted loses its ends) and `shear`.
        """
        super().__init__(**kwargs)
        if min(train_lines, val_lines, test_lines) < 1:
            raise EMNISTConfigError("train_lines, val_lines and test_lines must be positive")
        if not 0.0 <= vin_fraction <= 1.0:
            raise EMNISTConfigError(f"vin_fraction must be between 0 and 1, got {vin_fraction}")
        if not 1 <= text_lengths[0] <= text_lengths[1]:
            raise EMNISTConfigError(f"text_lengths must be (shortest, longest) with 1 <= shortest, got {text_lengths}")
        unknown = sorted(set(styles or ()) - set(LINE_STYLES))
        if unknown:
            raise EMNISTConfigError(f"styles {unknown}: use some of {list(LINE_STYLES)}")
        self.line_sets: dict[str, LineImages] = {}

    def setup(self, stage: str) -> None:
        if stage == "predict":
            return super().setup(stage)
        super().setup(stage)
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}[stage]
        for split in wanted:
            if split not in self.line_sets:
                self.line_sets[split] = self._render(split, self._host_sets[split])

    def _render(self, split: str, characters: IndexedImages) -> LineImages:
        hp = self.hparams
        bank = GlyphBank(characters.images.numpy(), characters.labels.numpy(), self.classes)
        count = {"train": hp.train_lines, "val": hp.val_lines, "test": hp.test_lines}[split]
        vin_fraction = hp.vin_fraction if set(VIN_CHARSET) <= set(self.classes) else 0.0
        styles = hp.styles or list(LINE_STYLES)
        lines = RenderedLines(
            bank, count, hp.line_seed * 10 + SPLIT_SEEDS[split], styles, vin_fraction, hp.text_lengths
        )
        return LineImages(*render_all(lines, hp.render_workers), self.classes)

    def _line_loader(self, split: str, train: bool = False) -> DataLoader:
        if split not in self.line_sets:
            raise RuntimeError("setup() has not prepared this stage's lines")
        return DataLoader(
            self.line_sets[split],
            batch_size=self.hparams.batch_size,
            shuffle=train,
            collate_fn=LineCollate(self.classes),
            drop_last=train and len(self.line_sets[split]) > self.hparams.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._line_loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._line_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._line_loader("test")

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        """uint8 (B, 28, W) lines to float (B, 1, 28, W) in [0, 1], training batches slanted (and tilted) per line."""
        if self.trainer is not None and self.trainer.predicting:
            return batch
        images, *rest = batch
        images = images.unsqueeze(1).float().div_(255)
        if self.trainer is not None and self.trainer.training and self.augments:
            hp = self.hparams
            generator = self.augment_generator(images.device)
            images = random_affine(images, hp.degrees, hp.translate, hp.shear, tuple(hp.scale), generator)
        if (precision := getattr(self.trainer, "precision_plugin", None)) is not None:
            images = precision.convert_input(images)
        return images, *rest
