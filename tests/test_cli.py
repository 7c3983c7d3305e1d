import inspect
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from seqcast import Forecaster, load_csv
from seqcast.cli import main
from seqcast.datasets import GOOGLE_TEST, GOOGLE_TRAIN

FAST = ["--epochs", "1", "--layers", "1", "--units", "8", "--lookback", "20", "--device", "cpu", "--quiet"]


def test_run_end_to_end_on_bundled_data(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "persistence (baseline)" in printed and "seqcast" in printed and str(out) in printed
    preds = pd.read_csv(out / "predictions.csv", parse_dates=["date"])
    assert list(preds.columns[:3]) == ["date", "actual", "predicted"] and len(preds) == 20
    assert preds["predicted"].notna().all()
    # The persistence baseline is yesterday's Open: check it against the raw test file.
    raw_test = pd.read_csv(GOOGLE_TEST)
    raw_train = pd.read_csv(GOOGLE_TRAIN)
    yesterday = np.r_[raw_train["Open"].iloc[-1], raw_test["Open"].iloc[:-1]]
    np.testing.assert_allclose(preds["persistence"], yesterday)
    metrics = json.loads((out / "metrics.json").read_text())
    expected_rmse = float(np.sqrt(np.mean((raw_test["Open"] - yesterday) ** 2)))
    assert metrics["metrics"]["persistence"]["rmse"] == pytest.approx(expected_rmse)
    assert metrics["metrics"]["persistence"]["rmse"] == pytest.approx(8.42, abs=0.005)
    assert set(metrics["metrics"]["seqcast"]) >= {"rmse", "mae", "mape"}
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "model" / "weights.safetensors").is_file()


def test_train_then_predict(tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["train", "--data", str(GOOGLE_TRAIN), "--test-from", "2016-12-01", "--out", str(model), *FAST]) == 0
    assert "persistence" in capsys.readouterr().out
    preds_path = tmp_path / "preds.csv"
    assert main(["predict", "--model", str(model), "--data", str(GOOGLE_TEST), "--out", str(preds_path), "--quiet"]) == 0
    preds = pd.read_csv(preds_path)
    # The test file starts after the training rows, so the saved tail gives every row a prediction.
    assert len(preds) == 20 and preds["predicted"].notna().all()
    # Existing outputs are not overwritten without --force.
    assert main(["predict", "--model", str(model), "--data", str(GOOGLE_TEST), "--out", str(preds_path)]) == 2
    assert "--force" in capsys.readouterr().err


def test_json_output_is_the_only_thing_on_stdout(tmp_path, capsys):
    assert main(["validate", "--data", str(GOOGLE_TRAIN), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rows"] == 1258 and any("2014-03-27" in w for w in doc["warnings"])


def test_bad_file_exits_2_with_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("Date,Open\n2020-01-01,1\n2020-01-02,abc\n")
    proc = subprocess.run(
        [sys.executable, "-m", "seqcast", "train", "--data", str(bad), "--out", str(tmp_path / "m"), *FAST],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("seqcast: error:") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "bad.csv" in proc.stderr and "row 3" in proc.stderr and "Open" in proc.stderr


@pytest.mark.parametrize("verb", ["run", "train", "predict", "forecast", "validate", "backtest", "report", "tune"])
def test_every_verb_has_help_with_defaults(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--" in text
    if verb in ("run", "train"):
        assert "(default: 60)" in text and "(default: lstm)" in text
    # No empty defaults, and none stated twice (help text that names its default gets no second one).
    assert "(default: None)" not in text and "(default: False)" not in text
    for option in re.split(r"\n  (?=-)", text):
        assert len(re.findall(r"\(default[: ]", option)) <= 1, option


def test_the_parser_s_defaults_are_the_library_s():
    # The parser reads seqcast.defaults so that it needs no torch; these hold it to the library.
    from seqcast import defaults, forecaster, metrics, tuning

    assert Forecaster().get_params() == defaults.FORECASTER_DEFAULTS
    assert list(inspect.signature(Forecaster).parameters) == list(defaults.FORECASTER_DEFAULTS)  # its order
    assert forecaster.PRESETS is defaults.PRESETS
    assert tuple(metrics.METRICS) == defaults.SCORINGS == tuning.SCORINGS


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["run", "--epochs", "x"], ["tune", "--scoring", "nope"]])
def test_help_and_argument_errors_need_no_torch_pandas_or_sklearn(argv):
    # --help and a mistyped option answer without the ~4 s of library imports.
    code = (
        "import sys\n"
        "from seqcast.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as exit:\n"
        "    code = exit.code\n"
        "heavy = sorted(m for m in ('torch', 'pandas', 'sklearn', 'matplotlib', 'scipy') if m in sys.modules)\n"
        "print('HEAVY', heavy, code, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stderr.strip().splitlines()[-1] == f"HEAVY [] {0 if argv[-1] == '--help' else 2}", proc.stderr


def test_missing_file_and_unknown_option_exit_2(tmp_path, capsys):
    assert main(["validate", "--data", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["run", "--no-such-flag"])
    assert exc.value.code == 2


# ---- features, horizons and the forecast verb (issue 4) -------------------------------------------


def _yahoo_crypto_csv(path, n=120):
    """Yahoo Finance's layout (Adj Close, ISO dates) for a 7-day series such as BTC-USD."""
    rng = np.random.default_rng(5)
    close = 30000 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    frame = pd.DataFrame(
        {"Date": pd.date_range("2023-01-01", periods=n, freq="D").strftime("%Y-%m-%d"), "Open": close * 0.99,
         "High": close * 1.02, "Low": close * 0.97, "Close": close, "Adj Close": close, "Volume": 1e9},
    )
    frame.to_csv(path, index=False)
    return frame


def test_train_and_forecast_with_indicators_on_bundled_data(tmp_path, capsys):
    model = tmp_path / "model"
    args = ["--features", "Open,close,rsi14,logret", "--target-transform", "diff", "--horizon", "2", "--adjust-splits"]
    assert main(["train", "--data", str(GOOGLE_TRAIN), "--test-from", "2016-12-01", "--out", str(model), *args, *FAST]) == 0
    printed = capsys.readouterr().out
    assert "inputs Open, Close, rsi14, logret" in printed and "first 14 rows" in printed and "h2" in printed
    out = tmp_path / "forecast.csv"
    assert main(["forecast", "--model", str(model), "--data", str(GOOGLE_TEST), "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(out, parse_dates=["date"])
    assert list(table.columns) == ["date", "step", "forecast"]
    assert list(table["date"]) == [pd.Timestamp("2017-02-01"), pd.Timestamp("2017-02-02")]
    # Continuing the training file: the first trading day of 2017 was January 3 (January 2 was closed).
    more = tmp_path / "after-2016.csv"
    assert main(["forecast", "--model", str(model), "--data", str(GOOGLE_TRAIN), "--adjust-splits", "--out", str(more)]) == 0
    assert "business days without NYSE holidays" in capsys.readouterr().out
    assert list(pd.read_csv(more, parse_dates=["date"])["date"]) == [pd.Timestamp("2017-01-03"), pd.Timestamp("2017-01-04")]
    assert (tmp_path / "forecast.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["forecast", "--model", str(model), "--horizon", "5", "--out", str(tmp_path / "f5.csv")]) == 2
    assert "--horizon 5" in capsys.readouterr().err
    # Without --data the forecast starts from the rows the model keeps, and says how few they are.
    kept = len(Forecaster.load(model).context_)
    assert main(["forecast", "--model", str(model), "--out", str(tmp_path / "kept.csv"), "--history", str(kept)]) == 0
    printed = capsys.readouterr().out
    assert f"data   the model's last {kept} training rows, up to 2016-11-30\n" in printed
    assert main(["forecast", "--model", str(model), "--out", str(tmp_path / "kept.csv"), "--history", "500", "--force"]) == 0
    assert "(the plot shows those; --data FILE shows up to --history 500 rows)" in capsys.readouterr().out


def test_recursive_forecast_of_a_yahoo_crypto_file_continues_every_day(tmp_path, capsys):
    data = tmp_path / "BTC-USD.csv"
    _yahoo_crypto_csv(data)
    model = tmp_path / "model"
    args = ["--target", "Close", "--features", "close,sma5,rsi6,logret,dow", "--target-transform", "logret",
            "--strategy", "recursive", "--horizon", "3"]
    assert main(["train", "--data", str(data), "--test-from", "2023-04-10", "--out", str(model), *args, *FAST]) == 0
    assert "per step (recursive)" in capsys.readouterr().out
    out = tmp_path / "f.csv"
    assert main(["forecast", "--model", str(model), "--data", str(data), "--horizon", "10", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    dates = pd.to_datetime([row["date"] for row in doc["forecast"]])
    assert list(dates) == list(pd.date_range("2023-05-01", periods=10, freq="D"))  # weekends included
    # Features that need columns the recursion cannot predict are refused with the fix.
    bad = ["--target", "Close", "--features", "close,volume", "--strategy", "recursive"]
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "m2"), *bad, *FAST]) == 2
    assert "--strategy direct" in capsys.readouterr().err


def test_forecast_a_monthly_non_stock_series(tmp_path, capsys):
    months = pd.date_range("2014-01-01", periods=72, freq="MS")
    values = 100 + 30 * np.sin(np.arange(72) * 2 * np.pi / 12) + np.random.default_rng(2).normal(0, 2, 72)
    data = tmp_path / "visitors.csv"
    pd.DataFrame({"date": months.strftime("%Y-%m-%d"), "visitors": values.round(1)}).to_csv(data, index=False)
    model = tmp_path / "model"
    args = ["--target", "visitors", "--features", "visitors,month", "--strategy", "recursive", "--lookback", "12"]
    fast = [a for a in FAST if a not in ("--lookback", "20")]
    assert main(["train", "--data", str(data), "--out", str(model), *args, *fast]) == 0
    out = tmp_path / "f.csv"
    assert main(["forecast", "--model", str(model), "--horizon", "4", "--out", str(out)]) == 0
    assert "month starts" in capsys.readouterr().out
    table = pd.read_csv(out, parse_dates=["date"])
    assert list(table["date"]) == list(pd.date_range("2020-01-01", periods=4, freq="MS"))


def test_forecast_of_an_exchange_with_other_holidays_skips_the_dates_its_history_skips(tmp_path, capsys):
    # Closed on 1 January, 1 May and 25-26 December, open on the NYSE's holidays: the forecast's dates
    # skip the fixed dates the file leaves out every year, and the line says which.
    days = pd.bdate_range("2012-01-02", "2016-12-20")  # 26 December on a weekday in 2012, 2013, 2014
    days = days[~pd.Series([(d.month, d.day) in {(1, 1), (5, 1), (12, 25), (12, 26)} for d in days]).to_numpy()]
    rng = np.random.default_rng(4)
    close = 50 + np.cumsum(rng.normal(0, 0.5, len(days)))
    data = tmp_path / "dax.csv"
    pd.DataFrame({"Date": days.strftime("%Y-%m-%d"), "Open": close.round(2), "Close": close.round(2)}).to_csv(data, index=False)
    model = tmp_path / "model"
    assert main(["train", "--data", str(data), "--out", str(model), "--horizon", "4", *FAST]) == 0
    out = tmp_path / "f.csv"
    assert main(["forecast", "--model", str(model), "--data", str(data), "--horizon", "4", "--out", str(out)]) == 0
    assert "business days without the holidays the history skips every year: 01-01, 05-01, 12-25, 12-26" in (
        capsys.readouterr().out
    )
    table = pd.read_csv(out, parse_dates=["date"])
    assert [d.date().isoformat() for d in table["date"]] == ["2016-12-21", "2016-12-22", "2016-12-23", "2016-12-27"]


def test_preset_fills_options_the_user_did_not_give(tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["train", "--data", str(GOOGLE_TRAIN), "--adjust-splits", "--preset", "indicators", "--out", str(model), *FAST]) == 0
    printed = capsys.readouterr().out
    from seqcast.forecaster import PRESETS

    preset = PRESETS["indicators"]
    assert f"features {preset['features']}" in printed and f"target {preset['target_transform']}" in printed
    assert "1 epochs" in printed and "1×8" in printed  # explicit flags win over the preset
    config = json.loads((model / "config.json").read_text())
    assert config["params"]["features"] == preset["features"] and config["params"]["epochs"] == 1


def test_same_day_inputs_are_announced_and_recorded(tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["train", "--data", str(GOOGLE_TRAIN), "--adjust-splits", "--same-day", "Close", "--out", str(model), *FAST]) == 0
    assert "same-day values of Close are inputs" in capsys.readouterr().out
    assert json.loads((model / "config.json").read_text())["same_day_inputs"] == ["Close"]


def test_run_with_a_horizon_writes_per_step_scores(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--horizon", "3", "--threads", "1", "--report", *FAST]) == 0
    assert "per step (direct)" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"]["threads"] == 1
    # Each step by hand: the forecast issued on test day t for day t + k - 1 against the raw test file.
    model = Forecaster.load(out / "model")
    test = load_csv(GOOGLE_TEST)
    ahead = model.predict_horizons(test).to_numpy()
    y = test["Open"].to_numpy()
    for k in (1, 2, 3):
        errors = np.array([y[t + k - 1] - ahead[t, k - 1] for t in range(len(y) - k + 1)])
        scores = metrics["horizon_scores"][f"h{k}"]
        assert scores["n"] == len(errors)
        assert scores["rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)), rel=1e-5)
        assert scores["mae"] == pytest.approx(np.mean(np.abs(errors)), rel=1e-5)
    assert metrics["horizon_scores"]["h1"]["rmse"] == pytest.approx(metrics["metrics"]["seqcast"]["rmse"], rel=1e-9)
    page = (out / "report.html").read_text()
    assert "Accuracy per horizon step" in page and f"{metrics['horizon_scores']['h3']['rmse']:.4g}" in page


def test_backtest_jobs_fits_one_series_folds_at_once_with_the_same_outputs(tmp_path, capsys):
    common = ["backtest", "--data", str(GOOGLE_TRAIN), "--folds", "3", "--refit-every", "20", *FAST]
    assert main([*common, "--jobs", "2", "--out", str(tmp_path / "parallel")]) == 0
    assert "folds fitted 2 at a time, one torch thread each" in capsys.readouterr().out
    assert main([*common, "--threads", "1", "--out", str(tmp_path / "alone")]) == 0
    for name in ("backtest.csv", "per_step.csv", "leaderboard.csv"):
        assert (tmp_path / "parallel" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes(), name
    assert main([*common, "--jobs", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "--jobs" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "start, message",
    [
        ("2020-01-01T00:00:00+05:00", "--start 2020-01-01 leaves 1258 training and 0 test rows"),
        ("2016-06-01T00:00:00-04:00", None),  # a UTC offset is dropped: the local wall-clock time cuts
        ("0000-01-01", "--start 0000-01-01 leaves 0 training and 1258 test rows"),
        ("99999-01-01", "is not a date"),
    ],
)
def test_backtest_start_with_an_offset_or_an_odd_year_is_a_clean_error_or_a_cut(tmp_path, capsys, start, message):
    """Found by `make fuzz`: --start with a UTC offset crashed comparing tz-aware and naive dates,
    and year 0 crashed while writing the message."""
    out = tmp_path / "bt"
    code = main(["backtest", "--data", str(GOOGLE_TRAIN), f"--start={start}", "--out", str(out), *FAST])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0, err
        plain = tmp_path / "plain"
        assert main(["backtest", "--data", str(GOOGLE_TRAIN), "--start=2016-06-01", "--out", str(plain), *FAST]) == 0
        assert (out / "backtest.csv").read_text() == (plain / "backtest.csv").read_text()
    else:
        assert code == 2 and message in err and "Traceback" not in err, err


def test_run_with_a_test_file_of_four_rows(tmp_path, capsys):
    """Fewer test rows than the lag diagnosis's 5 lags: printed a traceback before."""
    test = tmp_path / "jan4.csv"
    test.write_text("\n".join(GOOGLE_TEST.read_text().splitlines()[:5]) + "\n")
    assert main(["run", "--data", str(GOOGLE_TRAIN), "--test", str(test), "--out", str(tmp_path / "out"), *FAST]) == 0
    assert "4 rows 2017-01-03..2017-01-06" in capsys.readouterr().out


def test_predicting_a_file_that_starts_long_after_training_warns_about_the_borrowed_history(tmp_path, capsys):
    """The first rows of a file take their history from the model's remembered training rows. Right
    after training (January 2017) that is the seed's own concatenation; three years later it is
    history from another period, which predict now says."""
    model = tmp_path / "model"
    assert main(["train", "--data", str(GOOGLE_TRAIN), "--out", str(model), *FAST]) == 0
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--data", str(GOOGLE_TEST), "--out", str(tmp_path / "jan.csv")]) == 0
    assert "warning" not in capsys.readouterr().out
    later = tmp_path / "later.csv"
    frame = pd.read_csv(GOOGLE_TEST)
    frame["Date"] = pd.bdate_range("2020-01-06", periods=len(frame)).strftime("%Y-%m-%d")
    frame.to_csv(later, index=False)
    assert main(["predict", "--model", str(model), "--data", str(later), "--out", str(tmp_path / "later-p.csv")]) == 0
    printed = capsys.readouterr().out
    assert "warning: the first 20 rows take their history from the model's last training rows (up to 2016-12-30)" in printed
    # A forecast reads only the last 20 rows (the lookback): from a 20-row file, all its own; from a
    # 10-row file, half of them borrowed.
    assert main(["forecast", "--model", str(model), "--data", str(later), "--out", str(tmp_path / "f.csv")]) == 0
    assert "warning" not in capsys.readouterr().out
    frame.iloc[:10].to_csv(later, index=False)
    assert main(["forecast", "--model", str(model), "--data", str(later), "--out", str(tmp_path / "f10.csv")]) == 0
    assert "warning: the first 10 rows take their history" in capsys.readouterr().out
