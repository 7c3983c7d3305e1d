"""What the command line shows before it imports the library: the Forecaster's parameter defaults,
its named presets and the tuning scores' names.

Nothing here imports torch, scikit-learn, pandas or matplotlib, whose imports take about 4 s on
the 2-core host: ``seqcast --help`` and an argument error answer in a fraction of a second, and
only a verb that runs imports the rest. ``Forecaster.__init__`` keeps its own literal defaults (the
scikit-learn contract reads them from its signature); a test holds the two equal.
"""

from __future__ import annotations

# Forecaster's parameters and their defaults, in its signature's order.
FORECASTER_DEFAULTS: dict[str, object] = {
    "target": "Open",
    "features": None,
    "lookback": 60,
    "horizon": 1,
    "target_transform": "level",
    "strategy": "direct",
    "same_day": None,
    "cell": "lstm",
    "layers": 4,
    "units": 50,
    "dropout": 0.2,
    "nonlinearity": "tanh",
    "epochs": 20,
    "batch_size": 64,
    "lr": 1e-3,
    "optimizer": "adam",
    "loss": "mse",
    "seed": 0,
    "shuffle": True,
    "clip_norm": None,
    "early_stopping": None,
    "val_fraction": 0.0,
    "device": "auto",
    "threads": None,
    "verbose": 0,
}

# Named bundles of Forecaster parameters: Forecaster(**PRESETS["indicators"]) or --preset indicators.
# "indicators" is the best of benchmarks/accuracy.py on the bundled Google files (split-adjusted):
# January 2017 Open RMSE 3.28-3.43 over seeds 0-4, against 3.52 for last-close. It works because the
# candle body (Close - Open) of the day before plus a diff target lets a small net learn "Open moves
# to about yesterday's Close", which a level target on min-max scaled prices hides.
PRESETS: dict[str, dict] = {
    "indicators": dict(
        features="Open,Close,body",
        target_transform="diff",
        lookback=20,
        layers=1,
        units=32,
        dropout=0.0,
        epochs=100,
        batch_size=32,
    ),
}

# The metrics a search can minimise (metrics.METRICS, in its order; a test holds them equal).
SCORINGS = ("rmse", "mae", "mape", "smape", "r2")

# The environment variable that names a Dask scheduler for `seqcast tune` and many-series backtests.
SCHEDULER_ENV = "SEQCAST_DASK_SCHEDULER"
