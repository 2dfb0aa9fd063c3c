"""The speed switches: `cnn` backbone, channels-last, bf16-mixed, one-cycle step count, and the GPU-resident data
path, which must change nothing on a CPU (its CUDA side is checked only as far as choosing the device)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import smoke_args

from emnist_lit.cli import main
from emnist_lit.data import EMNISTDataModule
from emnist_lit.models import build_backbone
from emnist_lit.module import EMNISTClassifier


def fake_trainer(device: str) -> SimpleNamespace:
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), training=True, predicting=False)


@pytest.mark.parametrize("width", [8, 24])
def test_cnn_backbone_outputs_one_logit_per_class(width: int) -> None:
    net = build_backbone("cnn", 33, width=width)
    assert net(torch.rand(5, 1, 28, 28)).shape == (5, 33)


def test_channels_last_changes_memory_order_not_results() -> None:
    torch.manual_seed(0)
    plain = EMNISTClassifier(backbone="cnn", width=8).eval()
    fast = EMNISTClassifier(backbone="cnn", width=8, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    conv = fast.net.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and conv.shape[1] == 1
    assert fast.net.features[3].weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(fast(images), plain(images), atol=1e-4, rtol=1e-4)


def test_on_device_is_a_no_op_on_cpu(emnist_root: Path) -> None:
    dm = EMNISTDataModule(root=str(emnist_root), batch_size=16, on_device=True, num_workers=1)
    dm.trainer = fake_trainer("cpu")
    dm.setup("fit")
    dm.setup("test")
    assert dm.data_device is None
    for dataset in (dm.train_set, dm.val_set, dm.test_set):
        assert dataset.images.device.type == "cpu" and dataset.labels.device.type == "cpu"
    assert dm.train_dataloader().num_workers == 1


def test_on_device_targets_the_trainers_cuda_device_only_when_asked(emnist_root: Path) -> None:
    dm = EMNISTDataModule(root=str(emnist_root), on_device=True)
    dm.trainer = fake_trainer("cuda:1")
    assert dm.data_device == torch.device("cuda:1")
    dm = EMNISTDataModule(root=str(emnist_root), on_device=False)
    dm.trainer = fake_trainer("cuda:1")
    assert dm.data_device is None


def test_fast_switches_train_end_to_end_on_cpu(emnist_root: Path, tmp_path: Path) -> None:
    """cnn + channels-last + bf16-mixed + OneCycleLR (its total_steps from the trainer) + on_device, through the
    CLI: on a CPU the data stay in host memory and the run completes."""
    scheduler = '{"class_path": "torch.optim.lr_scheduler.OneCycleLR", "init_args": {"max_lr": 0.01}}'
    cli = main(
        [
            "fit",
            *smoke_args(emnist_root, tmp_path),
            "--model.backbone=cnn",
            "--model.width=8",
            "--model.channels_last=true",
            f"--model.scheduler={scheduler}",
            "--model.scheduler_interval=step",
            "--trainer.precision=bf16-mixed",
            "--data.on_device=true",
            "--data.balance_classes=true",
        ]
    )
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    assert scheduler.total_steps == cli.trainer.estimated_stepping_batches == 8
    assert cli.datamodule.train_set.images.device.type == "cpu"
    assert "test/acc" in cli.trainer.callback_metrics
