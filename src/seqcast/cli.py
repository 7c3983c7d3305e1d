"""`seqcast` command line: argument parsing and printing only; every verb calls the library."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import __version__
from .artifacts import atomic_write_text
from .backtest import MODEL, evaluate_holdout
from .data import load_csv
from .datasets import GOOGLE_TEST, GOOGLE_TRAIN
from .errors import ConfigError, SeqcastError
from .forecaster import Forecaster
from .report import run_summary, write_run
from .training import TrainingInterrupted
from .windows import split_by_date

_MODEL_OPTIONS = (
    # (flag, Forecaster parameter, type, help)
    ("--lookback", "lookback", int, "rows of history in each input window"),
    ("--features", "features", str, "comma-separated input columns (default: the target alone)"),
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
)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


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


def _model_options(p: argparse.ArgumentParser) -> None:
    defaults = Forecaster().get_params()
    group = p.add_argument_group("model and training")
    for flag, param, kind, help_text in _MODEL_OPTIONS:
        group.add_argument(flag, dest=param, type=kind, default=defaults[param], help=help_text)


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")
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
    _model_options(run)
    _output_options(run)

    train = verbs.add_parser("train", help="train a model and save it", formatter_class=_Formatter)
    _data_options(train, data_required=True)
    _test_options(train)
    train.add_argument("--out", type=Path, required=True, help="model folder to write")
    _model_options(train)
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

    validate = verbs.add_parser("validate", help="check a CSV and report what seqcast sees", formatter_class=_Formatter)
    _data_options(validate, data_required=True)
    validate.add_argument("--json", action="store_true", help="print only a JSON result on stdout")
    return parser


class _Out:
    """Human lines on stdout, or on stderr when --json keeps stdout for the result."""

    def __init__(self, args):
        self.json = getattr(args, "json", False)
        self.quiet = getattr(args, "quiet", False)
        self.console = Console(stderr=self.json, highlight=False, soft_wrap=True)

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
    return load_csv(path, target=args.target, adjust_splits=args.adjust_splits)


def _forecaster(args) -> Forecaster:
    params = {param: getattr(args, param) for _, param, _, _ in _MODEL_OPTIONS}
    return Forecaster(target=args.target, verbose=0 if args.quiet or args.json else 1, **params)


def _model_line(f: Forecaster) -> str:
    return (
        f"{f.cell} {f.layers}×{f.units} dropout {f.dropout}, lookback {f.lookback}, {f.epochs} epochs, "
        f"batch {f.batch_size}, lr {f.lr}, seed {f.seed}"
    )


def _leaderboard_table(holdout) -> Table:
    table = Table(box=None, pad_edge=False)
    table.add_column("")
    for name in ("RMSE", "MAE", "MAPE"):
        table.add_column(name, justify="right")
    for name, row in holdout.leaderboard().iterrows():
        label = name if name == MODEL else f"{name} (baseline)"
        table.add_row(label, f"{row['rmse']:.2f}", f"{row['mae']:.2f}", f"{row['mape']:.2f}%")
    return table


def _fresh_dir(path: Path | None, force: bool) -> Path:
    if path is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("out") / f"run-{stamp}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path("out") / f"run-{stamp}-{suffix}"
        return path
    _refuse_overwrite(path, force)
    return path


def _refuse_overwrite(path: Path, force: bool) -> None:
    exists = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if exists and not force:
        raise ConfigError(f"{path} already exists: choose another --out or pass --force to replace it")


def _train_and_test(args, out: _Out):
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
    else:
        out.line(f"test   rows from {test.index[0].date()}: {len(test)} rows {test.index[0].date()}..{test.index[-1].date()}")
    return train, test


def _cmd_run(args, out: _Out) -> int:
    if args.data is not None and args.test is None and not args.test_from:
        raise ConfigError("seqcast run needs a test period: give --test FILE or --test-from DATE")
    out_dir = _fresh_dir(args.out, args.force)
    train, test = _train_and_test(args, out)
    forecaster = _forecaster(args)
    out.line(f"model  {_model_line(forecaster)}")
    holdout = evaluate_holdout(forecaster, train, test)
    _print_training(forecaster, out)
    out.table(_leaderboard_table(holdout))
    out.line(holdout.verdict())
    paths = write_run(out_dir, holdout, forecaster, info={"data": _describe(train), "test": _describe(test)})
    out.line(f"outputs {out_dir}/  " + "  ".join(p.name + ("/" if p.is_dir() else "") for p in paths.values()))
    out.result({"out": str(out_dir), **run_summary(holdout, forecaster)})
    return 0


def _print_training(forecaster: Forecaster, out: _Out) -> None:
    h = forecaster.history_
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
    _refuse_overwrite(args.out, args.force)
    checkpoint_dir = _checkpoint_dir(args)
    train, test = _train_and_test(args, out)
    forecaster = _forecaster(args)
    out.line(f"model  {_model_line(forecaster)}")
    if args.resume is not None:
        out.line(f"resume {args.resume}")
    forecaster.fit(
        train, checkpoint_dir=checkpoint_dir, checkpoint_every=args.checkpoint_every, resume=args.resume is not None
    )
    if args.checkpoint_every is not None:
        out.line(f"checkpoint {checkpoint_dir}/ (epoch {len(forecaster.history_.loss)})")
    if test is None:
        _print_training(forecaster, out)
        forecaster.save(args.out)
        out.line(f"saved  {args.out}/")
        out.result({"model": str(args.out), "final_loss": forecaster.history_.loss[-1]})
        return 0
    holdout = evaluate_holdout(forecaster, train, test, fit=False)
    _print_training(forecaster, out)
    out.table(_leaderboard_table(holdout))
    out.line(holdout.verdict())
    forecaster.save(args.out)
    out.line(f"saved  {args.out}/")
    out.result({"model": str(args.out), **run_summary(holdout, forecaster)})
    return 0


def _cmd_predict(args, out: _Out) -> int:
    _refuse_overwrite(args.out, args.force)
    forecaster = Forecaster.load(args.model)
    frame = load_csv(args.data, required=forecaster.input_columns_, adjust_splits=args.adjust_splits)
    out.line(f"data   {_describe(frame)}")
    predictions = forecaster.predict(frame)
    table = frame[[]].copy()
    table.index.name = "date"
    if forecaster.target_ in frame.columns:
        table["actual"] = frame[forecaster.target_]
    table["predicted"] = predictions
    atomic_write_text(args.out, table.to_csv(float_format="%.6f"))
    n = int(predictions.notna().sum())
    out.line(f"wrote  {args.out}: {n} of {len(frame)} rows predicted (the first need {forecaster.lookback} rows of history)" if n < len(frame) else f"wrote  {args.out}: {n} rows predicted")
    out.result({"out": str(args.out), "n_predicted": n, "n_rows": len(frame)})
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


_COMMANDS = {"run": _cmd_run, "train": _cmd_train, "predict": _cmd_predict, "validate": _cmd_validate}


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
