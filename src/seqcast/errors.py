"""One exception type per kind of failure the user can fix.

Messages name the file, row and column involved and say what to do; the CLI prints them as
``seqcast: error: …`` and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path


class SeqcastError(Exception):
    """Base class of every error seqcast raises on purpose."""


class DataError(SeqcastError, ValueError):
    """The input data cannot be used as it is (bad CSV, missing column, too few rows …)."""


class ConfigError(SeqcastError, ValueError):
    """A parameter or combination of parameters is invalid."""


class ArtifactError(SeqcastError):
    """A saved model or checkpoint folder is missing a file, corrupt, or tampered with."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``checkpoint`` names the folder that holds the last finished epoch."""

    def __init__(self, epoch: int, checkpoint: Path | None):
        super().__init__(epoch, checkpoint)
        self.epoch = epoch
        self.checkpoint = checkpoint
