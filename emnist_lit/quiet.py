"""Commands print what the user needs: Lightning's banners, tips and internal warnings stay behind `--verbose`."""

from __future__ import annotations

import logging
import warnings

CHATTY_LOGGERS = ("lightning.pytorch", "lightning.fabric")
"""Loggers whose INFO lines are banners ('Seed set to', 'GPU available', tips) rather than results."""

NOISY_WARNINGS = (
    r".*does not have many workers.*",
    r".*GPU available but not used.*",
    r".*LightningCLI's args parameter.*",
    r".*smaller than the logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",
)
"""Warnings about Lightning's own defaults that this project has already considered."""

LIBRARY_MODULES = r"(lightning|lightning_fabric|pytorch_lightning|torchmetrics)(\..*)?$"
"""Deprecation warnings raised inside these libraries are about their own code, which no user can change."""

TRAINING_STATE_WARNINGS = (
    r"The dirpath has changed from .*",
    r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided.*",
)
"""Warnings about restoring a checkpoint's training bookkeeping (ModelCheckpoint's folder and scores), which only
`fit` uses: validate, test and predict read the weights alone."""


def _library_chatter(level: int, action: str) -> None:
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for message in NOISY_WARNINGS:
        warnings.filterwarnings(action, message=message)
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings(action, category=category, module=LIBRARY_MODULES)


def silence_library_chatter() -> None:
    """Raise Lightning's loggers to WARNING and drop the warnings above; nothing of the project's own is hidden."""
    _library_chatter(logging.WARNING, "ignore")


def silence_training_state_warnings() -> None:
    """For the commands other than `fit`."""
    for message in TRAINING_STATE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def restore_library_chatter() -> None:
    """`--verbose`: let Lightning say everything it says by default."""
    _library_chatter(logging.INFO, "default")
