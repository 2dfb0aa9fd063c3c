"""Checkpoints read as untrusted data: no code from the file runs, and a wrong file fails with its name."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import torch
from lightning.pytorch import LightningModule

from emnist_lit.charsets import resolve_charset
from emnist_lit.errors import CheckpointError

ModelT = TypeVar("ModelT", bound=LightningModule)

CKPT_KEYWORDS = ("last", "best", "hpc")
"""`ckpt_path` values Lightning resolves itself rather than reading as a file name."""


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
        raise CheckpointError(f"checkpoint {path}: {_describe_load_failure(err)}") from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path}: not a Lightning checkpoint (a PyTorch file without 'state_dict')")
    return checkpoint


def load_model_of_kind(path: str | Path, expected: type[ModelT], wanted: str) -> tuple[ModelT, dict[str, Any]]:
    """The model of a checkpoint (read as data, on the CPU, in eval mode) and the checkpoint, refused by name when
    it holds another kind of model than `expected`; `wanted` says what the caller takes instead."""
    checkpoint = load_checkpoint(path)
    kind = checkpoint.get("hyper_parameters", {}).get("_class_path", "emnist_lit.module.EMNISTClassifier")
    if kind != f"{expected.__module__}.{expected.__qualname__}":
        raise CheckpointError(f"checkpoint {path}: holds a {kind.rsplit('.', 1)[-1]}, but {wanted}")
    return expected.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval(), checkpoint


def _describe_load_failure(err: Exception) -> str:
    """Say what is wrong in the project's terms. PyTorch's own text for a refused pickle advises loading with
    `weights_only=False`, i.e. running the file's code, which is exactly what must not happen to an untrusted file."""
    text = str(err)
    if "weights_only" in text or "Unsupported global" in text or "Unsupported operand" in text:
        return (
            "truncated or not a PyTorch checkpoint (it holds Python objects beyond tensors and plain values, "
            "which are refused because loading them would run code from the file)"
        )
    first = text.strip().splitlines()[0][:200] if text.strip() else type(err).__name__
    return f"truncated or not a PyTorch checkpoint ({first})"


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
