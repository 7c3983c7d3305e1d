"""Forecaster as a scikit-learn estimator: the estimator checks, and search over time without look-ahead."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.metrics import mean_squared_error
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, TimeSeriesSplit
from sklearn.utils.estimator_checks import check_estimator

from seqcast import DataError, Forecaster

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
