"""Accuracy study: January 2017 Open of the bundled Google files, split-adjusted, against the baselines.

Not a timed test: run it by hand (a few seconds to a minute per run on 2 shared CPU cores),

    PYTHONPATH=src python benchmarks/accuracy.py                 # every configuration below
    PYTHONPATH=src python benchmarks/accuracy.py indicators      # only the named ones

Each configuration is trained with seeds 0-4 on 2012-2016 and predicts every January 2017 day from
the days before it; the table gives the RMSE per seed beside last-close (yesterday's Close) and
persistence (yesterday's Open).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from seqcast import Forecaster, datasets, load_csv
from seqcast.backtest import evaluate_holdout
from seqcast.forecaster import PRESETS

SEEDS = range(5)
SMALL = dict(lookback=20, layers=1, units=32, dropout=0.0, epochs=30, batch_size=32, device="cpu")
CONFIGS = {
    "small-level": dict(SMALL),
    "open-close-diff": dict(SMALL, features="Open,Close", target_transform="diff"),
    "body-logret": dict(SMALL, features="Open,Close,body", target_transform="logret", epochs=100),
    "body-rsi-diff": dict(SMALL, features="Open,Close,body,logret,rsi14", target_transform="diff", epochs=100),
    "indicators": dict(PRESETS["indicators"], device="cpu"),
}


def main(names: list[str]) -> None:
    # Small models gain nothing from a second thread and the machine may be shared.
    torch.set_num_threads(1)
    train = load_csv(datasets.GOOGLE_TRAIN, adjust_splits=True)
    test = load_csv(datasets.GOOGLE_TEST, adjust_splits=True)
    baselines = None
    for name in names or list(CONFIGS):
        params = CONFIGS[name]
        scores, started = [], time.perf_counter()
        for seed in SEEDS:
            holdout = evaluate_holdout(Forecaster(**params, seed=seed), train, test)
            scores.append(holdout.metrics["seqcast"]["rmse"])
            print(f"  {name} seed {seed}: {scores[-1]:.2f}", file=sys.stderr, flush=True)
            baselines = {k: v["rmse"] for k, v in holdout.metrics.items() if k != "seqcast"}
        seconds = (time.perf_counter() - started) / len(scores)
        per_seed = "  ".join(f"{s:6.2f}" for s in scores)
        print(f"{name:18s} RMSE by seed {per_seed}   mean {np.mean(scores):5.2f}   ({seconds:.0f} s/run)", flush=True)
    print("baselines          " + "  ".join(f"{k} {v:.2f}" for k, v in baselines.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"configurations to run (default: all): {', '.join(CONFIGS)}")
    names = parser.parse_args().names
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    main(names)
