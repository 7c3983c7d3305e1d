"""seqcast: recurrent sequence models for price and other time series, evaluated honestly."""

__version__ = "0.1.0"

from . import datasets  # noqa: E402
from .data import load_csv  # noqa: E402
from .errors import ArtifactError, ConfigError, DataError, SeqcastError  # noqa: E402
from .forecaster import Forecaster  # noqa: E402

__all__ = ["Forecaster", "load_csv", "datasets", "DataError", "ConfigError", "ArtifactError", "SeqcastError"]
