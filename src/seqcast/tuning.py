"""Hyper-parameter search over time: walk-forward folds, grid or random search, joblib or a Dask cluster.

scikit-learn provides the folds (TimeSeriesSplit) and the candidates (ParameterGrid/ParameterSampler),
joblib the parallelism (and, through its "dask" backend, a Dask distributed cluster). What is written
here is the bookkeeping those do not do: one task per configuration, a results table rewritten
atomically as each configuration finishes, and resuming an interrupted search from that table.
"""

from __future__ import annotations

import hashlib
import json
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from joblib import Parallel, delayed, effective_n_jobs, parallel_config
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sklearn.model_selection import ParameterGrid, ParameterSampler, TimeSeriesSplit

from .artifacts import atomic_write_json, atomic_write_text
from .baselines import persistence
from .defaults import SCHEDULER_ENV, SCORINGS
from .errors import ConfigError, DataError
from .forecaster import Forecaster
from .metrics import METRICS
from .parallel import check_jobs, in_threads

RESULTS_FILE = "tuning.csv"
BEST_FILE = "best.json"
SEARCH_FILE = "search.json"
DASK_CONNECT_TIMEOUT = "10s"
# Parameters that change how a run is shown or where it runs, never its result.
_NOT_TUNABLE = ("verbose", "device")


@dataclass
class TuningResult:
    """Every configuration × fold (`results`), and the configuration with the best mean score."""

    results: pd.DataFrame
    summary: pd.DataFrame  # one row per configuration, best first
    best_params: dict
    scoring: str
    n_configs: int
    n_resumed: int

    @property
    def best_score(self) -> float:
        return float(self.summary[f"mean_{self.scoring}"].iloc[0])


def load_grid(path) -> dict[str, list]:
    """Read a TOML grid: each key a Forecaster parameter, each value a non-empty list of settings."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} does not exist: give a TOML grid such as examples/seed_grid.toml") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}): write one key per line, e.g. units = [50, 100]") from exc
    return check_grid(doc, source=str(path))


def check_grid(grid: Mapping, *, source: str = "the grid") -> dict[str, list]:
    defaults = Forecaster().get_params()
    known = set(defaults) - set(_NOT_TUNABLE)
    checked = {}
    for name, values in grid.items():
        if name not in known:
            raise ConfigError(
                f"{source}: {name!r} is not a tunable Forecaster parameter; use one of {', '.join(sorted(known))}"
            )
        if not isinstance(values, list) or not values:
            # the value itself in a list, or for an empty list the default (TOML writes it as JSON does)
            example = values if not isinstance(values, list) else defaults[name]
            shown = json.dumps(example) if isinstance(example, (bool, int, float, str)) else "..."
            raise ConfigError(f"{source}: {name} must be a non-empty list of values, e.g. {name} = [{shown}]")
        checked[name] = values
    if not checked:
        raise ConfigError(f"{source} is empty: give at least one parameter with a list of values")
    return checked


def candidates(grid: Mapping, *, search: str = "grid", n_iter: int = 10, seed: int = 0) -> list[dict]:
    """The configurations to try: every combination, or `n_iter` of them drawn with `seed`."""
    full = ParameterGrid(dict(grid))
    if search == "grid":
        return [dict(p) for p in full]
    if search == "random":
        if not isinstance(n_iter, int) or n_iter < 1:
            raise ConfigError(f"--n-iter must be a whole number of at least 1, got {n_iter!r}")
        # All values are lists, so ParameterSampler draws without replacement; more draws than
        # combinations would only warn and return them all.
        return [dict(p) for p in ParameterSampler(dict(grid), n_iter=min(n_iter, len(full)), random_state=seed)]
    raise ConfigError(f"search must be 'grid' or 'random', got {search!r}")


def walk_forward_folds(n_rows: int, n_folds: int, *, test_size: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, test rows) pairs: each fold trains on everything before its test rows."""
    if not isinstance(n_folds, int) or n_folds < 1:
        raise ConfigError(f"--folds must be a whole number of at least 1, got {n_folds!r}")
    if test_size is not None and (isinstance(test_size, bool) or not isinstance(test_size, int) or test_size < 1):
        raise ConfigError(f"--test-size must be a whole number of rows of at least 1, got {test_size!r}")
    # TimeSeriesSplit needs at least 2 splits; one fold is its last split alone.
    splits = max(n_folds, 2)
    if test_size is not None and splits * test_size >= n_rows:
        raise ConfigError(
            f"--folds {n_folds} with --test-size {test_size} needs more than {splits * test_size} rows and there "
            f"are {n_rows}: lower --test-size or --folds"
        )
    splitter = TimeSeriesSplit(n_splits=splits, test_size=test_size)
    try:
        folds = list(splitter.split(np.arange(n_rows)))
    except ValueError as exc:
        raise ConfigError(f"{n_rows} rows cannot make {n_folds} walk-forward folds ({exc}): use fewer --folds") from exc
    return folds[-n_folds:]


def evaluate_config(params: dict, frame: pd.DataFrame, folds: list[tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """Fit a fresh Forecaster on each fold's past and score its one-step predictions of the fold.

    Runs with one torch thread so that parallel workers do not oversubscribe the cores and every
    process sums in the same order: a local run and a cluster run on the same kind of CPU and the
    same library versions give bit-identical scores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = []
        for fold, (train_rows, test_rows) in enumerate(folds):
            train, test = frame.iloc[train_rows], frame.iloc[test_rows]
            started = time.perf_counter()
            model = Forecaster(**params).fit(train)
            predicted = model.predict(test)
            seconds = time.perf_counter() - started
            actual = test[model.target_]
            if predicted.isna().any():
                raise DataError(f"fold {fold}: {int(predicted.isna().sum())} test rows got no prediction")
            naive = persistence(model.target_).fit(train).predict(test)
            rows.append(
                {
                    "fold": fold,
                    "train_rows": len(train),
                    "test_start": _date(test.index[0]),
                    "test_end": _date(test.index[-1]),
                    **{name: fn(actual, predicted) for name, fn in METRICS.items()},
                    "persistence_rmse": METRICS["rmse"](actual, naive),
                    "seconds": round(seconds, 3),
                }
            )
        return rows
    finally:
        torch.set_num_threads(threads)


def tune(
    frame: pd.DataFrame,
    grid: Mapping,
    *,
    out_dir,
    base_params: Mapping | None = None,
    search: str = "grid",
    n_iter: int = 10,
    seed: int = 0,
    folds: int = 5,
    test_size: int | None = None,
    scoring: str = "rmse",
    jobs: int = 1,
    scheduler: str | None = None,
    force: bool = False,
    progress: bool = True,
    on_config: Callable[[int, int], None] | None = None,
) -> TuningResult:
    """Score every configuration of `grid` on walk-forward folds of `frame`; write tuning.csv and best.json.

    `base_params` are Forecaster parameters shared by every configuration; the grid's values override
    them. Each configuration runs as one joblib task (on `jobs` local processes, or on the Dask cluster
    at `scheduler`, e.g. "tcp://10.0.0.5:8786"; with `jobs` 1, as many at once in threads of this
    process as torch has threads) and its rows are written to `out_dir/tuning.csv` as soon as it
    finishes. Every fit runs on one torch thread, so the scores do not depend on where it ran. Run
    again with the same data and settings to resume: finished configurations are read back, not
    redone. `on_config(done, total)` is called after each configuration.
    """
    if scoring not in SCORINGS:
        raise ConfigError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    check_jobs(jobs, "--jobs")
    grid = check_grid(grid)
    base = {**Forecaster().get_params(), **dict(base_params or {}), "verbose": 0}
    configs = [{**base, **c} for c in candidates(grid, search=search, n_iter=n_iter, seed=seed)]
    fold_rows = walk_forward_folds(len(frame), folds, test_size=test_size)
    _check_fold_length(frame, configs, len(fold_rows[0][0]), len(fold_rows))
    out_dir = Path(out_dir)
    signature = {
        "data_sha256": _fingerprint(frame),
        "rows": len(frame),
        "folds": [[int(tr[-1]) + 1, int(te[0]), int(te[-1]) + 1] for tr, te in fold_rows],
        "configs": [_key(c) for c in configs],
    }
    done_rows = _resume(out_dir, signature, force)
    done = {int(c) for c, n in done_rows.groupby("config").size().items() if n == len(fold_rows)} if len(done_rows) else set()
    rows = [r for r in done_rows.to_dict("records") if int(r["config"]) in done]
    atomic_write_json(out_dir / SEARCH_FILE, signature)
    tunable = list(grid)

    todo = [i for i in range(len(configs)) if i not in done]
    bar = Progress(
        TextColumn("configs"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[best]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not progress,
    )
    with bar:
        task = bar.add_task("tune", total=len(configs), completed=len(done), best=_best_text(rows, scoring, configs, tunable))
        for index, config_rows in _run(configs, todo, frame, fold_rows, jobs, scheduler):
            for r in config_rows:
                rows.append({"config": index, **{k: _cell(configs[index][k]) for k in tunable}, **r, "params": _key(configs[index])})
            _write_results(out_dir / RESULTS_FILE, rows, tunable)
            bar.update(task, advance=1, best=_best_text(rows, scoring, configs, tunable))
            if on_config is not None:
                on_config(len({r["config"] for r in rows}), len(configs))

    results = _table(rows, tunable)
    summary = summarize(results, scoring, tunable)
    best_index = int(summary.index[0])
    best = {
        "scoring": scoring,
        f"mean_{scoring}": float(summary[f"mean_{scoring}"].iloc[0]),
        "mean_persistence_rmse": float(summary["mean_persistence_rmse"].iloc[0]),
        "config": best_index,
        "params": configs[best_index],
        "grid": {k: configs[best_index][k] for k in tunable},
        "folds": results[results["config"] == best_index][["fold", "test_start", "test_end", *SCORINGS]].to_dict("records"),
        "n_configs": len(configs),
    }
    atomic_write_json(out_dir / BEST_FILE, best)
    return TuningResult(
        results=results,
        summary=summary,
        best_params=configs[best_index],
        scoring=scoring,
        n_configs=len(configs),
        n_resumed=len(done),
    )


def _check_fold_length(frame: pd.DataFrame, configs: list[dict], first_fold_rows: int, n_folds: int) -> None:
    """Refuse, before any training, a first fold shorter than some configuration's fit needs."""
    needs = [(*Forecaster(**c).rows_needed(frame), c) for c in configs]
    need, warmup, config = max(needs, key=lambda item: item[0])
    if first_fold_rows >= need:
        return
    warm = (
        f" plus {warmup} warm-up rows for the indicators ({config['features']})" if warmup else ""
    )
    shorter = ", shorter indicator windows (e.g. sma10 for sma20)" if warmup else ""
    raise ConfigError(
        f"the first of {n_folds} folds trains on {first_fold_rows} of {len(frame)} rows, but lookback "
        f"{config['lookback']} and horizon {config['horizon']}{warm} need at least {need}: use fewer --folds, "
        f"a smaller --test-size, a shorter --lookback{shorter} or more data"
    )


def summarize(results: pd.DataFrame, scoring: str, tunable: list[str]) -> pd.DataFrame:
    """Mean of each metric over the folds, one row per configuration, best (lowest `scoring`) first."""
    metrics = [*SCORINGS, "persistence_rmse", "seconds"]
    means = results.groupby("config")[metrics].mean().add_prefix("mean_")
    params = results.groupby("config")[tunable].first()
    return params.join(means).sort_values([f"mean_{scoring}"], kind="stable")


def refit_best(frame: pd.DataFrame, result: TuningResult, model_dir, *, replace: bool = False) -> Forecaster:
    """Train the best configuration on every row of `frame` and save it as a model folder
    (``replace`` as :meth:`Forecaster.save`'s)."""
    model = Forecaster(**result.best_params).fit(frame)
    model.save(model_dir, replace=replace)
    return model


def _run(configs, todo, frame, fold_rows, jobs, scheduler):
    """Yield (config index, rows) as configurations finish, locally or on a Dask cluster."""
    if not todo:
        return
    # With one local job, as many configurations at once as torch has threads, each in a thread of
    # its own: a configuration's fits run on one torch thread (evaluate_config) and oneDNN's kernels
    # release the GIL, so on 2 cores two fit side by side without the ~3.5 s a worker process takes
    # to start (8 small configurations × 3 folds: 7.3-10.3 s against 10.9-12.8 s one at a time, with
    # the same scores; benchmarks/README.md).
    at_once = configs_at_once(jobs, scheduler, configs)
    if at_once > 1:
        yield from in_threads([partial(_indexed, i, configs[i], frame, fold_rows) for i in todo], at_once)
        return
    yield from parallel_unordered(
        (delayed(_indexed)(i, configs[i], frame, fold_rows) for i in todo), jobs=jobs, scheduler=scheduler
    )


def configs_at_once(jobs, scheduler: str | None, configs: list[dict] | None = None) -> int:
    """How many configurations `tune` fits at once in this process (threads; see `_run`): one
    when a configuration sets its own `threads`, whose fits would then share the cores."""
    if scheduler is not None or effective_n_jobs(jobs) != 1 or any(c.get("threads") for c in configs or ()):
        return 1
    return torch.get_num_threads()


def parallel_unordered(tasks, *, jobs: int, scheduler: str | None):
    """Run joblib `delayed` tasks on `jobs` local processes, or on the Dask cluster at `scheduler`;
    yield each result as it finishes."""
    if scheduler is None:
        yield from Parallel(n_jobs=jobs, return_as="generator_unordered")(tasks)
        return
    client = dask_client(scheduler)
    try:
        with parallel_config(backend="dask"):
            yield from Parallel(n_jobs=-1, return_as="generator_unordered")(tasks)
    finally:
        client.close()


def _indexed(index: int, params: dict, frame: pd.DataFrame, fold_rows) -> tuple[int, list[dict]]:
    return index, evaluate_config(params, frame, fold_rows)


def dask_client(address: str):
    try:
        from dask.distributed import Client
    except ImportError as exc:
        raise ConfigError("--scheduler needs Dask: pip install 'seqcast[dask]'") from exc
    try:
        return Client(address, timeout=DASK_CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {address} ({exc}): start one with `dask scheduler` "
            f"and workers with `dask worker {address}`, or unset --scheduler/{SCHEDULER_ENV}"
        ) from exc


def _resume(out_dir: Path, signature: dict, force: bool) -> pd.DataFrame:
    results_path, search_path = out_dir / RESULTS_FILE, out_dir / SEARCH_FILE
    if force or not results_path.exists():
        return pd.DataFrame()
    previous = json.loads(search_path.read_text(encoding="utf-8")) if search_path.exists() else None
    if previous != signature:
        raise ConfigError(
            f"{results_path} holds a search of other data, folds or grid: choose another --out, "
            "or pass --force to start this search afresh there"
        )
    return pd.read_csv(results_path, keep_default_na=False, na_values=[""])


def _write_results(path: Path, rows: list[dict], tunable: list[str]) -> None:
    atomic_write_text(path, _table(rows, tunable).to_csv(index=False, float_format="%.10g"))


def _table(rows: list[dict], tunable: list[str]) -> pd.DataFrame:
    columns = ["config", *tunable, "fold", "train_rows", "test_start", "test_end", *SCORINGS, "persistence_rmse", "seconds", "params"]
    return pd.DataFrame(rows, columns=columns).sort_values(["config", "fold"], kind="stable").reset_index(drop=True)


def _best_text(rows: list[dict], scoring: str, configs: list[dict], tunable: list[str]) -> str:
    if not rows:
        return ""
    summary = summarize(_table(rows, tunable), scoring, tunable)
    shown = " ".join(f"{k}={summary[k].iloc[0]}" for k in tunable)
    return f"best {scoring} {summary[f'mean_{scoring}'].iloc[0]:.4g} ({shown})"


def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _cell(value):
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def _date(stamp) -> str:
    return stamp.date().isoformat() if hasattr(stamp, "date") and callable(stamp.date) else str(stamp)


def _fingerprint(frame: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    digest.update(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
    return digest.hexdigest()
