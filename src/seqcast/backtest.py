"""Honest evaluation: a model beside every baseline, on a held-out period or walk-forward folds.

The leaderboard ranks by RMSE and tests each forecast against the best baseline with the
Diebold–Mariano test, so "seqcast beats persistence by 0.3" comes with whether that could be luck.
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from sklearn.base import clone

from .artifacts import atomic_write_json, atomic_write_text, open_temp_sibling
from .baselines import default_baselines
from .data import resolve_column
from .errors import ConfigError
from .forecaster import Forecaster
from .metrics import diebold_mariano, evaluate, lag_diagnosis
from .parallel import check_jobs, fit_in_order
from .windows import cut_date, show_date

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
        if model_rmse == base_rmse:  # a constant series: both exact
            return f"seqcast ties the naive {best} forecast: RMSE {model_rmse:.2f} for both"
        worse = f"{model_rmse / base_rmse:.1f}x worse" if base_rmse > 0 else f"{best} is exact"
        how = "significantly worse" if significant else "the difference is not significant"
        return (
            f"seqcast does NOT beat the naive {best} forecast: RMSE {model_rmse:.2f} vs {base_rmse:.2f} "
            f"({worse}; {how}, DM {_p_text(p)})"
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
    horizon_scores: pd.DataFrame | None = None  # the model's score_horizons on the test rows when horizon > 1

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
        # Only the columns the test rows have too: a baseline reading another (last-close without a
        # Close in the test file) is left out, as when the training rows lack it.
        shared = train[[c for c in train.columns if c in test.columns]]
        baselines = default_baselines(shared, target, lookback=getattr(model, "lookback", 60))
    columns = {"actual": test[target], MODEL: model.predict(test)}
    for name, baseline in baselines.items():
        columns[name] = clone(baseline).fit(train).predict(test)
    predictions = pd.DataFrame(columns, index=test.index)
    actual_history = pd.concat([train[target].iloc[-1:], test[target]])
    previous = actual_history.shift(1).iloc[1:] if test.index[0] > train.index[-1] else test[target].shift(1)
    board = score(predictions, train=train[target], previous=previous.to_numpy())
    steps = model.score_horizons(test) if getattr(model, "horizon", 1) > 1 and hasattr(model, "score_horizons") else None
    intervals, interval = _intervals_of(model, test, test[target])
    return Holdout(
        target=target, predictions=predictions, board=board, horizon_scores=steps, intervals=intervals, interval=interval
    )


def _intervals_of(model, frame: pd.DataFrame, actual: pd.Series):
    """An ensemble's lower/upper/std on `frame` and their scores; (None, None) for a single model or
    an ensemble fitted without calibration rows (calibration_fraction 0: no intervals to score)."""
    if not hasattr(model, "predict_interval") or not np.size(getattr(model, "calibration_scores_", [])):
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
        cut = cut_date(start, "--start")
        first = int(index.searchsorted(cut))
        n_test = n - first
        if first == 0 or n_test == 0:
            raise ConfigError(
                f"--start {show_date(cut)} leaves {first} training and {n_test} test rows "
                f"({index[0].date()}..{index[-1].date()}): pick a date inside that range"
            )
        if refit_every is not None:
            sizes = [refit_every] * (n_test // refit_every) + ([n_test % refit_every] if n_test % refit_every else [])
        else:
            n_folds = folds or 1
            if n_folds > n_test:
                raise ConfigError(f"{n_folds} folds need at least {n_folds} test rows after {show_date(cut)}, found {n_test}")
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
    per_step: pd.DataFrame | None = None  # per_step_table(): RMSE/MAE at every step h = 1..H of every model
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

    def per_step_records(self) -> list[dict]:
        """The per-step table as JSON-ready rows (step, model, rmse, mae, n, dm_p, best_baseline)."""
        if self.per_step is None:
            return []
        return [{k: _plain(v) for k, v in row.items()} for row in self.per_step.to_dict(orient="records")]

    def write(self, out_dir, *, info: dict | None = None) -> dict[str, Path]:
        """leaderboard.csv, leaderboard.json (leaderboard, verdict, folds, settings, per-step scores),
        folds.csv and per_step.csv."""
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
        if self.per_step is not None:
            doc["per_step"] = self.per_step_records()
        paths = {
            "leaderboard": atomic_write_text(out_dir / "leaderboard.csv", table.to_csv(float_format="%.6g")),
            "leaderboard_json": atomic_write_json(out_dir / "leaderboard.json", doc),
            "folds": atomic_write_text(out_dir / "folds.csv", self.fold_table().to_csv(float_format="%.6g")),
        }
        if self.per_step is not None:
            paths["per_step"] = atomic_write_text(out_dir / "per_step.csv", self.per_step.to_csv(index=False, float_format="%.6g"))
        if self.intervals is not None:
            paths["intervals"] = atomic_write_text(
                out_dir / "intervals.csv", self.intervals.rename_axis("date").to_csv(float_format="%.6f", date_format="%Y-%m-%d")
            )
        return paths


class _FoldWriter:
    """Appends each fold's predictions to backtest.csv as it finishes (long format), atomically:
    rows go to a temporary file in the same folder, renamed into place once every fold is done."""

    header = ["fold", "date", "model", "actual", "predicted"]

    def __init__(self, out_dir: Path | None):
        self.path = None if out_dir is None else Path(out_dir) / "backtest.csv"
        self.parts: list[pd.DataFrame] = []
        self.tmp = None
        if self.path is not None:
            fd, self.tmp = open_temp_sibling(self.path)
            with os.fdopen(fd, "w") as fh:
                fh.write(",".join(self.header) + "\n")

    def add(self, fold: int, wide: pd.DataFrame) -> None:
        if self.tmp is None:
            long = wide.drop(columns="actual").rename_axis("date").reset_index().melt(
                id_vars="date", var_name="model", value_name="predicted"
            )
            long = long.merge(wide["actual"].rename_axis("date").reset_index(), on="date")
            long.insert(0, "fold", fold)
            self.parts.append(long[self.header])
            return
        # The rows model by model, as that melt and merge order them, written by the csv module
        # from cells formatted as pandas' to_csv(float_format="%.6f", date_format="%Y-%m-%d")
        # formats them (the same bytes, tested): 3.3 against 11.3 ms a fold of 166 rows and 6
        # models for pandas' melt, merge and to_csv, ~20 % of a linear model's many-series
        # backtest before, for what is string formatting.
        dates = _csv_cells(wide.index)
        actual = _csv_cells(wide["actual"])
        with open(self.tmp, "a", newline="") as fh:
            out = csv.writer(fh, lineterminator="\n")
            for model in wide.columns.drop("actual"):
                out.writerows(zip([fold] * len(wide), dates, [model] * len(wide), actual, _csv_cells(wide[model])))

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


def _csv_cells(values) -> list:
    """``values`` (a column or an index) as pandas' ``to_csv(float_format="%.6f",
    date_format="%Y-%m-%d")`` writes them: floats to 6 decimals, NaN as an empty cell, dates as
    YYYY-MM-DD, anything else as itself."""
    if isinstance(values, pd.DatetimeIndex):
        return list(values.strftime("%Y-%m-%d"))
    array = np.asarray(values)
    if array.dtype.kind == "f":
        return ["" if value != value else "%.6f" % value for value in array.tolist()]
    return array.tolist()


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
    horizon: int | None = None,
    baselines: dict | None = None,
    period: int | None = None,
    out_dir=None,
    on_fold: Callable[[dict], None] | None = None,
    n_jobs: int | None = None,
) -> Backtest:
    """Walk-forward backtest: for each fold, fit a fresh clone of `forecaster` and of every baseline on
    the fold's past rows only (the Forecaster fits its own scaler on them), then predict the fold's rows
    one step ahead, each from the real values before it.

    Every test row is also a forecast origin for steps h = 1..H (H: `horizon`, by default the
    forecaster's own; a different value re-sets the forecaster's horizon). Each model's and baseline's
    h-step forecasts (`predict_horizons`) are scored against the real value h - 1 rows after the
    origin, which may lie in a later fold (the model still saw only rows before its own fold); origins
    whose h-step target is past the last row are not scored at that step. The result's `per_step` holds
    RMSE/MAE per step; the leaderboard stays the one-step (h = 1) table.

    With `out_dir`, each fold's predictions are appended to out_dir/backtest.csv as soon as it ends.
    `on_fold` receives a summary dict after each fold (for progress lines).

    `n_jobs` > 1 (or -1) fits the folds' models that many at a time, in this process and joblib
    worker processes (:mod:`seqcast.parallel`: one torch thread each, no progress bars; the same
    models as fits one after another on one thread). The folds are still scored in order, each as
    soon as its model and those before it are fitted. It pays for small models only. Without
    `n_jobs`, a Forecaster too small to keep more than one thread busy
    (`Forecaster.trains_on_one_thread`) has its folds fitted the same way in threads of this
    process, as many at once as torch has threads.
    """
    check_jobs(n_jobs, "n_jobs (--jobs)")
    own = getattr(forecaster, "horizon", 1)
    if horizon is None:
        horizon = own
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ConfigError(f"horizon must be a whole number of at least 1, got {horizon!r}")
    horizon = int(horizon)
    if horizon != own and _has_horizon(forecaster):
        forecaster = clone(forecaster).set_params(horizon=horizon)
    target = _target_of(forecaster, frame)
    lookback = int(getattr(forecaster, "lookback", 1))
    plan = plan_folds(
        frame.index, folds=folds, start=start, refit_every=refit_every, window=window, min_train=lookback + horizon
    )
    first_train = frame.iloc[plan[0].train]
    if period is not None:  # else 0 meant "from the dates", and a too long one dropped the baseline, silently
        if isinstance(period, bool) or not isinstance(period, (int, np.integer)) or period < 1:
            raise ConfigError(f"--season must be a whole number of rows of at least 1, got {period!r}")
        if len(first_train) <= period:
            raise ConfigError(
                f"--season {period} needs more than {period} training rows, and the first fold trains on "
                f"{len(first_train)}: lower --season, or give fewer --folds or a later --start"
            )
    if baselines is None:
        baselines = default_baselines(first_train, target, lookback=lookback, period=period)
    writer = _FoldWriter(out_dir)
    summaries, steps, bands = [], [], []
    fits = None
    fold_rows = [frame.iloc[fold.train] for fold in plan]
    if n_jobs not in (None, 1) and len(plan) > 1:
        fits = fit_in_order([clone(forecaster) for _ in plan], fold_rows, n_jobs)
    elif len(plan) > 1 and _side_by_side(forecaster, fold_rows[0]):
        fits = fit_in_order([clone(forecaster) for _ in plan], fold_rows, torch.get_num_threads(), threads=True)
    try:
        for fold in plan:
            train, test = frame.iloc[fold.train], frame.iloc[fold.test]
            if fits is None:
                began = time.perf_counter()
                model = clone(forecaster).fit(train)
            else:
                model, fit_seconds = next(fits)
                began = time.perf_counter() - fit_seconds
            fitted = {name: clone(baseline).fit(train) for name, baseline in baselines.items()}
            if horizon == 1:
                columns = {"actual": test[target], MODEL: model.predict(test)}
                columns.update({name: baseline.predict(test) for name, baseline in fitted.items()})
                ahead = {name: column.to_numpy()[:, None] for name, column in columns.items() if name != "actual"}
            else:
                ahead = {name: _ahead(m, test, horizon) for name, m in {MODEL: model, **fitted}.items()}
                columns = {"actual": test[target], **{name: pd.Series(v[:, 0], index=test.index) for name, v in ahead.items()}}
            steps.append(_step_errors(frame[target].to_numpy(dtype=np.float64), fold.test.start, ahead))
            wide = pd.DataFrame(columns, index=test.index)
            writer.add(fold.number, wide)
            fold_bands, _ = _intervals_of(model, test, test[target])
            if fold_bands is not None:
                bands.append(fold_bands)
            members = getattr(model, "members_", None)
            history = getattr(model, "history_", None)
            histories = [m.history_ for m in members] if members else ([history] if history is not None else [])
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
                # An ensemble's curve is its members' mean (over the epochs every member ran).
                "loss": _mean_curve([h.loss for h in histories]),
                "val_loss": _mean_curve([h.val_loss for h in histories]),
            }
            if members:
                summary["member_loss"] = [list(h.loss) for h in histories]
            summaries.append(summary)
            if on_fold is not None:
                on_fold(summary)
        long = writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        if fits is not None:
            fits.close()
    predictions = wide_predictions(long)
    first_test = plan[0].test.start
    previous = frame[target].shift(1).reindex(predictions.index)
    # The leaderboard scores one-step forecasts, whose errors need no multi-step DM correction.
    board = score(
        predictions.drop(columns="fold"),
        train=frame[target].iloc[:first_test],
        previous=previous.to_numpy(),
        horizon=1,
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
    per_step = per_step_table(pd.concat(steps, ignore_index=True))
    intervals = pd.concat(bands) if bands else None
    interval = None
    if intervals is not None:
        actual = predictions["actual"].reindex(intervals.index)
        interval = interval_scores(actual, intervals["lower"], intervals["upper"], level=forecaster.interval)
    return Backtest(
        target=target, predictions=predictions, board=board, folds=summaries, settings=settings, per_step=per_step,
        intervals=intervals, interval=interval,
    )


def _mean_curve(curves: list) -> list[float]:
    """Per-epoch mean of several loss curves over the epochs all of them have ([] if any is empty)."""
    if not curves:
        return []
    n = min(len(c) for c in curves)
    return [float(np.mean([c[i] for c in curves])) for i in range(n)]


def _side_by_side(forecaster, rows: pd.DataFrame) -> bool:
    """Whether walk_forward fits the folds' models side by side in threads (see its docstring)."""
    return torch.get_num_threads() > 1 and isinstance(forecaster, Forecaster) and forecaster.trains_on_one_thread(rows)


def _has_horizon(estimator) -> bool:
    return hasattr(estimator, "get_params") and "horizon" in estimator.get_params()


def _ahead(estimator, test: pd.DataFrame, horizon: int) -> np.ndarray:
    """(rows, horizon) forecasts: a Forecaster's own horizon, or a baseline's h-step forecasts."""
    if _has_horizon(estimator):
        return estimator.predict_horizons(test).to_numpy()
    if not hasattr(estimator, "predict_horizons"):
        raise ConfigError(
            f"{type(estimator).__name__} forecasts one step only: backtest it with horizon 1, or drop it from the baselines"
        )
    return estimator.predict_horizons(test, horizon).to_numpy()


def _step_errors(actual: np.ndarray, first: int, ahead: dict[str, np.ndarray]) -> pd.DataFrame:
    """Long table (origin, step, model, error) of forecasts issued at rows first, first+1, ...

    `ahead[name][i, k-1]` forecasts row first + i + k - 1 of `actual`; targets past its end are left out.
    """
    origins, steps, models, errors = [], [], [], []
    for name, values in ahead.items():
        n, horizon = values.shape
        origin = first + np.arange(n)[:, None]
        step = np.arange(1, horizon + 1)[None, :]
        where = (origin + step - 1).ravel()
        keep = where < len(actual)
        error = np.full(where.shape, np.nan)
        error[keep] = actual[where[keep]] - values.ravel()[keep]
        origins.append(np.broadcast_to(origin, values.shape).ravel()[keep])
        steps.append(np.broadcast_to(step, values.shape).ravel()[keep])
        models.append([name] * int(keep.sum()))
        errors.append(error[keep])
    # One frame from the models' arrays: 0.63 against 2.1 ms a fold of 166 rows and 6 models for a
    # frame per model and a concat.
    return pd.DataFrame({
        "origin": np.concatenate(origins), "step": np.concatenate(steps),
        "model": [name for names in models for name in names], "error": np.concatenate(errors),
    })


def per_step_table(errors: pd.DataFrame) -> pd.DataFrame:
    """RMSE, MAE and n per step and model, from (origin, step, model, error) rows, plus the DM p-value
    of each model against the step's best baseline (HLN-corrected for an h-step horizon).

    At each step only origins that every model forecast are scored, so the rows compare like with like.
    """
    wide = errors.pivot_table(index=["step", "origin"], columns="model", values="error", aggfunc="first", dropna=False)
    names = list(dict.fromkeys(errors["model"]))
    wide = wide[names].dropna()
    out = []
    for step, part in wide.groupby(level="step"):
        rmse = np.sqrt((part**2).mean())
        mae = part.abs().mean()
        best = str(rmse.drop(index=MODEL, errors="ignore").idxmin()) if len(names) > 1 else None
        for name in names:
            p = np.nan
            if best is not None and name != best and len(part) > 2:
                zero = np.zeros(len(part))
                p = diebold_mariano(zero, -part[name].to_numpy(), -part[best].to_numpy(), horizon=int(step)).p_value
            out.append({"step": int(step), "model": name, "rmse": float(rmse[name]), "mae": float(mae[name]), "n": len(part), "dm_p": p, "best_baseline": best})
    return pd.DataFrame(out, columns=["step", "model", "rmse", "mae", "n", "dm_p", "best_baseline"])
