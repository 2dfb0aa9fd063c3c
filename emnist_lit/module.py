"""The LightningModule: a backbone, its input normalisation, the loss, and the torchmetrics suite."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from scipy.optimize import minimize_scalar
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

from emnist_lit.charsets import BALANCED47_CHARSET
from emnist_lit.models import BackboneName, StemName, build_backbone


class _CountsWithoutSync:
    """Counts per-class true/false positives/negatives by comparing the predictions and labels with every class.
    torchmetrics' own update counts them with `bincount`, whose output size is read back to the host on CUDA: a
    stall every step. The inputs are ours (logits and labels in range), so they are not validated either."""

    num_classes: int
    average: str

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        classes = torch.arange(self.num_classes, device=target.device)
        predicted = preds.argmax(dim=1).unsqueeze(1) == classes
        actual = target.unsqueeze(1) == classes
        tp = (predicted & actual).sum(0)
        fp = (predicted & ~actual).sum(0)
        fn = (~predicted & actual).sum(0)
        tn = len(target) - tp - fp - fn
        if self.average == "micro":
            tp, fp, tn, fn = tp.sum(), fp.sum(), tn.sum(), fn.sum()
        self._update_state(tp, fp, tn, fn)


class Accuracy(_CountsWithoutSync, MulticlassAccuracy):
    """MulticlassAccuracy, updated without a host sync."""


class Precision(_CountsWithoutSync, MulticlassPrecision):
    """MulticlassPrecision, updated without a host sync."""


class Recall(_CountsWithoutSync, MulticlassRecall):
    """MulticlassRecall, updated without a host sync."""


class F1Score(_CountsWithoutSync, MulticlassF1Score):
    """MulticlassF1Score, updated without a host sync."""


def metric_suite(num_classes: int, per_class: bool = False) -> MetricCollection:
    """Accuracy and macro precision, recall and F1 (one number each), or all four per class. The compute groups
    (metrics sharing one set of counts) are given, so torchmetrics does not compare states to find them, which
    reads back to the host. `balanced_acc` is macro recall under the name that says what it is for: accuracy as a
    class-balanced split would measure it, which checkpoints select by when the test split is balanced and the val
    split is not."""
    kwargs = {"validate_args": False}
    if per_class:
        metrics = {
            "acc": Accuracy(num_classes, average="none", **kwargs),
            "precision": Precision(num_classes, average="none", **kwargs),
            "recall": Recall(num_classes, average="none", **kwargs),
            "f1": F1Score(num_classes, average="none", **kwargs),
        }
        return MetricCollection(metrics, compute_groups=[list(metrics)])
    metrics = {
        "acc": Accuracy(num_classes, average="micro", **kwargs),
        "f1_macro": F1Score(num_classes, average="macro", **kwargs),
        "precision_macro": Precision(num_classes, average="macro", **kwargs),
        "recall_macro": Recall(num_classes, average="macro", **kwargs),
        "balanced_acc": Recall(num_classes, average="macro", **kwargs),
    }
    macro = ["f1_macro", "precision_macro", "recall_macro", "balanced_acc"]
    return MetricCollection(metrics, compute_groups=[["acc"], macro])


MAX_LOG_TEMPERATURE = 3.0
"""Temperatures are searched within exp(-3)..exp(3): far beyond what a trained network needs either way."""


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T at which softmax(logits / T) has the least cross-entropy on held-out images (temperature
    scaling): label smoothing and augmentation leave a network less sure than it is right, and `read` multiplies 17
    of its probabilities into the confidence it reports. A bounded 1-D search, no gradients."""
    logits, labels = logits.detach().double(), labels.detach()

    def loss(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels))

    bound = MAX_LOG_TEMPERATURE
    return math.exp(minimize_scalar(loss, bounds=(-bound, bound), method="bounded", options={"xatol": 1e-4}).x)


class EMNISTClassifier(L.LightningModule):
    """Classifies upright [0, 1] character images into `classes`; the characters and the input normalisation are
    stored in the checkpoint, so a checkpoint alone is enough to predict."""

    def __init__(
        self,
        classes: str = BALANCED47_CHARSET,
        backbone: BackboneName = "resnet34",
        stem: StemName = "imagenet",
        stem_activation: Literal["relu", "prelu"] = "relu",
        dropout: float = 0.0,
        width: int = 32,
        channels_last: bool = False,
        compile: bool = False,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_monitor: str = "val/loss",
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        mistakes_to_show: int | None = None,
    ) -> None:
        """
        Args:
            classes: the characters, one per output, in label order (linked from the datamodule's charset).
            backbone: network architecture.
            stem: `imagenet` (7x7 stride-2 conv and max-pool) or `small` (3x3 stride-1, no max-pool); ResNets only.
            stem_activation: activation after the ResNet stem; the VIN reference used PReLU.
            dropout: dropout before the last linear layer.
            width: channels of the first stage of the `cnn` backbone (doubled twice).
            channels_last: run the network in NHWC memory order, which oneDNN (CPU) and tensor cores (CUDA) prefer.
            compile: `torch.compile` the network for fit, validate and test (the first steps wait for the compiler);
                predict and export use it uncompiled, and checkpoints are the same either way.
            label_smoothing: cross-entropy label smoothing.
            optimizer: optimizer class and arguments, without the parameters.
            scheduler: LR scheduler class and arguments, without the optimizer.
            scheduler_monitor: metric a ReduceLROnPlateau scheduler watches.
            scheduler_interval: step the scheduler every `epoch` or every optimizer `step` (one-cycle schedules);
                a scheduler with an unset `total_steps` (OneCycleLR) gets the trainer's estimated step count.
            mistakes_to_show: unused; checkpoints made before `test_report.mistakes_to_show` existed still carry it.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.classes = classes
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.net = build_backbone(backbone, len(classes), stem, stem_activation, dropout, width)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.register_buffer("input_mean", torch.tensor(0.0))
        self.register_buffer("input_std", torch.tensor(1.0))
        self.register_buffer("temperature", torch.tensor(1.0))
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        n = len(classes)
        self.train_metrics = metric_suite(n).clone(prefix="train/")
        self.val_metrics = metric_suite(n).clone(prefix="val/")
        self.test_metrics = metric_suite(n).clone(prefix="test/")

    def setup(self, stage: str) -> None:
        """Take the training set's mean and std before fitting; checkpoints restore them afterwards. Compile the
        network in place (`nn.Module.compile`), so parameter names and checkpoints stay those of the plain one."""
        normalization = getattr(self.trainer.datamodule, "normalization", None)
        if stage == "fit" and normalization is not None:
            self.input_mean.fill_(normalization[0])
            self.input_std.fill_(normalization[1])
        if self.hparams.compile and stage != "predict":
            self.net.compile()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = (images - self.input_mean) / self.input_std
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def _shared_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], metrics: MetricCollection, return_logits: bool = False
    ) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        metrics.update(logits, labels)
        stage = metrics.prefix.rstrip("/")
        # val/loss is what ReduceLROnPlateau watches: averaged over all ranks, so each takes the same decision
        training = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=training, on_epoch=True, prog_bar=True, sync_dist=not training)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return logits if return_logits else loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, self.train_metrics)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        logits = self._shared_step(batch, self.val_metrics, return_logits=True)
        self._val_outputs.append((logits.detach(), batch[1]))

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def on_validation_epoch_end(self) -> None:
        """Calibrate on this epoch's validation images, so each checkpoint carries the temperature of its own
        weights; every rank fits its share and they take the mean (the result must be one number on all)."""
        if self._val_outputs and not self.trainer.sanity_checking:
            logits = torch.cat([out for out, _ in self._val_outputs]).float()
            labels = torch.cat([labels for _, labels in self._val_outputs])
            log_t = torch.tensor(math.log(fit_temperature(logits, labels)), device=self.temperature.device)
            self.temperature.fill_(self.trainer.strategy.reduce(log_t, reduce_op="mean").exp())
            self.log("val/temperature", self.temperature)
        self._val_outputs = []

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints from before calibration carry no temperature: theirs is 1 (the softmax as trained)."""
        checkpoint["state_dict"].setdefault("temperature", torch.tensor(1.0))

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The logits, for callbacks that report more than the headline metrics (`TestReport`)."""
        return self._shared_step(batch, self.test_metrics, return_logits=True)

    def on_test_epoch_end(self) -> None:
        self.log("hp_metric", self.test_metrics["acc"].compute())

    def predict_step(self, batch: tuple[torch.Tensor, list[str]], batch_idx: int) -> torch.Tensor:
        """Calibrated class probabilities for each image of the batch (a batch of blank photos for `read` may hold
        none)."""
        images = batch[0]
        if len(images) == 0:
            return images.new_zeros(0, len(self.classes))
        return (self(images) / self.temperature).softmax(dim=1)

    def configure_optimizers(self) -> dict:
        return optimizer_config(self, self.optimizer, self.scheduler)


def optimizer_config(
    module: L.LightningModule, optimizer: OptimizerCallable, scheduler: LRSchedulerCallable | None
) -> dict:
    """Lightning's optimizer dict from the config's callables; a scheduler with an unset `total_steps` (OneCycleLR)
    gets the trainer's estimated step count, and watches `scheduler_monitor` every `scheduler_interval`."""
    built = optimizer(module.parameters())
    if scheduler is None:
        return {"optimizer": built}
    kwargs = {}
    if getattr(scheduler, "keywords", {}).get("total_steps", 0) is None:
        kwargs["total_steps"] = int(module.trainer.estimated_stepping_batches)
    config = {
        "scheduler": scheduler(built, **kwargs),
        "monitor": module.hparams.scheduler_monitor,
        "interval": module.hparams.scheduler_interval,
    }
    return {"optimizer": built, "lr_scheduler": config}
