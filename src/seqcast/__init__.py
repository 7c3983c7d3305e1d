"""seqcast: recurrent sequence models for price and other time series, evaluated honestly."""

__version__ = "0.1.0"

from importlib import import_module  # noqa: E402

from .errors import ArtifactError, ConfigError, DataError, SeqcastError  # noqa: E402

__all__ = ["Forecaster", "load_csv", "datasets", "DataError", "ConfigError", "ArtifactError", "SeqcastError"]

# The rest of the public names are imported on first use (PEP 562): `import seqcast` and the
# command line's parser then need neither torch nor pandas (~4 s of imports on the 2-core host).
_LAZY = {"Forecaster": ".forecaster", "load_csv": ".data", "datasets": ".datasets"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = import_module(_LAZY[name], __name__)
    value = module if name == "datasets" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
