"""Everything a run leaves on disk: predictions, metrics, plots and the model folder."""

from __future__ import annotations

from pathlib import Path

from .artifacts import atomic_write_json, atomic_write_text
from .backtest import MODEL, Holdout
from .plots import plot_loss, plot_predictions


def write_run(out_dir, holdout: Holdout, forecaster, *, info: dict | None = None) -> dict[str, Path]:
    """Write predictions.csv, metrics.json, plot.png, loss.png and model/ into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = holdout.predictions.rename(columns={MODEL: "predicted"})
    frame.index.name = "date"
    paths = {
        "predictions": atomic_write_text(out_dir / "predictions.csv", frame.to_csv(float_format="%.6f")),
        "metrics": atomic_write_json(out_dir / "metrics.json", run_summary(holdout, forecaster, info)),
        "plot": plot_predictions(
            holdout.predictions,
            out_dir / "plot.png",
            target=holdout.target,
            title=f"{holdout.target}: real vs predicted ({_period(holdout)})",
        ),
        "loss": plot_loss(forecaster.history_, out_dir / "loss.png"),
    }
    forecaster.save(out_dir / "model")
    paths["model"] = out_dir / "model"
    return paths


def run_summary(holdout: Holdout, forecaster, info: dict | None = None) -> dict:
    return {
        "target": holdout.target,
        "period": _period(holdout),
        "n_predictions": int(holdout.predictions[MODEL].notna().sum()),
        "metrics": holdout.metrics,
        "best_baseline": holdout.best_baseline(),
        "verdict": holdout.verdict(),
        "params": forecaster.get_params(),
        "train_seconds": float(sum(forecaster.history_.epoch_seconds)),
        "final_loss": forecaster.history_.loss[-1] if forecaster.history_.loss else None,
        **(info or {}),
    }


def _period(holdout: Holdout) -> str:
    index = holdout.predictions.index
    first, last = index[0], index[-1]
    fmt = (lambda t: t.date().isoformat()) if hasattr(first, "date") else str
    return f"{fmt(first)}..{fmt(last)}"
