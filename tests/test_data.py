"""The datamodule: finding NIST's files, orientation, charsets, the split, and clear errors on bad data."""

from __future__ import annotations

import gzip
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    SAMPLE_ROOT,
    idx_bytes,
    requires_sample,
    smoke_args,
    upright_samples,
    write_emnist,
    write_idx_gz,
)

from emnist_lit.charsets import BALANCED47_CHARSET, VIN_CHARSET, resolve_charset
from emnist_lit.cli import main
from emnist_lit.data import (
    SPLIT_FILES,
    EMNISTDataModule,
    FileSource,
    IndexedImages,
    find_emnist_files,
    fix_orientation,
    load_split,
    stratified_split,
)
from emnist_lit.errors import EMNISTDataError


def test_charsets_resolve_to_characters_in_nist_order() -> None:
    assert resolve_charset("balanced47") == BALANCED47_CHARSET
    assert len(BALANCED47_CHARSET) == 47
    vin = resolve_charset("vin33")
    assert vin == VIN_CHARSET and len(vin) == 33 and not set("IOQ") & set(vin)
    assert resolve_charset("ba1") == "1ab"


@pytest.mark.parametrize(("charset", "named"), [("AB@", "'@'"), ("Ac", "'c'"), ("", "empty"), ("AA", "repeated")])
def test_bad_charset_names_the_problem(charset: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        EMNISTDataModule(charset=charset)


def test_fix_orientation_transposes_every_image() -> None:
    stored = torch.arange(2 * 3 * 3, dtype=torch.uint8).view(2, 3, 3)
    upright = fix_orientation(stored)
    assert torch.equal(upright[1], stored[1].T)
    assert upright.is_contiguous()


def _ell() -> np.ndarray:
    """An upright 'L': ink down the left column and along the bottom row."""
    image = np.zeros((28, 28), dtype=np.uint8)
    image[4:24, 6:9] = 255
    image[21:24, 6:20] = 255
    return image


def _check_upright_ell(image: torch.Tensor) -> None:
    ink = image.float()
    assert ink[:, :14].sum() > 2 * ink[:, 14:].sum(), "ink should sit in the left half"
    assert ink[14:].sum() > ink[:14].sum(), "the L's foot should be at the bottom"
    assert ink[22, 6:20].min() == 255 and ink[5, 15:].max() == 0


def test_transposed_nist_files_load_upright(tmp_path: Path) -> None:
    images = np.stack([_ell()] * 3).transpose(0, 2, 1)  # stored transposed, as NIST does
    write_idx_gz(tmp_path / "emnist-balanced-train-images-idx3-ubyte.gz", images)
    write_idx_gz(tmp_path / "emnist-balanced-train-labels-idx1-ubyte.gz", np.array([21, 21, 21], dtype=np.uint8))
    loaded, labels = load_split(_sources(tmp_path), "train")
    _check_upright_ell(loaded[0])
    assert labels.tolist() == [21, 21, 21]


def _sources(root: Path) -> dict[str, FileSource]:
    return {k: FileSource(root / f"{name}.gz") for k, name in SPLIT_FILES.items() if (root / f"{name}.gz").exists()}


def _extracted_layout(src: Path, dst: Path) -> Path:
    raw = dst / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in SPLIT_FILES.values():
        (raw / name).write_bytes(gzip.decompress((src / f"{name}.gz").read_bytes()))
    return dst


def _gz_in_raw_layout(src: Path, dst: Path) -> Path:
    raw = dst / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in SPLIT_FILES.values():
        shutil.copy(src / f"{name}.gz", raw)
    return dst


def _nist_zip_layout(src: Path, dst: Path) -> Path:
    dst.mkdir()
    with zipfile.ZipFile(dst / "gzip.zip", "w") as archive:
        for name in SPLIT_FILES.values():
            archive.write(src / f"{name}.gz", f"gzip/{name}.gz")
    return dst


@pytest.mark.parametrize("layout", [_extracted_layout, _gz_in_raw_layout, _nist_zip_layout])
def test_every_file_layout_loads_the_same_data(emnist_root: Path, tmp_path: Path, layout) -> None:
    root = layout(emnist_root, tmp_path / "root")
    expected = load_split(find_emnist_files(emnist_root), "test")
    got = load_split(find_emnist_files(root), "test")
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_missing_files_offline_is_one_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    dm = EMNISTDataModule(root=str(tmp_path), download=False)
    with pytest.raises(EMNISTDataError, match=r"emnist-balanced-train-images-idx3-ubyte\.gz") as err:
        dm.prepare_data()
    assert str(tmp_path.resolve()) in str(err.value) and "download" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_truncated_idx_names_the_file(fresh_emnist_root: Path) -> None:
    path = fresh_emnist_root / "emnist-balanced-test-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: len(data) // 2]))
    dm = EMNISTDataModule(root=str(fresh_emnist_root))
    with pytest.raises(EMNISTDataError, match=r"test-images-idx3-ubyte\.gz: IDX body has .* \(truncated or corrupt\)"):
        dm.setup("test")


def test_wrong_magic_names_the_file(fresh_emnist_root: Path) -> None:
    path = fresh_emnist_root / "emnist-balanced-test-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x1f\x8b\x08\x00" + idx_bytes(np.zeros(3, dtype=np.uint8))))
    with pytest.raises(EMNISTDataError, match=r"test-labels-idx1-ubyte\.gz: not an IDX file"):
        EMNISTDataModule(root=str(fresh_emnist_root)).setup("test")


def test_images_and_labels_of_different_lengths_are_refused(fresh_emnist_root: Path) -> None:
    write_idx_gz(fresh_emnist_root / "emnist-balanced-test-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(EMNISTDataError, match="do not make a labelled image set"):
        EMNISTDataModule(root=str(fresh_emnist_root)).setup("test")


def test_mapping_that_disagrees_with_balanced_is_refused(fresh_emnist_root: Path) -> None:
    (fresh_emnist_root / "emnist-balanced-mapping.txt").write_text("0 65\n1 48\n")
    with pytest.raises(EMNISTDataError, match=r"emnist-balanced-mapping\.txt: lists 'A0'"):
        EMNISTDataModule(root=str(fresh_emnist_root)).setup("test")


def test_charset_filter_keeps_and_renumbers_the_right_images(emnist_root: Path) -> None:
    dm = EMNISTDataModule(root=str(emnist_root), charset="vin33")
    dm.setup("fit")
    assert dm.num_classes == 33
    images = torch.cat([dm.train_set.images, dm.val_set.images])
    labels = torch.cat([dm.train_set.labels, dm.val_set.labels])
    assert torch.bincount(labels).tolist() == [24] * 33
    upright, nist_labels = upright_samples(24, seed=1)
    for new_label, char in [(0, "0"), (18, "J"), (23, "P"), (24, "R"), (32, "Z")]:
        reference = torch.from_numpy(upright[nist_labels == BALANCED47_CHARSET.index(char)]).float().mean(0)
        assert torch.allclose(images[labels == new_label].float().mean(0), reference, atol=1e-3), char


def test_split_is_stratified_disjoint_and_deterministic(emnist_root: Path) -> None:
    first, second = EMNISTDataModule(root=str(emnist_root)), EMNISTDataModule(root=str(emnist_root))
    first.setup("fit")
    second.setup("fit")
    assert torch.equal(first.val_set.images, second.val_set.images)
    assert torch.bincount(first.val_set.labels).tolist() == [1] * 47  # round(24 * 0.05) of every class
    assert len(first.train_set) + len(first.val_set) == 47 * 24
    labels = torch.arange(10).repeat_interleave(100)
    train, val = stratified_split(labels, 0.05, seed=7)
    assert set(train.tolist()).isdisjoint(val.tolist()) and len(train) + len(val) == 1000
    assert torch.bincount(labels[val]).tolist() == [5] * 10
    assert not torch.equal(val, stratified_split(labels, 0.05, seed=8)[1])


def test_training_batches_are_float_upright_and_augmented_only_when_training(emnist_root: Path) -> None:
    dm = EMNISTDataModule(root=str(emnist_root), batch_size=16, include_plain_copy=True)
    dm.setup("fit")
    assert len(dm.train_set) == 2 * (47 * 24 - 47)  # plain and augmented copy of the 95%
    assert dm.train_set.augment.sum() == len(dm.train_set) // 2
    n = len(dm.train_set) // 2
    assert len(dm.train_set.images) == n  # both copies index one image tensor
    plain, augmented = dm.train_set.__getitems__(list(range(n))), dm.train_set.__getitems__(list(range(n, 2 * n)))
    assert torch.equal(plain[0], augmented[0]) and torch.equal(plain[1], augmented[1])
    assert not plain[2].any() and augmented[2].all()
    assert torch.equal(dm.train_set[n + 3][0], plain[0][3])
    batch = next(iter(dm.val_dataloader()))
    images, labels = dm.on_after_batch_transfer(batch, 0)
    assert images.shape == (16, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert torch.equal(images[:, 0], batch[0].float() / 255)
    assert torch.equal(labels, batch[1])


def test_normalisation_comes_from_the_training_split_alone(tmp_path: Path) -> None:
    """The validation images of this copy are white, so statistics that took them in show."""
    root = write_emnist(tmp_path / "emnist")
    upright, labels = upright_samples(24, seed=1)  # the train file write_emnist wrote
    dm = EMNISTDataModule(root=str(root))
    train, val = stratified_split(torch.from_numpy(labels).long(), dm.hparams.val_fraction, dm.hparams.split_seed)
    upright[val.numpy()] = 255
    write_idx_gz(root / f"{SPLIT_FILES['train_images']}.gz", upright.transpose(0, 2, 1))
    pixels = torch.from_numpy(upright).float() / 255
    expected = (pixels[train].mean().item(), pixels[train].std().item())
    everything = (pixels.mean().item(), pixels.std().item())
    assert everything[0] > expected[0] + 0.02, "the validation images move the mean"

    dm.setup("fit")
    assert dm.normalization == pytest.approx(expected, rel=1e-5)
    quick = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.num_sanity_val_steps=0"]
    cli = main(["fit", *smoke_args(root, tmp_path / "logs", *quick, "--test_after_fit=false")])
    model_stats = (cli.model.input_mean.item(), cli.model.input_std.item())
    assert model_stats == pytest.approx(expected, rel=1e-5), "the model normalises with the training split's statistics"
    saved = torch.load(cli.trainer.checkpoint_callback.last_model_path, weights_only=True)["state_dict"]
    assert (saved["input_mean"].item(), saved["input_std"].item()) == pytest.approx(expected, rel=1e-5)


def test_regenerated_synthetic_files_are_byte_identical(tmp_path: Path, emnist_root: Path) -> None:
    again = write_emnist(tmp_path / "again")
    for name in SPLIT_FILES.values():
        assert (again / f"{name}.gz").read_bytes() == (emnist_root / f"{name}.gz").read_bytes()


@requires_sample
def test_real_sample_is_upright() -> None:
    images, labels = load_split(find_emnist_files(SAMPLE_ROOT), "test")
    ell = images[labels == BALANCED47_CHARSET.index("L")].float().mean(0)
    assert ell[:, 3:8].mean() > 1.5 * ell[:, 20:25].mean(), "an L's ink runs down the left"
    assert ell[20:25].mean() > 1.3 * ell[3:8].mean(), "an L's foot runs along the bottom"
    seven = images[labels == BALANCED47_CHARSET.index("7")].float().mean(0)
    assert seven[3:8].mean() > 2 * seven[20:25].mean(), "a 7's bar is at the top"


@requires_sample
@pytest.mark.parametrize(("charset", "classes"), [("vin33", 33), ("balanced47", 47)])
def test_real_sample_charsets_and_split(charset: str, classes: int) -> None:
    dm = EMNISTDataModule(root=str(SAMPLE_ROOT), charset=charset)
    dm.setup("fit")
    dm.setup("test")
    train_counts = torch.bincount(dm.train_set.labels, minlength=classes)
    val_counts = torch.bincount(dm.val_set.labels, minlength=classes)
    assert len(train_counts) == classes and train_counts.min() > 0
    assert torch.equal(val_counts, ((train_counts + val_counts) * 0.05).round().long())
    assert torch.bincount(dm.test_set.labels).tolist() == [100] * classes
    if charset == "balanced47":
        assert len(dm.train_set) + len(dm.val_set) == 106_923
    again = EMNISTDataModule(root=str(SAMPLE_ROOT), charset=charset)
    again.setup("fit")
    assert torch.equal(again.val_set.labels, dm.val_set.labels) and torch.equal(again.val_set.images, dm.val_set.images)


@pytest.mark.parametrize("balance_classes", [False, True])
def test_balance_classes_draws_every_class_equally_often(emnist_root: Path, balance_classes: bool) -> None:
    dm = EMNISTDataModule(root=str(emnist_root), batch_size=512, balance_classes=balance_classes)
    dm.setup("fit")
    natural = dm.train_set
    # make class 0 twenty times as common as any other, as rare and common characters are in the real files
    rows = torch.cat([torch.arange(len(natural)), torch.nonzero(natural.labels == 0).flatten().repeat(19)])
    dm.train_set = IndexedImages(natural.images, natural.labels[rows], natural.augment[rows], rows)
    torch.manual_seed(0)
    labels = torch.cat([batch[1] for _ in range(10) for batch in dm.train_dataloader()])
    share_of_class_0 = (labels == 0).float().mean().item()
    if balance_classes:
        assert share_of_class_0 == pytest.approx(1 / 47, abs=0.006)
        assert torch.bincount(labels, minlength=47).min() > 0.7 * len(labels) / 47
    else:
        assert share_of_class_0 == pytest.approx(20 / 66, abs=0.03)
