"""The forecast figure: recent history and the forecast past its last row.

Kept apart from plots.py while that module is being extended elsewhere; the two belong together
and can be merged (this one only adds :func:`plot_forecast`).
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .artifacts import atomic_write_bytes  # noqa: E402


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
    ax.set_title(title or f"{target}: {len(forecast)}-step forecast from {_show(forecast.index[0])}")
    ax.set_xlabel("Date")
    ax.set_ylabel(target)
    if isinstance(forecast.index, pd.DatetimeIndex):
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
        fig.autofmt_xdate()
    ax.grid(alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def _show(stamp) -> str:
    return stamp.date().isoformat() if hasattr(stamp, "date") else str(stamp)
