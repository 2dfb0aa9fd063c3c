"""What `predict` and `read` print and write: one line per image on stdout, unreadable files named on stderr, and
a CSV written atomically once every batch is done."""

from __future__ import annotations

import csv
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from emnist_lit.atomic import write_atomically
from emnist_lit.ctc import align, best_path, spans_of, tables_of
from emnist_lit.line_cuts import combine_tables, load_character_reader, read_cut_characters
from emnist_lit.module import EMNISTClassifier
from emnist_lit.vin import DEFAULT_MIN_CONFIDENCE, STATUS_UNVERIFIED, VIN_LENGTH, Reading, decode_text, decode_vins


class FileResultWriter(BasePredictionWriter):
    """What `predict` and `read` share: one row per readable file, each unreadable one named on stderr as its batch
    arrives, and at the end the CSV (all rows or none) and how many files failed."""

    def __init__(self, output: str | None, csv_header: list[str]) -> None:
        super().__init__(write_interval="batch")
        self.output, self.csv_header = output, csv_header
        self.rows: list[list[str]] = []
        self.failed: list[str] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rows, self.failed = [], []

    def report_failures(self, failures: list[tuple[str, str]]) -> None:
        for path, reason in failures:
            print(f"error: {path}: {reason}", file=sys.stderr, flush=True)
            self.failed.append(path)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.output:
            write_csv(self.output, self.csv_header, self.rows)
        if self.failed:
            print(f"{len(self.failed)} of {len(self.failed) + len(self.rows)} files failed", file=sys.stderr)


class CharacterWriter(FileResultWriter):
    """Prints `ASCII_CODE, PATH` per image as the VIN reference's inference did, reports unreadable files on
    stderr, and optionally writes a CSV with confidence and top-3 once every batch is done."""

    def __init__(self, output: str | None = None, top_k: int = 3) -> None:
        """
        Args:
            output: CSV file to write (`path,char,ascii,confidence,top3`); nothing is written when unset.
            top_k: how many candidates the CSV's top column lists.
        """
        super().__init__(output, ["path", "char", "ascii", "confidence", f"top{top_k}"])
        self.top_k = top_k

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
        self.report_failures(failures)
        classes = pl_module.classes
        top = prediction.float().topk(min(self.top_k, prediction.shape[1]), dim=1)
        for path, probs, indices in zip(paths, top.values.tolist(), top.indices.tolist(), strict=True):
            char = classes[indices[0]]
            print(f"{ord(char)}, {path}", flush=True)
            candidates = " ".join(f"{classes[i]}:{p:.4f}" for i, p in zip(indices, probs, strict=True))
            self.rows.append([path, char, str(ord(char)), f"{probs[0]:.6f}", candidates])


def write_csv(path: str | Path, header: list[str], rows: list[list[str]]) -> None:
    """The whole table or nothing: a crash never leaves half a CSV under `path`."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)

    write_atomically(path, write)


class AlignedLine(NamedTuple):
    """A line model's reading of one photo: its best path's characters, and the tables and frame owners (`ctc.align`)
    of its best alignment with the characters asked for (None when there are too few frames)."""

    characters: list[int]
    tables: np.ndarray | None
    owner: np.ndarray | None


class LineWriter(FileResultWriter):
    """Prints `TEXT, PATH` per photo of a handwritten line, decoding its characters' probabilities as a VIN (check
    digit and position rules, status `valid`, `corrected` or `unverified`) or as free text; unreadable files are
    named on stderr; the CSV holds the status, the confidence and each character's top alternatives."""

    def __init__(
        self,
        output: str | None = None,
        format: Literal["vin", "text"] = "vin",
        check_digit: bool = True,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
        top_k: int = 3,
        character_ckpt: str | None = None,
        character_weight: float = 0.5,
        character_below: float = 0.999,
    ) -> None:
        """
        Args:
            output: CSV file to write (`path,text,status,confidence,characters,alternatives`); none when unset.
            format: `vin` (17 characters under 49 CFR 565.15's rules) or `text` (any length, the model's charset).
            check_digit: VINs carry the position-9 check digit (North America); false for European VINs.
            min_confidence: below this probability of being right, a reading is `unverified`.
            top_k: alternatives listed per character in the CSV.
            character_ckpt: with a line model, a character model of the same classes (`vin_reader`) that reads each
                character where the line model places it, for a second opinion (`line_cuts`).
            character_weight: the character model's share of the two opinions (a weighted geometric mean).
            character_below: the character model reads only the characters the line model gives less than this
                probability: at 0.999 about half of them, 1.3-1.5x as fast as reading all, with the same exact
                rates on 840 generated photos (one photo fewer in each of two sets of 420 tiled ones).
        """
        super().__init__(output, ["path", "text", "status", "confidence", "characters", f"top{top_k}_per_character"])
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence {min_confidence}: must be between 0 and 1")
        for name, value in (("character_weight", character_weight), ("character_below", character_below)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} {value}: must be between 0 and 1")
        self.format, self.check_digit = format, check_digit
        self.min_confidence, self.top_k = min_confidence, top_k
        self.character_ckpt = character_ckpt
        self.character_weight, self.character_below = character_weight, character_below
        self.character_reader: EMNISTClassifier | None = None

    def load_character_reader(self, classes: str) -> None:
        """Load `character_ckpt` for a line model reading `classes`, before any photo is read."""
        if self.character_ckpt:
            self.character_reader = load_character_reader(self.character_ckpt, classes)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        if self.character_reader is not None:
            self.character_reader.to(pl_module.device)

    @property
    def expected_count(self) -> int | None:
        """How many characters the segmenter should find on each photo."""
        return VIN_LENGTH if self.format == "vin" else None

    def decode(
        self, probs: torch.Tensor, counts: list[int], classes: str, several_lines: list[bool] | None = None
    ) -> list[Reading]:
        """One reading per photo; VINs of 17 characters are decoded together, in one call. A photo of several
        lines of writing is `unverified` whatever its characters say."""
        per_photo = probs.float().cpu().split(counts)
        if self.format == "text":
            readings = [decode_text(p, classes, self.min_confidence, self.top_k) for p in per_photo]
            return self._distrust(readings, several_lines)
        readings: list[Reading | None] = [None] * len(per_photo)
        full = [i for i, p in enumerate(per_photo) if len(p) == VIN_LENGTH]
        if full:
            batch = torch.stack([per_photo[i] for i in full])
            decoded = decode_vins(batch, classes, self.check_digit, self.min_confidence, self.top_k)
            for i, reading in zip(full, decoded, strict=True):
                readings[i] = reading
        for i, p in enumerate(per_photo):
            if readings[i] is None:
                readings[i] = Reading("".join(classes[j] for j in p.argmax(1).tolist()), STATUS_UNVERIFIED, 0.0, ())
        return self._distrust(readings, several_lines)  # type: ignore[arg-type]

    @staticmethod
    def _distrust(readings: list[Reading], several_lines: list[bool] | None) -> list[Reading]:
        return [
            replace(reading, status=STATUS_UNVERIFIED, confidence=0.0) if several else reading
            for reading, several in zip(readings, several_lines or [False] * len(readings), strict=True)
        ]

    def decode_frames(
        self,
        probs: torch.Tensor,
        frames: torch.Tensor,
        classes: str,
        several_lines: list[bool] | None = None,
        crops: list[np.ndarray | None] | None = None,
    ) -> tuple[list[Reading], list[int]]:
        """One reading per photo from a line model's per-frame probabilities (B, T, classes + 1), and how many
        characters its best path holds. A VIN takes the per-character tables of the best alignment with 17
        characters, so the check digit can weigh the model's doubts; it stays `unverified` when the line model's own
        best path does not hold 17 characters. Free text takes the tables of the best path's characters. Given a
        character reader and each photo's `line_ink.line_crop`, the tables weigh in its reading of each character."""
        arrays = probs.float().cpu().numpy()
        aligned: list[AlignedLine] = []
        counts = []
        for array, count in zip(arrays, frames.tolist(), strict=True):
            characters, _ = best_path(array[:count]) if count else ([], [])
            counts.append(len(characters))
            length = VIN_LENGTH if self.format == "vin" else len(characters)
            owner = align(array[:count], length) if length else None
            tables = None if owner is None else tables_of(array[:count], owner, length)
            aligned.append(AlignedLine(characters, tables, owner))
        if self.character_reader is not None and crops is not None:
            aligned = self._weigh_in_characters(aligned, crops)
        readings: list[Reading | None] = []
        vin_tables, vin_rows = [], []
        for characters, tables, _ in aligned:
            text = "".join(classes[i] for i in characters)
            if tables is None:
                readings.append(Reading(text, STATUS_UNVERIFIED, 0.0, ()))
            elif self.format == "text":
                readings.append(decode_text(tables, classes, self.min_confidence, self.top_k))
            else:
                readings.append(None)
                vin_tables.append(tables)
                vin_rows.append(len(readings) - 1)
        if vin_tables:
            decoded = decode_vins(np.stack(vin_tables), classes, self.check_digit, self.min_confidence, self.top_k)
            for row, reading in zip(vin_rows, decoded, strict=True):
                if counts[row] != VIN_LENGTH:
                    reading = replace(reading, status=STATUS_UNVERIFIED, confidence=0.0)
                readings[row] = reading
        return self._distrust(readings, several_lines), counts  # type: ignore[arg-type]

    def _weigh_in_characters(self, aligned: list[AlignedLine], crops: list[np.ndarray | None]) -> list[AlignedLine]:
        """Each photo's tables combined with the character reader's reading of the characters cut where the
        alignment puts them."""
        rows = [i for i, line in enumerate(aligned) if line.tables is not None and crops[i] is not None]
        spans = [spans_of(aligned[i].owner, len(aligned[i].tables)) for i in rows]
        doubted = [np.flatnonzero(aligned[i].tables.max(1) < self.character_below) for i in rows]
        opinions = read_cut_characters(self.character_reader, [crops[i] for i in rows], spans, doubted)
        combined = list(aligned)
        for i, positions, opinion in zip(rows, doubted, opinions, strict=True):
            tables = aligned[i].tables.copy()
            tables[positions] = combine_tables(tables[positions], opinion, self.character_weight)
            combined[i] = aligned[i]._replace(tables=tables)
        return combined

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        batch_indices: Any,
        batch: tuple,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Batches of a character model: (characters, paths, failures, counts, several lines), the prediction the
        characters' probabilities; of a line model: (images, frames, paths, failures, several lines, line crops),
        the prediction (per-frame probabilities, frames)."""
        if isinstance(prediction, tuple):
            _, _, paths, failures, several_lines, crops = batch
            readings, counts = self.decode_frames(*prediction, pl_module.classes, several_lines, crops)
        else:
            _, paths, failures, counts, several_lines = batch
            readings = self.decode(prediction, counts, pl_module.classes, several_lines)
        self.report_failures(failures)
        for path, count, reading in zip(paths, counts, readings, strict=True):
            print(f"{reading.text}, {path}", flush=True)
            alternatives = " | ".join(
                " ".join(f"{c}:{p:.4f}" for c, p in position) for position in reading.alternatives
            )
            self.rows.append(
                [path, reading.text, reading.status, f"{reading.confidence:.6f}", str(count), alternatives]
            )
