"""Per-step training time of a config through the real CLI: the time between the ends of consecutive training
batches (fetch, transfer, augmentation, forward, backward, optimizer, logging), the first `--skip` of every epoch
left out as warm-up. Extra arguments go to `fit`, e.g. `--trainer.max_epochs=1`.

    python scripts/step_time.py --config configs/smoke.yaml --data.root ../shared/data/emnist-sample
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import lightning as L
from lightning.pytorch.callbacks import Callback

from emnist_lit import quiet
from emnist_lit.cli import build_cli


class StepTimer(Callback):
    """Seconds between the ends of consecutive training batches of one epoch, after the first `skip`."""

    def __init__(self, skip: int) -> None:
        self.skip, self.seconds, self.last = skip, [], None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        now = time.perf_counter()
        if self.last is not None and args[-1] >= self.skip:  # args[-1] is batch_idx
            self.seconds.append(now - self.last)
        self.last = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip", type=int, default=5, help="warm-up steps left out at the start of every epoch")
    known, fit_args = parser.parse_known_args()
    timer = StepTimer(known.skip)
    quiet.silence_library_chatter()
    quiet_args = ["--test_after_fit=false", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    with tempfile.TemporaryDirectory() as scratch:  # checkpoints go here and are thrown away
        build_cli(
            ["fit", *fit_args, *quiet_args],
            trainer_defaults={"callbacks": [timer], "default_root_dir": scratch},
            save_config_callback=None,
        )
    ms = [s * 1000 for s in timer.seconds]
    print(
        f"{len(ms)} steps: median {statistics.median(ms):.1f} ms, mean {statistics.fmean(ms):.1f} ms, "
        f"min {min(ms):.1f} ms",
        file=sys.stdout,
        flush=True,
    )


if __name__ == "__main__":
    main()
