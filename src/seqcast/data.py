"""Load price CSVs (or DataFrames) into one validated frame, and spot unadjusted stock splits.

Every problem the user can fix surfaces as a :class:`~seqcast.errors.DataError` naming the file,
the row as an editor shows it (header = row 1) and the column, so the fix never needs a debugger.
Nothing is printed: observations that are not errors go to ``frame.attrs["warnings"]``.
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pandas as pd

from .errors import DataError

PRICE_COLUMNS = ("Open", "High", "Low", "Close", "Adj Close")
VOLUME_COLUMN = "Volume"

_CANONICAL = {
    "open": "Open",
    "high": "High",
    "low": "Low",
    "close": "Close",
    "adjclose": "Adj Close",
    "adjustedclose": "Adj Close",
    "volume": "Volume",
}
# In priority order: a file with both "Date" and "Time" columns is indexed by "Date".
_DATE_NAMES = ("date", "datetime", "timestamp", "ds", "time")
_FIX_ROW = "; fix or remove that row"
_MISSING_TOKENS = frozenset(("", "nan", "na", "n/a", "#n/a", "null", "none", "-"))
# Only well-formed groupings count as thousands separators, so a decimal comma such as "1,5"
# is reported rather than silently read as 15.
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")
# Tried in order; the format that parses the most rows wins and the rest are reported as bad.
_DATE_FORMATS = ("%m/%d/%Y", "ISO8601", "%Y/%m/%d", "%d-%b-%Y", "%d-%b-%y")
_DATE_FORMAT_NAMES = {
    "%m/%d/%Y": "m/d/Y",
    "ISO8601": "ISO 8601",
    "%Y/%m/%d": "Y/m/d",
    "%d-%b-%Y": "d-Mon-Y",
    "%d-%b-%y": "d-Mon-y",
}
# A UTC offset makes a daily series straddling a DST change carry two offsets, which pandas
# refuses to mix; the local wall-clock date is the trading date, so the offset is dropped.
_UTC_OFFSET = re.compile(r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)\s*(?:Z|[+-]\d{2}:?\d{2})$")

# Split ratios seen in practice; 5:4 is left out because a 20% day is too ordinary to flag.
_SPLIT_FACTORS = tuple(
    float(f)
    for k in (Fraction(3, 2), 2, 3, 4, 5, 7, 8, 10, 15, 20)
    for f in (Fraction(k), 1 / Fraction(k))
)
_SPLIT_TOLERANCE = 0.06
_CALM_LIMIT = 1.25
_SPLIT_CANDIDATE = min(f for f in _SPLIT_FACTORS if f > 1) * (1 - _SPLIT_TOLERANCE)


@dataclass(frozen=True)
class Split:
    """A day-to-day jump in one column that looks like an unadjusted stock split."""

    column: str
    date: pd.Timestamp
    ratio: float
    factor: float

    def describe(self) -> str:
        shares = Fraction(self.factor).limit_denominator(100)
        kind = "split" if self.factor >= 1 else "reverse split"
        return (
            f"{self.column} jumps ×{self.ratio:.2f} on {self.date:%Y-%m-%d}, "
            f"looks like a {shares.numerator}:{shares.denominator} {kind}"
        )


def canonical_column(name: str) -> str:
    """The standard spelling of a price/volume column name; other names only lose outer spaces."""
    stripped = str(name).strip()
    return _CANONICAL.get(re.sub(r"[\s_.\-]", "", stripped.lower()), stripped)


def resolve_column(frame: pd.DataFrame, name: str, *, source: str) -> str:
    """The actual column of ``frame`` that ``name`` means, matched case-insensitively."""
    columns = [str(c) for c in frame.columns]
    for wanted in (str(name), canonical_column(name)):
        if wanted in columns:
            return wanted
    folded = canonical_column(name).casefold()
    for column in columns:
        if column.strip().casefold() == folded:
            return column
    raise DataError(
        f"{source} has no column {str(name).strip()!r}; columns: {_list(columns)}; "
        "pick one of those or add the column to the file"
    )


def require_rows(
    frame: pd.DataFrame,
    n: int,
    *,
    source: str,
    why: str,
    fix: str = "give more history or lower --lookback",
) -> None:
    """Raise unless ``frame`` has at least ``n`` rows; ``why`` names what needs them."""
    if len(frame) < n:
        raise DataError(f"{source} has {len(frame)} rows; {why} needs at least {n}: {fix}")


def load_csv(
    path: str | os.PathLike[str],
    *,
    target: str | None = None,
    required: Sequence[str] = (),
    adjust_splits: bool = False,
) -> pd.DataFrame:
    """Read and validate a price CSV; see :func:`validate_frame` for the frame returned."""
    source = os.fspath(path)
    raw, rows = _read_csv(source)
    return _validate(
        raw,
        source=source,
        where=lambda i: f"row {rows[i]}",
        target=target,
        required=required,
        adjust_splits=adjust_splits,
    )


def load_long_csv(
    path: str | os.PathLike[str],
    pick_id: Callable[[list[str]], str | None],
    *,
    target: str | None = None,
    adjust_splits: bool = False,
) -> tuple[str | None, dict[str, pd.DataFrame]]:
    """Read a long-format CSV (several series stacked, told apart by an id column) into one validated
    frame per id, each error naming the file's own row number.

    `pick_id` chooses the id column from the header; when it returns None the file has no id column
    and ``(None, {})`` comes back.
    """
    source = os.fspath(path)
    raw, rows = _read_csv(source)
    column = pick_id([str(c) for c in raw.columns])
    if column is None:
        return None, {}
    frames = {}
    for name, positions in raw.groupby(column, sort=True).indices.items():
        lines = [rows[i] for i in positions]
        frames[str(name)] = _validate(
            raw.iloc[positions].drop(columns=column).reset_index(drop=True),
            source=f"{source} ({column} {name})",
            where=lambda i, lines=lines: f"row {lines[i]}",
            target=target,
            required=(),
            adjust_splits=adjust_splits,
        )
    return column, frames


def validate_frame(
    frame: pd.DataFrame,
    *,
    source: str = "<frame>",
    target: str | None = None,
    required: Sequence[str] = (),
    adjust_splits: bool = False,
) -> pd.DataFrame:
    """Return a clean copy of ``frame``: float64 numeric columns, a sorted ``Date`` index.

    The dates come from a date-like column or, failing that, a DatetimeIndex. Problems are
    located by position (``frame.iloc[i]``), since a frame has no file rows.
    """
    if source == "<frame>":
        source = frame.attrs.get("source", source)
    return _validate(
        frame,
        source=source,
        where=lambda i: f"position {i}",
        target=target,
        required=required,
        adjust_splits=adjust_splits,
    )


def detect_splits(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> list[Split]:
    """Day-to-day jumps by a split ratio in some price columns while the others stay calm.

    A real crash moves every price column together, an unadjusted split only the unadjusted
    ones, so a jump is reported only when at least one other column held within ±25% that day
    (or when there is no other column to compare with).
    """
    source = frame.attrs.get("source", "<frame>")
    if columns is None:
        names = [c for c in frame.columns if c in PRICE_COLUMNS]
    else:
        names = [resolve_column(frame, c, source=source) for c in columns]
    if len(frame) < 2 or not names:
        return []
    values = frame[names].to_numpy(dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = values[1:] / values[:-1]
    valid = np.isfinite(ratios) & (ratios > 0)
    spread = np.where(valid, np.maximum(ratios, 1 / np.where(valid, ratios, 1)), 1.0)
    factors = np.array(_SPLIT_FACTORS)
    found = []
    for day in np.flatnonzero((spread >= _SPLIT_CANDIDATE).any(axis=1)):
        day_ratios = ratios[day]
        errors = np.abs(np.outer(day_ratios, factors) - 1)
        nearest = factors[errors.argmin(axis=1)]
        matched = valid[day] & (errors.min(axis=1) <= _SPLIT_TOLERANCE)
        for col in np.flatnonzero(matched):
            others = valid[day] & ~(matched & (nearest == nearest[col]))
            alone = valid[day].sum() == 1
            if alone or (others.any() and (spread[day][others] <= _CALM_LIMIT).all()):
                found.append(
                    Split(
                        column=names[col],
                        date=frame.index[day + 1],
                        ratio=float(day_ratios[col]),
                        factor=float(nearest[col]),
                    )
                )
    return found


def adjust_for_splits(frame: pd.DataFrame, splits: Sequence[Split] | None = None) -> pd.DataFrame:
    """A copy of ``frame`` with each split column's earlier rows divided by the split factor."""
    if splits is None:
        splits = detect_splits(frame)
    out = frame.copy()
    warnings = list(frame.attrs.get("warnings", []))
    source = frame.attrs.get("source", "<frame>")
    for split in splits:
        column = resolve_column(out, split.column, source=source)
        before = out.index < split.date
        out[column] = np.where(before, out[column] / split.factor, out[column])
        if split.factor >= 1:
            change = f"divided by {split.factor:g}"
        else:
            change = f"multiplied by {1 / split.factor:g}"
        warnings.append(f"adjusted: {column} rows before {split.date:%Y-%m-%d} {change}")
    out.attrs = {
        **frame.attrs,
        "warnings": warnings,
        "adjusted_splits": bool(frame.attrs.get("adjusted_splits", False) or splits),
    }
    return out


def _read_csv(source: str) -> tuple[pd.DataFrame, list[int] | np.ndarray]:
    """All cells as text, plus the file line each record starts on."""
    try:
        with open(source, encoding="utf-8-sig", newline="") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise DataError(f"{source}: no such file; check the path") from None
    except IsADirectoryError:
        raise DataError(f"{source} is a folder; give the path of a CSV file") from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{source} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); save it as a UTF-8 CSV"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read {source}: {exc.strerror}") from None
    if "\x00" in text:
        raise DataError(f"{source} contains binary data; export it as a CSV text file")
    if not text.strip():
        raise DataError(
            f"{source} is empty; expected a header such as Date,Open,High,Low,Close,Volume"
        )
    first_line = text.lstrip().partition("\n")[0]
    # Spreadsheets in decimal-comma locales export ';' or tab separated "CSV".
    delimiter = max((",", ";", "\t"), key=first_line.count)
    plain = _read_plain(source, text, first_line, delimiter)
    if plain is not None:
        return plain
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, skipinitialspace=True, strict=True)
    header: list[str] = []
    records: list[list[str]] = []
    rows: list[int] = []
    start = 1
    try:
        for record in reader:
            # skipinitialspace turns a blank or whitespace-only line into empty cells.
            if any(record):
                if not header:
                    header = [cell.strip() for cell in record]
                else:
                    if len(record) != len(header):
                        record = _fit_record(record, len(header), source, start)
                    records.append(record)
                    rows.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{source} row {start}: {exc}; fix the quoting on that row") from None
    if not records:
        raise DataError(f"{source} has a header but no data rows")
    table = np.array(records, dtype=object)
    columns = {}
    for i, name in enumerate(header):
        if not name:
            # A trailing delimiter on every line makes an empty column that carries nothing.
            if not any(cell.strip() for cell in table[:, i]):
                continue
            name = f"Unnamed: {i}"
        if name in columns:
            raise DataError(f"{source} has two columns named {name!r}; rename or remove one")
        columns[name] = table[:, i]
    return pd.DataFrame(columns, dtype=object), rows


# A line that is empty or only spaces: the csv module skips it, which shifts later row numbers.
_BLANK_LINE = re.compile(r"(?:^|\n)[ \t]*\r?\n")
# A lone carriage return (old Mac line ending): counted differently by pandas and the csv module.
_LONE_CR = re.compile(r"\r(?!\n)")


def _read_plain(source: str, text: str, first_line: str, delimiter: str) -> tuple[pd.DataFrame, np.ndarray] | None:
    """The fast path of :func:`_read_csv` for well-formed files, or None to take the careful one.

    Without quotes, blank lines or ragged rows, data record i is on file row i + 2, so pandas's C
    parser can read the file with no loss of row-accurate messages; it keeps numeric columns as
    float64 rather than one Python string per cell, which is what lets a million-row file load in
    memory close to the data's own size. Anything unusual returns None, and the csv module below
    then reads the file and reports its problems exactly.
    """
    header = [name.strip() for name in first_line.rstrip("\r").split(delimiter)]
    if (
        '"' in text
        or not all(header)
        or len(set(header)) != len(header)
        or _BLANK_LINE.search(text)
        or _LONE_CR.search(text)
    ):
        return None
    try:
        with warnings.catch_warnings():
            # Rows longer than the header come as a ParserWarning (or error): leave them to the csv module.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                source,
                sep=delimiter,
                encoding="utf-8-sig",
                skipinitialspace=True,
                index_col=False,
                header=0,
                na_filter=False,
                on_bad_lines="error",
                engine="c",
            )
    except (ValueError, pd.errors.ParserError, pd.errors.ParserWarning, OSError, UnicodeDecodeError):
        return None
    if not len(frame) or [str(c).strip() for c in frame.columns] != header:
        return None
    columns = {}
    for name, column in zip(header, frame.columns):
        values = frame[column]
        if pd.api.types.is_bool_dtype(values):
            return None
        if pd.api.types.is_numeric_dtype(values):
            floats = values.to_numpy(dtype="float64")
            # Cells that fail validation ("nan", "inf", a zero or negative price) are quoted as
            # written in the message, which only the careful path still has.
            if not np.isfinite(floats).all() or (floats < 0).any():
                return None
            if values.dtype.kind == "f" and (floats == 0).any():
                return None
            columns[name] = values
        else:
            # The same cells as the careful path: text with leading spaces already skipped.
            columns[name] = values.astype(object)
    return pd.DataFrame(columns), np.arange(2, len(frame) + 2)


def _fit_record(record: list[str], width: int, source: str, row: int) -> list[str]:
    if len(record) > width:
        if any(cell.strip() for cell in record[width:]):
            raise DataError(
                f"{source} row {row} has {len(record)} fields but the header has {width}; "
                "remove the extra fields or quote values that contain the delimiter"
            )
        return record[:width]
    # Short rows are padded so the missing cells are reported by column like any empty cell.
    return record + [""] * (width - len(record))


def _validate(
    raw: pd.DataFrame,
    *,
    source: str,
    where: Callable[[int], str],
    target: str | None,
    required: Sequence[str],
    adjust_splits: bool,
) -> pd.DataFrame:
    names = [canonical_column(c) for c in raw.columns]
    seen: dict[str, object] = {}
    for original, name in zip(raw.columns, names):
        if name in seen:
            raise DataError(
                f"{source} has columns {seen[name]!r} and {original!r}, which both mean {name!r};"
                " remove one"
            )
        seen[name] = original
    data = raw.set_axis(names, axis=1)
    date_column = next((c for key in _DATE_NAMES for c in names if c.casefold() == key), None)
    if date_column is not None:
        date_values = data.pop(date_column)
    elif isinstance(data.index, pd.DatetimeIndex) or str(data.index.name).casefold() in _DATE_NAMES:
        date_column = "Date"
        date_values = pd.Series(data.index, dtype=data.index.dtype)
    else:
        raise DataError(
            f"{source} has no date column (looked for Date, Datetime, Timestamp, ds, time); "
            f"columns: {_list(names)}; name the date column Date"
        )
    data = data.reset_index(drop=True)
    if not len(data):
        raise DataError(f"{source} has no rows")

    if isinstance(required, str):
        required = (required,)
    asked = [*required, *([target] if target else [])]
    must_be_numeric = {c for c in data.columns if c in PRICE_COLUMNS or c == VOLUME_COLUMN}
    must_be_numeric.update(resolve_column(data, c, source=source) for c in asked)

    problems = _Problems(source, where)
    dates = _parse_dates(date_values, date_column, problems)
    columns = {}
    for name in data.columns:
        values, missing, bad, cells = _to_float(data[name])
        if name not in must_be_numeric:
            columns[name] = data[name].to_numpy() if bad.any() else values
            continue
        columns[name] = values
        cell = (name, cells)
        problems.add(bad, cell, ': "{text}" is not a number' + _FIX_ROW)
        problems.add(missing, cell, " is empty; fill it in or remove that row")
        problems.add(np.isinf(values), cell, ': "{text}" is not a finite number' + _FIX_ROW)
        if name in PRICE_COLUMNS:
            problems.add(values <= 0, cell, ": {text} is not a positive price" + _FIX_ROW)
        elif name == VOLUME_COLUMN:
            problems.add(values < 0, cell, ": {text} is a negative volume" + _FIX_ROW)
    problems.raise_first()

    duplicated = np.flatnonzero(dates.duplicated(keep=False))
    if duplicated.size:
        first = int(duplicated[0])
        second = int(np.flatnonzero(dates == dates[first])[1])
        raise DataError(
            f"{source} {where(first)} and {where(second)} both have date "
            f"{_show_date(dates[first])}; remove one of them"
        )

    frame = pd.DataFrame(columns, index=dates).sort_index(kind="stable")
    frame.index.name = "Date"
    splits = detect_splits(frame)
    frame.attrs = {
        "source": source,
        "warnings": [s.describe() for s in splits],
        "splits": splits,
        "adjusted_splits": False,
    }
    if adjust_splits:
        frame = adjust_for_splits(frame, splits)
    return frame


class _Problems:
    """Keeps the first bad cell in file order, and a count of the rest, for one clear error."""

    def __init__(self, source: str, where: Callable[[int], str]):
        self._source = source
        self._where = where
        self._first: tuple[int, str] | None = None
        self._count = 0

    def add(self, mask: np.ndarray, cell: tuple[str, np.ndarray], template: str) -> None:
        """Record the cells flagged by ``mask``; ``template`` follows the column name, ``{text}``
        in it stands for the cell."""
        hits = np.flatnonzero(mask)
        if not hits.size:
            return
        self._count += hits.size
        position = int(hits[0])
        if self._first is None or position < self._first[0]:
            column, cells = cell
            message = template.format(text=_text(cells[position]))
            self._first = (position, f"column {column}{message}")

    def raise_first(self) -> None:
        if self._first is None:
            return
        position, message = self._first
        more = self._count - 1
        suffix = f" ({more} more problem{'s' if more > 1 else ''} in the file)" if more else ""
        raise DataError(f"{self._source} {self._where(position)}, {message}{suffix}")


def _to_float(values: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The column as float64, masks of its missing and non-numeric cells, and the cells."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        floats = values.to_numpy(dtype="float64", na_value=np.nan)
        return floats, np.isnan(floats), np.zeros(len(values), dtype=bool), values.to_numpy()
    cells = values.to_numpy(dtype=object)
    floats = np.asarray(pd.to_numeric(cells, errors="coerce"), dtype="float64")
    missing = np.zeros(len(cells), dtype=bool)
    # Plain numbers parse in C above; only the rest (thousands separators, NA markers, junk)
    # pay for per-cell Python.
    retry = np.flatnonzero(np.isnan(floats))
    texts = [_text(cell) for cell in cells[retry]]
    missing[retry] = [text.lower() in _MISSING_TOKENS for text in texts]
    cleaned = [text.replace(",", "") if _THOUSANDS.fullmatch(text) else text for text in texts]
    floats[retry] = pd.to_numeric(np.array(cleaned, dtype=object), errors="coerce")
    floats[missing] = np.nan
    return floats, missing, np.isnan(floats) & ~missing, cells


def _parse_dates(values: pd.Series, column: str, problems: _Problems) -> pd.DatetimeIndex:
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.DatetimeIndex(values)
        if parsed.tz is not None:
            parsed = parsed.tz_localize(None)
        cell = (column, values.to_numpy())
        problems.add(parsed.isna(), cell, " is missing; fill it in or remove that row")
        return parsed
    texts = np.array([_text(cell) for cell in values.to_numpy(dtype=object)], dtype=object)
    local = np.array(
        [_UTC_OFFSET.sub(r"\1", text) if ":" in text else text for text in texts], dtype=object
    )
    best, best_format = None, None
    for fmt in _DATE_FORMATS:
        parsed = pd.DatetimeIndex(pd.to_datetime(local, format=fmt, errors="coerce"))
        if best is None or parsed.notna().sum() > best.notna().sum():
            best, best_format = parsed, fmt
        if best.notna().all():
            break
    missing = texts == ""
    problems.add(missing, (column, texts), " is missing; fill it in or remove that row")
    # pandas parses year 0 and earlier, Python's datetime (used by every report) does not.
    problems.add(np.asarray(best.year < 1), (column, texts), ': "{text}" is before year 1' + _FIX_ROW)
    problems.add(
        best.isna() & ~missing,
        (column, texts),
        f': "{{text}}" is not a date like the others ({_DATE_FORMAT_NAMES[best_format]})'
        + _FIX_ROW,
    )
    return best


def _text(cell: object) -> str:
    if isinstance(cell, str):
        return cell.strip()
    return "" if pd.api.types.is_scalar(cell) and pd.isna(cell) else str(cell)


def _show_date(stamp: pd.Timestamp) -> str:
    return f"{stamp:%Y-%m-%d}" if stamp == stamp.normalize() else stamp.isoformat()


def _list(names: Sequence[object]) -> str:
    return ", ".join(str(n) for n in names) if len(names) else "(none)"
