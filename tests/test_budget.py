"""The time budget ends a run annealed and validates its final weights; class-balanced configs keep the checkpoint
with the best balanced val accuracy. Synthetic EMNIST, a fake clock, no sleeps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, upright_samples, write_emnist, write_idx_gz
from lightning.pytorch.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from emnist_lit.budget import TimeBudget, one_cycle
from emnist_lit.cli import EMNISTCLI, build_cli, main
from emnist_lit.data import SPLIT_FILES

FAST_VIN = str(REPO / "configs" / "fast_vin.yaml")


def quiet_args(root: Path, logs: Path, *extra: str) -> list[str]:
    return [
        "--config",
        FAST_VIN,
        f"--data.root={root}",
        f"--trainer.logger.init_args.save_dir={logs}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
        *extra,
    ]


def cli_without_running(args: list[str]) -> EMNISTCLI:
    return build_cli(args, run=False)


class FakeClock(Callback):
    """Time that passes one second per training step and a minute per validation batch, so a budget that counted
    validation would run out after the first epoch."""

    def __init__(self) -> None:
        self.now = 0.0
        self.validated_at_steps: list[int] = []

    def __call__(self) -> float:
        return self.now

    def on_train_batch_end(self, *args: object) -> None:
        self.now += 1.0

    def on_validation_batch_end(self, *args: object) -> None:
        self.now += 60.0

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.validated_at_steps.append(trainer.global_step)


def test_budget_limited_run_ends_at_the_schedules_final_lr_and_validates_its_final_weights(
    emnist_root: Path, tmp_path: Path
) -> None:
    budget_steps = 7  # 3 full batches of 250 an epoch (759 images): the budget runs out in the third epoch
    # 10 epochs (30 steps) only bound a broken budget; the schedule follows the budget, the further of the two
    budget = f"--time_budget.minutes={budget_steps / 60}"
    cli = cli_without_running(
        quiet_args(emnist_root, tmp_path, budget, "--trainer.max_epochs=10", "--data.batch_size=250")
    )
    clock = FakeClock()
    budget = next(c for c in cli.trainer.callbacks if isinstance(c, TimeBudget))
    budget.clock = clock
    cli.trainer.callbacks.insert(0, clock)  # ticks before the budget reads the time
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)

    trainer = cli.trainer
    assert trainer.num_training_batches == 3
    assert trainer.global_step == budget_steps
    assert clock.validated_at_steps == [3, 6, budget_steps], "each epoch, and the final weights mid-epoch"

    peak = 0.003
    final_lr = peak / 25 / 1e4
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(final_lr)
    events = EventAccumulator(trainer.log_dir).Reload()
    by_step = {event.step: event.value for event in events.Scalars("lr-AdamW")}  # also logged at epoch starts
    logged = [by_step[step] for step in sorted(by_step)]
    # the LR of step k+1 is set at the end of step k, from the share of the budget spent: k of 7 seconds
    expected = [one_cycle(k / budget_steps, 0.2, peak / 25, peak, final_lr) for k in range(budget_steps - 1)]
    assert logged == pytest.approx([*expected, final_lr], rel=1e-5)


def test_budget_refuses_a_model_scheduler_beside_it(emnist_root: Path, tmp_path: Path) -> None:
    scheduler = '--model.scheduler={"class_path": "torch.optim.lr_scheduler.OneCycleLR", "init_args": {"max_lr": 0.01}}'
    with pytest.raises(SystemExit, match=r"error: time_budget\.minutes is set, and it drives the LR itself"):
        main(["fit", *quiet_args(emnist_root, tmp_path, "--trainer.max_epochs=1", scheduler)])


def write_unbalanced_emnist(root: Path) -> Path:
    """Synthetic EMNIST with 400 images of class `0` and 24 of every other class, so the stratified val split holds
    20 zeros and one image of each other class: val accuracy and balanced val accuracy can rank epochs apart."""
    write_emnist(root)
    images, labels = upright_samples(per_class=24, seed=1)
    extra = np.resize(np.flatnonzero(labels == 0), 400 - 24)
    images, labels = np.concatenate([images, images[extra]]), np.concatenate([labels, labels[extra]])
    write_idx_gz(root / f"{SPLIT_FILES['train_images']}.gz", images.transpose(0, 2, 1))
    write_idx_gz(root / f"{SPLIT_FILES['train_labels']}.gz", labels)
    return root


class ScriptedNet(torch.nn.Module):
    """A stand-in backbone whose validation answers follow a plan: at epoch e, right for the classes in `plan[e]`
    and wrong for the others (it is told the labels); in training, trainable constant logits."""

    def __init__(self, num_classes: int, plan: list[set[int]]) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(num_classes))
        self.num_classes, self.plan = num_classes, plan
        self.labels: torch.Tensor | None = None
        self.epoch = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training or self.labels is None:
            return self.bias.expand(len(images), -1)
        right = torch.tensor([int(label) in self.plan[self.epoch] for label in self.labels])
        answers = torch.where(right, self.labels, (self.labels + 1) % self.num_classes)
        return torch.nn.functional.one_hot(answers, self.num_classes).float()


class FeedLabels(Callback):
    def __init__(self, net: ScriptedNet) -> None:
        self.net = net
        self.scores: list[tuple[float, float]] = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.net.labels, self.net.epoch = batch[1], trainer.current_epoch

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            metrics = trainer.callback_metrics
            self.scores.append((metrics["val/acc"].item(), metrics["val/balanced_acc"].item()))


def test_checkpoint_kept_is_the_best_balanced_val_accuracy_not_the_best_val_acc(tmp_path: Path) -> None:
    root = write_unbalanced_emnist(tmp_path / "emnist")
    args = quiet_args(root, tmp_path / "logs", "--trainer.max_epochs=2", "--trainer.limit_train_batches=2")
    cli = cli_without_running(args)
    # epoch 0: right on the 20 zeros only; epoch 1: right on 10 of the 32 other classes only
    net = ScriptedNet(33, plan=[{0}, set(range(1, 11))])
    cli.model.net = net
    feed = FeedLabels(net)
    cli.trainer.callbacks.insert(0, feed)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)

    (acc0, balanced0), (acc1, balanced1) = feed.scores
    assert (acc0, balanced0) == pytest.approx((20 / 52, 1 / 33))
    assert (acc1, balanced1) == pytest.approx((10 / 52, 10 / 33))
    checkpoint = cli.trainer.checkpoint_callback
    assert checkpoint.monitor == "val/balanced_acc"
    assert checkpoint.best_model_score.item() == pytest.approx(10 / 33)
    assert Path(checkpoint.best_model_path).name == f"epoch01-balanced_acc{10 / 33:.4f}.ckpt"
    assert torch.load(checkpoint.best_model_path, weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_class_balanced_configs_select_by_balanced_val_accuracy(config: Path) -> None:
    settings = yaml.safe_load(config.read_text())
    if not settings["data"].get("balance_classes"):
        pytest.skip("natural class frequencies in training: val/acc selects as the reference did")
    assert settings["checkpoint"]["monitor"] == "val/balanced_acc"
    scheduler = settings["model"].get("scheduler") or {}
    if scheduler.get("class_path", "").endswith("ReduceLROnPlateau"):
        assert settings["model"]["scheduler_monitor"] == "val/balanced_acc"
        assert scheduler["init_args"]["mode"] == "max"
