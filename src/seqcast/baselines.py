"""Naive forecasts that every model must beat, with the same fit/predict interface as Forecaster."""

from __future__ import annotations

import pandas as pd
from sklearn.base import BaseEstimator

from .data import resolve_column
from .windows import with_context


class LastValue(BaseEstimator):
    """Predict each row's `target` as the previous row's `column` (persistence when they are equal)."""

    def __init__(self, target: str = "Open", column: str | None = None):
        self.target = target
        self.column = column

    def fit(self, X: pd.DataFrame, y=None):
        source = X.attrs.get("source", "<frame>")
        self.column_ = resolve_column(X, self.column or self.target, source=source)
        self.tail_ = X[[self.column_]].iloc[-1:]
        return self

    def predict(self, X: pd.DataFrame) -> pd.Series:
        # A test file may lack the column (e.g. Close) that the training file had.
        column = resolve_column(X, self.column_, source=X.attrs.get("source", "<frame>"))
        combined, n_context = with_context(X[[column]].set_axis([self.column_], axis=1), self.tail_)
        shifted = combined[self.column_].shift(1).to_numpy()[n_context:]
        return pd.Series(shifted, index=X.index, name=self.target)


def persistence(target: str) -> LastValue:
    return LastValue(target=target)


def last_close(target: str) -> LastValue:
    return LastValue(target=target, column="Close")


def default_baselines(frame: pd.DataFrame, target: str) -> dict[str, BaseEstimator]:
    """Baselines that make sense for this frame: persistence always, last-close for other price targets."""
    baselines: dict[str, BaseEstimator] = {"persistence": persistence(target)}
    columns = {c.lower() for c in frame.columns}
    if target.lower() != "close" and "close" in columns:
        baselines["last-close"] = last_close(target)
    return baselines

