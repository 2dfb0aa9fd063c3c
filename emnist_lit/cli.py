"""The command line: LightningCLI with linked arguments, standard callbacks, `lr_find`, and the prediction writer."""

from __future__ import annotations

import csv
import signal
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.tuner import Tuner
from lightning.pytorch.utilities.exceptions import SIGTERMException

from emnist_lit.data import EMNISTConfigError, EMNISTDataError, EMNISTDataModule
from emnist_lit.export import (
    CheckpointError,
    CheckpointOnSigterm,
    check_charset,
    check_ckpt_path,
    check_resume_folder,
    export_bundle,
    load_bundle_weights,
    read_bundle,
    write_atomically,
)
from emnist_lit.images import ImageInputError
from emnist_lit.module import EMNISTClassifier


class CharacterWriter(BasePredictionWriter):
    """Prints `ASCII_CODE, PATH` per image as the VIN reference's inference did, reports unreadable files on
    stderr, and optionally writes a CSV with confidence and top-3 once every batch is done."""

    def __init__(self, output: str | None = None, top_k: int = 3) -> None:
        """
        Args:
            output: CSV file to write (`path,char,ascii,confidence,top3`); nothing is written when unset.
            top_k: how many candidates the CSV's top column lists.
        """
        super().__init__(write_interval="batch")
        self.output, self.top_k = output, top_k
        self.rows: list[list[str]] = []
        self.failed: list[str] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rows, self.failed = [], []

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: torch.Tensor,
        batch_indices: Any,
        batch: tuple[torch.Tensor, list[str], list[tuple[str, str]]],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        _, paths, failures = batch
        for path, reason in failures:
            print(f"error: {path}: {reason}", file=sys.stderr, flush=True)
            self.failed.append(path)
        classes = pl_module.classes
        top = prediction.float().topk(min(self.top_k, prediction.shape[1]), dim=1)
        for path, probs, indices in zip(paths, top.values.tolist(), top.indices.tolist(), strict=True):
            char = classes[indices[0]]
            print(f"{ord(char)}, {path}", flush=True)
            candidates = " ".join(f"{classes[i]}:{p:.4f}" for i, p in zip(indices, probs, strict=True))
            self.rows.append([path, char, str(ord(char)), f"{probs[0]:.6f}", candidates])

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.output:

            def write(tmp: Path) -> None:
                with tmp.open("w", newline="", encoding="utf-8") as handle:
                    writer = csv.writer(handle)
                    writer.writerow(["path", "char", "ascii", "confidence", f"top{self.top_k}"])
                    writer.writerows(self.rows)

            write_atomically(self.output, write)
        if self.failed:
            print(f"{len(self.failed)} of {len(self.failed) + len(self.rows)} files failed", file=sys.stderr)


def steepest_descent_lr(lrs: list[float], losses: list[float], skip_begin: int = 10, skip_end: int = 1) -> float | None:
    """The learning rate where the loss falls fastest per decade of LR. Lightning 2.6's `suggestion()` takes the
    slope per unit of LR on a log-spaced sweep, which pulls its pick towards the smallest LRs (Lightning issue
    #21141); this is the same rule with the derivative taken against log10(lr)."""
    lr = torch.tensor(lrs[skip_begin:-skip_end], dtype=torch.float64)
    loss = torch.tensor(losses[skip_begin:-skip_end], dtype=torch.float64)
    finite = torch.isfinite(loss)
    lr, loss = lr[finite], loss[finite]
    if len(loss) < 2:
        return None
    slope = torch.gradient(loss, spacing=[torch.log10(lr)])[0]
    return float(lr[torch.argmin(slope)])


class EMNISTTrainer(Trainer):
    """Lightning's Trainer plus an `lr_find` subcommand, so the LR range test runs through the same CLI and config."""

    def lr_find(
        self,
        model: LightningModule,
        datamodule: EMNISTDataModule,
        min_lr: float = 1e-6,
        max_lr: float = 1.0,
        num_training: int = 100,
        output_config: str | None = None,
    ) -> float | None:
        """Run Lightning's LR range test, save the loss-vs-LR plot as `lr_find.png` in the log folder and print the
        suggested learning rate.

        Args:
            min_lr: lowest learning rate tried.
            max_lr: highest learning rate tried.
            num_training: number of learning rates tried (one optimizer step each).
            output_config: write a copy of the config with the suggested LR here, ready for `fit`.
        """
        finder = Tuner(self).lr_find(
            model, datamodule=datamodule, min_lr=min_lr, max_lr=max_lr, num_training=num_training, update_attr=False
        )
        if finder is None:
            return None
        plot = Path(self.log_dir or ".") / "lr_find.png"
        plot.parent.mkdir(parents=True, exist_ok=True)
        self.lr_find_suggestion = steepest_descent_lr(finder.results["lr"], finder.results["loss"])
        figure = finder.plot(suggest=False)
        if self.lr_find_suggestion is not None:
            figure.axes[0].axvline(self.lr_find_suggestion, color="red", linestyle="--", label="suggested")
            figure.axes[0].legend()
        figure.savefig(plot)
        if self.lr_find_suggestion is None:
            print(
                f"no learning rate suggested: too few points before the loss diverged; raise num_training\nplot: {plot}"
            )
        else:
            print(f"suggested learning rate: {self.lr_find_suggestion}\nplot: {plot}")
        return self.lr_find_suggestion

    def export(
        self,
        model: LightningModule,
        datamodule: EMNISTDataModule,
        ckpt_path: str,
        export_dir: str | None = None,
        onnx: bool = True,
    ) -> list[Path]:
        """Write a deployment bundle of a checkpoint (see `emnist_lit.export.export_bundle`); the model comes from
        the checkpoint's own hyperparameters, whatever the config says. The CLI has already read the checkpoint
        as data (`_parse_ckpt_path`), so a bad file never gets this far.

        Args:
            ckpt_path: the checkpoint to export.
            export_dir: folder for the bundle; default `<checkpoint name>-bundle` beside the checkpoint.
            onnx: also write `model.onnx` (needs the `export` extra: onnx, onnxscript).
        """
        trained = type(model).load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
        folder = Path(export_dir) if export_dir else Path(ckpt_path).parent / f"{Path(ckpt_path).stem}-bundle"
        written = export_bundle(trained, folder, onnx=onnx)
        print("\n".join(f"wrote {path}" for path in written))
        return written


class EMNISTCLI(LightningCLI):
    """`python -m emnist_lit fit|validate|test|predict|lr_find --config configs/X.yaml`."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "lr_find": {"model", "datamodule"}, "export": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.classes", "model.classes", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "epoch{epoch:02d}-acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(CheckpointOnSigterm, "sigterm_checkpoint")
        parser.add_lightning_class_args(CharacterWriter, "prediction")
        parser.add_argument("--output", type=str | None, default=None, help="predict: CSV file of predictions")
        parser.link_arguments("output", "prediction.output")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="fit: test the best checkpoint after")
        parser.add_argument("--bundle", type=str | None, default=None, help="predict: an exported bundle folder")

    def _parse_ckpt_path(self) -> None:
        """Read `--ckpt_path` as untrusted data before Lightning does, and take predict's `--bundle` hyperparameters
        the way Lightning takes a checkpoint's."""
        subcommand = self.config.get("subcommand")
        if subcommand:
            config = self.config[subcommand]
            checkpoint = check_ckpt_path(config.get("ckpt_path"))
            classes = (checkpoint or {}).get("hyper_parameters", {}).get("classes")
            if subcommand == "predict" and isinstance(classes, str):  # the charset only sets the model's classes
                self.config = self.parser.parse_object({subcommand: {"data": {"charset": classes}}}, self.config)
            elif checkpoint is not None and subcommand in ("validate", "test"):
                check_charset(config.ckpt_path, checkpoint, config.data.charset)
            if subcommand == "fit":
                check_resume_folder(config.get("ckpt_path"), config.checkpoint.dirpath, config.trainer.logger)
            if bundle := self.config[subcommand].get("bundle"):
                if subcommand != "predict" or self.config[subcommand].get("ckpt_path"):
                    raise CheckpointError(f"bundle {bundle}: use --bundle with predict, instead of --ckpt_path")
                info = read_bundle(bundle)
                hparams = {k: v for k, v in info["hparams"].items() if k != "classes"}
                overrides = {subcommand: {"model": hparams, "data": {"charset": info["classes"]}}}
                self.config = self.parser.parse_object(overrides, self.config)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        if self.subcommand in ("predict", "export"):  # stdout carries the results; no logs or config to save
            self.config[self.subcommand].trainer.enable_progress_bar = False
            self.config[self.subcommand].trainer.logger = False
            self.save_config_callback = None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if not trainer.loggers:  # LearningRateMonitor refuses to start without a logger and has nowhere to write
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]
        return trainer

    def after_instantiate_classes(self) -> None:
        if self.subcommand and (bundle := self.config[self.subcommand].get("bundle")):
            load_bundle_weights(self.model, bundle)

    def after_fit(self) -> None:
        if self.config.fit.test_after_fit and not self.trainer.interrupted:
            best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)

    def after_predict(self) -> None:
        writer = next(c for c in self.trainer.callbacks if isinstance(c, CharacterWriter))
        if writer.failed:
            raise SystemExit(1)

    def after_lr_find(self) -> None:
        output = self.config.lr_find.output_config
        suggestion = getattr(self.trainer, "lr_find_suggestion", None)
        if not output or suggestion is None:
            return
        config = yaml.safe_load(self.parser.dump(self.config, format="yaml"))["lr_find"]
        for key in ("min_lr", "max_lr", "num_training", "output_config", "config"):
            config.pop(key, None)
        config["model"]["optimizer"].setdefault("init_args", {})["lr"] = float(suggestion)
        write_atomically(output, lambda tmp: tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8"))
        print(f"config with lr={suggestion:.3g} written to {output}")


def main(args: list[str] | None = None) -> EMNISTCLI:
    """Entry point of `python -m emnist_lit` and `emnist-lit`: bad data, options and checkpoints end in one
    `error: ...` line rather than a traceback, and a SIGTERM'd fit exits 143 like a killed process."""
    try:
        return EMNISTCLI(
            EMNISTClassifier,
            EMNISTDataModule,
            trainer_class=EMNISTTrainer,
            seed_everything_default=42,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except (EMNISTDataError, EMNISTConfigError, CheckpointError, ImageInputError) as err:
        raise SystemExit(f"error: {err}") from None
    except SIGTERMException:
        raise SystemExit(128 + signal.SIGTERM) from None
