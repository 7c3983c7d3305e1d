"""Property-based fuzzing: no CSV and no argument value makes seqcast print a traceback or hang.

Every case must end in a DataFrame (loader) or exit 0, or in a ``seqcast: error: …`` line and exit 2
(CLI). The CLI runs in-process through ``seqcast.cli.main`` for speed. ``make test`` runs about 520
examples in all; ``make fuzz`` sets ``SEQCAST_FUZZ_EXAMPLES=10000`` and the same tests share that
total in the proportions of ``_SHARES``: most examples hit the loader and ``validate``, fewer train.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import shutil
import signal
from datetime import date, timedelta
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from seqcast import load_csv
from seqcast.cli import main
from seqcast.datasets import GOOGLE_TEST, GOOGLE_TRAIN
from seqcast.errors import DataError

TOTAL = int(os.environ.get("SEQCAST_FUZZ_EXAMPLES", "520"))
_SHARES = {"loader": 0.37, "streamed": 0.05, "validate": 0.19, "args": 0.12, "verbs": 0.06, "predict": 0.08,
           "train": 0.04, "run": 0.03, "long": 0.02, "tune": 0.02, "report": 0.02}
# A wall-clock limit per example: hypothesis's own deadline only reports slowness after the
# example returns, while SIGALRM also interrupts a real hang.
HANG_SECONDS = 60
TINY = ["--epochs", "1", "--layers", "1", "--units", "4", "--lookback", "3", "--device", "cpu", "--quiet"]
BUNDLED_LINES = GOOGLE_TRAIN.read_text(encoding="utf-8").splitlines()


def _settings(share: str):
    return settings(
        max_examples=max(1, round(TOTAL * _SHARES[share])),
        deadline=None,
        derandomize=TOTAL <= 520,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
        database=None,
    )


class Hang(BaseException):
    """Not an Exception, so no `except Exception` in seqcast can swallow it."""


@contextlib.contextmanager
def time_limit(seconds: int = HANG_SECONDS):
    def on_alarm(signum, frame):
        raise Hang(f"example still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- CSV strategies

ODD_CELLS = [
    "", " ", "nan", "NaN", "NA", "null", "-", "inf", "-inf", "Infinity", "1e309", "-1e309", "1e308", "1e-320",
    "0", "-0", "-5", "1,5", "7,380,500", "1,2,3", "0x10", "1_000", '"', '""', "'", "abc", "٣", "١٢", "½",
    "9" * 400, "1e999999", "--1", "+", ".", "1.2.3", "\t", "TRUE",
]
ODD_DATES = [
    "", "2020-13-01", "2020-02-30", "0000-01-01", "9999-12-31", "1/1/1", "31-Dec-99", "2020-01-01T00:00:00+05:00",
    "2020-01-01 25:00", "2020-01-01Z", "1e10", "now", "today", "NaT", "2262-04-12", "1677-09-21", "01/02/2020",
]
HEADER_NAMES = ["Date", "Open", "High", "Low", "Close", "Adj Close", "Volume", "date", "OPEN", " open ", "Time",
                "ds", "", "Unnamed: 0", "X", "Open", "Date"]
# Repeats weight the draw towards files that parse, so that many cases reach training.
SEPARATORS = [",", ",", ",", ";", "\t", "|", " ", ",,"]
ENCODINGS = ["utf-8", "utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16", "cp1252"]

odd_cell = st.one_of(
    st.sampled_from(ODD_CELLS),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.text(max_size=6),
)
date_text = st.one_of(
    st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)).flatmap(
        lambda d: st.sampled_from([d.isoformat(), f"{d.month}/{d.day}/{d.year}", d.strftime("%d-%b-%Y")])
    ),
    st.sampled_from(ODD_DATES),
    st.text(max_size=10),
)


@st.composite
def generated_csv(draw) -> bytes:
    """A price table that starts clean (so some cases get all the way through) and is then damaged."""
    header = draw(
        st.one_of(
            st.just(["Date", "Open", "High", "Low", "Close", "Volume"]),
            st.just(["Date", "Open"]),
            st.lists(st.sampled_from(HEADER_NAMES), min_size=1, max_size=7),
        )
    )
    n = draw(st.integers(0, 40))
    start = date(2020, 1, 1) + timedelta(days=draw(st.integers(-5000, 5000)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    prices = 100 + np.cumsum(rng.normal(0, 1, n))
    rows = []
    for i in range(n):
        row = []
        for name in header:
            key = name.strip().lower()
            if key in ("date", "time", "ds"):
                row.append((start + timedelta(days=i)).isoformat())
            elif key == "volume":
                row.append(str(int(rng.integers(0, 10**7))))
            else:
                row.append(f"{prices[i]:.4f}")
        rows.append(row)
    # Damage some cells, and maybe drop or extend some rows.
    for _ in range(draw(st.one_of(st.just(0), st.integers(0, 3)))):
        if rows:
            r = draw(st.integers(0, len(rows) - 1))
            c = draw(st.integers(0, len(header) - 1))
            rows[r][c] = draw(date_text if c == 0 else odd_cell)
    for _ in range(draw(st.one_of(st.just(0), st.integers(0, 2)))):
        if rows:
            r = draw(st.integers(0, len(rows) - 1))
            cut = draw(st.integers(0, len(rows[r]) + 2))
            rows[r] = rows[r][:cut] if cut <= len(rows[r]) else rows[r] + ["1"] * (cut - len(rows[r]))
    if rows and draw(st.integers(0, 3)) == 0:
        rows.insert(draw(st.integers(0, len(rows))), list(rows[draw(st.integers(0, len(rows) - 1))]))
    sep = draw(st.sampled_from(SEPARATORS))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = newline.join(sep.join(row) for row in [header, *rows])
    if draw(st.booleans()):
        text += newline
    return draw(encode(text))


@st.composite
def encode(draw, text: str) -> bytes:
    encoding = draw(st.sampled_from(ENCODINGS))
    data = text.encode(encoding, errors="replace")
    if draw(st.integers(0, 9)) == 0:
        data = b"\xef\xbb\xbf" + data
    return data


@st.composite
def mutated_bundled(draw) -> bytes:
    """The first lines of the bundled Google file, cut, spliced and re-encoded."""
    lines = list(BUNDLED_LINES[: draw(st.integers(1, 80))])
    for _ in range(draw(st.one_of(st.just(0), st.integers(0, 4)))):
        op = draw(st.sampled_from(["cell", "drop", "dup", "swap", "header", "blank", "quote", "separator"]))
        i = draw(st.integers(0, len(lines) - 1))
        if op == "cell":
            cells = lines[i].split(",")
            cells[draw(st.integers(0, len(cells) - 1))] = draw(st.one_of(odd_cell, date_text))
            lines[i] = ",".join(cells)
        elif op == "drop" and len(lines) > 1:
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "header":
            names = lines[0].split(",")
            names[draw(st.integers(0, len(names) - 1))] = draw(st.sampled_from(HEADER_NAMES))
            lines[0] = ",".join(names)
        elif op == "blank":
            lines.insert(i, draw(st.sampled_from(["", " ", ",,,,,", "\t"])))
        elif op == "quote":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))] + '"' + lines[i][draw(st.integers(0, len(lines[i]))):]
        elif op == "separator":
            sep = draw(st.sampled_from(SEPARATORS))
            lines = [line.replace(",", sep) for line in lines]
    data = draw(encode("\n".join(lines) + "\n"))
    if draw(st.integers(0, 3)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.integers(0, 5)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    return data


csv_bytes = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"", b"\n", b"\xef\xbb\xbf", b"Date,Open\n", b"Date,Open\n2020-01-01,1\n", b"\x00\x00",
                     b"Date,Date\n2020-01-01,2020-01-02\n", b"Open,Close\n1,2\n", b"\xff\xfe\x00"]),
    generated_csv(),
    mutated_bundled(),
)


@st.composite
def long_csv(draw) -> bytes:
    """A long-format file (several series told apart by an id column) that starts clean and is
    then damaged: ids blank or repeated with spaces, series of 0-30 rows, odd cells, shuffled rows."""
    header = draw(st.sampled_from([["unique_id", "ds", "y"]] * 4 + [["Name", "date", "y"], ["symbol", "Date", "Open", "y"],
                                   ["unique_id", "ds", "y", "unique_id"], ["id", "ds"], ["unique_id", "Name", "ds", "y"]]))
    ids = draw(st.lists(st.sampled_from(["a", "b", "c", "", "a ", "ä", "../x", "."]), min_size=1, max_size=3, unique=True))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    rows = []
    for name in ids:
        start = date(2020, 1, 1) + timedelta(days=draw(st.integers(-3000, 3000)))
        prices = 100 + np.cumsum(rng.normal(0, 1, 30))
        for i in range(draw(st.one_of(st.just(30), st.integers(0, 30)))):
            cells = {"unique_id": name, "name": name, "symbol": name, "id": name,
                     "ds": (start + timedelta(days=i)).isoformat(), "date": (start + timedelta(days=i)).isoformat()}
            rows.append([cells.get(column.lower(), f"{prices[i]:.3f}") for column in header])
    for _ in range(draw(st.one_of(st.just(0), st.integers(0, 3)))):
        if rows:
            r, c = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, len(header) - 1))
            rows[r][c] = draw(st.one_of(odd_cell, date_text))
    if rows and draw(st.booleans()):
        rows = [rows[i] for i in rng.permutation(len(rows))]
    text = "\n".join(",".join(row) for row in [header, *rows]) + "\n"
    return draw(encode(text))


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else ("inf" if value > 0 else "-inf") if value in (float("inf"), float("-inf")) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


# A grid key's (valid, odd) values: the keys that set the cost of a fit stay tiny.
_odd = st.sampled_from(["x", "", 1.5, True, -1, 0])
GRID_VALUES = {
    "units": (st.integers(1, 4), _odd), "layers": (st.integers(1, 2), _odd), "lookback": (st.integers(1, 5), _odd),
    "epochs": (st.integers(1, 2), _odd), "horizon": (st.integers(1, 3), _odd),
    "batch_size": (st.integers(1, 64), st.one_of(_odd, st.just(10**6))),
    "dropout": (st.sampled_from([0.0, 0.2, 0.5]), st.one_of(_odd, st.floats(allow_nan=True, allow_infinity=True))),
    "lr": (st.sampled_from([1e-3, 0.01, 0.1]), st.one_of(_odd, st.floats(allow_nan=True, allow_infinity=True))),
    "optimizer": (st.sampled_from(["adam", "rmsprop", "sgd"]), st.sampled_from(["lbfgs", "", 3])),
    "cell": (st.sampled_from(["lstm", "gru", "rnn"]), st.sampled_from(["transformer", 1])),
    "loss": (st.sampled_from(["mse", "mae", "huber"]), st.just("hinge")),
    "target_transform": (st.sampled_from(["level", "diff", "logret"]), st.just("ret")),
    "strategy": (st.sampled_from(["direct", "recursive"]), st.just("x")),
    "features": (st.sampled_from(["Open,Close", "rsi14", "Open,body", "logret"]), st.sampled_from(["nope", "", "Open,Open"])),
    "seed": (st.integers(0, 2**31), st.one_of(st.integers(-(2**70), 2**70), st.just("x"))),
    "clip_norm": (st.sampled_from([0.5, 1.0]), st.one_of(_odd, st.floats(allow_nan=True, allow_infinity=True))),
    "threads": (st.integers(1, 2), _odd),
    "nope": (st.integers(0, 3), st.integers(0, 3)),
}


@st.composite
def grid_toml(draw) -> str:
    """A TOML grid of 1-3 keys with 0-2 values each, or (now and then) a value that is not a list,
    or text that is not TOML at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(["", "units = ", "units = [1,", "[table]\nunits = [1]", "units = 4", "= [1]"]))
    keys = draw(st.lists(st.sampled_from(sorted(GRID_VALUES)), min_size=1, max_size=3, unique=True))
    lines = []
    for key in keys:
        valid, odd = GRID_VALUES[key]
        values = draw(st.lists(st.one_of(valid, valid, valid, odd), max_size=2))
        lines.append(f"{key} = [{', '.join(_toml_value(v) for v in values)}]")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- argument strategies

def _int_values(low: int, high: int):
    return st.one_of(st.integers(low, high).map(str), st.sampled_from(["0", "-1", "abc", "1.5", "", "nan", "1e3"]))


def _float_values():
    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["0", "-1", "1e30", "nan", "inf", "x", "", "0.5", "0.99", "1"]),
    )


# Sizes that set the cost of training stay tiny; the rest may take any value, valid or not.
ARGUMENTS = {
    "--lookback": _int_values(1, 12),
    "--layers": _int_values(1, 2),
    "--units": _int_values(1, 4),
    "--epochs": _int_values(1, 2),
    "--batch-size": st.one_of(_int_values(1, 10**6), st.just("99999999999999999999")),
    "--seed": st.one_of(st.integers(-(2**70), 2**70).map(str), st.sampled_from(["x", ""])),
    "--dropout": _float_values(),
    "--lr": _float_values(),
    "--clip-norm": _float_values(),
    "--val-fraction": _float_values(),
    "--early-stopping": _int_values(1, 3),
    "--cell": st.one_of(st.sampled_from(["lstm", "gru", "rnn", "LSTM", "transformer", ""]), st.text(max_size=5)),
    "--nonlinearity": st.sampled_from(["tanh", "relu", "sigmoid", ""]),
    "--optimizer": st.sampled_from(["adam", "rmsprop", "sgd", "Adam", "lbfgs", ""]),
    "--loss": st.sampled_from(["mse", "mae", "huber", "MSE", "hinge", ""]),
    "--device": st.sampled_from(["cpu", "auto", "cuda", "cuda:7", "meta", "mps", "xpu", "cpu:0", "", "gpu"]),
    "--target": st.one_of(st.sampled_from(["Open", "close", "Volume", "Date", "nope", ""]), st.text(max_size=5)),
    "--features": st.one_of(st.sampled_from(["Open,Close", "Open,Open", ",", "High,Low,Volume", "nope"]), st.text(max_size=5)),
    "--test-from": st.one_of(date_text, st.just("2012-06-01")),
    "--horizon": _int_values(1, 3),
    "--strategy": st.sampled_from(["direct", "recursive", "Recursive", "mimo", ""]),
    "--target-transform": st.sampled_from(["level", "diff", "logret", "LogRet", "ret", ""]),
    "--same-day": st.one_of(st.sampled_from(["Close", "High,Low", "Open", "Close,Close", "nope", ","]), st.text(max_size=5)),
    "--preset": st.sampled_from(["indicators", "nope", ""]),
    "--ensemble": _int_values(1, 3),
    "--interval": _float_values(),
    "--calibration-fraction": _float_values(),
    "--threads": _int_values(1, 2),
}
# Options of one verb only, drawn for that verb alone (so that other verbs' cases stay valid).
VERB_ARGUMENTS = {
    "backtest": {
        "--folds": _int_values(1, 3),
        "--start": st.one_of(date_text, st.sampled_from(["2012-04-02", "2012-04-20"])),
        "--refit-every": _int_values(1, 30),
        "--window": st.sampled_from(["expanding", "sliding", "rolling", ""]),
        "--season": _int_values(1, 30),
    },
    "forecast": {
        "--horizon": _int_values(1, 40),
        "--history": _int_values(1, 300),
    },
}


@st.composite
def arguments(draw, verb_options: dict | None = None) -> list[str]:
    options = {**ARGUMENTS, **(verb_options or {})}
    chosen = draw(st.lists(st.sampled_from(sorted(options)), max_size=4, unique=True))
    argv = []
    for flag in chosen:
        # "--flag=value" so that values starting with "-" are not read as options.
        argv.append(f"{flag}={draw(options[flag])}")
    if draw(st.integers(0, 9)) == 0:
        argv.append(draw(st.sampled_from(["--adjust-splits", "--no-such-flag", "--json", "--force", "-h"])))
    return argv


# ---------------------------------------------------------------- helpers

def call_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run seqcast in-process; only SystemExit (argparse) may escape `main`, and only with 0 or 2."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), time_limit():
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def assert_clean_exit(code, err: str, argv) -> None:
    event(f"exit {code}")  # --hypothesis-show-statistics shows how many cases got all the way through
    assert "Traceback" not in err, (argv, err)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        assert "seqcast: error: " in err, (argv, err)


def _short_csv(workdir) -> Path:
    """The bundled file cut to 80 rows (training on it is short), written once per module."""
    path = workdir / "short.csv"
    if not path.exists():
        path.write_text("\n".join(BUNDLED_LINES[:81]) + "\n")
    return path


def _ends_cleanly(argv: list[str], out: Path) -> None:
    """Run the CLI on ``argv``, remove its output ``out`` whatever happens, check the clean ending."""
    try:
        code, _, err = call_cli(argv)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    assert_clean_exit(code, err, argv)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


_counter = itertools.count()


def _write(workdir, data: bytes):
    path = workdir / "input.csv"
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- the properties

@_settings("loader")
@given(data=csv_bytes)
def test_load_csv_returns_a_clean_frame_or_raises_data_error(workdir, data):
    path = _write(workdir, data)
    with time_limit():
        try:
            frame = load_csv(path)
        except DataError as exc:
            assert str(path) in str(exc)
            event("DataError")
            return
    event("loaded")
    assert isinstance(frame.index, pd.DatetimeIndex) and frame.index.is_monotonic_increasing
    assert frame.index.is_unique and len(frame) >= 1
    for column in frame.columns:
        if frame[column].dtype == np.float64 and column in ("Open", "High", "Low", "Close", "Adj Close"):
            assert np.isfinite(frame[column]).all() and (frame[column] > 0).all()


@_settings("streamed")
@given(data=csv_bytes)
@example(data=b"Date,Open\n2020-01-01," + b"9" * 400 + b"\n2020-01-02,5\n")  # a Python int to_numeric refused
def test_the_streamed_loader_reads_exactly_what_the_whole_file_loader_reads(workdir, data):
    """A differential check of load_csv's streamed path, in blocks of 3 rows and scan pieces of 16
    bytes so that even small files span several: the same frame (values, dtypes, dates, attrs) or
    the same error message as with the streamed path turned off."""
    import seqcast.data as loader

    path = _write(workdir, data)

    def outcome():
        with time_limit():
            try:
                return load_csv(path)
            except DataError as exc:
                return str(exc)

    with mock.patch.object(loader, "_BLOCK_ROWS", 3), mock.patch.object(loader, "_SCAN_BYTES", 16):
        streamed = outcome()
    with mock.patch.object(loader, "_read_plain_blocks", lambda source: None):
        whole = outcome()
    if isinstance(whole, str):
        event("same error")
        assert streamed == whole
    else:
        event("same frame")
        assert isinstance(streamed, pd.DataFrame), streamed
        pd.testing.assert_frame_equal(streamed, whole, check_exact=True)
        assert streamed.attrs == whole.attrs


@_settings("validate")
@given(data=csv_bytes, json_flag=st.booleans(), target=st.sampled_from(["Open", "Close", "Volume", "nope"]))
def test_cli_validate_never_crashes(workdir, data, json_flag, target):
    path = _write(workdir, data)
    argv = ["validate", "--data", str(path), f"--target={target}", *(["--json"] if json_flag else [])]
    code, _, err = call_cli(argv)
    assert_clean_exit(code, err, argv)


@_settings("args")
@given(verb=st.sampled_from(["validate", "train", "run", "predict"]), args=arguments())
# Cases the fuzzer found (tracebacks before the fixes on this branch).
@example(verb="run", args=["--lr=32080236485018.0", "--adjust-splits"])  # residual histogram of a diverged model
@example(verb="train", args=["--seed=-9223372036854775809"])
@example(verb="train", args=["--device=meta"])
@example(verb="train", args=["--device=mps"])
@example(verb="train", args=["--lr=3.402823466385288e+37"])
@example(verb="train", args=["--test-from=0000-01-01"])
@example(verb="train", args=["--test-from=2020-01-01T00:00:00+05:00"])
def test_cli_random_arguments_never_crash(workdir, trained_model, verb, args):
    """Random option values on the bundled file cut to 80 rows, so that training is short."""
    data = _short_csv(workdir)
    out = workdir / f"args-out-{next(_counter)}"
    if verb == "predict":
        argv = ["predict", "--model", str(trained_model), "--data", str(data), "--out", str(out / "p.csv"), "--quiet"]
        argv += [a for a in args if a.split("=")[0] in ("--adjust-splits", "--json", "--force", "--no-such-flag")]
    elif verb == "validate":
        argv = ["validate", "--data", str(data), *[a for a in args if a.split("=")[0] in ("--target", "--adjust-splits", "--json", "--no-such-flag", "-h")]]
    else:
        argv = [verb, "--data", str(data), "--out", str(out), *TINY, *args]
        if verb == "run" and not any(a.startswith("--test-from") for a in args):
            argv.append("--test-from=2012-04-02")
    _ends_cleanly(argv, out)


@_settings("verbs")
@given(verb=st.sampled_from(["backtest", "forecast"]), data=st.data())
def test_cli_backtest_and_forecast_with_random_arguments_never_crash(workdir, trained_model, verb, data):
    """Random values of every model option and of the verb's own (folds, windows, refits, forecast
    horizons), on the bundled file cut to 80 rows."""
    args = data.draw(arguments(VERB_ARGUMENTS[verb]), label="args")
    short = _short_csv(workdir)
    out = workdir / f"verb-out-{next(_counter)}"
    if verb == "forecast":
        argv = ["forecast", "--model", str(trained_model), "--out", str(out / "f.csv"), "--quiet"]
        argv += [a for a in args if a.split("=")[0] in ("--horizon", "--history", "--adjust-splits", "--json", "--force", "--no-such-flag", "-h")]
        if data.draw(st.booleans(), label="with --data"):
            argv += ["--data", str(short)]
    else:
        argv = ["backtest", "--data", str(short), "--out", str(out), *TINY, *[a for a in args if not a.startswith("--test-from")]]
    _ends_cleanly(argv, out)


@_settings("long")
@given(data=long_csv(), id_column=st.sampled_from([None, "unique_id", "Name", "nope"]))
def test_cli_backtest_of_a_fuzzed_long_format_file_never_crashes(workdir, data, id_column):
    """Many series from one long-format file: each series' problem is reported and the others run,
    or the whole file is refused with one clean line."""
    path = workdir / "long.csv"
    path.write_bytes(data)
    out = workdir / f"long-out-{next(_counter)}"
    argv = ["backtest", "--data", str(path), "--target", "y", "--folds", "1", "--out", str(out), *TINY]
    if id_column is not None:
        argv += ["--id-column", id_column]
    _ends_cleanly(argv, out)


@_settings("tune")
@given(grid=grid_toml(), extra=st.lists(st.sampled_from(
    ["--folds=1", "--folds=3", "--folds=0", "--folds=x", "--search=random", "--n-iter=2", "--n-iter=0",
     "--scoring=mape", "--scoring=r2", "--test-size=5", "--test-size=0", "--test-size=9999"]), max_size=3, unique=True))
def test_cli_tune_with_a_fuzzed_grid_never_crashes(workdir, grid, extra):
    """`seqcast tune` on the bundled file cut to 80 rows with a random TOML grid."""
    data = _short_csv(workdir)
    grid_path = workdir / "grid.toml"
    grid_path.write_text(grid)
    out = workdir / f"tune-out-{next(_counter)}"
    argv = ["tune", "--data", str(data), "--grid", str(grid_path), "--out", str(out), *TINY, *extra]
    if not any(a.startswith("--folds") for a in extra):
        argv.append("--folds=2")
    _ends_cleanly(argv, out)


@pytest.fixture(scope="module")
def written_folders(workdir):
    """A run folder (with an ensemble's interval columns) and a backtest folder written by seqcast."""
    data = _short_csv(workdir)
    folders = {"run": workdir / "written-run", "backtest": workdir / "written-backtest"}
    code, _, err = call_cli(["run", "--data", str(data), "--test-from=2012-04-02", "--out", str(folders["run"]),
                             "--ensemble", "2", "--calibration-fraction", "0.5", *TINY])
    assert code == 0, err
    code, _, err = call_cli(["backtest", "--data", str(data), "--folds", "2", "--out", str(folders["backtest"]), *TINY])
    assert code == 0, err
    return folders


_JSON_VALUES = st.sampled_from([None, "x", -1, 0, 1.5, True, [], {}, [1, "a"], {"a": 1}])


@_settings("report")
@given(kind=st.sampled_from(["run", "backtest"]), data=st.data())
def test_cli_report_on_a_damaged_folder_never_crashes(workdir, written_folders, kind, data):
    """`seqcast report` on a copy of a real run or backtest folder with one file damaged: cut short,
    random bytes inserted, a CSV cell replaced, or a JSON value replaced or removed."""
    folder = workdir / f"damaged-{next(_counter)}"
    shutil.copytree(written_folders[kind], folder, ignore=shutil.ignore_patterns("model", "report.html", "*.png"))
    try:
        target = data.draw(st.sampled_from(sorted(p for p in folder.iterdir() if p.suffix in (".csv", ".json"))), label="file")
        raw = target.read_bytes()
        op = data.draw(st.sampled_from(["cut", "bytes", "cell", "json"]), label="damage")
        if op == "cut":
            raw = raw[: data.draw(st.integers(0, len(raw)))]
        elif op == "bytes":
            at = data.draw(st.integers(0, len(raw)))
            raw = raw[:at] + data.draw(st.binary(min_size=1, max_size=8)) + raw[at:]
        elif op == "cell" and target.suffix == ".csv":
            lines = raw.decode().splitlines()
            i = data.draw(st.integers(0, len(lines) - 1))
            cells = lines[i].split(",")
            cells[data.draw(st.integers(0, len(cells) - 1))] = data.draw(st.one_of(odd_cell, date_text)).replace(",", "")
            lines[i] = ",".join(cells)
            raw = ("\n".join(lines) + "\n").encode()
        elif op == "json" and target.suffix == ".json":
            doc = json.loads(raw)
            parent = doc
            keys = sorted(parent)
            key = data.draw(st.sampled_from(keys))
            if isinstance(parent[key], dict) and parent[key] and data.draw(st.booleans()):
                parent, key = parent[key], data.draw(st.sampled_from(sorted(parent[key])))
            if data.draw(st.booleans()):
                del parent[key]
            else:
                parent[key] = data.draw(_JSON_VALUES)
            raw = json.dumps(doc).encode()
        target.write_bytes(raw)
        code, _, err = call_cli(["report", str(folder)])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert_clean_exit(code, err, [kind, target.name])


@pytest.fixture(scope="module")
def trained_model(workdir):
    model = workdir / "model"
    data = workdir / "model-train.csv"
    data.write_text("\n".join(BUNDLED_LINES[:81]) + "\n")
    code, _, err = call_cli(["train", "--data", str(data), "--out", str(model), "--features", "Open,High", *TINY])
    assert code == 0, err
    return model


@_settings("predict")
@given(data=csv_bytes)
def test_cli_predict_on_fuzzed_data_never_crashes(workdir, trained_model, data):
    path = _write(workdir, data)
    out = workdir / "predictions.csv"
    argv = ["predict", "--model", str(trained_model), "--data", str(path), "--out", str(out), "--quiet", "--force"]
    code, _, err = call_cli(argv)
    assert_clean_exit(code, err, argv)
    if code == 0:
        assert pd.read_csv(out).columns[-1] == "predicted"


@_settings("train")
@given(data=csv_bytes)
def test_cli_train_on_fuzzed_data_never_crashes(workdir, data):
    path = _write(workdir, data)
    out = workdir / f"train-{next(_counter)}"
    argv = ["train", "--data", str(path), "--out", str(out), *TINY]
    try:
        code, _, err = call_cli(argv)
        assert_clean_exit(code, err, argv)
        # A failed train leaves no model folder behind, a successful one a complete folder.
        assert (out / "manifest.json").is_file() if code == 0 else not out.exists()
    finally:
        shutil.rmtree(out, ignore_errors=True)


@_settings("run")
@given(data=csv_bytes, fuzz_test_file=st.booleans())
@example(data=b"Date,Open\n0000-1,1", fuzz_test_file=False)  # year 0: found by the fuzzer
@example(data=b"Date,Open\n2017-01-03,1\n2017-01-04,2\n", fuzz_test_file=True)  # test file without Close
@example(data=b"Date,Open,Close\n1/1/0100,1,116\n", fuzz_test_file=True)  # test period before the training data
def test_cli_run_on_fuzzed_train_or_test_file_never_crashes(workdir, data, fuzz_test_file):
    """One side is fuzzed, the other is a real file, so that valid cases run to the end."""
    fuzzed = _write(workdir, data)
    path, test_path = (GOOGLE_TRAIN, fuzzed) if fuzz_test_file else (fuzzed, GOOGLE_TEST)
    out = workdir / f"run-{next(_counter)}"
    argv = ["run", "--data", str(path), "--test", str(test_path), "--out", str(out), *TINY]
    try:
        code, _, err = call_cli(argv)
        assert_clean_exit(code, err, argv)
        assert (out / "metrics.json").is_file() if code == 0 else not out.exists()
    finally:
        shutil.rmtree(out, ignore_errors=True)
