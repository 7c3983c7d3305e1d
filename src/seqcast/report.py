"""Everything a run leaves on disk, and the self-contained HTML report built from those files.

The report is rebuilt from the files alone (`seqcast report RUN_DIR`), so what it shows is exactly
what the run folder holds. It embeds every figure as a base64 PNG and loads nothing from the network:
it opens offline, from an e-mail attachment or a CI artifact.
"""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from . import __version__
from .artifacts import atomic_write_json, atomic_write_text
from .backtest import MODEL, Holdout, plain_params, wide_predictions
from .errors import ArtifactError, SeqcastError
from .plots import (
    plot_backtest,
    plot_fold_losses,
    plot_fold_rmse,
    plot_loss,
    plot_member_losses,
    plot_predictions,
    plot_residuals,
)
from .training import History


def write_run(out_dir, holdout: Holdout, forecaster, *, info: dict | None = None) -> dict[str, Path]:
    """Write predictions.csv, metrics.json, plot.png, loss.png, residuals.png and model/ into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = holdout.predictions.rename(columns={MODEL: "predicted"})
    if holdout.intervals is not None:
        frame = frame.join(holdout.intervals)
    frame.index.name = "date"
    paths = {
        "predictions": atomic_write_text(out_dir / "predictions.csv", frame.to_csv(float_format="%.6f")),
        "metrics": atomic_write_json(out_dir / "metrics.json", run_summary(holdout, forecaster, info)),
    }
    paths.update(
        _run_figures(
            out_dir, holdout.predictions, holdout.target, holdout.best_baseline(), member_histories(forecaster),
            band=holdout.intervals, level=(holdout.interval or {}).get("level"),
        )
    )
    forecaster.save(out_dir / "model")
    paths["model"] = out_dir / "model"
    return paths


def run_summary(holdout: Holdout, forecaster, info: dict | None = None) -> dict:
    return {
        "kind": "run",
        "target": holdout.target,
        "period": _period(holdout.predictions.index),
        "n_predictions": int(holdout.predictions[MODEL].notna().sum()),
        "metrics": holdout.metrics,
        "best_baseline": holdout.best_baseline(),
        "verdict": holdout.verdict(),
        "leaderboard": holdout.board.to_dict(),
        **({"interval": holdout.interval} if holdout.interval else {}),
        "params": plain_params(forecaster),
        **_training_summary(forecaster),
        **horizon_scores(holdout),
        **(info or {}),
    }


def member_histories(forecaster) -> list[History]:
    """One History per trained model: an ensemble's members, else the model's own."""
    members = getattr(forecaster, "members_", None)
    return [m.history_ for m in members] if members else [forecaster.history_]


def _training_summary(forecaster) -> dict:
    """train_seconds, final_loss and history; an ensemble adds every member's history and sums their seconds.

    `history` and `final_loss` stay those of the first member so that readers of a single model's
    metrics.json read an ensemble's too.
    """
    histories = member_histories(forecaster)
    first = histories[0]
    doc = {
        "train_seconds": float(sum(sum(h.epoch_seconds) for h in histories)),
        "final_loss": first.loss[-1] if first.loss else None,
        "history": first.to_dict(),
    }
    if hasattr(forecaster, "members_"):
        doc["histories"] = [h.to_dict() for h in histories]
    return doc


def horizon_scores(holdout: Holdout) -> dict:
    """{"horizon_scores": {"h1": {"rmse", "mae", "n"}, ...}} for a multi-step model, else {}."""
    if holdout.horizon_scores is None:
        return {}
    return {
        "horizon_scores": {
            step: {"rmse": _number(row["rmse"]), "mae": _number(row["mae"]), "n": int(row["n"])}
            for step, row in holdout.horizon_scores.iterrows()
        }
    }


def _number(value) -> float | None:
    value = float(value)
    return value if value == value else None


def _run_figures(
    out_dir: Path, predictions: pd.DataFrame, target: str, best: str, histories: list[History],
    *, band: pd.DataFrame | None = None, level: float | None = None,
) -> dict[str, Path]:
    """`histories`: one per trained model; more than one (an ensemble) draws every member's curve."""
    loss = (
        plot_loss(histories[0], out_dir / "loss.png")
        if len(histories) == 1
        else plot_member_losses(histories, out_dir / "loss.png")
    )
    return {
        "plot": plot_predictions(
            predictions, out_dir / "plot.png", target=target, title=f"{target}: real vs predicted ({_period(predictions.index)})",
            band=band, level=level,
        ),
        "loss": loss,
        "residuals": plot_residuals(predictions, out_dir / "residuals.png", target=target, baseline=best),
    }


def _backtest_figures(
    out_dir: Path, predictions: pd.DataFrame, target: str, best: str, folds: list[dict],
    *, band: pd.DataFrame | None = None, level: float | None = None,
) -> dict[str, Path]:
    names = [c for c in predictions.columns if c not in ("fold", "actual")]
    errors = predictions[names].sub(predictions["actual"], axis=0) ** 2
    fold_rmse = errors.groupby(predictions["fold"]).mean() ** 0.5
    figures = {
        "backtest_plot": plot_backtest(
            predictions, out_dir / "backtest.png", target=target, baseline=best, band=band, level=level
        ),
        "residuals": plot_residuals(predictions, out_dir / "residuals.png", target=target, baseline=best),
        "fold_rmse": plot_fold_rmse(fold_rmse, out_dir / "folds.png"),
    }
    if any(fold.get("loss") for fold in folds):
        figures["loss"] = plot_fold_losses(folds, out_dir / "loss.png")
    return figures


def _period(index) -> str:
    first, last = index[0], index[-1]
    fmt = (lambda t: t.date().isoformat()) if hasattr(first, "date") else str
    return f"{fmt(first)}..{fmt(last)}"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot read it ({exc}); rerun the command that wrote it") from exc


def _read_table(path: Path, columns: list[str], numeric: list[str]) -> pd.DataFrame:
    """A CSV that `run` or `backtest` wrote, with its ``date`` column parsed, checked before any
    figure is drawn from it: the columns, at least one row, dates and numbers. A damaged file is an
    ArtifactError naming it (it used to surface as a pandas traceback from deep in a plot)."""
    try:
        table = pd.read_csv(path, parse_dates=["date"])
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:  # EmptyDataError is a ValueError
        raise ArtifactError(f"{path}: cannot read it ({exc}); rerun the command that wrote it") from None
    missing = [c for c in columns if c not in table.columns]
    bad = [c for c in numeric if c in table.columns and not pd.api.types.is_numeric_dtype(table[c])]
    if missing:
        problem = f"it has no column {', '.join(missing)}"
    elif table.empty:
        problem = "it has no rows"
    elif not pd.api.types.is_datetime64_any_dtype(table["date"]) or table["date"].isna().any():
        problem = "a date in it does not parse"
    elif bad:
        problem = f"column {bad[0]} holds something that is not a number"
    else:
        return table
    raise ArtifactError(f"{path}: {problem}; rerun the command that wrote it")


def _require(doc: dict, keys: tuple[str, ...], path: Path) -> None:
    missing = [k for k in keys if k not in doc]
    if missing:
        raise ArtifactError(f"{path} has no {', '.join(missing)}: rerun the command that wrote it")


def _require_columns(table: pd.DataFrame, names: list[str], path: Path) -> None:
    missing = [n for n in names if n not in table.columns]
    if missing:
        raise ArtifactError(f"{path} has no predictions of {', '.join(missing)}: rerun the command that wrote it")


def write_report(run_dir) -> Path:
    """Rebuild the figures and report.html of a run folder (written by `run`) or backtest folder."""
    run_dir = Path(run_dir)
    try:
        return _write_report(run_dir)
    except SeqcastError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # The folder's JSON and CSV files are seqcast's own; one damaged or edited into another
        # layout (a list where a number was, a key removed) fails somewhere in the figures or the
        # page. The CSVs are checked field by field above (_read_table); the JSON documents, nested
        # and version-dependent, are not, so their failures are named here instead of a traceback.
        raise ArtifactError(
            f"{run_dir}: its files are not laid out as seqcast writes them ({type(exc).__name__}: {exc}); "
            "rerun the command that wrote the folder"
        ) from exc


def _write_report(run_dir: Path) -> Path:
    if (run_dir / "leaderboard.json").is_file() and (run_dir / "backtest.csv").is_file():
        doc = _read_json(run_dir / "leaderboard.json")
        _require(doc, ("target", "best_baseline"), run_dir / "leaderboard.json")
        long = _read_table(run_dir / "backtest.csv", ["fold", "date", "model", "actual", "predicted"], ["fold", "actual", "predicted"])
        try:
            predictions = wide_predictions(long)
        except ValueError as exc:  # e.g. one model twice on one date
            raise ArtifactError(f"{run_dir / 'backtest.csv'}: cannot read it ({exc}); rerun the command that wrote it") from None
        _require_columns(predictions, [MODEL, doc["best_baseline"]], run_dir / "backtest.csv")
        board = doc
        band = None
        if (run_dir / "intervals.csv").is_file():
            band = _read_table(run_dir / "intervals.csv", ["date", "lower", "upper"], ["lower", "upper"])
            band = band.set_index("date")[["lower", "upper"]]
        figures = _backtest_figures(
            run_dir, predictions, doc["target"], doc["best_baseline"], doc.get("folds", []),
            band=band, level=(doc.get("interval") or {}).get("level"),
        )
        title = f"seqcast backtest: {doc['target']}, {doc.get('period', '')}"
        params = doc.get("settings", {}).get("model", {})
        settings = {k: v for k, v in doc.get("settings", {}).items() if k not in ("model", "baselines")}
    elif (run_dir / "metrics.json").is_file() and (run_dir / "predictions.csv").is_file():
        doc = _read_json(run_dir / "metrics.json")
        if "leaderboard" not in doc:
            raise ArtifactError(
                f"{run_dir / 'metrics.json'} has no leaderboard (written by an older seqcast): rerun seqcast run"
            )
        _require(doc, ("target", "best_baseline"), run_dir / "metrics.json")
        predictions = _read_table(run_dir / "predictions.csv", ["date", "actual", "predicted"], ["actual", "predicted"])
        predictions = predictions.set_index("date")
        _require_columns(predictions, [doc["best_baseline"]], run_dir / "predictions.csv")
        band = predictions[["lower", "upper"]] if {"lower", "upper"} <= set(predictions.columns) else None
        predictions = predictions.rename(columns={"predicted": MODEL}).drop(columns=["lower", "upper", "std"], errors="ignore")
        board = doc["leaderboard"]
        histories = [History.from_dict(h) for h in doc.get("histories") or [doc.get("history", {"loss": []})]]
        figures = _run_figures(
            run_dir, predictions, doc["target"], doc["best_baseline"], histories,
            band=band, level=(doc.get("interval") or {}).get("level"),
        )
        title = f"seqcast run: {doc['target']}, {doc.get('period', '')}"
        params = doc.get("params", {})
        settings = {}
    else:
        raise ArtifactError(
            f"{run_dir} holds neither a run (metrics.json + predictions.csv) nor a backtest "
            "(leaderboard.json + backtest.csv): give the folder written by seqcast run or seqcast backtest"
        )
    page = render_html(
        title=title,
        doc=doc,
        board=board,
        params=params,
        settings=settings,
        figures={name: path.read_bytes() for name, path in figures.items()},
    )
    return atomic_write_text(run_dir / "report.html", page)


_CAPTIONS = {
    "plot": "Real vs predicted, with the baselines",
    "backtest_plot": "Walk-forward predictions beside the best baseline",
    "residuals": "Residuals over time and their histogram",
    "loss": "Training / validation loss curves",
    "fold_rmse": "Backtest folds: RMSE per fold",
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}tr.model td{font-weight:bold;background:#eef4ff}
.verdict{padding:.7em 1em;border-radius:4px;font-weight:bold;margin:1em 0}
.bad{background:#fde8e8;border:1px solid #e0a0a0}.good{background:#e6f6e6;border:1px solid #9c9}
.warn{background:#fff6dd;border:1px solid #e6c96a;padding:.5em 1em;border-radius:4px}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.9em}
td.text{text-align:left}footer{color:#777;font-size:.8em;margin-top:2em}
"""


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _table(rows: list[dict], columns: list[str], *, highlight: str | None = None, text_columns=()) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cls = ' class="model"' if highlight is not None and row.get(columns[0]) == highlight else ""
        cells = "".join(
            f'<td{" class=text" if c in text_columns else ""}>{html.escape(_fmt(row.get(c)))}</td>' for c in columns
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(*, title: str, doc: dict, board: dict, params: dict, settings: dict, figures: dict[str, bytes]) -> str:
    """The report page: only inline CSS and data: images, no scripts, no external URL."""
    esc = html.escape
    verdict = board["verdict"]
    tone = "good" if verdict.startswith("seqcast is significantly better") else "bad"
    warnings = list(doc.get("warnings") or [])
    data_lines = [doc[k] for k in ("data", "test") if doc.get(k)]
    sections = [f"<h1>{esc(title)}</h1>", f'<div class="verdict {tone}">{esc(verdict)}</div>']
    sections.append("<h2>Data</h2><ul>" + "".join(f"<li>{esc(line)}</li>" for line in data_lines) + "</ul>")
    sections.append(
        f"<p>{esc(str(doc.get('n_predictions', '')))} predictions of <b>{esc(doc['target'])}</b> "
        f"over {esc(doc.get('period', ''))}.</p>"
    )
    if warnings:
        sections.append(
            '<div class="warn"><b>Validation warnings</b><ul>'
            + "".join(f"<li>{esc(w)}</li>" for w in warnings)
            + "</ul></div>"
        )
    else:
        sections.append("<p>No validation warnings.</p>")

    columns = ["model", "rmse", "mae", "mape", "smape", "mase", "r2", "direction", "lag", "dm_stat", "dm_p", "dm_p_abs", "verdict"]
    sections.append("<h2>Leaderboard</h2>")
    sections.append(
        "<p>MAPE, sMAPE and direction (share of rows whose predicted change has the sign of the real change) "
        "are percentages; lag is the shift k at which the prediction best matches the real series shifted "
        f"by k rows. DM: Diebold–Mariano test (HLN-corrected, squared loss; dm_p_abs: absolute loss) against "
        f"the best baseline, <b>{esc(board['best_baseline'])}</b>; significant when p &lt; {board.get('alpha', 0.05)}.</p>"
    )
    sections.append(_table(board["rows"], columns, highlight=MODEL, text_columns=("verdict",)))
    sections.append(f"<p>Lag diagnosis of seqcast: {esc(board.get('lag', ''))}.</p>")
    if board.get("comparisons"):
        sections.append("<h3>seqcast against every baseline (Diebold–Mariano)</h3>")
        sections.append(_table(board["comparisons"], ["baseline", "dm_stat", "dm_p", "dm_stat_abs", "dm_p_abs", "n"]))
    sections.append(_step_section(doc))
    sections.append(_interval_section(doc))

    for name in ("plot", "backtest_plot", "residuals", "loss", "fold_rmse"):
        if name in figures:
            if name == "fold_rmse":
                sections.append("<h2>Backtest folds</h2>")
                sections.append(_fold_table(doc.get("folds", [])))
            else:
                sections.append(f"<h2>{esc(_CAPTIONS[name])}</h2>")
            data = base64.b64encode(figures[name]).decode("ascii")
            sections.append(
                f'<figure><img alt="{esc(_CAPTIONS[name])}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(_CAPTIONS[name])}</figcaption></figure>"
            )

    config = {**settings, **params}
    sections.append("<h2>Configuration</h2>")
    sections.append(_table([{"parameter": k, "value": v} for k, v in config.items()], ["parameter", "value"], text_columns=("value",)))
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    sections.append(f"<footer>seqcast {esc(__version__)}, report written {esc(stamp)}</footer>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


def _interval_section(doc: dict) -> str:
    """An ensemble's prediction intervals: their level, the share of real values inside them, their width."""
    interval = doc.get("interval")
    if not interval:
        return ""
    row = {
        "level": f"{interval['level']:.0%}",
        "coverage": "n/a" if interval.get("coverage") is None else f"{interval['coverage']:.1%}",
        "mean width": interval.get("mean_width"),
        "n": interval.get("n"),
    }
    return (
        "<h2>Prediction intervals</h2><p>Split-conformal intervals of the ensemble's mean prediction (drawn as "
        "the light blue band). Coverage: share of the real values that fall inside their interval, to set "
        "beside the level; mean width in units of the target.</p>"
        + _table([row], ["level", "coverage", "mean width", "n"])
    )


def _step_section(doc: dict) -> str:
    """The per-step accuracy of a multi-step model: a run's holdout scores or a backtest's per-step table."""
    if doc.get("horizon_scores"):
        rows = [{"step": step, **scores} for step, scores in doc["horizon_scores"].items()]
        return (
            "<h2>Accuracy per horizon step</h2><p>Forecasts issued at each test row for the next steps; "
            "step hk is scored against the real value k - 1 rows later.</p>"
            + _table(rows, ["step", "rmse", "mae", "n"])
        )
    records = doc.get("per_step") or []
    if not records or max(r["step"] for r in records) < 2:
        return ""
    names = list(dict.fromkeys(r["model"] for r in records))
    rows = {}
    for r in records:
        row = rows.setdefault(r["step"], {"step": f"h{r['step']}", "n": r["n"], "best baseline": r.get("best_baseline")})
        row[f"RMSE {r['model']}"] = r["rmse"]
        if r["model"] == MODEL:
            row["DM p (seqcast)"] = r.get("dm_p")
    columns = ["step", "n", *[f"RMSE {n}" for n in names], "best baseline", "DM p (seqcast)"]
    return (
        "<h2>Accuracy per horizon step</h2><p>Every test row is a forecast origin; step hk is scored against "
        "the real value k - 1 rows later (the leaderboard above is step h1). DM p: seqcast against the "
        "step's best baseline, HLN-corrected for an h-step horizon.</p>"
        + _table(list(rows.values()), columns, text_columns=("best baseline",))
    )


def _fold_table(folds: list[dict]) -> str:
    if not folds:
        return ""
    names = list(folds[0].get("rmse", {}))
    rows = [
        {
            "fold": f["fold"],
            "train": f"{f['train_start']}..{f['train_end']} ({f['n_train']})",
            "test": f"{f['test_start']}..{f['test_end']} ({f['n_test']})",
            "seconds": f.get("seconds"),
            **{f"RMSE {n}": f["rmse"].get(n) for n in names},
        }
        for f in folds
    ]
    return _table(rows, ["fold", "train", "test", "seconds", *[f"RMSE {n}" for n in names]], text_columns=("train", "test"))
