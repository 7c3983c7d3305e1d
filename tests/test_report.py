import base64
import json
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg

from seqcast import Forecaster
from seqcast.backtest import evaluate_holdout
from seqcast.cli import main
from seqcast.datasets import GOOGLE_TRAIN
from seqcast.report import write_run

from .conftest import TINY

FAST = ["--epochs", "1", "--layers", "1", "--units", "8", "--lookback", "20", "--device", "cpu", "--quiet"]
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def backtest_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bt") / "backtest"
    code = main(["backtest", "--data", str(GOOGLE_TRAIN), "--start", "2016-11-01", "--refit-every", "21", "--horizon", "2", "--threads", "1", "--report", "--out", str(out), *FAST])
    assert code == 0
    return out


def _yahoo_csv(path: Path) -> Path:
    """The bundled file rewritten the way Yahoo Finance exports it: ISO dates, Adj Close, plain numbers."""
    raw = pd.read_csv(GOOGLE_TRAIN, thousands=",").iloc[-300:]  # the last 300 days keep the test quick
    raw["Date"] = pd.to_datetime(raw["Date"], format="%m/%d/%Y").dt.strftime("%Y-%m-%d")
    raw["Adj Close"] = raw["Close"]  # no split in these rows: adjusted equals raw
    raw[["Date", "Open", "High", "Low", "Close", "Adj Close", "Volume"]].to_csv(path, index=False)
    return path


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_backtest_cli_prints_the_leaderboard_and_writes_every_output(backtest_dir, capsys):
    for name in ("backtest.csv", "leaderboard.csv", "leaderboard.json", "folds.csv", "report.html", "backtest.png"):
        assert (backtest_dir / name).is_file(), name
    long = pd.read_csv(backtest_dir / "backtest.csv")
    assert long["fold"].max() == 2 and long["date"].min() == "2016-11-01"


def test_backtest_writes_per_step_scores(backtest_dir):
    steps = pd.read_csv(backtest_dir / "per_step.csv").set_index(["step", "model"])
    assert sorted(set(steps.index.get_level_values("step"))) == [1, 2]
    # Persistence two steps ahead, by hand from the raw file: the forecast issued on day p for day p + 1
    # is the Open of day p - 1. Origins run from 2016-11-01 to the last row; the last one has no h2 target.
    raw = pd.read_csv(GOOGLE_TRAIN, thousands=",")
    dates = pd.to_datetime(raw["Date"], format="%m/%d/%Y")
    y = raw["Open"].to_numpy(dtype=float)
    first = int(np.argmax(dates >= pd.Timestamp("2016-11-01")))
    errors = np.array([y[p + 1] - y[p - 1] for p in range(first, len(y) - 1)])
    assert steps.loc[(2, "persistence"), "n"] == len(errors)
    assert steps.loc[(2, "persistence"), "rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)), rel=1e-5)
    board = pd.read_csv(backtest_dir / "leaderboard.csv", index_col="model")
    assert steps.loc[(1, "seqcast"), "rmse"] == pytest.approx(board.loc["seqcast", "rmse"], rel=1e-5)
    doc = json.loads((backtest_dir / "leaderboard.json").read_text())
    assert len(doc["per_step"]) == len(steps) and doc["settings"]["model"]["threads"] == 1
    page = (backtest_dir / "report.html").read_text()
    assert "Accuracy per horizon step" in page and "<td>h2</td>" in page
    assert f"{steps.loc[(2, 'persistence'), 'rmse']:.4g}" in page


def test_backtest_on_a_yahoo_layout_csv(tmp_path, capsys):
    data = _yahoo_csv(tmp_path / "GOOG.csv")
    out = tmp_path / "bt"
    args = ["--folds", "2", "--refit-every", "15", "--horizon", "2", "--threads", "1", "--report", "--out", str(out)]
    assert main(["backtest", "--data", str(data), *args, *FAST]) == 0
    printed = capsys.readouterr().out
    steps = pd.read_csv(out / "per_step.csv").set_index(["step", "model"])
    h2 = next(line for line in printed.splitlines() if line.strip().startswith("h2"))
    assert "RMSE per horizon step" in printed and f"{steps.loc[(2, 'persistence'), 'rmse']:.2f}" in h2
    assert "DM p" in printed and "last-close (baseline)" in printed and "best" in printed
    verdict = [line for line in printed.splitlines() if line.startswith(("seqcast is", "seqcast does"))]
    assert verdict and ("p = " in verdict[0] or "p < " in verdict[0])
    board = pd.read_csv(out / "leaderboard.csv", index_col="model")
    # The printed p-value of the persistence row is the leaderboard's.
    row = next(line for line in printed.splitlines() if line.startswith("persistence (baseline)"))
    assert f"{board.loc['persistence', 'dm_p']:.3g}" in row
    assert (out / "report.html").stat().st_size > 10_000


def test_report_is_self_contained(backtest_dir):
    page = (backtest_dir / "report.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert not re.findall(r'src="(?!data:)', page) and "url(" not in page
    images = _images(page)
    assert len(images) >= 4
    for png in images:
        pixels = mpimg.imread(io.BytesIO(png), format="png")
        assert pixels.ndim == 3 and pixels.std() > 0
    for section in ("Leaderboard", "Validation warnings", "Configuration", "Backtest folds", "Residuals", "loss"):
        assert section in page
    assert "Close jumps" in page  # the bundled file's split warning reaches the report


def test_report_verb_rebuilds_a_run_folder(small_series, tmp_path, capsys):
    train, test = small_series
    forecaster = Forecaster(target="Open", **TINY)
    run = tmp_path / "run"
    write_run(run, evaluate_holdout(forecaster, train, test), forecaster, info={"data": "small series", "warnings": []})
    assert not (run / "report.html").exists()
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    preds = pd.read_csv(run / "predictions.csv")
    assert "real vs predicted" in page.lower() and len(_images(page)) == 3
    # The leaderboard in the page carries the run's numbers.
    rmse = np.sqrt(np.mean((preds["actual"] - preds["persistence"]) ** 2))
    assert f"{rmse:.4g}" in page
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a run" in capsys.readouterr().err


def _chromium(page: Path, tmp_path: Path, name: str) -> tuple[subprocess.CompletedProcess, Path]:
    shot = tmp_path / f"{name}.png"
    proc = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            f"--user-data-dir={tmp_path / (name + '-profile')}",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,2400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, shot


def _console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed (apt-get install chromium); .ci/run installs it")
def test_report_renders_in_headless_chromium(backtest_dir, tmp_path):
    # The detector must see a console error when there is one, or the real check below proves nothing.
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><body><p>x</p><script>console.error("seqcast-canary")</script></body></html>')
    proc, _ = _chromium(broken, tmp_path, "broken")
    assert any("seqcast-canary" in m for m in _console_messages(proc.stderr)), proc.stderr[-2000:]

    proc, shot = _chromium(backtest_dir / "report.html", tmp_path, "report")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _console_messages(proc.stderr) == []
    pixels = mpimg.imread(str(shot))
    assert pixels.shape[0] > 1000 and pixels.shape[1] > 1000
    assert pixels[..., :3].std() > 0.05  # not blank: text, tables and figures on white
    shutil.rmtree(tmp_path / "report-profile", ignore_errors=True)


@pytest.mark.parametrize("verb", ["backtest", "report"])
def test_new_verbs_have_help(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert ("(default: expanding)" in text and "--refit-every" in text) if verb == "backtest" else "RUN_DIR" in text


def test_residual_plot_of_a_diverged_model_is_drawn_and_a_failed_plot_leaks_no_figure(tmp_path):
    """Found by `make fuzz` (`run --lr=3.2e13`): residuals of about -4.5e15 that differ in the
    last few units are too close together for 30 histogram bins, and numpy refused; the figure of
    the failed plot then stayed open in pyplot."""
    import matplotlib.pyplot as plt

    from seqcast import plots

    index = pd.bdate_range("2017-01-03", periods=20)
    actual = pd.Series(np.linspace(786.0, 800.0, 20), index=index)
    predictions = pd.DataFrame({"actual": actual, "seqcast": actual + 4503599941523840.0 + np.arange(20) % 3,
                                "persistence": actual.shift(1)})
    with pytest.raises(ValueError, match="Too many bins"):
        np.histogram((predictions["actual"] - predictions["seqcast"]).to_numpy(), bins=30)
    before = set(plt.get_fignums())
    path = plots.plot_residuals(predictions, tmp_path / "residuals.png", target="Open", baseline="persistence")
    assert path.read_bytes().startswith(b"\x89PNG")
    predictions.loc[index[3], "seqcast"] = np.inf  # a non-finite residual is left out of the histogram
    plots.plot_residuals(predictions, tmp_path / "residuals.png", target="Open", baseline="persistence")
    with pytest.raises(KeyError):
        plots.plot_residuals(predictions, tmp_path / "other.png", target="Open", baseline="no-such-column")
    assert set(plt.get_fignums()) == before
    assert not (tmp_path / "other.png").exists()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("backtest.csv", "", "backtest.csv: cannot read it"),
        ("backtest.csv", "fold,date\n", "backtest.csv: it has no column model, actual, predicted"),
        ("backtest.csv", "fold,date,model,actual,predicted\n1,xx,seqcast,1,2\n", "backtest.csv: a date in it does not parse"),
        ("backtest.csv", "fold,date,model,actual,predicted\n1,2020-01-01,seqcast,abc,2\n", "column actual holds something that is not a number"),
        ("backtest.csv", "fold,date,model,actual,predicted\n1,2020-01-01,seqcast,1,2\n", "backtest.csv has no predictions of"),
        ("leaderboard.json", '{"target": "Open"}', "leaderboard.json has no best_baseline"),
        ("leaderboard.json", None, "its files are not laid out as seqcast writes them"),
    ],
)
def test_report_on_a_damaged_backtest_folder_names_the_file(backtest_dir, tmp_path, capsys, name, content, message):
    """Found by fuzzing `seqcast report`: a damaged CSV or JSON in the folder gave a pandas or
    KeyError traceback from deep in a figure."""
    folder = tmp_path / "bt"
    shutil.copytree(backtest_dir, folder)
    if content is None:  # valid JSON, another layout: the folds list replaced by a number
        doc = json.loads((folder / name).read_text())
        doc["folds"] = 3
        content = json.dumps(doc)
    (folder / name).write_text(content)
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqcast: error: ") and message in err and "Traceback" not in err, err
