"""Ensembles of Forecasters with split-conformal prediction intervals.

A separate estimator rather than an `ensemble=` parameter of Forecaster: the ensemble only needs
Forecaster's public behaviour (fit, predict, forecast, save/load), so Forecaster stays one model and
any parameter added to it later (threads, ...) reaches the members through `forecaster` untouched.

Members are fitted one after another, or with `n_jobs` on that many cores (this process and
n_jobs - 1 worker processes, one torch thread each). Processes pay for small members, whose one
fit keeps about one core busy (seqcast.parallel says why); a member big enough that `train_model`
splits its batches across the cores gains nothing from them. The batched
`ensemble.train_many` path gained less than the processes at the small shapes and lost at the
seed config's on the 2-core CPU this was built on (benchmarks/README.md).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.metrics import r2_score
from sklearn.utils.validation import check_is_fitted

from . import __version__
from .artifacts import read_bundle_dir, write_bundle_dir
from .data import resolve_column
from .ensemble import train_many, trains_in_groups
from .errors import ArtifactError, ConfigError, DataError
from .forecaster import Forecaster
from .parallel import check_jobs, fit_all
from .training import resolve_device

ENSEMBLE_FILE = "ensemble.json"


def conformal_quantile(scores, level: float) -> float:
    """The split-conformal half-width: the ceil((n+1)·level)-th smallest of n calibration scores.

    With exchangeable scores, |y − ŷ| ≤ this value with probability at least `level` for a new point.
    Hand-written (a sort and an index): MAPIE would bring a dependency for these two lines.
    """
    level = _check_level(level)
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    n = scores.size
    k = math.ceil((n + 1) * level)
    if k > n:
        raise DataError(
            f"a {level:.0%} interval needs at least {math.ceil(level / (1 - level))} calibration residuals, "
            f"got {n}: raise calibration_fraction (--calibration-fraction), give more rows or lower the level"
        )
    return float(scores[k - 1])


def _check_level(level) -> float:
    if not isinstance(level, (int, float, np.floating)) or not 0.0 < float(level) < 1.0:
        raise ConfigError(f"the interval level must be between 0 and 1 (e.g. 0.9), got {level!r}")
    return float(level)


def _trains_together(template: Forecaster) -> bool:
    """Whether members of ``template`` train as one :func:`seqcast.ensemble.train_many` call: on the
    CPU, without validation rows or early stopping, which train_many lacks. There members train K
    at once in one group per thread, K per call of seqcast.native's compiled layers where their
    layers suit them on one thread (at the indicators preset's shape 2.1-2.8× the throughput of
    one-by-one fits since those run their batches 8 per compiled call on one thread, 2.3-3.7×
    before; benchmarks/README.md, 2026-12-06), else GRUs and RNNs through their
    TorchScript layers and small LSTMs as block-diagonal oneDNN LSTMs (2.4-3.0×;
    benchmarks/README.md); larger LSTM members, and members of any cell whose fits split their
    batches at a cost of ``ensemble.SEQUENTIAL_FIT_FLOPS`` or more (the seed config's), fit one
    after another."""
    return (
        not template.val_fraction
        and template.early_stopping is None
        and resolve_device(template.device).type == "cpu"
    )


def _fit_together(members: list[Forecaster], rows: pd.DataFrame) -> tuple[list[Forecaster], bool]:
    """Fit ``members`` (one template, different seeds) on ``rows`` with their networks trained by
    one train_many call; each member equals its own ``fit`` up to float rounding. Also returns
    whether train_many trained them in groups (GRU and RNN members, and LSTM members small enough
    for it) rather than each by its own train_model fit (:func:`seqcast.ensemble.trains_in_groups`)."""
    prepared = [member._prepare_fit(rows) for member in members]
    _, (X_train, y_train), _ = prepared[0]  # the same windows for every member: only the seed differs
    settings = members[0]._training_settings()
    grouped = trains_in_groups(
        members[0].model_, len(members), settings["threads"], settings["batch_size"], X_train.shape[1], settings["device"]
    )
    _, histories = train_many(
        [member.model_ for member in members],
        X_train,
        y_train,
        seeds=[member.seed for member in members],
        verbose=members[0].verbose,
        **settings,
    )
    for member, (frame, _, _), history in zip(members, prepared, histories):
        member.history_ = history
        member._finish_fit(frame)
    return members, grouped


class EnsembleForecaster(RegressorMixin, BaseEstimator):
    """`n_members` copies of `forecaster` with seeds seed, seed+1, ...; predicts the members' mean.

    With `calibration_fraction` > 0, the last fraction of the training rows is held out from the
    members' fit and predicted one step ahead (each row from the real rows before it, as at test
    time); the absolute residuals of the mean give split-conformal intervals at any level. Those
    rows still serve as context, so a frame that follows the training rows is predicted from them.

    On the CPU (without validation rows or early stopping) the members train in one
    :func:`seqcast.ensemble.train_many` call: GRU and vanilla RNN members several models per
    batched GEMM and one group of members per thread; LSTM members too small to split their batches
    in groups too (K members per call of ``seqcast.native``'s compiled layer where it built, else
    each group one block-diagonal oneDNN LSTM, ``models.block_diagonal_lstm``), larger ones each as
    its own fit, one after another. ``trained_together_`` says whether the members
    were trained in groups.

    `n_jobs` > 1 (or -1, one per core) fits the members on that many cores: this process and
    n_jobs - 1 joblib worker processes take members from one queue, each member on one torch thread
    (unless `forecaster.threads` says otherwise) and without progress bars. A member is then
    exactly the member a sequential fit with ``threads=1`` gives. It pays for small members (whole
    `seqcast run --preset indicators --ensemble 5` 1.20-1.76x faster on 2 cores, a 4-fold backtest
    of it 1.40-1.67x; a worker costs ~3.5 s to start, once per process), not for the seed config's,
    whose single fit already keeps both cores busy (0.69-0.75x). `n_jobs` is a fitting setting and
    is not saved.
    """

    def __init__(
        self,
        forecaster=None,
        n_members: int = 5,
        interval: float = 0.9,
        calibration_fraction: float = 0.2,
        n_jobs: int | None = None,
    ):
        self.forecaster = forecaster
        self.n_members = n_members
        self.interval = interval
        self.calibration_fraction = calibration_fraction
        self.n_jobs = n_jobs

    # The settings backtests and the CLI read from a model, taken from the member template.
    def _template(self) -> Forecaster:
        return Forecaster() if self.forecaster is None else self.forecaster

    @property
    def target(self) -> str:
        return self._template().target

    @property
    def lookback(self) -> int:
        return self._template().lookback

    @property
    def horizon(self) -> int:
        return self._template().horizon

    @property
    def strategy(self) -> str:
        return self._template().strategy

    def trains_members_together(self) -> bool:
        """Whether :meth:`fit` trains the members' networks as one train_many call (members on the
        CPU, no validation rows or early stopping, ``n_jobs`` None or 1)."""
        return self.n_members > 1 and self.n_jobs in (None, 1) and _trains_together(self._template())

    def _check_params(self) -> None:
        if isinstance(self.n_members, bool) or not isinstance(self.n_members, (int, np.integer)) or self.n_members < 1:
            raise ConfigError(f"n_members (--ensemble) must be a whole number of at least 1, got {self.n_members!r}")
        _check_level(self.interval)
        if not 0.0 <= float(self.calibration_fraction) < 1.0:
            raise ConfigError(f"calibration_fraction must be in [0, 1), got {self.calibration_fraction!r}")
        check_jobs(self.n_jobs, "n_jobs (--ensemble-jobs)")

    def fit(self, X, y=None):
        self._check_params()
        template = self._template()
        frame = template._frame(X, y) if y is not None else X
        if not isinstance(frame, pd.DataFrame):
            raise DataError("EnsembleForecaster needs a DataFrame with dates (or X with y as Forecaster takes)")
        n_cal = int(round(len(frame) * float(self.calibration_fraction)))
        fit_rows = frame.iloc[: len(frame) - n_cal]
        seeds = [int(template.seed) + i for i in range(self.n_members)]
        self.trained_together_ = False
        if self.trains_members_together():
            members = [clone(template).set_params(seed=s) for s in seeds]
            self.members_, self.trained_together_ = _fit_together(members, fit_rows)
        elif self.n_jobs in (None, 1) or self.n_members == 1:
            self.members_ = [clone(template).set_params(seed=s).fit(fit_rows) for s in seeds]
        else:
            members = [clone(template).set_params(seed=s) for s in seeds]
            self.members_ = fit_all(members, [fit_rows] * len(members), self.n_jobs)
        if n_cal:
            calibration = frame.iloc[len(frame) - n_cal :]
            target = self.members_[0].target_
            predicted = self._member_predictions(calibration).mean(axis=1)
            residuals = (calibration[target].to_numpy(dtype=np.float64) - predicted)[np.isfinite(predicted)]
            self.calibration_scores_ = np.sort(np.abs(residuals))
            conformal_quantile(self.calibration_scores_, self.interval)
            for member in self.members_:
                # The held-out rows are the most recent past: the context a later frame follows on from.
                member.context_ = frame[member.required_columns_].iloc[-member.context_rows_ :].astype(np.float64)
                member.n_train_rows_ = len(frame)
                member.train_end_ = frame.index[-1]
        else:
            self.calibration_scores_ = np.empty(0)
        first = self.members_[0]
        self.target_ = first.target_
        self.history_ = first.history_
        self.n_features_in_ = first.n_features_in_
        return self

    def _member_predictions(self, X) -> np.ndarray:
        """One column per member: its one-step predictions of X's rows."""
        return np.column_stack([m.predict(X).to_numpy() for m in self.members_])

    def predict(self, X) -> pd.Series:
        """The members' mean one-step prediction for each row of X (NaN where a row lacks history)."""
        check_is_fitted(self, "members_")
        index = self.members_[0]._frame(X).index
        return pd.Series(self._member_predictions(X).mean(axis=1), index=index, name=self.target_)

    def predict_members(self, X) -> pd.DataFrame:
        """Each member's one-step predictions, one column per member ("m1", "m2", ...)."""
        check_is_fitted(self, "members_")
        index = self.members_[0]._frame(X).index
        columns = [f"m{i}" for i in range(1, len(self.members_) + 1)]
        return pd.DataFrame(self._member_predictions(X), index=index, columns=columns)

    def predict_interval(self, X, level: float | None = None) -> pd.DataFrame:
        """Columns lower, mean, upper (split-conformal at `level`, default `interval`) and std (the members' spread)."""
        check_is_fitted(self, "members_")
        if not self.calibration_scores_.size:
            raise ConfigError("this ensemble was fitted with calibration_fraction 0: refit with a calibration fraction for intervals")
        half = conformal_quantile(self.calibration_scores_, self.interval if level is None else level)
        members = self.predict_members(X)
        mean = members.mean(axis=1)
        return pd.DataFrame(
            {"lower": mean - half, "mean": mean, "upper": mean + half, "std": members.std(axis=1, ddof=0)},
            index=members.index,
        )

    def predict_horizons(self, X, horizon: int | None = None) -> pd.DataFrame:
        """The members' mean of :meth:`Forecaster.predict_horizons` (`horizon`, if given, must be the members')."""
        check_is_fitted(self, "members_")
        if horizon is not None and horizon != self.horizon:
            raise ConfigError(f"this ensemble forecasts {self.horizon} step(s); build it with horizon {horizon}")
        return sum(m.predict_horizons(X) for m in self.members_) / len(self.members_)

    def forecast(self, horizon: int | None = None, frame=None) -> pd.DataFrame:
        """The members' mean forecast after the last row, with their spread (std)."""
        check_is_fitted(self, "members_")
        tables = [m.forecast(horizon, frame=frame) for m in self.members_]
        values = np.column_stack([t["forecast"].to_numpy() for t in tables])
        out = tables[0].copy()
        out["forecast"] = values.mean(axis=1)
        out["std"] = values.std(axis=1, ddof=0)
        return out

    def score_horizons(self, X) -> pd.DataFrame:
        check_is_fitted(self, "members_")
        return Forecaster.score_horizons(self, X)

    def _frame(self, X, y=None) -> pd.DataFrame:
        return self.members_[0]._frame(X, y)

    def score(self, X, y=None, sample_weight=None) -> float:
        """R² of the mean prediction on the rows that have one (as :meth:`Forecaster.score`)."""
        predicted = self.predict(X).to_numpy()
        if y is None:
            frame = self._frame(X)
            y = frame[resolve_column(frame, self.target_, source=frame.attrs.get("source", "<frame>"))]
        actual = np.asarray(y, dtype=np.float64)
        scored = np.isfinite(predicted)
        weights = None if sample_weight is None else np.asarray(sample_weight)[scored]
        return float(r2_score(actual[scored], predicted[scored], sample_weight=weights))

    def save(self, directory, *, replace: bool = False) -> "EnsembleForecaster":
        """One Forecaster folder per member (member-01, ...) under one manifest that covers them all;
        ``replace`` as :meth:`Forecaster.save`'s."""
        check_is_fitted(self, "members_")
        params = {k: v for k, v in self.get_params(deep=False).items() if k not in ("forecaster", "n_jobs")}
        doc = {
            "seqcast_version": __version__,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "params": params,
            "members": [_member_dir(i) for i in range(len(self.members_))],
            "seeds": [int(m.seed) for m in self.members_],
            "calibration_scores": self.calibration_scores_.tolist(),
        }

        def build(staging: Path) -> None:
            for i, member in enumerate(self.members_):
                member.save(staging / _member_dir(i))

        write_bundle_dir(directory, json_files={ENSEMBLE_FILE: doc}, build=build, replace=replace)
        return self

    @classmethod
    def load(cls, directory, *, device: str | None = None) -> "EnsembleForecaster":
        doc = read_bundle_dir(directory, json_names=(ENSEMBLE_FILE,))[ENSEMBLE_FILE]
        try:
            members = [Forecaster.load(Path(directory) / name, device=device) for name in doc["members"]]
            template = clone(members[0]).set_params(seed=int(doc["seeds"][0]))
            est = cls(forecaster=template, **doc["params"])
            est.members_ = members
            est.calibration_scores_ = np.sort(np.asarray(doc["calibration_scores"], dtype=np.float64))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ArtifactError(f"{directory}: the saved ensemble does not fit its {ENSEMBLE_FILE} ({exc})") from exc
        first = members[0]
        est.target_, est.history_, est.n_features_in_ = first.target_, first.history_, first.n_features_in_
        return est


def _member_dir(i: int) -> str:
    return f"member-{i + 1:02d}"


def load_model(directory, *, device: str | None = None):
    """A saved Forecaster or EnsembleForecaster, whichever `directory` holds."""
    if (Path(directory) / ENSEMBLE_FILE).is_file():
        return EnsembleForecaster.load(directory, device=device)
    return Forecaster.load(directory, device=device)
