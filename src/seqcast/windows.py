"""Date splits, scaling fit on training rows only, and sliding windows as views."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.preprocessing import MinMaxScaler

from .errors import ConfigError, DataError


def sliding_windows(values: np.ndarray, lookback: int) -> np.ndarray:
    """All windows of `lookback` consecutive rows of a (T, F) array, as a read-only view.

    Returns shape (T - lookback + 1, lookback, F); window i is ``values[i:i + lookback]``.
    """
    values = np.asarray(values)
    if values.ndim == 1:
        values = values[:, None]
    if lookback < 1:
        raise ConfigError(f"lookback must be at least 1, got {lookback}")
    if len(values) < lookback:
        return np.empty((0, lookback, values.shape[1]), dtype=values.dtype)
    # sliding_window_view puts the window axis last: (N, F, lookback) -> (N, lookback, F), still a view.
    return sliding_window_view(values, lookback, axis=0).transpose(0, 2, 1)


def supervised_windows(
    inputs: np.ndarray, target: np.ndarray, lookback: int, horizon: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (X, y) for training: X[i] = inputs[i:i+lookback], y[i] = target[i+lookback:i+lookback+horizon].

    X has shape (N, lookback, F) and y (N, horizon) with N = T - lookback - horizon + 1; X is a view.
    """
    target = np.asarray(target).reshape(-1)
    n = len(target) - lookback - horizon + 1
    if n < 1:
        raise DataError(
            f"{len(target)} rows cannot make a single window of lookback {lookback} and horizon "
            f"{horizon}: give at least {lookback + horizon} rows or lower --lookback"
        )
    X = sliding_windows(inputs, lookback)[:n]
    y = sliding_window_view(target[lookback:], horizon)[:n]
    return X, y


def fit_scaler(train_values: np.ndarray) -> MinMaxScaler:
    """MinMax(0, 1) per column, fit on the rows given (the training rows and nothing later)."""
    values = np.asarray(train_values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    return MinMaxScaler(feature_range=(0, 1)).fit(values)


def scaler_to_dict(scaler: MinMaxScaler, columns: list[str]) -> dict:
    return {
        "kind": "minmax",
        "columns": list(columns),
        "feature_range": list(scaler.feature_range),
        "data_min": scaler.data_min_.tolist(),
        "data_max": scaler.data_max_.tolist(),
    }


def scaler_from_dict(state: dict) -> MinMaxScaler:
    """Rebuild a fitted MinMaxScaler from its saved extrema (no pickle involved)."""
    data_min = np.asarray(state["data_min"], dtype=np.float64)
    data_max = np.asarray(state["data_max"], dtype=np.float64)
    # Refitting on the two extreme rows reproduces every fitted attribute exactly.
    return MinMaxScaler(feature_range=tuple(state["feature_range"])).fit(np.vstack([data_min, data_max]))


def cut_date(value, option: str) -> pd.Timestamp:
    """The date an option such as ``--test-from`` or ``--start`` gives, as a naive timestamp: the
    frame's dates are local wall-clock dates (the loader drops UTC offsets), so is the cut."""
    try:
        cut = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ConfigError(f"{option} {value!r} is not a date: use YYYY-MM-DD") from exc
    if cut is pd.NaT:
        raise ConfigError(f"{option} {value!r} is not a date: use YYYY-MM-DD")
    return cut.tz_localize(None) if cut.tz is not None else cut


def show_date(stamp: pd.Timestamp) -> str:
    """YYYY-MM-DD of any timestamp pandas holds, year 0 included (``Timestamp.date()`` refuses those)."""
    return stamp.isoformat()[:10]


def split_by_date(frame: pd.DataFrame, test_from) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows before `test_from` train, rows on or after it test."""
    cut = cut_date(test_from, "--test-from")
    train, test = frame[frame.index < cut], frame[frame.index >= cut]
    source = frame.attrs.get("source", "the data")
    if train.empty or test.empty:
        raise ConfigError(
            f"--test-from {show_date(cut)} leaves {len(train)} training and {len(test)} test rows in {source} "
            f"({frame.index[0].date()}..{frame.index[-1].date()}): pick a date inside that range"
        )
    return train, test


def tail_precedes(tail: pd.DataFrame | None, frame: pd.DataFrame) -> bool:
    """Whether :func:`with_context` puts the remembered training ``tail`` before ``frame``: both have
    rows and ``frame`` starts after the tail ends. A tail without dates (a model fitted on a plain
    array) cannot be placed before dated rows, or the other way round: such a frame starts on its
    own, as an array's always does."""
    if tail is None or tail.empty or frame.empty:
        return False
    if isinstance(frame.index, pd.DatetimeIndex) != isinstance(tail.index, pd.DatetimeIndex):
        return False
    return bool(frame.index[0] > tail.index[-1])


def with_context(frame: pd.DataFrame, tail: pd.DataFrame | None) -> tuple[pd.DataFrame, int]:
    """Prepend the remembered training tail when `frame` starts after it, as the seed concatenates
    train and test; returns the combined rows and how many of them came from the tail."""
    if not tail_precedes(tail, frame):
        return frame, 0
    return pd.concat([tail, frame[tail.columns]]), len(tail)


def context_windows(values: np.ndarray, lookback: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Input windows for the last `n_rows` rows of `values`, each made of the `lookback` rows before it.

    Returns (windows, row_index): only rows with a full history get a window; row_index gives their
    positions among the last `n_rows` rows.
    """
    first = len(values) - n_rows
    rows = np.arange(max(first, lookback), len(values))
    windows = sliding_windows(values[:-1], lookback)[rows - lookback] if rows.size else sliding_windows(values[:0], lookback)
    return windows, rows - first
