"""Reading labelled text: the one place that turns user files into `Example`s.

The library, the CLI and the HTTP service all read data through `read_examples` / `from_records`, so
a file is accepted or rejected the same way everywhere. A file that cannot be read as a dataset at all
(not parseable, no `text` column, a malformed row, a missing label) raises `DataError`, naming the line and
the column so a user can fix the file; suspicious but readable data is `gkd.data.validation`'s business.

Labels are always strings here ("1", "positive"): files mix int and str labels freely and the label
order of a trained model must not depend on which format the data came in (see `label_names`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, BinaryIO

from gkd.text import unstorable_reason

SUPPORTED_FORMATS: tuple[str, ...] = ("csv", "tsv", "jsonl", "parquet")

# File extensions (and format aliases) -> format. Matching is case-insensitive.
_EXTENSIONS: dict[str, str] = {
    "csv": "csv",
    "tsv": "tsv",
    "tab": "tsv",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "parquet": "parquet",
    "pq": "parquet",
}

TEXT, TEXT_PAIR, LABEL, ID = "text", "text_pair", "label", "id"
_KNOWN_COLUMNS = (TEXT, TEXT_PAIR, LABEL)

# One text field larger than this is almost certainly a broken file (an unclosed quote swallowing the
# rest of it), never a sentence to classify; refusing it early keeps the service's memory bounded.
MAX_FIELD_CHARS = 1 << 20
MAX_LABEL_CHARS = 200  # as a label_map name: a label is a class name, and it is stored in the dataset's row
MAX_COLUMNS = 1_000  # a data file has a handful of columns; 60,000 is an attack or a wrong delimiter


_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_NEWLINE = re.compile(rb"\r\n|\r|\n")


class DataError(ValueError):
    """Bad input data, described well enough for a user to find and fix it.

    `line` is the 1-based line of the offending row (header = line 1 for CSV/TSV; for JSONL the line of
    the record; for Parquet and `from_records` the 1-based row number). `param` is the column at fault,
    "file" for a problem with the file as a whole (format, not parseable, too many rows), or None.
    `message` already contains "line N" when `line` is set, so services can show it as is.
    """

    def __init__(self, message: str, *, line: int | None = None, param: str | None = None) -> None:
        # The check keeps the prefix from doubling when the error is unpickled (args = (message,)).
        if line is not None and not re.search(rf"\bline {line}\b", message):
            message = f"line {line}: {message}"
        super().__init__(message)
        self.message = message
        self.line = line
        self.param = param


@dataclass(frozen=True)
class Example:
    """One row. `text_pair` is a string for every row of a pair dataset and None otherwise."""

    text: str
    text_pair: str | None = None
    label: str | None = None


@dataclass
class ExampleSet:
    """The rows of one file plus what the reader learned about its columns."""

    examples: list[Example]
    format: str
    has_pair: bool
    unknown_columns: list[str]

    def __len__(self) -> int:
        return len(self.examples)

    def labels(self) -> list[str]:
        """The distinct labels in the canonical order that fixes a model's label ids."""
        return label_names(e.label for e in self.examples if e.label is not None)



# --------------------------------------------------------------------------------------------------
# formats and sources


def detect_format(filename: str) -> str:
    """The format implied by a file name's extension (the service only knows the upload's name)."""
    suffix = PurePath(str(filename)).suffix.lower().lstrip(".")
    fmt = _EXTENSIONS.get(suffix)
    if fmt is None:
        raise DataError(
            f"cannot tell the format of {os.path.basename(str(filename))!r} from its extension; supported: "
            ".csv, .tsv/.tab, .jsonl/.ndjson, .parquet/.pq",
            param="file",
        )
    return fmt


def _normalise_format(fmt: str) -> str:
    """Accept "CSV", ".csv", "ndjson" ...; reject anything we cannot read with a list of what we can."""
    fmt_key = str(fmt).strip().lower().lstrip(".")
    if fmt_key not in _EXTENSIONS:
        raise DataError(
            f"unsupported format {fmt!r}; supported: {', '.join(SUPPORTED_FORMATS)}", param="format"
        )
    return _EXTENSIONS[fmt_key]


def _read_source(source: str | os.PathLike[str] | bytes | BinaryIO) -> tuple[bytes, str | None]:
    """Return the raw bytes and, when known, a file name to guess the format from."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), None
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            return path.read_bytes(), path.name
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}", param="file") from exc
    read = getattr(source, "read", None)
    if read is None:
        raise DataError(f"cannot read data from a {type(source).__name__}", param="file")
    data = read()
    if isinstance(data, str):  # a file opened in text mode: be forgiving, it is still our data
        data = data.encode("utf-8")
    name = getattr(source, "name", None)
    return bytes(data), name if isinstance(name, str) else None


def _decode_utf8(data: bytes) -> str:
    """UTF-8 (with or without BOM), or a DataError naming the first line that is not."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = len(_NEWLINE.findall(data, 0, exc.start)) + 1
        raise DataError(
            f"the file is not valid UTF-8 (byte 0x{data[exc.start]:02x}); save it as UTF-8",
            line=line,
            param="file",
        ) from exc


# --------------------------------------------------------------------------------------------------
# reading


def read_examples(
    source: str | os.PathLike[str] | bytes | BinaryIO,
    fmt: str | None = None,
    *,
    require_labels: bool = True,
    max_rows: int | None = None,
) -> ExampleSet:
    """Read a CSV, TSV, JSONL or Parquet file (a path, its bytes, or a binary file object).

    `fmt` defaults to the format implied by the file name; bytes need an explicit `fmt`. An empty file
    or a header-only file gives an empty ExampleSet (`validate_examples` reports it), while anything
    that cannot be parsed raises DataError. More than `max_rows` rows raises DataError, which protects
    the service from files that are small on disk but huge in rows.
    """
    data, name = _read_source(source)
    if fmt is None:
        if name is None:
            raise DataError(
                f"the data format is required when reading raw bytes; one of {', '.join(SUPPORTED_FORMATS)}",
                param="format",
            )
        fmt = detect_format(name)
    fmt = _normalise_format(fmt)
    if max_rows is not None and max_rows < 0:
        raise DataError("max_rows must not be negative", param="max_rows")
    if not data.strip():
        return ExampleSet(examples=[], format=fmt, has_pair=False, unknown_columns=[])
    if fmt == "parquet":
        return _read_parquet(data, require_labels=require_labels, max_rows=max_rows)
    text = _decode_utf8(data)
    if fmt == "jsonl":
        return _read_jsonl(text, require_labels=require_labels, max_rows=max_rows)
    return _read_delimited(text, fmt, require_labels=require_labels, max_rows=max_rows)


def from_records(
    records: Iterable[Mapping[str, Any]], *, require_labels: bool = True, fmt: str = "jsonl"
) -> ExampleSet:
    """Build examples from mappings (e.g. `df.to_dict("records")`) with the same rules as JSONL.

    Errors name the 1-based record number as `line`. NaN / None / pandas NA count as missing values, so
    a DataFrame with gaps behaves like a JSONL file with absent keys.
    """
    numbered = []
    for number, record in enumerate(records, 1):
        if not isinstance(record, Mapping):
            raise DataError(f"expected a mapping, found {type(record).__name__}", line=number)
        numbered.append((number, record))
    return _from_numbered_records(numbered, fmt=_normalise_format(fmt), require_labels=require_labels)


def _too_many_rows(max_rows: int) -> DataError:
    return DataError(f"the file has more than {max_rows} rows", param="file")


def list_names(names: Sequence[str], limit: int = 20) -> str:
    """Column names for a message, bounded: a garbage "header" can be one 100 KB line."""
    shown = ", ".join(quoted(name, 40) for name in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _check_columns(
    names: Sequence[str], *, require_labels: bool, line: int | None = None
) -> tuple[dict[str, int], list[str]]:
    """Map known column -> position, list unknown columns, and reject a header we cannot use.

    Names are matched exactly after stripping whitespace: guessing at "Text" or "sentence" would make a
    dataset mean different things to different readers.
    """
    if len(names) > MAX_COLUMNS:
        raise _too_many_columns(line)
    positions: dict[str, int] = {}
    unknown: dict[str, None] = {}  # ordered and O(1) to test: a list made this quadratic in the columns
    for position, name in enumerate(names):
        if name in _KNOWN_COLUMNS:
            if name in positions:
                raise DataError(f"duplicate column {name!r}", line=line, param=name)
            positions[name] = position
        elif name != ID and not name.startswith("__index_level_"):
            unknown[name] = None  # `id` and pandas' saved index are expected companions, not surprises
    found = list_names(names) or "none"
    for column, needed in ((TEXT, True), (LABEL, require_labels)):
        if needed and column not in positions:
            hint = ""
            if any(n.lower() == column for n in names):
                hint = " (column names are case-sensitive)"
            raise DataError(f"no {column!r} column; columns found: {found}{hint}", line=line, param=column)
    return positions, list(unknown)


def _too_many_columns(line: int | None) -> DataError:
    return DataError(f"the file has more than {MAX_COLUMNS} columns", line=line, param="file")


def _read_delimited(text: str, fmt: str, *, require_labels: bool, max_rows: int | None) -> ExampleSet:
    """CSV/TSV with the stdlib csv module, which (unlike pandas) tells us the line of every record."""
    delimiter = "\t" if fmt == "tsv" else ","
    what = "tab-separated" if fmt == "tsv" else "comma-separated"
    # The default limit (128 KiB) rejects legitimate long documents; never lower a limit set elsewhere.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD_CHARS + 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows = iter(reader)
    header: list[str] | None = None
    positions: dict[str, int] = {}
    unknown: list[str] = []
    examples: list[Example] = []
    while True:
        line = reader.line_num + 1  # a record with quoted newlines is reported where it starts
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"malformed {fmt.upper()} row: {exc}", line=line) from exc
        if not row or (header is not None and all(not field.strip() for field in row)):
            continue  # blank lines and all-empty rows (",,," from spreadsheets) carry no data
        if any("\x00" in field for field in row):
            raise DataError("the row contains a NUL byte; is this a binary or UTF-16 file?", line=line)
        if header is None:
            header = [name.strip() for name in row]
            positions, unknown = _check_columns(header, require_labels=require_labels, line=line)
            continue
        if len(row) != len(header):
            raise DataError(
                f"expected {len(header)} {what} fields as in the header, found {len(row)}", line=line
            )
        for position, field in enumerate(row):
            if len(field) > MAX_FIELD_CHARS:
                raise DataError(
                    f"a field is larger than {MAX_FIELD_CHARS} characters (an unclosed quote?)",
                    line=line,
                    param=header[position],
                )
        if max_rows is not None and len(examples) >= max_rows:
            raise _too_many_rows(max_rows)
        values = {column: row[position] for column, position in positions.items()}
        examples.append(
            _make_example(values, line, has_pair=TEXT_PAIR in positions, require_labels=require_labels)
        )
    return ExampleSet(examples=examples, format=fmt, has_pair=TEXT_PAIR in positions, unknown_columns=unknown)


def _read_jsonl(text: str, *, require_labels: bool, max_rows: int | None) -> ExampleSet:
    """One JSON object per line. Split on "\\n" only: JSON strings may hold U+2028 and friends raw."""
    numbered: list[tuple[int, Mapping[str, Any]]] = []
    for number, raw in enumerate(text.split("\n"), 1):
        stripped = raw.strip()
        if not stripped:
            continue
        try:
            record = json.loads(stripped)
        except json.JSONDecodeError as exc:  # its own message says "line 1 column N", which misleads
            raise DataError(f"invalid JSON: {exc.msg} at column {exc.colno}", line=number) from exc
        except (ValueError, RecursionError) as exc:  # e.g. huge integers, absurd nesting
            raise DataError(f"invalid JSON: {exc}", line=number) from exc
        if not isinstance(record, dict):
            raise DataError(f"expected a JSON object, found {_json_type(record)}", line=number)
        if max_rows is not None and len(numbered) >= max_rows:
            raise _too_many_rows(max_rows)
        numbered.append((number, record))
    return _from_numbered_records(numbered, fmt="jsonl", require_labels=require_labels)


def _from_numbered_records(
    numbered: Sequence[tuple[int, Mapping[Any, Any]]], *, fmt: str, require_labels: bool
) -> ExampleSet:
    """Shared by JSONL and `from_records`: the columns are the union of all records' keys."""
    columns: list[str] = []
    seen: set[str] = set()
    normalised: list[tuple[int, dict[str, Any]]] = []
    for line, record in numbered:
        if len(record) > MAX_COLUMNS:
            raise _too_many_columns(line)
        values: dict[str, Any] = {}
        for key, value in record.items():
            name = str(key).strip()
            if name in values and name in _KNOWN_COLUMNS:
                raise DataError(f"duplicate column {name!r}", line=line, param=name)
            values[name] = value
            if name not in seen:
                seen.add(name)
                columns.append(name)
                if len(columns) > MAX_COLUMNS:
                    raise _too_many_columns(line)
        normalised.append((line, values))
    if not normalised:
        return ExampleSet(examples=[], format=fmt, has_pair=False, unknown_columns=[])
    positions, unknown = _check_columns(columns, require_labels=require_labels)
    has_pair = TEXT_PAIR in positions
    examples = [
        _make_example(values, line, has_pair=has_pair, require_labels=require_labels)
        for line, values in normalised
    ]
    return ExampleSet(examples=examples, format=fmt, has_pair=has_pair, unknown_columns=unknown)


def _read_parquet(data: bytes, *, require_labels: bool, max_rows: int | None) -> ExampleSet:
    """Parquet through pyarrow, reading only the columns we use; the row number plays the line."""
    import pyarrow.parquet as pq  # heavy; only Parquet users pay for it

    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        names = list(parquet.schema_arrow.names)
        rows = parquet.metadata.num_rows
    except Exception as exc:  # pyarrow raises a zoo of types (ArrowInvalid, OSError, ...) for garbage
        raise DataError(f"not a valid Parquet file: {exc}", param="file") from exc
    positions, unknown = _check_columns([n.strip() for n in names], require_labels=require_labels)
    if max_rows is not None and rows > max_rows:
        raise _too_many_rows(max_rows)
    try:
        table = parquet.read(columns=[names[p] for p in positions.values()])
        columns = {column: table.column(names[p]).to_pylist() for column, p in positions.items()}
    except Exception as exc:
        raise DataError(f"cannot read the Parquet data: {exc}", param="file") from exc
    has_pair = TEXT_PAIR in positions
    examples = [
        _make_example(
            {c: v[i] for c, v in columns.items()}, i + 1, has_pair=has_pair, require_labels=require_labels
        )
        for i in range(table.num_rows)
    ]
    return ExampleSet(examples=examples, format="parquet", has_pair=has_pair, unknown_columns=unknown)


# --------------------------------------------------------------------------------------------------
# values


def _json_type(value: Any) -> str:
    """Name a value's type the way a user of JSON / pandas would recognise it."""
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _is_missing(value: Any) -> bool:
    """None, NaN (how pandas spells a gap) and pandas' NA / NaT all mean "no value"."""
    if value is None:
        return True
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return math.isnan(float(value))
    return type(value).__module__.startswith("pandas") and type(value).__name__ in ("NAType", "NaTType")


def _is_bool(value: Any) -> bool:
    # numpy.bool_ is neither a bool nor registered as a number, so name it explicitly.
    return isinstance(value, bool) or type(value).__name__ in ("bool_", "bool")


def _string_value(value: Any, line: int, column: str) -> str | None:
    if _is_missing(value):
        return None
    if not isinstance(value, str):
        raise DataError(f"{column} must be a string, found {_json_type(value)}", line=line, param=column)
    if len(value) > MAX_FIELD_CHARS:
        raise DataError(f"{column} is larger than {MAX_FIELD_CHARS} characters", line=line, param=column)
    _check_storable(value, line, column)
    return str(value)  # numpy.str_ -> str


def _check_storable(value: str, line: int, column: str) -> None:
    """JSON escapes can spell NUL or a lone surrogate that no UTF-8 file holds; labels reach the database."""
    reason = unstorable_reason(value)
    if reason is not None:
        raise DataError(f"{column} {reason}", line=line, param=column)


def _label_value(value: Any, line: int) -> str | None:
    """Labels become strings: ints as "1", integral floats (pandas' int-with-gaps) too, text stripped."""
    if _is_missing(value):
        return None
    if _is_bool(value):
        raise DataError("label must be a string or an integer, found boolean", line=line, param=LABEL)
    if isinstance(value, str):
        if len(value) > MAX_LABEL_CHARS:
            raise DataError(f"label is longer than {MAX_LABEL_CHARS} characters", line=line, param=LABEL)
        _check_storable(value, line, LABEL)
        return value.strip() or None
    if isinstance(value, numbers.Integral):
        if len(text := str(int(value))) > MAX_LABEL_CHARS:
            raise DataError(f"label is longer than {MAX_LABEL_CHARS} characters", line=line, param=LABEL)
        return text
    if isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer():
        return str(int(float(value)))
    shown = repr(value) if isinstance(value, numbers.Real) else _json_type(value)
    raise DataError(f"label must be a string or an integer, found {shown}", line=line, param=LABEL)


def _make_example(values: Mapping[str, Any], line: int, *, has_pair: bool, require_labels: bool) -> Example:
    text = _string_value(values.get(TEXT), line, TEXT)
    if text is None:
        raise DataError("missing text", line=line, param=TEXT)
    pair = _string_value(values.get(TEXT_PAIR), line, TEXT_PAIR) if has_pair else None
    label = _label_value(values.get(LABEL), line)
    if label is None and require_labels:
        raise DataError("missing label", line=line, param=LABEL)
    return Example(text=text, text_pair=(pair or "") if has_pair else None, label=label)

# --------------------------------------------------------------------------------------------------
# labels, validation, splits


def label_names(labels: Iterable[str | None]) -> list[str]:
    """Distinct labels in the order that defines label ids: numeric if all look like integers.

    Numeric order makes "-1" < "0" < "2" < "10" (string order would put "10" before "2"), so a model
    trained on ints from JSONL and the same ints from CSV gets the same id for the same label.
    """
    distinct = {label for label in labels if label is not None}
    if distinct and all(_INTEGER.fullmatch(label) for label in distinct):
        return sorted(distinct, key=lambda label: (int(label), label))
    return sorted(distinct)



def quoted(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")

