"""Model inputs built from a validated frame.

The seed uses the target column alone; any other numeric columns of the file may be added as inputs.
Every input is taken from the rows *before* the predicted row (the window ends the day before), so
same-day values of other columns never leak into a prediction.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from .data import resolve_column
from .errors import ConfigError


def parse_feature_list(features) -> list[str] | None:
    """Accept None, a comma-separated string or a sequence of names."""
    if features is None:
        return None
    if isinstance(features, str):
        names = [part.strip() for part in features.split(",")]
    else:
        names = [str(part).strip() for part in features]
    names = [n for n in names if n]
    if not names:
        raise ConfigError("features is empty: give column names such as 'Open,Close' or leave it unset")
    return names


def input_columns(frame: pd.DataFrame, target: str, features: Sequence[str] | str | None) -> list[str]:
    """The frame's column names used as inputs: the target alone by default."""
    source = frame.attrs.get("source", "<frame>")
    names = parse_feature_list(features) or [target]
    columns = [resolve_column(frame, name, source=source) for name in names]
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise ConfigError(f"features name {', '.join(duplicated)} more than once")
    return columns
