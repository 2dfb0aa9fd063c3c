"""`export`: a bundle whose safetensors, TorchScript and ONNX copies compute what the checkpoint computes, and that
`predict --bundle` serves exactly like the checkpoint."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from emnist_lit.cli import main
from emnist_lit.export import export_bundle, load_bundle
from emnist_lit.module import EMNISTClassifier

HAS_ONNX = importlib.util.find_spec("onnxscript") is not None and importlib.util.find_spec("onnx") is not None


@pytest.fixture(scope="module")
def bundle(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bundle") / "lenet"
    main(["export", f"--ckpt_path={trained_checkpoint}", f"--export_dir={folder}"])
    return folder


def reference(checkpoint: Path, images: torch.Tensor) -> torch.Tensor:
    model = EMNISTClassifier.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    with torch.no_grad():
        return model(images)


def test_bundle_files_and_description(bundle: Path, trained_checkpoint: Path) -> None:
    graphs = ["model.pt", "model.onnx"] if HAS_ONNX else ["model.pt"]
    names = sorted(p.name for p in bundle.iterdir())
    assert names == sorted(["model.json", "model.safetensors", *graphs]), "no temporary files left"
    info = json.loads((bundle / "model.json").read_text())
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    assert info["classes"] == checkpoint["hyper_parameters"]["classes"]
    assert info["hparams"]["backbone"] == "lenet"
    assert info["normalization"]["mean"] == pytest.approx(checkpoint["state_dict"]["input_mean"].item())
    assert info["normalization"]["std"] == pytest.approx(checkpoint["state_dict"]["input_std"].item())
    assert info["files"] == ["model.safetensors", *graphs]


def test_safetensors_torchscript_and_onnx_match_pytorch(bundle: Path, trained_checkpoint: Path) -> None:
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    expected = reference(trained_checkpoint, images)
    with torch.no_grad():
        from_safetensors = load_bundle(bundle)(images)
        scripted = torch.jit.load(str(bundle / "model.pt"))(images)
    assert torch.equal(from_safetensors, expected)
    torch.testing.assert_close(scripted, expected, atol=1e-4, rtol=0)
    if not HAS_ONNX:
        pytest.skip("the export extra (onnx, onnxscript) is not installed")
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"images": images.numpy()})
    np.testing.assert_allclose(onnx_logits, expected.numpy(), atol=1e-4, rtol=0)


def test_predict_from_bundle_prints_the_same_lines_as_from_checkpoint(
    bundle: Path, trained_checkpoint: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # predict's logger and config.yaml land in the working folder
    scans = tmp_path / "scans"
    scans.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((30, 30)) > 0.7).astype(np.uint8) * 255).save(scans / f"scan{i}.png")
    outputs = []
    for source in (f"--ckpt_path={trained_checkpoint}", f"--bundle={bundle}"):
        main(["predict", source, f"--data.predict_dir={scans}", "--trainer.logger=false"])
        outputs.append(capsys.readouterr().out.strip().splitlines())
    assert len(outputs[0]) == 4 and outputs[0] == outputs[1]


def test_damaged_bundle_is_one_line_naming_the_file(bundle: Path, tmp_path: Path, capsys) -> None:
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "model.json").write_bytes((bundle / "model.json").read_bytes())
    (damaged / "model.safetensors").write_bytes((bundle / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", f"--bundle={damaged}", f"--data.predict_dir={tmp_path}"])
    message = str(exit_info.value.code)
    assert message.startswith(f"error: bundle {damaged / 'model.safetensors'}: truncated or not a safetensors file")
    assert "\n" not in message
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", f"--bundle={tmp_path / 'nowhere'}", f"--data.predict_dir={tmp_path}"])
    assert str(exit_info.value.code).startswith(f"error: bundle {tmp_path / 'nowhere' / 'model.json'}: not an emnist")


def test_without_onnx_installed_export_warns_and_writes_the_rest(
    trained_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` raise ImportError
    model = EMNISTClassifier.load_from_checkpoint(trained_checkpoint, map_location="cpu", weights_only=True)
    with pytest.warns(UserWarning, match="onnx/onnxscript not installed: skipping model.onnx"):
        written = export_bundle(model, tmp_path)
    assert [p.name for p in written] == ["model.safetensors", "model.pt", "model.json"]
    assert json.loads((tmp_path / "model.json").read_text())["files"] == ["model.safetensors", "model.pt"]
