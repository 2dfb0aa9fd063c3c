"""The GPU path, where there is a GPU: on-device batches with mixed precision and fused AdamW, `torch.compile`, a
training step in which CUDA's sync debug mode finds no host sync, and a datamodule that follows its trainer back
to the host. Marked `cuda`; skipped, with the reason, on a machine without a CUDA device."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import smoke_args

from emnist_lit.cli import main
from emnist_lit.data import EMNISTDataModule
from emnist_lit.data.datamodule import DeviceBatches
from emnist_lit.module import EMNISTClassifier

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

FUSED_ADAMW = json.dumps({"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003, "fused": True}})
GPU = ["--trainer.accelerator=gpu", "--trainer.devices=1", "--trainer.benchmark=true", "--data.on_device=true"]


def fake_trainer(device: str, training: bool = True) -> SimpleNamespace:
    strategy = SimpleNamespace(root_device=torch.device(device))
    return SimpleNamespace(strategy=strategy, training=training, predicting=False, global_rank=0, world_size=1)


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "bf16-true"])
def test_on_device_fit_in_mixed_precision_with_fused_adamw(precision: str, emnist_root: Path, tmp_path: Path) -> None:
    args = smoke_args(emnist_root, tmp_path, *GPU, f"--trainer.precision={precision}", "--data.balance_classes=true")
    cli = main(["fit", *args, "--model.backbone=cnn", "--model.channels_last=true", f"--model.optimizer={FUSED_ADAMW}"])
    assert cli.datamodule.train_set.images.device.type == "cuda"
    assert isinstance(cli.datamodule.train_dataloader(), DeviceBatches)
    assert cli.trainer.global_step == 8
    assert torch.isfinite(cli.trainer.callback_metrics["test/loss"])


def test_compiled_fit_on_the_gpu(emnist_root: Path, tmp_path: Path) -> None:
    args = smoke_args(emnist_root, tmp_path, *GPU, "--trainer.precision=bf16-mixed")
    cli = main(["fit", *args, "--model.compile=true"])
    assert cli.model.net._compiled_call_impl is not None
    assert torch.isfinite(cli.trainer.callback_metrics["test/loss"])


def test_training_steps_on_the_gpu_never_wait_on_the_host(emnist_root: Path) -> None:
    """Draw, gather and augment a batch, forward, loss, metrics, backward and a fused AdamW step, three times, with
    CUDA's sync debug mode raising on any synchronisation. The first step (allocations, cuDNN's choices, the
    epoch's permutation) runs before."""
    dm = EMNISTDataModule(
        root=str(emnist_root), batch_size=64, on_device=True, include_plain_copy=True, balance_classes=True
    )
    dm.trainer = fake_trainer("cuda:0")
    dm.setup("fit")
    model = EMNISTClassifier(backbone="cnn", width=8, channels_last=True, label_smoothing=0.1).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    batches = iter(dm.train_dataloader())

    def step() -> None:
        loss = model.training_step(dm.on_after_batch_transfer(next(batches), 0), 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_a_datamodule_reused_by_a_cpu_trainer_comes_back_to_the_host(emnist_root: Path) -> None:
    dm = EMNISTDataModule(root=str(emnist_root), on_device=True)
    for device, expected in (("cuda:0", "cuda"), ("cpu", "cpu"), ("cuda:0", "cuda")):
        dm.trainer = fake_trainer(device, training=False)
        dm.setup("fit")
        dm.setup("test")
        assert {s.images.device.type for s in (dm.train_set, dm.val_set, dm.test_set)} == {expected}
