"""`predict`'s output: one `ASCII_CODE, PATH` line per image, unreadable files named on stderr, and a CSV."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from emnist_lit.atomic import write_atomically


class CharacterWriter(BasePredictionWriter):
    """Prints `ASCII_CODE, PATH` per image as the VIN reference's inference did, reports unreadable files on
    stderr, and optionally writes a CSV with confidence and top-3 once every batch is done."""

    def __init__(self, output: str | None = None, top_k: int = 3) -> None:
        """
        Args:
            output: CSV file to write (`path,char,ascii,confidence,top3`); nothing is written when unset.
            top_k: how many candidates the CSV's top column lists.
        """
        super().__init__(write_interval="batch")
        self.output, self.top_k = output, top_k
        self.rows: list[list[str]] = []
        self.failed: list[str] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rows, self.failed = [], []

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: torch.Tensor,
        batch_indices: Any,
        batch: tuple[torch.Tensor, list[str], list[tuple[str, str]]],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        _, paths, failures = batch
        for path, reason in failures:
            print(f"error: {path}: {reason}", file=sys.stderr, flush=True)
            self.failed.append(path)
        classes = pl_module.classes
        top = prediction.float().topk(min(self.top_k, prediction.shape[1]), dim=1)
        for path, probs, indices in zip(paths, top.values.tolist(), top.indices.tolist(), strict=True):
            char = classes[indices[0]]
            print(f"{ord(char)}, {path}", flush=True)
            candidates = " ".join(f"{classes[i]}:{p:.4f}" for i, p in zip(indices, probs, strict=True))
            self.rows.append([path, char, str(ord(char)), f"{probs[0]:.6f}", candidates])

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.output:

            def write(tmp: Path) -> None:
                with tmp.open("w", newline="", encoding="utf-8") as handle:
                    writer = csv.writer(handle)
                    writer.writerow(["path", "char", "ascii", "confidence", f"top{self.top_k}"])
                    writer.writerows(self.rows)

            write_atomically(self.output, write)
        if self.failed:
            print(f"{len(self.failed)} of {len(self.failed) + len(self.rows)} files failed", file=sys.stderr)
