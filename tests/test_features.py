import numpy as np
import pandas as pd
import pytest

from seqcast.data import load_csv
from seqcast.datasets import GOOGLE_TEST, GOOGLE_TRAIN
from seqcast.errors import ConfigError, DataError
from seqcast.features import (
    SAME_DAY_SUFFIX,
    feature_matrix,
    NYSEHolidayCalendar,
    describe_closures,
    learned_closures,
    future_index,
    skips_exchange_holidays,
    inverse_target,
    parse_features,
    parse_same_day,
    target_matrix,
    transform_target,
)


@pytest.fixture
def prices():
    rng = np.random.default_rng(11)
    n = 90
    close = 50 + np.cumsum(rng.normal(0, 1, n))
    high = close + rng.uniform(0.1, 2, n)
    low = close - rng.uniform(0.1, 2, n)
    return pd.DataFrame(
        {"Open": close + rng.normal(0, 0.5, n), "High": high, "Low": low, "Close": close,
         "Volume": rng.uniform(1e5, 1e6, n)},
        index=pd.bdate_range("2021-03-01", periods=n, name="Date"),
    )


def compute(frame, name, target="Close"):
    (feature,) = parse_features(frame, target, name)
    return feature.compute(frame)


# ---- independent references: plain loops over the definitions ------------------------------------


def ema_loop(x, span, first=0):
    alpha = 2 / (span + 1)
    out = np.full(len(x), np.nan)
    value = x[first]
    for t in range(first, len(x)):
        value = x[t] if t == first else alpha * x[t] + (1 - alpha) * value
        if t - first >= span - 1:
            out[t] = value
    return out


def wilder_loop(values, k, first):
    out = np.full(len(values), np.nan)
    avg = None
    for t in range(first, len(values)):
        if t == first + k - 1:
            avg = sum(values[first : t + 1]) / k
        elif avg is not None:
            avg = (avg * (k - 1) + values[t]) / k
        if avg is not None:
            out[t] = avg
    return out


def rsi_loop(x, k):
    gains = [0.0] + [max(x[t] - x[t - 1], 0.0) for t in range(1, len(x))]
    losses = [0.0] + [max(x[t - 1] - x[t], 0.0) for t in range(1, len(x))]
    g, l_ = wilder_loop(gains, k, 1), wilder_loop(losses, k, 1)
    return np.array([np.nan if np.isnan(a) else (100.0 if b == 0 else 100 - 100 / (1 + a / b)) for a, b in zip(g, l_)])


def test_returns_and_moving_averages_match_loops(prices):
    x = prices["Close"].to_numpy()
    expected_ret = np.r_[np.nan, [x[t] / x[t - 1] - 1 for t in range(1, len(x))]]
    np.testing.assert_allclose(compute(prices, "ret"), expected_ret)
    np.testing.assert_allclose(compute(prices, "logret"), np.log1p(expected_ret))
    sma = np.array([np.nan if t < 19 else np.mean(x[t - 19 : t + 1]) for t in range(len(x))])
    np.testing.assert_allclose(compute(prices, "sma20"), sma)
    np.testing.assert_allclose(compute(prices, "ema10"), ema_loop(x, 10))


def test_rsi_is_wilders_definition(prices):
    x = prices["Close"].to_numpy()
    ours = compute(prices, "rsi14")
    assert np.isnan(ours[:14]).all() and np.isfinite(ours[14:]).all()
    np.testing.assert_allclose(ours, rsi_loop(x, 14))
    rising = prices.assign(Close=np.arange(1.0, len(prices) + 1))
    assert (compute(rising, "rsi5")[5:] == 100).all()


def test_macd_line_and_signal_match_loops(prices):
    x = prices["Close"].to_numpy()
    line = ema_loop(x, 12) - ema_loop(x, 26)
    np.testing.assert_allclose(compute(prices, "macd"), line)
    signal = ema_loop(np.nan_to_num(line), 9, first=25)
    ours = compute(prices, "macd_signal")
    assert np.isnan(ours[:33]).all()
    np.testing.assert_allclose(ours, signal)


def test_bollinger_ranges_and_volume_match_loops(prices):
    x, v = prices["Close"].to_numpy(), prices["Volume"].to_numpy()
    k = 10
    pctb, width, volz = (np.full(len(x), np.nan) for _ in range(3))
    for t in range(k - 1, len(x)):
        m, s = np.mean(x[t - k + 1 : t + 1]), np.std(x[t - k + 1 : t + 1])
        pctb[t] = (x[t] - (m - 2 * s)) / (4 * s)
        width[t] = 4 * s / m
        volz[t] = (v[t] - np.mean(v[t - k + 1 : t + 1])) / np.std(v[t - k + 1 : t + 1])
    np.testing.assert_allclose(compute(prices, "bb_pctb10"), pctb)
    np.testing.assert_allclose(compute(prices, "bb_width10"), width)
    np.testing.assert_allclose(compute(prices, "volz10"), volz)
    h, lo, c = prices["High"].to_numpy(), prices["Low"].to_numpy(), prices["Close"].to_numpy()
    tr = [h[0] - lo[0]] + [max(h[t] - lo[t], abs(h[t] - c[t - 1]), abs(lo[t] - c[t - 1])) for t in range(1, len(c))]
    np.testing.assert_allclose(compute(prices, "tr"), tr)
    np.testing.assert_allclose(compute(prices, "atr14"), wilder_loop(tr, 14, 0))
    np.testing.assert_allclose(compute(prices, "range"), h - lo)
    o = prices["Open"].to_numpy()
    np.testing.assert_allclose(compute(prices, "body"), [c[t] - o[t] for t in range(len(c))])
    np.testing.assert_allclose(compute(prices, "gap"), [np.nan] + [o[t] - c[t - 1] for t in range(1, len(c))])
    np.testing.assert_array_equal(compute(prices, "dow"), [d.weekday() for d in prices.index])
    np.testing.assert_array_equal(compute(prices, "month"), [d.month for d in prices.index])


ALL = (
    "Close,logret,ret,sma5,ema7,rsi14,macd,macd_signal,bb_pctb20,bb_width20,tr,atr14,range,body,gap,volz20,dow,month,"
    "rsi6@Open"
)


def test_features_of_many_series_at_once_equal_each_series_alone(prices):
    """compute_values on a (T, N) block: column j is exactly the feature of series j on its own dates."""
    rng = np.random.default_rng(5)
    starts = [0, 3, 7, 20, 31]
    series = [prices["Close"].to_numpy()[s : s + 55] * rng.uniform(0.5, 2) for s in starts]
    dates = [prices.index[s : s + 55] for s in starts]
    block = np.stack(series, axis=1)
    features = [f for f in parse_features(prices, "Close", ALL) if f.uses_only("Close")]
    assert {f.kind for f in features} >= {"column", "logret", "sma", "ema", "rsi", "macd", "macd_signal", "dow"}
    for feature in features:
        together = feature.compute_values([block], dates)
        assert together.shape == block.shape
        for j in range(len(starts)):
            alone = feature.compute(pd.DataFrame({"Close": series[j]}, index=dates[j]))
            np.testing.assert_array_equal(together[:, j], alone, err_msg=feature.name)


def test_every_feature_is_causal(prices):
    """Changing row j never changes any feature on rows before j."""
    features = parse_features(prices, "Close", ALL)
    base = feature_matrix(prices, features).to_numpy()
    for j in (5, 30, 60, 89):
        changed = prices.copy()
        changed.iloc[j, :] = changed.iloc[j, :] * 1.5
        after = feature_matrix(changed, features).to_numpy()
        np.testing.assert_array_equal(after[:j], base[:j])
        assert not np.allclose(np.nan_to_num(after[j:]), np.nan_to_num(base[j:]))


def test_warmup_is_exactly_the_leading_nan_rows(prices):
    for feature in parse_features(prices, "Close", ALL):
        values = feature.compute(prices)
        assert np.isnan(values[: feature.warmup]).all(), feature.name
        assert np.isfinite(values[feature.warmup :]).all(), feature.name


def test_names_resolve_columns_first_case_insensitively_and_indicators_by_pattern(prices):
    names = [f.name for f in parse_features(prices, "Open", "close, RSI14,sma20@close,logret, volume")]
    assert names == ["Close", "rsi14", "sma20@Close", "logret", "Volume"]
    (rsi_close,) = parse_features(prices, "Open", "rsi@Close")
    assert rsi_close.name == "rsi14@Close" and rsi_close.columns == ("Close",)
    for bad, message in [
        ("wobble7", "neither a column"),
        ("sma", "needs a window length"),
        ("logret5", "takes no window"),
        ("bb_pctb1", "at least 2"),
        ("Close,close", "more than once"),
        ("atr14@Close", "takes no @column"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_features(prices, "Open", bad)
    with pytest.raises(DataError, match="no column 'High'"):
        parse_features(prices.drop(columns="High"), "Open", "tr")


def test_same_day_columns_move_one_row_up_and_never_the_target(prices):
    same = parse_same_day(prices, "Open", "close")
    design = feature_matrix(prices, parse_features(prices, "Open", None), same)
    assert list(design.columns) == ["Open", "Close" + SAME_DAY_SUFFIX]
    np.testing.assert_array_equal(design["Close" + SAME_DAY_SUFFIX].to_numpy()[:-1], prices["Close"].to_numpy()[1:])
    assert np.isnan(design.iloc[-1, 1])
    with pytest.raises(ConfigError, match="cannot include the target"):
        parse_same_day(prices, "Open", "open")


@pytest.mark.parametrize("kind", ["level", "diff", "logret"])
def test_each_target_transform_inverts_exactly(prices, kind):
    levels = prices["Open"].to_numpy()
    horizon = 4
    learned = target_matrix(levels, kind, horizon)
    anchor = np.r_[np.nan, levels[:-1]]
    recovered = inverse_target(learned, anchor, kind)
    for h in range(horizon):
        expected = np.r_[levels[h:], [np.nan] * h]
        if kind != "level":
            expected[0] = np.nan  # row 0 has no last known value
        np.testing.assert_allclose(recovered[:, h], expected, rtol=1e-12, equal_nan=True)
    one_step = transform_target(levels[1:], levels[:-1], kind)
    np.testing.assert_allclose(inverse_target(one_step, levels[:-1], kind), levels[1:], rtol=1e-12)
    if kind == "diff":
        np.testing.assert_allclose(learned[1:, 0], np.diff(levels))
        np.testing.assert_allclose(learned[1:-1, 1], levels[2:] - levels[:-2])


def test_future_dates_follow_each_series_calendar():
    stock = pd.bdate_range("2023-12-20", periods=10)  # includes a Friday
    nxt = future_index(stock.delete(3), 4)  # a holiday gap does not change the calendar
    assert list(nxt) == list(pd.bdate_range(stock[-1] + pd.offsets.BDay(), periods=4))
    assert all(d.weekday() < 5 for d in nxt)
    crypto = pd.date_range("2024-01-01", periods=30, freq="D")
    assert list(future_index(crypto, 3)) == list(pd.date_range("2024-01-31", periods=3, freq="D"))
    month_end = pd.date_range("2020-01-31", periods=24, freq="ME")
    assert list(future_index(month_end, 2)) == [pd.Timestamp("2022-01-31"), pd.Timestamp("2022-02-28")]
    month_start = pd.date_range("2020-01-01", periods=24, freq="MS")
    assert list(future_index(month_start, 2)) == [pd.Timestamp("2022-01-01"), pd.Timestamp("2022-02-01")]
    mid_month = pd.DatetimeIndex([f"2020-{m:02d}-15" for m in range(1, 13)]).delete(5)
    assert future_index(mid_month, 1)[0] == pd.Timestamp("2021-01-15")
    weekly = pd.date_range("2024-01-07", periods=10, freq="W-SUN")
    assert future_index(weekly, 1)[0] == pd.Timestamp("2024-03-17")
    assert list(future_index(pd.RangeIndex(5, 10), 2)) == [10, 11]


def test_a_weekday_series_that_keeps_other_holidays_skips_its_own():
    # A European-style exchange: closed on 1 January, 1 May, Good Friday, Easter Monday, the UK's
    # late-May bank holiday (last Monday) and 25-26 December, open on the NYSE's other holidays
    # (4 July, Thanksgiving). Its future skips its own holidays, learned from the rows.
    days = pd.bdate_range("2012-01-02", "2017-12-20")
    goodfriday = pd.DatetimeIndex(["2012-04-06", "2013-03-29", "2014-04-18", "2015-04-03", "2016-03-25", "2017-04-14"])
    closed = pd.DatetimeIndex(
        [d for d in days if (d.month, d.day) in {(1, 1), (5, 1), (12, 25), (12, 26)}
         or (d.month == 5 and d.weekday() == 0 and (d + pd.Timedelta(days=7)).month == 6)]
    ).union(goodfriday).union(goodfriday + pd.Timedelta(days=3))
    europe = days.difference(closed)
    assert skips_exchange_holidays(europe) is False
    rules = learned_closures(europe)
    assert rules == (("date", 1, 1), ("date", 5, 1), ("date", 12, 25), ("date", 12, 26), ("easter", -2), ("easter", 1),
                     ("weekday", 5, 0, -1))
    assert describe_closures(rules) == "01-01, 05-01, 12-25, 12-26, Easter-2, Easter+1, last Mon of May"
    assert learned_closures(europe.as_unit("s")) == learned_closures(europe.as_unit("ns")) == rules  # any resolution
    # 2017-12-25 and -26 are Monday and Tuesday; 2018-01-01 a Monday.
    assert [d.date().isoformat() for d in future_index(europe, 6)] == [
        "2017-12-21", "2017-12-22", "2017-12-27", "2017-12-28", "2017-12-29", "2018-01-02"]
    ahead = future_index(europe, 150)
    # 2018: Good Friday 30 March, Easter Monday 2 April, 1 May a Tuesday, the last Monday of May the 28th.
    for holiday in ("2018-03-30", "2018-04-02", "2018-05-01", "2018-05-28"):
        assert pd.Timestamp(holiday) not in ahead, holiday
    assert pd.Timestamp("2018-05-21") in ahead and pd.Timestamp("2018-07-04") in ahead
    # A date missing in only some years (a data gap, a one-off closure) is not a holiday, nor is one
    # missing only once; other indexes learn nothing.
    gaps = days.difference(pd.DatetimeIndex(["2013-03-14", "2015-03-13", "2016-03-14", "2014-06-02"]))
    assert learned_closures(gaps) == ()
    assert future_index(gaps, 1)[0] == pd.Timestamp("2017-12-21")
    assert learned_closures(pd.date_range("2012-01-01", "2016-12-31", freq="D").delete(50)) == ()
    assert learned_closures(pd.RangeIndex(10)) == ()
    # The bundled NYSE file: the learner finds the NYSE's regular holidays of 2012-2016 (the rules
    # of NYSEHolidayCalendar, below), though that file keeps the NYSE calendar itself.
    # With the two weekend holidays of the span: 4 July 2015, a Saturday, closed Friday the 3rd;
    # Christmas 2016, a Sunday, Monday the 26th (New Year's Day 2012, a Sunday, is before the file).
    assert learned_closures(load_csv(GOOGLE_TRAIN).index) == (
        ("date", 1, 1), ("date", 7, 4), ("date", 12, 25), ("easter", -2), ("weekday", 1, 0, 3), ("weekday", 2, 0, 3),
        ("weekday", 5, 0, -1), ("weekday", 9, 0, 1), ("weekday", 11, 3, 4),
        ("observed", 7, 4, 5, -1), ("observed", 12, 25, 6, 1))
    assert list(future_index(load_csv(GOOGLE_TRAIN).index, 20)) == list(load_csv(GOOGLE_TEST).index)
    # Time-zone-aware stamps are judged by their dates, as for the NYSE's calendar.
    aware = europe.tz_localize("UTC")
    assert future_index(aware, 3)[2] == pd.Timestamp("2017-12-27", tz="UTC")


def _uk_closures(year: int) -> list[pd.Timestamp]:
    """New Year's Day, Christmas and Boxing Day as the UK observes them, written out here: one on a
    weekend moves to the next weekday not already a holiday."""
    taken = []
    for day in (pd.Timestamp(year, 1, 1), pd.Timestamp(year, 12, 25), pd.Timestamp(year, 12, 26)):
        while day.weekday() >= 5 or day in taken:
            day += pd.Timedelta(days=1)
        taken.append(day)
    return taken


def test_a_holiday_on_a_weekend_is_observed_where_the_history_observed_it():
    # A UK-style exchange, 2009 to 20 December 2021: substitute days after weekend holidays.
    # Christmas 2021 is a Saturday and Boxing Day a Sunday, so Monday 27 and Tuesday 28 are
    # closed; New Year's Day 2022 is a Saturday, so Monday 3 January is.
    days = pd.bdate_range("2009-01-02", "2021-12-20")
    closed = pd.DatetimeIndex([d for year in range(2009, 2022) for d in _uk_closures(year)])
    uk = days.difference(closed)
    rules = learned_closures(uk)
    assert rules[:3] == (("date", 1, 1), ("date", 12, 25), ("date", 12, 26))
    assert set(rules[3:]) == {
        ("observed", 1, 1, 5, 2), ("observed", 1, 1, 6, 1),  # Sat: Mon 3rd (2011); Sun: Mon 2nd (2012, 2017)
        ("observed", 12, 25, 5, 2), ("observed", 12, 25, 5, 3),  # Sat (2010): Mon 27th and Tue 28th
        ("observed", 12, 25, 6, 2),  # Sun (2011, 2016): Tue 27th (Monday the 26th is Boxing Day)
        ("observed", 12, 26, 5, 2),  # Sat (2015, 2020): Mon 28th
        ("observed", 12, 26, 6, 1), ("observed", 12, 26, 6, 2),  # Sun (2010): Mon 27th and Tue 28th
    }
    assert "12-25 on a Sat: the Mon after" in describe_closures(rules)
    assert "01-01 on a Sun: the Mon after" in describe_closures(rules)
    assert [d.date().isoformat() for d in future_index(uk, 10)] == [
        "2021-12-21", "2021-12-22", "2021-12-23", "2021-12-24", "2021-12-29", "2021-12-30", "2021-12-31",
        "2022-01-04", "2022-01-05", "2022-01-06"]
    # Without observed days in the history (the holidays simply skipped when on a weekend), none is
    # learned, and the future keeps Monday 27 December 2021 open.
    plain = days.difference(pd.DatetimeIndex(
        [pd.Timestamp(y, m, d) for y in range(2009, 2022) for m, d in ((1, 1), (12, 25), (12, 26))]))
    assert all(rule[0] == "date" for rule in learned_closures(plain))
    assert pd.Timestamp("2021-12-27") in future_index(plain, 10)


def test_exchange_calendar_is_the_nyse_s_and_matches_the_bundled_files():
    # The NYSE's published full-day holidays, hand-listed: 2016-2017, the Saturday New Year's Day of
    # 2022 (not moved to Friday 2021-12-31) and Juneteenth from 2022 on.
    listed = ["2016-01-01", "2016-01-18", "2016-02-15", "2016-03-25", "2016-05-30", "2016-07-04", "2016-09-05",
              "2016-11-24", "2016-12-26", "2017-01-02", "2017-01-16", "2017-02-20", "2017-04-14", "2017-05-29",
              "2017-07-04", "2017-09-04", "2017-11-23", "2017-12-25"]
    assert [d.date().isoformat() for d in NYSEHolidayCalendar().holidays("2016-01-01", "2017-12-31")] == listed
    closed = [d for d in NYSEHolidayCalendar().holidays("2021-06-01", "2022-06-30") if d.weekday() < 5]
    assert [d.date().isoformat() for d in closed] == [
        "2021-07-05", "2021-09-06", "2021-11-25", "2021-12-24", "2022-01-17", "2022-02-21", "2022-04-15",
        "2022-05-30", "2022-06-20"]
    train, test = load_csv(GOOGLE_TRAIN), load_csv(GOOGLE_TEST)
    assert skips_exchange_holidays(train.index) is True
    # The 20 dates after the training file are the real trading days of January 2017 (Jan 2 was closed).
    assert list(future_index(train.index, 20)) == list(test.index)
    # A weekday series that runs through the holidays keeps plain business days.
    plain = pd.bdate_range("2016-11-01", "2016-12-30")
    assert skips_exchange_holidays(plain) is False
    assert future_index(plain, 1)[0] == pd.Timestamp("2017-01-02")
    # A span with no holiday to judge by follows the hint (what the training rows showed).
    before_christmas = pd.bdate_range("2016-12-01", "2016-12-23")
    assert skips_exchange_holidays(before_christmas) is None
    assert future_index(before_christmas, 2)[0] == pd.Timestamp("2016-12-26")
    assert list(future_index(before_christmas, 2, exchange_holidays=True)) == [
        pd.Timestamp("2016-12-27"), pd.Timestamp("2016-12-28")]
    # The hint never overrides what the rows themselves show, and weekend or intraday rows are not judged.
    assert future_index(plain, 1, exchange_holidays=True)[0] == pd.Timestamp("2017-01-02")
    assert skips_exchange_holidays(pd.date_range("2016-12-01", periods=40, freq="D")) is None
    # Time-zone-aware stamps (a DataFrame built by hand) are judged by their dates.
    aware = train.index[-30:].tz_localize("UTC")
    assert skips_exchange_holidays(aware) is True
    assert future_index(aware, 1)[0] == pd.Timestamp("2017-01-03", tz="UTC")


def test_daily_rows_stamped_at_one_time_of_day_keep_their_calendar_and_time():
    # Closes stamped 16:00 were read as a 24-hour series: forecasts went on through weekends.
    from seqcast import load_csv
    from seqcast.datasets import GOOGLE_TRAIN
    from seqcast.features import future_index

    dates = load_csv(GOOGLE_TRAIN).index
    stamped = dates + pd.Timedelta(hours=16)
    expected = future_index(dates, 5) + pd.Timedelta(hours=16)
    assert list(future_index(stamped, 5)) == list(expected)
    assert str(expected[0]) == "2017-01-03 16:00:00"  # Monday 2017-01-02 was a NYSE holiday
    hourly = pd.date_range("2020-01-06 09:00", periods=30, freq="h")
    assert str(future_index(hourly, 1)[0]) == "2020-01-07 15:00:00"  # varying times: still hourly
