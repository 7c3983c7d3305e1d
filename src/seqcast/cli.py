"""`seqcast` command line: argument parsing and printing only; every verb calls the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from . import __version__
from .defaults import FORECASTER_DEFAULTS, PRESETS, SCHEDULER_ENV, SCORINGS
from .errors import ConfigError, DataError, SeqcastError, TrainingInterrupted

if TYPE_CHECKING:
    from .forecaster import Forecaster

# The library (torch, scikit-learn, pandas, matplotlib: ~4 s of imports on the 2-core host) is
# imported inside the verbs that use it, so that --help and argument errors answer at once.

_MODEL_OPTIONS = (
    # (flag, Forecaster parameter, type, help)
    ("--lookback", "lookback", int, "rows of history in each input window"),
    ("--features", "features", str,
     "comma-separated inputs: columns (Close, Volume) and causal indicators (logret, ret, sma20, ema12, rsi14, "
     "macd, macd_signal, bb_pctb20, bb_width20, tr, atr14, range, body, gap, volz20, dow, month; "
     "'rsi14@Close' for another base column); default: the target alone"),
    ("--target-transform", "target_transform", str,
     "what the model learns: level, diff (change from the last known value) or logret; always mapped back to levels"),
    ("--horizon", "horizon", int, "steps ahead each forecast covers"),
    ("--strategy", "strategy", str, "direct (one output per step) or recursive (one step fed back)"),
    ("--same-day", "same_day", str,
     "columns whose value ON the predicted day is an input (e.g. Close to predict Open); off by default"),
    ("--cell", "cell", str, "recurrent cell: lstm, gru or rnn"),
    ("--nonlinearity", "nonlinearity", str, "activation of the rnn cell: tanh or relu"),
    ("--layers", "layers", int, "stacked recurrent layers"),
    ("--units", "units", int, "units per layer"),
    ("--dropout", "dropout", float, "dropout after every recurrent layer"),
    ("--epochs", "epochs", int, "training epochs"),
    ("--batch-size", "batch_size", int, "windows per optimizer step"),
    ("--lr", "lr", float, "learning rate"),
    ("--optimizer", "optimizer", str, "adam, rmsprop or sgd"),
    ("--loss", "loss", str, "mse, mae or huber"),
    ("--seed", "seed", int, "seeds numpy, torch and shuffling: same seed, same predictions"),
    ("--clip-norm", "clip_norm", float, "clip the gradient norm to this value"),
    ("--early-stopping", "early_stopping", int, "stop after this many epochs without improvement"),
    ("--val-fraction", "val_fraction", float, "last fraction of training windows held out for validation"),
    ("--device", "device", str, "auto, cpu or cuda"),
    ("--threads", "threads", int,
     "torch intra-op threads for training and prediction (None: torch's default); 1 is often fastest on a busy machine"),
)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """argparse's "(default: X)" after each option's help, except where it says nothing (None, a
    flag's False) or the help already states the default."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"seqcast: error: {message} (see '{self.prog} --help')\n")


def _data_options(p: argparse.ArgumentParser, *, data_required: bool) -> None:
    p.add_argument("--data", type=Path, required=data_required, help="CSV file with a date column and prices")
    p.add_argument("--target", default="Open", help="column to predict")
    p.add_argument("--adjust-splits", action="store_true", help="rescale rows before a detected split")


def _test_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--test", type=Path, help="CSV of the test period that follows --data")
    group.add_argument("--test-from", help="first date (YYYY-MM-DD) of --data used as the test period")


class _Given(argparse.Action):
    """Store the value and remember that the user gave it, so a --preset never overrides it."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given_ = getattr(namespace, "given_", frozenset()) | {self.dest}


def _model_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("model and training")
    group.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a named set of the options below (options given explicitly win): "
        + "; ".join(f"{name} = " + " ".join(f"{k}={v}" for k, v in params.items()) for name, params in PRESETS.items()),
    )
    for flag, param, kind, help_text in _MODEL_OPTIONS:
        group.add_argument(flag, dest=param, type=kind, default=FORECASTER_DEFAULTS[param], help=help_text, action=_Given)


def _ensemble_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("ensemble and intervals")
    group.add_argument(
        "--ensemble", type=int, metavar="K",
        help="train K models with seeds seed, seed+1, ... and predict their mean, with their spread and "
        "conformal prediction intervals",
    )
    group.add_argument("--interval", type=float, help="level of the ensemble's prediction intervals (default 0.9: "
                       "EnsembleForecaster's)")
    group.add_argument(
        "--calibration-fraction", type=float,
        help="last fraction of the training rows held out from the ensemble's fit to calibrate its intervals "
        "(default 0.2: EnsembleForecaster's)",
    )
    group.add_argument(
        "--ensemble-jobs", type=int, metavar="N",
        help="fit N members at a time, on one torch thread each: this process and N-1 worker processes "
        "(-1: one per core); pays for small models such as --preset indicators, not for the default 4x50 LSTM",
    )


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quiet", action="store_true",
        help="no progress bars (results, warnings and output paths still print; with --json, nothing but the JSON)",
    )
    p.add_argument("--json", action="store_true", help="print only a JSON result on stdout")
    p.add_argument("--force", action="store_true", help="replace outputs that already exist")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="seqcast",
        description="Train recurrent sequence models on time series CSVs and evaluate them honestly.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"seqcast {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)

    run = verbs.add_parser(
        "run",
        help="train, predict a test period, compare with baselines and write every output",
        formatter_class=_Formatter,
        description="Without --data, runs the seed experiment on the bundled Google files.",
    )
    _data_options(run, data_required=False)
    _test_options(run)
    run.add_argument("--out", type=Path, help="output folder (default: out/run-<timestamp>)")
    run.add_argument("--report", action="store_true", help="also write report.html")
    _model_options(run)
    _ensemble_options(run)
    _output_options(run)

    train = verbs.add_parser("train", help="train a model and save it", formatter_class=_Formatter)
    _data_options(train, data_required=True)
    _test_options(train)
    train.add_argument("--out", type=Path, required=True, help="model folder to write")
    _model_options(train)
    _ensemble_options(train)
    _output_options(train)
    checkpoints = train.add_argument_group("checkpoints (Ctrl-C always saves one)")
    checkpoints.add_argument(
        "--checkpoint-every", type=int, metavar="N", help="write a checkpoint every N epochs to OUT.checkpoint/"
    )
    checkpoints.add_argument(
        "--resume", type=Path, metavar="DIR", help="continue from the checkpoint in DIR (same data and settings)"
    )

    predict = verbs.add_parser("predict", help="predict every row that has enough history", formatter_class=_Formatter)
    predict.add_argument("--model", type=Path, required=True, help="model folder written by train or run")
    predict.add_argument("--data", type=Path, required=True, help="CSV with the model's input columns")
    predict.add_argument("--out", type=Path, required=True, help="predictions CSV to write")
    predict.add_argument("--adjust-splits", action="store_true", help="rescale rows before a detected split")
    _output_options(predict)

    forecast = verbs.add_parser(
        "forecast",
        help="forecast the dates after the last row, on the series' own calendar",
        formatter_class=_Formatter,
        description="Writes the forecast as CSV (date, step, forecast) and a plot of the history and the "
        "forecast. Dates continue the series' calendar: business days for weekday-only files, every day for "
        "series with weekend rows, the inferred frequency (e.g. month ends) otherwise.",
    )
    forecast.add_argument("--model", type=Path, required=True, help="model folder written by train or run")
    forecast.add_argument(
        "--data", type=Path, help="CSV whose last rows start the forecast; without it, the model's training rows"
    )
    forecast.add_argument("--horizon", type=int, help="steps to forecast; without it, the model's horizon")
    forecast.add_argument("--out", type=Path, required=True, help="forecast CSV to write")
    forecast.add_argument("--plot", type=Path, help="plot to write; without it, --out with .png")
    forecast.add_argument("--history", type=int, default=120, help="rows of history shown in the plot")
    forecast.add_argument("--adjust-splits", action="store_true", help="rescale rows before a detected split")
    _output_options(forecast)

    backtest = verbs.add_parser(
        "backtest",
        help="walk-forward backtest of the model and every baseline, with significance tests",
        formatter_class=_Formatter,
        description=(
            "Re-trains a fresh model on each fold's past rows only (scaler included), predicts the fold one "
            "step ahead and ranks the model beside every baseline with Diebold-Mariano p-values; with "
            "--horizon H it also forecasts H steps from every row and scores each step (per_step.csv). Without "
            "--data: the bundled Google training file. Without --start: --folds folds ending at the last row."
        ),
    )
    _data_options(backtest, data_required=False)
    walk = backtest.add_argument_group("walk-forward")
    walk.add_argument("--start", help="first test date (YYYY-MM-DD); the folds run from it to the last row")
    walk.add_argument("--folds", type=int, help="number of folds (default 5 without --start, 1 with it)")
    walk.add_argument("--refit-every", type=int, help="rows per fold: the model is re-trained every K rows")
    walk.add_argument("--window", choices=["expanding", "sliding"], default="expanding", help="training rows of each fold: all the past, or a fixed-length window")
    walk.add_argument("--season", type=int, help="period of the seasonal-naive baseline (default: from the dates' frequency)")
    many = backtest.add_argument_group(
        "many series",
        "--data 'prices/*.csv' (quoted) backtests every file, or a long-format file with an id column "
        "(unique_id, ds, y or Name, date, close) every id; one folder per series plus aggregate.csv/json",
    )
    many.add_argument("--id-column", help="column naming the series in a long-format file (default: detected)")
    many.add_argument(
        "--jobs", type=int, default=1, metavar="N",
        help="with many series, series backtested at once (joblib); with one series, folds fitted at once "
        "(this process and N-1 worker processes, one torch thread each: pays for small models such as "
        "--preset indicators); -1 for one per core",
    )
    many.add_argument(
        "--scheduler",
        default=os.environ.get(SCHEDULER_ENV),
        help=f"Dask scheduler address such as tcp://HOST:8786 (default: ${SCHEDULER_ENV}); runs the series on that cluster",
    )
    backtest.add_argument("--out", type=Path, help="output folder (default: out/backtest-<timestamp>)")
    backtest.add_argument("--report", action="store_true", help="also write report.html")
    _model_options(backtest)
    _ensemble_options(backtest)
    _output_options(backtest)

    report = verbs.add_parser(
        "report", help="rebuild report.html from a run or backtest folder", formatter_class=_Formatter
    )
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="folder written by seqcast run or seqcast backtest")
    report.add_argument("--json", action="store_true", help="print only a JSON result on stdout")

    validate = verbs.add_parser("validate", help="check a CSV and report what seqcast sees", formatter_class=_Formatter)
    _data_options(validate, data_required=True)
    validate.add_argument("--json", action="store_true", help="print only a JSON result on stdout")

    tune_p = verbs.add_parser(
        "tune",
        help="grid or random search over walk-forward folds, locally or on a Dask cluster",
        formatter_class=_Formatter,
        description="Each configuration of --grid is trained on the past of each fold and scored on the fold. "
        "The model and training options below are shared by every configuration; the grid overrides them. "
        "Running the same command again resumes an interrupted search.",
    )
    _data_options(tune_p, data_required=True)
    tune_p.add_argument("--grid", type=Path, required=True, help="TOML file: one Forecaster parameter per key, a list of values each")
    tune_p.add_argument("--search", choices=("grid", "random"), default="grid", help="every combination, or --n-iter drawn at random")
    tune_p.add_argument("--n-iter", type=int, default=10, help="configurations drawn by --search random (seeded by --seed)")
    tune_p.add_argument("--folds", type=int, default=5, help="walk-forward folds (scikit-learn TimeSeriesSplit)")
    tune_p.add_argument("--test-size", type=int, help="rows per fold (default: rows / (folds + 1))")
    tune_p.add_argument("--scoring", choices=SCORINGS, default="rmse", help="metric to minimise, averaged over the folds")
    tune_p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="local worker processes (joblib); -1 for one per core; with 1, configurations fit side by side "
        "in threads of this process, one per torch thread",
    )
    tune_p.add_argument(
        "--scheduler",
        default=os.environ.get(SCHEDULER_ENV),
        help=f"Dask scheduler address such as tcp://HOST:8786 (default: ${SCHEDULER_ENV}); runs the search on that cluster",
    )
    tune_p.add_argument("--refit-best", type=Path, metavar="DIR", help="retrain the best configuration on all rows and save it here")
    tune_p.add_argument("--out", type=Path, required=True, help="folder for tuning.csv, best.json and search.json")
    _model_options(tune_p)
    _output_options(tune_p)
    return parser


class _Out:
    """Human lines on stdout, or on stderr when --json keeps stdout for the result."""

    def __init__(self, args):
        self.json = getattr(args, "json", False)
        self.quiet = getattr(args, "quiet", False)
        self.console = Console(stderr=self.json, highlight=False, soft_wrap=True)
        if not self.console.is_terminal:
            # Files and pipes get the leaderboard's natural width instead of rich's 80-column default.
            self.console.width = 200

    def line(self, text: str = "") -> None:
        if not (self.json and self.quiet):
            self.console.print(text, markup=False)

    def table(self, table: Table) -> None:
        if not (self.json and self.quiet):
            self.console.print(table)

    def result(self, obj) -> None:
        if self.json:
            sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _describe(frame) -> str:
    text = f"{Path(frame.attrs.get('source', '<frame>')).name}: {len(frame)} rows {frame.index[0].date()}..{frame.index[-1].date()}"
    warnings = frame.attrs.get("warnings") or []
    return text + "".join(f" (warning: {w})" for w in warnings)


def _load(path: Path, args):
    from .data import load_csv
    return load_csv(path, target=args.target, adjust_splits=args.adjust_splits)


def _model_params(args) -> dict:
    """The Forecaster parameters of the model options, a --preset filling those not given explicitly."""
    params = {param: getattr(args, param) for _, param, _, _ in _MODEL_OPTIONS}
    if getattr(args, "preset", None):
        given = getattr(args, "given_", frozenset())
        params.update({k: v for k, v in PRESETS[args.preset].items() if k not in given})
    return params


def _forecaster(args) -> Forecaster:
    from .forecaster import Forecaster
    params = _model_params(args)
    return Forecaster(target=args.target, verbose=0 if args.quiet or args.json else 1, **params)


def _estimator(args):
    """The Forecaster of the options, or an ensemble of them with --ensemble K."""
    from .conformal import EnsembleForecaster
    forecaster = _forecaster(args)
    if getattr(args, "ensemble", None) is None:
        for option, what in (("ensemble_jobs", "how many processes fit an ensemble's members"),
                             ("interval", "the level of an ensemble's prediction intervals"),
                             ("calibration_fraction", "the rows an ensemble holds out to calibrate its intervals")):
            if getattr(args, option, None) is not None:  # else silently ignored
                raise ConfigError(f"--{option.replace('_', '-')} sets {what}: add --ensemble K")
        return forecaster
    given = {k: getattr(args, k) for k in ("interval", "calibration_fraction") if getattr(args, k) is not None}
    ensemble = EnsembleForecaster(forecaster, n_members=args.ensemble, n_jobs=args.ensemble_jobs, **given)
    ensemble._check_params()  # before any "model" line or output folder
    return ensemble


def _single(model) -> Forecaster:
    """The model itself, or an ensemble's first member (for what every member shares)."""
    from .conformal import EnsembleForecaster
    return model.members_[0] if isinstance(model, EnsembleForecaster) else model


def _describe_model(model) -> str:
    from joblib import effective_n_jobs
    from .conformal import EnsembleForecaster
    from .models import HAND_WRITTEN_CELLS
    if not isinstance(model, EnsembleForecaster):
        return _model_line(model)
    base, k = model.forecaster, model.n_members
    jobs = "" if model.n_jobs in (None, 1) else f" fitted {effective_n_jobs(model.n_jobs)} at a time"
    if model.trains_members_together() and base.cell in HAND_WRITTEN_CELLS:
        jobs = " trained together"
    return (
        f"{_model_line(base)}; ensemble of {k} (seeds {base.seed}..{base.seed + k - 1}){jobs}, {model.interval:.0%} "
        f"conformal intervals from the last {model.calibration_fraction:.0%} of the training rows"
    )


def _print_interval(interval: dict | None, out: "_Out") -> None:
    if interval and interval["coverage"] is not None:
        out.line(
            f"interval {interval['level']:.0%}: coverage {interval['coverage']:.1%} of {interval['n']} actual values, "
            f"mean width {interval['mean_width']:.2f}"
        )


def _model_line(f: Forecaster) -> str:
    extras = [f"features {f.features}"] if f.features else []
    if f.target_transform != "level":
        extras.append(f"target {f.target_transform}")
    if f.horizon != 1 or f.strategy != "direct":
        extras.append(f"horizon {f.horizon} {f.strategy}")
    if f.same_day:
        extras.append(f"SAME-DAY inputs {f.same_day}")
    return (
        f"{f.cell} {f.layers}×{f.units} dropout {f.dropout}, lookback {f.lookback}, {f.epochs} epochs, "
        f"batch {f.batch_size}, lr {f.lr}, seed {f.seed}" + "".join(f", {e}" for e in extras)
    )


def _print_inputs(f: Forecaster, train, out: _Out) -> None:
    if f.input_columns_ != [f.target_]:
        out.line(f"inputs {', '.join(f.input_columns_)}")
    if f.warmup_rows_:
        out.line(
            f"warning: the first {f.warmup_rows_} rows ({train.index[0].date()}..{train.index[f.warmup_rows_ - 1].date()}) "
            f"are dropped: indicator warm-up"
        )
    if f.same_day_columns_:
        out.line(f"note   same-day values of {', '.join(f.same_day_columns_)} are inputs, as asked (--same-day)")


def _horizon_scores(f: Forecaster, holdout, out: _Out) -> dict:
    from .report import horizon_scores
    scores = holdout.horizon_scores
    if scores is None:
        return {}
    table = Table(box=None, pad_edge=False, title=f"per step ({f.strategy})", title_justify="left")
    for name in ("step", "RMSE", "MAE", "n"):
        table.add_column(name, justify="right")
    for step, row in scores.iterrows():
        table.add_row(step, f"{row['rmse']:.2f}", f"{row['mae']:.2f}", str(int(row["n"])))
    out.table(table)
    return horizon_scores(holdout)


def _print_per_step(per_step, out: _Out) -> None:
    """Backtest RMSE at every step h = 1..H, one column per model, and seqcast's DM p-value."""
    from .backtest import MODEL
    if per_step is None or per_step["step"].max() < 2:
        return
    names = list(dict.fromkeys(per_step["model"]))
    table = Table(box=None, pad_edge=False, title="RMSE per horizon step (h1 = the leaderboard above)", title_justify="left")
    for name in ("step", "n", *names, "best baseline", "DM p"):
        table.add_column(name, justify="left" if name == "best baseline" else "right")
    for step, part in per_step.groupby("step"):
        rows = part.set_index("model")
        table.add_row(
            f"h{step}",
            str(int(rows["n"].iloc[0])),
            *[_num(rows.loc[name, "rmse"], "{:.2f}") for name in names],
            str(rows["best_baseline"].iloc[0]),
            _num(rows.loc[MODEL, "dm_p"], "{:.3g}"),
        )
    out.table(table)


def _leaderboard_table(board) -> Table:
    """The leaderboard with every metric and the DM p-value against the best baseline."""
    from .backtest import MODEL
    table = Table(box=None, pad_edge=False)
    table.add_column("")
    for name in ("RMSE", "MAE", "MAPE", "sMAPE", "MASE", "R²", "dir", "lag", "DM p"):
        table.add_column(name, justify="right")
    for name, row in board.table.iterrows():
        label = name if name == MODEL else f"{name} (baseline)"
        p = "best" if name == board.best_baseline else _num(row["dm_p"], "{:.3g}")
        table.add_row(
            label,
            _num(row["rmse"], "{:.2f}"),
            _num(row["mae"], "{:.2f}"),
            _num(row["mape"], "{:.2f}%"),
            _num(row["smape"], "{:.2f}%"),
            _num(row["mase"], "{:.2f}"),
            _num(row["r2"], "{:.3f}"),
            _num(row["direction"], "{:.0f}%"),
            str(int(row["lag"])),
            p,
        )
    return table


def _num(value, fmt: str) -> str:
    return "n/a" if value is None or value != value else fmt.format(value)


def _print_board(board, out: "_Out") -> None:
    out.table(_leaderboard_table(board))
    out.line(f"lag    seqcast: {board.lag_text}")
    out.line(board.verdict())


# The files run and backtest write into their folder (report.html with --report, intervals.csv for
# an ensemble, per_step.csv for a horizon).
_OUTPUT_FILES = frozenset({
    "predictions.csv", "metrics.json", "plot.png", "loss.png", "residuals.png", "report.html", "intervals.csv",
    "per_step.csv", "backtest.csv", "backtest.png", "folds.csv", "folds.png", "leaderboard.csv", "leaderboard.json",
})


def _drop_stale_outputs(out_dir: Path, paths: dict, started: float) -> None:
    """After a --force run into a folder an earlier run wrote, remove that run's outputs this one did
    not write again (its report.html, an ensemble's intervals.csv), which read as this run's. Only
    seqcast's own file names, only files older than this command; the user's other files stay."""
    written = {Path(p).name for p in paths.values()}
    for name in _OUTPUT_FILES - written:
        path = out_dir / name
        if path.is_file() and path.stat().st_mtime < started:
            path.unlink()


def _fresh_dir(path: Path | None, force: bool, prefix: str = "run") -> Path:
    if path is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("out") / f"{prefix}-{stamp}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path("out") / f"{prefix}-{stamp}-{suffix}"
        return path
    _refuse_overwrite(path, force)
    return path


def _refuse_overwrite(path: Path, force: bool) -> None:
    """Refuse, before any work, an output that exists (unless --force) or that cannot be made because
    a file stands where one of its folders would go."""
    blocked = next((p for p in path.absolute().parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise ConfigError(f"{path} cannot be written: {blocked} is a file, not a folder; choose another --out")
    exists = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if exists and not force:
        raise ConfigError(f"{path} already exists: choose another --out or pass --force to replace it")


def _train_and_test(args, out: _Out):
    from .datasets import GOOGLE_TEST, GOOGLE_TRAIN
    from .windows import split_by_date
    if args.data is None:
        if args.test_from:
            raise ConfigError("--test-from needs --data")
        data_path, test_path = GOOGLE_TRAIN, (args.test or GOOGLE_TEST)
    else:
        data_path, test_path = args.data, args.test
    frame = _load(data_path, args)
    out.line(f"data   {_describe(frame)}")
    if test_path is not None:
        train, test = frame, _load(test_path, args)
        # A test period inside the training dates would leak, and its first rows have no history.
        if test.index[0] <= train.index[-1]:
            raise ConfigError(
                f"{test_path} starts on {test.index[0].isoformat()[:10]}, before the training data in {data_path} "
                f"ends ({train.index[-1].isoformat()[:10]}): give a test file that follows the training rows, "
                "or use --test-from DATE on one file"
            )
    elif args.test_from:
        train, test = split_by_date(frame, args.test_from)
    else:
        return frame, None
    if test_path is not None:
        out.line(f"test   {_describe(test)}")
        if (gap := _long_gap(train.index, test.index[0])) is not None:  # as _stale_context warns for predict
            out.line(
                f"warning: {test_path} starts {gap.days} days after the training rows end ({train.index[-1].date()}): "
                "its first rows' history, and every baseline's first prediction, come from before that gap"
            )
    else:
        out.line(f"test   rows from {test.index[0].date()}: {len(test)} rows {test.index[0].date()}..{test.index[-1].date()}")
    return train, test


def _cmd_run(args, out: _Out) -> int:
    from .backtest import evaluate_holdout
    from .report import run_summary, write_report, write_run
    started = time.time()
    if args.data is not None and args.test is None and not args.test_from:
        raise ConfigError("seqcast run needs a test period: give --test FILE or --test-from DATE")
    out_dir = _fresh_dir(args.out, args.force)
    train, test = _train_and_test(args, out)
    forecaster = _estimator(args)
    out.line(f"model  {_describe_model(forecaster)}")
    holdout = evaluate_holdout(forecaster, train, test)
    _print_inputs(_single(forecaster), train, out)
    _print_training(forecaster, out)
    _print_board(holdout.board, out)
    _print_interval(holdout.interval, out)
    per_step = _horizon_scores(forecaster, holdout, out)
    info = {"data": _describe(train), "test": _describe(test), "warnings": _warnings(train, test)}
    paths = write_run(out_dir, holdout, forecaster, info=info)
    if args.report:
        paths["report"] = write_report(out_dir)
    _drop_stale_outputs(out_dir, paths, started)
    out.line(f"outputs {out_dir}/  " + "  ".join(p.name + ("/" if p.is_dir() else "") for p in paths.values()))
    out.result({"out": str(out_dir), **run_summary(holdout, forecaster), **per_step})
    return 0


def _print_training(model, out: _Out) -> None:
    from .conformal import EnsembleForecaster
    from .models import HAND_WRITTEN_CELLS
    if isinstance(model, EnsembleForecaster):
        for number, member in enumerate(model.members_, start=1):
            out.line(f"member {number} (seed {member.seed})")
            _print_training(member, out)
        if getattr(model, "trained_together_", False) and _single(model).cell not in HAND_WRITTEN_CELLS:
            # GRU and RNN members say so on the model line; whether LSTM members were small enough
            # to train in groups is known only after the fit.
            out.line("train  members trained together, in groups (each time is the member's share of its group's)")
        return
    h = model.history_
    val = f"  val loss {h.val_loss[-1]:.5f}" if h.val_loss else ""
    early = f"  (early stop, best epoch {h.best_epoch})" if h.stopped_early else ""
    out.line(
        f"train  {len(h.loss)} epochs  loss {h.loss[-1]:.5f}{val}  {sum(h.epoch_seconds):.1f} s "
        f"({sum(h.epoch_seconds) / max(len(h.loss), 1):.2f} s/epoch){early}"
    )


def _checkpoint_dir(args) -> Path:
    if args.resume is not None:
        if not (args.resume / "checkpoint.json").is_file():
            raise ConfigError(f"{args.resume} holds no checkpoint; give the folder named in the interrupt message")
        return args.resume
    directory = args.out.with_name(args.out.name + ".checkpoint")
    if args.checkpoint_every is not None:
        _refuse_overwrite(directory, args.force)
    return directory


def _cmd_train(args, out: _Out) -> int:
    from .backtest import evaluate_holdout
    from .conformal import EnsembleForecaster
    from .report import run_summary
    _refuse_overwrite(args.out, args.force)
    checkpoint_dir = _checkpoint_dir(args)
    train, test = _train_and_test(args, out)
    forecaster = _estimator(args)
    out.line(f"model  {_describe_model(forecaster)}")
    if isinstance(forecaster, EnsembleForecaster):
        if args.resume is not None or args.checkpoint_every is not None:
            raise ConfigError("--ensemble trains several models and takes no --checkpoint-every or --resume: drop one")
        forecaster.fit(train)
    else:
        if args.resume is not None:
            out.line(f"resume {args.resume}")
        forecaster.fit(
            train, checkpoint_dir=checkpoint_dir, checkpoint_every=args.checkpoint_every, resume=args.resume is not None
        )
    _print_inputs(_single(forecaster), train, out)
    if args.checkpoint_every is not None:
        out.line(f"checkpoint {checkpoint_dir}/ (epoch {len(forecaster.history_.loss)})")
    if test is None:
        _print_training(forecaster, out)
        forecaster.save(args.out, replace=args.force)
        out.line(f"saved  {args.out}/")
        out.result({"model": str(args.out), "final_loss": forecaster.history_.loss[-1]})
        return 0
    holdout = evaluate_holdout(forecaster, train, test, fit=False)
    _print_training(forecaster, out)
    _print_board(holdout.board, out)
    _print_interval(holdout.interval, out)
    per_step = _horizon_scores(forecaster, holdout, out)
    forecaster.save(args.out, replace=args.force)
    out.line(f"saved  {args.out}/")
    out.result({"model": str(args.out), **run_summary(holdout, forecaster), **per_step})
    return 0


def _warnings(*frames) -> list[str]:
    return [w for frame in frames for w in (frame.attrs.get("warnings") or [])]


def _cmd_backtest(args, out: _Out) -> int:
    started = time.time()
    from joblib import effective_n_jobs
    from .backtest import MODEL, walk_forward
    from .datasets import GOOGLE_TRAIN
    from .many import is_many
    from .parallel import check_jobs
    from .report import write_report
    check_jobs(args.jobs, "--jobs")
    if args.ensemble_jobs not in (None, 1) and (args.jobs != 1 or args.scheduler):
        # An ensemble inside a parallel fold or series fits its members in place (seqcast.parallel).
        raise ConfigError(
            "--ensemble-jobs fits an ensemble's members in parallel, and --jobs/--scheduler already run the "
            "folds or series in parallel: drop one of them"
        )
    if args.data is not None and is_many(args.data, args.id_column):
        return _cmd_backtest_many(args, out)
    forecaster = _estimator(args)
    out_dir = _fresh_dir(args.out, args.force, prefix="backtest")
    frame = _load(args.data or GOOGLE_TRAIN, args)
    out.line(f"data   {_describe(frame)}")
    jobs = "" if args.jobs == 1 else f"; folds fitted {effective_n_jobs(args.jobs)} at a time, one torch thread each"
    out.line(f"model  {_describe_model(forecaster)}{jobs}")

    def progress(fold: dict) -> None:
        rmse = fold["rmse"]
        best = min((name for name in rmse if name != MODEL), key=lambda n: rmse[n])
        out.line(
            f"fold   {fold['fold']}/{fold['of']}  train {fold['train_start']}..{fold['train_end']} ({fold['n_train']})  "
            f"test {fold['test_start']}..{fold['test_end']} ({fold['n_test']})  RMSE seqcast {rmse[MODEL]:.2f}, "
            f"{best} {rmse[best]:.2f}  {fold['seconds']:.1f} s"
        )

    result = walk_forward(
        forecaster,
        frame,
        folds=args.folds,
        start=args.start,
        refit_every=args.refit_every,
        window=args.window,
        period=args.season,
        out_dir=out_dir,
        on_fold=progress,
        n_jobs=args.jobs,
    )
    _print_board(result.board, out)
    _print_per_step(result.per_step, out)
    _print_interval(result.interval, out)
    paths = result.write(out_dir, info={"data": _describe(frame), "warnings": _warnings(frame)})
    paths = {"backtest": out_dir / "backtest.csv", **paths}
    if args.report:
        paths["report"] = write_report(out_dir)
    _drop_stale_outputs(out_dir, paths, started)
    out.line(f"outputs {out_dir}/  " + "  ".join(p.name for p in paths.values()))
    interval = {"interval": result.interval} if result.interval else {}
    out.result(
        {"out": str(out_dir), "target": result.target, **result.board.to_dict(), **interval, "folds": result.folds,
         "per_step": result.per_step_records()}
    )
    return 0


def _cmd_backtest_many(args, out: _Out) -> int:
    from .many import backtest_many, find_series
    out_dir = _fresh_dir(args.out, args.force, prefix="backtest")
    series = find_series(args.data, target=args.target, id_column=args.id_column, adjust_splits=args.adjust_splits)
    # No per-epoch progress bars: parallel series would interleave them.
    forecaster = _estimator(argparse.Namespace(**{**vars(args), "quiet": True}))
    where = f"Dask cluster {args.scheduler}" if args.scheduler else f"{args.jobs} local job{'s' if args.jobs != 1 else ''}"
    out.line(f"data   {args.data}: {len(series)} series ({', '.join(series)}); {where}")
    out.line(f"model  {_describe_model(forecaster)}")

    def progress(result) -> None:
        out.line("")
        if result.error is not None:
            out.line(f"series {result.name}: error: {result.error}")
            return
        out.line(f"series {result.name}: {result.n_predictions} predictions {result.period}, {result.seconds:.1f} s")
        _print_board(result.board, out)
        _print_interval(result.interval, out)

    many = backtest_many(
        series,
        forecaster,
        out_dir=out_dir,
        jobs=args.jobs,
        scheduler=args.scheduler,
        target=args.target,
        adjust_splits=args.adjust_splits,
        on_series=progress,
        folds=args.folds,
        start=args.start,
        refit_every=args.refit_every,
        window=args.window,
        period=args.season,
    )
    summary = many.summary
    out.line("")
    out.table(_aggregate_table(many.table))
    if "mean_skill" not in summary:
        raise DataError(f"every one of the {summary['n_series']} series failed; see {out_dir / 'aggregate.csv'}")
    coverage = f"; mean interval coverage {summary['mean_coverage']:.1%}" if "mean_coverage" in summary else ""
    out.line(
        f"aggregate {summary['n_series'] - summary['n_failed']} of {summary['n_series']} series: mean skill "
        f"{summary['mean_skill']:+.3f} (1 - RMSE seqcast / RMSE best baseline), seqcast beats its best baseline on "
        f"{summary['n_beat_best_baseline']}, significantly (DM p < {summary['alpha']}) on "
        f"{summary['n_beat_significantly']}{coverage}"
    )
    # a failed series writes no folder
    written = [f"{_folder_of(r)}/" for r in many.results if r.error is None and Path(r.out_dir).is_dir()]
    out.line(f"outputs {out_dir}/  aggregate.csv  aggregate.json  " + "  ".join(written))
    out.result({"out": str(out_dir), **summary, "series": json.loads(many.table.reset_index().to_json(orient="records"))})
    return 0


def _folder_of(result) -> str:
    return Path(result.out_dir).name


def _aggregate_table(table) -> Table:
    out = Table(box=None, pad_edge=False, title="aggregate", title_justify="left")
    for name in ("series", "n", "RMSE", "best baseline", "its RMSE", "skill", "DM p", "verdict"):
        out.add_column(name, justify="left" if name in ("series", "best baseline", "verdict") else "right")
    for name, row in table.iterrows():
        if isinstance(row.get("error"), str):
            out.add_row(str(name), "", "", "", "", "", "", "error")
            continue
        verdict = "better, significant" if row["beats_best_significantly"] else "better" if row["beats_best"] else "not better"
        out.add_row(
            str(name), str(int(row["n_predictions"])), _num(row["rmse"], "{:.2f}"), str(row["best_baseline"]),
            _num(row["best_baseline_rmse"], "{:.2f}"), _num(row["skill"], "{:+.3f}"), _num(row["dm_p"], "{:.3g}"), verdict,
        )
    return out


def _cmd_report(args, out: _Out) -> int:
    from .report import write_report
    path = write_report(args.run_dir)
    out.line(f"wrote  {path}")
    out.result({"report": str(path)})
    return 0


def _long_gap(before, first):
    """The time from the last date of ``before`` to ``first`` where it is more than 10 of the
    series' usual steps (the median spacing of ``before``), else None."""
    if len(before) < 2:
        return None
    gap = first - before[-1]
    return gap if gap > 10 * before.to_series().diff().median() else None


def _stale_context(forecaster: Forecaster, frame) -> str | None:
    """A warning when the model will take its remembered training rows as the history of the first
    rows of ``frame`` although ``frame`` starts long after them (more than 10 of the series' usual
    steps later): those first predictions then rest on rows from another period."""
    from .windows import tail_precedes
    context = forecaster.context_
    # The CLI's frames are dated (load_csv), so a tail that precedes one is dated too.
    if len(context) < 2 or not tail_precedes(context, frame):
        return None
    if (gap := _long_gap(context.index, frame.index[0])) is None:
        return None
    rows = min(forecaster.context_rows_, len(frame))
    return (
        f"warning: the first {rows} rows take their history from the model's last training rows "
        f"(up to {context.index[-1].date()}), {gap.days} days before this file starts; give a file that "
        f"starts {forecaster.context_rows_} rows earlier for predictions that rest on their own history"
    )


def _cmd_predict(args, out: _Out) -> int:
    from .artifacts import atomic_write_text
    from .conformal import EnsembleForecaster, load_model
    from .data import load_csv
    _refuse_overwrite(args.out, args.force)
    model = load_model(args.model)
    forecaster = _single(model)
    frame = load_csv(args.data, required=forecaster.required_columns_, adjust_splits=args.adjust_splits)
    out.line(f"data   {_describe(frame)}")
    if (stale := _stale_context(forecaster, frame)) is not None:
        out.line(stale)
    predictions = model.predict(frame)
    table = frame[[]].copy()
    table.index.name = "date"
    if forecaster.target_ in frame.columns:
        table["actual"] = frame[forecaster.target_]
    table["predicted"] = predictions
    if isinstance(model, EnsembleForecaster):
        table = table.join(model.predict_interval(frame)[["lower", "upper", "std"]])
    atomic_write_text(args.out, table.to_csv(float_format="%.6f"))
    n = int(predictions.notna().sum())
    out.line(f"wrote  {args.out}: {n} of {len(frame)} rows predicted (the first need {forecaster.lookback} rows of history)" if n < len(frame) else f"wrote  {args.out}: {n} rows predicted")
    out.result({"out": str(args.out), "n_predicted": n, "n_rows": len(frame)})
    return 0


_CALENDARS = {
    "B": "business days",
    "C": "business days without NYSE holidays",
    "D": "every day",
    "ME": "month ends",
    "MS": "month starts",
}


def _calendar_name(index, exchange_holidays) -> str:
    """How the forecast's dates continue ``index`` (features.infer_calendar), in words."""
    from .features import describe_closures, infer_calendar, learned_closures, nyse_business_day
    offset = infer_calendar(index, exchange_holidays)
    name = getattr(offset, "freqstr", "")
    if name == "C" and offset is not nyse_business_day():
        return f"business days without the holidays the history skips every year: {describe_closures(learned_closures(index))}"
    return _CALENDARS.get(name, name)


def _cmd_forecast(args, out: _Out) -> int:
    from .artifacts import atomic_write_text
    from .conformal import load_model
    from .data import load_csv
    from .plots import plot_forecast
    plot_path = args.plot or args.out.with_suffix(".png")
    _refuse_overwrite(args.out, args.force)
    _refuse_overwrite(plot_path, args.force)
    if args.history < 1:
        raise ConfigError(f"--history must be at least 1, got {args.history}")
    model = load_model(args.model)
    forecaster = _single(model)
    target = forecaster.target_
    if args.data is None:
        frame, history = None, forecaster.context_
        shown = f"the model's last {len(history)} training rows, up to {forecaster.train_end_.date()}"
        if len(history) < args.history:  # the model keeps only the rows it needs to predict from
            shown += f" (the plot shows those; --data FILE shows up to --history {args.history} rows)"
        out.line(f"data   {shown}")
    else:
        required = list(dict.fromkeys([*forecaster.required_columns_, target]))
        frame = history = load_csv(args.data, required=required, adjust_splits=args.adjust_splits)
        out.line(f"data   {_describe(frame)}")
        if len(frame) < forecaster.context_rows_ and (stale := _stale_context(forecaster, frame)) is not None:
            out.line(stale)
    table = model.forecast(args.horizon, frame=frame)
    calendar = ""
    if len(history) > 1:
        calendar = _calendar_name(history.index, forecaster.exchange_holidays_)
    atomic_write_text(args.out, table.to_csv(float_format="%.6f"))
    past = history[target].iloc[-args.history :] if target in history.columns else None
    plot_forecast(past, table["forecast"], plot_path, target=target)
    first, last = table.index[0], table.index[-1]
    show = (lambda t: t.date().isoformat()) if hasattr(first, "date") else str
    out.line(
        f"forecast {target}: {len(table)} steps {show(first)}..{show(last)} ({calendar}) "
        f"after {show(history.index[-1])}, {forecaster.strategy} strategy"
    )
    out.line(f"wrote  {args.out}  {plot_path}")
    out.result(
        {
            "out": str(args.out),
            "plot": str(plot_path),
            "target": target,
            "forecast": [{"date": show(d), "step": int(s), "forecast": float(v)} for d, s, v in
                         zip(table.index, table["step"], table["forecast"])],
        }
    )
    return 0


def _cmd_validate(args, out: _Out) -> int:
    frame = _load(args.data, args)
    out.line(f"ok     {_describe(frame)}")
    out.line(f"columns {', '.join(frame.columns)}")
    out.result(
        {
            "source": str(args.data),
            "rows": len(frame),
            "start": frame.index[0].date().isoformat(),
            "end": frame.index[-1].date().isoformat(),
            "columns": list(frame.columns),
            "warnings": frame.attrs.get("warnings", []),
        }
    )
    return 0


def _cmd_tune(args, out: _Out) -> int:
    from .parallel import check_jobs
    from .tuning import configs_at_once, load_grid, refit_best, tune
    check_jobs(args.jobs, "--jobs")  # joblib's own error for 0 was a traceback
    grid = load_grid(args.grid)
    if args.refit_best is not None:
        _refuse_overwrite(args.refit_best, args.force)
    frame = _load(args.data, args)
    out.line(f"data   {_describe(frame)}")
    base = _model_params(args)
    where = f"Dask cluster {args.scheduler}" if args.scheduler else f"{args.jobs} local job{'s' if args.jobs != 1 else ''}"
    threads_set = [base, *({"threads": t} for t in grid.get("threads", ()))]
    if (at_once := configs_at_once(args.jobs, args.scheduler, threads_set)) > 1:
        where += f" ({at_once} configurations at a time, in threads)"
    out.line(f"grid   {args.grid}: {', '.join(f'{k} {v}' for k, v in grid.items())}; {args.folds} walk-forward folds; {where}")
    result = tune(
        frame,
        grid,
        out_dir=args.out,
        base_params={"target": args.target, **base},
        search=args.search,
        n_iter=args.n_iter,
        seed=args.seed,
        folds=args.folds,
        test_size=args.test_size,
        scoring=args.scoring,
        jobs=args.jobs,
        scheduler=args.scheduler,
        force=args.force,
        progress=not (args.quiet or args.json),
    )
    if result.n_resumed:
        out.line(f"resumed {result.n_resumed} of {result.n_configs} configurations from {args.out / 'tuning.csv'}")
    out.table(_tuning_table(result))
    best_score, naive = result.best_score, float(result.summary["mean_persistence_rmse"].iloc[0])
    best_grid = {k: result.best_params[k] for k in grid}
    out.line(f"best   {' '.join(f'{k}={v}' for k, v in best_grid.items())}: mean {args.scoring} {best_score:.4g} "
             f"(persistence RMSE {naive:.4g} on the same folds)")
    outputs = f"outputs {args.out}/  tuning.csv  best.json"
    if args.refit_best is not None:
        refit_best(frame, result, args.refit_best, replace=args.force)
        outputs += f"  {args.refit_best}/"
    out.line(outputs)
    out.result(
        {
            "out": str(args.out),
            "best": best_grid,
            f"mean_{args.scoring}": best_score,
            "mean_persistence_rmse": naive,
            "n_configs": result.n_configs,
            "n_resumed": result.n_resumed,
            "model": None if args.refit_best is None else str(args.refit_best),
        }
    )
    return 0


def _tuning_table(result, top: int = 10) -> Table:
    table = Table(box=None, pad_edge=False)
    summary = result.summary.head(top)
    params = [c for c in summary.columns if not c.startswith("mean_")]
    for name in ("#", *params, "RMSE", "MAE", "MAPE", "persistence RMSE", "s/fold"):
        table.add_column(name, justify="left" if name in params else "right")
    # Columns one by one: iterrows would turn an int parameter into a float in a mixed row.
    for config in summary.index:
        row = {c: summary.at[config, c] for c in summary.columns}
        table.add_row(
            str(config),
            *(str(row[p]) for p in params),
            f"{row['mean_rmse']:.3f}",
            f"{row['mean_mae']:.3f}",
            f"{row['mean_mape']:.2f}%",
            f"{row['mean_persistence_rmse']:.3f}",
            f"{row['mean_seconds']:.1f}",
        )
    return table


_COMMANDS = {
    "run": _cmd_run,
    "train": _cmd_train,
    "predict": _cmd_predict,
    "forecast": _cmd_forecast,
    "validate": _cmd_validate,
    "tune": _cmd_tune,
    "backtest": _cmd_backtest,
    "report": _cmd_report,
}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = _Out(args)
    try:
        return _COMMANDS[args.verb](args, out)
    except SeqcastError as exc:
        print(f"seqcast: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"seqcast: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(
            f"seqcast: interrupted; checkpoint of epoch {exc.epoch} saved in {exc.checkpoint}/; "
            f"continue with the same command plus --resume {exc.checkpoint}",
            file=sys.stderr,
        )
        return 130
    except KeyboardInterrupt:
        print("seqcast: interrupted; no output was left half-written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
