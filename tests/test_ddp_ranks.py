"""Several processes train one model: what must agree across DDP ranks (the val/loss a plateau scheduler watches,
hence the LR and the weights), what must differ (each rank's augmentation, its share of a class-balanced draw),
and the single-process pieces behind them: sharded on-device batches, a per-rank augmentation stream that a
resumed run continues, full training batches, bf16, a datamodule that follows its trainer, predict on one device."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import smoke_args
from lightning.pytorch.callbacks import Callback

from emnist_lit.cli import main
from emnist_lit.data import EMNISTDataModule, IndexedImages
from emnist_lit.data.datamodule import DeviceBatches

TESTS = Path(__file__).resolve().parent


def indexed(n: int, device: str = "cpu") -> IndexedImages:
    """n one-pixel images whose labels are their own indices, so a batch's labels say which images it holds."""
    images = torch.zeros(n, 1, 1, dtype=torch.uint8)
    return IndexedImages(images, torch.arange(n), torch.ones(n, dtype=torch.bool)).to(torch.device(device))


def drawn(batches: DeviceBatches) -> list[list[int]]:
    return [labels.tolist() for _, labels, _ in batches]


def flat(batches: DeviceBatches) -> list[int]:
    return [index for batch in drawn(batches) for index in batch]


def test_device_batches_shard_one_permutation_across_ranks_in_full_batches() -> None:
    dataset = indexed(103)
    ranks = [DeviceBatches(dataset, 10, seed=7, rank=r, world_size=2) for r in (0, 1)]
    shares = [drawn(batches) for batches in ranks]
    assert [len(share) for share in shares] == [5, 5] == [len(batches) for batches in ranks]
    assert all(len(batch) == 10 for share in shares for batch in share)
    seen = [i for share in shares for batch in share for i in batch]
    assert len(set(seen)) == len(seen) == 100, "the ranks' shares overlap"
    assert drawn(ranks[0]) == shares[0], "an epoch's order depends on (seed, epoch) only"
    ranks[0].set_epoch(1)
    assert drawn(ranks[0]) != shares[0]


def test_device_batches_shard_one_class_balanced_draw_across_ranks() -> None:
    dataset, weights = indexed(100), torch.linspace(1.0, 2.0, 100)
    whole = flat(DeviceBatches(dataset, 10, weights, seed=7))
    shares = [flat(DeviceBatches(dataset, 10, weights, seed=7, rank=r, world_size=2)) for r in (0, 1)]
    assert shares[0] == whole[0::2] and shares[1] == whole[1::2]
    assert len(set(whole)) < len(whole), "a draw with replacement repeats images"


def test_device_batches_give_a_share_smaller_than_a_batch_as_one_batch() -> None:
    batches = DeviceBatches(indexed(7), 10, seed=0, rank=1, world_size=2)
    assert len(batches) == 1 and [len(batch) for batch in drawn(batches)] == [3]


class RecordFirstBatches(Callback):
    """Keeps the labels of every epoch's first training batch, and how many batches each epoch had."""

    def __init__(self) -> None:
        self.first_labels: list[torch.Tensor] = []
        self.batches: list[int] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: tuple, idx: int) -> None:
        if idx == 0:
            self.first_labels.append(batch[1].clone())
            self.batches.append(0)
        self.batches[-1] += 1


def test_device_batches_drive_a_real_fit(emnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The on-device path through Lightning's loop, with the host standing in for the GPU: Lightning takes the
    iterable as it is (no sampler injected), calls `set_epoch` (each epoch draws another order) and counts its
    full batches (1,081 images make 8 of 128)."""
    monkeypatch.setattr(EMNISTDataModule, "data_device", property(lambda self: torch.device("cpu")))
    args = smoke_args(emnist_root, tmp_path, "--trainer.limit_train_batches=null", "--trainer.max_epochs=3")
    cli = main(["fit", *args, "--test_after_fit=false", "--trainer.callbacks+=test_ddp_ranks.RecordFirstBatches"])
    record = next(c for c in cli.trainer.callbacks if isinstance(c, RecordFirstBatches))
    assert isinstance(cli.datamodule.train_dataloader(), DeviceBatches)
    assert record.batches == [8, 8, 8] and cli.trainer.global_step == 24
    assert not torch.equal(record.first_labels[0], record.first_labels[1])
    assert not torch.equal(record.first_labels[1], record.first_labels[2])


def placed_on(dm: EMNISTDataModule, device: str) -> set[str]:
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), training=False)
    dm.setup("fit")
    dm.setup("test")
    return {d.type for s in (dm.train_set, dm.val_set, dm.test_set) for d in (s.images.device, s.labels.device)}


def test_a_datamodule_reused_by_another_trainer_follows_its_device(emnist_root: Path) -> None:
    """`meta` stands in for a GPU, which this test cannot count on."""
    dm = EMNISTDataModule(root=str(emnist_root), on_device=True)
    assert placed_on(dm, "meta") == {"meta"}
    assert placed_on(dm, "cpu") == {"cpu"}
    assert placed_on(dm, "meta") == {"meta"}
