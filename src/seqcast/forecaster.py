"""Forecaster: the scikit-learn compatible estimator tying data, windows, model and training together."""

from __future__ import annotations

import copy
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.metrics import r2_score
from sklearn.utils import check_array, check_consistent_length, column_or_1d
from sklearn.utils.validation import check_is_fitted

from . import __version__
from .defaults import PRESETS
from .artifacts import read_model_dir, write_model_dir
from .data import resolve_column
from .errors import ArtifactError, ConfigError, DataError
from .features import (
    SAME_DAY_SUFFIX,
    TARGET_TRANSFORMS,
    Feature,
    feature_matrix,
    future_index,
    inverse_target,
    parse_features,
    parse_same_day,
    require_positive,
    skips_exchange_holidays,
    target_matrix,
    warmup_rows,
)
from .models import build_model
from .training import History, batch_split_workers, predict_batches, resolve_device, train_model
from .windows import (
    context_windows,
    fit_scaler,
    scaler_from_dict,
    scaler_to_dict,
    sliding_windows,
    with_context,
)

_JSON_FILES = ("config.json", "scaler.json", "state.json")
STRATEGIES = ("direct", "recursive")
_ARRAY_SOURCE = "<array X>"  # the source named in messages about a plain array's rows (_array_frame)
# The parameters predict, forecast and save read besides the fitted attributes: set to other values
# after fit (set_params) they would silently give other numbers from the same weights (a level
# model's outputs read as differences, windows of another length), so those calls refuse then.
PREDICT_PARAMS = ("target", "features", "lookback", "horizon", "target_transform", "strategy", "same_day")


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # e.g. arrays, whose == is elementwise
        return bool(np.array_equal(a, b))

class Forecaster(RegressorMixin, BaseEstimator):
    """A stacked recurrent network that predicts `target` from the `lookback` rows before each day.

    The defaults are the classic Keras "Google stock price" experiment: Open prices, lookback 60,
    four LSTM(50) layers each followed by Dropout(0.2), Dense(1), adam + MSE, 20 epochs, batch 64.
    Every setting is a constructor parameter (scikit-learn's estimator contract), so the estimator
    clones and works inside GridSearchCV; fitted state ends in an underscore.
    """

    def __init__(
        self,
        target: str = "Open",
        features=None,
        lookback: int = 60,
        horizon: int = 1,
        target_transform: str = "level",
        strategy: str = "direct",
        same_day=None,
        cell: str = "lstm",
        layers: int = 4,
        units: int = 50,
        dropout: float = 0.2,
        nonlinearity: str = "tanh",
        epochs: int = 20,
        batch_size: int = 64,
        lr: float = 1e-3,
        optimizer: str = "adam",
        loss: str = "mse",
        seed: int = 0,
        shuffle: bool = True,
        clip_norm: float | None = None,
        early_stopping: int | None = None,
        val_fraction: float = 0.0,
        device: str = "auto",
        threads: int | None = None,
        verbose: int = 0,
    ):
        self.target = target
        self.features = features
        self.lookback = lookback
        self.horizon = horizon
        self.target_transform = target_transform
        self.strategy = strategy
        self.same_day = same_day
        self.cell = cell
        self.layers = layers
        self.units = units
        self.dropout = dropout
        self.nonlinearity = nonlinearity
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.loss = loss
        self.seed = seed
        self.shuffle = shuffle
        self.clip_norm = clip_norm
        self.early_stopping = early_stopping
        self.val_fraction = val_fraction
        self.device = device
        self.threads = threads
        self.verbose = verbose

    def _check_params(self) -> None:
        for name in ("lookback", "horizon", "epochs", "batch_size"):
            value = getattr(self, name)
            # bool is an int to Python; True is no size (a grid's `horizon = [true]` crashed numpy).
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
        for name in ("lr", "val_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ConfigError(f"{name} must be a number, got {value!r}")
        # torch.manual_seed's range; numpy and Python's random take any integer.
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not -(2**63) <= self.seed < 2**64:
            raise ConfigError(f"seed must be a whole number between -2**63 and 2**64 - 1, got {self.seed!r}")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if not float(self.lr) > 0:
            raise ConfigError(f"lr must be positive, got {self.lr!r}")
        if self.target_transform not in TARGET_TRANSFORMS:
            raise ConfigError(
                f"target_transform must be one of {', '.join(TARGET_TRANSFORMS)}, got {self.target_transform!r}"
            )
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if not isinstance(self.shuffle, (bool, np.bool_)):  # "no" would read as True
            raise ConfigError(f"shuffle must be True or False, got {self.shuffle!r}")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, (int, np.integer)) or self.threads < 1
        ):
            raise ConfigError(f"threads must be a whole number of at least 1 (or None for torch's default), got {self.threads!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "Forecaster":
        """A Forecaster with the parameters of a named preset (see PRESETS), any of them overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def rows_needed(self, X, y=None) -> tuple[int, int]:
        """(fewest rows `fit` accepts for X's columns, how many of them the indicators' warm-up takes).

        Needs no fitting: it reads only the parameters and X's column names.
        """
        self._check_params()
        frame = self._frame(X, y)
        target = resolve_column(frame, self.target, source=frame.attrs.get("source", "<frame>"))
        warmup = warmup_rows(parse_features(frame, target, frame.attrs.get("inputs", self.features)))
        n_outputs = self.horizon if self.strategy == "direct" else 1
        return warmup + self.lookback + n_outputs, warmup

    def _frame(self, X, y=None) -> pd.DataFrame:
        """The rows to fit or predict as a frame; `y`, when given, becomes the target column.

        A pandas DataFrame is used as it is. Anything else is validated by scikit-learn as a 2-D
        numeric array whose columns become x0, x1, ... and the model's inputs (`_array_frame`).
        """
        if not isinstance(X, pd.DataFrame):
            return self._array_frame(X, y)
        _check_time_order(X)
        frame = X
        if y is not None:
            values = self._target_values(y)
            if len(values) != len(X):
                raise DataError(f"y has {len(values)} values but X has {len(X)} rows")
            frame = X.copy()
            frame[self.target] = values
        return frame

    @staticmethod
    def _values(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
        source = frame.attrs.get("source", "<frame>")
        for column in columns:  # load_csv's frames are numeric; a frame given directly may not be
            if pd.api.types.is_numeric_dtype(frame[column]):
                continue
            numbers = pd.to_numeric(frame[column], errors="coerce")
            bad = numbers.isna() & frame[column].notna()
            if bad.any():
                row = frame.index[int(np.argmax(bad.to_numpy()))]
                raise DataError(
                    f"{source}: column {column} on {row} holds {frame[column][row]!r}, not a number: "
                    "give numeric values (or leave the column out of features)"
                )
        values = frame[columns].to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row, col = map(int, np.argwhere(bad)[0])
            raise DataError(
                f"{source}: the value of column {columns[col]} on {frame.index[row]} is {values[row, col]}: "
                "fill or remove that row"
            )
        return values

    def fit(self, X, y=None, *, checkpoint_dir=None, checkpoint_every=None, resume=False):
        """Train on the rows of X; the checkpoint arguments go to :func:`seqcast.training.train_model`.

        A fit that fails (bad data, a diverged loss) leaves the estimator as it was before the call:
        a fitted one keeps its last fit, whole, rather than a mix of old and new fitted attributes.
        """
        before = dict(self.__dict__)
        try:
            frame, (X_train, y_train), (X_val, y_val) = self._prepare_fit(X, y)
            self.history_ = train_model(
                self.model_,
                X_train,
                y_train,
                seed=self.seed,
                early_stopping=self.early_stopping,
                X_val=X_val,
                y_val=y_val,
                verbose=self.verbose,
                checkpoint_dir=checkpoint_dir,
                checkpoint_every=checkpoint_every,
                resume=resume,
                **self._training_settings(),
            )
            return self._finish_fit(frame)
        except Exception:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    def _training_settings(self) -> dict:
        """The arguments of train_model (and of train_many, for ensembles) that every seed shares."""
        return dict(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            loss=self.loss,
            shuffle=self.shuffle,
            clip_norm=self.clip_norm,
            device=self.device_,
            threads=self.threads,
        )

    def _prepare_fit(self, X, y=None):
        """fit up to training: every data-derived fitted attribute and an untrained ``model_``;
        returns the frame and the scaled (training, validation) windows (validation ``(None, None)``
        without ``val_fraction``). EnsembleForecaster trains several members' models at once between
        this and :meth:`_finish_fit`."""
        self._check_params()
        frame = self._frame(X, y)
        source = frame.attrs.get("source", "<frame>")
        self.target_ = resolve_column(frame, self.target, source=source)
        self._set_features(
            parse_features(frame, self.target_, frame.attrs.get("inputs", self.features)), parse_same_day(frame, self.target_, self.same_day)
        )
        if source == _ARRAY_SOURCE and self.target_ in self.required_columns_:
            # predict(X) gets no y, and an array's columns are only the inputs: such a model fitted
            # fine and then could never predict.
            why = (f"target_transform {self.target_transform!r}" if self.target_transform != "level"
                   else "strategy 'recursive'" if self.strategy == "recursive" else f"features naming {self.target_!r}")
            raise ConfigError(
                f"{why} needs the target's own past values when predicting, which an array X does not hold (its "
                f"columns are the inputs, y the target): fit a DataFrame with a {self.target_!r} column, or use "
                "target_transform='level', strategy='direct' and inputs from X's columns"
            )
        raw = frame[self.required_columns_]
        self._values(raw, self.required_columns_)
        levels = self._values(frame, [self.target_])[:, 0]
        if self.target_transform == "logret":
            require_positive(frame, self.target_, "target_transform logret")

        w, n_out = self.warmup_rows_, self.n_outputs_
        n_windows = len(frame) - w - self.lookback - n_out + 1
        if n_windows < 1:
            warm = f" plus {w} warm-up rows for the indicators" if w else ""
            raise DataError(
                f"{source} has {len(frame)} rows; lookback {self.lookback} and horizon {n_out}{warm} need at "
                f"least {w + self.lookback + n_out}: give more history or lower --lookback"
            )
        n_val = int(round(n_windows * float(self.val_fraction)))
        if self.val_fraction and not 1 <= n_val < n_windows:
            raise DataError(
                f"val_fraction {self.val_fraction} of {n_windows} windows leaves no validation or no training "
                "windows: change --val-fraction or give more rows"
            )
        design = feature_matrix(raw, self.features_, self.same_day_columns_)
        self._check_design(design, source, last=len(frame) - n_out - 1)
        design = design.to_numpy()
        first = w + self.lookback
        targets = target_matrix(levels, self.target_transform, n_out)[first : first + n_windows]
        # The scalers see only the rows the training windows' targets reach, never validation targets;
        # each input column has its own scaler, and the target's inverse uses the target scaler alone.
        fit_rows = len(frame) - n_val
        self.input_scaler_ = fit_scaler(design[w:fit_rows])
        if self.target_transform == "level":
            # The seed's choice, kept so its numbers reproduce: every training level, not only window targets.
            self.target_scaler_ = fit_scaler(levels[w:fit_rows])
        else:
            self.target_scaler_ = fit_scaler(targets[: n_windows - n_val].reshape(-1, 1))
        X_all = sliding_windows(self.input_scaler_.transform(design)[w:], self.lookback)[:n_windows]
        y_all = self.target_scaler_.transform(targets.reshape(-1, 1)).reshape(targets.shape)
        X_train, y_train = X_all[: n_windows - n_val], y_all[: n_windows - n_val]
        X_val, y_val = (X_all[n_windows - n_val :], y_all[n_windows - n_val :]) if n_val else (None, None)

        self.device_ = str(resolve_device(self.device))
        self.model_ = self._build_model()
        return frame, (X_train, y_train), (X_val, y_val)

    def trains_on_one_thread(self, X, y=None) -> bool:
        """Whether a fit on ``X`` would keep about one thread busy however many torch has: its model
        is on the CPU and too small for ``train_model`` to split its batches across threads
        (``training.batch_split_workers``; e.g. the indicators preset, not the seed config), and
        ``threads`` is not set. Callers fit such models side by side (seqcast.parallel). Costs the
        fit's feature and window preparation, not its training."""
        device = resolve_device(self.device)
        if self.threads is not None or device.type != "cpu":
            return False
        probe = clone(self)
        probe._prepare_fit(X, y)  # for the model's input width, which the features decide
        return batch_split_workers(probe.model_, device, None, True, self.batch_size, self.lookback) == 1

    def _finish_fit(self, frame: pd.DataFrame) -> Forecaster:
        """fit after training (``history_`` set): the context rows and the training span."""
        raw = frame[self.required_columns_]
        self.context_ = raw.iloc[-self.context_rows_ :].astype(np.float64)
        self.n_train_rows_ = len(frame)
        self.train_start_, self.train_end_ = frame.index[0], frame.index[-1]
        # Judged on all training rows: the saved context alone may span no holiday to judge by.
        self.exchange_holidays_ = skips_exchange_holidays(frame.index)
        self.params_ = copy.deepcopy(self.get_params(deep=False))
        return self

    def _check_fitted(self) -> None:
        """check_is_fitted, and that the parameters predictions read still have their fitted values."""
        check_is_fitted(self, "model_")
        fitted = getattr(self, "params_", None)
        if fitted is None:
            return
        for name in PREDICT_PARAMS:
            if not _same(getattr(self, name), fitted[name]):
                raise ConfigError(
                    f"{name} was {fitted[name]!r} when this model was fitted and is now {getattr(self, name)!r}: "
                    f"its predictions need the fitted value; set {name} back or fit again"
                )

    def _set_features(self, features: list[Feature], same_day: list[str]) -> None:
        """Fitted attributes that follow from the parsed features (shared by fit and load)."""
        if self.strategy == "recursive":
            foreign = [f.name for f in features if not f.uses_only(self.target_)]
            if foreign or same_day:
                names = ", ".join(foreign + [c + SAME_DAY_SUFFIX for c in same_day])
                raise ConfigError(
                    f"strategy recursive feeds back predicted {self.target_} values only, so every input must be "
                    f"computable from {self.target_} and the dates; {names} cannot be: drop them or use "
                    "--strategy direct"
                )
        self.features_ = features
        self.same_day_columns_ = same_day
        self.input_columns_ = [f.name for f in features] + [c + SAME_DAY_SUFFIX for c in same_day]
        self.n_features_in_ = len(self.input_columns_)
        needs_target = self.target_transform != "level" or self.strategy == "recursive"
        used = [c for f in features for c in f.columns] + list(same_day)
        if needs_target or not used:
            used.append(self.target_)
        self.required_columns_ = list(dict.fromkeys(used))
        self.warmup_rows_ = warmup_rows(features)
        self.context_rows_ = self.lookback + max(f.memory for f in features)
        self.n_outputs_ = self.horizon if self.strategy == "direct" else 1

    def _check_design(self, design: pd.DataFrame, source: str, *, last: int) -> None:
        """Every feature value a window can reach (rows warmup..last) must be a finite number."""
        block = design.iloc[self.warmup_rows_ : last + 1]
        bad = ~np.isfinite(block.to_numpy())
        if bad.any():
            row, col = map(int, np.argwhere(bad)[0])
            raise DataError(
                f"{source}: feature {block.columns[col]} is {block.iat[row, col]} on {block.index[row]} "
                "(a zero or flat stretch in its input column?): drop that feature or fix the data"
            )

    def _build_model(self):
        return build_model(
            self.n_features_in_,
            cell=self.cell,
            layers=self.layers,
            units=self.units,
            dropout=self.dropout,
            horizon=self.n_outputs_,
            nonlinearity=self.nonlinearity,
            seed=self.seed,
        ).to(self.device_)

    def _combined(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The frame's required columns, after the remembered training tail when it starts later."""
        source = frame.attrs.get("source", "<frame>")
        zone, fitted_zone = getattr(frame.index, "tz", None), getattr(self.context_.index, "tz", None)
        if (zone is None) != (fitted_zone is None):
            raise DataError(
                f"{source}: its dates are in time zone {zone} but the model's training dates had none: "
                "drop the zone (frame.tz_localize(None))"
                if zone
                else f"{source}: its dates have no time zone but the model's training dates are in {fitted_zone}: "
                f"give them that zone (frame.tz_localize({str(fitted_zone)!r}))"
            )
        columns = [resolve_column(frame, c, source=source) for c in self.required_columns_]
        raw = frame[columns].set_axis(self.required_columns_, axis=1)
        combined, _ = with_context(raw, self.context_)
        combined.attrs = {"source": source}
        self._values(combined, self.required_columns_)
        return combined

    def _scaled_design(self, combined: pd.DataFrame, *, last: int) -> np.ndarray:
        design = feature_matrix(combined, self.features_, self.same_day_columns_)
        self._check_design(design, combined.attrs.get("source", "<frame>"), last=last)
        return self.input_scaler_.transform(design.to_numpy())

    def _run(self, windows: np.ndarray) -> np.ndarray:
        """The network's scaled outputs for `windows`, on `threads` torch threads (None: one thread for
        a small call, else torch's default; training.predict_batches)."""
        return predict_batches(self.model_, windows, device=self.device_, threads=self.threads)

    def _levels(self, learned: np.ndarray, anchor) -> np.ndarray:
        """Model outputs (scaled, shape (N, H)) as price levels, anchored on the last known levels."""
        unscaled = self.target_scaler_.inverse_transform(learned.reshape(-1, 1)).reshape(learned.shape)
        return inverse_target(unscaled, anchor, self.target_transform)

    def _windows(self, combined: pd.DataFrame, n_rows: int):
        """Windows for the last n_rows rows of `combined`, positions among those rows, and the anchors."""
        if not n_rows:  # nothing to predict (and no rows for the scaler, which refuses none)
            none = np.empty(0, dtype=np.int64)
            return np.empty((0, self.lookback, self.n_features_in_), dtype=np.float32), none, none, None
        scaled = self._scaled_design(combined, last=len(combined) - 2)
        usable = scaled[self.warmup_rows_ :]
        n = min(n_rows, len(usable))
        windows, rows = context_windows(usable, self.lookback, n)
        rows = rows + (n_rows - n)
        positions = len(combined) - n_rows + rows
        anchors = combined[self.target_].to_numpy()[positions - 1] if self.target_ in combined else None
        return windows, rows, positions, anchors

    def predict(self, X) -> pd.Series:
        """One-step predictions aligned to X's rows; NaN where a row has too little history before it.

        When X starts after the training rows, the remembered training tail is the context, so every
        row of X gets a prediction made only from real values before it (and, only when `same_day`
        names columns, those columns' values on the predicted day itself).
        """
        self._check_fitted()
        frame = self._frame(X)
        combined = self._combined(frame)
        windows, rows, _, anchors = self._windows(combined, len(frame))
        out = np.full(len(frame), np.nan)
        if len(windows):
            learned = self._run(windows)[:, :1]
            out[rows] = self._levels(learned, anchors)[:, 0]
        return pd.Series(out, index=frame.index, name=self.target_)

    def predict_horizons(self, X) -> pd.DataFrame:
        """Forecasts of the next `horizon` rows issued at each row of X, from the rows before it.

        Row t, column "hk" is the prediction for the row k-1 after t (so "h1" is :meth:`predict`), made
        with data up to the row before t: the forecast one would have issued on the morning of t.
        """
        self._check_fitted()
        frame = self._frame(X)
        combined = self._combined(frame)
        columns = [f"h{k}" for k in range(1, self.horizon + 1)]
        out = np.full((len(frame), self.horizon), np.nan)
        windows, rows, positions, anchors = self._windows(combined, len(frame))
        if len(windows) and self.strategy == "direct":
            learned = self._run(windows)
            out[rows] = self._levels(learned, anchors)
        elif len(windows):
            histories = [combined.iloc[max(0, p - self.context_rows_) : p] for p in positions]
            dates = [_dates_from(combined.index, p, self.horizon, self.exchange_holidays_) for p in positions]
            out[rows] = self._roll(histories, dates)
        return pd.DataFrame(out, index=frame.index, columns=columns)

    def _roll(self, histories: list[pd.DataFrame], dates: list[pd.Index]) -> np.ndarray:
        """Recursive forecasts: predict one step, append it as if observed, repeat (one batch per step)."""
        steps = len(dates[0])
        out = np.empty((len(histories), steps))
        target = self.target_
        values = [h[target].to_numpy(dtype=np.float64) for h in histories]
        indexes = [h.index for h in histories]
        for step in range(steps):
            learned = self._run(self._rolled_windows(values, indexes))
            anchors = np.array([v[-1] for v in values])
            out[:, step] = self._levels(learned, anchors)[:, 0]
            for i in range(len(histories)):
                keep = self.context_rows_ - 1
                values[i] = np.r_[values[i][-keep:], out[i, step]]
                indexes[i] = indexes[i][-keep:].append(dates[i][step : step + 1])
        return out

    def _rolled_windows(self, values: list[np.ndarray], indexes: list[pd.Index]) -> np.ndarray:
        """The last `lookback` rows of scaled inputs of each history (target values with their dates).

        Histories of one length are computed at once, as the columns of one array (the features
        work along axis 0; the result is bit for bit that of one history at a time, tested): 250
        origins × 5 steps took 0.13 s instead of 1.15 s through pandas one origin at a time. A
        history whose inputs are not all finite, or that logret cannot take, is redone alone, which
        raises the error naming its row.
        """
        target, out = self.target_, [None] * len(values)
        by_length: dict[int, list[int]] = {}
        for i, v in enumerate(values):
            by_length.setdefault(len(v), []).append(i)
        for length, members in by_length.items():
            block = np.stack([values[i] for i in members], axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                design = np.stack(
                    [f.compute_values([block], [indexes[i] for i in members]) for f in self.features_], axis=-1
                )
            good = np.isfinite(design[self.warmup_rows_ :]).all(axis=(0, 2))
            if any(f.kind == "logret" for f in self.features_):
                good &= (block > 0).all(axis=0)
            tail = design[-self.lookback :]
            scaled = self.input_scaler_.transform(tail.reshape(-1, tail.shape[-1])).reshape(tail.shape)
            for j, i in enumerate(members):
                if good[j]:
                    out[i] = scaled[:, j]
                else:
                    current = pd.DataFrame({target: values[i]}, index=indexes[i])
                    out[i] = self._scaled_design(current, last=length - 1)[-self.lookback :]
        return np.stack(out)

    def forecast(self, horizon: int | None = None, frame=None) -> pd.DataFrame:
        """Levels for the `horizon` dates after the last row of `frame` (default: of the training data).

        The dates follow the series' own calendar (business days for weekday-only history, without
        the NYSE holidays when the history skips them, see ``features.future_index``; every day
        when weekends occur, else the inferred frequency). Returns columns ``step`` and ``forecast``.
        """
        self._check_fitted()
        horizon = self.horizon if horizon is None else horizon
        if not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ConfigError(f"horizon must be a whole number of at least 1, got {horizon!r}")
        if self.same_day_columns_:
            raise ConfigError(
                f"this model reads same-day values of {', '.join(self.same_day_columns_)}, which are unknown "
                "after the last row: retrain without --same-day to forecast beyond the data"
            )
        if self.strategy == "direct" and horizon > self.horizon:
            raise ConfigError(
                f"this model was trained to predict {self.horizon} step(s) directly; for {horizon} steps retrain "
                f"with --horizon {horizon}, or with --strategy recursive"
            )
        combined = self.context_ if frame is None else self._combined(self._frame(frame))
        if len(combined) < self.warmup_rows_ + self.lookback:
            source = combined.attrs.get("source", "the data")
            raise DataError(
                f"{source} has {len(combined)} rows; forecasting needs the last {self.warmup_rows_ + self.lookback} "
                "(lookback plus indicator warm-up): give more history"
            )
        dates = future_index(combined.index, horizon, self.exchange_holidays_)
        if self.strategy == "direct":
            scaled = self._scaled_design(combined, last=len(combined) - 1)
            learned = self._run(scaled[None, -self.lookback :])
            anchor = combined[self.target_].to_numpy()[-1:] if self.target_ in combined else None
            levels = self._levels(learned[:, :horizon], anchor)[0]
        else:
            levels = self._roll([combined.iloc[-self.context_rows_ :]], [dates])[0]
        out = pd.DataFrame({"step": np.arange(1, horizon + 1), "forecast": levels}, index=dates)
        out.index.name = "date"
        return out

    def score_horizons(self, X) -> pd.DataFrame:
        """RMSE and MAE of :meth:`predict_horizons` at each step h = 1..horizon, on X's actual target."""
        predicted = self.predict_horizons(X)
        frame = self._frame(X)
        actual = frame[resolve_column(frame, self.target_, source=frame.attrs.get("source", "<frame>"))]
        rows = {}
        for k, column in enumerate(predicted.columns):
            error = (actual.shift(-k) - predicted[column]).to_numpy(dtype=np.float64)
            error = error[np.isfinite(error)]
            rows[column] = {
                "rmse": float(np.sqrt(np.mean(error**2))) if error.size else float("nan"),
                "mae": float(np.mean(np.abs(error))) if error.size else float("nan"),
                "n": int(error.size),
            }
        table = pd.DataFrame.from_dict(rows, orient="index")
        table.index.name = "step"
        return table

    def save(self, directory, *, replace: bool = False) -> "Forecaster":
        """Write the fitted model to the folder ``directory`` (JSON and safetensors under a sha256
        manifest), swapped in whole. An existing folder is replaced when seqcast wrote it or it is
        empty; one that holds other files only with ``replace=True`` (they are deleted)."""
        self._check_fitted()
        # The fitted parameters (a model pickled before params_ existed: the current ones)
        params = getattr(self, "params_", None) or copy.deepcopy(self.get_params(deep=False))
        config = {
            "seqcast_version": __version__,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "params": params,
            "target": self.target_,
            "input_columns": self.input_columns_,
            "features": [f.name for f in self.features_],
            "required_columns": self.required_columns_,
            "same_day_inputs": self.same_day_columns_,
            "warmup_rows": self.warmup_rows_,
            "target_transform": params["target_transform"],
            "n_train_rows": self.n_train_rows_,
            "train_start": _stamp(self.train_start_),
            "train_end": _stamp(self.train_end_),
            "exchange_holidays": self.exchange_holidays_,
        }
        scalers = {
            "inputs": scaler_to_dict(self.input_scaler_, self.input_columns_),
            "target": scaler_to_dict(self.target_scaler_, [self.target_]),
        }
        state = {
            "context": {
                "index": [_stamp(t) for t in self.context_.index],
                "datetime_index": isinstance(self.context_.index, pd.DatetimeIndex),
                "values": self.context_.to_numpy().tolist(),
            },
            "history": self.history_.to_dict(),
        }
        write_model_dir(
            directory,
            json_files={"config.json": config, "scaler.json": scalers, "state.json": state},
            tensors=self.model_.state_dict(),
            replace=replace,
        )
        return self

    @classmethod
    def load(cls, directory, *, device: str | None = None) -> "Forecaster":
        docs, tensors = read_model_dir(directory, json_names=_JSON_FILES)
        config, scalers, state = (docs[name] for name in _JSON_FILES)
        try:
            params = dict(config["params"])
            if device is not None:
                params["device"] = device
            est = cls(**params)
            est.target_ = config["target"]
            required = list(config.get("required_columns", config["input_columns"]))
            columns = pd.DataFrame(columns=list(dict.fromkeys([*required, est.target_])))
            columns.attrs["source"] = str(directory)
            est._set_features(
                parse_features(columns, est.target_, config.get("features", config["input_columns"])),
                list(config.get("same_day_inputs", [])),
            )
            est.n_train_rows_ = int(config["n_train_rows"])
            est.train_start_ = _unstamp(config["train_start"])
            est.train_end_ = _unstamp(config["train_end"])
            # Models saved before this key existed recorded no calendar: their context rows decide.
            est.exchange_holidays_ = config.get("exchange_holidays")
            est.input_scaler_ = scaler_from_dict(scalers["inputs"])
            est.target_scaler_ = scaler_from_dict(scalers["target"])
            ctx = state["context"]
            index = pd.DatetimeIndex(ctx["index"]) if ctx["datetime_index"] else pd.Index(ctx["index"])
            est.context_ = pd.DataFrame(ctx["values"], index=index, columns=est.required_columns_, dtype=np.float64)
            est.history_ = History.from_dict(state["history"])
            est.device_ = str(resolve_device(est.device))
            est.model_ = est._build_model()
            est.model_.load_state_dict(tensors, strict=True)
            est.params_ = copy.deepcopy(est.get_params(deep=False))
        except (KeyError, TypeError, ValueError, RuntimeError, ConfigError, DataError) as exc:
            raise ArtifactError(f"{directory}: the saved model does not fit its config ({exc})") from exc
        est.model_.eval()
        return est

    # scikit-learn array inputs and tags. A plain 2-D array carries no dates: its columns x0, x1, ...
    # are the inputs, row order is time order, and the target comes as y.

    def _array_frame(self, X, y) -> pd.DataFrame:
        # Fitting needs one full window; predicting any number of rows (those without history get NaN).
        min_rows = self.lookback + self.horizon if y is not None else 1
        values = check_array(X, dtype=np.float64, input_name="X", ensure_min_samples=min_rows)
        if y is None and not hasattr(self, "n_features_in_"):
            raise DataError(
                f"{type(self).__name__} requires y to be passed, but the target y is None: "
                "an array X holds only the inputs, so give the target as y (or pass a DataFrame with a target column)"
            )
        if y is None and values.shape[1] != self.n_features_in_:
            raise DataError(
                f"X has {values.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input"
            )
        columns = [f"x{i}" for i in range(values.shape[1])]
        frame = pd.DataFrame(values, columns=columns)
        frame.attrs["source"] = _ARRAY_SOURCE
        frame.attrs["inputs"] = columns if self.features is None else self.features
        if y is not None:
            target = self._target_values(y)
            check_consistent_length(values, target)
            frame[self.target] = target
        return frame

    @staticmethod
    def _target_values(y) -> np.ndarray:
        # Finiteness is left to _values, whose message names the row and column.
        values = check_array(y, ensure_2d=False, dtype=np.float64, ensure_all_finite=False, input_name="y")
        return column_or_1d(values, warn=True)

    def score(self, X, y=None, sample_weight=None) -> float:
        """R² of the predictions against y (or X's target column) on the rows that have a prediction.

        Rows without `lookback` rows of history before them (the start of a frame that does not follow
        the training rows, or of an array) have no prediction and are left out.
        """
        predicted = self.predict(X).to_numpy()
        if y is None:
            frame = self._frame(X)
            y = frame[resolve_column(frame, self.target_, source=frame.attrs.get("source", "<frame>"))]
        actual = self._target_values(y)
        check_consistent_length(actual, predicted)
        scored = np.isfinite(predicted)
        if not scored.any():
            raise DataError(f"none of the {len(predicted)} rows has {self.lookback} rows of history to predict from")
        weights = None if sample_weight is None else np.asarray(sample_weight)[scored]
        return float(r2_score(actual[scored], predicted[scored], sample_weight=weights))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # A DataFrame may carry the target as a column, so y is optional.
        tags.target_tags.required = False
        # The estimator checks train a few epochs on a handful of rows; a poor fit there is expected.
        tags.regressor_tags.poor_score = True
        return tags


def _check_time_order(frame: pd.DataFrame) -> None:
    """Dated rows must come in time order, each date once: the windows are the rows before each row.
    (load_csv sorts a file's rows and refuses repeated dates; a frame given directly was used as it
    came, so reversed rows trained and predicted from the wrong days without a word.)"""
    index = frame.index
    if not isinstance(index, pd.DatetimeIndex) or index.is_monotonic_increasing and index.is_unique:
        return
    row = int(np.argmax(index[1:] <= index[:-1])) + 1
    day = lambda t: t.date() if t == t.normalize() else t  # noqa: E731
    source = frame.attrs.get("source", "<frame>")
    what = "repeats the date before it" if index[row] == index[row - 1] else f"comes after {day(index[row - 1])}"
    raise DataError(
        f"{source}: the rows must be in date order, each date once, but the row at position {row} "
        f"({day(index[row])}) {what}: sort the rows by date (frame.sort_index()) and drop repeated dates"
    )


def _dates_from(index: pd.Index, position: int, n: int, exchange_holidays: bool | None = None) -> pd.Index:
    """The n dates from `position` on: the frame's own where it has them, the series' calendar after."""
    known = index[position : position + n]
    if len(known) == n:
        return known
    return known.append(future_index(index, n - len(known), exchange_holidays))


def _stamp(value):
    return value.isoformat() if hasattr(value, "isoformat") else value


def _unstamp(value):
    return pd.Timestamp(value) if isinstance(value, str) else value
