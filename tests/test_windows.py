import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import MinMaxScaler

from seqcast.errors import ConfigError, DataError
from seqcast.windows import (
    context_windows,
    fit_scaler,
    scaler_from_dict,
    scaler_to_dict,
    sliding_windows,
    split_by_date,
    supervised_windows,
    with_context,
)


def test_supervised_windows_equal_a_hand_written_loop():
    rng = np.random.default_rng(0)
    inputs, target = rng.normal(size=(23, 3)), rng.normal(size=23)
    lookback, horizon = 5, 2
    X, y = supervised_windows(inputs, target, lookback, horizon)
    expected_X, expected_y = [], []
    for i in range(lookback, len(target) - horizon + 1):
        expected_X.append(inputs[i - lookback : i])
        expected_y.append(target[i : i + horizon])
    np.testing.assert_array_equal(X, np.array(expected_X))
    np.testing.assert_array_equal(y, np.array(expected_y))


def test_windows_are_views_not_copies():
    values = np.arange(40.0).reshape(20, 2)
    windows = sliding_windows(values, 4)
    assert windows.shape == (17, 4, 2)
    assert np.shares_memory(windows, values)


def test_too_few_rows_is_a_data_error():
    with pytest.raises(DataError, match="at least 61 rows"):
        supervised_windows(np.zeros((60, 1)), np.zeros(60), 60, 1)


def test_scaler_matches_sklearn_and_sees_training_rows_only():
    rng = np.random.default_rng(1)
    train, test = rng.uniform(10, 20, size=(50, 2)), rng.uniform(30, 40, size=(5, 2))
    ours = fit_scaler(train)
    reference = MinMaxScaler().fit(train)
    np.testing.assert_allclose(ours.transform(test), reference.transform(test))
    # Test rows above the training maximum scale above 1: proof the scaler never saw them.
    assert (ours.transform(test) > 1).all()
    restored = scaler_from_dict(scaler_to_dict(ours, ["a", "b"]))
    np.testing.assert_array_equal(restored.transform(test), ours.transform(test))
    np.testing.assert_array_equal(restored.inverse_transform(ours.transform(test)), ours.inverse_transform(ours.transform(test)))


def test_test_period_inputs_equal_the_seed_concat_and_slice_recipe():
    rng = np.random.default_rng(2)
    train = pd.DataFrame({"Open": rng.uniform(100, 200, 100)}, index=pd.bdate_range("2020-01-01", periods=100))
    test = pd.DataFrame({"Open": rng.uniform(100, 200, 20)}, index=pd.bdate_range(train.index[-1] + pd.offsets.BDay(), periods=20))
    lookback = 60
    sc = MinMaxScaler().fit(train[["Open"]].to_numpy())
    # The Keras tutorial's recipe, verbatim in numpy.
    dataset_total = pd.concat((train["Open"], test["Open"]), axis=0)
    inputs = dataset_total[len(dataset_total) - len(test) - 60 :].values.reshape(-1, 1)
    inputs = sc.transform(inputs)
    seed_X = np.array([inputs[i - 60 : i, 0] for i in range(60, 80)])

    combined, n_context = with_context(test[["Open"]], train[["Open"]].iloc[-lookback:])
    assert n_context == lookback
    windows, rows = context_windows(sc.transform(combined.to_numpy()), lookback, len(test))
    np.testing.assert_allclose(windows[:, :, 0], seed_X)
    np.testing.assert_array_equal(rows, np.arange(20))


def test_context_windows_without_tail_skip_rows_lacking_history():
    values = np.arange(10.0)[:, None]
    windows, rows = context_windows(values, 3, 10)
    np.testing.assert_array_equal(rows, np.arange(3, 10))
    np.testing.assert_array_equal(windows[0, :, 0], [0, 1, 2])
    np.testing.assert_array_equal(windows[-1, :, 0], [6, 7, 8])


def test_split_by_date():
    frame = pd.DataFrame({"x": range(10)}, index=pd.date_range("2021-01-01", periods=10))
    train, test = split_by_date(frame, "2021-01-08")
    assert len(train) == 7 and len(test) == 3 and test.index[0] == pd.Timestamp("2021-01-08")
    with pytest.raises(ConfigError, match="pick a date"):
        split_by_date(frame, "2030-01-01")
    with pytest.raises(ConfigError, match="not a date"):
        split_by_date(frame, "tomorrow-ish")
