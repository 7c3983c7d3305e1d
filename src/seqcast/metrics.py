"""Forecast accuracy metrics and the Diebold–Mariano test on aligned actual/predicted arrays.

Every point metric drops the pairs where either value is missing (NaN), so a model that cannot
predict the first rows of a period is scored on the rows it did predict.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import stats


def _overflow_quietly(metric):
    """A metric whose squares of absurd errors (1e200 and up) overflow to inf or nan without numpy
    printing a RuntimeWarning on the user's terminal: the inf or nan is the answer, and the
    leaderboard shows it."""

    @functools.wraps(metric)
    def wrapper(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore"):
            return metric(*args, **kwargs)

    return wrapper


def _pair(actual, predicted) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(actual, dtype=np.float64).reshape(-1)
    p = np.asarray(predicted, dtype=np.float64).reshape(-1)
    if a.shape != p.shape:
        raise ValueError(f"actual has {a.size} values but predicted has {p.size}")
    keep = np.isfinite(a) & np.isfinite(p)
    return a[keep], p[keep]


@_overflow_quietly
def rmse(actual, predicted) -> float:
    a, p = _pair(actual, predicted)
    return float(np.sqrt(np.mean((a - p) ** 2))) if a.size else float("nan")


@_overflow_quietly
def mae(actual, predicted) -> float:
    a, p = _pair(actual, predicted)
    return float(np.mean(np.abs(a - p))) if a.size else float("nan")


@_overflow_quietly
def mape(actual, predicted) -> float:
    """Mean absolute percentage error, in percent (rows whose actual value is 0 are skipped)."""
    a, p = _pair(actual, predicted)
    a, p = a[a != 0], p[a != 0]
    return float(100.0 * np.mean(np.abs((a - p) / a))) if a.size else float("nan")


@_overflow_quietly
def smape(actual, predicted) -> float:
    """Symmetric MAPE in percent, 0..200: mean of 2|a - p| / (|a| + |p|); pairs that are both 0 are skipped."""
    a, p = _pair(actual, predicted)
    denom = np.abs(a) + np.abs(p)
    a, p, denom = a[denom > 0], p[denom > 0], denom[denom > 0]
    return float(100.0 * np.mean(2.0 * np.abs(a - p) / denom)) if a.size else float("nan")


@_overflow_quietly
def mase(actual, predicted, train, *, period: int = 1) -> float:
    """Mean absolute scaled error: MAE divided by the in-sample MAE of the naive forecast on `train`.

    `period` > 1 scales by the seasonal naive forecast instead (Hyndman & Koehler, 2006). Below 1 the
    forecast beats what the naive forecast achieved on the training series.
    """
    history = np.asarray(train, dtype=np.float64).reshape(-1)
    history = history[np.isfinite(history)]
    if history.size <= period:
        return float("nan")
    scale = np.mean(np.abs(history[period:] - history[:-period]))
    if scale == 0:
        return float("nan")
    return mae(actual, predicted) / float(scale)


@_overflow_quietly
def r2(actual, predicted) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot (as sklearn.metrics.r2_score)."""
    a, p = _pair(actual, predicted)
    if a.size < 2:
        return float("nan")
    ss_tot = np.sum((a - a.mean()) ** 2)
    if ss_tot == 0:
        return float("nan")
    return float(1.0 - np.sum((a - p) ** 2) / ss_tot)


@_overflow_quietly
def directional_accuracy(actual, predicted, previous=None) -> float:
    """Percent of rows where the predicted change has the sign of the actual change.

    Both changes are measured from the previous actual value: `previous[i]` is the real value on the
    row before row i (by default actual[i-1], which leaves the first row unscored). A forecast of "no
    change" has sign 0 and so counts as right only where the actual value did not move either: a
    persistence forecast gets no credit for directions it never predicted.
    """
    a = np.asarray(actual, dtype=np.float64).reshape(-1)
    p = np.asarray(predicted, dtype=np.float64).reshape(-1)
    if previous is None:
        prev = np.r_[np.nan, a[:-1]]
    else:
        prev = np.asarray(previous, dtype=np.float64).reshape(-1)
    if not a.shape == p.shape == prev.shape:
        raise ValueError(f"actual, predicted and previous have {a.size}, {p.size} and {prev.size} values")
    keep = np.isfinite(a) & np.isfinite(p) & np.isfinite(prev)
    if not keep.any():
        return float("nan")
    right = np.sign(p[keep] - prev[keep]) == np.sign(a[keep] - prev[keep])
    return float(100.0 * np.mean(right))


@dataclass(frozen=True)
class LagDiagnosis:
    """The shift k at which the prediction best correlates with the actual series shifted by k rows."""

    lag: int
    correlations: tuple[float, ...]  # index k: correlation of predicted[t] with actual[t - k]

    @property
    def text(self) -> str:
        if self.lag < 1:
            return "prediction tracks the actual series without lag"
        unit = "day" if self.lag == 1 else "days"
        return f"prediction ≈ actual shifted by {self.lag} {unit}"


@_overflow_quietly
def lag_diagnosis(actual, predicted, max_lag: int = 5) -> LagDiagnosis:
    """Find k in 0..max_lag maximizing corr(predicted[t], actual[t-k]).

    A forecast that merely repeats yesterday's value correlates best at k = 1: the classic failure of
    LSTM price tutorials. Shifts that leave fewer than 3 overlapping pairs are not scored (NaN).
    """
    a = np.asarray(actual, dtype=np.float64).reshape(-1)
    p = np.asarray(predicted, dtype=np.float64).reshape(-1)
    correlations = []
    for k in range(max_lag + 1):
        x, y = p[k:], a[: max(a.size - k, 0)]  # a[:-k] would wrap round when k > a.size
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        if x.size < 3 or np.std(x) == 0 or np.std(y) == 0:
            correlations.append(float("nan"))
        else:
            correlations.append(float(np.corrcoef(x, y)[0, 1]))
    scores = np.asarray(correlations)
    lag = int(np.nanargmax(scores)) if np.isfinite(scores).any() else 0
    return LagDiagnosis(lag=lag, correlations=tuple(correlations))


@dataclass(frozen=True)
class DMResult:
    """Diebold–Mariano test of forecast 1 against forecast 2 (negative statistic: 1 has the smaller loss)."""

    statistic: float
    p_value: float  # two-sided
    mean_loss_difference: float  # mean of loss(e1) - loss(e2)
    n: int
    horizon: int
    loss: str


@_overflow_quietly
def diebold_mariano(actual, predicted_1, predicted_2, *, horizon: int = 1, loss: str = "squared") -> DMResult:
    """Diebold–Mariano test with the Harvey–Leybourne–Newbold (1997) small-sample correction.

    d_t = L(actual - p1) - L(actual - p2) with L squared or absolute error. The variance of the mean of
    d uses the autocovariances up to lag h-1, as h-step forecast errors are MA(h-1):
    V = (gamma_0 + 2 sum_{k=1}^{h-1} gamma_k) / T. DM = mean(d) / sqrt(V), multiplied by
    sqrt((T + 1 - 2h + h(h-1)/T) / T), and compared with Student's t with T-1 degrees of freedom.
    Written by hand because neither scipy nor statsmodels ships the test.
    """
    if loss not in ("squared", "absolute"):
        raise ValueError(f"loss must be 'squared' or 'absolute', got {loss!r}")
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1, got {horizon}")
    a = np.asarray(actual, dtype=np.float64).reshape(-1)
    p1 = np.asarray(predicted_1, dtype=np.float64).reshape(-1)
    p2 = np.asarray(predicted_2, dtype=np.float64).reshape(-1)
    if not a.shape == p1.shape == p2.shape:
        raise ValueError(f"actual, predicted_1 and predicted_2 have {a.size}, {p1.size} and {p2.size} values")
    keep = np.isfinite(a) & np.isfinite(p1) & np.isfinite(p2)
    e1, e2 = a[keep] - p1[keep], a[keep] - p2[keep]
    d = (e1**2 - e2**2) if loss == "squared" else (np.abs(e1) - np.abs(e2))
    n = d.size
    if n < 2:
        return DMResult(float("nan"), float("nan"), float(d.mean()) if n else float("nan"), n, horizon, loss)
    mean = float(d.mean())
    centred = d - mean
    gamma = [float(np.dot(centred[k:], centred[: n - k]) / n) for k in range(min(horizon, n))]
    variance = gamma[0] + 2.0 * sum(gamma[1:])
    if variance <= 0:
        # The truncated long-run variance can turn negative for h > 1; gamma_0 alone is then the
        # conservative, always-valid estimate.
        variance = gamma[0]
    if np.max(np.abs(centred)) <= 1e-12 * np.max(np.abs(d)) or variance <= 0:
        # Identical forecasts (or a constant loss difference): there is no variation to test against.
        if mean == 0:
            return DMResult(0.0, 1.0, 0.0, n, horizon, loss)
        return DMResult(float(np.sign(mean) * np.inf), 0.0, mean, n, horizon, loss)
    statistic = mean / np.sqrt(variance / n)
    statistic *= np.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
    p_value = float(2.0 * stats.t.sf(abs(statistic), df=n - 1))
    return DMResult(float(statistic), p_value, mean, n, horizon, loss)


METRICS = {"rmse": rmse, "mae": mae, "mape": mape, "smape": smape, "r2": r2}


@_overflow_quietly
def evaluate(actual, predicted, *, train=None, previous=None) -> dict[str, float]:
    """Every point metric of one forecast; `train` (the training target series) enables MASE and
    `previous` (the real value before each row) scores the first row's direction too."""
    scores = {name: fn(actual, predicted) for name, fn in METRICS.items()}
    scores["mase"] = mase(actual, predicted, train) if train is not None else float("nan")
    scores["direction"] = directional_accuracy(actual, predicted, previous)
    scores["lag"] = lag_diagnosis(actual, predicted).lag
    return scores
