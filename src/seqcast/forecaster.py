"""Forecaster: the scikit-learn compatible estimator tying data, windows, model and training together."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from . import __version__
from .artifacts import read_model_dir, write_model_dir
from .data import resolve_column
from .errors import ArtifactError, ConfigError, DataError
from .features import input_columns
from .models import build_model
from .training import History, predict_batches, resolve_device, train_model
from .windows import (
    context_windows,
    fit_scaler,
    scaler_from_dict,
    scaler_to_dict,
    supervised_windows,
    with_context,
)

_JSON_FILES = ("config.json", "scaler.json", "state.json")


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
        verbose: int = 0,
    ):
        self.target = target
        self.features = features
        self.lookback = lookback
        self.horizon = horizon
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
        self.verbose = verbose

    def _check_params(self) -> None:
        for name in ("lookback", "horizon", "epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
        # torch.manual_seed's range; numpy and Python's random take any integer.
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not -(2**63) <= self.seed < 2**64:
            raise ConfigError(f"seed must be a whole number between -2**63 and 2**64 - 1, got {self.seed!r}")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if not float(self.lr) > 0:
            raise ConfigError(f"lr must be positive, got {self.lr!r}")

    def _frame(self, X, y=None) -> pd.DataFrame:
        if not isinstance(X, pd.DataFrame):
            raise DataError(
                f"Forecaster expects a pandas DataFrame of rows indexed by date (got {type(X).__name__}): "
                "use seqcast.load_csv(path)"
            )
        frame = X
        if y is not None:
            values = y.to_numpy() if isinstance(y, pd.Series) else np.asarray(y)
            if len(values) != len(X):
                raise DataError(f"y has {len(values)} values but X has {len(X)} rows")
            frame = X.copy()
            frame[self.target] = values.astype(np.float64)
        return frame

    @staticmethod
    def _values(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
        values = frame[columns].to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row, col = map(int, np.argwhere(bad)[0])
            source = frame.attrs.get("source", "<frame>")
            raise DataError(
                f"{source}: the value of column {columns[col]} on {frame.index[row]} is {values[row, col]}: "
                "fill or remove that row"
            )
        return values

    def fit(self, X, y=None, *, checkpoint_dir=None, checkpoint_every=None, resume=False):
        """Train on the rows of X; the checkpoint arguments go to :func:`seqcast.training.train_model`."""
        self._check_params()
        frame = self._frame(X, y)
        source = frame.attrs.get("source", "<frame>")
        self.target_ = resolve_column(frame, self.target, source=source)
        self.input_columns_ = input_columns(frame, self.target_, self.features)
        self.n_features_in_ = len(self.input_columns_)
        inputs = self._values(frame, self.input_columns_)
        target = self._values(frame, [self.target_])[:, 0]

        n_windows = len(frame) - self.lookback - self.horizon + 1
        if n_windows < 1:
            raise DataError(
                f"{source} has {len(frame)} rows; lookback {self.lookback} and horizon {self.horizon} need at "
                f"least {self.lookback + self.horizon}: give more history or lower --lookback"
            )
        n_val = int(round(n_windows * float(self.val_fraction)))
        if self.val_fraction and not 1 <= n_val < n_windows:
            raise DataError(
                f"val_fraction {self.val_fraction} of {n_windows} windows leaves no validation or no training "
                "windows: change --val-fraction or give more rows"
            )
        # The scaler sees only the rows the training windows' targets reach, never validation targets.
        fit_rows = len(frame) - n_val
        self.input_scaler_ = fit_scaler(inputs[:fit_rows])
        self.target_scaler_ = fit_scaler(target[:fit_rows])
        X_all, y_all = supervised_windows(
            self.input_scaler_.transform(inputs),
            self.target_scaler_.transform(target[:, None])[:, 0],
            self.lookback,
            self.horizon,
        )
        X_train, y_train = X_all[: n_windows - n_val], y_all[: n_windows - n_val]
        X_val, y_val = (X_all[n_windows - n_val :], y_all[n_windows - n_val :]) if n_val else (None, None)

        self.device_ = str(resolve_device(self.device))
        self.model_ = self._build_model()
        self.history_ = train_model(
            self.model_,
            X_train,
            y_train,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            loss=self.loss,
            seed=self.seed,
            shuffle=self.shuffle,
            clip_norm=self.clip_norm,
            early_stopping=self.early_stopping,
            X_val=X_val,
            y_val=y_val,
            verbose=self.verbose,
            device=self.device_,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            resume=resume,
        )
        self.context_ = frame[self.input_columns_].iloc[-self.lookback :].astype(np.float64)
        self.n_train_rows_ = len(frame)
        self.train_start_, self.train_end_ = frame.index[0], frame.index[-1]
        return self

    def _build_model(self):
        return build_model(
            self.n_features_in_,
            cell=self.cell,
            layers=self.layers,
            units=self.units,
            dropout=self.dropout,
            horizon=self.horizon,
            nonlinearity=self.nonlinearity,
            seed=self.seed,
        ).to(self.device_)

    def predict(self, X) -> pd.Series:
        """One-step predictions aligned to X's rows; NaN where a row has fewer than `lookback` rows before it.

        When X starts after the training rows, the remembered training tail is the context, so every
        row of X gets a prediction made only from real values before it.
        """
        check_is_fitted(self, "model_")
        frame = self._frame(X)
        source = frame.attrs.get("source", "<frame>")
        columns = [resolve_column(frame, c, source=source) for c in self.input_columns_]
        inputs = frame[columns].set_axis(self.input_columns_, axis=1)
        combined, _ = with_context(inputs, self.context_)
        scaled = self.input_scaler_.transform(self._values(combined, self.input_columns_))
        windows, rows = context_windows(scaled, self.lookback, len(frame))
        out = np.full(len(frame), np.nan)
        if len(windows):
            scaled_pred = predict_batches(self.model_, windows, device=self.device_)[:, :1]
            out[rows] = self.target_scaler_.inverse_transform(scaled_pred)[:, 0]
        return pd.Series(out, index=frame.index, name=self.target_)

    def save(self, directory) -> "Forecaster":
        check_is_fitted(self, "model_")
        config = {
            "seqcast_version": __version__,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "params": self.get_params(),
            "target": self.target_,
            "input_columns": self.input_columns_,
            "n_train_rows": self.n_train_rows_,
            "train_start": _stamp(self.train_start_),
            "train_end": _stamp(self.train_end_),
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
            est.input_columns_ = list(config["input_columns"])
            est.n_features_in_ = len(est.input_columns_)
            est.n_train_rows_ = int(config["n_train_rows"])
            est.train_start_ = _unstamp(config["train_start"])
            est.train_end_ = _unstamp(config["train_end"])
            est.input_scaler_ = scaler_from_dict(scalers["inputs"])
            est.target_scaler_ = scaler_from_dict(scalers["target"])
            ctx = state["context"]
            index = pd.DatetimeIndex(ctx["index"]) if ctx["datetime_index"] else pd.Index(ctx["index"])
            est.context_ = pd.DataFrame(ctx["values"], index=index, columns=est.input_columns_, dtype=np.float64)
            est.history_ = History.from_dict(state["history"])
            est.device_ = str(resolve_device(est.device))
            est.model_ = est._build_model()
            est.model_.load_state_dict(tensors, strict=True)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ArtifactError(f"{directory}: the saved model does not fit its config ({exc})") from exc
        est.model_.eval()
        return est


def _stamp(value):
    return value.isoformat() if hasattr(value, "isoformat") else value


def _unstamp(value):
    return pd.Timestamp(value) if isinstance(value, str) else value
