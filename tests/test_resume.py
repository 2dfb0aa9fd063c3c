"""A fit killed mid-epoch resumes with `--ckpt_path last` and ends where an uninterrupted fit ends: SIGTERM saves the
very step it stopped at (`CheckpointOnSigterm`), SIGKILL falls back to the last periodic checkpoint."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, smoke_args
from lightning.pytorch.callbacks import Callback

from emnist_lit.cli import main

TESTS = Path(__file__).resolve().parent


class PauseAtStep(Callback):
    """Runs inside the child: after optimizer step `step`, says so on stdout and waits for a signal, so the test's
    kill lands mid-epoch at a known step without racing the training loop."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            print(f"PAUSED at step {trainer.global_step}", flush=True)
            signal.pause()


class ReportEnd(Callback):
    """Runs inside the child: prints where the fit ended."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        print(f"END global_step={trainer.global_step} epoch={trainer.current_epoch}", flush=True)


class SigtermAtStep(Callback):
    """In-process stand-in for a scheduler's pre-emption: SIGTERM to ourselves after optimizer step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def fit_args(root: Path, logs: Path, *extra: str) -> list[str]:
    """Two epochs of 4 steps, a periodic checkpoint every 2 steps, and a fixed log version so that a resumed run
    writes (and `--ckpt_path last` looks) in the same checkpoint folder."""
    return [
        "fit",
        *smoke_args(root, logs, "--test_after_fit=false", "--checkpoint.every_n_train_steps=2"),
        "--trainer.logger.init_args.version=run",
        "--trainer.callbacks+=test_resume.ReportEnd",
        *extra,
    ]


def spawn(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}
    return subprocess.Popen(
        [sys.executable, "-m", "emnist_lit", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 120) -> str:
    """Read the child's output until a line starts with `prefix` (bounded by `timeout`), without sleeping."""
    deadline = time.monotonic() + timeout
    seen = []
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(prefix):
            return line.strip()
    proc.kill()
    raise AssertionError(f"no {prefix!r} line from the child; its output:\n{''.join(seen)[-3000:]}")


def run(args: list[str]) -> str:
    """Run a fit to the end; return its END line."""
    proc = spawn(args)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return next(line for line in out.splitlines() if line.startswith("END "))


def checkpoints(logs: Path) -> Path:
    return logs / "smoke" / "run" / "checkpoints"


@pytest.fixture(scope="module")
def uninterrupted(emnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return run(fit_args(emnist_root, tmp_path_factory.mktemp("uninterrupted")))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "pause_step", "saved_step"),
    # Lightning defers a ModelCheckpoint that monitors val/acc until val/acc exists: no periodic save in epoch 0
    [(signal.SIGTERM, 3, 3), (signal.SIGTERM, 6, 6), (signal.SIGKILL, 7, 6)],
)
def test_killed_fit_resumes_to_the_same_end(
    sig: signal.Signals, pause_step: int, saved_step: int, uninterrupted: str, emnist_root: Path, tmp_path: Path
) -> None:
    assert uninterrupted == "END global_step=8 epoch=2"
    pause = {"class_path": "test_resume.PauseAtStep", "init_args": {"step": pause_step}}
    proc = spawn(fit_args(emnist_root, tmp_path, f"--trainer.callbacks+={json.dumps(pause)}"))
    assert wait_for_line(proc, "PAUSED") == f"PAUSED at step {pause_step}"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == (128 + signal.SIGTERM if sig == signal.SIGTERM else -signal.SIGKILL), out[-3000:]
    assert "END " not in out
    last = checkpoints(tmp_path) / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == saved_step
    if sig == signal.SIGTERM:
        assert f"SIGTERM: checkpoint of step {pause_step} saved to {last}" in out
    assert not [p for p in checkpoints(tmp_path).iterdir() if p.suffix != ".ckpt"], "no partial files"

    assert run(fit_args(emnist_root, tmp_path, "--ckpt_path=last")) == uninterrupted


def test_sigterm_saves_the_step_it_stopped_at_and_exits_143(emnist_root: Path, tmp_path: Path) -> None:
    args = fit_args(emnist_root, tmp_path, "--trainer.max_epochs=1", "--data.batch_size=32")
    args.remove("--trainer.callbacks+=test_resume.ReportEnd")
    stop = '--trainer.callbacks+={"class_path": "test_resume.SigtermAtStep", "init_args": {"step": 1}}'
    with pytest.raises(SystemExit) as exit_info:
        main([*args, stop])
    assert exit_info.value.code == 128 + signal.SIGTERM
    checkpoint = torch.load(checkpoints(tmp_path) / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 1
    assert checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] == 1
    cli = main([*args, "--ckpt_path=last"])
    assert cli.trainer.global_step == 4


def test_resume_from_last_with_an_auto_versioned_logger_is_refused(emnist_root: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *smoke_args(emnist_root, tmp_path), "--ckpt_path=last"])
    assert str(exit_info.value.code).startswith("error: checkpoint last: the logger makes a new version folder")
    assert not tmp_path.joinpath("smoke").exists()
