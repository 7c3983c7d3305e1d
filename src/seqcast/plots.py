"""Matplotlib figures, drawn off-screen (Agg) so they work on machines with no display."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .artifacts import atomic_write_bytes  # noqa: E402


def _save(fig, path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_predictions(predictions: pd.DataFrame, path, *, target: str, title: str | None = None) -> Path:
    """Real (red) vs predicted (blue), with any baseline columns as thin grey dashed lines."""
    fig, ax = plt.subplots(figsize=(10, 5))
    styles = ["--", ":", "-."]
    for i, name in enumerate(c for c in predictions.columns if c not in ("actual", "seqcast")):
        ax.plot(predictions.index, predictions[name], styles[i % 3], color="0.55", lw=1, label=f"{name} (baseline)")
    ax.plot(predictions.index, predictions["actual"], color="red", lw=2, marker="o", ms=3, label=f"Real {target}")
    ax.plot(predictions.index, predictions["seqcast"], color="blue", lw=2, marker="o", ms=3, label=f"Predicted {target}")
    ax.set_title(title or f"{target}: real vs predicted")
    ax.set_xlabel("Date")
    ax.set_ylabel(target)
    if isinstance(predictions.index, pd.DatetimeIndex):
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
        fig.autofmt_xdate()
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_loss(history, path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = range(1, len(history.loss) + 1)
    ax.plot(epochs, history.loss, label="training loss")
    if history.val_loss:
        ax.plot(epochs, history.val_loss, label="validation loss")
    ax.set_yscale("log")
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Loss (scaled units)")
    ax.set_title("Loss per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)
