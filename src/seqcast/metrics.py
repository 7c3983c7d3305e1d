"""Forecast accuracy metrics on aligned actual/predicted arrays (NaN pairs are dropped)."""

from __future__ import annotations

import numpy as np


def _pair(actual, predicted) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(actual, dtype=np.float64).reshape(-1)
    p = np.asarray(predicted, dtype=np.float64).reshape(-1)
    if a.shape != p.shape:
        raise ValueError(f"actual has {a.size} values but predicted has {p.size}")
    keep = np.isfinite(a) & np.isfinite(p)
    return a[keep], p[keep]


def rmse(actual, predicted) -> float:
    a, p = _pair(actual, predicted)
    return float(np.sqrt(np.mean((a - p) ** 2))) if a.size else float("nan")


def mae(actual, predicted) -> float:
    a, p = _pair(actual, predicted)
    return float(np.mean(np.abs(a - p))) if a.size else float("nan")


def mape(actual, predicted) -> float:
    """Mean absolute percentage error, in percent."""
    a, p = _pair(actual, predicted)
    a, p = a[a != 0], p[a != 0]
    return float(100.0 * np.mean(np.abs((a - p) / a))) if a.size else float("nan")


METRICS = {"rmse": rmse, "mae": mae, "mape": mape}


def evaluate(actual, predicted) -> dict[str, float]:
    return {name: fn(actual, predicted) for name, fn in METRICS.items()}
