"""Several processes train one model: what must agree across DDP ranks (the val/loss a plateau scheduler watches,
hence the LR and the weights), what must differ (each rank's augmentation, its share of a class-balanced draw),
and the single-process pieces behind them: sharded on-device batches, a per-rank augmentation stream that a
resumed run continues, full training batches, bf16, a datamodule that follows its trainer, predict on one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from conftest import REPO, smoke_args, upright_samples, write_idx_gz
from lightning.pytorch.callbacks import Callback
from PIL import Image

from emnist_lit.charsets import BALANCED47_CHARSET
from emnist_lit.cli import main
from emnist_lit.data import MAPPING_FILE, SPLIT_FILES, EMNISTDataModule, IndexedImages
from emnist_lit.data.datamodule import DeviceBatches

TESTS = Path(__file__).resolve().parent


def write_one_glyph_emnist(root: Path, train_per_class: int, test_per_class: int = 2) -> Path:
    """EMNIST files in NIST's format whose training images are all one and the same glyph (labels still cover every
    class): two augmented batches then differ only by the affines drawn for them, whatever images were sampled."""
    root.mkdir(parents=True, exist_ok=True)
    glyph = upright_samples(1, seed=3)[0][0]
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.tile(np.arange(len(BALANCED47_CHARSET), dtype=np.uint8), per_class)
        images = np.repeat(glyph[None], len(labels), axis=0)
        write_idx_gz(root / f"{SPLIT_FILES[f'{split}_images']}.gz", images.transpose(0, 2, 1))
        write_idx_gz(root / f"{SPLIT_FILES[f'{split}_labels']}.gz", labels)
    (root / MAPPING_FILE).write_text("".join(f"{i} {ord(c)}\n" for i, c in enumerate(BALANCED47_CHARSET)))
    return root


class RankReport(Callback):
    """Runs inside each DDP child: gathers from every rank the monitored val/loss after each validation, the LR
    and a checksum of the weights at each epoch start and at the end, the first augmented training batch and the
    labels drawn in the first epoch; rank 0 prints them as one JSON line."""

    def __init__(self) -> None:
        self.report: dict[str, list] = {"val_loss": [], "lr": [], "weights": []}
        self.first_batch: torch.Tensor | None = None
        self.labels: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: tuple, idx: int) -> None:
        if trainer.current_epoch == 0:
            self.labels.append(batch[1].clone())
            if self.first_batch is None:
                self.first_batch = batch[0].float().clone()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            loss = trainer.callback_metrics["val/loss"].double()
            self.report["val_loss"].append(trainer.strategy.all_gather(loss).tolist())

    def _agreement(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        lr = torch.tensor(trainer.optimizers[0].param_groups[0]["lr"], dtype=torch.float64)
        flat = torch.cat([p.detach().double().flatten() for p in pl_module.parameters()])
        checksum = torch.stack([flat.sum(), flat.square().sum(), (flat * torch.arange(len(flat))).sum()])
        self.report["lr"].append(trainer.strategy.all_gather(lr).tolist())
        self.report["weights"].append(trainer.strategy.all_gather(checksum).tolist())

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._agreement(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._agreement(trainer, pl_module)
        first = trainer.strategy.all_gather(self.first_batch)
        labels = trainer.strategy.all_gather(torch.cat(self.labels))
        self.report["first_batch_equal_across_ranks"] = bool(torch.equal(first[0], first[1]))
        self.report["labels_equal_across_ranks"] = bool(torch.equal(labels[0], labels[1]))
        self.report["batches_per_rank"] = len(self.labels)
        self.report["world_size"] = trainer.world_size
        if trainer.is_global_zero:
            print("RANKS " + json.dumps(self.report), flush=True)


@pytest.mark.slow
def test_ddp_ranks_agree_on_plateau_lr_and_weights_and_draw_their_own_augmentation(tmp_path: Path) -> None:
    """2 gloo processes, ReduceLROnPlateau(patience=0) on val/loss, class-balanced sampling, identical training
    images. 40 training images a class leave 1,786 for training (893 a rank, 13 full batches of 64)."""
    root = write_one_glyph_emnist(tmp_path / "emnist", train_per_class=40)
    plateau = {"class_path": "torch.optim.lr_scheduler.ReduceLROnPlateau", "init_args": {"patience": 0, "factor": 0.5}}
    args = smoke_args(
        root,
        tmp_path / "logs",
        "--trainer.max_epochs=4",
        "--trainer.limit_train_batches=null",
        "--trainer.limit_val_batches=null",
        "--test_after_fit=false",
        "--data.batch_size=64",
        "--data.balance_classes=true",
        f"--model.scheduler={json.dumps(plateau)}",
        "--model.scheduler_monitor=val/loss",
    )
    ddp = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}
    command = [sys.executable, "-m", "emnist_lit", "fit", *args, *ddp, "--trainer.callbacks+=test_ddp_ranks.RankReport"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RANKS "))[6:])

    assert report["world_size"] == 2
    assert len(report["val_loss"]) == 4
    for name in ("val_loss", "lr", "weights"):
        for per_rank in report[name]:
            assert per_rank[0] == per_rank[1], f"{name} differs between the ranks: {report[name]}"
    lrs = [per_rank[0] for per_rank in report["lr"]]
    assert lrs[-1] < lrs[0], f"no plateau step happened, so the test proves nothing: {lrs}"
    assert not report["first_batch_equal_across_ranks"], "both ranks drew the same affines"
    assert not report["labels_equal_across_ranks"], "both ranks trained on the same class-balanced draw"
    assert report["batches_per_rank"] == 893 // 64, "each rank should take its share of one draw, in full batches"


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


class RecordAugmented(Callback):
    """Keeps the first images of every augmented training batch, by global step."""

    def __init__(self) -> None:
        self.by_step: dict[int, torch.Tensor] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: tuple, idx: int) -> None:
        self.by_step[trainer.global_step] = batch[0][:8].clone()


def augmented_by_step(args: list[str]) -> dict[int, torch.Tensor]:
    cli = main([*args, "--trainer.callbacks+=test_ddp_ranks.RecordAugmented"])
    return next(c for c in cli.trainer.callbacks if isinstance(c, RecordAugmented)).by_step


def test_a_resumed_fit_draws_the_affines_of_the_uninterrupted_one(tmp_path: Path) -> None:
    """Every training image is the same glyph, so an augmented batch shows nothing but the affines drawn for it."""
    root = write_one_glyph_emnist(tmp_path / "emnist", train_per_class=4)
    args = ["fit", *smoke_args(root, tmp_path / "a", "--test_after_fit=false"), "--data.batch_size=16"]
    uninterrupted = augmented_by_step(args)
    assert sorted(uninterrupted) == list(range(8))

    args = ["fit", *smoke_args(root, tmp_path / "b", "--test_after_fit=false"), "--data.batch_size=16"]
    args.append("--trainer.logger.init_args.version=run")
    first = augmented_by_step([*args, "--trainer.max_epochs=1"])
    checkpoint = tmp_path / "b" / "smoke" / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["EMNISTDataModule"]["augmented_batches"] == 4
    resumed = augmented_by_step([*args, "--ckpt_path=last"])
    assert sorted(resumed) == [4, 5, 6, 7]
    for step, images in {**first, **resumed}.items():
        torch.testing.assert_close(images, uninterrupted[step], msg=f"step {step} drew other affines")
    assert not torch.equal(uninterrupted[4], uninterrupted[5])


def test_training_drops_a_last_batch_of_one_image(emnist_root: Path, tmp_path: Path) -> None:
    """1,081 training images in batches of 120 leave one image over; with the ImageNet stem ResNet18's layer4 is
    1x1, where BatchNorm cannot train on a single value per channel."""
    args = smoke_args(emnist_root, tmp_path, "--trainer.limit_train_batches=null", "--trainer.max_epochs=1")
    cli = main(["fit", *args, "--test_after_fit=false", "--model.backbone=resnet18", "--data.batch_size=120"])
    assert len(cli.datamodule.train_set) == 1081
    assert cli.trainer.global_step == 9


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_precisions_fit_the_smoke_config(precision: str, emnist_root: Path, tmp_path: Path) -> None:
    cli = main(["fit", *smoke_args(emnist_root, tmp_path, f"--trainer.precision={precision}")])
    expected = torch.bfloat16 if precision == "bf16-true" else torch.float32
    assert next(cli.model.parameters()).dtype == expected
    assert torch.isfinite(cli.trainer.callback_metrics["test/loss"])


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


def test_predict_refuses_more_than_one_device_in_one_line(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    for index in range(3):
        Image.fromarray(upright_samples(1, seed=index)[0][0]).save(scans / f"{index}.png")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "emnist_lit", "predict", f"--data.predict_dir={scans}"]
    command += ["--trainer.accelerator=cpu", "--trainer.devices=2", f"--output={tmp_path / 'out.csv'}"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: predict runs on one device, but the trainer would start 2 processes (--trainer.devices, "
        "--trainer.num_nodes); pass --trainer.devices=1"
    ]
    assert not (tmp_path / "out.csv").exists()
