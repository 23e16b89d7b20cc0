"""Reading a table file as spreadsheets write it: CSV (any of the usual delimiters, decimal commas,
the encodings Excel saves), Parquet, a DataFrame or NumPy arrays, into a pandas DataFrame.

search.data.tables splits and preprocesses what `read_table` returns; search.artifacts.predict
reads the rows to predict with it.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from search.data.image_files import DataError
from search.errors import first_line

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")
WORKBOOK_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods", ".numbers")  # to be saved as CSV first
DELIMITERS = (",", ";", "\t", "|")  # what a text table's columns may be separated by, preferred first
SNIFF_CHARS = 1 << 16  # the delimiter is read off the first 64 KiB
SNIFF_ROWS = 200  # ... and at most this many rows of it
# The error values Excel and LibreOffice write into a cell ("#N/A" is already one of pandas').
SPREADSHEET_ERRORS = ("#DIV/0!", "#VALUE!", "#REF!", "#NAME?", "#NUM!", "#NULL!", "#SPILL!", "#CALC!")
# A number written with a decimal comma (groups of thousands by "." or a space), and the whole
# numbers and infinities a column of them may also hold.
_DECIMAL_COMMA = re.compile(r"[+-]?(?:\d{1,3}(?:[.\s]\d{3})+|\d*),\d+(?:[eE][+-]?\d+)?")
_WHOLE = re.compile(r"[+-]?(?:\d{1,3}(?:[.\s]\d{3})+|\d+)|[+-]?inf(?:inity)?", re.IGNORECASE)


def read_table(source: Any, *, what: str = "--data") -> Any:
    """A pandas DataFrame from a CSV or Parquet path, a DataFrame, or a 2-D NumPy array.

    A text table is read as spreadsheets write them (`_read_text`): UTF-8 (with or without a
    byte-order mark), UTF-16 with one, else Windows-1252; columns separated by commas,
    semicolons, tabs or "|"; decimal commas where the separator is not a comma; spreadsheet
    error values (#DIV/0! ...) missing."""
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True)
    if isinstance(source, np.ndarray):
        if source.ndim != 2:
            raise DataError(f"{what}: expected a 2-D array of rows, got {source.ndim} dimension(s)")
        return pd.DataFrame(source, columns=[f"x{i}" for i in range(source.shape[1])])
    path = Path(str(source)).expanduser()
    if not path.is_file():
        raise DataError(f"{what} {path}: no such file")
    parquet = path.suffix.lower() in (".parquet", ".pq")
    if path.suffix.lower() in WORKBOOK_SUFFIXES:
        raise DataError(f"{what} {path}: a spreadsheet workbook; save the sheet as CSV or Parquet")
    try:
        frame = pd.read_parquet(path) if parquet else _read_text(path, what)
    except DataError:
        raise
    except Exception as e:  # pandas' parsers raise many kinds: one line names the file
        raise DataError(f"{what} {path}: not a table pandas can read ({first_line(e)})") from None
    if frame.shape[0] == 0 or frame.shape[1] < 2:
        why = "" if parquet else " (no comma, semicolon, tab or | separates its columns)"
        raise DataError(
            f"{what} {path}: {frame.shape[0]} rows and {frame.shape[1]} column(s): not a table{why}"
        )
    return frame


def _read_text(path: Path, what: str):
    """A CSV, TSV or text table in the encoding and with the delimiter and decimal mark found in
    it; Excel's `sep=;` first line is obeyed, and columns with neither a name nor a value (a
    spreadsheet's trailing delimiters) are left out."""
    import pandas as pd

    encoding = _encoding(path, what)
    with open(path, encoding=encoding, newline="") as f:
        sample = f.read(SNIFF_CHARS)
        complete = not f.read(1)
    first = sample.split("\n", 1)[0].strip()
    directive = re.fullmatch(r'"?sep=(.)"?', first)
    if directive:
        sep, skip = directive.group(1), 1
    else:
        sep, skip = _delimiter(sample, complete=complete, tsv=path.suffix.lower() == ".tsv"), 0
    frame = pd.read_csv(path, sep=sep, encoding=encoding, skiprows=skip, na_values=list(SPREADSHEET_ERRORS))
    blank = [c for c in frame.columns if str(c).startswith("Unnamed: ") and frame[c].isna().all()]
    frame = frame.drop(columns=blank)
    if sep == ",":
        return frame
    frame.attrs["decimal"] = ","  # for numbers_only: a numeric column's "12,5" is 12.5 here
    return _decimal_commas(frame)


def _encoding(path: Path, what: str) -> str:
    """The encoding to read `path` in: UTF-32 or UTF-16 by their byte-order mark; UTF-8 (a mark
    or not) where every byte decodes; else Windows-1252 (Excel's "CSV" on Western European
    Windows), and Latin-1 for the five bytes Windows-1252 leaves undefined. NUL bytes outside
    UTF-16 and UTF-32 mean a binary file: one line."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head in (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE):
        return "utf-32"
    if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return "utf-16"
    for encoding, name in (("utf-8", "utf-8-sig"), ("cp1252", "cp1252")):
        decoder = codecs.getincrementaldecoder(encoding)()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    if b"\x00" in chunk:
                        raise DataError(
                            f"{what} {path}: not a table: it holds NUL bytes (a binary file, or UTF-16 "
                            "text without a byte-order mark); save it as CSV (UTF-8) or Parquet"
                        )
                    decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            continue
        return name
    return "latin-1"


def _delimiter(sample: str, *, complete: bool, tsv: bool = False) -> str:
    """The delimiter that splits the sample's rows into one count of two or more fields (the
    header's); failing that, the one that splits the most rows as it splits the header. A tie
    goes to the first of DELIMITERS (tab first in a .tsv file)."""
    order = ("\t", *(d for d in DELIMITERS if d != "\t")) if tsv else DELIMITERS
    best, best_rows = ",", 0
    for d in order:
        try:
            rows = [r for r in csv.reader(io.StringIO(sample), delimiter=d) if r]
        except csv.Error:
            continue
        if not complete:
            rows = rows[:-1]  # the last row may be cut off
        counts = [len(r) for r in rows[:SNIFF_ROWS]]
        if not counts or counts[0] < 2:
            continue
        if all(c == counts[0] for c in counts):
            return d
        agree = sum(c == counts[0] for c in counts)
        if agree > best_rows:
            best, best_rows = d, agree
    return best


def _decimal_commas(frame):
    """`frame` with each text column whose values are all numbers written with a decimal comma
    (at least one with a comma; the others whole numbers or infinities) read as numbers."""
    import pandas as pd

    for c in frame.columns:
        column = frame[c]
        if _is_number(column) or pd.api.types.is_bool_dtype(column):
            continue
        text = column.dropna().astype(str).str.strip()
        if text.empty:
            continue
        if not text.str.fullmatch(_DECIMAL_COMMA).any() or _comma_numbers(text).isna().any():
            continue
        frame[c] = _comma_numbers(column)
    return frame


def _comma_numbers(column):
    """Each value of `column` written with a decimal comma (or a whole number, or an infinity) as
    a float; any other value missing."""
    import pandas as pd

    text = column.astype(object).where(column.notna()).astype(str).str.strip()
    ok = text.str.fullmatch(_DECIMAL_COMMA) | text.str.fullmatch(_WHOLE)
    plain = text.str.replace(r"[.\s]", "", regex=True).str.replace(",", ".", regex=False)
    return pd.to_numeric(plain.where(ok), errors="coerce").astype(float)


def _is_number(column) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
