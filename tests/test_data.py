import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import seqcast.data
from seqcast.data import (
    PRICE_COLUMNS,
    Split,
    adjust_for_splits,
    canonical_column,
    detect_splits,
    load_csv,
    require_rows,
    resolve_column,
    validate_frame,
)
from seqcast.errors import DataError

DATASETS = Path(seqcast.data.__file__).parent / "datasets"
TRAIN = DATASETS / "Google_Stock_Price_Train.csv"
TEST = DATASETS / "Google_Stock_Price_Test.csv"

GOOD = """\
Date,Open,High,Low,Close,Volume
1/3/2012,10,11,9,10.5,"1,000"
1/4/2012,10.5,11.5,10,11,"2,000"
1/5/2012,11,12,10.5,11.5,"3,000"
"""


def write(tmp_path, text, name="prices.csv", *, newline="\n", bom=False):
    path = tmp_path / name
    data = text.replace("\n", newline).encode("utf-8")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


def raw_rows(path):
    """The file read with nothing but the csv module: the reference the loader must agree with."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def number(text):
    return float(text.replace(",", ""))


def ohlc(close, **extra):
    close = np.asarray(close, dtype=float)
    columns = {"Open": close * 0.99, "High": close * 1.01, "Low": close * 0.98, "Close": close, **extra}
    return pd.DataFrame(columns, index=pd.bdate_range("2020-01-01", periods=len(close), name="Date"))


def random_walk(n=500, seed=0):
    rng = np.random.default_rng(seed)
    return 100 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))


# The bundled data


def test_train_file_matches_the_raw_text():
    frame = load_csv(TRAIN)
    rows = raw_rows(TRAIN)
    assert rows[0]["Volume"] == "7,380,500"
    assert len(frame) == len(rows) == 1258
    assert frame.index[0] == pd.Timestamp("2012-01-03")
    assert frame.index[-1] == pd.Timestamp("2016-12-30")
    assert frame.index.name == "Date" and frame.index.is_monotonic_increasing
    assert list(frame.columns) == ["Open", "High", "Low", "Close", "Volume"]
    assert (frame.dtypes == "float64").all()
    assert frame["Volume"].iloc[0] == 7380500
    assert frame.loc["2014-03-26", "Close"] == 1128.87
    for column in frame.columns:
        np.testing.assert_array_equal(frame[column].to_numpy(), [number(r[column]) for r in rows])


def test_test_file_is_january_2017():
    frame = load_csv(TEST)
    assert len(frame) == 20
    assert frame.index[0] == pd.Timestamp("2017-01-03")
    assert frame.index[-1] == pd.Timestamp("2017-01-31")
    assert frame.attrs["splits"] == [] and frame.attrs["warnings"] == []


def test_loading_prints_nothing_and_records_metadata(capsys):
    frame = load_csv(TRAIN)
    assert capsys.readouterr() == ("", "")
    assert frame.attrs["source"] == str(TRAIN)
    assert frame.attrs["adjusted_splits"] is False
    assert frame.attrs["warnings"] == ["Close jumps ×0.49 on 2014-03-27, looks like a 2:1 split"]


# Splits


def test_train_has_exactly_the_unadjusted_close_split():
    [split] = load_csv(TRAIN).attrs["splits"]
    assert split.column == "Close"
    assert split.date == pd.Timestamp("2014-03-27")
    assert split.factor == 2
    assert split.ratio == pytest.approx(556.93 / 1128.87)


def test_the_earnings_jump_of_2015_07_17_is_not_a_split():
    frame = load_csv(TRAIN)
    assert frame.loc["2015-07-17", "Close"] / frame.loc["2015-07-16", "Close"] > 1.15
    assert all(s.date != pd.Timestamp("2015-07-17") for s in detect_splits(frame))


def test_adjusting_the_train_split_makes_close_continuous():
    raw = load_csv(TRAIN)
    frame = load_csv(TRAIN, adjust_splits=True)
    close = frame["Close"]
    assert (close / close.shift(1)).min() > 0.8
    assert close["2014-03-26"] == pytest.approx(564.435)
    after = frame.index >= "2014-03-27"
    pd.testing.assert_series_equal(close[after], raw["Close"][after])
    pd.testing.assert_frame_equal(frame.drop(columns="Close"), raw.drop(columns="Close"))
    assert frame.attrs["adjusted_splits"] is True
    assert "adjusted: Close rows before 2014-03-27 divided by 2" in frame.attrs["warnings"]
    assert raw.loc["2014-03-26", "Close"] == 1128.87, "adjusting must not touch its input"


def test_a_clean_random_walk_has_no_split():
    assert detect_splits(ohlc(random_walk())) == []


def test_a_three_for_one_split_in_close_is_found():
    close = random_walk(300, seed=1)
    frame = ohlc(close)
    frame.loc[frame.index[:150], "Close"] *= 3
    [split] = detect_splits(frame)
    assert (split.column, split.date, split.factor) == ("Close", frame.index[150], 3)
    assert split.describe().endswith("looks like a 3:1 split")
    adjusted = adjust_for_splits(frame)
    np.testing.assert_allclose(adjusted["Close"], close)


def test_a_reverse_split_has_a_factor_below_one():
    frame = ohlc(random_walk(100, seed=2))
    frame.loc[frame.index[60:], "Close"] *= 2
    [split] = detect_splits(frame)
    assert split.factor == 0.5
    assert split.describe().endswith("looks like a 1:2 reverse split")
    warnings = adjust_for_splits(frame, [split]).attrs["warnings"]
    assert warnings == [f"adjusted: Close rows before {frame.index[60]:%Y-%m-%d} multiplied by 2"]


def test_split_candidates_are_the_same_in_blocks_of_any_size():
    """detect_splits scans long series a block of rows at a time; the days it looks at must not
    depend on where the blocks end, including a jump that straddles a block boundary."""
    from seqcast.data import _split_candidates

    frame = ohlc(random_walk(200, seed=4))
    frame.loc[frame.index[:64], "Close"] *= 2  # the jump from row 63 to 64
    frame.loc[frame.index[150:], "Open"] /= 3  # a reverse jump from row 149 to 150
    frame.iloc[100:] *= 0.5  # a crash of every column
    prices = frame[["Open", "High", "Low", "Close"]]
    values = prices.to_numpy()
    ratios = values[1:] / values[:-1]
    expected = np.flatnonzero((np.maximum(ratios, 1 / ratios) >= 1.41).any(axis=1)).tolist()
    assert expected == [63, 99, 149]
    for rows in (1, 3, 63, 64, 65, 1000):
        assert _split_candidates(prices, rows=rows) == expected, rows
    found = detect_splits(frame)
    assert [(s.column, s.date) for s in found] == [("Close", frame.index[64]), ("Open", frame.index[150])]


def test_a_crash_of_every_column_is_not_a_split():
    frame = ohlc(random_walk(100, seed=3))
    frame.iloc[50:] *= 0.5
    assert detect_splits(frame) == []


def test_a_single_price_column_reports_any_split_like_jump():
    close = random_walk(100, seed=4)
    close[40:] /= 4
    frame = pd.DataFrame({"Close": close}, index=pd.bdate_range("2021-01-01", periods=100))
    assert [(s.column, s.factor) for s in detect_splits(frame)] == [("Close", 4)]


def test_unadjusted_ohlc_beside_an_adjusted_close_are_all_reported():
    close = random_walk(100, seed=5)
    frame = ohlc(close, **{"Adj Close": close})
    frame.loc[frame.index[:30], ["Open", "High", "Low", "Close"]] *= 2
    splits = detect_splits(frame)
    assert [s.column for s in splits] == ["Open", "High", "Low", "Close"]
    assert {s.date for s in splits} == {frame.index[30]}


@settings(max_examples=40, deadline=None, database=None)
@given(
    moves=st.lists(st.floats(-0.2, 0.2), min_size=30, max_size=60),
    factor=st.sampled_from([1.5, 2, 3, 4, 5, 7, 8, 10]),
    cut=st.integers(5, 25),
    split_day_move=st.floats(-0.03, 0.03),
)
def test_calm_series_have_no_split_until_one_is_inserted(moves, factor, cut, split_day_move):
    # The split day's own move compounds with the split ratio, so it is kept small enough for the
    # ratio to stay within the detector's tolerance of the true factor.
    moves[cut] = split_day_move
    close = 50 * np.exp(np.cumsum(np.log1p(moves)))
    frame = ohlc(close)
    assert detect_splits(frame) == []
    frame.loc[frame.index[:cut], "Close"] *= factor
    [split] = detect_splits(frame)
    assert (split.column, split.date, split.factor) == ("Close", frame.index[cut], factor)


# Layouts

EXPECTED = pd.DataFrame(
    {
        "Open": [10.0, 10.5, 11.0],
        "High": [11.0, 11.5, 12.0],
        "Low": [9.0, 10.0, 10.5],
        "Close": [10.5, 11.0, 11.5],
        "Adj Close": [10.4, 10.9, 11.4],
        "Volume": [1000.0, 2000.0, 3000.0],
    },
    index=pd.DatetimeIndex(["2012-01-03", "2012-01-04", "2012-01-05"], name="Date"),
)


def test_yahoo_layout_with_iso_dates(tmp_path):
    text = """\
Date,Open,High,Low,Close,Adj Close,Volume
2012-01-03,10,11,9,10.5,10.4,1000
2012-01-04,10.5,11.5,10,11,10.9,2000
2012-01-05,11,12,10.5,11.5,11.4,3000
"""
    pd.testing.assert_frame_equal(load_csv(write(tmp_path, text)), EXPECTED)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("bom", [False, True])
def test_lower_case_shuffled_headers_newest_first(tmp_path, newline, bom):
    text = """\
volume,adj_close,close,DATE,low,high,open
"3,000",11.4,11.5,1/5/2012,10.5,12,11
"2,000",10.9,11,1/4/2012,10,11.5,10.5
"1,000",10.4,10.5,1/3/2012,9,11,10
"""
    frame = load_csv(write(tmp_path, text, newline=newline, bom=bom))
    pd.testing.assert_frame_equal(frame[EXPECTED.columns], EXPECTED)


def test_iso_dates_with_times_and_utc_offsets_keep_the_local_time(tmp_path):
    text = """\
Datetime,Close
2021-03-12 00:00:00-05:00,10
2021-03-15 00:00:00-04:00,11
2021-03-15T16:00:00Z,12
"""
    frame = load_csv(write(tmp_path, text))
    assert list(frame.index) == [
        pd.Timestamp("2021-03-12"),
        pd.Timestamp("2021-03-15"),
        pd.Timestamp("2021-03-15 16:00"),
    ]


def test_semicolon_separated_with_a_trailing_delimiter(tmp_path):
    text = "Date;Close;\n2012-01-03;10;\n2012-01-04;11;\n"
    frame = load_csv(write(tmp_path, text))
    assert list(frame.columns) == ["Close"] and frame["Close"].tolist() == [10, 11]


def test_quoted_thousands_in_prices(tmp_path):
    text = 'Date,Close\n1/3/2012,"1,128.87"\n1/4/2012,556.93\n'
    assert load_csv(write(tmp_path, text))["Close"].tolist() == [1128.87, 556.93]


def test_extra_columns_numeric_become_float_and_text_is_kept(tmp_path):
    text = "Date,Close,Name,Dividends\n1/3/2012,10,GOOGL,\n1/4/2012,11,GOOGL,0.5\n"
    frame = load_csv(write(tmp_path, text))
    assert frame["Name"].tolist() == ["GOOGL", "GOOGL"]
    assert frame["Dividends"].dtype == "float64"
    assert np.isnan(frame["Dividends"].iloc[0])


def test_a_text_column_cannot_be_the_target(tmp_path):
    text = "Date,Close,Name\n1/3/2012,10,GOOGL\n1/4/2012,11,GOOGL\n"
    with pytest.raises(DataError, match='prices.csv row 2, column Name: "GOOGL" is not a number'):
        load_csv(write(tmp_path, text), target="name")


def test_validate_frame_takes_a_date_column_or_a_datetime_index():
    frame = EXPECTED.reset_index()
    frame["Date"] = frame["Date"].dt.strftime("%Y-%m-%d")
    untouched = frame.copy()
    pd.testing.assert_frame_equal(validate_frame(frame.iloc[::-1]), EXPECTED)
    pd.testing.assert_frame_equal(frame, untouched)
    pd.testing.assert_frame_equal(validate_frame(EXPECTED), EXPECTED)


def test_column_names():
    assert canonical_column(" open ") == "Open"
    for spelling in ("adj close", "Adj_Close", "adjclose", "ADJ. CLOSE"):
        assert canonical_column(spelling) == "Adj Close"
    assert canonical_column("volume") == "Volume"
    assert canonical_column(" Temperature ") == "Temperature"
    assert resolve_column(EXPECTED, "adj_close", source="x.csv") == "Adj Close"
    with pytest.raises(DataError, match="x.csv has no column 'Price'; columns: Open, High, Low, Close, Adj Close"):
        resolve_column(EXPECTED, "Price", source="x.csv")


def test_require_rows():
    require_rows(EXPECTED, 3, source="Google.csv", why="lookback 2")
    with pytest.raises(DataError) as error:
        require_rows(EXPECTED, 61, source="Google.csv", why="lookback 60")
    assert str(error.value) == (
        "Google.csv has 3 rows; lookback 60 needs at least 61: give more history or lower --lookback"
    )


# Errors: each names the file, the row as an editor numbers it (header = 1) and the column


def error_for(tmp_path, text, **options):
    with pytest.raises(DataError) as error:
        load_csv(write(tmp_path, text, name="Google.csv"), **options)
    return str(error.value)


def test_good_fixture_loads(tmp_path):
    assert len(load_csv(write(tmp_path, GOOD))) == 3


@pytest.mark.parametrize(
    "bad_line, expected",
    [
        ('1/4/2012,abc,11.5,10,11,"2,000"', ["row 3", "column Open", '"abc" is not a number; fix or remove that row']),
        ('1/4/2012,10.5,11.5,10,11,"2,0"', ["row 3", "column Volume", '"2,0" is not a number']),
        ('1/4/2012,10.5,,10,11,"2,000"', ["row 3", "column High is empty"]),
        ('1/4/2012,10.5,11.5,10,NaN,"2,000"', ["row 3", "column Close is empty"]),
        ('1/4/2012,10.5,11.5,10', ["row 3", "column Close is empty"]),
        ('1/4/2012,10.5,11.5,10,inf,"2,000"', ["row 3", "column Close", '"inf" is not a finite number']),
        ('1/4/2012,10.5,11.5,0,11,"2,000"', ["row 3", "column Low", "0 is not a positive price"]),
        ('1/4/2012,10.5,11.5,10,-11,"2,000"', ["row 3", "column Close", "-11 is not a positive price"]),
        ('1/4/2012,10.5,11.5,10,11,-5', ["row 3", "column Volume", "-5 is a negative volume"]),
        ('2012/13/45,10.5,11.5,10,11,"2,000"', ["row 3", "column Date", '"2012/13/45" is not a date']),
        (',10.5,11.5,10,11,"2,000"', ["row 3", "column Date is missing"]),
        ('1/5/2012,10.5,11.5,10,11,"2,000"', ["row 3 and row 4 both have date 2012-01-05"]),
        ('1/4/2012,10.5,11.5,10,11,"2,000",7', ["row 3 has 7 fields but the header has 6"]),
    ],
)
def test_each_bad_cell_is_located(tmp_path, bad_line, expected):
    lines = GOOD.splitlines()
    lines[2] = bad_line
    message = error_for(tmp_path, "\n".join(lines) + "\n")
    assert "Google.csv" in message
    for part in expected:
        assert part in message


def test_rows_are_numbered_in_file_order_not_date_order(tmp_path):
    text = "Date,Close\n1/5/2012,12\n1/4/2012,oops\n1/3/2012,10\n"
    assert 'Google.csv row 3, column Close: "oops"' in error_for(tmp_path, text)


def test_blank_lines_count_towards_the_row_number(tmp_path):
    text = "Date,Close\n1/3/2012,10\n\n1/5/2012,x\n"
    assert "Google.csv row 4, column Close" in error_for(tmp_path, text)


def test_the_first_problem_is_reported_with_a_count_of_the_rest(tmp_path):
    text = "Date,Open,Close\n1/3/2012,10,10\n1/4/2012,-1,x\n1/5/2012,,11\n"
    message = error_for(tmp_path, text)
    assert "Google.csv row 3, column Open: -1 is not a positive price" in message
    assert message.endswith("(2 more problems in the file)")


def test_a_negative_target_that_is_not_a_price_is_fine(tmp_path):
    text = "Date,Temperature\n1/3/2012,-4.5\n1/4/2012,0\n"
    assert load_csv(write(tmp_path, text), target="temperature")["Temperature"].tolist() == [-4.5, 0]


@pytest.mark.parametrize(
    "text, options, expected",
    [
        ("", {}, ["Google.csv is empty"]),
        ("\n\n", {}, ["Google.csv is empty"]),
        ("Date,Open,Close\n", {}, ["Google.csv has a header but no data rows"]),
        ("Day,Open\n1/3/2012,10\n", {}, ["Google.csv has no date column", "columns: Day, Open"]),
        (GOOD, {"target": "Price"}, ["Google.csv has no column 'Price'", "columns: Open, High, Low, Close, Volume"]),
        (GOOD, {"required": ["Open", "RSI"]}, ["Google.csv has no column 'RSI'"]),
        ("Date,Close,close\n1/3/2012,1,1\n", {}, ["'Close' and 'close'", "both mean 'Close'"]),
        ('Date,Close\n1/3/2012,10\n1/4/2012,"11\n1/5/2012,12\n', {}, ["Google.csv row 3", "quoting"]),
    ],
)
def test_unusable_files(tmp_path, text, options, expected):
    message = error_for(tmp_path, text, **options)
    for part in expected:
        assert part in message


def test_a_file_that_is_not_utf8_text(tmp_path):
    path = tmp_path / "Google.csv"
    path.write_bytes("Date,Close\n1/3/2012,10\xa0\n".encode("latin-1"))
    with pytest.raises(DataError, match="Google.csv is not UTF-8 text.*save it as a UTF-8 CSV"):
        load_csv(path)


def test_a_missing_file(tmp_path):
    with pytest.raises(DataError, match="nowhere.csv: no such file"):
        load_csv(tmp_path / "nowhere.csv")


def test_frame_problems_are_located_by_position():
    frame = EXPECTED.copy()
    frame.iloc[1, frame.columns.get_loc("Low")] = np.nan
    with pytest.raises(DataError, match="Tick.csv position 1, column Low is empty"):
        validate_frame(frame, source="Tick.csv")


def test_split_objects_are_plain_values():
    split = Split(column="Close", date=pd.Timestamp("2014-03-27"), ratio=0.4934, factor=2.0)
    assert split.describe() == "Close jumps ×0.49 on 2014-03-27, looks like a 2:1 split"
    assert split == Split("Close", pd.Timestamp("2014-03-27"), 0.4934, 2.0)
    assert PRICE_COLUMNS == ("Open", "High", "Low", "Close", "Adj Close")


@pytest.mark.parametrize("word", ["now", "today"])
def test_now_and_today_are_not_dates(tmp_path, word):
    """pandas parses "now" and "today" in any format as the moment of parsing, so a file with such a
    cell loaded with a different date on every run (found by the streamed-vs-whole-file fuzz)."""
    path = write(tmp_path, f"Date,Open\n2020-01-01,1\n2020-01-02,2\n{word},3\n")
    with pytest.raises(DataError, match=rf'row 4, column Date: "{word}" is not a date like the others'):
        load_csv(path)
    frame = pd.DataFrame({"Date": ["01/02/2020", word], "Open": [1.0, 2.0]})
    with pytest.raises(DataError, match=rf'position 1, column Date: "{word}" is not a date'):
        validate_frame(frame)


def test_an_integer_beyond_64_bits_is_reported_not_crashed_on(tmp_path):
    """Found by the streamed-loader fuzz: a column of whole numbers, one of 400 digits, came from
    pandas's C parser as Python ints, and pd.to_numeric(errors="coerce") raised OverflowError."""
    path = write(tmp_path, "Date,Open\n2020-01-01," + "9" * 400 + "\n2020-01-02,5\n")
    with pytest.raises(DataError, match=r'row 2, column Open: "9{400}" is not a finite number'):
        load_csv(path)
