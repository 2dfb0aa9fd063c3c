"""A GPU step never waits on the host: one training step of the on-device path runs on the `meta` device, where a
tensor has a shape but no data, under a guard that also refuses what meta lets pass (a host tensor copied to the
device, a boolean-mask scatter, linalg's error check). Plus what a GPU user expects around it: a progress bar that
does not read the loss every step, and an opt-in `torch.compile` that leaves checkpoints as they were."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, smoke_args, upright_samples
from lightning.pytorch.callbacks import TQDMProgressBar
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

from emnist_lit.cli import EMNISTCLI, build_cli, main
from emnist_lit.data import EMNISTDataModule, random_affine
from emnist_lit.module import EMNISTClassifier, metric_suite

META = torch.device("meta")
aten = torch.ops.aten


class HostSyncError(AssertionError):
    """Something in the step would make a CUDA stream wait for the host."""


class NoHostSync(TorchDispatchMode):
    """Refuses on device (meta) tensors, besides what meta refuses by itself (`item`, `bool`, `nonzero`, `bincount`,
    `unique`, boolean-mask gathers): linalg's error check and boolean-mask scatters; and copies of host tensors to
    the device. A CPU scalar (0-d) is a kernel argument, not a copy, and passes; work on host tensors is free."""

    READ_BACK = frozenset(
        {aten._local_scalar_dense, aten.is_nonzero, aten.nonzero, aten.masked_select, aten._linalg_check_errors}
    )
    INDEXING = frozenset({aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_})

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_device = any(t.device == META for t in inputs)
        if on_device and func.overloadpacket in self.READ_BACK:
            raise HostSyncError(f"{func} reads a value back to the host")
        masks = func.overloadpacket in self.INDEXING and any(i is not None and i.dtype == torch.bool for i in args[1])
        if on_device and masks:
            raise HostSyncError(f"{func} with a boolean mask needs the mask's count on the host")
        out = func(*args, **kwargs)
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" and t.dim() > 0 for t in inputs) and any(t.device == META for t in outputs):
            raise HostSyncError(f"{func} copies a host tensor to the device")
        return out


@contextmanager
def no_host_sync(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`NoHostSync`, and Python data turned into device tensors (`torch.tensor([...], device=...)`), which bypasses
    the dispatcher: on CUDA it is a copy from pageable memory, which waits for the stream."""

    def refuse_host_data(make: Callable) -> Callable:
        @functools.wraps(make)
        def checked(data: object, *args: object, device: object = None, **kwargs: object) -> torch.Tensor:
            if device is not None and torch.device(device).type != "cpu" and not isinstance(data, torch.Tensor):
                raise HostSyncError(f"torch.{make.__name__} copies Python data to {device}")
            return make(data, *args, device=device, **kwargs)

        return checked

    with monkeypatch.context() as patch:
        patch.setattr(torch, "as_tensor", refuse_host_data(torch.as_tensor))
        patch.setattr(torch, "tensor", refuse_host_data(torch.tensor))
        with NoHostSync():
            yield


def meta_trainer(rank: int = 0, world_size: int = 1) -> SimpleNamespace:
    strategy = SimpleNamespace(root_device=META)
    return SimpleNamespace(strategy=strategy, training=True, predicting=False, global_rank=rank, world_size=world_size)


@pytest.mark.parametrize("balance_classes", [False, True])
def test_a_training_step_of_the_on_device_path_never_waits_on_the_host(
    balance_classes: bool, emnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch drawn and gathered on the device, half of it augmented (the plain copy), forward, loss, metrics,
    backward: all on meta, as rank 1 of 2."""
    dm = EMNISTDataModule(
        root=str(emnist_root), batch_size=32, on_device=True, include_plain_copy=True, balance_classes=balance_classes
    )
    dm.trainer = meta_trainer(rank=1, world_size=2)
    dm.setup("fit")
    assert dm.train_set.images.device == META
    loader = dm.train_dataloader()
    model = EMNISTClassifier(backbone="cnn", width=8, channels_last=True, label_smoothing=0.1).to(META)
    with no_host_sync(monkeypatch):
        batch = next(iter(loader))
        images, labels = dm.on_after_batch_transfer(batch, 0)
        loss = model.training_step((images, labels), 0)
        loss.backward()
    assert images.shape == (32, 1, 28, 28) and images.device == META
    assert loss.shape == () and loss.device == META
    assert model.net.features[0].weight.grad.device == META


def masked_augment(images: torch.Tensor, augment: torch.Tensor) -> torch.Tensor:
    """How the training step augmented before: a Python `if` on the flags and a boolean-mask gather and scatter."""
    if augment.any():
        images[augment] = random_affine(images[augment], 10, 0.1, 10)
    return images


SYNCS: dict[str, Callable[[SimpleNamespace], object]] = {
    "augment.any() in an if": lambda t: bool(t.flags.any()),
    "boolean-mask gather": lambda t: t.images[t.flags],
    "boolean-mask scatter": lambda t: t.images.__setitem__(t.flags, 0.0),
    "the old masked augmentation": lambda t: masked_augment(t.images, t.flags),
    "torch.linalg.inv": lambda t: torch.linalg.inv(t.matrices),
    "index list sent to the device": lambda t: t.images[torch.as_tensor([0, 1], device=META)],
    "host tensor sent to the device": lambda t: torch.arange(4).to(META),
    "torchmetrics' own update (bincount)": lambda t: t.f1.update(t.logits, t.labels),
    "loss.item()": lambda t: t.images.sum().item(),
}


@pytest.mark.parametrize("name", list(SYNCS))
def test_the_check_catches_each_kind_of_host_sync(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tensors = SimpleNamespace(
        images=torch.zeros(8, 1, 28, 28, device=META),
        flags=torch.zeros(8, dtype=torch.bool, device=META),
        labels=torch.zeros(8, dtype=torch.long, device=META),
        logits=torch.zeros(8, 47, device=META),
        matrices=torch.eye(2, device=META).expand(8, 2, 2),
        f1=MulticlassF1Score(47, validate_args=False).to(META),
    )
    with pytest.raises((HostSyncError, RuntimeError, NotImplementedError)), no_host_sync(monkeypatch):
        SYNCS[name](tensors)


@pytest.mark.parametrize("per_class", [False, True])
def test_the_metrics_counted_without_sync_equal_torchmetrics_own(per_class: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    suite = metric_suite(47, per_class=per_class)
    reference = {
        "acc": MulticlassAccuracy(47, average="none" if per_class else "micro"),
        **{
            name: cls(47, average="none" if per_class else "macro")
            for name, cls in (
                ("f1", MulticlassF1Score),
                ("precision", MulticlassPrecision),
                ("recall", MulticlassRecall),
            )
        },
    }
    for _ in range(3):
        logits, labels = torch.randn(64, 47, generator=generator), torch.randint(0, 47, (64,), generator=generator)
        suite.update(logits, labels)
        for metric in reference.values():
            metric.update(logits, labels)
    computed = suite.compute()
    macro = {"f1_macro", "precision_macro", "recall_macro", "balanced_acc"}
    assert set(computed) == ({"acc", "f1", "precision", "recall"} if per_class else {"acc", *macro})
    for name, value in computed.items():
        counterpart = "recall" if name == "balanced_acc" else name.removesuffix("_macro")
        torch.testing.assert_close(value, reference[counterpart].compute())


def cli_without_running(*args: str) -> EMNISTCLI:
    return build_cli(["--config", *args], run=False)


def test_the_default_progress_bar_reads_the_loss_every_20_steps_only(emnist_root: Path) -> None:
    smoke = str(REPO / "configs" / "smoke.yaml")
    cli = cli_without_running(smoke, f"--data.root={emnist_root}", "--trainer.logger=false")
    assert isinstance(cli.trainer.progress_bar_callback, TQDMProgressBar)
    assert cli.trainer.progress_bar_callback.refresh_rate == 20
    bar = ["--trainer.callbacks+=TQDMProgressBar", "--trainer.callbacks.refresh_rate=1"]
    cli = cli_without_running(smoke, f"--data.root={emnist_root}", "--trainer.logger=false", *bar)
    assert cli.trainer.progress_bar_callback.refresh_rate == 1, "a bar the config asks for is kept as it is"


def test_compile_trains_a_compiled_network_and_checkpoints_the_plain_one(
    emnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dynamo's `eager` backend stands in for Inductor, which would spend a minute compiling C++ on this CPU."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    cli = main(["fit", *smoke_args(emnist_root, tmp_path, "--trainer.max_epochs=1"), "--model.compile=true"])
    assert cli.model.net._compiled_call_impl is not None
    assert "test/acc" in cli.trainer.callback_metrics
    checkpoint_path = cli.trainer.checkpoint_callback.best_model_path
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    assert checkpoint["state_dict"].keys() == EMNISTClassifier(backbone="lenet").state_dict().keys()

    scan = tmp_path / "scan.png"
    Image.fromarray(upright_samples(1, seed=0)[0][0]).save(scan)
    predict = main(["predict", f"--ckpt_path={checkpoint_path}", f"--data.predict_files=[{scan}]"])
    assert predict.model.hparams.compile and predict.model.net._compiled_call_impl is None
