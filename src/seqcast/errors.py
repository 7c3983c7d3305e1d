"""One exception type per kind of failure the user can fix.

Messages name the file, row and column involved and say what to do; the CLI prints them as
``seqcast: error: …`` and exits with status 2.
"""


class SeqcastError(Exception):
    """Base class of every error seqcast raises on purpose."""


class DataError(SeqcastError, ValueError):
    """The input data cannot be used as it is (bad CSV, missing column, too few rows …)."""


class ConfigError(SeqcastError, ValueError):
    """A parameter or combination of parameters is invalid."""


class ArtifactError(SeqcastError):
    """A saved model or checkpoint folder is missing a file, corrupt, or tampered with."""
