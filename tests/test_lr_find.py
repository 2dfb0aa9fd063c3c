"""`lr_find`: Lightning's LR range test through the CLI, its plot, and a config ready for `fit`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import smoke_args

from emnist_lit.cli import main
from emnist_lit.trainer import steepest_descent_lr


def test_lr_find_saves_plot_prints_suggestion_and_writes_config(
    emnist_root: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "smoke.lr.yaml"
    cli = main(
        [
            "lr_find",
            *smoke_args(emnist_root, tmp_path / "logs"),
            "--num_training=40",
            "--data.batch_size=16",
            "--trainer.limit_train_batches=null",
            f"--output_config={output}",
        ]
    )
    suggestion = cli.trainer.lr_find_suggestion
    assert suggestion is not None and math.isfinite(suggestion) and 1e-6 <= suggestion <= 1.0
    assert (Path(cli.trainer.log_dir) / "lr_find.png").stat().st_size > 1000
    assert f"suggested learning rate: {suggestion}" in capsys.readouterr().out
    config = yaml.safe_load(output.read_text())
    optimizer = config["model"]["init_args"]["optimizer"]
    assert optimizer["init_args"]["lr"] == suggestion
    assert optimizer["class_path"] == "torch.optim.SGD" and "num_training" not in config
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    fit = main(["fit", "--config", str(output), "--trainer.fast_dev_run=1", "--test_after_fit=false"])
    assert fit.model.optimizers().param_groups[0]["lr"] == suggestion
    assert not list(workdir.iterdir()), "fast_dev_run writes no checkpoints/last.ckpt into the working folder"


def test_suggestion_is_the_steepest_fall_per_decade_of_lr() -> None:
    lrs = torch.logspace(-6, 0, 100).tolist()
    # a loss that falls from 4 to 1 along a logistic in log10(lr), steepest at 1e-3, then diverges past 0.1
    losses = [1 + 3 / (1 + math.exp(4 * (math.log10(lr) + 3))) + (5 * lr if lr > 0.1 else 0) for lr in lrs]
    assert steepest_descent_lr(lrs, losses) == pytest.approx(1e-3, rel=0.15)
    assert steepest_descent_lr(lrs[:5], losses[:5]) is None
