"""How torch's OpenMP threads wait, set before torch is imported (OpenMP reads it once, when it loads)."""

from __future__ import annotations

import os
from collections.abc import MutableMapping, Sequence

# Commands that run a forward pass over batches and sit idle between them: predict, read and the demo server.
INFERENCE_COMMANDS = frozenset({"predict", "read", "serve"})


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand in `python -m emnist_lit [options] COMMAND ...`: the first argument that is not an option."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def prefer_passive_wait(argv: Sequence[str], environ: MutableMapping[str, str] = os.environ) -> None:
    """For inference commands, let OpenMP threads sleep at a barrier instead of spinning: on a busy machine a
    spinning thread burns the core its partner was descheduled from. Batched predict on 2 cores with one taken by
    another process: 435 images/s spinning, 708 sleeping; quiet: 863 and 963. Training keeps OpenMP's default
    (sleeping cost its steps ~5% on a quiet machine). A policy the user set is kept."""
    if command_of(argv) in INFERENCE_COMMANDS:
        environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
