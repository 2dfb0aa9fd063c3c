"""Commands print only what the user needs: on good input `predict`, `test` and `export` write nothing to stderr
(no Lightning banners, tips or internal deprecation warnings), `--verbose` brings Lightning's lines back, and a bad
checkpoint is one line in the project's terms."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, smoke_args
from PIL import Image
from test_predict import scan
from test_robustness import Evil

from emnist_lit.checkpoints import _describe_load_failure, load_checkpoint
from emnist_lit.cli import build_cli
from emnist_lit.errors import CheckpointError


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m emnist_lit ARGS` as a user runs it, in `cwd`, so nothing pytest configures hides a warning."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYTHONWARNINGS", None)
    command = [sys.executable, "-m", "emnist_lit", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    for index in (3, 10, 20):
        Image.fromarray(scan(index)).save(folder / f"glyph{index}.png")
    return folder


def commands(name: str, checkpoint: Path, scans: Path, emnist_root: Path, tmp_path: Path) -> list[str]:
    if name == "predict":
        return ["predict", f"--ckpt_path={checkpoint}", f"--data.predict_dir={scans}"]
    if name == "test":
        return ["test", *smoke_args(emnist_root, tmp_path / "logs"), f"--ckpt_path={checkpoint}"]
    return ["export", f"--ckpt_path={checkpoint}", f"--export_dir={tmp_path / 'bundle'}"]


@pytest.mark.parametrize("name", ["predict", "test", "export"])
def test_commands_print_nothing_on_stderr_for_good_input(
    name: str, trained_checkpoint: Path, scans: Path, emnist_root: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    result = run_cli(commands(name, trained_checkpoint, scans, emnist_root, tmp_path), workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == "", "no banners, tips or library warnings"
    assert result.stdout.strip(), "the results themselves are on stdout"
    assert not list(workdir.iterdir()), "nothing written into the working folder (no ./checkpoints, no logs)"


def test_verbose_brings_lightnings_lines_back(trained_checkpoint: Path, scans: Path, tmp_path: Path) -> None:
    args = ["predict", f"--ckpt_path={trained_checkpoint}", f"--data.predict_dir={scans}", "--verbose"]
    verbose = run_cli(args, tmp_path)
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "Seed set to 42" in verbose.stderr and "GPU available" in verbose.stderr
    assert [line.split(", ")[1] for line in verbose.stdout.splitlines()] == [str(p) for p in sorted(scans.iterdir())]


@pytest.mark.parametrize(
    ("flags", "verbose"),
    [([], False), (["--verbose"], True), (["--verbose=true"], True), (["--verbose", "false"], False)],
)
def test_verbose_is_a_flag_or_takes_a_value(flags: list[str], verbose: bool, emnist_root: Path) -> None:
    cli = build_cli([*flags, f"--data.root={emnist_root}"], run=False)
    assert cli.config.verbose is verbose


def test_code_carrying_checkpoint_is_refused_in_the_projects_terms(tmp_path: Path) -> None:
    """PyTorch's own message for a refused pickle advises `weights_only=False`, i.e. running the file's code."""
    checkpoint = tmp_path / "evil.ckpt"
    checkpoint.write_bytes(pickle.dumps(Evil(tmp_path / "pwned"), protocol=2))
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(np.eye(40, dtype=np.uint8) * 255).save(scans / "x.png")
    result = run_cli(["predict", f"--ckpt_path={checkpoint}", f"--data.predict_dir={scans}"], tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1, "one line"
    assert result.stderr.startswith(f"error: checkpoint {checkpoint}: truncated or not a PyTorch checkpoint (")
    assert "would run code from the file" in result.stderr
    assert "weights_only" not in result.stderr and "can still be loaded" not in result.stderr
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "torch_message",
    [
        "Weights only load failed. This file can still be loaded, ...\n(1) Re-running `torch.load` with "
        "`weights_only` set to `False` will likely succeed",
        "Weights only load failed. Unsupported global: GLOBAL builtins.open",
        "Unsupported operand 149",
    ],
)
def test_refused_pickle_is_described_without_pytorchs_advice(torch_message: str) -> None:
    described = _describe_load_failure(RuntimeError(torch_message))
    assert "weights_only" not in described and "can still be loaded" not in described
    assert "would run code from the file" in described


def test_other_load_failures_keep_pytorchs_first_line(tmp_path: Path) -> None:
    path = tmp_path / "zip.ckpt"
    path.write_bytes(b"PK\x03\x04" + bytes(200))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"checkpoint {path}: truncated or not a PyTorch checkpoint (")
    assert "\n" not in message and len(message) < 400
