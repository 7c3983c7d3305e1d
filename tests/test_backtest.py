import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from seqcast import Forecaster
from seqcast.backtest import MODEL, evaluate_holdout, plan_folds, score, walk_forward
from seqcast.baselines import Drift, LastValue, LinearAR
from seqcast.conformal import EnsembleForecaster
from seqcast.errors import ConfigError
from seqcast.metrics import diebold_mariano

from .conftest import TINY

FIT_ENDS: list = []


class RecordingLastValue(LastValue):
    """Persistence that records the last date it was fit on (clones share the class-level list)."""

    def fit(self, X, y=None):
        FIT_ENDS.append((X.index[0], X.index[-1], len(X)))
        return super().fit(X, y)


def _index(n):
    return pd.bdate_range("2020-01-01", periods=n)


def test_plan_folds_expanding_sliding_start_and_refit_every():
    idx = _index(100)
    plan = plan_folds(idx, folds=4)  # TimeSeriesSplit sizing: 100 // 5 = 20 rows per fold
    assert [(f.train, f.test) for f in plan] == [
        (slice(0, 20), slice(20, 40)),
        (slice(0, 40), slice(40, 60)),
        (slice(0, 60), slice(60, 80)),
        (slice(0, 80), slice(80, 100)),
    ]
    sliding = plan_folds(idx, folds=2, refit_every=10, window="sliding")
    assert [(f.train, f.test) for f in sliding] == [(slice(0, 80), slice(80, 90)), (slice(10, 90), slice(90, 100))]
    dated = plan_folds(idx, start=idx[90], refit_every=4)
    assert [(f.test.start, f.test.stop) for f in dated] == [(90, 94), (94, 98), (98, 100)]
    split = plan_folds(idx, start=str(idx[93].date()), folds=2)
    assert [(f.test.start, f.test.stop) for f in split] == [(93, 97), (97, 100)]
    with pytest.raises(ConfigError, match="needs at least 30"):
        plan_folds(idx, folds=4, min_train=30)
    with pytest.raises(ConfigError, match="not both"):
        plan_folds(idx, start=idx[90], folds=2, refit_every=3)
    with pytest.raises(ConfigError, match="inside that range"):
        plan_folds(idx, start="2030-01-01")


@pytest.mark.parametrize("dated", [True, False])
def test_backtest_csv_rows_are_the_bytes_pandas_writes(tmp_path, dated):
    # backtest.csv is written row by row through the csv module; the reference is pandas' own
    # melt, merge and to_csv (what wrote it before), on awkward values: NaN, inf, a negative zero,
    # large and tiny numbers, model names that need quoting, dated and undated rows.
    from seqcast.backtest import _FoldWriter

    index = pd.date_range("2020-01-01", periods=5, freq="B") if dated else pd.RangeIndex(7, 12)
    folds = [
        pd.DataFrame({"actual": [1.5, 2.25, np.nan, 1e12, -0.0], MODEL: [1.0, np.nan, 3.0, -np.inf, 1e-9],
                      "a, quoted \"name\"": [0.1234567, 2.0, 3.0, 4.0, np.inf]}, index=index),
        pd.DataFrame({"actual": [7.0, 8.0, 9.0, 10.0, 11.0], MODEL: np.arange(5.0), "a, quoted \"name\"": np.ones(5)},
                     index=index + (5 if not dated else pd.offsets.BDay(5))),
    ]
    writer = _FoldWriter(tmp_path)
    expected = ",".join(writer.header) + "\n"
    for number, wide in enumerate(folds, start=1):
        writer.add(number, wide)
        long = wide.drop(columns="actual").rename_axis("date").reset_index().melt(
            id_vars="date", var_name="model", value_name="predicted")
        long = long.merge(wide["actual"].rename_axis("date").reset_index(), on="date")
        long.insert(0, "fold", number)
        expected += long[writer.header].to_csv(header=False, index=False, float_format="%.6f", date_format="%Y-%m-%d")
    assert Path(writer.tmp).read_text() == expected
    writer.abort()


def test_walk_forward_refits_on_the_past_only_and_streams_backtest_csv(small_series, tmp_path):
    frame = pd.concat(small_series)
    forecaster = Forecaster(target="Open", **TINY)
    FIT_ENDS.clear()
    seen = []
    result = walk_forward(
        forecaster,
        frame,
        folds=2,
        refit_every=10,
        baselines={"recorder": RecordingLastValue("Open"), "persistence": LastValue("Open")},
        out_dir=tmp_path,
        on_fold=lambda s: seen.append((s["fold"], (tmp_path / "backtest.csv").exists())),
    )
    # Each fold's baseline saw exactly the rows before that fold.
    assert FIT_ENDS == [(frame.index[0], frame.index[119], 120), (frame.index[0], frame.index[129], 130)]
    assert seen == [(1, False), (2, False)]  # backtest.csv appears whole, only when every fold is done
    # The model of fold 2 is a fresh clone fit on rows 0..129: same seed, same predictions.
    fold2 = clone(forecaster).fit(frame.iloc[:130]).predict(frame.iloc[130:])
    np.testing.assert_allclose(result.predictions[MODEL].iloc[10:].to_numpy(), fold2.to_numpy(), rtol=1e-6)

    long = pd.read_csv(tmp_path / "backtest.csv", parse_dates=["date"])
    assert list(long.columns) == ["fold", "date", "model", "actual", "predicted"]
    assert len(long) == 20 * 3 and set(long["model"]) == {MODEL, "recorder", "persistence"}
    persistence = long[long["model"] == "persistence"].set_index("date")
    np.testing.assert_allclose(persistence["predicted"], frame["Open"].shift(1).iloc[120:], rtol=1e-6)
    np.testing.assert_allclose(persistence["actual"], frame["Open"].iloc[120:], rtol=1e-6)

    board = result.board.table
    err = result.predictions[MODEL] - result.predictions["actual"]
    assert board.loc[MODEL, "rmse"] == pytest.approx(float(np.sqrt(np.mean(err**2))), rel=1e-6)
    dm = diebold_mariano(result.predictions["actual"], result.predictions[MODEL], result.predictions[result.board.best_baseline])
    assert board.loc[MODEL, "dm_p"] == pytest.approx(dm.p_value, rel=1e-6)
    # Direction is scored from the real previous value, including the first test row's.
    prev = frame["Open"].shift(1).iloc[120:].to_numpy()
    actual, pred = frame["Open"].iloc[120:].to_numpy(), result.predictions[MODEL].to_numpy()
    hits = np.mean(np.sign(pred - prev) == np.sign(actual - prev)) * 100
    assert board.loc[MODEL, "direction"] == pytest.approx(hits)

    paths = result.write(tmp_path)
    doc = json.loads(paths["leaderboard_json"].read_text())
    assert doc["verdict"].startswith("seqcast") and len(doc["folds"]) == 2 and doc["folds"][1]["n_train"] == 130
    table = pd.read_csv(paths["leaderboard"], index_col="model")
    assert {"rmse", "mase", "direction", "lag", "dm_p", "dm_p_abs", "verdict"} <= set(table.columns)


def test_folds_fitted_in_processes_equal_one_thread_folds_one_after_another(small_series):
    frame = pd.concat(small_series)
    forecaster = Forecaster(target="Open", **{**TINY, "layers": 2, "dropout": 0.2, "horizon": 2}, verbose=1)
    seen = []
    parallel = walk_forward(forecaster, frame, folds=3, refit_every=6, n_jobs=2, on_fold=lambda s: seen.append(s["fold"]))
    alone = walk_forward(clone(forecaster).set_params(threads=1), frame, folds=3, refit_every=6)
    assert seen == [1, 2, 3]
    pd.testing.assert_frame_equal(parallel.predictions, alone.predictions)
    pd.testing.assert_frame_equal(parallel.per_step, alone.per_step)
    for a, b in zip(parallel.folds, alone.folds, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    # An ensemble in parallel folds fits its own members one after another there (no nested pools).
    ensemble = EnsembleForecaster(Forecaster(target="Open", **TINY), n_members=2, calibration_fraction=0.3, n_jobs=2)
    nested = walk_forward(ensemble, frame, folds=2, refit_every=10, n_jobs=2)
    flat = walk_forward(clone(ensemble).set_params(n_jobs=None, forecaster__threads=1), frame, folds=2, refit_every=10)
    pd.testing.assert_frame_equal(nested.predictions, flat.predictions)
    pd.testing.assert_frame_equal(nested.intervals, flat.intervals)
    with pytest.raises(ConfigError, match="n_jobs"):
        walk_forward(forecaster, frame, folds=2, n_jobs=0)


def test_small_models_folds_fitted_side_by_side_in_threads_equal_one_thread_folds(small_series, monkeypatch):
    import seqcast.parallel as parallel
    from seqcast import training

    frame = pd.concat(small_series)
    forecaster = Forecaster(target="Open", **{**TINY, "layers": 2, "dropout": 0.2}, verbose=1)
    alone = walk_forward(forecaster, frame, folds=3, refit_every=6)  # conftest: one torch thread
    fits = []
    real = parallel._fit_quietly
    monkeypatch.setattr(parallel, "_fit_quietly", lambda e, f: fits.append(threading.get_ident()) or real(e, f))
    with training.intra_op_threads(2):
        assert forecaster.trains_on_one_thread(frame)
        seen = []
        side_by_side = walk_forward(forecaster, frame, folds=3, refit_every=6, on_fold=lambda s: seen.append(s["fold"]))
        assert len(fits) == 3 and len(set(fits)) == 2 and seen == [1, 2, 3]
        pd.testing.assert_frame_equal(side_by_side.predictions, alone.predictions)
        pd.testing.assert_frame_equal(side_by_side.per_step, alone.per_step)
        # A model big enough to split its batches, or one told its threads, is fitted one after another.
        fits.clear()
        monkeypatch.setattr(training, "MIN_SLICE_FLOPS", 1.0)
        assert not forecaster.trains_on_one_thread(frame)
        walk_forward(forecaster, frame, folds=2, refit_every=10)
        monkeypatch.setattr(training, "MIN_SLICE_FLOPS", 1e12)
        told = clone(forecaster).set_params(threads=2)
        assert not told.trains_on_one_thread(frame)
        walk_forward(told, frame, folds=2, refit_every=10)
        assert fits == []


def test_sliding_window_and_horizon_checks(small_series):
    frame = pd.concat(small_series)
    FIT_ENDS.clear()
    # Any estimator with target and lookback parameters can be backtested; a linear AR is quick.
    walk_forward(
        LinearAR(target="Open", lookback=10),
        frame,
        folds=2,
        refit_every=10,
        window="sliding",
        baselines={"recorder": RecordingLastValue("Open")},
    )
    assert FIT_ENDS == [(frame.index[0], frame.index[119], 120), (frame.index[10], frame.index[129], 120)]
    with pytest.raises(ConfigError, match="horizon must be"):
        walk_forward(Forecaster(target="Open", **TINY), frame, folds=2, horizon=0)


def test_walk_forward_scores_every_horizon_step_like_a_hand_loop(small_series, tmp_path):
    frame = pd.concat(small_series)
    y = frame["Open"].to_numpy()
    n, H, size = len(frame), 3, 8
    forecaster = Forecaster(target="Open", **{**TINY, "threads": 1})
    baselines = {"persistence": LastValue("Open"), "drift": Drift("Open")}
    result = walk_forward(forecaster, frame, folds=2, refit_every=size, horizon=H, baselines=baselines)
    assert result.settings["horizon"] == H

    # Hand loop over the origins of both folds: fold f trains on rows [0, start), issues forecasts at
    # every row p of [start, start + size) for rows p .. p + H - 1.
    errors = {name: {k: [] for k in range(1, H + 1)} for name in (MODEL, "persistence", "drift")}
    for start in (n - 2 * size, n - size):
        model = clone(forecaster).set_params(horizon=H).fit(frame.iloc[:start])
        ahead = model.predict_horizons(frame.iloc[start : start + size]).to_numpy()
        slope = (y[start - 1] - y[0]) / (start - 1)
        for i, p in enumerate(range(start, start + size)):
            for k in range(1, H + 1):
                if p + k - 1 < n:
                    errors[MODEL][k].append(y[p + k - 1] - ahead[i, k - 1])
                    errors["persistence"][k].append(y[p + k - 1] - y[p - 1])
                    errors["drift"][k].append(y[p + k - 1] - (y[p - 1] + k * slope))
    table = result.per_step.set_index(["step", "model"])
    for name, by_step in errors.items():
        for k, errs in by_step.items():
            errs = np.asarray(errs)
            assert table.loc[(k, name), "n"] == 2 * size - (k - 1)
            assert table.loc[(k, name), "rmse"] == pytest.approx(np.sqrt(np.mean(errs**2)), rel=1e-6)
            assert table.loc[(k, name), "mae"] == pytest.approx(np.mean(np.abs(errs)), rel=1e-6)
    # Step 1 is the one-step leaderboard; the DM p-value at step k uses the h-step variance.
    for name in (MODEL, "persistence", "drift"):
        assert table.loc[(1, name), "rmse"] == pytest.approx(result.board.table.loc[name, "rmse"], rel=1e-9)
    best = table.loc[(H, MODEL), "best_baseline"]
    other = np.asarray(errors[best][H])
    dm = diebold_mariano(np.zeros(other.size), -np.asarray(errors[MODEL][H]), -other, horizon=H)
    assert table.loc[(H, MODEL), "dm_p"] == pytest.approx(dm.p_value, rel=1e-6)

    paths = result.write(tmp_path)
    written = pd.read_csv(paths["per_step"])
    assert list(written.columns) == ["step", "model", "rmse", "mae", "n", "dm_p", "best_baseline"]
    assert len(written) == 3 * H
    doc = json.loads(paths["leaderboard_json"].read_text())
    assert [(r["step"], r["model"]) for r in doc["per_step"]] == list(zip(written["step"], written["model"]))


def _board(model, baseline_a, baseline_b, actual):
    frame = pd.DataFrame({"actual": actual, MODEL: model, "a": baseline_a, "b": baseline_b})
    return score(frame)


def test_leaderboard_verdicts():
    rng = np.random.default_rng(0)
    actual = rng.normal(size=80).cumsum() + 100
    close = actual + rng.normal(scale=0.5, size=80)
    far = actual + rng.normal(scale=3.0, size=80)
    better = _board(actual + rng.normal(scale=0.05, size=80), close, far, actual)
    assert better.best_baseline == "a"
    assert better.verdict().startswith("seqcast is significantly better than a (p")
    assert better.table.loc["b", "verdict"].startswith("significantly worse than a")
    assert better.table.loc["a", "verdict"] == "best baseline" and np.isnan(better.table.loc["a", "dm_p"])
    tie = _board(close + rng.normal(scale=0.01, size=80), close, far, actual)
    assert "not significantly" in tie.verdict() or "the difference is not significant" in tie.verdict()
    worse = _board(far + 5, close, far, actual)
    assert worse.verdict().startswith("seqcast does NOT beat the naive a forecast") and "significantly worse" in worse.verdict()


def test_holdout_leaderboard_has_significance(small_series):
    train, test = small_series
    holdout = evaluate_holdout(Forecaster(target="Open", **TINY), train, test)
    board = holdout.leaderboard()
    assert board.index[0] == MODEL and {"dm_p", "dm_p_abs", "verdict", "mase", "lag"} <= set(board.columns)
    assert set(holdout.board.comparisons.index) == set(board.index) - {MODEL}
    # The persistence row is yesterday's Open from the real series: MASE scaled by the training naive error.
    naive_scale = np.mean(np.abs(np.diff(train["Open"].to_numpy())))
    yesterday = np.r_[train["Open"].iloc[-1], test["Open"].iloc[:-1]]
    expected = np.mean(np.abs(test["Open"].to_numpy() - yesterday)) / naive_scale
    assert board.loc["persistence", "mase"] == pytest.approx(expected)
    assert holdout.verdict().startswith("seqcast")
