import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone

from seqcast import ArtifactError, ConfigError, DataError, Forecaster
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


# ---- features, target transforms, horizons, forecasts (issue 4) -----------------------------------

from seqcast.features import SAME_DAY_SUFFIX, future_index  # noqa: E402
from seqcast.forecaster import PRESETS, _dates_from  # noqa: E402


def _run_model(f, windows):
    f.model_.eval()
    with torch.no_grad():
        return f.model_(torch.tensor(np.ascontiguousarray(windows), dtype=torch.float32)).double().numpy()


def test_indicators_drop_warmup_rows_and_scale_each_column_on_training_rows(small_series):
    train, test = small_series
    f = Forecaster(**{**TINY, "features": "Open,Close,sma5,rsi6"}).fit(train)
    assert f.input_columns_ == ["Open", "Close", "sma5", "rsi6"] and f.warmup_rows_ == 6
    sma5 = train["Open"].rolling(5).mean()
    expected_max = [train["Open"].iloc[6:].max(), train["Close"].iloc[6:].max(), sma5.iloc[6:].max()]
    np.testing.assert_allclose(f.input_scaler_.data_max_[:3], expected_max)
    # The target scaler is the Open column's alone, whatever the number of inputs.
    np.testing.assert_allclose(f.target_scaler_.data_max_, [train["Open"].iloc[6:].max()])
    pred = f.predict(train)
    assert pred.iloc[: 6 + 10].isna().all() and pred.iloc[16:].notna().all()
    assert f.predict(test).notna().all()


def test_diff_target_is_last_known_value_plus_predicted_change(small_series):
    train, test = small_series
    f = Forecaster(**{**TINY, "features": "Open,Close", "target_transform": "diff"}).fit(train)
    changes = np.diff(train["Open"].to_numpy())[10 - 1 :]  # the changes the training windows target
    np.testing.assert_allclose(f.target_scaler_.data_min_, [changes.min()])
    combined = pd.concat([train.iloc[-10:], test])[["Open", "Close"]]
    windows, _ = context_windows(f.input_scaler_.transform(combined.to_numpy()), 10, len(test))
    change = f.target_scaler_.inverse_transform(_run_model(f, windows))[:, 0]
    last_known = combined["Open"].to_numpy()[9:-1]
    np.testing.assert_allclose(f.predict(test).to_numpy(), last_known + change, rtol=1e-9)


def test_logret_target_multiplies_last_known_value(small_series):
    train, test = small_series
    f = Forecaster(**{**TINY, "target_transform": "logret"}).fit(train)
    combined = pd.concat([train.iloc[-10:], test])[["Open"]]
    windows, _ = context_windows(f.input_scaler_.transform(combined.to_numpy()), 10, len(test))
    logret = f.target_scaler_.inverse_transform(_run_model(f, windows))[:, 0]
    expected = combined["Open"].to_numpy()[9:-1] * np.exp(logret)
    np.testing.assert_allclose(f.predict(test).to_numpy(), expected, rtol=1e-9)


def test_inputs_never_see_the_predicted_day_unless_same_day_is_asked(small_series):
    train, test = small_series
    changed = test.copy()
    changed.iloc[5, changed.columns.get_loc("Close")] += 50
    plain = Forecaster(**{**TINY, "features": "Open,Close"}).fit(train)
    a, b = plain.predict(test), plain.predict(changed)
    np.testing.assert_array_equal(a.iloc[:6], b.iloc[:6])  # row 5's own Close does not reach row 5
    assert a.iloc[6] != b.iloc[6]
    same = Forecaster(**{**TINY, "features": "Open", "same_day": "Close"}).fit(train)
    assert same.input_columns_ == ["Open", "Close" + SAME_DAY_SUFFIX]
    c, d = same.predict(test), same.predict(changed)
    np.testing.assert_array_equal(c.iloc[:5], d.iloc[:5])
    assert c.iloc[5] != d.iloc[5]  # today's Close now feeds today's Open, as asked
    with pytest.raises(ConfigError, match="same-day"):
        same.forecast(3)


def test_direct_horizon_columns_and_per_step_scores(small_series):
    train, test = small_series
    f = Forecaster(**{**TINY, "features": "Open,logret", "target_transform": "diff", "horizon": 3}).fit(train)
    table = f.predict_horizons(test)
    assert list(table.columns) == ["h1", "h2", "h3"] and table.index.equals(test.index)
    np.testing.assert_allclose(table["h1"].to_numpy(), f.predict(test).to_numpy())
    # h2 on row i predicts row i+1 from rows before i: last known Open plus the second output.
    combined = pd.concat([train.iloc[-60:], test])
    design = np.c_[combined["Open"], np.log(combined["Open"]).diff()]
    windows, _ = context_windows(f.input_scaler_.transform(design), 10, len(test))
    outputs = f.target_scaler_.inverse_transform(_run_model(f, windows).reshape(-1, 1)).reshape(-1, 3)
    np.testing.assert_allclose(table["h2"], combined["Open"].to_numpy()[-len(test) - 1 : -1] + outputs[:, 1], rtol=1e-9)
    scores = f.score_horizons(test)
    actual = test["Open"].to_numpy()
    h3 = table["h3"].to_numpy()[:-2]
    assert scores.loc["h3", "n"] == len(test) - 2
    assert scores.loc["h3", "rmse"] == pytest.approx(np.sqrt(np.mean((actual[2:] - h3) ** 2)))
    forecast = f.forecast()
    assert list(forecast["step"]) == [1, 2, 3]
    assert list(forecast.index) == list(future_index(test.index[:0].append(train.index), 3))
    with pytest.raises(ConfigError, match="--horizon 5"):
        f.forecast(5)


def test_recursive_feeds_back_its_own_predictions(small_series):
    train, test = small_series
    params = {**TINY, "features": "Open,sma3,logret,dow", "target_transform": "diff", "horizon": 3, "strategy": "recursive"}
    f = Forecaster(**params).fit(train)
    table = f.predict_horizons(test)
    np.testing.assert_allclose(table["h1"].to_numpy(), f.predict(test).to_numpy())
    # h2 at row i equals h1 of the series in which row i's Open is replaced by the model's own h1.
    i = 4
    fed = test.iloc[: i + 2].copy()
    fed.iloc[i, fed.columns.get_loc("Open")] = table["h1"].iloc[i]
    assert f.predict(fed).iloc[i + 1] == pytest.approx(table["h2"].iloc[i], rel=1e-9)
    future = f.forecast(5, frame=test)
    assert len(future) == 5 and future.index[0] == test.index[-1] + pd.offsets.BDay()
    extended = pd.concat([test, pd.DataFrame({"Open": [1.0]}, index=future.index[:1])])
    assert future["forecast"].iloc[0] == pytest.approx(f.predict(extended).iloc[-1], rel=1e-9)
    with pytest.raises(ConfigError, match="computable from Open"):
        Forecaster(**{**params, "features": "Open,Close"}).fit(train)


def _roll_one_history_at_a_time(f, combined, positions, dates, steps):
    """Reference for recursive forecasts: each origin's history through pandas on its own (the
    features of one DataFrame), one model call per step for all origins, as before batching."""
    histories = [combined.iloc[max(0, p - f.context_rows_) : p] for p in positions]
    values = [h["Open"].to_numpy(dtype=np.float64) for h in histories]
    indexes = [h.index for h in histories]
    out = np.empty((len(histories), steps))
    for step in range(steps):
        windows = []
        for v, idx in zip(values, indexes):
            design = f._scaled_design(pd.DataFrame({"Open": v}, index=idx), last=len(v) - 1)
            windows.append(design[-f.lookback :])
        learned = f._run(np.stack(windows))
        out[:, step] = f._levels(learned, np.array([v[-1] for v in values]))[:, 0]
        for i in range(len(values)):
            keep = f.context_rows_ - 1
            values[i] = np.r_[values[i][-keep:], out[i, step]]
            indexes[i] = indexes[i][-keep:].append(dates[i][step : step + 1])
    return out


def test_recursive_origins_computed_together_equal_one_at_a_time():
    # Every indicator a recursive model can take. MACD's memory (383 rows) sets the histories' length.
    rng = np.random.default_rng(11)
    index = pd.bdate_range("2019-01-01", periods=560, name="Date")
    frame = pd.DataFrame({"Open": 100 + np.cumsum(rng.normal(0, 1, 560))}, index=index)
    features = "Open,logret,ret,sma5,ema7,rsi14,macd,macd_signal,bb_pctb20,bb_width20,dow,month"
    params = {**TINY, "features": features, "target_transform": "diff", "horizon": 4, "strategy": "recursive"}
    f = Forecaster(**params).fit(frame.iloc[:500])
    rows = frame.iloc[500:]
    table = f.predict_horizons(rows)
    combined = f._combined(f._frame(rows))
    _, at, positions, _ = f._windows(combined, len(rows))
    dates = [_dates_from(combined.index, p, 4, f.exchange_holidays_) for p in positions]
    assert len({min(p, f.context_rows_) for p in positions}) == 1 and f.context_rows_ == f.lookback + 383
    expected = _roll_one_history_at_a_time(f, combined, positions, dates, 4)
    np.testing.assert_array_equal(table.to_numpy()[at], expected)
    # Over the training rows themselves (no remembered context before them) the histories of the
    # first origins are shorter, one length each; the later ones share the full length (here 42).
    f = Forecaster(**{**params, "features": "Open,ema3,rsi2,dow"}).fit(frame.iloc[:500])
    early = frame.iloc[:60]
    table = f.predict_horizons(early)
    combined = f._combined(f._frame(early))
    _, at, positions, _ = f._windows(combined, len(early))
    lengths = [min(p, f.context_rows_) for p in positions]
    assert len(set(lengths)) > 1 and lengths.count(f.context_rows_) > 1
    dates = [_dates_from(combined.index, p, 4, f.exchange_holidays_) for p in positions]
    np.testing.assert_array_equal(table.to_numpy()[at], _roll_one_history_at_a_time(f, combined, positions, dates, 4))


def test_a_recursive_history_logret_cannot_take_is_named(small_series):
    train, _ = small_series
    f = Forecaster(**{**TINY, "features": "Open,logret", "strategy": "recursive"}).fit(train)
    good = train["Open"].to_numpy()[-f.context_rows_ :]
    bad = good.copy()
    bad[-3] = -1.0
    index = train.index[-f.context_rows_ :]
    assert f._rolled_windows([good], [index]).shape == (1, f.lookback, 2)
    with pytest.raises(DataError, match=f"logret needs positive values but Open is -1.0 on {index[-3]}"):
        f._rolled_windows([good, bad], [index, index])


def test_forecast_continues_a_monthly_series_on_its_calendar():
    rng = np.random.default_rng(3)
    index = pd.date_range("2010-01-31", periods=60, freq="ME", name="month")
    series = pd.DataFrame({"rainfall": 80 + 20 * np.sin(np.arange(60) / 1.9) + rng.normal(0, 3, 60)}, index=index)
    f = Forecaster(**{**TINY, "target": "rainfall", "features": "rainfall,month", "strategy": "recursive"}).fit(series)
    future = f.forecast(4)
    assert list(future.index) == list(pd.date_range("2015-01-31", periods=4, freq="ME"))
    assert future["forecast"].notna().all()


def test_save_load_keeps_features_transform_and_horizon(small_series, tmp_path):
    train, test = small_series
    params = {**TINY, "features": "Open,Close,rsi5,ema4@Close,range", "target_transform": "logret", "horizon": 2}
    f = Forecaster(**params).fit(train)
    f.save(tmp_path / "m")
    g = Forecaster.load(tmp_path / "m")
    assert g.input_columns_ == f.input_columns_ and g.warmup_rows_ == f.warmup_rows_
    pd.testing.assert_frame_equal(f.predict_horizons(test), g.predict_horizons(test))
    pd.testing.assert_frame_equal(f.forecast(), g.forecast())


def test_presets_are_forecaster_params():
    f = Forecaster.from_preset("indicators", epochs=1)
    assert f.epochs == 1 and f.features == PRESETS["indicators"]["features"]
    assert set(PRESETS["indicators"]) <= set(Forecaster().get_params())
    with pytest.raises(ConfigError, match="unknown preset"):
        Forecaster.from_preset("magic")


def test_threads_applies_to_training_and_prediction_only(small_series, monkeypatch):
    import seqcast.forecaster as module

    train, test = small_series
    before = torch.get_num_threads()
    want = 2 if before == 1 else 1  # a count different from the current one, so the check can fail
    seen = {"train": [], "predict": []}
    real_train, real_predict = module.train_model, module.predict_batches

    def train_model(*args, **kwargs):
        # train_model's own tests check what it does with the count (split batches or intra-op threads).
        seen["train"].append(kwargs["threads"])
        return real_train(*args, **kwargs)

    def predict_batches(*args, **kwargs):
        # predict_batches's own tests check what it does with the count (None: one thread if small).
        seen["predict"].append(kwargs["threads"])
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(module, "train_model", train_model)
    monkeypatch.setattr(module, "predict_batches", predict_batches)
    # A two-thread fit is slow on a busy 2-core machine: keep it to one epoch of a few windows.
    short = {**TINY, "lookback": 5, "epochs": 1, "batch_size": 32}
    f = Forecaster(**{**short, "horizon": 2, "threads": want}).fit(train.iloc[-40:])
    f.predict(test), f.predict_horizons(test), f.forecast()
    assert seen["train"] == [want] and seen["predict"] == [want] * 3
    assert torch.get_num_threads() == before
    seen["predict"].clear()
    Forecaster(**short).fit(train.iloc[-40:]).predict(test)  # None: predict_batches chooses
    assert seen["predict"] == [None]
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="threads"):
            Forecaster(**{**TINY, "threads": bad}).fit(train)


def test_forecast_dates_skip_the_exchange_holidays_the_training_rows_skipped(tmp_path):
    from seqcast.data import load_csv
    from seqcast.datasets import GOOGLE_TRAIN

    frame = load_csv(GOOGLE_TRAIN, adjust_splits=True).loc[:"2016-12-23"]
    # Ten context rows (2016-12-12..23) hold no holiday to judge by: the training rows decide.
    f = Forecaster(**{**TINY, "lookback": 10, "horizon": 3}).fit(frame)
    assert f.exchange_holidays_ is True
    assert f.context_.index[0] == pd.Timestamp("2016-12-12")
    expected = [pd.Timestamp("2016-12-27"), pd.Timestamp("2016-12-28"), pd.Timestamp("2016-12-29")]
    assert list(f.forecast().index) == expected  # 2016-12-26 was the observed Christmas holiday
    f.save(tmp_path / "m")
    loaded = Forecaster.load(tmp_path / "m")
    assert loaded.exchange_holidays_ is True and list(loaded.forecast().index) == expected


@pytest.mark.parametrize(
    "params, message",
    [
        ({"horizon": True}, "horizon must be a whole number"),
        ({"lookback": True}, "lookback must be a whole number"),
        ({"epochs": False}, "epochs must be a whole number"),
        ({"lr": "x"}, "lr must be a number"),
        ({"val_fraction": "0.2"}, "val_fraction must be a number"),
        ({"clip_norm": True}, "clip_norm must be a positive number"),
    ],
)
def test_booleans_and_text_are_not_sizes_or_rates(params, message):
    """A TOML grid can hold `true` or "x" where a number belongs (found by fuzzing `seqcast tune`):
    bool passed as 1 and crashed numpy, text crashed float()."""
    from seqcast.datasets import load_google

    train, _ = load_google()
    with pytest.raises(ConfigError, match=message):
        Forecaster(**{"epochs": 1, "layers": 1, "units": 4, "lookback": 3, **params}).fit(train.iloc[:40])


def test_a_model_fitted_on_an_array_predicts_a_dated_file(tmp_path, capsys):
    """Its remembered tail has no dates, so it cannot precede the file's rows: the file starts on its
    own (its first lookback rows get no prediction) instead of crashing comparing a date with an int,
    in the library and through `seqcast predict`."""
    from seqcast.cli import main

    X = 100 + np.cumsum(np.random.default_rng(0).normal(size=(200, 1)), axis=0)
    model = Forecaster(lookback=5, epochs=1, layers=1, units=4).fit(X, X[:, 0])
    dates = pd.bdate_range("2020-01-01", periods=20)
    frame = pd.DataFrame({"x0": 100.0 + np.arange(20)}, index=pd.DatetimeIndex(dates, name="Date"))
    predictions = model.predict(frame)
    assert predictions.iloc[:5].isna().all() and predictions.iloc[5:].notna().all()
    model.save(tmp_path / "m")
    frame.to_csv(tmp_path / "x.csv")
    assert main(["predict", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "x.csv"), "--out", str(tmp_path / "p.csv")]) == 0
    assert "15 of 20 rows predicted" in capsys.readouterr().out


def test_a_failed_refit_keeps_the_last_fit_whole(small_series):
    train, test = small_series
    f = Forecaster(**TINY).fit(train)
    before = f.predict(test)
    state = {k: v for k, v in vars(f).items() if k.endswith("_")}
    f.set_params(lookback=11)
    with pytest.raises(DataError, match="rows"):
        f.fit(train.iloc[:5])
    assert {k: v for k, v in vars(f).items() if k.endswith("_")}.keys() == state.keys()
    assert all(vars(f)[k] is v for k, v in state.items())  # the same fitted objects, none replaced
    with pytest.raises(ConfigError, match=r"lookback was 10 when this model was fitted and is now 11"):
        f.predict(test)
    f.set_params(lookback=10)
    pd.testing.assert_series_equal(f.predict(test), before)


@pytest.mark.parametrize(
    "name, value", [("lookback", 5), ("target_transform", "diff"), ("horizon", 2), ("strategy", "recursive")]
)
def test_params_that_predictions_read_cannot_change_after_fit(small_series, tmp_path, name, value):
    # A level model's outputs read as differences doubled the prices; another lookback gave other
    # windows to the same weights: each call that reads them refuses instead.
    train, test = small_series
    f = Forecaster(**TINY).fit(train)
    f.set_params(**{name: value})
    for call in (lambda: f.predict(test), lambda: f.predict_horizons(test), lambda: f.forecast(2),
                 lambda: f.save(tmp_path / "m")):
        with pytest.raises(ConfigError, match=f"{name} was .* when this model was fitted"):
            call()
    assert not (tmp_path / "m").exists()


def test_params_that_predictions_do_not_read_may_change_and_save_writes_the_fitted_ones(small_series, tmp_path):
    train, test = small_series
    f = Forecaster(**TINY).fit(train)
    before = f.predict(test)
    f.set_params(threads=1, epochs=7, lr=0.5)
    pd.testing.assert_series_equal(f.predict(test), before)
    f.save(tmp_path / "m")
    loaded = Forecaster.load(tmp_path / "m")
    assert (loaded.epochs, loaded.lr, loaded.threads) == (TINY["epochs"], 0.001, None)
    pd.testing.assert_series_equal(loaded.predict(test), before)


def test_rows_out_of_date_order_or_repeated_dates_are_refused(small_series):
    # load_csv sorts a file's rows; a frame given directly was used as it came: reversed rows trained,
    # and predicted each day from the days after it, without a word.
    train, test = small_series
    f = Forecaster(**TINY)
    with pytest.raises(DataError, match=r"date order, each date once, but the row at position 1 \(2020-06-15\) comes after 2020-06-16"):
        f.fit(train.iloc[::-1])
    repeated = pd.concat([train.iloc[:50], train.iloc[49:]])
    with pytest.raises(DataError, match=r"position 50 \(2020-03-10\) repeats the date before it: sort the rows"):
        f.fit(repeated)
    f.fit(train)
    with pytest.raises(DataError, match="date order"):
        f.predict(test.iloc[::-1])
    with pytest.raises(DataError, match="date order"):
        f.forecast(1, frame=train.iloc[::-1])


def test_empty_frames_time_zones_and_odd_inputs_get_clear_answers(small_series):
    train, test = small_series
    f = Forecaster(**TINY, horizon=2).fit(train)
    empty = f.predict(test.iloc[:0])
    assert empty.empty and empty.name == "Open"  # MinMaxScaler refused zero rows
    assert f.predict_horizons(test.iloc[:0]).shape == (0, 2)
    with pytest.raises(DataError, match=r"dates are in time zone UTC but the model's training dates had none: drop the zone"):
        f.predict(test.tz_localize("UTC"))
    aware = Forecaster(**TINY).fit(train.tz_localize("UTC"))
    with pytest.raises(DataError, match=r"have no time zone but the model's training dates are in UTC: .*tz_localize\('UTC'\)"):
        aware.predict(test)
    assert str(aware.predict(test.tz_localize("UTC")).index.tz) == "UTC"
    with pytest.raises(ConfigError, match="features must be a comma-separated string .* got 3"):
        Forecaster(**TINY, features=3).fit(train)
    with pytest.raises(DataError, match=r"column Name on 2020-01-0\d.* holds 'x', not a number"):
        Forecaster(**TINY, features="Open,Name").fit(train.assign(Name="x"))
    pd.testing.assert_series_equal(
        Forecaster(**TINY, features=np.array(["Open", "Close"])).fit(train).predict(test),
        Forecaster(**TINY, features="Open,Close").fit(train).predict(test),
    )


def test_flags_that_are_not_booleans_are_refused():
    from seqcast.conformal import EnsembleForecaster

    with pytest.raises(ConfigError, match="shuffle must be True or False, got 'no'"):
        Forecaster(**TINY, shuffle="no").fit(pd.DataFrame({"Open": np.arange(1.0, 60.0)}, index=pd.bdate_range("2020-01-01", periods=59)))
    with pytest.raises(ConfigError, match="n_members .* whole number of at least 1, got True"):
        EnsembleForecaster(Forecaster(**TINY), n_members=True).fit(
            pd.DataFrame({"Open": np.arange(1.0, 60.0)}, index=pd.bdate_range("2020-01-01", periods=59))
        )
