import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_absolute_percentage_error, mean_squared_error, r2_score

from seqcast import metrics

ACTUAL = np.array([10.0, 12.0, 11.0, 13.0, 15.0, 14.0, 16.0])
PRED = np.array([11.0, 11.5, 11.0, 12.0, 14.0, 15.0, 15.5])


def test_point_metrics_agree_with_sklearn():
    assert metrics.rmse(ACTUAL, PRED) == pytest.approx(math.sqrt(mean_squared_error(ACTUAL, PRED)))
    assert metrics.mae(ACTUAL, PRED) == pytest.approx(mean_absolute_error(ACTUAL, PRED))
    assert metrics.mape(ACTUAL, PRED) == pytest.approx(100 * mean_absolute_percentage_error(ACTUAL, PRED))
    assert metrics.r2(ACTUAL, PRED) == pytest.approx(r2_score(ACTUAL, PRED))


def test_smape_by_hand():
    expected = 100 * sum(2 * abs(a - p) / (abs(a) + abs(p)) for a, p in zip(ACTUAL, PRED)) / len(ACTUAL)
    assert metrics.smape(ACTUAL, PRED) == pytest.approx(expected)
    assert metrics.smape([0.0, 2.0], [0.0, 1.0]) == pytest.approx(100 * (2 * 1 / 3))  # the 0/0 pair is skipped


def test_mase_scales_by_in_sample_naive_error():
    train = [1.0, 2.0, 4.0, 7.0]  # naive one-step errors 1, 2, 3: scale 2
    assert metrics.mase([8.0, 10.0], [9.0, 7.0], train) == pytest.approx(((1 + 3) / 2) / 2)
    # Seasonal scale with period 2: |4-1|, |7-2| -> 4.
    assert metrics.mase([8.0, 10.0], [9.0, 7.0], train, period=2) == pytest.approx(2 / 4)
    assert math.isnan(metrics.mase([1.0], [1.0], [5.0, 5.0, 5.0]))  # a flat history has no scale


def test_directional_accuracy_by_hand():
    actual = [10.0, 11.0, 10.5, 12.0]
    predicted = [10.2, 10.8, 11.5, 11.0]
    # From the previous actual: row 1 real +1 / pred +0.8 ok; row 2 real -0.5 / pred +0.5 wrong;
    # row 3 real +1.5 / pred +0.5 ok. Row 0 has no previous value.
    assert metrics.directional_accuracy(actual, predicted) == pytest.approx(100 * 2 / 3)
    # With the value before the period given, row 0 counts too: real +1 / pred +1.2 ok.
    previous = [9.0, 10.0, 11.0, 10.5]
    assert metrics.directional_accuracy(actual, predicted, previous) == pytest.approx(100 * 3 / 4)
    # "No change" earns nothing unless nothing changed.
    assert metrics.directional_accuracy(actual, previous, previous) == 0.0


def test_lag_diagnosis_finds_a_shifted_copy():
    rng = np.random.default_rng(0)
    actual = np.cumsum(rng.normal(size=200))
    shifted = np.r_[np.full(2, np.nan), actual[:-2]]  # predicted[t] = actual[t-2]
    diag = metrics.lag_diagnosis(actual, shifted)
    assert diag.lag == 2 and diag.correlations[2] == pytest.approx(1.0)
    assert diag.text == "prediction ≈ actual shifted by 2 days"
    yesterday = metrics.lag_diagnosis(actual, np.r_[np.nan, actual[:-1]])
    assert yesterday.lag == 1 and yesterday.text == "prediction ≈ actual shifted by 1 day"
    own = metrics.lag_diagnosis(actual, actual + rng.normal(scale=0.01, size=200))
    assert own.lag == 0 and "without lag" in own.text
    # Each correlation is numpy's on the overlapping pairs (rows k.. of the prediction are all present).
    k = 3
    assert diag.correlations[k] == pytest.approx(np.corrcoef(shifted[k:], actual[: 200 - k])[0, 1])


def _dm_by_hand(actual, p1, p2, h, loss):
    """The textbook formula, written with plain loops."""
    d = []
    for a, x, y in zip(actual, p1, p2):
        e1, e2 = a - x, a - y
        d.append(e1 * e1 - e2 * e2 if loss == "squared" else abs(e1) - abs(e2))
    T = len(d)
    mean = sum(d) / T
    gamma = []
    for k in range(h):
        gamma.append(sum((d[t] - mean) * (d[t - k] - mean) for t in range(k, T)) / T)
    var = (gamma[0] + 2 * sum(gamma[1:])) / T
    dm = mean / math.sqrt(var)
    hln = math.sqrt((T + 1 - 2 * h + h * (h - 1) / T) / T)
    stat = dm * hln
    return stat, 2 * stats.t.sf(abs(stat), T - 1)


@pytest.mark.parametrize("loss", ["squared", "absolute"])
@pytest.mark.parametrize("h", [1, 2, 3])
def test_diebold_mariano_matches_the_hand_formula(h, loss):
    rng = np.random.default_rng(h)
    actual = rng.normal(size=40).cumsum()
    p1 = actual + rng.normal(scale=1.0, size=40)
    p2 = actual + rng.normal(scale=1.3, size=40)
    result = metrics.diebold_mariano(actual, p1, p2, horizon=h, loss=loss)
    stat, p = _dm_by_hand(actual, p1, p2, h, loss)
    assert result.statistic == pytest.approx(stat) and result.p_value == pytest.approx(p)
    assert result.n == 40 and result.horizon == h


def test_diebold_mariano_one_step_equals_a_paired_t_test():
    # For h = 1 the HLN factor turns the DM statistic into the one-sample t statistic of d.
    rng = np.random.default_rng(3)
    actual = rng.normal(size=25)
    p1, p2 = actual + rng.normal(size=25), actual + rng.normal(scale=0.8, size=25)
    d = (actual - p1) ** 2 - (actual - p2) ** 2
    reference = stats.ttest_1samp(d, 0.0)
    result = metrics.diebold_mariano(actual, p1, p2)
    assert result.statistic == pytest.approx(reference.statistic)
    assert result.p_value == pytest.approx(reference.pvalue)


def test_diebold_mariano_identical_and_clearly_better_forecasts():
    rng = np.random.default_rng(5)
    actual = rng.normal(size=60).cumsum()
    noisy = actual + rng.normal(scale=2.0, size=60)
    same = metrics.diebold_mariano(actual, noisy, noisy.copy())
    assert same.p_value == 1.0 and same.statistic == 0.0
    good = actual + rng.normal(scale=0.1, size=60)
    better = metrics.diebold_mariano(actual, good, noisy)
    assert better.p_value < 0.05 and better.statistic < 0 and better.mean_loss_difference < 0
    worse = metrics.diebold_mariano(actual, noisy, good, loss="absolute")
    assert worse.p_value < 0.05 and worse.statistic > 0
    # Missing values are dropped pairwise.
    holes = noisy.copy()
    holes[:5] = np.nan
    assert metrics.diebold_mariano(actual, good, holes).n == 55


def test_evaluate_returns_every_metric():
    scores = metrics.evaluate(ACTUAL, PRED, train=[1.0, 2.0, 4.0, 7.0])
    assert set(scores) == {"rmse", "mae", "mape", "smape", "r2", "mase", "direction", "lag"}
    assert scores["mase"] == pytest.approx(mean_absolute_error(ACTUAL, PRED) / 2)


def test_absurd_errors_give_inf_or_nan_without_numpy_warnings():
    """Seen in fuzzed backtests: errors of 1e200 overflow their squares; the metrics answer inf or
    nan and numpy prints nothing on the user's terminal."""
    import warnings

    from seqcast.metrics import diebold_mariano, evaluate, rmse

    actual = np.array([1.0, 2.0, 3.0, 4.0])
    wild = np.array([1e200, -1e200, 1e200, 3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rmse(actual, wild) == np.inf
        scores = evaluate(actual, wild, train=actual)
        diebold_mariano(actual, wild, actual)
    assert scores["rmse"] == np.inf


@pytest.mark.parametrize("n", [1, 2, 4, 5, 6])
def test_lag_diagnosis_of_fewer_values_than_its_lags(n):
    """With n <= max_lag, actual[: n - k] wrapped round for k > n and crashed with a shape error
    (`seqcast run` with a 4-row test file printed a traceback). Shifts leaving fewer than 3 pairs
    are NaN."""
    from seqcast.metrics import lag_diagnosis

    actual = np.arange(1.0, n + 1) ** 2
    result = lag_diagnosis(actual, actual)
    assert len(result.correlations) == 6
    expected = [k for k in range(6) if n - k >= 3]
    assert [k for k, c in enumerate(result.correlations) if np.isfinite(c)] == expected
    assert result.lag == 0
