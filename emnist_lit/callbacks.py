"""Training-time callbacks: a checkpoint when a scheduler pre-empts the job, and what TensorBoard shows a person."""

from __future__ import annotations

import os
import sys

import lightning as L
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.utils import make_grid

from emnist_lit import reports
from emnist_lit.module import metric_suite


class SigtermCheckpoint(Callback):
    """Save `last.ckpt` in the run's checkpoint folder when `fit` is stopped by SIGTERM (a scheduler pre-empting the
    job), so `--ckpt_path last` resumes from that very step. Lightning 2.6 turns SIGTERM into a `SIGTERMException`
    only after the current batch, so the saved state is consistent; Ctrl-C and crashes are not saved, since they can
    stop mid-update. Not an `OnExceptionCheckpoint`: with one of those among the callbacks, Lightning turns every
    `fit` without `--ckpt_path` into `--ckpt_path last` and silently resumes a previous run's `last.ckpt`."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        checkpoint = trainer.checkpoint_callback
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        if checkpoint is None or getattr(checkpoint, "dirpath", None) is None:
            return  # stopped before ModelCheckpoint knew its folder: nothing trained yet
        path = os.path.join(checkpoint.dirpath, checkpoint.CHECKPOINT_NAME_LAST + checkpoint.FILE_EXTENSION)
        trainer.save_checkpoint(path)
        checkpoint.last_model_path = path
        if trainer.is_global_zero:
            print(f"SIGTERM: checkpoint of step {trainer.global_step} saved to {path}", file=sys.stderr, flush=True)


class AugmentedSamples(Callback):
    """Shows the first training batch as the network sees it (augmented, upright) in TensorBoard, so a wrong
    orientation or a too-strong augmentation is visible before hours of training."""

    def __init__(self, count: int = 64) -> None:
        """
        Args:
            count: how many images of the first batch to draw (0: none).
        """
        self.count = count

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: tuple, batch_idx: int
    ) -> None:
        if self.count and trainer.global_step == 0 and isinstance(trainer.logger, TensorBoardLogger):
            grid = make_grid(batch[0][: self.count].float(), nrow=8, pad_value=0.5)
            trainer.logger.experiment.add_image("train/augmented_samples", grid, trainer.global_step)


class TestReport(Callback):
    """At the end of `test`: per-class precision, recall and F1 and the most confused pairs on stdout, and the
    confusion matrix, per-class accuracy and most confident mistakes as TensorBoard figures."""

    __test__ = False  # not a pytest test class

    def __init__(self, mistakes_to_show: int = 32, confused_pairs: int = 10) -> None:
        """
        Args:
            mistakes_to_show: how many of the most confident test mistakes to draw in TensorBoard.
            confused_pairs: how many of the most frequent (true, predicted) mistakes to print.
        """
        self.mistakes = reports.MostConfidentMistakes(mistakes_to_show)
        self.confused_pairs = confused_pairs
        self.per_class: MetricCollection | None = None  # sized and placed once the model's classes are known
        self.confusion: MulticlassConfusionMatrix | None = None
        self.fed = False

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fed = False
        n = len(pl_module.classes)
        self.per_class = metric_suite(n, per_class=True).to(pl_module.device)
        self.confusion = MulticlassConfusionMatrix(n).to(pl_module.device)
        self.mistakes.reset()

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: torch.Tensor,
        batch: tuple[torch.Tensor, torch.Tensor],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if outputs is None:  # a test step without logits (a line model's reads strings): nothing to report
            return
        self.fed = True
        images, labels = batch
        self.per_class.update(outputs, labels)
        self.confusion.update(outputs, labels)
        self.mistakes.update(images, outputs, labels)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.fed:
            return
        per_class = {name: value.cpu() for name, value in self.per_class.compute().items()}
        confusion = self.confusion.compute().cpu()
        classes = pl_module.classes
        if trainer.is_global_zero:
            print(reports.per_class_table(classes, per_class, confusion))
            print(reports.confused_pairs(classes, confusion, self.confused_pairs))
        if isinstance(trainer.logger, TensorBoardLogger) and trainer.is_global_zero:
            writer, step = trainer.logger.experiment, trainer.global_step
            side = max(6.0, 0.3 * len(classes))
            figure, axes = plt.subplots(figsize=(side, side))
            self.confusion.plot(ax=axes, labels=list(classes), add_text=len(classes) <= 20, cmap="viridis")
            writer.add_figure("test/confusion_matrix", figure, step)
            writer.add_figure("test/per_class_accuracy", reports.per_class_figure(classes, per_class), step)
            writer.add_figure("test/most_confident_mistakes", self.mistakes.figure(classes), step)
            plt.close("all")
        self.per_class.reset()
        self.confusion.reset()
        self.mistakes.reset()
