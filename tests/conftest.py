"""Shared fixtures: synthetic EMNIST files in NIST's exact format, and the real sample when it is present."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from emnist_lit.charsets import BALANCED47_CHARSET
from emnist_lit.data import MAPPING_FILE, SPLIT_FILES
from emnist_lit.images import prepare_image

REPO = Path(__file__).resolve().parents[1]
SAMPLE_ROOT = REPO.parent / "shared" / "data" / "emnist-sample"
requires_sample = pytest.mark.skipif(not SAMPLE_ROOT.is_dir(), reason=f"real EMNIST sample not at {SAMPLE_ROOT}")
CACHES = (".pytest_cache", "__pycache__", ".ruff_cache", ".venv")
"""What running Python, pytest and ruff leaves in a checkout by design; anything else a test leaves there is a bug."""


def checkout_files() -> dict[str, tuple[str, int, int]] | None:
    """Every modified, untracked or ignored file of the checkout (caches aside) with its git status, size and
    modification time, or None when the tests do not run from a git checkout of their own."""
    git = ["git", "--no-optional-locks", "-C", str(REPO)]
    try:
        top = subprocess.run([*git, "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        if Path(top.stdout.strip()).resolve() != REPO:
            return None
        status = ["status", "--porcelain=v1", "-z", "--ignored", "--untracked-files=all", "--", ".", ":(exclude).venv"]
        out = subprocess.run([*git, *status], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    files = {}
    for entry in out.split("\0"):
        path = entry[3:]
        parts = Path(path).parts
        if len(entry) < 4 or any(part in CACHES or part.endswith(".egg-info") for part in parts):
            continue
        try:
            stat = os.lstat(REPO / path)
        except OSError:
            files[path] = (entry[:2], -1, -1)
        else:
            files[path] = (entry[:2], stat.st_size, stat.st_mtime_ns)
    return files


@pytest.fixture(scope="session", autouse=True)
def checkout_is_left_as_found() -> None:
    """Fails the run when a test wrote into the checkout (even an ignored file such as `checkpoints/last.ckpt`):
    tests write only under their temporary folders."""
    before = checkout_files()
    yield
    after = checkout_files()
    if before is None or after is None:
        return
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    if changed:
        listing = "\n  ".join(changed[:20])
        pytest.fail(f"the tests changed these files of the checkout {REPO}:\n  {listing}", pytrace=False)


def idx_bytes(array: np.ndarray) -> bytes:
    """NIST's IDX encoding of a uint8 array: zero bytes, type 0x08, rank, big-endian sizes, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_gz(path: Path, array: np.ndarray) -> Path:
    path.write_bytes(gzip.compress(idx_bytes(array), mtime=0))
    return path


def class_templates(num_classes: int = len(BALANCED47_CHARSET), seed: int = 0) -> np.ndarray:
    """One distinct 5x5 binary glyph per class, touching all four sides so cropping to the ink keeps its scale."""
    rng = np.random.default_rng(seed)
    glyphs = rng.random((num_classes, 5, 5)) < 0.5
    glyphs[:, 0, 0] = glyphs[:, -1, -1] = True
    return glyphs


def render(glyph: np.ndarray, cell: int = 8, margin: int = 8) -> np.ndarray:
    """A glyph drawn large with a margin, as a person's scan would be: light ink (1.0) on black (0.0)."""
    return np.pad(np.kron(glyph.astype(np.float32), np.ones((cell, cell), dtype=np.float32)), margin)


def upright_samples(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Upright uint8 images (N, 28, 28) and labels: each class's glyph prepared like EMNIST, plus pixel noise."""
    rng = np.random.default_rng(seed)
    base = np.stack([prepare_image(torch.from_numpy(render(g)))[0].numpy() for g in class_templates()])
    labels = np.repeat(np.arange(len(base)), per_class)
    images = base[labels] * 255 + rng.normal(0, 20, (len(labels), 28, 28))
    order = rng.permutation(len(labels))
    return np.clip(images, 0, 255).astype(np.uint8)[order], labels[order].astype(np.uint8)


def write_emnist(root: Path, train_per_class: int = 24, test_per_class: int = 6) -> Path:
    """Write EMNIST Balanced's four gzip'd IDX files and mapping into `root`, every image transposed as NIST stores
    it, so the loading code meets exactly what it meets in the real download."""
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class, seed in (("train", train_per_class, 1), ("test", test_per_class, 2)):
        images, labels = upright_samples(per_class, seed)
        write_idx_gz(root / f"{SPLIT_FILES[f'{split}_images']}.gz", images.transpose(0, 2, 1))
        write_idx_gz(root / f"{SPLIT_FILES[f'{split}_labels']}.gz", labels)
    mapping = "".join(f"{i} {ord(c)}\n" for i, c in enumerate(BALANCED47_CHARSET))
    (root / MAPPING_FILE).write_text(mapping)
    return root


@pytest.fixture(scope="session")
def emnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic EMNIST Balanced (47 classes, 24 train and 6 test images each) in NIST's format; read-only use."""
    return write_emnist(tmp_path_factory.mktemp("emnist"))


@pytest.fixture
def fresh_emnist_root(tmp_path: Path) -> Path:
    """Like `emnist_root`, but a private copy a test may damage."""
    return write_emnist(tmp_path / "emnist")


def smoke_args(root: Path, logs: Path, *extra: str, config: str = "smoke.yaml") -> list[str]:
    """CLI arguments for a few quiet CPU steps of a config (the smoke config) on `root`, logging under `logs`."""
    return [
        "--config",
        str(REPO / "configs" / config),
        f"--data.root={root}",
        f"--trainer.logger.init_args.save_dir={logs}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.limit_train_batches=4",
        "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2",
        "--trainer.log_every_n_steps=1",
        *extra,
    ]


def parser_error(stderr: str) -> str:
    """The error jsonargparse printed, without the usage text before it (which names every option)."""
    lines = stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert starts, f"no error line in:\n{stderr[-2000:]}"
    return "\n".join(lines[starts[-1] :])


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, emnist_root: Path) -> Path:
    """A LeNet that reads every synthetic glyph right, drawn at the sizes and in the polarities the predict tests
    scan them: trained until its validation accuracy reaches 1.0 (at most 12 epochs), then checked on the glyphs."""
    from emnist_lit.cli import main
    from emnist_lit.module import EMNISTClassifier

    logs = tmp_path_factory.mktemp("trained")
    stop = {
        "class_path": "lightning.pytorch.callbacks.EarlyStopping",
        "init_args": {"monitor": "val/acc", "mode": "max", "stopping_threshold": 1.0, "patience": 12},
    }
    overrides = ["--trainer.max_epochs=12", "--trainer.limit_train_batches=null", "--trainer.limit_val_batches=null"]
    overrides += ["--test_after_fit=false", f"--trainer.callbacks+={json.dumps(stop)}"]
    args = smoke_args(emnist_root, logs, *overrides)
    checkpoint = Path(main(["fit", *args]).trainer.checkpoint_callback.best_model_path)

    model = EMNISTClassifier.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    drawn = [(torch.from_numpy(render(g, cell)), i) for i, g in enumerate(class_templates()) for cell in (5, 8, 13)]
    drawn += [(1 - light, i) for light, i in drawn]  # and dark ink on light paper
    images = torch.stack([prepare_image(image) for image, _ in drawn])
    labels = torch.tensor([i for _, i in drawn])
    with torch.no_grad():
        wrong = (model(images).argmax(dim=1) != labels).sum().item()
    assert wrong == 0, f"{wrong} of {len(labels)} rendered glyphs misread by {checkpoint}"
    return checkpoint
