"""Deployment bundles of a trained model (safetensors weights, a JSON description, TorchScript and ONNX graphs)
that need no Lightning to run, and loading them back."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from emnist_lit.atomic import write_atomically
from emnist_lit.errors import CheckpointError
from emnist_lit.module import EMNISTClassifier

BUNDLE_WEIGHTS = "model.safetensors"
BUNDLE_JSON = "model.json"
BUNDLE_TORCHSCRIPT = "model.pt"
BUNDLE_ONNX = "model.onnx"


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
        "temperature": model.temperature.item(),
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
    if "temperature" in model.state_dict():
        tensors.setdefault("temperature", torch.tensor(1.0))  # bundles exported before calibration: the plain softmax
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
