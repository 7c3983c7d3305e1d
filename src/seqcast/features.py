"""Model inputs built from a validated frame: columns, causal indicators, target transforms, calendars.

The seed uses the target column alone; any other numeric column of the file may be added as an
input, and so may built-in indicators named like ``rsi14`` or ``sma20``. Every indicator value on
row t is computed from rows up to and including t only, and the model sees a row's features only
when predicting a *later* row (the window ends the day before), so nothing from the predicted day
leaks in unless the caller asks for it with ``same_day``.

Indicators are named ``<kind><k>`` (``sma20``, ``rsi14``) and apply to the target unless a base
column is given after ``@`` (``rsi14@Close``). Ranges (``tr``, ``atr14``, ``range``) need High, Low
and Close; ``volz20`` needs Volume; ``dow`` and ``month`` come from the dates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import pandas as pd
from pandas.tseries.holiday import (
    MO,
    AbstractHolidayCalendar,
    GoodFriday,
    Holiday,
    USLaborDay,
    USMemorialDay,
    USPresidentsDay,
    USThanksgivingDay,
    nearest_workday,
    sunday_to_monday,
)
from dateutil.easter import easter
from scipy.signal import lfilter

from .data import resolve_column
from .errors import ConfigError, DataError

TARGET_TRANSFORMS = ("level", "diff", "logret")
SAME_DAY_SUFFIX = " (same day)"

# kind -> (default k or None when k is required, smallest k, whether it applies to one base column)
_INDICATORS = {
    "logret": (None, None, True),
    "ret": (None, None, True),
    "sma": (None, 1, True),
    "ema": (None, 1, True),
    "rsi": (14, 1, True),
    "macd": (None, None, True),
    "macd_signal": (None, None, True),
    "bb_pctb": (20, 2, True),
    "bb_width": (20, 2, True),
    "tr": (None, None, False),
    "atr": (14, 1, False),
    "range": (None, None, False),
    "body": (None, None, False),
    "gap": (None, None, False),
    "volz": (20, 2, False),
    "dow": (None, None, False),
    "month": (None, None, False),
}
_NAME = re.compile(r"^(?P<kind>[a-z_]+?)(?P<k>\d+)?(?:@(?P<base>.+))?$")
# Exponential smoothers never forget entirely; after this many spans/periods the start of the
# series weighs less than e^-10 in the value, so a tail that long reproduces it in practice.
_MEMORY_SPANS = 10
_MACD_FAST, _MACD_SLOW, _MACD_SIGNAL = 12, 26, 9


@dataclass(frozen=True)
class Feature:
    """One model input: a column of the frame, or an indicator computed causally from columns."""

    name: str  # as shown and saved: "Close", "rsi14", "sma20@Close"
    kind: str  # "column" or an indicator kind
    k: int | None
    columns: tuple[str, ...]  # frame columns it reads

    @property
    def warmup(self) -> int:
        """Leading rows for which the feature is undefined (NaN)."""
        k = self.k or 0
        return {
            "column": 0, "logret": 1, "ret": 1, "sma": k - 1, "ema": k - 1, "rsi": k,
            "macd": _MACD_SLOW - 1, "macd_signal": _MACD_SLOW + _MACD_SIGNAL - 2,
            "bb_pctb": k - 1, "bb_width": k - 1, "tr": 0, "atr": k - 1, "range": 0, "body": 0, "gap": 1,
            "volz": k - 1, "dow": 0, "month": 0,
        }[self.kind]

    @property
    def memory(self) -> int:
        """Rows of history that fix the feature's value on a row (to within e^-10 for smoothers)."""
        if self.kind in ("ema", "rsi", "atr"):
            return self.warmup + _MEMORY_SPANS * (self.k or 1)
        if self.kind in ("macd", "macd_signal"):
            return self.warmup + _MEMORY_SPANS * (_MACD_SLOW + _MACD_SIGNAL)
        return self.warmup

    def uses_only(self, column: str) -> bool:
        """Whether the feature can be computed from `column` (and the dates) alone."""
        return set(self.columns) <= {column}

    def compute(self, frame: pd.DataFrame) -> np.ndarray:
        """The feature on every row of `frame` (float64, NaN during warm-up)."""
        if self.kind in ("dow", "month") and not isinstance(frame.index, pd.DatetimeIndex):
            raise ConfigError(f"feature {self.name} needs dates as the index, and this series has none")
        if self.kind == "logret":
            require_positive(frame, self.columns[0], self.name)
        return self.compute_values([frame[c].to_numpy(dtype=np.float64) for c in self.columns], frame.index)

    def compute_values(self, cols: Sequence[np.ndarray], dates) -> np.ndarray:
        """The feature from its columns' values, time along axis 0.

        Each array in `cols` is (T,) for one series with `dates` its DatetimeIndex, or (T, N) for N
        series of one length at once with `dates` a list of their N indexes: every operation works
        along axis 0, so column j is the feature of series j alone (recursive forecasts compute
        all their origins this way). Unlike :meth:`compute`, no input checks (positivity for
        logret, a date index for dow/month).
        """
        kind, k = self.kind, self.k
        if kind == "column":
            return cols[0].copy()
        if kind in ("dow", "month"):
            of = (lambda d: d.day_of_week) if kind == "dow" else (lambda d: d.month)
            if isinstance(dates, pd.Index):
                return np.asarray(of(dates), dtype=np.float64)
            return np.stack([np.asarray(of(d), dtype=np.float64) for d in dates], axis=1)
        if kind == "body":
            return cols[1] - cols[0]
        if kind == "gap":
            return cols[0] - _previous(cols[1])
        if kind in ("tr", "atr", "range"):
            high, low, close = cols
            if kind == "range":
                return high - low
            tr = true_range(high, low, close)
            return tr if kind == "tr" else wilder_average(tr, k, first=0)
        x = cols[0]
        if kind in ("logret", "ret"):
            out = np.full(x.shape, np.nan)
            out[1:] = x[1:] / x[:-1] - 1.0 if kind == "ret" else np.log(x[1:] / x[:-1])
            return out
        series = pd.Series(x) if x.ndim == 1 else pd.DataFrame(x)
        if kind == "sma":
            return series.rolling(k, min_periods=k).mean().to_numpy()
        if kind == "ema":
            return ema(series, k).to_numpy()
        if kind == "rsi":
            return rsi(x, k)
        if kind in ("macd", "macd_signal"):
            line = ema(series, _MACD_FAST) - ema(series, _MACD_SLOW)
            return (line if kind == "macd" else ema(line, _MACD_SIGNAL)).to_numpy()
        if kind in ("bb_pctb", "bb_width", "volz"):
            mean = series.rolling(k, min_periods=k).mean().to_numpy()
            std = series.rolling(k, min_periods=k).std(ddof=0).to_numpy()
            flat = std <= 1e-12 * np.maximum(np.abs(mean), 1.0)
            safe = np.where(flat, 1.0, std)
            if kind == "volz":
                return np.where(flat, 0.0, (x - mean) / safe)
            if kind == "bb_pctb":
                # %b = (x - lower) / (upper - lower) with bands at mean ± 2 std; a flat window sits mid-band.
                return np.where(flat, 0.5, (x - (mean - 2 * safe)) / (4 * safe))
            return 4 * std / mean
        raise ConfigError(f"unknown feature kind {kind!r}")


def _previous(x: np.ndarray) -> np.ndarray:
    """x moved one row down along axis 0 (the first row NaN)."""
    return np.concatenate([np.full((1, *x.shape[1:]), np.nan), x[:-1]])


def ema(series, span: int):
    """Exponential moving average with alpha = 2/(span+1), undefined for the first span-1 values.

    `series` is a Series, or a DataFrame of series with the same leading NaN rows (one EMA per column).
    """
    first = series.first_valid_index()
    out = series * np.nan
    if first is None:
        return out
    tail = series.loc[first:]
    out.loc[first:] = tail.ewm(span=span, adjust=False, min_periods=span).mean()
    return out


def wilder_average(values: np.ndarray, k: int, *, first: int) -> np.ndarray:
    """Wilder's smoothing from `values[first:]`: the mean of the first k, then avg = avg + (v - avg)/k.

    Along axis 0 (one series per column for a 2-D array). The recursion is a first-order IIR
    filter, so scipy's lfilter runs it without a Python loop.
    """
    out = np.full(values.shape, np.nan)
    start = first + k - 1
    if start >= len(values):
        return out
    seed = np.mean(values[first : start + 1], axis=0)
    rest = values[start + 1 :]
    zi = np.reshape(seed * (1.0 - 1.0 / k), (1, *np.shape(seed)))
    smoothed, _ = lfilter([1.0 / k], [1.0, -(1.0 - 1.0 / k)], rest, axis=0, zi=zi)
    out[start] = seed
    out[start + 1 :] = smoothed
    return out


def rsi(x: np.ndarray, k: int) -> np.ndarray:
    """Wilder's RSI(k) in 0..100: first defined on row k (it needs k changes); along axis 0."""
    change = np.diff(np.asarray(x, dtype=np.float64), axis=0, prepend=np.nan)
    gain, loss = np.clip(change, 0, None), np.clip(-change, 0, None)
    avg_gain, avg_loss = wilder_average(gain, k, first=1), wilder_average(loss, k, first=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = 100.0 - 100.0 / (1.0 + avg_gain / avg_loss)
    # No losses at all means RSI 100 (and no movement at all the neutral 50).
    value = np.where((avg_loss == 0) & (avg_gain > 0), 100.0, value)
    return np.where((avg_loss == 0) & (avg_gain == 0), 50.0, value)


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """max(high - low, |high - previous close|, |low - previous close|); the first row has no previous close."""
    prev = _previous(close)
    spans = np.stack([high - low, np.abs(high - prev), np.abs(low - prev)])
    return np.nanmax(spans, axis=0)


def require_positive(frame: pd.DataFrame, column: str, why: str) -> None:
    values = frame[column].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~(values > 0))
    if bad.size:
        source = frame.attrs.get("source", "<frame>")
        raise DataError(
            f"{source}: {why} needs positive values but {column} is {values[bad[0]]} on {frame.index[bad[0]]}: "
            "use --target-transform diff or a feature without logarithms"
        )


def parse_feature_list(features) -> list[str] | None:
    """Accept None, a comma-separated string or a sequence of names."""
    if features is None:
        return None
    if isinstance(features, str):
        names = [part.strip() for part in features.split(",")]
    else:
        try:
            names = [str(part).strip() for part in features]
        except TypeError:  # not iterable: features=3, say
            raise ConfigError(
                f"features must be a comma-separated string such as 'Open,Close,rsi14' or a list of names, got {features!r}"
            ) from None
    names = [n for n in names if n]
    if not names:
        raise ConfigError("features is empty: give column names such as 'Open,Close' or leave it unset")
    return names


def warmup_rows(features: Sequence[Feature]) -> int:
    """Leading rows a model with these inputs cannot use: the longest indicator warm-up."""
    return max(f.warmup for f in features)


def parse_features(frame: pd.DataFrame, target: str, features) -> list[Feature]:
    """Resolve each name to a column of `frame` (case-insensitively) or else to a built-in indicator."""
    source = frame.attrs.get("source", "<frame>")
    names = parse_feature_list(features) or [target]
    parsed = [_parse_one(frame, target, name, source) for name in names]
    seen = [f.name for f in parsed]
    duplicated = sorted({n for n in seen if seen.count(n) > 1})
    if duplicated:
        raise ConfigError(f"features name {', '.join(duplicated)} more than once")
    return parsed


def _parse_one(frame: pd.DataFrame, target: str, name: str, source: str) -> Feature:
    try:
        column = resolve_column(frame, name, source=source)
    except DataError:
        column = None
    if column is not None:
        return Feature(name=column, kind="column", k=None, columns=(column,))
    match = _NAME.match(name.strip().lower().replace("-", "_"))
    kind = match["kind"] if match else None
    if kind not in _INDICATORS:
        raise ConfigError(
            f"feature {name!r} is neither a column of {source} ({', '.join(map(str, frame.columns))}) nor an "
            f"indicator ({', '.join(_INDICATORS)}, e.g. rsi14, sma20, logret, rsi14@Close)"
        )
    default_k, min_k, single = _INDICATORS[kind]
    raw_k = match["k"]
    if min_k is None and raw_k is not None:
        raise ConfigError(f"feature {name!r}: {kind} takes no window length; write {kind}")
    k = int(raw_k) if raw_k is not None else default_k
    if min_k is not None and k is None:
        raise ConfigError(f"feature {name!r} needs a window length, e.g. {kind}20")
    if min_k is not None and k < min_k:
        raise ConfigError(f"feature {name!r}: the window length must be at least {min_k}")
    suffix = "" if k is None else str(k)
    base_text = name.split("@", 1)[1].strip() if "@" in name else None
    if not single and base_text is not None:
        raise ConfigError(f"feature {name!r}: {kind} takes no @column")
    if single:
        base = resolve_column(frame, base_text or target, source=source)
        shown = f"{kind}{suffix}" + ("" if base == target else f"@{base}")
        return Feature(name=shown, kind=kind, k=k, columns=(base,))
    if kind in ("dow", "month"):
        columns: tuple[str, ...] = ()
    elif kind == "volz":
        columns = (resolve_column(frame, "Volume", source=source),)
    elif kind in ("body", "gap"):
        columns = tuple(resolve_column(frame, c, source=source) for c in ("Open", "Close"))
    else:
        columns = tuple(resolve_column(frame, c, source=source) for c in ("High", "Low", "Close"))
    return Feature(name=f"{kind}{suffix}", kind=kind, k=k, columns=columns)


def parse_same_day(frame: pd.DataFrame, target: str, same_day) -> list[str]:
    """Columns whose value on the predicted day itself is an input (only when asked for)."""
    source = frame.attrs.get("source", "<frame>")
    names = parse_feature_list(same_day) if same_day not in (None, "") else None
    columns = [resolve_column(frame, n, source=source) for n in names or []]
    if target in columns:
        raise ConfigError(f"same_day cannot include the target {target}: its same-day value is the answer")
    return list(dict.fromkeys(columns))


def feature_matrix(frame: pd.DataFrame, features: Sequence[Feature], same_day: Sequence[str] = ()) -> pd.DataFrame:
    """One column per feature, plus each same-day column moved one row up.

    The model predicts row t from feature rows t-lookback..t-1; a same-day column's row t-1 holds
    its value on row t, which is how "today's Close" reaches a prediction of today's Open. Its last
    row is NaN (the next day's value is unknown).
    """
    data = {f.name: f.compute(frame) for f in features}
    for column in same_day:
        data[column + SAME_DAY_SUFFIX] = frame[column].shift(-1).to_numpy(dtype=np.float64)
    return pd.DataFrame(data, index=frame.index)


# ---- target transforms -------------------------------------------------------------------------


def target_matrix(levels: np.ndarray, kind: str, horizon: int) -> np.ndarray:
    """(T, horizon) training targets: row t, column h-1 is level[t+h-1] as `kind` relative to level[t-1].

    "level" is the level itself, "diff" the change from the last known value level[t-1], "logret"
    the log of their ratio. Cells that need rows outside the series are NaN.
    """
    levels = np.asarray(levels, dtype=np.float64)
    n = len(levels)
    out = np.full((n, horizon), np.nan)
    for h in range(horizon):
        ahead = np.full(n, np.nan)
        ahead[: n - h] = levels[h:]
        anchor = np.r_[np.nan, levels[:-1]]
        out[:, h] = transform_target(ahead, anchor, kind)
    return out


def transform_target(values: np.ndarray, anchor: np.ndarray, kind: str) -> np.ndarray:
    """`values` as the model learns them, relative to the last known level `anchor`."""
    if kind == "level":
        return np.asarray(values, dtype=np.float64).copy()
    if kind == "diff":
        return values - anchor
    if kind == "logret":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(values / anchor)
    raise ConfigError(f"target_transform must be one of {', '.join(TARGET_TRANSFORMS)}, got {kind!r}")


def inverse_target(learned: np.ndarray, anchor: np.ndarray, kind: str) -> np.ndarray:
    """Levels from the learned values and the last known level (broadcast over horizon columns)."""
    learned = np.asarray(learned, dtype=np.float64)
    anchor = np.asarray(anchor, dtype=np.float64)
    if learned.ndim == 2 and anchor.ndim == 1:
        anchor = anchor[:, None]
    if kind == "level":
        return learned.copy()
    if kind == "diff":
        return anchor + learned
    if kind == "logret":
        return anchor * np.exp(learned)
    raise ConfigError(f"target_transform must be one of {', '.join(TARGET_TRANSFORMS)}, got {kind!r}")


# ---- calendars ---------------------------------------------------------------------------------


class NYSEHolidayCalendar(AbstractHolidayCalendar):
    """The New York Stock Exchange's regular full-day holidays (not its one-off closures, such as
    2012-10-29/30 or 2018-12-05, which no rule predicts). Built from pandas' holiday rules because
    pandas ships only the US federal calendar, which differs (Good Friday is an exchange holiday,
    Columbus and Veterans Day are not, and a Saturday New Year's Day is not moved to Friday)."""

    rules = [
        Holiday("New Year's Day", month=1, day=1, observance=sunday_to_monday),
        Holiday("Martin Luther King Jr. Day", month=1, day=1, offset=pd.DateOffset(weekday=MO(3)),
                start_date="1998-01-01"),
        USPresidentsDay,
        GoodFriday,
        USMemorialDay,
        Holiday("Juneteenth", month=6, day=19, start_date="2022-01-01", observance=nearest_workday),
        Holiday("Independence Day", month=7, day=4, observance=nearest_workday),
        USLaborDay,
        USThanksgivingDay,
        Holiday("Christmas Day", month=12, day=25, observance=nearest_workday),
    ]


@lru_cache(maxsize=1)
def nyse_holidays() -> pd.DatetimeIndex:
    """Every NYSE holiday weekday from 1970 to 2200, computed once (the rules take ~0.1 s)."""
    holidays = NYSEHolidayCalendar().holidays()
    return holidays[holidays.day_of_week < 5]


@lru_cache(maxsize=1)
def nyse_business_day() -> pd.offsets.CustomBusinessDay:
    """Weekdays without the NYSE holidays, built once (building it takes ~0.04 s)."""
    return pd.offsets.CustomBusinessDay(holidays=nyse_holidays())


def _one_time_of_day(index: pd.DatetimeIndex) -> bool:
    """Whether every stamp has the same time of day (midnight for plain dates, 16:00 for closes
    stamped so): a daily series, whose calendar is its dates'."""
    time_of_day = index - index.normalize()
    return bool(len(index)) and bool((time_of_day == time_of_day[0]).all())


def _weekday_dates(index: pd.Index) -> pd.DatetimeIndex | None:
    """``index`` as naive dates (the exchange's, whatever zone the stamps carry) where it is a
    weekday-only daily date index of at least two rows, all at one time of day, else None."""
    if not isinstance(index, pd.DatetimeIndex) or len(index) < 2:
        return None
    if (index.day_of_week >= 5).any() or not _one_time_of_day(index):
        return None
    index = index.normalize()
    return index.tz_localize(None) if index.tz is not None else index


def skips_exchange_holidays(index: pd.Index) -> bool | None:
    """Whether a weekday-only daily series leaves out the NYSE holidays within its span: True when at
    least 90 % of them are missing from it, False when fewer are, None when its span holds none
    (nothing to judge by) or it is not a weekday-only daily date index."""
    index = _weekday_dates(index)
    if index is None:
        return None
    all_holidays = nyse_holidays()
    holidays = all_holidays[(all_holidays >= index.min()) & (all_holidays <= index.max())]
    if len(holidays) == 0:
        return None
    missing = (~holidays.isin(index)).mean()
    return bool(missing >= 0.9)


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# Where a fixed-date holiday on a Saturday (5) or Sunday (6) may be observed instead, in days from
# it: the Friday before or the Monday or Tuesday after (the US moves a Saturday holiday to the
# Friday, a Sunday one to the Monday; the UK gives the next free weekdays, so Christmas on a
# Saturday closes Monday 27th and Boxing Day on the Sunday Tuesday 28th).
_OBSERVED_OFFSETS = {5: (-1, 2, 3), 6: (-2, 1, 2)}
_ORDINALS = {1: "1st", 2: "2nd", 3: "3rd", 4: "4th", -1: "last"}


def _rule_date(rule: tuple, year: int) -> pd.Timestamp | None:
    """The date of a closure rule (see :func:`learned_closures`) in ``year`` (None: none that year)."""
    kind = rule[0]
    if kind == "date":
        _, month, day = rule
        if month == 2 and day == 29 and not pd.Timestamp(year, 3, 1).is_leap_year:
            return None
        return pd.Timestamp(year, month, day)
    if kind == "observed":
        _, month, day, weekday, offset = rule
        date = _rule_date(("date", month, day), year)
        return None if date is None or date.weekday() != weekday else date + pd.Timedelta(days=offset)
    if kind == "easter":
        return pd.Timestamp(easter(year)) + pd.Timedelta(days=rule[1])
    _, month, weekday, n = rule
    first = pd.Timestamp(year, month, 1)
    if n > 0:
        return first + pd.Timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    last = first + pd.offsets.MonthEnd(0)
    return last - pd.Timedelta(days=(last.weekday() - weekday) % 7)


def _rule_candidates(day: pd.Timestamp) -> list[tuple]:
    """The closure rules a missing weekday could follow: its fixed date, its distance from Easter
    (within -7..+63 days), and its place among its month's weekdays (n-th, and last)."""
    rules = [("date", day.month, day.day), ("weekday", day.month, day.weekday(), (day.day - 1) // 7 + 1)]
    if (day + pd.Timedelta(days=7)).month != day.month:
        rules.append(("weekday", day.month, day.weekday(), -1))
    offset = (day - pd.Timestamp(easter(day.year))).days
    if -7 <= offset <= 63:
        rules.append(("easter", offset))
    return rules


def learned_closures(index: pd.Index) -> tuple[tuple, ...]:
    """The holidays a weekday-only daily series keeps, learned from the rows themselves: each rule
    whose dates the series leaves out in every year of its span in which they fall on a weekday,
    at least twice. A rule is a fixed date ``("date", month, day)`` (Christmas, New Year's Day, a
    national day such as 1 May), a distance from Easter Sunday ``("easter", days)`` (Good Friday
    -2, Easter Monday +1, Ascension +39, Whit Monday +50) or a weekday of a month
    ``("weekday", month, weekday, n)``, n-th (1-4) or last (-1) (a Monday bank holiday, Memorial
    Day). A rule whose dates the fixed dates already explain is left out. A fixed date that falls
    on a weekend may be observed on a weekday instead, ``("observed", month, day, weekday,
    offset)``: the day ``offset`` days from it (the Friday before, the Monday or Tuesday after)
    when it falls on ``weekday`` (5 Saturday, 6 Sunday), learned where that day is missing in every
    year of the span the date fell on that weekday, at least once (the NYSE: 4 July on a Saturday
    closes the Friday before; the UK: Christmas on a Saturday closes the Monday after). For series
    that do not keep the NYSE's holidays (:func:`infer_calendar`). A date missing in only some of
    the years (a data gap, a one-off closure) does not count. Empty where there is nothing to
    learn, or the index is not weekday-only daily dates."""
    index = _weekday_dates(index)
    if index is None:
        return ()
    # A recursive forecast asks once per step near the end of the same history: ~0.1 s each for 30
    # years of weekdays with gaps, so the answer is kept per distinct index.
    return _learned_closures(index.asi8.tobytes(), index.unit)


@lru_cache(maxsize=8)
def _learned_closures(stamps: bytes, unit: str) -> tuple[tuple, ...]:
    """:func:`learned_closures` of the naive weekday-only dates whose int64 counts of ``unit`` are
    ``stamps``."""
    index = pd.DatetimeIndex(np.frombuffer(stamps, dtype=np.int64).astype(f"datetime64[{unit}]"))
    first, last = index.min(), index.max()
    missing = pd.bdate_range(first, last).difference(index)
    if not len(missing):
        return ()
    absent = set(missing)
    candidates = sorted({rule for day in missing for rule in _rule_candidates(day)}, key=lambda r: (r[0] != "date", r))
    years = range(first.year, last.year + 1)
    learned, explained, closed = [], set(), set()
    for rule in candidates:
        dates = [d for d in (_rule_date(rule, y) for y in years) if d is not None and first <= d <= last and d.weekday() < 5]
        if len(dates) >= 2 and all(d in absent for d in dates) and not set(dates) <= explained:
            learned.append(rule)
            closed.update(dates)
            if rule[0] == "date":
                explained.update(dates)
    # Where a learned fixed date falls on a weekend, the weekday it is observed on instead: an offset
    # (_OBSERVED_OFFSETS) whose day is missing in every year of the span the date fell on that
    # weekend day, at least once, and is not just another learned holiday in all of them.
    observed = []
    for rule in [r for r in learned if r[0] == "date"]:
        for weekday, offsets in _OBSERVED_OFFSETS.items():
            for offset in offsets:
                shift = ("observed", rule[1], rule[2], weekday, offset)
                dates = [d for d in (_rule_date(shift, y) for y in years) if d is not None and first <= d <= last]
                if dates and all(d in absent for d in dates) and not set(dates) <= closed:
                    observed.append(shift)
    return tuple(learned + observed)


def describe_closures(rules: Sequence[tuple]) -> str:
    """:func:`learned_closures`'s rules in words: 01-01, Easter-2, last Mon of May, ..."""
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    words = []
    for rule in rules:
        if rule[0] == "date":
            words.append(f"{rule[1]:02d}-{rule[2]:02d}")
        elif rule[0] == "easter":
            words.append(f"Easter{rule[1]:+d}")
        elif rule[0] == "observed":
            _, month, day, weekday, offset = rule
            shifted = _WEEKDAYS[(weekday + offset) % 7]
            words.append(f"{month:02d}-{day:02d} on a {_WEEKDAYS[weekday]}: the {shifted} {'before' if offset < 0 else 'after'}")
        else:
            words.append(f"{_ORDINALS[rule[3]]} {_WEEKDAYS[rule[2]]} of {months[rule[1] - 1]}")
    return ", ".join(words)


@lru_cache(maxsize=32)
def closures_business_day(rules: tuple[tuple, ...], first_year: int) -> pd.offsets.CustomBusinessDay:
    """Weekdays without the dates of ``rules`` (:func:`learned_closures`) in any year from
    ``first_year`` for 200 years."""
    holidays = [d for year in range(first_year, first_year + 200) for rule in rules
                if (d := _rule_date(rule, year)) is not None]
    return pd.offsets.CustomBusinessDay(holidays=holidays)


def future_index(index: pd.Index, n: int, exchange_holidays: bool | None = None) -> pd.Index:
    """The `n` dates after the last one, on the series' own calendar.

    Weekday-only daily history (stock files) continues on business days, skipping the NYSE holidays
    when the history itself skips them (:func:`skips_exchange_holidays`; when its span holds no
    holiday to judge by, ``exchange_holidays`` decides, e.g. what the training rows showed), else
    skipping the holidays it leaves out every year (:func:`learned_closures`: an exchange
    elsewhere, closed at Christmas, at Easter and on its national days). A
    series with weekend rows continues every day, and anything else uses pandas' inferred frequency
    or, failing that, the median spacing (calendar months when the spacing is about a month). A
    non-date index continues counting.
    """
    if not isinstance(index, pd.DatetimeIndex):
        last = index[-1] if len(index) else -1
        step = int(np.median(np.diff(np.asarray(index, dtype=np.int64)))) if len(index) > 1 else 1
        return pd.Index([last + step * (i + 1) for i in range(n)])
    if len(index) < 2:
        raise DataError("one dated row is not enough to tell the series' calendar: give at least two rows")
    calendar = infer_calendar(index, exchange_holidays)
    return pd.DatetimeIndex(pd.date_range(index[-1], periods=n + 1, freq=calendar)[1:], name=index.name)


def infer_calendar(index: pd.DatetimeIndex, exchange_holidays: bool | None = None):
    """A pandas offset describing how `index` advances (see :func:`future_index`)."""
    if _one_time_of_day(index):
        # Its dates' calendar (date_range keeps the time of day): read as timestamps, closes stamped
        # 16:00 went on every 24 hours, weekends included.
        index = index.normalize()
    recent = index[-min(len(index), 60) :]
    spacing = pd.Series(recent[1:] - recent[:-1])
    median = spacing.median()
    if median <= pd.Timedelta(days=1) and (recent.normalize() == recent).all():
        weekend = (recent.day_of_week >= 5).any()
        if weekend:
            return pd.offsets.Day()
        skips = skips_exchange_holidays(index)
        if skips or (skips is None and exchange_holidays):
            return nyse_business_day()
        closures = learned_closures(index)
        if closures:
            return closures_business_day(closures, int(index.min().year))
        return pd.offsets.BDay()
    inferred = pd.DatetimeIndex(recent.to_numpy(), freq="infer").freq if len(recent) >= 3 else None
    if inferred is not None:
        return inferred
    if pd.Timedelta(days=27) <= median <= pd.Timedelta(days=32):
        if recent.is_month_end.all():
            return pd.offsets.MonthEnd()
        if (recent.day == 1).all():
            return pd.offsets.MonthBegin()
        return pd.DateOffset(months=1)
    if (recent.normalize() == recent).all() and median.days >= 1:
        return pd.DateOffset(days=int(round(median / pd.Timedelta(days=1))))
    return pd.tseries.frequencies.to_offset(median)
