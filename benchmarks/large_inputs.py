"""Peak memory and time of loading, validating and windowing a 1,000,000-row price CSV.

    PYTHONPATH=src python benchmarks/large_inputs.py [--rows 1000000] [--lookback 60]

Each stage runs in a fresh child process so that its peak RSS (getrusage ru_maxrss, which only
grows) belongs to that stage alone: "whole text" loads and validates the file the way the loader
did before it streamed plain files in blocks, "load+validate" the way it does now, "windows" then
scales the four prices and cuts lookback windows. The numbers go to docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ("Open", "High", "Low", "Close")


def write_csv(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, rows)))
    # Minute bars from 1990 on: a million distinct timestamps.
    frame = pd.DataFrame(
        {
            "Date": pd.date_range("1990-01-01", periods=rows, freq="min").strftime("%Y-%m-%d %H:%M:%S"),
            "Open": close * (1 + rng.normal(0, 0.001, rows)),
            "High": close * 1.01,
            "Low": close * 0.99,
            "Close": close,
            "Volume": rng.integers(1_000, 10_000_000, rows),
        }
    )
    frame.to_csv(path, index=False, float_format="%.4f")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage(name: str, path: str, lookback: int) -> dict:
    import seqcast  # noqa: F401  (imports count towards the baseline, not the stage)
    import seqcast.data
    from seqcast.data import load_csv
    from seqcast.windows import fit_scaler, supervised_windows

    if name == "whole text":  # the loader before 2026-12-06: the file read whole by the C parser
        seqcast.data._read_plain_blocks = lambda source: None
    baseline = peak_mib()
    started = time.perf_counter()
    result: dict = {"stage": name}
    frame = load_csv(path, target="Open")
    result["rows"] = len(frame)
    result["data_mib"] = sum(frame[c].to_numpy().nbytes for c in frame.columns) / 2**20  # no copy
    if name == "windows":
        values = frame[list(COLUMNS)].to_numpy(dtype=np.float64)
        scaled = fit_scaler(values).transform(values)
        X, y = supervised_windows(scaled, scaled[:, 0], lookback)
        result["windows"] = X.shape
        result["windows_if_copied_mib"] = X.size * X.itemsize / 2**20
        result["windows_share_memory"] = bool(np.shares_memory(X, scaled))
    result["seconds"] = time.perf_counter() - started
    result["baseline_mib"] = baseline
    result["peak_mib"] = peak_mib()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--lookback", type=int, default=60)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, args.path, args.lookback)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "large.csv"
        write_csv(path, args.rows)
        print(f"{args.rows:,} rows, {path.stat().st_size / 2**20:.1f} MiB CSV")
        for name in ("whole text", "load+validate", "windows"):
            proc = subprocess.run(
                [sys.executable, __file__, "--stage", name, "--path", str(path), "--lookback", str(args.lookback)],
                capture_output=True,
                text=True,
                env=os.environ,
                check=True,
            )
            r = json.loads(proc.stdout)
            line = (
                f"{name:14s} {r['seconds']:6.1f} s  peak RSS {r['peak_mib']:7.0f} MiB "
                f"(imports alone {r['baseline_mib']:.0f} MiB, stage +{r['peak_mib'] - r['baseline_mib']:.0f} MiB; "
                f"validated frame {r['data_mib']:.0f} MiB)"
            )
            if name == "windows":
                line += (
                    f"; windows {tuple(r['windows'])} are a view: {r['windows_share_memory']} "
                    f"(a copy would be {r['windows_if_copied_mib']:.0f} MiB)"
                )
            print(line)


if __name__ == "__main__":
    main()
