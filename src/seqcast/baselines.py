"""Naive forecasts that every model must beat, with the same fit/predict interface as Forecaster.

Each baseline predicts row t from real values before t only: the rows of X before it and, when X
starts after the training rows, the remembered training tail (as Forecaster does).
`predict_horizons(X, H)` gives each row's forecasts for H steps: the last value (persistence,
last-close) and the moving average stay flat, drift adds h times its slope, seasonal naive repeats
the season, and the linear AR feeds its own predictions back.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.linear_model import Ridge

from .data import resolve_column
from .errors import ConfigError, DataError
from .windows import context_windows, supervised_windows, tail_precedes


class _HistoryBaseline(BaseEstimator):
    """Shared plumbing: resolve the source column, remember the training tail, predict row by row."""

    def _source_column(self) -> str:
        return self.target

    def _history_rows(self) -> int:
        return 1

    def _check(self) -> None:
        """Validate parameters; subclasses with parameters override it."""

    def _fit_series(self, series: np.ndarray) -> None:
        """Learn from the training values of the source column; stateless baselines learn nothing."""

    def fit(self, X: pd.DataFrame, y=None):
        self._check()
        source = X.attrs.get("source", "<frame>")
        self.target_ = resolve_column(X, self.target, source=source)
        self.column_ = resolve_column(X, self._source_column(), source=source)
        column = X[self.column_]
        values = column.to_numpy(dtype=np.float64)
        if len(values) < self._history_rows():
            raise DataError(
                f"{source} has {len(values)} rows but {type(self).__name__} needs {self._history_rows()} "
                "rows of history: give more training rows"
            )
        self._fit_series(values)
        # The source column's last rows (a Series: a one-column frame cost a take of its own).
        self.tail_ = column.iloc[-self._history_rows() :].astype(np.float64)
        return self

    def _windows(self, X: pd.DataFrame):
        """The real values before each row of X (after the training tail) and those rows' positions."""
        source = X.attrs.get("source", "<frame>")
        column = resolve_column(X, self.column_, source=source)
        values = X[column].to_numpy(dtype=np.float64)
        # with_context's rows as arrays (its concat of two one-column frames took most of a
        # baseline's predict): the remembered tail first when X starts after it.
        if tail_precedes(self.tail_, X):
            values = np.concatenate([self.tail_.to_numpy(dtype=np.float64), values])
        return context_windows(values[:, None], self._history_rows(), len(X))

    def predict(self, X: pd.DataFrame) -> pd.Series:
        out = np.full(len(X), np.nan)
        windows, rows = self._windows(X)
        if len(windows):
            out[rows] = self._predict_windows(windows[:, :, 0])
        return pd.Series(out, index=X.index, name=self.target_)

    def _predict_windows(self, windows: np.ndarray) -> np.ndarray:
        """One prediction per row of `windows` (N, history): the real values before each predicted row."""
        raise NotImplementedError

    def predict_horizons(self, X: pd.DataFrame, horizon: int) -> pd.DataFrame:
        """Forecasts of the next `horizon` rows issued at each row of X, from the real values before it.

        Same layout as Forecaster.predict_horizons: row t, column "hk" predicts the row k-1 after t, so
        "h1" is :meth:`predict`.
        """
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ConfigError(f"horizon must be a whole number of at least 1, got {horizon!r}")
        out = np.full((len(X), int(horizon)), np.nan)
        windows, rows = self._windows(X)
        if len(windows):
            out[rows] = self._predict_steps(windows[:, :, 0], int(horizon))
        return pd.DataFrame(out, index=X.index, columns=[f"h{k}" for k in range(1, int(horizon) + 1)])

    def _predict_steps(self, windows: np.ndarray, horizon: int) -> np.ndarray:
        """(N, horizon) forecasts: predict one step, append it to the window as if observed, repeat."""
        windows = windows.copy()
        out = np.empty((len(windows), horizon))
        for step in range(horizon):
            out[:, step] = self._predict_windows(windows)
            windows = np.concatenate([windows[:, 1:], out[:, step : step + 1]], axis=1)
        return out


class LastValue(_HistoryBaseline):
    """Predict each row's `target` as the previous row's `column` (persistence when they are equal)."""

    def __init__(self, target: str = "Open", column: str | None = None):
        self.target = target
        self.column = column

    def _source_column(self) -> str:
        return self.column or self.target

    def _predict_windows(self, windows):
        return windows[:, -1]

    def _predict_steps(self, windows, horizon):
        return np.repeat(windows[:, -1:], horizon, axis=1)


class Drift(_HistoryBaseline):
    """Random walk with drift: the previous value plus the mean daily change of the training series."""

    def __init__(self, target: str = "Open"):
        self.target = target

    def _fit_series(self, series):
        if len(series) < 2:
            raise DataError("the drift baseline needs at least 2 training rows")
        self.drift_ = float((series[-1] - series[0]) / (len(series) - 1))

    def _predict_windows(self, windows):
        return windows[:, -1] + self.drift_

    def _predict_steps(self, windows, horizon):
        return windows[:, -1:] + self.drift_ * np.arange(1, horizon + 1)


class MovingAverage(_HistoryBaseline):
    """The mean of the previous `window` values."""

    def __init__(self, target: str = "Open", window: int = 5):
        self.target = target
        self.window = window

    def _check(self):
        if not isinstance(self.window, (int, np.integer)) or self.window < 1:
            raise ConfigError(f"moving-average window must be a whole number of at least 1, got {self.window!r}")

    def _history_rows(self):
        return int(self.window)

    def _predict_windows(self, windows):
        return windows.mean(axis=1)

    def _predict_steps(self, windows, horizon):
        # The usual flat moving-average forecast: feeding its own means back would smooth it further
        # with no new information.
        return np.repeat(windows.mean(axis=1, keepdims=True), horizon, axis=1)


class SeasonalNaive(_HistoryBaseline):
    """The value one season earlier: y[t - period] (e.g. 12 for monthly, 24 for hourly series)."""

    def __init__(self, target: str = "Open", period: int = 12):
        self.target = target
        self.period = period

    def _check(self):
        if not isinstance(self.period, (int, np.integer)) or self.period < 1:
            raise ConfigError(f"seasonal period must be a whole number of at least 1, got {self.period!r}")

    def _history_rows(self):
        return int(self.period)

    def _predict_windows(self, windows):
        return windows[:, 0]

    def _predict_steps(self, windows, horizon):
        # Step k repeats the value one (or more) seasons before it: y[t + k - 1 - period * ceil(k / period)].
        return windows[:, np.arange(horizon) % windows.shape[1]]


class LinearAR(_HistoryBaseline):
    """Linear autoregression on the previous `lookback` values (ridge regression, scikit-learn).

    The same window the recurrent model sees, fit by least squares with a small ridge penalty: the
    linear model any network on that window has to beat to justify itself.
    """

    def __init__(self, target: str = "Open", lookback: int = 60, alpha: float = 1.0):
        self.target = target
        self.lookback = lookback
        self.alpha = alpha

    def _check(self):
        if not isinstance(self.lookback, (int, np.integer)) or self.lookback < 1:
            raise ConfigError(f"linear-ar lookback must be a whole number of at least 1, got {self.lookback!r}")

    def _history_rows(self):
        return int(self.lookback)

    def _fit_series(self, series):
        X, y = supervised_windows(series[:, None], series, int(self.lookback))
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                self.model_ = Ridge(alpha=self.alpha).fit(X[:, :, 0], y[:, 0])
            fitted = np.isfinite(self.model_.coef_).all() and np.isfinite(self.model_.intercept_)
        except ValueError as exc:  # sklearn/scipy refuse the overflowed products ("infs or NaNs")
            if "inf" not in str(exc).lower():
                raise
            fitted = False
        if not fitted:
            raise DataError(
                f"the linear-ar({self.lookback}) baseline cannot be fitted: {self.target} reaches "
                f"{np.abs(series).max():.3g}, where its least squares overflow float64; rescale that column "
                "(divide it by a power of ten) and run again"
            )

    def _predict_windows(self, windows):
        return self.model_.predict(windows)


def persistence(target: str) -> LastValue:
    return LastValue(target=target)


def last_close(target: str) -> LastValue:
    return LastValue(target=target, column="Close")


# (shortest, longest) typical spacing of the dates in days -> the season in rows.
_SEASONS = (((1 / 24) * 0.9, (1 / 24) * 1.1, 24), (6.5, 7.5, 52), (27.5, 31.5, 12), (88.0, 93.0, 4))


def seasonal_period(index: pd.Index) -> int | None:
    """A natural season for non-daily series (24 hourly, 52 weekly, 12 monthly, 4 quarterly), else None.

    Judged from the median spacing of the dates rather than pd.infer_freq, which gives up on any gap.
    """
    if not isinstance(index, pd.DatetimeIndex) or len(index) < 3:
        return None
    spacing = float(index.to_series().diff().dt.total_seconds().median()) / 86_400
    for low, high, period in _SEASONS:
        if low <= spacing <= high:
            return period
    return None


def default_baselines(
    frame: pd.DataFrame, target: str, *, lookback: int = 60, period: int | None = None, ma_window: int = 5
) -> dict[str, BaseEstimator]:
    """Baselines that make sense for this frame.

    Always persistence, drift, a moving average and a linear AR on the model's lookback window (when
    the frame is long enough to fit it); last-close when the target is another price column and the
    frame has Close; seasonal naive when `period` is given or the dates are hourly, weekly, monthly or
    quarterly.
    """
    baselines: dict[str, BaseEstimator] = {"persistence": persistence(target)}
    columns = {c.lower() for c in frame.columns}
    if target.lower() != "close" and "close" in columns:
        baselines["last-close"] = last_close(target)
    baselines["drift"] = Drift(target=target)
    baselines[f"moving-average({ma_window})"] = MovingAverage(target=target, window=ma_window)
    period = period or seasonal_period(frame.index)
    if period and len(frame) > period:
        baselines[f"seasonal-naive({period})"] = SeasonalNaive(target=target, period=period)
    if len(frame) > lookback:
        baselines[f"linear-ar({lookback})"] = LinearAR(target=target, lookback=lookback)
    return baselines
