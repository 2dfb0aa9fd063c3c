"""The project's error types: each names the file or option at fault, and the CLI prints it as one `error:` line."""

from __future__ import annotations


class EMNISTDataError(RuntimeError):
    """EMNIST files are missing, corrupt or inconsistent; the message names the file and the fix."""


class EMNISTConfigError(ValueError):
    """An option has a value that cannot work; the message names the option and the value."""


class CheckpointError(ValueError):
    """A checkpoint or bundle is missing, truncated or not ours; the message names the file."""


class ImageInputError(FileNotFoundError):
    """The images to predict on cannot be found; the message names the folder or files."""


USER_ERRORS = (EMNISTDataError, EMNISTConfigError, CheckpointError, ImageInputError)
"""What a user can fix by changing a file or an option, as opposed to a bug."""
