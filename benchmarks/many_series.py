"""Peak memory and time of a many-series walk-forward backtest: does memory grow with the series count?

    PYTHONPATH=src python benchmarks/many_series.py [--series 50 500] [--rows 1000] [--folds 5] [--model linear-ar]

For each count N, a long-format CSV (unique_id, ds, y) of N synthetic random walks is written to a
temporary folder, and a fresh child process reads it with `many.find_series` and runs
`many.backtest_many` (one process, jobs=1, so every byte is in the measured process). The child
reports its peak RSS after the imports, after loading the series, and during the backtest (a
thread reads /proc/self/statm every 5 ms; getrusage's ru_maxrss cannot separate the stages
because it only grows), the size of what the backtest leaves in memory (the pickled
`ManyBacktest`), and the bytes and prediction rows it wrote to disk.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

PAGE = os.sysconf("SC_PAGE_SIZE")


def write_long_csv(path: Path, series: int, rows: int) -> None:
    rng = np.random.default_rng(0)
    dates = pd.bdate_range("2000-01-03", periods=rows).strftime("%Y-%m-%d")
    values = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (series, rows)), axis=1))
    frame = pd.DataFrame(
        {"unique_id": np.repeat([f"s{i:04d}" for i in range(series)], rows), "ds": np.tile(dates, series), "y": values.ravel()}
    )
    frame.to_csv(path, index=False, float_format="%.4f")


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE / 2**20


class PeakSampler:
    """The highest resident set size seen while the `with` block runs."""

    def __enter__(self):
        self.peak = rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())


def model_of(name: str):
    from seqcast.baselines import LinearAR
    from seqcast.forecaster import Forecaster

    if name == "linear-ar":
        return LinearAR(target="y", lookback=5)
    return Forecaster(target="y", lookback=5, layers=1, units=4, epochs=1, dropout=0.0, device="cpu", threads=1)


def child(path: str, out: str, model: str, folds: int) -> dict:
    from seqcast.many import backtest_many, find_series

    result = {"imports_mib": rss_mib()}
    started = time.perf_counter()
    series = find_series(path, target="y")
    result["load_seconds"] = time.perf_counter() - started
    result["after_load_mib"] = rss_mib()
    result["data_mib"] = sum(f.memory_usage(deep=True).sum() for f in series.values()) / 2**20
    started = time.perf_counter()
    with PeakSampler() as sampler:
        many = backtest_many(series, model_of(model), out_dir=out, target="y", folds=folds)
    result["backtest_seconds"] = time.perf_counter() - started
    result["backtest_peak_mib"] = sampler.peak
    result["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["kept_kib"] = len(pickle.dumps(many)) / 2**10
    result["n_failed"] = many.summary["n_failed"]
    result["n_predictions"] = int(many.table["n_predictions"].sum())
    files = [p for p in Path(out).rglob("*") if p.is_file()]
    result["disk_mib"] = sum(p.stat().st_size for p in files) / 2**20
    result["backtest_csv_rows"] = sum(
        sum(1 for _ in p.open()) - 1 for p in files if p.name == "backtest.csv"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--rows", type=int, default=1000, help="rows per series")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--model", choices=("linear-ar", "forecaster"), default="linear-ar")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.model, args.folds)))
        return
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}; model {args.model}, "
        f"{args.rows} rows per series, {args.folds} folds, jobs=1"
    )
    for n in args.series:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "long.csv"
            write_long_csv(path, n, args.rows)
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(path), str(Path(tmp) / "out"), "--model", args.model,
                 "--folds", str(args.folds)],
                capture_output=True, text=True, env=os.environ, check=True,
            )
            r = json.loads(proc.stdout)
            print(
                f"{n:5d} series ({path.stat().st_size / 2**20:5.1f} MiB CSV): load {r['load_seconds']:5.1f} s, "
                f"backtest {r['backtest_seconds']:6.1f} s; RSS imports {r['imports_mib']:.0f} MiB, "
                f"after load {r['after_load_mib']:.0f} MiB (frames {r['data_mib']:.1f} MiB), "
                f"backtest peak {r['backtest_peak_mib']:.0f} MiB (+{r['backtest_peak_mib'] - r['after_load_mib']:.0f}), "
                f"ru_maxrss {r['ru_maxrss_mib']:.0f} MiB; kept in memory {r['kept_kib']:.0f} KiB; "
                f"on disk {r['disk_mib']:.1f} MiB, {r['backtest_csv_rows']:,} backtest.csv rows "
                f"({r['n_predictions']:,} model predictions, {r['n_failed']} failed)"
            )


if __name__ == "__main__":
    main()
