"""How predict runs the network on a CPU: torch's threads or those asked for, channels_last weights, both put back
afterwards; and the numpy `prepare_image` equal to the torch one it replaced."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from emnist_lit.cli import main
from emnist_lit.data import EMNISTDataModule
from emnist_lit.images import prepare_image
from emnist_lit.inference import InferenceSetup
from emnist_lit.module import EMNISTClassifier


class Probe(L.Callback):
    """What the network runs with, seen from inside predict."""

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        self.threads = torch.get_num_threads()
        self.channels_last = all(
            p.is_contiguous(memory_format=torch.channels_last) for p in pl_module.parameters() if p.dim() == 4
        )


def run_predict(model: EMNISTClassifier, folder: Path, callbacks: list[L.Callback]) -> torch.Tensor:
    data = EMNISTDataModule(predict_dir=str(folder), batch_size=4, predict_workers=1)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=callbacks)
    return torch.cat(trainer.predict(model, datamodule=data))


def test_predict_runs_channels_last_with_torchs_threads_then_restores(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(6):
        ink = (rng.random((20, 16)) > 0.6).astype(np.uint8) * 255
        Image.fromarray(255 - np.pad(ink, 6)).save(tmp_path / f"{i}.png")
    torch.manual_seed(0)
    model = EMNISTClassifier(backbone="cnn", width=8).eval()
    before = [p.clone() for p in model.parameters()]
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        plain = run_predict(model, tmp_path, [])
        probe = Probe()
        tuned = run_predict(model, tmp_path, [InferenceSetup(), probe])
        assert (probe.threads, probe.channels_last) == (2, True), "torch's 2 threads beside the worker, NHWC weights"
        assert torch.get_num_threads() == 2, "the process's thread count is put back"
    finally:
        torch.set_num_threads(saved_threads)
    assert all(p.is_contiguous() for p in model.parameters()), "the weights are NCHW again"
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    torch.testing.assert_close(tuned, plain, rtol=1e-4, atol=1e-6)


def test_inference_setup_takes_explicit_threads_and_can_keep_nchw(tmp_path: Path) -> None:
    Image.fromarray(255 - np.pad(np.full((12, 8), 255, np.uint8), 5)).save(tmp_path / "a.png")
    model = EMNISTClassifier(backbone="cnn", width=8).eval()
    probe = Probe()
    saved_threads = torch.get_num_threads()
    run_predict(model, tmp_path, [InferenceSetup(threads=3, channels_last=False), probe])
    assert (probe.threads, probe.channels_last) == (3, False)
    assert torch.get_num_threads() == saved_threads
    with pytest.raises(ValueError, match="threads must be at least 1"):
        InferenceSetup(threads=0)


@pytest.mark.parametrize("subcommand", ["predict", "read"])
def test_cli_predict_and_read_have_the_inference_section(subcommand: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main([subcommand, "--print_config"])
    printed = capsys.readouterr().out
    assert "inference:\n  threads: null\n  channels_last: true" in printed


def torch_prepare_image(gray: torch.Tensor, size: int = 28, border: int = 2) -> torch.Tensor:
    """`prepare_image` as it was written in torch, before its pixel work moved to numpy."""
    edge = torch.cat([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if edge.median() > 0.5:
        gray = 1.0 - gray
    gray = gray - gray.min()
    if gray.max() <= 0.05:
        raise ValueError("no ink found (the image is blank)")
    gray = gray / gray.max()
    rows, cols = torch.nonzero(gray > 0.3, as_tuple=True)
    ink = gray[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = ink.shape
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    square = F.pad(ink, (left, side - width - left, top, side - height - top))
    inner = size - 2 * border
    resized = F.interpolate(
        square[None, None], size=(inner, inner), mode="bilinear", antialias=True, align_corners=False
    )
    return F.pad(resized[0], (border,) * 4).clamp_(0, 1)


def test_prepare_image_equals_the_torch_version_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    grays = []
    for _ in range(300):
        height, width = rng.integers(1, 70, 2)
        gray = rng.random((height, width), dtype=np.float32) * rng.random()
        if rng.random() < 0.5:
            gray = (gray > rng.random()).astype(np.float32)
        grays.append(torch.from_numpy(1 - gray if rng.random() < 0.5 else gray))
    tie = np.zeros((10, 10), dtype=np.float32)  # an edge of 20 values 0.9 and 20 of 0.4: torch's median is 0.4
    tie[0], tie[-1], tie[1:-1, 0], tie[1:-1, -1] = 0.9, 0.4, 0.9, 0.4
    grays += [torch.from_numpy(tie), grays[0].double(), grays[1].t(), grays[2][::2, 1::3]]
    for gray in grays:
        try:
            expected = torch_prepare_image(gray)
        except ValueError:
            with pytest.raises(ValueError, match="no ink found"):
                prepare_image(gray)
            continue
        assert torch.equal(prepare_image(gray), expected)
