"""How `predict` and `read` run the network on a CPU: intra-op threads that leave the decoding workers their cores,
and channels_last weights, the layout oneDNN convolves fastest."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader


def predict_threads(workers: int, threads: int | None = None) -> int:
    """Intra-op threads for the process that runs the network while `workers` DataLoader workers decode images:
    `threads` (torch's current count when None) less one per worker, at least one. OpenMP threads that share their
    cores with the workers or with other programs wait for each other at every operation, which cost batched
    `predict` up to 3x on a busy 2-core machine."""
    available = torch.get_num_threads() if threads is None else threads
    return max(1, available - workers)


def loader_workers(loaders: Any) -> int:
    """The most DataLoader workers among `loaders` (one loader, or a list, tuple or dict of them)."""
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    elif not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    return max((loader.num_workers for loader in loaders if isinstance(loader, DataLoader)), default=0)


class InferenceSetup(Callback):
    """For `predict` (and `read`, which runs through it) on a CPU: sets the intra-op threads for the number of
    decoding workers (`predict_threads`) and runs the network with channels_last weights; both are put back when
    predict ends, so the process and the model are as they were."""

    def __init__(self, threads: int | None = None, channels_last: bool = True) -> None:
        """
        Args:
            threads: intra-op threads while predicting; null: torch's count less one per DataLoader worker.
            channels_last: convolve in NHWC order, 1.3-1.9x faster than NCHW with oneDNN for these backbones.
        """
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.threads, self.channels_last = threads, channels_last
        self._saved_threads: int | None = None
        self._converted = False

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.strategy.root_device.type != "cpu":
            return
        self._saved_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads or predict_threads(loader_workers(trainer.predict_dataloaders)))
        weights = [p for p in pl_module.parameters() if p.dim() == 4]
        if self.channels_last and not all(w.is_contiguous(memory_format=torch.channels_last) for w in weights):
            pl_module.to(memory_format=torch.channels_last)
            self._converted = True

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore(pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore(pl_module)

    def _restore(self, pl_module: LightningModule) -> None:
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None
        if self._converted:
            pl_module.to(memory_format=torch.contiguous_format)
            self._converted = False
