"""Matplotlib figures, drawn off-screen (Agg) so they work on machines with no display."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .artifacts import atomic_write_bytes  # noqa: E402


def _closes_on_error(draw):
    """A plot function whose figure is closed if drawing or saving it fails: pyplot keeps every
    figure it opened alive until closed, so each failed plot would leak one."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        before = set(plt.get_fignums())
        try:
            return draw(*args, **kwargs)
        except BaseException:
            for number in set(plt.get_fignums()) - before:
                plt.close(number)
            raise

    return wrapper


def _save(fig, path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def _draw_band(ax, band: pd.DataFrame | None, level: float | None) -> None:
    if band is None:
        return
    label = f"{level:.0%} prediction interval" if level is not None else "prediction interval"
    ax.fill_between(band.index, band["lower"], band["upper"], color="lightblue", alpha=0.6, lw=0, label=label)


@_closes_on_error
def plot_predictions(
    predictions: pd.DataFrame, path, *, target: str, title: str | None = None,
    band: pd.DataFrame | None = None, level: float | None = None,
) -> Path:
    """Real (red) vs predicted (blue), with any baseline columns as thin grey dashed lines.

    `band` (columns lower, upper) is drawn behind them as a light blue prediction interval.
    """
    fig, ax = plt.subplots(figsize=(10, 5))
    _draw_band(ax, band, level)
    styles = ["--", ":", "-."]
    for i, name in enumerate(c for c in predictions.columns if c not in ("actual", "seqcast")):
        ax.plot(predictions.index, predictions[name], styles[i % 3], color="0.55", lw=1, label=f"{name} (baseline)")
    ax.plot(predictions.index, predictions["actual"], color="red", lw=2, marker="o", ms=3, label=f"Real {target}")
    ax.plot(predictions.index, predictions["seqcast"], color="blue", lw=2, marker="o", ms=3, label=f"Predicted {target}")
    return _finish_dated(fig, ax, path, predictions.index, target, title or f"{target}: real vs predicted")


@_closes_on_error
def plot_forecast(history: pd.Series | None, forecast: pd.Series, path, *, target: str, title: str | None = None) -> Path:
    """History (red) joined to the forecast (blue, dashed) at the last observed row.

    `history` may be None when the target's past values are unknown (a model whose inputs exclude it).
    """
    fig, ax = plt.subplots(figsize=(10, 5))
    joined = forecast
    if history is not None and len(history):
        ax.plot(history.index, history.to_numpy(), color="red", lw=1.8, label=f"{target} (history)")
        joined = pd.concat([history.iloc[-1:], forecast])
        ax.axvline(history.index[-1], color="0.6", lw=1)
    ax.plot(joined.index, joined.to_numpy(), "--", color="blue", lw=1.8, marker="o", ms=3, label=f"{target} (forecast)")
    title = title or f"{target}: {len(forecast)}-step forecast from {_show(forecast.index[0])}"
    return _finish_dated(fig, ax, path, forecast.index, target, title)


def _finish_dated(fig, ax, path, index, target: str, title: str) -> Path:
    """Title, axis labels, ISO dates on x (when the index holds dates), grid, legend; save."""
    ax.set_title(title)
    ax.set_xlabel("Date")
    ax.set_ylabel(target)
    if isinstance(index, pd.DatetimeIndex):
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
        fig.autofmt_xdate()
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _log_y(ax) -> None:
    """A log y axis where every plotted value (lines and bars) is positive: a constant series' losses
    and RMSEs of 0 have no logarithm (matplotlib warned, and drew nothing)."""
    values = [np.asarray(line.get_ydata(), dtype=float).ravel() for line in ax.get_lines()]
    values.append(np.array([patch.get_height() for patch in ax.patches], dtype=float))
    flat = np.concatenate(values)
    flat = flat[np.isfinite(flat)]
    if (flat > 0).all():
        ax.set_yscale("log")


def _show(stamp) -> str:
    return stamp.date().isoformat() if hasattr(stamp, "date") else str(stamp)


@_closes_on_error
def plot_member_losses(histories, path) -> Path:
    """Training (and validation, dashed) loss per epoch of every ensemble member, one thin line each."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, history in enumerate(histories):
        epochs = range(1, len(history.loss) + 1)
        ax.plot(epochs, history.loss, color="C0", lw=0.8, alpha=0.8, label="training loss" if i == 0 else None)
        if history.val_loss:
            ax.plot(epochs, history.val_loss, "--", color="C1", lw=0.8, alpha=0.8, label="validation loss" if i == 0 else None)
    _log_y(ax)
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Loss (scaled units)")
    ax.set_title(f"Loss per epoch, one line per ensemble member ({len(histories)} members)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


@_closes_on_error
def plot_loss(history, path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = range(1, len(history.loss) + 1)
    ax.plot(epochs, history.loss, marker="o", ms=3, label="training loss")
    if history.val_loss:
        ax.plot(epochs, history.val_loss, marker="o", ms=3, label="validation loss")
    _log_y(ax)
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Loss (scaled units)")
    ax.set_title("Loss per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


@_closes_on_error
def plot_fold_losses(folds: list[dict], path) -> Path:
    """Training (and validation) loss per epoch of every walk-forward fold's model."""
    fig, ax = plt.subplots(figsize=(7, 4))
    cmap = plt.get_cmap("viridis")
    for i, fold in enumerate(folds):
        color = cmap(i / max(len(folds) - 1, 1))
        epochs = range(1, len(fold["loss"]) + 1)
        ax.plot(epochs, fold["loss"], color=color, label=f"fold {fold['fold']}")
        if fold.get("val_loss"):
            ax.plot(epochs, fold["val_loss"], "--", color=color)
    _log_y(ax)
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Loss (scaled units)")
    members = " (ensembles: mean of the members)" if any(fold.get("member_loss") for fold in folds) else ""
    ax.set_title(f"Training loss per epoch, one line per fold{members} (dashed: validation)", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return _save(fig, path)


@_closes_on_error
def plot_residuals(predictions: pd.DataFrame, path, *, target: str, baseline: str | None = None) -> Path:
    """Residuals (actual - predicted) over time and their histogram, for seqcast and one baseline."""
    fig, (ax_time, ax_hist) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    series = [("seqcast", "blue")] + ([(baseline, "0.45")] if baseline else [])
    for name, color in series:
        residual = predictions["actual"] - predictions[name]
        label = name if name == "seqcast" else f"{name} (baseline)"
        ax_time.plot(predictions.index, residual, color=color, lw=1, marker=".", ms=3, label=label)
        _histogram(ax_hist, residual, color=color, label=label)
    ax_time.axhline(0, color="black", lw=0.8)
    ax_time.set_title(f"Residuals (real - predicted {target}) over time")
    ax_time.set_ylabel(target)
    if isinstance(predictions.index, pd.DatetimeIndex):
        ax_time.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
        fig.autofmt_xdate()
    ax_hist.set_title("Residual histogram")
    ax_hist.set_xlabel(target)
    # An explicit corner: "best" placement is slow on long series.
    for ax in (ax_time, ax_hist):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper left")
    return _save(fig, path)


def _histogram(ax, values: pd.Series, *, color, label: str, bins: int = 30) -> None:
    """A histogram of the finite ``values`` in ``bins`` equal bins, or in one bin when they span too
    little for that many (a diverged model's near-constant residuals far from zero, where numpy's
    histogram refuses); if even that fails, a note in place of the bars."""
    finite = values.to_numpy(dtype="float64")
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return
    if not np.all(np.diff(np.linspace(finite.min(), finite.max(), bins + 1)) > 0):
        bins = 1
    try:
        ax.hist(finite, bins=bins, color=color, alpha=0.5, label=label)
    except ValueError:
        ax.text(0.5, 0.5, f"{label}: residuals too close together to bin", transform=ax.transAxes,
                ha="center", fontsize="small")


@_closes_on_error
def plot_backtest(
    predictions: pd.DataFrame, path, *, target: str, baseline: str | None = None,
    band: pd.DataFrame | None = None, level: float | None = None,
) -> Path:
    """Walk-forward predictions over all folds, alternate folds shaded, beside the best baseline
    (and an ensemble's prediction interval `band`, columns lower and upper, in light blue)."""
    fig, ax = plt.subplots(figsize=(12, 5))
    for fold, part in predictions.groupby("fold"):
        if int(fold) % 2 == 0:
            ax.axvspan(part.index[0], part.index[-1], color="0.92", lw=0)
    _draw_band(ax, band, level)
    if baseline:
        ax.plot(predictions.index, predictions[baseline], "--", color="0.45", lw=1, label=f"{baseline} (baseline)")
    ax.plot(predictions.index, predictions["actual"], color="red", lw=1.5, label=f"Real {target}")
    ax.plot(predictions.index, predictions["seqcast"], color="blue", lw=1.5, label=f"Predicted {target}")
    ax.set_title(f"{target}: walk-forward predictions ({predictions['fold'].nunique()} folds, alternate folds shaded)")
    ax.set_xlabel("Date")
    ax.set_ylabel(target)
    if isinstance(predictions.index, pd.DatetimeIndex):
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
        fig.autofmt_xdate()
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return _save(fig, path)


@_closes_on_error
def plot_fold_rmse(fold_table: pd.DataFrame, path) -> Path:
    """RMSE of each model in each fold, as grouped bars."""
    fig, ax = plt.subplots(figsize=(10, 4))
    fold_table.plot.bar(ax=ax, width=0.8, rot=0)
    _log_y(ax)
    ax.set_xlabel("Fold")
    ax.set_ylabel("RMSE (log scale)")
    ax.set_title("RMSE per fold")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small", ncol=3)
    return _save(fig, path)
