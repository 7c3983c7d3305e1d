import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone

from seqcast import ArtifactError, DataError, Forecaster
from seqcast.windows import context_windows, fit_scaler

from .conftest import TINY


def test_fit_returns_self_and_sets_only_underscore_state(small_series):
    train, _ = small_series
    f = Forecaster(**TINY)
    before = dict(vars(f))
    assert f.fit(train) is f
    new = set(vars(f)) - set(before)
    assert new and all(name.endswith("_") for name in new)
    assert {k: vars(f)[k] for k in before} == before  # parameters untouched
    assert clone(f).get_params() == f.get_params()


def test_predict_uses_training_tail_as_context(small_series):
    train, test = small_series
    f = Forecaster(**TINY).fit(train)
    pred = f.predict(test)
    assert isinstance(pred, pd.Series) and pred.index.equals(test.index) and pred.notna().all()
    # Reference: scale train-tail + test with a scaler fit on training rows only, run the model by hand.
    scaler = fit_scaler(train[["Open"]].to_numpy())
    values = scaler.transform(pd.concat([train[["Open"]].iloc[-10:], test[["Open"]]]).to_numpy())
    windows, _ = context_windows(values, 10, len(test))
    f.model_.eval()
    with torch.no_grad():
        scaled = f.model_(torch.tensor(np.ascontiguousarray(windows), dtype=torch.float32)).numpy()
    expected = scaler.inverse_transform(scaled.astype(np.float64))[:, 0]
    np.testing.assert_allclose(pred.to_numpy(), expected, rtol=1e-6)


def test_predict_on_training_rows_leaves_first_lookback_rows_empty(small_series):
    train, _ = small_series
    pred = Forecaster(**TINY).fit(train).predict(train)
    assert pred.iloc[:10].isna().all() and pred.iloc[10:].notna().all()


def test_fit_accepts_target_as_y(small_series):
    train, test = small_series
    a = Forecaster(**TINY).fit(train).predict(test)
    b = Forecaster(**TINY).fit(train.drop(columns="Open"), train["Open"]).predict(test)
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())


def test_same_seed_same_predictions_different_seed_different(small_series):
    train, test = small_series
    a = Forecaster(**TINY, seed=3).fit(train).predict(test)
    b = Forecaster(**TINY, seed=3).fit(train).predict(test)
    c = Forecaster(**TINY, seed=4).fit(train).predict(test)
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    assert not np.allclose(a.to_numpy(), c.to_numpy())


def test_save_load_round_trip_gives_identical_predictions(small_series, tmp_path):
    train, test = small_series
    f = Forecaster(**{**TINY, "features": "Open,Close"}).fit(train)
    f.save(tmp_path / "m")
    g = Forecaster.load(tmp_path / "m")
    assert g.get_params() == f.get_params()
    np.testing.assert_array_equal(f.predict(test).to_numpy(), g.predict(test).to_numpy())
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json", "manifest.json", "scaler.json", "state.json", "weights.safetensors"
    ]


@pytest.mark.parametrize("victim", ["config.json", "scaler.json", "weights.safetensors", "manifest.json"])
def test_load_refuses_missing_or_corrupt_files(small_series, tmp_path, victim):
    train, _ = small_series
    Forecaster(**TINY).fit(train).save(tmp_path / "m")
    (tmp_path / "m" / victim).unlink()
    with pytest.raises(ArtifactError, match=victim):
        Forecaster.load(tmp_path / "m")
    Forecaster(**TINY).fit(train).save(tmp_path / "n")
    path = tmp_path / "n" / victim
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ArtifactError, match=victim):
        Forecaster.load(tmp_path / "n")


def test_too_few_rows_names_the_need(small_series):
    train, _ = small_series
    with pytest.raises(DataError, match="need at least 11"):
        Forecaster(**TINY).fit(train.iloc[:10])


def test_val_fraction_records_validation_loss(small_series):
    train, _ = small_series
    f = Forecaster(**{**TINY, "val_fraction": 0.2}).fit(train)
    assert len(f.history_.val_loss) == len(f.history_.loss) == 2
