"""The CLI end to end on synthetic EMNIST: fit, validate, test, what they write, and bad configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, parser_error, smoke_args
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from emnist_lit.charsets import BALANCED47_CHARSET, VIN_CHARSET
from emnist_lit.cli import main


@pytest.fixture(scope="module")
def vin_run(emnist_root: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("logs")
    return main(["fit", *smoke_args(emnist_root, logs, "--data.charset=vin33")])


def test_fit_writes_checkpoints_config_and_tensorboard_then_tests(vin_run) -> None:
    log_dir = Path(vin_run.trainer.log_dir)
    checkpoints = sorted(p.name for p in (log_dir / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in checkpoints and any(name.startswith("epoch") for name in checkpoints)
    config = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert config["data"]["class_path"] == "emnist_lit.data.EMNISTDataModule"
    assert config["data"]["init_args"]["charset"] == "vin33"
    assert config["model"]["init_args"]["backbone"] == "lenet"
    metrics = vin_run.trainer.callback_metrics
    assert {"test/acc", "test/f1_macro", "test/precision_macro", "test/recall_macro"} <= metrics.keys()
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss_step", "val/acc", "val/f1_macro", "val/loss", "test/acc", "lr-SGD"} <= scalars
    images = set(events.Tags()["images"])
    assert {"train/augmented_samples", "test/confusion_matrix", "test/most_confident_mistakes"} <= images
    assert "test/per_class_accuracy" in images


def test_checkpoint_alone_knows_its_classes_and_normalisation(vin_run) -> None:
    best = vin_run.trainer.checkpoint_callback.best_model_path
    checkpoint = torch.load(best, weights_only=True, map_location="cpu")
    assert checkpoint["hyper_parameters"]["classes"] == VIN_CHARSET
    mean, std = vin_run.datamodule.normalization
    assert checkpoint["state_dict"]["input_mean"].item() == pytest.approx(mean)
    assert checkpoint["state_dict"]["input_std"].item() == pytest.approx(std)
    assert vin_run.model(torch.zeros(2, 1, 28, 28)).shape == (2, 33), "num_classes is linked from the charset"


def test_validate_and_test_from_checkpoint_reproduce_its_score(vin_run, emnist_root: Path, tmp_path: Path) -> None:
    callback = vin_run.trainer.checkpoint_callback
    args = [*smoke_args(emnist_root, tmp_path, "--data.charset=vin33"), f"--ckpt_path={callback.best_model_path}"]
    validated = main(["validate", *args])
    assert validated.trainer.callback_metrics["val/acc"].item() == pytest.approx(callback.best_model_score.item())
    tested = main(["test", *args])
    assert tested.trainer.callback_metrics["test/acc"] == vin_run.trainer.callback_metrics["test/acc"]


def test_test_report_agrees_with_the_logged_metrics(emnist_root: Path, tmp_path: Path, capsys) -> None:
    """An untrained model makes many, uneven mistakes: the per-class table must average to the macro metrics, its
    support column count the test images of each class, and the confused pairs add up to every mistake."""
    args = smoke_args(emnist_root, tmp_path, "--trainer.limit_test_batches=null", "--test_report.confused_pairs=5000")
    metrics = main(["test", *args]).trainer.callback_metrics
    out = capsys.readouterr().out.splitlines()
    start = out.index(next(line for line in out if line.split() == ["char", "precision", "recall", "f1", "support"]))
    rows = [line.split() for line in out[start + 1 : start + 48]]
    assert [row[0] for row in rows] == list(BALANCED47_CHARSET)
    assert all(row[4] == "6" for row in rows), "6 synthetic test images per class"
    columns = torch.tensor([[float(value) for value in row[1:4]] for row in rows])
    macro = [metrics[f"test/{name}"].item() for name in ("precision_macro", "recall_macro", "f1_macro")]
    assert columns.mean(dim=0).tolist() == pytest.approx(macro, abs=1e-4)

    assert out[start + 48] == "most confused (true -> predicted: count)"
    pairs = [line.split() for line in out[start + 49 :] if " -> " in line]
    counts = [int(pair[3]) for pair in pairs]
    mistakes = round((1 - metrics["test/acc"].item()) * 47 * 6)
    assert mistakes > 0 and sum(counts) == mistakes, "every mistake is in exactly one pair"
    assert counts == sorted(counts, reverse=True)
    assert all(true != predicted.rstrip(":") for true, _, predicted, _ in pairs)


@pytest.mark.parametrize(
    ("override", "error"),
    [
        (
            "--data.batch_size=many",
            "error: Parser key \"data.batch_size\":\n  Expected a <class 'int'>. Got value: many",
        ),
        ("--model.backbone=vgg", 'error: Parser key "model.backbone":\n  Expected a typing.Literal['),
        ("--data.charst=vin33", "error: Option 'data.charst' is not accepted by emnist_lit.data.EMNISTDataModule"),
    ],
)
def test_bad_config_values_are_refused_by_name(
    override: str, error: str, emnist_root: Path, tmp_path: Path, capsys
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *smoke_args(emnist_root, tmp_path, override)])
    assert exit_info.value.code != 0
    assert parser_error(capsys.readouterr().err).startswith(error)


def test_fit_without_a_logger_still_checkpoints(emnist_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # with no logger, Lightning writes checkpoints under the working folder
    cli = main(["fit", *smoke_args(emnist_root, tmp_path, "--trainer.logger=false", "--test_after_fit=false")])
    assert cli.trainer.global_step == cli.trainer.max_epochs * 4  # limit_train_batches=4
    assert Path(cli.trainer.checkpoint_callback.best_model_path).is_file()


SHRUNK_LINES = ["--data.train_lines=16", "--data.val_lines=8", "--data.test_lines=8", "--data.render_workers=0"]
"""A line config's rendered sets, shrunk to a few lines."""


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_trains_a_step_through_its_optimizer_and_scheduler(
    config: Path, emnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One training and one validation batch of every config, on synthetic data: its model, data, optimizer,
    scheduler (and the metric it monitors), time budget and checkpoint wiring all run, as `fit` will run them."""
    monkeypatch.chdir(tmp_path)
    lines = "LineDataModule" in config.read_text()
    shrunk = ["--data.batch_size=8", *(SHRUNK_LINES if lines else [])]
    cli = main(["fit", "--config", str(config), f"--data.root={emnist_root}", "--trainer.fast_dev_run=1", *shrunk])
    assert cli.trainer.global_step == 1
    assert cli.model.classes == cli.datamodule.classes
    for scheduler in cli.trainer.lr_scheduler_configs:  # a monitor the run does not log fails the step itself
        assert scheduler.scheduler.last_epoch >= 1, "the scheduler never stepped"
    assert not list(tmp_path.iterdir()), "a one-step run writes no logs or checkpoints"
