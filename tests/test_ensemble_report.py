"""What a run or backtest of an ensemble shows: interval coverage in the report, every member's training."""

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection

from seqcast import plots
from seqcast.backtest import evaluate_holdout
from seqcast.cli import main
from seqcast.conformal import EnsembleForecaster
from seqcast.forecaster import Forecaster
from seqcast.report import write_report, write_run

from .conftest import TINY


@pytest.fixture
def drawn(monkeypatch):
    """The figures the report draws, by file name, kept open so the test can read their artists."""
    figures = {}
    original = plots._save

    def keep(fig, path):
        figures[str(path).rsplit("/", 1)[-1]] = fig
        fig.canvas.draw()
        return original(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def _coverage(actual, lower, upper) -> float:
    inside = [lo <= a <= up for a, lo, up in zip(actual, lower, upper)]
    return sum(inside) / len(inside)


def _band(fig) -> np.ndarray:
    """The vertices of the figure's one fill_between band."""
    (band,) = [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    return band.get_paths()[0].vertices


def test_ensemble_run_report_shows_coverage_band_and_every_member(small_series, tmp_path, drawn):
    train, test = small_series
    model = EnsembleForecaster(Forecaster(target="Open", **TINY), n_members=3, interval=0.8, calibration_fraction=0.25)
    run = tmp_path / "run"
    write_run(run, evaluate_holdout(model, train, test), model)
    drawn.clear()
    page = write_report(run).read_text()

    predictions = pd.read_csv(run / "predictions.csv")
    coverage = _coverage(predictions["actual"], predictions["lower"], predictions["upper"])
    width = (predictions["upper"] - predictions["lower"]).mean()
    section = page.split("<h2>Prediction intervals</h2>", 1)[1].split("<h2>", 1)[0]
    assert f"<td>{coverage:.1%}</td>" in section and "<td>80%</td>" in section
    assert f"<td>{width:.4g}</td>" in section and f"<td>{len(predictions)}</td>" in section

    # The band on the real-vs-predicted plot spans each row's lower..upper.
    vertices = _band(drawn["plot.png"])
    assert vertices[:, 1].min() == pytest.approx(predictions["lower"].min(), rel=1e-6)
    assert vertices[:, 1].max() == pytest.approx(predictions["upper"].max(), rel=1e-6)

    # metrics.json: every member's history, seconds summed over members; history stays member 1's.
    doc = json.loads((run / "metrics.json").read_text())
    assert len(doc["histories"]) == 3
    for member, saved in zip(model.members_, doc["histories"]):
        assert saved["loss"] == member.history_.loss
    assert doc["history"] == doc["histories"][0]
    total = sum(s for m in model.members_ for s in m.history_.epoch_seconds)
    assert doc["train_seconds"] == pytest.approx(total)
    assert doc["train_seconds"] > sum(model.members_[0].history_.epoch_seconds)
    # loss.png: one curve per member, each the member's losses.
    lines = [line.get_ydata() for line in drawn["loss.png"].axes[0].get_lines()]
    assert len(lines) == 3
    for line, member in zip(lines, model.members_):
        np.testing.assert_allclose(line, member.history_.loss)


def test_plain_run_report_has_no_interval_section_and_one_loss_curve(small_series, tmp_path, drawn):
    train, test = small_series
    model = Forecaster(target="Open", **TINY)
    write_run(tmp_path, evaluate_holdout(model, train, test), model)
    drawn.clear()
    page = write_report(tmp_path).read_text()
    assert "Prediction intervals" not in page
    assert not [c for c in drawn["plot.png"].axes[0].collections if isinstance(c, PolyCollection)]
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert "histories" not in doc
    assert doc["train_seconds"] == pytest.approx(sum(model.history_.epoch_seconds))
    assert len(drawn["loss.png"].axes[0].get_lines()) == 1


def test_ensemble_backtest_report_shows_coverage_from_its_files(small_series, tmp_path, drawn):
    train, test = small_series
    pd.concat([train, test]).to_csv(tmp_path / "data.csv")
    tiny = ["--lookback", "10", "--layers", "1", "--units", "8", "--epochs", "1", "--dropout", "0", "--device", "cpu"]
    out = tmp_path / "bt"
    code = main(["backtest", "--data", str(tmp_path / "data.csv"), "--target", "Open", "--folds", "2", "--refit-every", "10",
                 "--ensemble", "2", "--interval", "0.8", "--report", "--out", str(out), "--quiet", *tiny])
    assert code == 0
    bands = pd.read_csv(out / "intervals.csv", parse_dates=["date"], index_col="date")
    long = pd.read_csv(out / "backtest.csv", parse_dates=["date"])
    actual = long.drop_duplicates("date").set_index("date")["actual"].reindex(bands.index)
    coverage = _coverage(actual, bands["lower"], bands["upper"])
    section = (out / "report.html").read_text().split("<h2>Prediction intervals</h2>", 1)[1].split("<h2>", 1)[0]
    assert f"<td>{coverage:.1%}</td>" in section and f"<td>{len(bands)}</td>" in section
    vertices = _band(drawn["backtest.png"])
    assert vertices[:, 1].min() == pytest.approx(bands["lower"].min(), rel=1e-6)
    assert vertices[:, 1].max() == pytest.approx(bands["upper"].max(), rel=1e-6)


def test_ensemble_backtest_fold_loss_is_the_members_mean(small_series):
    from seqcast.backtest import walk_forward

    train, test = small_series
    frame = pd.concat([train, test])
    model = EnsembleForecaster(Forecaster(target="Open", **{**TINY, "epochs": 3}), n_members=3, calibration_fraction=0.0)
    result = walk_forward(model, frame, folds=2)  # calibration_fraction 0: no intervals, no error
    assert result.intervals is None
    for fold in result.folds:
        members = np.array(fold["member_loss"])
        assert members.shape == (3, 3) and len({tuple(m) for m in members.tolist()}) == 3  # three distinct fits
        np.testing.assert_allclose(fold["loss"], members.mean(axis=0), rtol=1e-12)
    plain = walk_forward(Forecaster(target="Open", **TINY), frame, folds=2)
    assert "member_loss" not in plain.folds[0] and len(plain.folds[0]["loss"]) == TINY["epochs"]
