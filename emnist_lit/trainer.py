"""The Trainer with this project's extra subcommands: `lr_find` (the LR range test), `export` (a bundle) and `read`
(handwritten lines to text)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.tuner import Tuner

from emnist_lit.data import EMNISTDataModule
from emnist_lit.errors import EMNISTConfigError
from emnist_lit.export import export_bundle
from emnist_lit.images import list_images
from emnist_lit.line_files import line_photo_loader
from emnist_lit.line_module import LineRecognizer
from emnist_lit.prediction import LineWriter


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

    def read(
        self,
        model: LightningModule,
        datamodule: EMNISTDataModule,
        ckpt_path: str | None = None,
        photos_per_batch: int = 32,
    ) -> None:
        """Read photos of handwritten lines (a VIN, or any short string), a batch of photos at a time: a character
        model's checkpoint classifies the characters each photo is cut into, a line model's (`LineRecognizer`)
        reads each whole line; the `reading` writer decodes and prints `TEXT, PATH` per photo. Files come from
        `--data.predict_dir` and `--data.predict_files`, as for `predict`.

        Args:
            ckpt_path: the checkpoint to read with (its charset decides what can be read).
            photos_per_batch: photos read in one forward pass.
        """
        writer = next(c for c in self.callbacks if isinstance(c, LineWriter))
        paths = list_images(datamodule.hparams.predict_dir, datamodule.hparams.predict_files)
        workers, line_model = datamodule.hparams.predict_workers, isinstance(model, LineRecognizer)
        keep_crops = writer.character_reader is not None
        loader = line_photo_loader(paths, writer.expected_count, photos_per_batch, workers, line_model, keep_crops)
        self.predict(model, dataloaders=loader, ckpt_path=ckpt_path, return_predictions=False)

    def serve(
        self,
        model: LightningModule,
        datamodule: EMNISTDataModule,
        ckpt_path: str,
        host: str = "127.0.0.1",
        port: int = 7860,
        line_ckpt: str | None = None,
    ) -> None:
        """Serve the demo page (draw a character, or upload a photo of one or of a whole line) for a checkpoint at
        http://HOST:PORT/; lines are decoded with the `reading` options, as `read` does. Needs the `demo` extra.

        Args:
            ckpt_path: the character model to serve.
            host: the interface to listen on; the default keeps the page on this machine.
            port: the TCP port.
            line_ckpt: a line model (`line_reader`) that reads uploaded lines, with the character model's second
                opinion; without it, lines are cut into characters.
        """
        try:
            from emnist_lit.serve import serve
        except ImportError as err:
            raise EMNISTConfigError(f"serve needs the demo extra ({err}): pip install -e '.[demo]'") from err
        reading = next((c for c in self.callbacks if isinstance(c, LineWriter)), None)
        serve(ckpt_path, host, port, reading=reading, line_ckpt=line_ckpt)
