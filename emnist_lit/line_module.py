"""The LightningModule that reads whole lines: LineCNN trained with CTC on lines composed from EMNIST characters,
scored by character error rate and the share of lines read exactly."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import MeanMetric
from torchmetrics.text import CharErrorRate

from emnist_lit.charsets import VIN_CHARSET
from emnist_lit.checkpoints import load_checkpoint
from emnist_lit.ctc import BLANK, best_path
from emnist_lit.errors import CheckpointError
from emnist_lit.line_model import LineCNN
from emnist_lit.module import optimizer_config

LineBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]
"""(images (B, 1, 28, W), frames per image (B,), targets (sum of lengths,) as class + 1, lengths (B,), texts)."""


class LineRecognizer(L.LightningModule):
    """Reads a line image into a string of `classes`; `read` turns its per-frame probabilities into text, or into
    per-character tables for the VIN decoder. The checkpoint alone is enough to read: it stores the characters and
    the input normalisation."""

    def __init__(
        self,
        classes: str = VIN_CHARSET,
        width: int = 32,
        hidden: int = 128,
        dropout: float = 0.0,
        init_from: str | None = None,
        channels_last: bool = False,
        compile: bool = False,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_monitor: str = "val/loss",
        scheduler_interval: Literal["epoch", "step"] = "epoch",
    ) -> None:
        """
        Args:
            classes: the characters, in label order (linked from the datamodule's charset).
            width: channels of the first convolution stage (doubled twice), as the `cnn` character backbone's.
            hidden: LSTM units in each direction.
            dropout: dropout before the output layer.
            init_from: a checkpoint this network starts from: a character one (`backbone: cnn` of the same `width`,
                any classes) gives the convolutions; a line one (same classes, `width` and `hidden`) gives the whole
                network, to train on with a fresh schedule and budget.
            channels_last: run the convolutions in NHWC memory order.
            compile: `torch.compile` the network for fit, validate and test.
            optimizer: optimizer class and arguments, without the parameters.
            scheduler: LR scheduler class and arguments, without the optimizer.
            scheduler_monitor: metric a ReduceLROnPlateau scheduler watches.
            scheduler_interval: step the scheduler every `epoch` or every optimizer `step`.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.classes = classes
        self.optimizer, self.scheduler = optimizer, scheduler
        self.net = LineCNN(len(classes), width, hidden, dropout)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.register_buffer("input_mean", torch.tensor(0.0))
        self.register_buffer("input_std", torch.tensor(1.0))
        self.metrics = torch.nn.ModuleDict(
            {stage: torch.nn.ModuleDict({"cer": CharErrorRate(), "exact": MeanMetric()}) for stage in ("val", "test")}
        )

    def setup(self, stage: str) -> None:
        """Before fitting: the training set's normalisation and, with `init_from`, the weights it starts from."""
        normalization = getattr(self.trainer.datamodule, "normalization", None)
        if stage == "fit" and normalization is not None:
            self.input_mean.fill_(normalization[0])
            self.input_std.fill_(normalization[1])
        if stage == "fit" and self.hparams.init_from:
            self._start_from_checkpoint(self.hparams.init_from)
        if self.hparams.compile and stage != "predict":
            self.net.compile()

    def _start_from_checkpoint(self, path: str) -> None:
        state = load_checkpoint(path)["state_dict"]
        if any(key.startswith("net.context.") for key in state):
            target, prefix, needs = self.net, "net.", "a line checkpoint of the same classes, width and hidden size"
        else:
            target, prefix, needs = self.net.features, "net.features.", "a `backbone: cnn` character checkpoint"
        weights = {key.removeprefix(prefix): v for key, v in state.items() if key.startswith(prefix)}
        try:
            target.load_state_dict(weights)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise CheckpointError(
                f"checkpoint {path}: its weights do not fit this line model (init_from needs {needs}, width "
                f"{self.hparams.width}): {first}"
            ) from err

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Scores (B, W // 4, classes + 1) for images (B, 1, 28, W) in [0, 1]."""
        images = (images - self.input_mean) / self.input_std
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def _loss(self, batch: LineBatch) -> tuple[torch.Tensor, torch.Tensor]:
        images, frames, targets, lengths, _ = batch
        log_probs = self(images).float().log_softmax(-1)
        loss = F.ctc_loss(log_probs.transpose(0, 1), targets, frames, lengths, blank=BLANK, zero_infinity=True)
        return loss, log_probs

    def training_step(self, batch: LineBatch, batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch[4]))
        return loss

    def _evaluate(self, batch: LineBatch, stage: str) -> None:
        loss, log_probs = self._loss(batch)
        texts = batch[4]
        read = self.decode(log_probs.exp(), batch[1])
        metrics = self.metrics[stage]
        metrics["cer"].update(read, texts)
        metrics["exact"].update(torch.tensor([a == b for a, b in zip(read, texts, strict=True)], dtype=torch.float))
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(texts))
        self.log(f"{stage}/cer", metrics["cer"], on_epoch=True, prog_bar=True, batch_size=len(texts))
        self.log(f"{stage}/exact", metrics["exact"], on_epoch=True, prog_bar=True, batch_size=len(texts))

    def validation_step(self, batch: LineBatch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: LineBatch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def decode(self, probs: torch.Tensor, frames: torch.Tensor) -> list[str]:
        """The string of each line by CTC's best path."""
        arrays = probs.detach().float().cpu().numpy()
        return [
            "".join(self.classes[i] for i in best_path(array[:n])[0])
            for array, n in zip(arrays, frames.tolist(), strict=True)
        ]

    def predict_step(self, batch: tuple, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame probabilities (B, T, classes + 1) and each line's frame count, for `read`'s writer."""
        images, frames = batch[0], batch[1]
        if len(images) == 0:
            return images.new_zeros(0, 0, len(self.classes) + 1), frames
        return self(images).float().softmax(-1), frames

    def configure_optimizers(self) -> dict:
        return optimizer_config(self, self.optimizer, self.scheduler)
