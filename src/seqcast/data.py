"""Load price CSVs (or DataFrames) into one validated frame, and spot unadjusted stock splits.

Every problem the user can fix surfaces as a :class:`~seqcast.errors.DataError` naming the file,
the row as an editor shows it (header = row 1) and the column, so the fix never needs a debugger.
Nothing is printed: observations that are not errors go to ``frame.attrs["warnings"]``.
"""

from __future__ import annotations

import codecs
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
    if not columns:  # a file of dates alone: nothing to pick from
        raise DataError(f"{source} has no column besides its dates: add a {str(name).strip()!r} column")
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
        owned=True,
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
    blank = raw[column].isna().to_numpy() | (raw[column].astype(str).str.strip() == "").to_numpy()
    if blank.any():  # else a series named '' (or the rows dropped) with no row named
        raise DataError(
            f"{source} row {rows[int(np.argmax(blank))]}, column {column}: the series id is empty: give every row "
            "the id of its series"
        )
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
            owned=True,
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
    prices = frame[names]
    factors = np.array(_SPLIT_FACTORS)
    found = []
    for day in _split_candidates(prices):
        pair = prices.iloc[day : day + 2].to_numpy(dtype="float64")
        with np.errstate(all="ignore"):  # zeros, overflow: such ratios are not valid, not warnings
            day_ratios = pair[1] / pair[0]
            valid_day = np.isfinite(day_ratios) & (day_ratios > 0)
            spread_day = np.where(valid_day, np.maximum(day_ratios, 1 / np.where(valid_day, day_ratios, 1)), 1.0)
            errors = np.abs(np.outer(day_ratios, factors) - 1)
        nearest = factors[errors.argmin(axis=1)]
        matched = valid_day & (errors.min(axis=1) <= _SPLIT_TOLERANCE)
        for col in np.flatnonzero(matched):
            others = valid_day & ~(matched & (nearest == nearest[col]))
            alone = valid_day.sum() == 1
            if alone or (others.any() and (spread_day[others] <= _CALM_LIMIT).all()):
                found.append(
                    Split(
                        column=names[col],
                        date=frame.index[day + 1],
                        ratio=float(day_ratios[col]),
                        factor=float(nearest[col]),
                    )
                )
    return found


def _split_candidates(prices: pd.DataFrame, rows: int = 1 << 16) -> list[int]:
    """Days ``d`` on which some column moves from row d to d + 1 by at least the smallest split
    factor, up or down; ``rows`` rows at a time, so a long series needs no full-size copies."""
    days: list[int] = []
    for start in range(0, len(prices) - 1, rows):
        block = prices.iloc[start : start + rows + 1].to_numpy(dtype="float64")
        with np.errstate(all="ignore"):
            ratios = block[1:] / block[:-1]
            valid = np.isfinite(ratios) & (ratios > 0)
            jump = valid & ((ratios >= _SPLIT_CANDIDATE) | (ratios * _SPLIT_CANDIDATE <= 1))
        days.extend(start + int(d) for d in np.flatnonzero(jump.any(axis=1)))
    return days


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
    """The file's cells, plus the file line each record starts on.

    Three paths, each taken only when the one before cannot read the file exactly: a plain file
    (:func:`_scan_plain`) is read in blocks of rows by pandas's C parser with its dates parsed block
    by block (:func:`_read_plain_blocks`), so the whole text and one Python string per date are
    never held at once; a file with a problem in its cells is read whole by the C parser
    (:func:`_read_plain`), its cells kept for the messages; anything unusual (quotes, blank lines,
    ragged rows, bad encoding) goes through Python's csv module as text."""
    streamed = _read_plain_blocks(source)
    if streamed is not None:
        return streamed
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
    delimiter = sniff_delimiter(first_line)
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
    """The whole-text fast path of :func:`_read_csv` for well-formed files, or None to take the
    careful one.

    Without quotes, blank lines or ragged rows, data record i is on file row i + 2, so pandas's C
    parser can read the file with no loss of row-accurate messages; it keeps numeric columns as
    float64 rather than one Python string per cell. Anything unusual returns None, and the csv
    module below then reads the file and reports its problems exactly.
    """
    header = _plain_header(first_line, delimiter)
    if header is None or '"' in text or _BLANK_LINE.search(text) or _LONE_CR.search(text):
        return None
    try:
        with warnings.catch_warnings():
            # Rows longer than the header come as a ParserWarning (or error): leave them to the csv module.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(source, **_plain_options(delimiter))
    except (ValueError, pd.errors.ParserError, pd.errors.ParserWarning, OSError, UnicodeDecodeError):
        return None
    columns = _plain_columns(frame, header)
    if columns is None or not len(frame):
        return None
    return pd.DataFrame(columns), np.arange(2, len(frame) + 2)


def sniff_delimiter(first_line: str) -> str:
    """The header line's delimiter: spreadsheets in decimal-comma locales export ';' or tab separated "CSV"."""
    return max((",", ";", "\t"), key=first_line.count)


def _plain_header(first_line: str, delimiter: str) -> list[str] | None:
    """The header's names, or None when one is empty or repeated (the csv module path reports it)."""
    header = [name.strip() for name in first_line.rstrip("\r").split(delimiter)]
    return header if all(header) and len(set(header)) == len(header) else None


def _plain_options(delimiter: str) -> dict:
    """``pandas.read_csv`` arguments of the C-parser paths: every cell as written (no NA markers)."""
    return dict(
        sep=delimiter,
        encoding="utf-8-sig",
        skipinitialspace=True,
        index_col=False,
        header=0,
        na_filter=False,
        on_bad_lines="error",
        engine="c",
    )


def _plain_columns(frame: pd.DataFrame, header: list[str]) -> dict[str, pd.Series] | None:
    """The C parser's columns by header name (numbers as parsed, text as Python objects), or None
    when a cell needs the careful path's message: a non-finite or negative number, a zero among
    floats, a boolean column, or columns that do not match the header."""
    if [str(c).strip() for c in frame.columns] != header:
        return None
    columns = {}
    for name, column in zip(header, frame.columns):
        values = frame[column]
        if pd.api.types.is_bool_dtype(values):
            return None
        if pd.api.types.is_numeric_dtype(values):
            floats = values.to_numpy(dtype="float64")
            # Cells that fail validation ("nan", "inf", a negative or zero price) are quoted as
            # written in the message, which only the careful path still has. (An integer 0 reads
            # the same either way; _read_plain_blocks tracks integer zeros across blocks.)
            if not np.isfinite(floats).all() or (floats < 0).any():
                return None
            if values.dtype.kind == "f" and (floats == 0).any():
                return None
            columns[name] = values
        else:
            # The same cells as the careful path: text with leading spaces already skipped.
            columns[name] = values.astype(object)
    return columns


# Rows per block of the streamed path; bytes per block of its scan. Module attributes so that tests
# can make them small enough for a small file to span several blocks.
_BLOCK_ROWS = 1 << 16
_SCAN_BYTES = 1 << 20


def _scan_plain(source: str) -> tuple[str, int] | None:
    """The header line of ``source`` and its number of data rows, if the file is plain: UTF-8 text
    with data, without NUL bytes, quotes, blank lines or lone carriage returns (the checks
    :func:`_read_csv` makes on the whole text), read in blocks of whole lines so that it is never
    held at once. None otherwise, or if the file cannot be read: the whole-text paths then read it
    and name the problem."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    carry, header, lines = "", None, 0
    try:
        with open(source, "rb") as handle:
            while True:
                raw = handle.read(_SCAN_BYTES)
                text = carry + decoder.decode(raw, final=not raw)
                cut = text.rfind("\n") + 1 if raw else len(text)
                # Each piece starts at a line start, so the patterns' "^" means what it means on
                # the whole text.
                piece, carry = text[:cut], text[cut:]
                if "\x00" in piece or '"' in piece or _BLANK_LINE.search(piece) or _LONE_CR.search(piece):
                    return None
                if header is None and piece.strip():
                    header = piece.lstrip().partition("\n")[0]
                lines += piece.count("\n")
                if not raw:
                    break
    except (OSError, UnicodeDecodeError):
        return None
    if piece and not piece.endswith("\n"):
        if not piece.strip():
            return None  # spaces after the last line break: an odd last row, for the csv module
        lines += 1
    return (header, lines - 1) if header is not None and lines > 1 else None


def _read_plain_blocks(source: str) -> tuple[pd.DataFrame, np.ndarray] | None:
    """:func:`_read_plain` in blocks of ``_BLOCK_ROWS`` rows, each block's date column parsed to
    ``datetime64`` as it arrives, for a file whose every cell will pass validation; None as soon as
    any block shows something to report (or that needs the whole column, such as a date format
    that differs between blocks), for the whole-text paths to read and name exactly.

    Why by hand: pandas's ``read_csv(chunksize=...)`` does the reading, but a million-row file read
    whole holds its text, the parser's buffers and one Python string per date cell at once, about
    nine times the validated data (docs/reliability.md); here the peak is a block of those plus the
    parsed columns."""
    scanned = _scan_plain(source)
    if scanned is None:
        return None
    first_line, n_rows = scanned
    delimiter = sniff_delimiter(first_line)
    header = _plain_header(first_line, delimiter)
    if header is None:
        return None
    names = [canonical_column(name) for name in header]
    date_column = _date_column(names)
    date_name = header[names.index(date_column)] if date_column is not None else None
    # Each column is allocated whole once (the scan counted the rows) and filled block by block:
    # the peak is the data plus one block, where joining the blocks at the end would hold the data
    # twice and leave the heap fragmented by the blocks' temporaries.
    out: dict[str, np.ndarray] = {}
    date_format, done, zero_ints = None, 0, set()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            with pd.read_csv(source, chunksize=_BLOCK_ROWS, **_plain_options(delimiter)) as reader:
                for block in reader:
                    columns = _plain_columns(block, header)
                    if columns is None or done + len(block) > n_rows:
                        return None
                    if date_name is not None:
                        parsed = _plain_dates(columns[date_name], date_format)
                        if parsed is None:
                            return None
                        columns[date_name], date_format = parsed
                    for name, values in columns.items():
                        values = np.asarray(values)
                        if values.dtype.kind in "iu" and (values == 0).any():
                            zero_ints.add(name)  # an integer zero, a float if another block has floats
                        column = out.get(name)
                        if column is None:
                            column = out[name] = np.empty(n_rows, dtype=values.dtype)
                        elif column.dtype != values.dtype:
                            wider = np.result_type(column.dtype, values.dtype)
                            if (column.dtype == object) != (values.dtype == object) or wider.kind not in "fiuM":
                                return None  # a column numeric in one block and text in another
                            column = out[name] = column.astype(wider)
                        column[done : done + len(values)] = values
                    done += len(block)
    except (ValueError, pd.errors.ParserError, pd.errors.ParserWarning, OSError, UnicodeDecodeError):
        return None
    if done != n_rows or any(out[name].dtype.kind == "f" for name in zero_ints):
        return None
    return pd.DataFrame(out, copy=False), np.arange(2, n_rows + 2)


def _plain_dates(values: pd.Series, date_format: str | None) -> tuple[np.ndarray, str] | None:
    """One block's date cells parsed as :func:`_parse_dates` parses the whole column, with the
    format the earlier blocks used (``None``: any of ``_DATE_FORMATS``, the first block), or None if
    any cell would be reported. Where every block parses in full with the first block's format,
    that is the format the whole column would pick: each format before it fails in the first block."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return None
    _, local = _date_texts(values)
    best, chosen = _best_dates(local, _DATE_FORMATS if date_format is None else (date_format,))
    if best.isna().any() or (best.year < 1).any():
        return None
    return best.to_numpy(), chosen


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
    owned: bool = False,
) -> pd.DataFrame:
    """The validated frame of ``raw``. With ``owned`` (a frame read from a file, which nothing
    else holds) its float64 columns become the result's without a copy."""
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
    date_column = _date_column(names)
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

    frame = pd.DataFrame(columns, index=dates, copy=not owned)
    if not dates.is_monotonic_increasing:  # sorting copies every column; most files come sorted
        frame = frame.sort_index(kind="stable")
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
    if values.dtype == np.float64:
        floats = values.to_numpy()  # no copy: _validate copies unless the frame is its own
        return floats, np.isnan(floats), np.zeros(len(values), dtype=bool), floats
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        floats = values.to_numpy(dtype="float64", na_value=np.nan)
        return floats, np.isnan(floats), np.zeros(len(values), dtype=bool), values.to_numpy()
    cells = values.to_numpy(dtype=object)
    try:
        floats = np.asarray(pd.to_numeric(cells, errors="coerce"), dtype="float64")
    except OverflowError:
        # The C parser keeps an integer beyond 64 bits as a Python int, which to_numeric refuses
        # even with errors="coerce"; as text it becomes inf, reported as not a finite number.
        floats = np.asarray(pd.to_numeric(np.array([_text(c) for c in cells], dtype=object), errors="coerce"), dtype="float64")
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
    texts, local = _date_texts(values)
    best, best_format = _best_dates(local, _DATE_FORMATS)
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


def _date_texts(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The date cells as stripped text, and the same with any UTC offset after a time dropped."""
    texts = np.array([_text(cell) for cell in values.to_numpy(dtype=object)], dtype=object)
    local = np.array(
        [_UTC_OFFSET.sub(r"\1", text) if ":" in text else text for text in texts], dtype=object
    )
    # pandas reads "now" and "today" in every format as the moment of parsing: no date a file means.
    local[np.isin(local, ("now", "today"))] = "not a date"
    return texts, local


def _best_dates(local: np.ndarray, formats: Sequence[str]) -> tuple[pd.DatetimeIndex, str]:
    """The dates in the first of ``formats`` that parses every cell, else in the one that parses most."""
    best, best_format = None, None
    for fmt in formats:
        parsed = pd.DatetimeIndex(pd.to_datetime(local, format=fmt, errors="coerce"))
        if best is None or parsed.notna().sum() > best.notna().sum():
            best, best_format = parsed, fmt
        if best.notna().all():
            break
    return best, best_format


def _date_column(names: Sequence[str]) -> str | None:
    """The column that holds the dates, by name, in ``_DATE_NAMES`` priority order."""
    return next((c for key in _DATE_NAMES for c in names if c.casefold() == key), None)


def _text(cell: object) -> str:
    if isinstance(cell, str):
        return cell.strip()
    return "" if pd.api.types.is_scalar(cell) and pd.isna(cell) else str(cell)


def _show_date(stamp: pd.Timestamp) -> str:
    return f"{stamp:%Y-%m-%d}" if stamp == stamp.normalize() else stamp.isoformat()


def _list(names: Sequence[object]) -> str:
    return ", ".join(str(n) for n in names) if len(names) else "(none)"
