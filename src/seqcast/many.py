"""Backtest many series at once: one walk-forward backtest per series, in parallel, plus an aggregate.

The series come from a glob of CSV files (one series per file, named by the file's stem) or from
one long-format file with an id column (`unique_id, ds, y` or `Name, date, close`). Each series'
backtest runs in a joblib worker (or on a Dask cluster through joblib's dask backend) and writes
its own folder as soon as it ends, so only a small summary of each stays in memory.
"""

from __future__ import annotations

import glob
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from joblib import delayed
from sklearn.base import clone

from .artifacts import atomic_write_json, atomic_write_text
from .backtest import ALPHA, MODEL, Leaderboard, walk_forward
from .data import load_csv, load_long_csv, sniff_delimiter
from .errors import ConfigError, DataError, SeqcastError
from .parallel import check_jobs
from .tuning import parallel_unordered

# Column names that mark a long-format file, matched case-insensitively, first match wins.
ID_COLUMNS = ("unique_id", "id", "name", "symbol", "ticker", "series")
GLOB_CHARS = "*?["
# backtest_many rewrites the aggregate files while series end at most once per AGGREGATE_SECONDS
# and once per AGGREGATE_COST_FACTOR times the last rewrite's own time.
AGGREGATE_SECONDS = 1.0
AGGREGATE_COST_FACTOR = 20


@dataclass
class SeriesResult:
    """What one series' backtest leaves in memory: its leaderboard and summary, or the error it hit."""

    name: str
    out_dir: str
    board: Leaderboard | None = None
    interval: dict | None = None
    n_predictions: int = 0
    period: str = ""
    seconds: float = 0.0
    error: str | None = None

    def row(self) -> dict:
        """One row of aggregate.csv: the model's RMSE, the best baseline's, the skill and the DM verdict."""
        row = {"series": self.name, "n_predictions": self.n_predictions, "period": self.period, "seconds": round(self.seconds, 3)}
        if self.board is None:
            return row | {"error": self.error}
        table, best = self.board.table, self.board.best_baseline
        model_rmse, best_rmse = float(table.loc[MODEL, "rmse"]), float(table.loc[best, "rmse"])
        p = float(table.loc[MODEL, "dm_p"])
        row |= {
            "rmse": model_rmse,
            "best_baseline": best,
            "best_baseline_rmse": best_rmse,
            "skill": 1 - model_rmse / best_rmse if best_rmse > 0 else float("nan"),
            "dm_p": p,
            "beats_best": model_rmse < best_rmse,
            "beats_best_significantly": model_rmse < best_rmse and math.isfinite(p) and p < ALPHA,
        }
        if self.interval:
            row |= {"coverage": self.interval["coverage"], "mean_width": self.interval["mean_width"]}
        return row | {"error": None}


@dataclass
class ManyBacktest:
    """Every series' result, in series order, and the aggregate over the series that ran."""

    results: list[SeriesResult]
    table: pd.DataFrame  # one row per series (SeriesResult.row)
    summary: dict  # aggregate()


def is_many(spec, id_column: str | None = None) -> bool:
    """Whether `spec` names several series: a glob pattern, or a CSV with an id column."""
    text = os.fspath(spec)
    if any(c in text for c in GLOB_CHARS):
        return True
    return id_column is not None or (Path(text).is_file() and _id_column(_header(text), None, text) is not None)


def _header(path: str) -> list[str]:
    """The first line's column names; none for a file that is not UTF-8 text (load_csv then says so)."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            first = fh.readline()
    except (OSError, UnicodeDecodeError):
        return []
    delimiter = sniff_delimiter(first)
    return [c.strip() for c in first.rstrip("\r\n").split(delimiter)]


def _id_column(columns: list[str], id_column: str | None, source: str) -> str | None:
    folded = {c.casefold(): c for c in columns}
    if id_column is not None:
        if id_column.casefold() not in folded:
            raise DataError(f"{source} has no column {id_column!r} for --id-column; columns: {', '.join(columns)}")
        return folded[id_column.casefold()]
    return next((folded[name] for name in ID_COLUMNS if name in folded), None)


def find_series(spec, *, target: str | None = None, id_column: str | None = None, adjust_splits: bool = False) -> dict:
    """The series `spec` names, by name: CSV paths for a glob (workers read their own file), validated
    frames for a long-format file (one per id, errors naming the file's own row numbers)."""
    text = os.fspath(spec)
    if any(c in text for c in GLOB_CHARS):
        paths = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
        if not paths:
            raise DataError(f"no file matches {text!r}: check the pattern (quote it so the shell leaves it alone)")
        names: dict[str, Path] = {}
        for path in paths:
            if path.stem in names:
                raise DataError(f"{names[path.stem]} and {path} would both be series {path.stem!r}: rename one")
            names[path.stem] = path
        return names
    column, frames = load_long_csv(
        text, lambda columns: _id_column(columns, id_column, text), target=target, adjust_splits=adjust_splits
    )
    if column is None:
        raise DataError(
            f"{text} has no id column ({', '.join(ID_COLUMNS)}): name it with --id-column, or give a glob of files"
        )
    return frames


def backtest_series(
    name: str, source, forecaster, *, out_dir, target: str | None = None, adjust_splits: bool = False, **walk
) -> SeriesResult:
    """One series' walk-forward backtest, written to out_dir (backtest.csv, leaderboard.*, folds.csv).

    Data or configuration problems of this series are kept in the result, so the others still run.
    """
    began = time.perf_counter()
    out_dir = Path(out_dir)
    try:
        if isinstance(source, (str, Path)):
            frame = load_csv(source, target=target, adjust_splits=adjust_splits)
        else:
            # The backtest on a copy of its own, values, index and columns: pandas keeps lookup
            # tables (~30 KiB for 1,000 dates) on the index it works on, and a copy-on-write
            # reference for every view taken of the values or of either axis (~220 per series
            # here, left below pandas' clean-up threshold), which on the caller's frame stayed as
            # long as the frame did: ~100 KiB per series of a long-format file.
            frame = source.copy(deep=True)
            frame.index = source.index.copy(deep=True)
            frame.columns = source.columns.copy(deep=True)  # copy(deep=True) shares both axes' bookkeeping
        result = walk_forward(clone(forecaster), frame, out_dir=out_dir, **walk)
        result.write(out_dir, info={"series": name, "data": str(frame.attrs.get("source", name))})
    except SeqcastError as exc:
        return SeriesResult(name=name, out_dir=str(out_dir), seconds=time.perf_counter() - began, error=str(exc))
    index = result.predictions.index
    return SeriesResult(
        name=name,
        out_dir=str(out_dir),
        board=result.board,
        interval=result.interval,
        n_predictions=int(result.predictions[MODEL].notna().sum()),
        period=f"{index[0].date()}..{index[-1].date()}",
        seconds=time.perf_counter() - began,
    )


def aggregate(table: pd.DataFrame) -> dict:
    """Mean skill (1 − RMSE model / RMSE best baseline) and how many series beat their best baseline."""
    ok = table[table["error"].isna()] if "error" in table else table
    summary = {
        "n_series": int(len(table)),
        "n_failed": int(len(table) - len(ok)),
        "alpha": ALPHA,
    }
    if len(ok):
        skill = ok["skill"].astype(float)
        summary |= {
            "mean_skill": float(skill.mean()),
            "median_skill": float(skill.median()),
            "n_beat_best_baseline": int(ok["beats_best"].astype(bool).sum()),
            "n_beat_significantly": int(ok["beats_best_significantly"].astype(bool).sum()),
        }
        if "coverage" in ok:
            summary["mean_coverage"] = float(ok["coverage"].astype(float).mean())
    return summary


def backtest_many(
    series: dict,
    forecaster,
    *,
    out_dir,
    jobs: int = 1,
    scheduler: str | None = None,
    target: str | None = None,
    adjust_splits: bool = False,
    on_series: Callable[[SeriesResult], None] | None = None,
    **walk,
) -> ManyBacktest:
    """Backtest every series of `series` (name -> CSV path or frame) in parallel; write
    out_dir/<name>/ per series and out_dir/aggregate.csv + aggregate.json (rewritten as series end,
    at most once per :data:`AGGREGATE_SECONDS`, and complete at the end).

    `walk` goes to :func:`seqcast.backtest.walk_forward` (folds, start, refit_every, window, period).
    """
    if not series:
        raise DataError("no series to backtest")
    check_jobs(jobs, "jobs (--jobs)")
    out_dir = Path(out_dir)
    folders = {name: _folder(name) for name in series}
    if len(set(folders.values())) < len(folders):
        raise ConfigError(f"two series names map to the same folder name: {sorted(folders)}; rename one")
    for name, folder in folders.items():  # before any work: the aggregate files are written last
        if folder.casefold() in ("aggregate.csv", "aggregate.json"):
            raise ConfigError(f"series {name!r} would get the folder {folder}, the name of an aggregate file: rename it")
    tasks = (
        delayed(backtest_series)(name, source, forecaster, out_dir=out_dir / folders[name], target=target,
                                 adjust_splits=adjust_splits, **walk)
        for name, source in series.items()
    )
    done: dict[str, SeriesResult] = {}
    # Each series' aggregate row is computed once: every .loc on a leaderboard leaves pandas
    # copy-on-write references behind, so recomputing all rows after each series grew memory
    # with the square of the series count (+99 MiB instead of +68 MiB at 500 series,
    # benchmarks/many_series.py).
    rows: dict[str, dict] = {}
    written, cost = -math.inf, 0.0  # when the aggregate was last written, and how long that took
    for result in parallel_unordered(tasks, jobs=jobs, scheduler=scheduler):
        done[result.name] = result
        rows[result.name] = result.row()
        # Rewritten as series end, but not after every one: each write takes time in proportion
        # to the series done so far, so writing after every series took time growing with the
        # square of the series count.
        if time.monotonic() - written >= max(AGGREGATE_SECONDS, AGGREGATE_COST_FACTOR * cost):
            began = time.monotonic()
            _write_aggregate(out_dir, [rows[n] for n in series if n in rows])
            written = time.monotonic()
            cost = written - began
        if on_series is not None:
            on_series(result)
    results = [done[name] for name in series]
    table, summary = _write_aggregate(out_dir, [rows[name] for name in series])
    return ManyBacktest(results=results, table=table, summary=summary)


def _folder(name: str) -> str:
    """A folder name for a series: its name with path separators and leading dots made harmless."""
    safe = "".join(c if c.isalnum() or c in "-_.=+" else "_" for c in name).lstrip(".")
    if not safe:
        raise ConfigError(f"series name {name!r} cannot name a folder")
    return safe


def _write_aggregate(out_dir: Path, rows: list[dict]) -> tuple[pd.DataFrame, dict]:
    table = pd.DataFrame(rows).set_index("series")
    summary = aggregate(table)
    atomic_write_text(out_dir / "aggregate.csv", table.to_csv(float_format="%.6g"))
    records = [{k: _plain(v) for k, v in row.items()} for row in table.reset_index().to_dict(orient="records")]
    atomic_write_json(out_dir / "aggregate.json", {"kind": "backtest-many", **summary, "series": records})
    return table, summary


def _plain(value):
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
