"""Reliability around checkpoints: read them as untrusted data, save one when a job is pre-empted, and export
deployment bundles (safetensors weights, a JSON description, TorchScript and ONNX graphs) that need no Lightning."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from safetensors.torch import load_file, save_file
from torch import nn

from emnist_lit.data import resolve_charset
from emnist_lit.module import EMNISTClassifier

BUNDLE_WEIGHTS = "model.safetensors"
BUNDLE_JSON = "model.json"
BUNDLE_TORCHSCRIPT = "model.pt"
BUNDLE_ONNX = "model.onnx"
CKPT_KEYWORDS = ("last", "best", "hpc")
"""`ckpt_path` values Lightning resolves itself rather than reading as a file name."""


class CheckpointError(ValueError):
    """A checkpoint or bundle is missing, truncated or not ours; the message names the file."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint with `weights_only=True` (no code from the file runs) and check it looks like
    one, so a wrong file fails here with its name rather than deep inside the Trainer."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path}: empty file")
    try:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # zip, pickle and weights_only errors all mean "not a checkpoint we can read"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path}: truncated or not a PyTorch checkpoint ({reason[:200]})") from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path}: not a Lightning checkpoint (a PyTorch file without 'state_dict')")
    return checkpoint


def check_ckpt_path(ckpt_path: str | None) -> dict[str, Any] | None:
    """Validate a `--ckpt_path` before anything reads it and return the checkpoint; Lightning's keywords pass."""
    if ckpt_path and ckpt_path not in CKPT_KEYWORDS:
        return load_checkpoint(ckpt_path)
    return None


def check_charset(ckpt_path: str, checkpoint: dict[str, Any], charset: str) -> None:
    """Evaluating a checkpoint on another charset would fail as a state_dict size mismatch; say what to pass."""
    classes = checkpoint.get("hyper_parameters", {}).get("classes")
    if isinstance(classes, str) and resolve_charset(charset) != classes:
        raise CheckpointError(
            f"checkpoint {ckpt_path}: trained on the {len(classes)} classes {classes!r}, but data.charset is "
            f"{charset!r}; pass --data.charset={classes} (or the config it was trained with)"
        )


class CheckpointOnSigterm(Callback):
    """Save `last.ckpt` when `fit` is stopped by SIGTERM (a scheduler pre-empting the job), so `--ckpt_path last`
    resumes from that very step. Lightning 2.6 turns SIGTERM into a `SIGTERMException` only after the current batch,
    so the saved state is consistent; Ctrl-C and crashes are not saved, since they can stop mid-update."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        checkpoint = trainer.checkpoint_callback
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        if checkpoint is None or getattr(checkpoint, "dirpath", None) is None:
            return  # stopped before ModelCheckpoint knew its folder: nothing trained yet
        path = os.path.join(checkpoint.dirpath, checkpoint.CHECKPOINT_NAME_LAST + checkpoint.FILE_EXTENSION)
        checkpoint.last_model_path = path
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            print(f"SIGTERM: checkpoint of step {trainer.global_step} saved to {path}", file=sys.stderr, flush=True)


def check_resume_folder(ckpt_path: str | None, checkpoint_dirpath: str | None, logger: Any) -> None:
    """`--ckpt_path last` searches this run's checkpoint folder; with an auto-versioned logger that folder is new for
    every run, so Lightning would find nothing and silently train from scratch. Refuse that up front."""
    if ckpt_path != "last" or checkpoint_dirpath:
        return
    init_args = getattr(logger, "init_args", None)
    if logger is True or (init_args is not None and "version" in init_args and init_args.get("version") is None):
        raise CheckpointError(
            "checkpoint last: the logger makes a new version folder for every run, so there is never a last "
            "checkpoint to resume; give both runs --trainer.logger.init_args.version=NAME (or --checkpoint.dirpath=DIR)"
        )


def write_atomically(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Let `write` fill a temporary file beside `path`, then rename it into place, so a crash never leaves a
    half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def describe(model: EMNISTClassifier) -> dict[str, Any]:
    """What a consumer of the bundle needs besides the weights: the characters, the input and the architecture."""
    hparams = {
        k: v
        for k, v in dict(model.hparams).items()
        if not k.startswith("_") and isinstance(v, str | int | float | bool | None)
    }
    return {
        "format": "emnist_lit bundle 1",
        "classes": model.classes,
        "input": {"shape": [None, 1, 28, 28], "range": [0.0, 1.0], "layout": "upright, light ink on dark"},
        "normalization": {"mean": model.input_mean.item(), "std": model.input_std.item()},
        "output": "logits",
        "hparams": hparams,
    }


def export_bundle(model: EMNISTClassifier, export_dir: str | Path, onnx: bool = True) -> list[Path]:
    """Write `model.safetensors`, TorchScript `model.pt`, `model.onnx` when the `onnx` extra is installed, and last
    `model.json` (which lists them) into `export_dir`, each atomically. Returns the files written."""
    out = Path(export_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    example = torch.rand(2, 1, 28, 28)
    written = []

    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_atomically(out / BUNDLE_WEIGHTS, lambda tmp: save_file(weights, str(tmp), metadata={"format": "pt"}))
    written.append(out / BUNDLE_WEIGHTS)

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, but still what most servers load
        traced = model.to_torchscript(method="trace", example_inputs=example)
    write_atomically(out / BUNDLE_TORCHSCRIPT, lambda tmp: traced.save(str(tmp)))
    written.append(out / BUNDLE_TORCHSCRIPT)

    if onnx:
        try:
            import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
        except ImportError:
            warnings.warn(
                "onnx/onnxscript not installed: skipping model.onnx (pip install 'emnist_lit[export]')", stacklevel=2
            )
        else:
            batch = torch.export.Dim("batch", min=1)
            with torch.no_grad():
                program = model.to_onnx(
                    None,
                    (example,),
                    dynamo=True,
                    input_names=["images"],
                    output_names=["logits"],
                    dynamic_shapes=({0: batch},),
                    external_data=False,
                    verbose=False,
                )
            write_atomically(out / BUNDLE_ONNX, lambda tmp: program.save(str(tmp), external_data=False))
            written.append(out / BUNDLE_ONNX)

    info = {**describe(model), "files": [path.name for path in written]}
    text = json.dumps(info, indent=2, ensure_ascii=False) + "\n"
    write_atomically(out / BUNDLE_JSON, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return [*written, out / BUNDLE_JSON]


def read_bundle(bundle_dir: str | Path) -> dict[str, Any]:
    """The bundle's `model.json`, checked enough to build the model from it."""
    path = Path(bundle_dir) / BUNDLE_JSON
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(info.get("classes"), str) or not isinstance(info.get("hparams"), dict):
            raise ValueError("no classes or hparams")
    except (OSError, ValueError, AttributeError) as err:
        raise CheckpointError(f"bundle {path}: not an emnist_lit model.json ({err})") from err
    return info


def load_bundle_weights(model: nn.Module, bundle_dir: str | Path) -> None:
    """Load the bundle's safetensors weights into a model built from its `model.json` (strictly: every key)."""
    path = Path(bundle_dir) / BUNDLE_WEIGHTS
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(f"bundle {path}: truncated or not a safetensors file ({err})") from err
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"bundle {path}: weights do not fit the model of {BUNDLE_JSON} ({first})") from err


def load_bundle(bundle_dir: str | Path) -> EMNISTClassifier:
    """An `EMNISTClassifier` from an exported bundle, ready for inference."""
    info = read_bundle(bundle_dir)
    model = EMNISTClassifier(**{**info["hparams"], "classes": info["classes"]})
    load_bundle_weights(model, bundle_dir)
    return model.eval()
