import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.linear_model import Ridge

from seqcast.baselines import (
    Drift,
    LastValue,
    LinearAR,
    MovingAverage,
    SeasonalNaive,
    default_baselines,
    seasonal_period,
)
from seqcast.errors import ConfigError


def _frame(values, start="2021-01-01", freq="B", close=None):
    index = pd.date_range(start, periods=len(values), freq=freq, name="Date")
    frame = pd.DataFrame({"Open": np.asarray(values, dtype=float)}, index=index)
    if close is not None:
        frame["Close"] = np.asarray(close, dtype=float)
    return frame


def test_each_baseline_by_hand_on_the_rows_after_training():
    series = _frame([1.0, 2.0, 4.0, 7.0, 8.0, 10.0, 9.0])
    train, test = series.iloc[:4], series.iloc[4:]  # test rows 8, 10, 9; before them 1, 2, 4, 7
    assert LastValue("Open").fit(train).predict(test).tolist() == [7.0, 8.0, 10.0]
    assert Drift("Open").fit(train).predict(test).tolist() == [7 + 2, 8 + 2, 10 + 2]  # (7 - 1) / 3 per day
    assert MovingAverage("Open", window=3).fit(train).predict(test).tolist() == pytest.approx(
        [(2 + 4 + 7) / 3, (4 + 7 + 8) / 3, (7 + 8 + 10) / 3]
    )
    assert SeasonalNaive("Open", period=2).fit(train).predict(test).tolist() == [4.0, 7.0, 8.0]


def test_last_close_uses_the_previous_close():
    series = _frame([10.0, 11.0, 12.0, 13.0], close=[10.5, 11.5, 12.5, 13.5])
    pred = LastValue("Open", column="Close").fit(series.iloc[:2]).predict(series.iloc[2:])
    assert pred.tolist() == [11.5, 12.5] and pred.name == "Open"


def test_predicting_the_training_rows_leaves_rows_without_history_empty():
    series = _frame([1.0, 2.0, 4.0, 7.0, 8.0])
    pred = MovingAverage("Open", window=2).fit(series).predict(series)
    assert np.isnan(pred.iloc[:2]).all() and pred.iloc[2:].tolist() == [1.5, 3.0, 5.5]


def test_linear_ar_is_ridge_on_the_lagged_values():
    rng = np.random.default_rng(1)
    values = np.empty(120)
    values[0] = 50.0
    for t in range(1, 120):
        values[t] = 5 + 0.9 * values[t - 1] + rng.normal()
    series = _frame(values)
    train, test = series.iloc[:100], series.iloc[100:]
    lookback = 3
    X = np.array([values[t - lookback : t] for t in range(lookback, 100)])
    reference = Ridge(alpha=1.0).fit(X, values[lookback:100])
    expected = reference.predict(np.array([values[t - lookback : t] for t in range(100, 120)]))
    pred = LinearAR("Open", lookback=lookback).fit(train).predict(test)
    np.testing.assert_allclose(pred.to_numpy(), expected)
    # It learns the AR(1) dynamics: the latest lag carries most of the weight.
    assert abs(reference.coef_[-1] - 0.9) < 0.2


def test_baselines_are_sklearn_estimators():
    model = MovingAverage("Close", window=7)
    copy = clone(model)
    assert copy.get_params() == {"target": "Close", "window": 7} and copy is not model
    with pytest.raises(ConfigError, match="window"):
        MovingAverage("Open", window=0).fit(_frame([1.0, 2.0]))


def test_default_baselines_depend_on_columns_and_frequency():
    daily = _frame(np.arange(1.0, 101.0), close=np.arange(1.0, 101.0))
    names = set(default_baselines(daily, "Open", lookback=10))
    assert names == {"persistence", "last-close", "drift", "moving-average(5)", "linear-ar(10)"}
    monthly = _frame(np.arange(1.0, 49.0), freq="MS")
    assert seasonal_period(monthly.index) == 12
    assert "seasonal-naive(12)" in default_baselines(monthly, "Open", lookback=60)
    assert "linear-ar(60)" not in default_baselines(monthly, "Open", lookback=60)  # too short to fit
    assert seasonal_period(daily.index) is None


def test_h_step_forecasts_of_each_baseline_by_hand():
    rng = np.random.default_rng(3)
    values = 50 + np.cumsum(rng.normal(0, 1, 40))
    close = values + rng.normal(0, 0.5, 40)
    series = _frame(values, close=close)
    train, test = series.iloc[:30], series.iloc[30:]
    H = 5
    y, c = values, close

    def by_hand(rule):
        # Forecast issued at row p (knowing rows < p) for row p + k - 1, k = 1..H.
        return np.array([[rule(p, k) for k in range(1, H + 1)] for p in range(30, 40)])

    slope = (y[29] - y[0]) / 29
    fitted_ar = LinearAR("Open", lookback=4).fit(train)

    def ar(p, k):
        window = list(y[p - 4 : p])
        for _ in range(k):
            window.append(float(fitted_ar.model_.predict(np.array([window[-4:]]))[0]))
        return window[-1]

    cases = [
        (LastValue("Open"), lambda p, k: y[p - 1]),
        (LastValue("Open", column="Close"), lambda p, k: c[p - 1]),
        (Drift("Open"), lambda p, k: y[p - 1] + k * slope),
        (MovingAverage("Open", window=3), lambda p, k: y[p - 3 : p].mean()),
        # One season back from the target row, or two when the target is more than a season ahead.
        (SeasonalNaive("Open", period=3), lambda p, k: y[p + k - 1 - 3 * int(np.ceil(k / 3))]),
        (fitted_ar, ar),
    ]
    for baseline, rule in cases:
        fitted = baseline if baseline is fitted_ar else clone(baseline).fit(train)
        got = fitted.predict_horizons(test, H)
        assert list(got.columns) == [f"h{k}" for k in range(1, H + 1)]
        np.testing.assert_allclose(got.to_numpy(), by_hand(rule), rtol=1e-9, err_msg=type(baseline).__name__)
        np.testing.assert_allclose(got["h1"].to_numpy(), fitted.predict(test).to_numpy(), rtol=1e-12)
    with pytest.raises(ConfigError, match="horizon"):
        LastValue("Open").fit(train).predict_horizons(test, 0)


@pytest.mark.filterwarnings("ignore:An ill-conditioned matrix")
def test_linear_ar_on_values_whose_squares_overflow_is_a_clear_data_error():
    """Found by the long-format fuzz: one value of 1.4e154 made Ridge's products overflow and
    scipy raise "array must not contain infs or NaNs" from inside a backtest."""
    from seqcast.errors import DataError

    index = pd.bdate_range("2020-01-01", periods=30)
    values = 100 + np.random.default_rng(0).normal(size=30)
    values[0] = 1.4e154
    frame = pd.DataFrame({"Open": values}, index=index)
    with pytest.raises(DataError, match=r"linear-ar\(3\) baseline cannot be fitted: Open reaches 1.4e\+154.*rescale"):
        LinearAR("Open", lookback=3).fit(frame)
    values[0] = 1.4e15  # large but fine: the same fit as sklearn's own
    ours = LinearAR("Open", lookback=3).fit(pd.DataFrame({"Open": values}, index=index)).model_
    X = np.lib.stride_tricks.sliding_window_view(values, 3)[:-1]
    np.testing.assert_array_equal(ours.coef_, Ridge(alpha=1.0).fit(X, values[3:]).coef_)
