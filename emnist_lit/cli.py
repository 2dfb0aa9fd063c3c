"""The command line: LightningCLI with linked arguments, the standard callbacks, and one-line errors."""

from __future__ import annotations

import signal
from typing import Any, Literal

import yaml
from jsonargparse import ActionYesNo
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from emnist_lit import quiet
from emnist_lit.atomic import write_atomically
from emnist_lit.budget import TimeBudget
from emnist_lit.callbacks import AugmentedSamples, SigtermCheckpoint, TestReport
from emnist_lit.checkpoints import check_charset, check_ckpt_path, check_resume_folder
from emnist_lit.data import EMNISTDataModule
from emnist_lit.errors import USER_ERRORS, CheckpointError, EMNISTConfigError
from emnist_lit.export import load_bundle_weights, read_bundle
from emnist_lit.inference import InferenceSetup
from emnist_lit.module import EMNISTClassifier
from emnist_lit.prediction import CharacterWriter, LineWriter
from emnist_lit.trainer import EMNISTTrainer

PROGRESS_REFRESH_STEPS = 20
"""How often the default progress bar redraws: each redraw reads the loss back from the GPU, a stall per step."""


class EMNISTCLI(LightningCLI):
    """`python -m emnist_lit fit|validate|test|predict|read|serve|lr_find|export --config configs/X.yaml`."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands plus `lr_find` and `export`. Their `verbose` (the results table, printed always)
        gives way to the project's `--verbose`, which brings back Lightning's banners and tips."""
        commands = {name: set(skip) for name, skip in LightningCLI.subcommands().items()}
        for name in ("validate", "test"):
            commands[name].add("verbose")
        extra = ("lr_find", "export", "read", "serve")
        return {**commands, **{name: {"model", "datamodule"} for name in extra}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.classes", "model.classes", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(TimeBudget, "time_budget")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(SigtermCheckpoint, "sigterm_checkpoint")
        parser.add_lightning_class_args(AugmentedSamples, "augmented_samples")
        parser.add_lightning_class_args(TestReport, "test_report")
        parser.add_lightning_class_args(CharacterWriter, "prediction")
        parser.add_lightning_class_args(LineWriter, "reading")
        parser.add_lightning_class_args(InferenceSetup, "inference")
        parser.add_argument("--output", type=str | None, default=None, help="predict, read: CSV file of results")
        parser.link_arguments("output", "prediction.output")
        parser.link_arguments("output", "reading.output")
        parser.add_argument("--format", type=Literal["vin", "text"], default="vin", help="read: a VIN or free text")
        parser.link_arguments("format", "reading.format")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="fit: test the best checkpoint after")
        parser.add_argument("--bundle", type=str | None, default=None, help="predict: an exported bundle folder")
        parser.add_argument(
            "--verbose", action=ActionYesNo, nargs="?", default=False, help="show Lightning's banners, tips, warnings"
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand and self.config[subcommand].get("verbose"):
            quiet.restore_library_chatter()
        elif subcommand != "fit":
            quiet.silence_training_state_warnings()

    def _parse_ckpt_path(self) -> None:
        """Read `--ckpt_path` as untrusted data before Lightning does, and take predict's `--bundle` hyperparameters
        the way Lightning takes a checkpoint's."""
        subcommand = self.config.get("subcommand")
        if subcommand:
            config = self.config[subcommand]
            checkpoint = check_ckpt_path(config.get("ckpt_path"))
            classes = (checkpoint or {}).get("hyper_parameters", {}).get("classes")
            if subcommand in ("predict", "read", "serve") and isinstance(classes, str):  # the charset sets the classes
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
        checkpoint = (self.config[self.subcommand] if self.subcommand else self.config).get("checkpoint")
        if checkpoint is not None and checkpoint.filename is None and checkpoint.monitor:
            name = checkpoint.monitor.rsplit("/", 1)[-1]  # epoch05-balanced_acc0.9400.ckpt: what it was selected by
            checkpoint.filename = f"epoch{{epoch:02d}}-{name}{{{checkpoint.monitor}:.4f}}"
        if self.subcommand in ("predict", "read", "export", "serve"):  # no logs or config to save
            self.config[self.subcommand].trainer.enable_progress_bar = False
            self.config[self.subcommand].trainer.logger = False
            self.save_config_callback = None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if not trainer.loggers:  # LearningRateMonitor refuses to start without a logger and has nowhere to write
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]
        unused_writer = CharacterWriter if self.subcommand in ("read", "serve") else LineWriter  # own batch formats
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, unused_writer)]
        configured = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        bar = trainer.progress_bar_callback
        if type(bar) is TQDMProgressBar and not any(c is bar for c in configured):  # Lightning's default bar
            trainer.callbacks = [TQDMProgressBar(PROGRESS_REFRESH_STEPS) if c is bar else c for c in trainer.callbacks]
        if trainer.fast_dev_run:  # Lightning 2.6's ModelCheckpoint still saves last.ckpt (in ./checkpoints) at its end
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
        return trainer

    def before_predict(self) -> None:
        """One process predicts (and reads): several would each print and write only their share of the files."""
        if self.trainer.world_size > 1:
            raise EMNISTConfigError(
                f"{self.subcommand} runs on one device, but the trainer would start {self.trainer.world_size} "
                "processes "
                "(--trainer.devices, --trainer.num_nodes); pass --trainer.devices=1"
            )

    before_read = before_predict

    def after_instantiate_classes(self) -> None:
        if self.subcommand and (bundle := self.config[self.subcommand].get("bundle")):
            load_bundle_weights(self.model, bundle)

    def after_fit(self) -> None:
        if self.config.fit.test_after_fit and not self.trainer.interrupted:
            best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)

    def after_predict(self) -> None:
        writer = next(c for c in self.trainer.callbacks if isinstance(c, CharacterWriter | LineWriter))
        if writer.failed:
            raise SystemExit(1)

    after_read = after_predict

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
    quiet.silence_library_chatter()
    try:
        return EMNISTCLI(
            EMNISTClassifier,
            EMNISTDataModule,
            trainer_class=EMNISTTrainer,
            seed_everything_default=42,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except USER_ERRORS as err:
        raise SystemExit(f"error: {err}") from None
    except SIGTERMException:
        raise SystemExit(128 + signal.SIGTERM) from None
