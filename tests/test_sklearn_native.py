"""Forecaster as a scikit-learn estimator: the estimator checks, and search over time without look-ahead."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.metrics import mean_squared_error
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, TimeSeriesSplit
from sklearn.utils.estimator_checks import check_estimator

from seqcast import ConfigError, DataError, Forecaster

CHECK_ESTIMATOR = Forecaster(lookback=3, layers=1, units=4, epochs=1, batch_size=16, dropout=0.0, device="cpu")

# Each check a forecaster cannot pass, and why. Everything else in check_estimator must pass.
EXPECTED_FAILED_CHECKS = {
    "check_methods_subset_invariance": (
        "a row's prediction is made from the rows before it, so predicting a subset of rows changes it"
    ),
    "check_methods_sample_order_invariance": (
        "row order is time order: shuffling the rows changes every window and so every prediction"
    ),
    "check_supervised_y_2d": (
        "predict returns a pandas Series aligned to X's rows (dates) and named after the target, "
        "and the check calls ndarray.ravel() on it"
    ),
    "check_regressor_data_not_an_array": (
        "a DataFrame is a dated frame whose default input is its target column: one without that column "
        "cannot be predicted (plain arrays use their columns as inputs and pass the NotAnArray half)"
    ),
}


def test_check_estimator_passes_every_check_that_applies_to_a_forecaster():
    results = check_estimator(
        CHECK_ESTIMATOR, expected_failed_checks=EXPECTED_FAILED_CHECKS, on_fail=None, on_skip=None
    )
    by_status = {}
    for result in results:
        by_status.setdefault(result["status"], []).append(result["check_name"])
    failed = [
        (r["check_name"], repr(r["exception"])[:200]) for r in results if r["status"] == "failed"
    ]
    assert not failed
    assert sorted(set(by_status.get("xfail", []))) == sorted(EXPECTED_FAILED_CHECKS)
    # The checks that do run cover fitting, cloning, pickling, dtypes, NaN/inf, sparse and empty input.
    passed = set(by_status["passed"])
    assert {
        "check_estimators_fit_returns_self", "check_estimators_overwrite_params", "check_estimators_pickle",
        "check_estimators_nan_inf", "check_estimator_sparse_array", "check_estimators_empty_data_messages",
        "check_n_features_in_after_fitting", "check_regressors_train", "check_fit_idempotent",
        "check_fit2d_1sample", "check_supervised_y_no_nan", "check_dtype_object",
    } <= passed
    assert len(passed) >= 40


def test_array_input_uses_columns_as_inputs_and_predicts_rows_with_history():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = X[:, 0] * 2.0
    f = Forecaster(lookback=5, layers=1, units=4, epochs=1, dropout=0.0, device="cpu").fit(X, y)
    assert f.input_columns_ == ["x0", "x1"] and f.n_features_in_ == 2
    pred = f.predict(X)
    assert pred.iloc[:5].isna().all() and pred.iloc[5:].notna().all()
    with pytest.raises(DataError, match="X has 3 features, but Forecaster is expecting 2"):
        f.predict(rng.normal(size=(10, 3)))
    with pytest.raises(ValueError, match="requires y to be passed"):
        clone(f).fit(X)


TINY_SEARCH = dict(lookback=5, layers=1, units=4, epochs=1, batch_size=16, dropout=0.0, device="cpu")
GRID = {"units": [4, 6], "optimizer": ["adam", "rmsprop"]}


def _series(n=100, seed=7):
    rng = np.random.default_rng(seed)
    close = 100 + np.cumsum(rng.normal(0, 1, n))
    return pd.DataFrame(
        {"Open": close + rng.normal(0, 0.3, n), "Close": close},
        index=pd.bdate_range("2020-01-01", periods=n, name="Date"),
    )


def _recording_neg_mse(seen):
    def scorer(estimator, X, y):
        predicted = estimator.predict(X)
        seen.append((X.index[0], X.index[-1], int(predicted.isna().sum()), len(predicted)))
        return -mean_squared_error(y, predicted)

    return scorer


def test_grid_search_over_time_scores_every_test_row_without_look_ahead():
    frame = _series()
    cv = TimeSeriesSplit(n_splits=3)
    search = GridSearchCV(
        Forecaster(target="Open", **TINY_SEARCH), {"units": [4, 6]}, scoring="neg_mean_squared_error", cv=cv
    ).fit(frame, frame["Open"])
    assert len(search.cv_results_["params"]) == 2
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()

    # Split 0 of the first candidate, recomputed by hand: fit on the past, predict the fold after it.
    train_rows, test_rows = next(cv.split(frame))
    params = search.cv_results_["params"][0]
    model = Forecaster(target="Open", **{**TINY_SEARCH, **params}).fit(frame.iloc[train_rows], frame["Open"].iloc[train_rows])
    predicted = model.predict(frame.iloc[test_rows]).to_numpy()
    actual = frame["Open"].iloc[test_rows].to_numpy()
    assert np.isfinite(predicted).all() and len(predicted) == len(test_rows)
    assert search.cv_results_["split0_test_score"][0] == pytest.approx(-np.mean((actual - predicted) ** 2), rel=1e-12)

    # No look-ahead: rows after split 0's test fold can change wildly without changing its score.
    future = frame.copy()
    future.iloc[test_rows[-1] + 1 :] *= 10
    again = GridSearchCV(
        Forecaster(target="Open", **TINY_SEARCH), {"units": [4, 6]}, scoring="neg_mean_squared_error", cv=cv
    ).fit(future, future["Open"])
    np.testing.assert_array_equal(again.cv_results_["split0_test_score"], search.cv_results_["split0_test_score"])
    assert not np.array_equal(again.cv_results_["split2_test_score"], search.cv_results_["split2_test_score"])


def test_no_nan_reaches_the_scorer_in_grid_or_randomized_search():
    frame = _series()
    cv = TimeSeriesSplit(n_splits=2)
    for make in (
        lambda s: GridSearchCV(Forecaster(**TINY_SEARCH), {"units": [4, 6]}, scoring=s, cv=cv),
        lambda s: RandomizedSearchCV(Forecaster(**TINY_SEARCH), GRID, n_iter=2, random_state=0, scoring=s, cv=cv),
    ):
        seen = []
        search = make(_recording_neg_mse(seen)).fit(frame, frame["Open"])
        assert len(seen) == 4  # 2 candidates × 2 splits, refit not scored
        assert all(n_nan == 0 for _, _, n_nan, _ in seen)
        assert search.best_estimator_.n_train_rows_ == len(frame)


def test_numpy_typed_params_work_as_python_ones_also_in_a_grid():
    # A grid written with np.arange / np.array hands numpy scalars to set_params: torch's layers refuse
    # np.int64 sizes and random.seed an np.int64 seed, so they crashed deep inside the fit.
    frame = _series()
    plain = Forecaster(**TINY_SEARCH, seed=1).fit(frame).predict(frame)
    typed = Forecaster(
        **{**TINY_SEARCH, "units": np.int64(TINY_SEARCH["units"]), "layers": np.int32(1), "dropout": np.float32(0.0)},
        seed=np.int64(1),
    ).fit(frame).predict(frame)
    pd.testing.assert_series_equal(typed, plain)
    search = GridSearchCV(
        Forecaster(**TINY_SEARCH), {"units": np.array([4, 6]), "seed": np.arange(2)}, cv=TimeSeriesSplit(n_splits=2),
        scoring="neg_mean_squared_error", error_score="raise",
    ).fit(frame, frame["Open"])
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


def test_an_array_fit_that_could_never_predict_is_refused_up_front():
    # predict(X) gets no y: a model that needs the target's own values (a diff or logret target)
    # fitted on arrays, then refused every predict, score and cross_val_score.
    frame = _series()
    X, y = frame[["Open", "Close"]].to_numpy(), frame["Open"].to_numpy()
    for transform in ("diff", "logret"):
        with pytest.raises(ConfigError, match=rf"target_transform '{transform}' needs the target's own past values .* array X"):
            Forecaster(**TINY_SEARCH, target_transform=transform).fit(X, y)
    level = Forecaster(**TINY_SEARCH).fit(X, y)
    assert np.isfinite(level.predict(X)[TINY_SEARCH["lookback"]:]).all()
