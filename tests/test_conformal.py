import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from joblib import Parallel, delayed
from scipy.stats import norm
from sklearn.base import clone

from seqcast.backtest import evaluate_holdout, interval_scores, walk_forward
from seqcast.cli import main
from seqcast.conformal import EnsembleForecaster, conformal_quantile, load_model
from seqcast.errors import ArtifactError, ConfigError, DataError
from seqcast.forecaster import Forecaster

from .conftest import TINY

# A small net that learns a constant level within a few epochs.
NOISE_NET = dict(lookback=5, layers=1, units=4, epochs=3, batch_size=32, lr=0.01, dropout=0.0, device="cpu")


def _noise_series(n: int, seed: int = 1) -> pd.DataFrame:
    """Gaussian noise (sd 1) around a level of 100: a series whose residuals are exchangeable."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"Open": 100 + rng.normal(0, 1, n)}, index=pd.bdate_range("2020-01-01", periods=n, name="Date"))


def test_conformal_quantile_is_the_ceil_n_plus_1_level_order_statistic():
    scores = np.random.default_rng(0).exponential(size=37)
    for level in (0.5, 0.8, 0.9, 0.95):
        k = math.ceil((len(scores) + 1) * level)
        assert conformal_quantile(scores, level) == sorted(scores)[k - 1]
    with pytest.raises(DataError, match="at least 19 calibration residuals"):
        conformal_quantile(scores[:10], 0.95)


def test_conformal_interval_of_a_known_predictor_covers_its_level():
    # The true mean as the predictor and N(0, 1) noise: the half-width tends to the normal quantile.
    rng = np.random.default_rng(3)
    half = conformal_quantile(np.abs(rng.normal(size=2000)), 0.9)
    assert half == pytest.approx(norm.ppf(0.95), abs=0.1)
    fresh = rng.normal(size=20000)
    coverage = np.mean(np.abs(fresh) <= half)
    assert 0.88 <= coverage <= 0.92


def test_ensemble_interval_covers_about_90_percent_of_gaussian_noise():
    frame = _noise_series(700)
    model = EnsembleForecaster(Forecaster(**NOISE_NET), n_members=2, interval=0.9, calibration_fraction=0.5)
    model.fit(frame.iloc[:400])
    bands = model.predict_interval(frame.iloc[400:])
    actual = frame["Open"].iloc[400:]
    coverage = ((actual >= bands["lower"]) & (actual <= bands["upper"])).mean()
    assert 0.80 <= coverage <= 0.97
    # The noise has sd 1, so the 90% half-width cannot be much below its normal quantile.
    assert ((bands["upper"] - bands["lower"]) / 2).iloc[0] > 0.9 * norm.ppf(0.95)
    scores = interval_scores(actual, bands["lower"], bands["upper"], level=0.9)
    assert scores["coverage"] == pytest.approx(coverage) and scores["n"] == 300


def test_mean_of_members_spread_and_determinism(small_series):
    train, test = small_series
    base = Forecaster(**TINY, seed=4)
    model = EnsembleForecaster(base, n_members=3, calibration_fraction=0.25).fit(train)
    # Independent reference: single Forecasters with seeds 4, 5, 6 fitted on the rows before the
    # calibration rows, predicting the test rows with the calibration rows as their context.
    fit_rows, n_cal = len(train) - 30, 30
    both = pd.concat([train.iloc[fit_rows:], test])
    members = [clone(base).set_params(seed=4 + i).fit(train.iloc[:fit_rows]).predict(both).iloc[n_cal:] for i in range(3)]
    stacked = np.column_stack(members)
    assert not np.allclose(stacked[:, 0], stacked[:, 1])
    bands = model.predict_interval(test)
    np.testing.assert_allclose(model.predict(test), stacked.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(bands["mean"], stacked.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(bands["std"], stacked.std(axis=1), rtol=1e-5)
    assert (bands["lower"] < bands["mean"]).all() and np.allclose(bands["upper"] - bands["mean"], bands["mean"] - bands["lower"])
    again = EnsembleForecaster(base, n_members=3, calibration_fraction=0.25).fit(train).predict_interval(test)
    pd.testing.assert_frame_equal(bands, again)


@pytest.mark.parametrize("cell,threads", [("gru", 2), ("rnn", None)])
def test_gru_and_rnn_members_train_together_and_equal_their_own_fits(small_series, monkeypatch, cell, threads):
    import seqcast.conformal as module

    train, test = small_series
    base = Forecaster(**{**TINY, "cell": cell, "dropout": 0.2, "layers": 2, "threads": threads}, seed=7)
    calls = []
    real = module.train_many
    monkeypatch.setattr(module, "train_many", lambda models, *a, **kw: calls.append(len(models)) or real(models, *a, **kw))
    together = EnsembleForecaster(base, n_members=3, calibration_fraction=0.25).fit(train)
    assert calls == [3]  # one joint call for the three members
    assert together.trains_members_together()
    assert not EnsembleForecaster(base, n_members=3, n_jobs=2).trains_members_together()
    assert not EnsembleForecaster(base, n_members=1).trains_members_together()
    fit_rows = train.iloc[: len(train) - 30]
    for i, member in enumerate(together.members_):
        alone = clone(base).set_params(seed=7 + i).fit(fit_rows)
        np.testing.assert_allclose(member.history_.loss, alone.history_.loss, rtol=1e-5)
        for name, value in alone.model_.state_dict().items():
            torch.testing.assert_close(member.model_.state_dict()[name], value, rtol=1e-4, atol=4e-5, msg=name)
        # The data-derived fitted attributes are each member's own (n_train_rows_ and train_end_ then
        # count the calibration rows, which the ensemble gives its members as context).
        for attribute in ("target_", "input_columns_", "train_start_", "exchange_holidays_"):
            assert getattr(member, attribute) == getattr(alone, attribute), attribute
        np.testing.assert_array_equal(member.input_scaler_.scale_, alone.input_scaler_.scale_)
        np.testing.assert_array_equal(member.target_scaler_.scale_, alone.target_scaler_.scale_)
    assert not np.allclose(together.members_[0].predict(test), together.members_[1].predict(test))
    # LSTM members go through train_many too (fitted side by side there); members that validate
    # or stop early fit one by one.
    calls.clear()
    lstm = EnsembleForecaster(clone(base).set_params(cell="lstm"), n_members=2, calibration_fraction=0.25)
    assert lstm.trains_members_together()
    lstm.fit(train)
    assert calls == [2]
    for settings in (dict(val_fraction=0.2), dict(early_stopping=1)):
        one_by_one = EnsembleForecaster(clone(base).set_params(**settings), n_members=2, calibration_fraction=0.25)
        assert not one_by_one.trains_members_together()
        one_by_one.fit(train)
    assert calls == [2]


def test_members_fitted_in_worker_processes_equal_one_thread_sequential_fits(small_series, tmp_path):
    train, test = small_series
    base = Forecaster(**{**TINY, "dropout": 0.2, "layers": 2}, seed=7, verbose=1)
    # The workers are joblib's own: joblib.Parallel works before and after (a raw loky executor broke it).
    assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]
    parallel = EnsembleForecaster(base, n_members=3, calibration_fraction=0.25, n_jobs=2).fit(train)
    assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]
    # Reference: the members fitted here, one after another, each on one torch thread.
    fit_rows = train.iloc[: len(train) - 30]
    for i, member in enumerate(parallel.members_):
        reference = clone(base).set_params(seed=7 + i, threads=1, verbose=0).fit(fit_rows)
        for name, value in reference.model_.state_dict().items():
            assert torch.equal(member.model_.state_dict()[name], value), (i, name)
        assert member.history_.loss == reference.history_.loss
        # The member keeps the template's settings (it predicts and saves as a sequential member).
        assert (member.seed, member.threads, member.verbose) == (7 + i, None, 1)
    # The default ensemble trains these small LSTM members as one block-diagonal group
    # (ensemble.train_many), equal to the one-by-one fits up to float rounding.
    sequential = EnsembleForecaster(clone(base).set_params(threads=1), n_members=3, calibration_fraction=0.25).fit(train)
    assert sequential.trained_together_ and not parallel.trained_together_
    np.testing.assert_allclose(parallel.calibration_scores_, sequential.calibration_scores_, rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(parallel.predict_interval(test), sequential.predict_interval(test), rtol=1e-5)
    # n_jobs is how the members were fitted, not part of the model: not saved.
    parallel.save(tmp_path / "m")
    assert "n_jobs" not in json.loads((tmp_path / "m" / "ensemble.json").read_text())["params"]
    assert load_model(tmp_path / "m").n_jobs is None


@pytest.mark.parametrize("jobs", [0, -2, 1.5, True, "2"])
def test_ensemble_n_jobs_is_checked(small_series, jobs):
    with pytest.raises(ConfigError, match="n_jobs"):
        EnsembleForecaster(Forecaster(**TINY), n_members=2, n_jobs=jobs).fit(small_series[0])


def test_save_load_round_trip_and_tampering(small_series, tmp_path):
    train, test = small_series
    model = EnsembleForecaster(Forecaster(**TINY), n_members=2, calibration_fraction=0.25).fit(train)
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, EnsembleForecaster) and len(loaded.members_) == 2
    pd.testing.assert_frame_equal(loaded.predict_interval(test, level=0.8), model.predict_interval(test, level=0.8))
    pd.testing.assert_frame_equal(loaded.forecast(1), model.forecast(1))
    weights = tmp_path / "m" / "member-02" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ArtifactError, match="sha256"):
        load_model(tmp_path / "m")


def test_holdout_and_walk_forward_report_interval_coverage(small_series, tmp_path):
    train, test = small_series
    frame = pd.concat([train, test])
    model = EnsembleForecaster(Forecaster(**TINY), n_members=2, calibration_fraction=0.3)
    holdout = evaluate_holdout(model, train, test)
    inside = (test["Open"] >= holdout.intervals["lower"]) & (test["Open"] <= holdout.intervals["upper"])
    assert holdout.interval["coverage"] == pytest.approx(inside.mean()) and holdout.interval["n"] == len(test)
    result = walk_forward(model, frame, folds=2, refit_every=10, out_dir=tmp_path)
    result.write(tmp_path)
    doc = json.loads((tmp_path / "leaderboard.json").read_text())
    bands = pd.read_csv(tmp_path / "intervals.csv", parse_dates=["date"], index_col="date")
    actual = frame["Open"].reindex(bands.index)
    assert len(bands) == 20
    assert doc["interval"]["coverage"] == pytest.approx(((actual >= bands["lower"]) & (actual <= bands["upper"])).mean())
    assert doc["interval"]["mean_width"] == pytest.approx((bands["upper"] - bands["lower"]).mean(), rel=1e-5)
    assert doc["settings"]["model"]["forecaster__units"] == TINY["units"]


def test_cli_ensemble_run_writes_interval_columns_and_predict_reads_them(small_series, tmp_path, capsys):
    train, test = small_series
    train.to_csv(tmp_path / "train.csv")
    test.to_csv(tmp_path / "test.csv")
    tiny = ["--lookback", "10", "--layers", "1", "--units", "8", "--epochs", "2", "--dropout", "0", "--device", "cpu"]
    code = main(["run", "--data", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--out",
                 str(tmp_path / "run"), "--ensemble", "2", "--interval", "0.8", "--quiet", *tiny])
    assert code == 0
    assert "interval 80%: coverage" in capsys.readouterr().out
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert {"lower", "upper", "std"} <= set(predictions.columns)
    assert (predictions["lower"] <= predictions["predicted"]).all()
    code = main(["predict", "--model", str(tmp_path / "run" / "model"), "--data", str(tmp_path / "test.csv"),
                 "--out", str(tmp_path / "p.csv"), "--quiet"])
    assert code == 0
    again = pd.read_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(again["lower"], predictions["lower"], rtol=1e-5)


def test_cli_ensemble_jobs_needs_an_ensemble(small_series, tmp_path, capsys):
    train, _ = small_series
    train.to_csv(tmp_path / "train.csv")
    code = main(["backtest", "--data", str(tmp_path / "train.csv"), "--ensemble-jobs", "2", "--out", str(tmp_path / "b")])
    assert code == 2
    assert "--ensemble-jobs" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_cli_ensemble_jobs_and_parallel_folds_or_series_are_not_combined(small_series, tmp_path, capsys):
    train, _ = small_series
    for name in ("a", "b"):
        train.to_csv(tmp_path / f"{name}.csv")
    code = main(["backtest", "--data", str(tmp_path / "*.csv"), "--ensemble", "2", "--ensemble-jobs", "2",
                 "--jobs", "2", "--out", str(tmp_path / "b")])
    assert code == 2
    assert "drop one" in capsys.readouterr().err and not (tmp_path / "b").exists()
    code = main(["backtest", "--data", str(tmp_path / "a.csv"), "--ensemble", "2", "--ensemble-jobs", "2",
                 "--jobs", "2", "--out", str(tmp_path / "b")])
    assert code == 2
    assert "drop one" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_parallel_member_fit_errors_reach_the_caller(small_series):
    with pytest.raises(DataError):
        EnsembleForecaster(Forecaster(**{**TINY, "lookback": 400}), n_members=3, n_jobs=2).fit(small_series[0])


@pytest.mark.parametrize("members,grouped", [(3, True), (2, False)])
def test_cli_says_when_lstm_members_were_trained_in_groups(small_series, tmp_path, capsys, onednn_lstm, members, grouped):
    # With oneDNN's kernel (seqcast.native not built), at 2 threads, 3 small LSTM members make
    # block-diagonal groups of 2 and 1 (ensemble.lstm_group_size); 2 members make groups of one,
    # which are fitted each by its own train_model instead.
    train, test = small_series
    train.to_csv(tmp_path / "train.csv")
    test.to_csv(tmp_path / "test.csv")
    tiny = ["--lookback", "10", "--layers", "1", "--units", "8", "--epochs", "2", "--dropout", "0", "--threads", "2"]
    code = main(["run", "--data", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--out",
                 str(tmp_path / "run"), "--ensemble", str(members), "--quiet", *tiny])
    assert code == 0
    out = capsys.readouterr().out
    assert ("members trained together, in groups" in out) == grouped
    assert out.count("train  2 epochs") == members
