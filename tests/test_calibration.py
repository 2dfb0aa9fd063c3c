"""Temperature scaling: each checkpoint carries the temperature that calibrates its softmax on the validation split,
predict and read use it, and checkpoints from before it still load."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import smoke_args, upright_samples
from PIL import Image

from emnist_lit.cli import main
from emnist_lit.images import prepare_image
from emnist_lit.module import EMNISTClassifier, fit_temperature


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.0])
def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_at(true_temperature: float) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20_000, 10, generator=generator) * 3
    labels = torch.multinomial((logits / true_temperature).softmax(1), 1, generator=generator)[:, 0]
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)


def test_fit_stores_the_validation_temperature_and_predict_divides_by_it(emnist_root: Path, tmp_path: Path) -> None:
    cli = main(["fit", *smoke_args(emnist_root, tmp_path, "--trainer.max_epochs=1", "--test_after_fit=false")])
    checkpoint_path = cli.trainer.checkpoint_callback.best_model_path
    temperature = torch.load(checkpoint_path, weights_only=True)["state_dict"]["temperature"]
    assert temperature.item() != 1.0, "the fit's validation did not calibrate"
    assert cli.trainer.logged_metrics["val/temperature"].item() == pytest.approx(temperature.item())

    scan = tmp_path / "scan.png"
    Image.fromarray(upright_samples(1, seed=3)[0][0]).save(scan)
    output = tmp_path / "predictions.csv"
    main(["predict", f"--ckpt_path={checkpoint_path}", f"--data.predict_files=[{scan}]", f"--output={output}"])
    with output.open() as handle:
        confidence = float(next(csv.DictReader(handle))["confidence"])

    model = EMNISTClassifier.load_from_checkpoint(checkpoint_path, map_location="cpu", weights_only=True).eval()
    image = torch.from_numpy(upright_samples(1, seed=3)[0][0]).float().div(255)
    with torch.no_grad():
        logits = model(prepare_image(image)[None])
    assert confidence == pytest.approx((logits / temperature).softmax(1).max().item(), abs=1e-5)
    assert confidence != pytest.approx(logits.softmax(1).max().item(), abs=1e-5)


def test_a_checkpoint_from_before_calibration_loads_with_temperature_one(emnist_root: Path, tmp_path: Path) -> None:
    cli = main(["fit", *smoke_args(emnist_root, tmp_path, "--trainer.max_epochs=1", "--test_after_fit=false")])
    checkpoint = torch.load(cli.trainer.checkpoint_callback.best_model_path, weights_only=True)
    del checkpoint["state_dict"]["temperature"]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    model = EMNISTClassifier.load_from_checkpoint(old, map_location="cpu", weights_only=True)
    assert model.temperature.item() == 1.0

    scan = tmp_path / "scan.png"
    Image.fromarray(upright_samples(1, seed=4)[0][0]).save(scan)
    main(["predict", f"--ckpt_path={old}", f"--data.predict_files=[{scan}]"])
