"""A fit killed mid-epoch resumes with `--ckpt_path last` at the step it saved, with its optimizer and LR schedule, and
ends where an uninterrupted fit ends: SIGTERM saves the very step it stopped at (`SigtermCheckpoint`), SIGKILL falls
back to the last periodic checkpoint. A fit without `--ckpt_path` never resumes anything."""

from __future__ import annotations

import copy
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
            # wait for the test to close our stdin, which it does after signalling: unlike signal.pause(), this
            # cannot miss a signal that lands before it starts waiting, or on another of the process's threads
            sys.stdin.read()


class ReportEnd(Callback):
    """Runs inside the child: prints the step the fit starts training at, and where it ended."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        print(f"START global_step={trainer.global_step}", flush=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        print(f"END global_step={trainer.global_step} epoch={trainer.current_epoch}", flush=True)


class SigtermAtStep(Callback):
    """In-process stand-in for a scheduler's pre-emption: SIGTERM to ourselves after optimizer step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class RecordSteps(Callback):
    """In-process: before every optimizer step, the step number, the learning rate, the weights and the optimizer's
    state (SGD's momentum buffers), to compare a resumed run with an uninterrupted one step by step."""

    def __init__(self) -> None:
        self.seen: dict[int, dict] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        optimizer = trainer.optimizers[0]
        self.seen[trainer.global_step] = {
            "lr": optimizer.param_groups[0]["lr"],
            "weights": copy.deepcopy(pl_module.state_dict()),
            "optimizer": copy.deepcopy(optimizer.state_dict()["state"]),
        }


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
        stdin=subprocess.PIPE,
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


def run(args: list[str]) -> list[str]:
    """Run a fit to the end; return its START and END lines."""
    proc = spawn(args)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return [line for line in out.splitlines() if line.startswith(("START ", "END "))]


def checkpoints(logs: Path) -> Path:
    return logs / "smoke" / "run" / "checkpoints"


@pytest.fixture(scope="module")
def uninterrupted(emnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return run(fit_args(emnist_root, tmp_path_factory.mktemp("uninterrupted")))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "pause_step", "saved_step"),
    # Lightning defers a ModelCheckpoint that monitors val/acc until val/acc exists: no periodic save in epoch 0
    [(signal.SIGTERM, 3, 3), (signal.SIGTERM, 6, 6), (signal.SIGKILL, 7, 6)],
)
def test_killed_fit_resumes_to_the_same_end(
    sig: signal.Signals, pause_step: int, saved_step: int, uninterrupted: list[str], emnist_root: Path, tmp_path: Path
) -> None:
    assert uninterrupted == ["START global_step=0", "END global_step=8 epoch=2"]
    pause = {"class_path": "test_resume.PauseAtStep", "init_args": {"step": pause_step}}
    proc = spawn(fit_args(emnist_root, tmp_path, f"--trainer.callbacks+={json.dumps(pause)}"))
    assert wait_for_line(proc, "PAUSED") == f"PAUSED at step {pause_step}"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)  # closes the child's stdin: PauseAtStep stops waiting
    assert proc.returncode == (128 + signal.SIGTERM if sig == signal.SIGTERM else -signal.SIGKILL), out[-3000:]
    assert "END " not in out
    last = checkpoints(tmp_path) / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == saved_step
    if sig == signal.SIGTERM:
        assert f"SIGTERM: checkpoint of step {pause_step} saved to {last}" in out
    assert not [p for p in checkpoints(tmp_path).iterdir() if p.suffix != ".ckpt"], "no partial files"

    resumed = run(fit_args(emnist_root, tmp_path, "--ckpt_path=last"))
    assert resumed == [f"START global_step={saved_step}", uninterrupted[1]]


ONE_CYCLE = '{"class_path": "torch.optim.lr_scheduler.OneCycleLR", "init_args": {"max_lr": 0.1}}'


def one_cycle_args(root: Path, logs: Path, *extra: str) -> list[str]:
    """One epoch of 4 steps, SGD with momentum (smoke.yaml) and a one-cycle LR stepped every step: the LR differs at
    every step and the optimizer has state, so a resume that restores either one wrongly shows."""
    return [
        "fit",
        *smoke_args(root, logs, "--test_after_fit=false", "--trainer.max_epochs=1", "--data.batch_size=32"),
        "--trainer.logger.init_args.version=run",
        f"--model.scheduler={ONE_CYCLE}",
        "--model.scheduler_interval=step",
        "--trainer.callbacks+=test_resume.RecordSteps",
        *extra,
    ]


def recorded(cli: object) -> dict[int, dict]:
    return next(c for c in cli.trainer.callbacks if isinstance(c, RecordSteps)).seen


def assert_same_state(resumed: dict, expected: dict) -> None:
    assert resumed["lr"] == expected["lr"], "the LR schedule continues where it stopped"
    assert resumed["weights"].keys() == expected["weights"].keys()
    assert all(torch.equal(resumed["weights"][k], v) for k, v in expected["weights"].items())
    assert resumed["optimizer"].keys() == expected["optimizer"].keys() != set(), "momentum buffers come back"
    for index, state in expected["optimizer"].items():
        assert torch.equal(resumed["optimizer"][index]["momentum_buffer"], state["momentum_buffer"])


def test_sigterm_then_resume_continues_at_the_saved_step_with_optimizer_and_lr_schedule(
    emnist_root: Path, tmp_path: Path
) -> None:
    uninterrupted = recorded(main(one_cycle_args(emnist_root, tmp_path / "uninterrupted")))
    assert sorted(uninterrupted) == [0, 1, 2, 3]
    assert len({step["lr"] for step in uninterrupted.values()}) == 4, "one-cycle: a different LR at every step"

    args = one_cycle_args(emnist_root, tmp_path / "stopped")
    stop = '--trainer.callbacks+={"class_path": "test_resume.SigtermAtStep", "init_args": {"step": 2}}'
    with pytest.raises(SystemExit) as exit_info:
        main([*args, stop])
    assert exit_info.value.code == 128 + signal.SIGTERM
    checkpoint = torch.load(checkpoints(tmp_path / "stopped") / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
    assert checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] == 2

    resumed = recorded(main([*args, "--ckpt_path=last"]))
    assert sorted(resumed) == [2, 3], "the resumed run trains from the saved step on, not from step 0"
    assert_same_state(resumed[2], uninterrupted[2])
    # the restored optimizer carries step 2's LR even under a fresh scheduler; the scheduler's own state shows next
    assert resumed[3]["lr"] == uninterrupted[3]["lr"], "the scheduler continues from step 2, not from step 0"


def test_a_new_fit_into_a_used_checkpoint_folder_starts_from_scratch(emnist_root: Path, tmp_path: Path) -> None:
    first = recorded(main(one_cycle_args(emnist_root, tmp_path)))
    assert (checkpoints(tmp_path) / "last.ckpt").is_file()
    again = recorded(main(one_cycle_args(emnist_root, tmp_path)))
    assert sorted(again) == [0, 1, 2, 3], "without --ckpt_path, fit must not resume the folder's last.ckpt"
    assert_same_state(again[3], first[3])


def test_resume_from_last_with_an_auto_versioned_logger_is_refused(emnist_root: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *smoke_args(emnist_root, tmp_path), "--ckpt_path=last"])
    assert str(exit_info.value.code).startswith("error: checkpoint last: the logger makes a new version folder")
    assert not tmp_path.joinpath("smoke").exists()
