"""Honest evaluation: a model beside every baseline, on a held-out period or walk-forward folds.

The leaderboard ranks by RMSE and tests each forecast against the best baseline with the
Diebold–Mariano test, so "seqcast beats persistence by 0.3" comes with whether that could be luck.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.base import clone

from .artifacts import atomic_write_json, atomic_write_text
from .baselines import default_baselines
from .data import resolve_column
from .errors import ConfigError
from .metrics import diebold_mariano, evaluate, lag_diagnosis

MODEL = "seqcast"
ALPHA = 0.05
METRIC_COLUMNS = ["rmse", "mae", "mape", "smape", "mase", "r2", "direction", "lag"]


def _p_text(p: float) -> str:
    if not math.isfinite(p):
        return "p = n/a"
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.4f}" if p < 0.01 else f"p = {p:.2f}"


@dataclass
class Leaderboard:
    """One row per model: metrics, DM test against the best baseline, and a verdict."""

    table: pd.DataFrame  # index: model name; METRIC_COLUMNS + dm_stat, dm_p, dm_p_abs, verdict
    best_baseline: str
    comparisons: pd.DataFrame  # the model against every baseline: dm statistics and p-values, both losses
    lag_text: str  # lag diagnosis of the model's forecast

    def verdict(self) -> str:
        """One line: does seqcast beat the best baseline, and is the difference significant?"""
        best = self.best_baseline
        model_rmse, base_rmse = self.table.loc[MODEL, "rmse"], self.table.loc[best, "rmse"]
        p = float(self.table.loc[MODEL, "dm_p"])
        significant = math.isfinite(p) and p < ALPHA
        if model_rmse < base_rmse:
            how = "significantly better" if significant else "not significantly better"
            return f"seqcast is {how} than {best} ({_p_text(p)}): RMSE {model_rmse:.2f} vs {base_rmse:.2f}"
        ratio = model_rmse / base_rmse if base_rmse > 0 else float("inf")
        how = "significantly worse" if significant else "the difference is not significant"
        return (
            f"seqcast does NOT beat the naive {best} forecast: RMSE {model_rmse:.2f} vs {base_rmse:.2f} "
            f"({ratio:.1f}x worse; {how}, DM {_p_text(p)})"
        )

    def to_dict(self) -> dict:
        rows = self.table.reset_index().to_dict(orient="records")
        return {
            "best_baseline": self.best_baseline,
            "verdict": self.verdict(),
            "lag": self.lag_text,
            "alpha": ALPHA,
            "rows": [{k: _plain(v) for k, v in row.items()} for row in rows],
            "comparisons": [
                {k: _plain(v) for k, v in row.items()} for row in self.comparisons.reset_index().to_dict(orient="records")
            ],
        }


def _plain(value):
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def score(predictions: pd.DataFrame, *, train=None, previous=None, horizon: int = 1) -> Leaderboard:
    """Score every forecast column of `predictions` (columns: actual, seqcast, baselines...).

    `train` is the target's training series (for MASE), `previous` the real value before each row
    (for directional accuracy); rows are compared on the dates every forecast covers.
    """
    names = [c for c in predictions.columns if c not in ("actual", "fold")]
    if MODEL not in names or len(names) < 2:
        raise ValueError(f"predictions need an actual column, {MODEL!r} and at least one baseline: got {names}")
    actual = predictions["actual"]
    prev = None if previous is None else np.asarray(previous, dtype=np.float64)
    metrics = {name: evaluate(actual, predictions[name], train=train, previous=prev) for name in names}
    table = pd.DataFrame.from_dict(metrics, orient="index")[METRIC_COLUMNS]
    table.index.name = "model"
    baselines = table.drop(index=MODEL).sort_values("rmse")
    table = pd.concat([table.loc[[MODEL]], baselines])
    best = str(baselines["rmse"].idxmin())

    # DM needs the same dates for both forecasts: score on the rows where every forecast exists.
    common = predictions[["actual", *names]].dropna()
    dm = {
        name: {loss: diebold_mariano(common["actual"], common[name], common[best], horizon=horizon, loss=loss) for loss in ("squared", "absolute")}
        for name in names
    }
    table["dm_stat"] = [np.nan if n == best else dm[n]["squared"].statistic for n in table.index]
    table["dm_p"] = [np.nan if n == best else dm[n]["squared"].p_value for n in table.index]
    table["dm_p_abs"] = [np.nan if n == best else dm[n]["absolute"].p_value for n in table.index]
    table["verdict"] = [_row_verdict(n, best, dm[n]["squared"]) for n in table.index]

    comparisons = pd.DataFrame(
        [
            {
                "baseline": name,
                "dm_stat": (sq := diebold_mariano(common["actual"], common[MODEL], common[name], horizon=horizon)).statistic,
                "dm_p": sq.p_value,
                "dm_stat_abs": (ab := diebold_mariano(common["actual"], common[MODEL], common[name], horizon=horizon, loss="absolute")).statistic,
                "dm_p_abs": ab.p_value,
                "n": sq.n,
            }
            for name in names
            if name != MODEL
        ]
    ).set_index("baseline")
    lag_text = lag_diagnosis(actual, predictions[MODEL]).text
    return Leaderboard(table=table, best_baseline=best, comparisons=comparisons, lag_text=lag_text)


def _row_verdict(name: str, best: str, result) -> str:
    if name == best:
        return "best baseline"
    if not math.isfinite(result.p_value) or result.p_value >= ALPHA:
        return f"not significantly different from {best} ({_p_text(result.p_value)})"
    side = "better" if result.mean_loss_difference < 0 else "worse"
    return f"significantly {side} than {best} ({_p_text(result.p_value)})"


@dataclass
class Holdout:
    """Predictions of the model and each baseline on a test period, and their leaderboard."""

    target: str
    predictions: pd.DataFrame  # index: dates; columns: actual, seqcast, then one per baseline
    board: Leaderboard
    intervals: pd.DataFrame | None = None  # lower, upper, std of an ensemble's prediction, when it has them
    interval: dict | None = None  # their level, coverage and mean width (interval_scores)

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        table = self.board.table[METRIC_COLUMNS]
        return {name: {k: _plain(v) for k, v in row.items()} for name, row in table.iterrows()}

    def leaderboard(self) -> pd.DataFrame:
        """One row per model, the model first, then baselines by RMSE."""
        return self.board.table

    def best_baseline(self) -> str:
        return self.board.best_baseline

    def verdict(self) -> str:
        return self.board.verdict()


def _target_of(model, frame: pd.DataFrame) -> str:
    return resolve_column(frame, model.target, source=frame.attrs.get("source", "<frame>"))


def evaluate_holdout(model, train: pd.DataFrame, test: pd.DataFrame, *, baselines=None, fit: bool = True) -> Holdout:
    """Fit `model` (unless fit=False) and the baselines on `train`; predict every row of `test`.

    Each test row is predicted from the real values before it: the training tail, then earlier test rows.
    """
    if fit:
        model.fit(train)
    target = model.target_
    if baselines is None:
        baselines = default_baselines(train, target, lookback=getattr(model, "lookback", 60))
    columns = {"actual": test[target], MODEL: model.predict(test)}
    for name, baseline in baselines.items():
        columns[name] = clone(baseline).fit(train).predict(test)
    predictions = pd.DataFrame(columns, index=test.index)
    actual_history = pd.concat([train[target].iloc[-1:], test[target]])
    previous = actual_history.shift(1).iloc[1:] if test.index[0] > train.index[-1] else test[target].shift(1)
    board = score(predictions, train=train[target], previous=previous.to_numpy())
    intervals, interval = _intervals_of(model, test, test[target])
    return Holdout(target=target, predictions=predictions, board=board, intervals=intervals, interval=interval)


def _intervals_of(model, frame: pd.DataFrame, actual: pd.Series):
    """An ensemble's lower/upper/std on `frame` and their scores; (None, None) for a single model."""
    if not hasattr(model, "predict_interval"):
        return None, None
    bands = model.predict_interval(frame)[["lower", "upper", "std"]]
    return bands, interval_scores(actual, bands["lower"], bands["upper"], level=model.interval)


def plain_params(model) -> dict:
    """`model`'s parameters that JSON can hold: a nested estimator's show as its own (`forecaster__units`)."""
    if not hasattr(model, "get_params"):
        return {}
    return {k: v for k, v in model.get_params().items() if not hasattr(v, "get_params")}


def interval_scores(actual, lower, upper, *, level: float) -> dict:
    """Coverage (share of actual values inside [lower, upper]) and mean width, on rows with an interval."""
    actual, lower, upper = (np.asarray(v, dtype=np.float64) for v in (actual, lower, upper))
    rows = np.isfinite(actual) & np.isfinite(lower) & np.isfinite(upper)
    inside = (actual[rows] >= lower[rows]) & (actual[rows] <= upper[rows])
    return {
        "level": float(level),
        "coverage": float(inside.mean()) if rows.any() else None,
        "mean_width": float(np.mean(upper[rows] - lower[rows])) if rows.any() else None,
        "n": int(rows.sum()),
    }


@dataclass(frozen=True)
class Fold:
    """Row positions of one walk-forward fold: fit on frame[train], predict frame[test]."""

    number: int  # from 1
    train: slice
    test: slice


def plan_folds(
    index: pd.Index,
    *,
    folds: int | None = None,
    start=None,
    refit_every: int | None = None,
    window: str = "expanding",
    min_train: int = 2,
) -> list[Fold]:
    """Split the rows into contiguous test folds after an initial training period.

    With `start`, the test rows run from that date to the end, cut into `folds` near-equal folds or
    into folds of `refit_every` rows. Without it, `folds` (default 5) folds of `refit_every` rows
    each, or of n // (folds + 1) rows as scikit-learn's TimeSeriesSplit does, end at the last row.
    Hand-written because TimeSeriesSplit cannot start at a date or make folds of unequal size.
    An expanding window trains on every row before the fold; a sliding one on as many rows as the
    first fold had, ending just before the fold.
    """
    n = len(index)
    if window not in ("expanding", "sliding"):
        raise ConfigError(f"window must be 'expanding' or 'sliding', got {window!r}")
    for name, value in (("folds", folds), ("refit_every", refit_every)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
    if start is not None:
        if folds is not None and refit_every is not None:
            raise ConfigError("with a start date give --folds or --refit-every, not both: they both set the fold size")
        try:
            cut = pd.Timestamp(start)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"--start {start!r} is not a date: use YYYY-MM-DD") from exc
        first = int(index.searchsorted(cut))
        n_test = n - first
        if first == 0 or n_test == 0:
            raise ConfigError(
                f"--start {cut.date()} leaves {first} training and {n_test} test rows "
                f"({index[0].date()}..{index[-1].date()}): pick a date inside that range"
            )
        if refit_every is not None:
            sizes = [refit_every] * (n_test // refit_every) + ([n_test % refit_every] if n_test % refit_every else [])
        else:
            n_folds = folds or 1
            if n_folds > n_test:
                raise ConfigError(f"{n_folds} folds need at least {n_folds} test rows after {cut.date()}, found {n_test}")
            sizes = [len(part) for part in np.array_split(np.arange(n_test), n_folds)]
    else:
        n_folds = folds or 5
        size = refit_every or n // (n_folds + 1)
        if size < 1:
            raise ConfigError(f"{n} rows are too few for {n_folds} folds: lower --folds")
        first = n - n_folds * size
        sizes = [size] * n_folds
    if first < min_train:
        raise ConfigError(
            f"the first fold would train on {max(first, 0)} rows but the model needs at least {min_train}: "
            "use fewer or smaller folds (--folds, --refit-every), a later --start, or a shorter --lookback"
        )
    plan, begin = [], first
    for number, size in enumerate(sizes, start=1):
        train_begin = 0 if window == "expanding" else begin - first
        plan.append(Fold(number=number, train=slice(train_begin, begin), test=slice(begin, begin + size)))
        begin += size
    return plan


@dataclass
class Backtest:
    """Every fold's predictions, the leaderboard over all folds, and what each fold did."""

    target: str
    predictions: pd.DataFrame  # index: dates; columns: fold, actual, seqcast, baselines...
    board: Leaderboard
    folds: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    intervals: pd.DataFrame | None = None  # index: dates; lower, upper, std of an ensemble's predictions
    interval: dict | None = None  # their level, coverage and mean width over all folds

    def fold_table(self) -> pd.DataFrame:
        """RMSE of every model in every fold."""
        names = [c for c in self.predictions.columns if c not in ("fold", "actual")]
        rows = []
        for fold, part in self.predictions.groupby("fold"):
            errors = part[names].sub(part["actual"], axis=0)
            rows.append({"fold": int(fold), **{n: float(np.sqrt(np.nanmean(errors[n] ** 2))) for n in names}})
        return pd.DataFrame(rows).set_index("fold")

    def write(self, out_dir, *, info: dict | None = None) -> dict[str, Path]:
        """leaderboard.csv, leaderboard.json (leaderboard, verdict, folds, settings) and folds.csv."""
        out_dir = Path(out_dir)
        table = self.board.table
        doc = {
            "kind": "backtest",
            "target": self.target,
            "n_predictions": int(self.predictions[MODEL].notna().sum()),
            "period": f"{self.predictions.index[0].date()}..{self.predictions.index[-1].date()}",
            **self.board.to_dict(),
            **({"interval": self.interval} if self.interval else {}),
            "settings": self.settings,
            "folds": self.folds,
            **(info or {}),
        }
        paths = {}
        if self.intervals is not None:
            paths["intervals"] = atomic_write_text(
                out_dir / "intervals.csv", self.intervals.rename_axis("date").to_csv(float_format="%.6f", date_format="%Y-%m-%d")
            )
        return paths | {
            "leaderboard": atomic_write_text(out_dir / "leaderboard.csv", table.to_csv(float_format="%.6g")),
            "leaderboard_json": atomic_write_json(out_dir / "leaderboard.json", doc),
            "folds": atomic_write_text(out_dir / "folds.csv", self.fold_table().to_csv(float_format="%.6g")),
        }


class _FoldWriter:
    """Appends each fold's predictions to backtest.csv as it finishes (long format), atomically:
    rows go to a temporary file in the same folder, renamed into place once every fold is done."""

    header = ["fold", "date", "model", "actual", "predicted"]

    def __init__(self, out_dir: Path | None):
        self.path = None if out_dir is None else Path(out_dir) / "backtest.csv"
        self.parts: list[pd.DataFrame] = []
        self.tmp = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(prefix=".backtest.csv.", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "w") as fh:
                fh.write(",".join(self.header) + "\n")

    def add(self, fold: int, wide: pd.DataFrame) -> None:
        long = wide.drop(columns="actual").rename_axis("date").reset_index().melt(
            id_vars="date", var_name="model", value_name="predicted"
        )
        long = long.merge(wide["actual"].rename_axis("date").reset_index(), on="date")
        long.insert(0, "fold", fold)
        long = long[self.header]
        if self.tmp is None:
            self.parts.append(long)
        else:
            long.to_csv(self.tmp, mode="a", header=False, index=False, float_format="%.6f", date_format="%Y-%m-%d")

    def finish(self) -> pd.DataFrame:
        if self.tmp is None:
            long = pd.concat(self.parts, ignore_index=True)
        else:
            os.replace(self.tmp, self.path)
            long = read_backtest_csv(self.path)
        return long

    def abort(self) -> None:
        if self.tmp is not None:
            Path(self.tmp).unlink(missing_ok=True)


def read_backtest_csv(path) -> pd.DataFrame:
    return pd.read_csv(path, parse_dates=["date"])


def wide_predictions(long: pd.DataFrame) -> pd.DataFrame:
    """backtest.csv rows (fold, date, model, actual, predicted) as one row per date: fold, actual, models."""
    order = list(dict.fromkeys(long["model"]))
    wide = long.pivot(index="date", columns="model", values="predicted")[order]
    first = long.drop_duplicates("date").set_index("date")
    wide.insert(0, "actual", first["actual"])
    wide.insert(0, "fold", first["fold"].astype(int))
    wide.columns.name = None
    return wide


def walk_forward(
    forecaster,
    frame: pd.DataFrame,
    *,
    folds: int | None = None,
    start=None,
    refit_every: int | None = None,
    window: str = "expanding",
    horizon: int = 1,
    baselines: dict | None = None,
    period: int | None = None,
    out_dir=None,
    on_fold: Callable[[dict], None] | None = None,
) -> Backtest:
    """Walk-forward backtest: for each fold, fit a fresh clone of `forecaster` and of every baseline on
    the fold's past rows only (the Forecaster fits its own scaler on them), then predict the fold's rows
    one step ahead, each from the real values before it.

    With `out_dir`, each fold's predictions are appended to out_dir/backtest.csv as soon as it ends.
    `on_fold` receives a summary dict after each fold (for progress lines).
    """
    if horizon != 1:
        raise ConfigError(
            f"--horizon {horizon}: walk-forward backtests score one-step-ahead predictions only; use --horizon 1"
        )
    target = _target_of(forecaster, frame)
    lookback = int(getattr(forecaster, "lookback", 1))
    plan = plan_folds(
        frame.index, folds=folds, start=start, refit_every=refit_every, window=window, min_train=lookback + horizon
    )
    if baselines is None:
        baselines = default_baselines(frame.iloc[plan[0].train], target, lookback=lookback, period=period)
    writer = _FoldWriter(out_dir)
    summaries, bands = [], []
    try:
        for fold in plan:
            train, test = frame.iloc[fold.train], frame.iloc[fold.test]
            began = time.perf_counter()
            model = clone(forecaster).fit(train)
            columns = {"actual": test[target], MODEL: model.predict(test)}
            for name, baseline in baselines.items():
                columns[name] = clone(baseline).fit(train).predict(test)
            wide = pd.DataFrame(columns, index=test.index)
            writer.add(fold.number, wide)
            fold_bands, _ = _intervals_of(model, test, test[target])
            if fold_bands is not None:
                bands.append(fold_bands)
            history = getattr(model, "history_", None)
            errors = wide.drop(columns="actual").sub(wide["actual"], axis=0)
            summary = {
                "fold": fold.number,
                "of": len(plan),
                "train_start": train.index[0].date().isoformat(),
                "train_end": train.index[-1].date().isoformat(),
                "test_start": test.index[0].date().isoformat(),
                "test_end": test.index[-1].date().isoformat(),
                "n_train": len(train),
                "n_test": len(test),
                "seconds": round(time.perf_counter() - began, 3),
                "rmse": {name: _plain(float(np.sqrt(np.nanmean(errors[name] ** 2)))) for name in errors.columns},
                "loss": list(history.loss) if history is not None else [],
                "val_loss": list(history.val_loss) if history is not None else [],
            }
            summaries.append(summary)
            if on_fold is not None:
                on_fold(summary)
        long = writer.finish()
    except BaseException:
        writer.abort()
        raise
    predictions = wide_predictions(long)
    first_test = plan[0].test.start
    previous = frame[target].shift(1).reindex(predictions.index)
    board = score(
        predictions.drop(columns="fold"),
        train=frame[target].iloc[:first_test],
        previous=previous.to_numpy(),
        horizon=horizon,
    )
    settings = {
        "folds": len(plan),
        "start": frame.index[first_test].date().isoformat(),
        "refit_every": refit_every,
        "window": window,
        "horizon": horizon,
        "baselines": {name: type(b).__name__ for name, b in baselines.items()},
        "model": plain_params(forecaster),
    }
    intervals = pd.concat(bands) if bands else None
    interval = None
    if intervals is not None:
        actual = predictions["actual"].reindex(intervals.index)
        interval = interval_scores(actual, intervals["lower"], intervals["upper"], level=forecaster.interval)
    return Backtest(
        target=target, predictions=predictions, board=board, folds=summaries, settings=settings,
        intervals=intervals, interval=interval,
    )
