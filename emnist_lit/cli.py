"""The command line: LightningCLI with linked arguments, the standard callbacks, and one-line errors."""

from __future__ import annotations

import re
import signal
import textwrap
from typing import Any, Literal, NoReturn

import yaml
from jsonargparse import ActionYesNo
from lightning.pytorch import LightningModule, Trainer
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
from emnist_lit.line_module import LineRecognizer
from emnist_lit.module import EMNISTClassifier
from emnist_lit.prediction import CharacterWriter, LineWriter
from emnist_lit.trainer import EMNISTTrainer

DEFAULT_MODEL = "emnist_lit.module.EMNISTClassifier"
DEFAULT_DATA = "emnist_lit.data.EMNISTDataModule"
"""What a config trains when it names no `class_path`: the character classifier on EMNIST characters. A line model
names its own (`emnist_lit.line_module.LineRecognizer`, `emnist_lit.data.lines.LineDataModule`)."""

PROGRESS_REFRESH_STEPS = 20
"""How often the default progress bar redraws: each redraw reads the loss back from the GPU, a stall per step."""


_UNION_ERROR = re.compile(
    r'^Parser key "(?P<key>[^"]+)":\n\s+Does not validate against any of the Union subtypes\n.*?'
    r"\n(?P<indent> +)- Problem with given class_path '(?P<cls>[^']+)':\n(?P<inner>.*?)\n(?P=indent)- ",
    re.DOTALL,
)


def concise_error(message: str) -> str:
    """jsonargparse's error for a bad value of a config's model or data, without the union it was tried against:
    `Parser key "data.batch_size": Expected a <class 'int'>. Got value: many` rather than a dozen lines naming every
    class the section could have been. Other messages pass unchanged. (The wording matched here is jsonargparse's;
    the bad-config tests fail if it changes.)"""
    found = _UNION_ERROR.match(message)
    if not found:
        return message
    key, inner = found["key"], textwrap.dedent(found["inner"]).strip()
    if nested := re.match(r'Parser key "([^"]+)":\n', inner):
        return f'Parser key "{key}.{nested[1]}":\n' + textwrap.indent(textwrap.dedent(inner[nested.end() :]), "  ")
    if option := re.fullmatch(r"Option '([^']+)' is not accepted", inner):
        return f"Option '{key}.{option[1]}' is not accepted by {found['cls']}"
    return f'Parser key "{key}" ({found["cls"]}):\n' + textwrap.indent(inner, "  ")


class ConciseErrorParser(LightningArgumentParser):
    """LightningCLI's parser, with `concise_error`'s messages."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        super().error(concise_error(message), ex)


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
        # a config without class_paths trains the character classifier; a line model names its classes
        parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}, "data": {"class_path": DEFAULT_DATA}})
        parser.link_arguments("data.classes", "model.init_args.classes", apply_on="instantiate")
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
                data = {"init_args": {"charset": classes}}
                self.config = self.parser.parse_object({subcommand: {"data": data}}, self.config)
            elif checkpoint is not None and subcommand in ("validate", "test"):
                check_charset(config.ckpt_path, checkpoint, config.data.init_args.charset)
            if subcommand == "fit":
                check_resume_folder(config.get("ckpt_path"), config.checkpoint.dirpath, config.trainer.logger)
            if bundle := self.config[subcommand].get("bundle"):
                if subcommand != "predict" or self.config[subcommand].get("ckpt_path"):
                    raise CheckpointError(f"bundle {bundle}: use --bundle with predict, instead of --ckpt_path")
                info = read_bundle(bundle)
                hparams = {k: v for k, v in info["hparams"].items() if k != "classes"}
                model, data = {"init_args": hparams}, {"init_args": {"charset": info["classes"]}}
                overrides = {subcommand: {"model": model, "data": data}}
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
        if self.subcommand == "predict":
            self._require_character_model()

    def before_read(self) -> None:
        """As predict; and the second-opinion character model is loaded (and refused by name) before any photo."""
        self.before_predict()
        writer = next(c for c in self.trainer.callbacks if isinstance(c, LineWriter))
        if writer.character_ckpt and not isinstance(self.model, LineRecognizer):
            raise EMNISTConfigError(
                f"reading.character_ckpt {writer.character_ckpt}: a second opinion for a line model, but the "
                f"checkpoint read with is a {type(self.model).__name__}"
            )
        writer.load_character_reader(self.model.classes)

    def before_export(self) -> None:
        self._require_character_model()

    def _require_character_model(self) -> None:
        if not isinstance(self.model, EMNISTClassifier):
            raise EMNISTConfigError(
                f"{self.subcommand} works on single characters, but the checkpoint holds a "
                f"{type(self.model).__name__}, which reads whole lines: use `read` with it"
            )

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
        config["model"]["init_args"]["optimizer"].setdefault("init_args", {})["lr"] = float(suggestion)
        write_atomically(output, lambda tmp: tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8"))
        print(f"config with lr={suggestion:.3g} written to {output}")


def user_error_cause(err: BaseException) -> BaseException | None:
    """The project's own error (USER_ERRORS) among the exceptions `err` was raised from, if any."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, USER_ERRORS):
        cause = cause.__cause__
    return cause


def build_cli(args: list[str] | None = None, run: bool = True, **kwargs: Any) -> EMNISTCLI:
    """The project's LightningCLI: any LightningModule and EMNIST datamodule a config names (the character
    classifier on EMNIST characters when it names none), the project's Trainer, seed 42 by default."""
    return EMNISTCLI(
        LightningModule,
        EMNISTDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_class=ConciseErrorParser,
        trainer_class=EMNISTTrainer,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        **kwargs,
    )


def main(args: list[str] | None = None) -> EMNISTCLI:
    """Entry point of `python -m emnist_lit` and `emnist-lit`: bad data, options and checkpoints end in one
    `error: ...` line rather than a traceback, and a SIGTERM'd fit exits 143 like a killed process."""
    quiet.silence_library_chatter()
    try:
        return build_cli(args)
    except USER_ERRORS as err:
        raise SystemExit(f"error: {err}") from None
    except ValueError as err:  # jsonargparse raises what a class's __init__ refuses inside its own error
        if (cause := user_error_cause(err)) is None:
            raise
        raise SystemExit(f"error: {cause}") from None
    except SIGTERMException:
        raise SystemExit(128 + signal.SIGTERM) from None
