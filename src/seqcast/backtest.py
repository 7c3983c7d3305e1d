"""Evaluation of a model beside the baselines on a held-out period."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
from sklearn.base import clone

from .baselines import default_baselines
from .metrics import evaluate

MODEL = "seqcast"


@dataclass
class Holdout:
    """Predictions of the model and each baseline on a test period, and their metrics."""

    target: str
    predictions: pd.DataFrame  # index: dates; columns: actual, seqcast, then one per baseline
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    def leaderboard(self) -> pd.DataFrame:
        """One row per model, the model first, then baselines by RMSE."""
        table = pd.DataFrame.from_dict(self.metrics, orient="index")
        table.index.name = "model"
        baselines = table.drop(index=MODEL).sort_values("rmse")
        return pd.concat([table.loc[[MODEL]], baselines])

    def best_baseline(self) -> str:
        return self.leaderboard().drop(index=MODEL)["rmse"].idxmin()

    def verdict(self) -> str:
        board = self.leaderboard()
        best = self.best_baseline()
        model_rmse, base_rmse = board.loc[MODEL, "rmse"], board.loc[best, "rmse"]
        if model_rmse < base_rmse:
            return f"seqcast beats {best} on RMSE ({model_rmse:.2f} vs {base_rmse:.2f})"
        return (
            f"seqcast does NOT beat the naive {best} forecast: RMSE {model_rmse:.2f} vs {base_rmse:.2f} "
            f"({model_rmse / base_rmse:.1f}x worse)"
        )


def evaluate_holdout(model, train: pd.DataFrame, test: pd.DataFrame, *, baselines=None, fit: bool = True) -> Holdout:
    """Fit `model` (unless fit=False) and the baselines on `train`; predict every row of `test`.

    Each test row is predicted from the real values before it: the training tail, then earlier test rows.
    """
    if fit:
        model.fit(train)
    target = model.target_
    baselines = default_baselines(train, target) if baselines is None else baselines
    columns = {"actual": test[target], MODEL: model.predict(test)}
    for name, baseline in baselines.items():
        columns[name] = clone(baseline).fit(train).predict(test)
    predictions = pd.DataFrame(columns, index=test.index)
    metrics = {
        name: evaluate(predictions["actual"], predictions[name]) for name in predictions.columns if name != "actual"
    }
    return Holdout(target=target, predictions=predictions, metrics=metrics)
