"""Scale-out: `fit` with two DDP processes (gloo, CPU) logs the val/acc that one process computes from its checkpoint,
because torchmetrics syncs its states across ranks and the val set splits evenly between them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from conftest import REPO, smoke_args, write_emnist
from lightning.pytorch.callbacks import Callback

from emnist_lit.cli import main

TESTS = Path(__file__).resolve().parent


class ReportValAcc(Callback):
    """Runs inside the DDP children: rank 0 prints the world size and the synced val/acc at the end of fit."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            acc = trainer.callback_metrics["val/acc"].item()
            print(f"DDP world_size={trainer.world_size} val/acc={acc!r}", flush=True)


@pytest.mark.slow
def test_ddp_val_acc_equals_single_process_validate(tmp_path: Path) -> None:
    # 40 training images per class make 2 per class (94) for validation: 47 per rank, no DistributedSampler padding
    root = write_emnist(tmp_path / "emnist", train_per_class=40, test_per_class=2)
    logs = tmp_path / "logs"
    args = smoke_args(
        root, logs, "--trainer.max_epochs=1", "--trainer.limit_val_batches=null", "--test_after_fit=false"
    )
    ddp = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}
    command = [sys.executable, "-m", "emnist_lit", "fit", *args, *ddp, "--trainer.callbacks+=test_ddp.ReportValAcc"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("DDP "))
    assert line.startswith("DDP world_size=2 ")
    ddp_acc = float(line.split("val/acc=")[1])

    checkpoint = next((logs / "smoke").glob("version_*/checkpoints/last.ckpt"))
    cli = main(["validate", *smoke_args(root, tmp_path / "validate", "--trainer.limit_val_batches=null"),
                f"--ckpt_path={checkpoint}"])  # fmt: skip
    assert cli.trainer.world_size == 1
    assert cli.trainer.callback_metrics["val/acc"].item() == ddp_acc
