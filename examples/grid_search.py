"""The seed notes' GridSearchCV, done over time: scikit-learn's own search on walk-forward folds.

    python examples/grid_search.py                        # tiny grid, one process (about a minute)
    python examples/grid_search.py --jobs 2               # the same on 2 local processes
    python examples/grid_search.py --local-cluster 2      # the same on a 2-worker Dask LocalCluster
    python examples/grid_search.py --scheduler tcp://HOST:8786   # on an existing Dask cluster
    python examples/grid_search.py --full                 # the seed's grid: 32 configurations × 5 folds

The seed tuned with a shuffled K-fold, which trains on the future of each test fold. Here
TimeSeriesSplit trains every fold on its past only, and Forecaster predicts each test fold with the
tail of its training fold as context, so every test row is predicted and the standard scorer works.
"""

from __future__ import annotations

import argparse
import contextlib
import logging

import pandas as pd
import torch
from joblib import parallel_config
from sklearn.model_selection import GridSearchCV, TimeSeriesSplit

from seqcast import Forecaster, datasets, load_csv

# The grid of the seed's notes, plus the network's size.
FULL_GRID = {
    "batch_size": [25, 32],
    "epochs": [100, 500],
    "optimizer": ["adam", "rmsprop"],
    "units": [50, 100],
    "layers": [2, 4],
}
TINY_GRID = {"batch_size": [32, 64], "epochs": [1, 2], "optimizer": ["adam", "rmsprop"], "units": [8], "layers": [1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the seed's grid (hours on one machine)")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="local processes")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786")
    where.add_argument("--local-cluster", type=int, metavar="N", help="start a Dask LocalCluster of N workers")
    args = parser.parse_args()

    frame = load_csv(datasets.GOOGLE_TRAIN)
    grid = FULL_GRID if args.full else TINY_GRID
    estimator = Forecaster(target="Open", lookback=60, dropout=0.2 if args.full else 0.0, device="cpu", seed=0)
    search = GridSearchCV(
        estimator,
        grid,
        scoring="neg_mean_squared_error",
        cv=TimeSeriesSplit(n_splits=args.folds),
        n_jobs=args.jobs if args.scheduler is None and args.local_cluster is None else -1,
    )
    # One torch thread per fit, as Dask workers get by default: the same sums in the same order
    # everywhere, so the local and the cluster run give identical scores.
    torch.set_num_threads(1)
    with _backend(args):
        search.fit(frame, frame["Open"])

    results = pd.DataFrame(search.cv_results_)
    table = results[["rank_test_score", *(f"param_{k}" for k in grid), "mean_test_score", "std_test_score"]]
    table = table.assign(root_mean_mse=(-table["mean_test_score"]) ** 0.5).sort_values("rank_test_score")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("best", search.best_params_, f"mean MSE {-search.best_score_:.1f} (root {(-search.best_score_) ** 0.5:.3f})")


@contextlib.contextmanager
def _backend(args):
    if args.scheduler is None and args.local_cluster is None:
        yield
        return
    from dask.distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if args.local_cluster is not None:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=args.local_cluster, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR
                )
            )
            address = cluster.scheduler_address
        else:
            address = args.scheduler
        client = stack.enter_context(Client(address))
        print("dask", client.scheduler_info()["address"], f"{len(client.scheduler_info()['workers'])} workers")
        stack.enter_context(parallel_config(backend="dask"))
        yield


if __name__ == "__main__":
    main()
