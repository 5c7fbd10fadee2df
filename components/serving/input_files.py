"""`msa predict`'s input files (JSONL or CSV): opened only when they are regular files, read a row at a time under
a byte bound, checked in one streaming pass, and handed on in chunks, so memory stays bounded whatever the file."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd

from components.core.errors import DataError
from components.core.textfiles import csv_rows
from components.data.dataset import SEQUENCE_MODALITIES
from components.serving.values import check_text, json_cell

__all__ = [
    "CHUNK_BYTES",
    "CHUNK_ROWS",
    "INPUT_SUFFIXES",
    "MAX_COLUMNS",
    "MAX_ROW_BYTES",
    "InputChunk",
    "InputSummary",
    "check_inputs",
    "input_chunks",
    "input_kind",
    "open_input",
]

CHUNK_ROWS = 1000  # rows `msa predict` reads and scores at a time: its memory is one chunk's, whatever the file's
CHUNK_BYTES = 1 << 26  # ... and a chunk holds at most about this much of the file's text
MAX_ROW_BYTES = 1 << 26  # one row (a JSONL line, a CSV record): more than any row within the serve bounds needs
MAX_COLUMNS = 1000  # distinct columns in one input file; the model reads a handful
INPUT_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")  # the only way a strict-UTF-8 line can hold one


@dataclass(frozen=True)
class InputChunk:
    """Consecutive rows of an input file: the frame the model scores and each row's number as errors name it."""

    frame: pd.DataFrame
    rows: list[int]


@dataclass(frozen=True)
class InputSummary:
    """What the first pass over an input file found: how many rows, and every column any row has (in order)."""

    rows: int
    columns: list[str]


def input_chunks(path: str | Path, rows: int | None = None) -> Iterator[InputChunk]:
    """The input file's rows, `rows` (default CHUNK_ROWS, and at most about CHUNK_BYTES of text) at a time:
    memory stays that of one chunk however long the file is."""
    path = Path(path)
    size = rows or CHUNK_ROWS
    dtype = object if input_kind(path) == "csv" else None  # CSV cells stay text, as the file has them
    batch: list[dict[str, Any]] = []
    numbers: list[int] = []
    text = 0
    for number, row, nbytes in _input_rows(path):
        batch.append(row)
        numbers.append(number)
        text += nbytes
        if len(batch) >= size or text >= CHUNK_BYTES:
            yield InputChunk(pd.DataFrame(batch, dtype=dtype), numbers)
            batch, numbers, text = [], [], 0
    if batch:
        yield InputChunk(pd.DataFrame(batch, dtype=dtype), numbers)


def check_inputs(
    path: str | Path,
    *,
    required: Sequence[str] = (),
    takes: Sequence[str] | None = None,
    text: bool = False,
    max_text_chars: int | None = None,
) -> InputSummary:
    """One streaming pass over the whole input file checking every rule that costs no decoding: well-formed rows,
    valid Unicode, the `required` columns present (`takes`: the columns the model reads, for the message), and
    with `text` each row's text present, a non-blank string of at most `max_text_chars`. A bad row anywhere is
    refused before the first row is scored; memory stays that of one row."""
    path = Path(path)
    csv_file = input_kind(path) == "csv"
    required = list(dict.fromkeys([*required, *(["text"] if text else [])]))
    seen: dict[str, None] = {}
    count = 0
    missing_text: int | None = None  # a row without the key: refused once the file shows the column exists at all
    for number, row, _ in _input_rows(path):
        count += 1
        if not row.keys() <= seen.keys():
            seen.update(dict.fromkeys(row))
            if len(seen) > MAX_COLUMNS:
                raise DataError(path, f"more than {MAX_COLUMNS} distinct columns; the model reads a few", row=number)
            if csv_file:  # the header names every column: a missing one is known at once
                _check_required(path, required, seen, takes)
        if text:
            if "text" in row:
                check_text(row["text"], path, number, max_text_chars)
            elif missing_text is None:
                missing_text = number
    if count == 0:
        raise DataError(path, "has no rows: nothing to score")
    _check_required(path, required, seen, takes)
    if missing_text is not None:
        raise DataError(path, "text is missing", row=missing_text)
    return InputSummary(count, list(seen))


def _check_required(path: Path, required: list[str], seen: dict[str, None], takes: Sequence[str] | None) -> None:
    if missing := [c for c in required if c not in seen]:
        raise DataError(path, f"missing required column(s) {missing}; the model takes {list(takes or required)}")


def input_kind(path: Path) -> str:
    kind = INPUT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(path, "input must be .jsonl or .csv")
    return kind


def open_input(path: Path) -> BinaryIO:
    """The input file, opened for reading once symlinks are followed, if it is a regular file: a device
    (/dev/zero), a FIFO or a directory is refused before a byte is read. Opened without blocking, so a FIFO
    with no writer cannot hang the check."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DataError(path, "no such file: --input names a .jsonl or .csv file") from None
    except OSError as e:
        raise DataError(path, f"cannot read the file: {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DataError(path, f"is {_file_kind(mode)}, not a regular file: --input names a .jsonl or .csv file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


class _Lines:
    """The lines of an input file decoded as strict UTF-8 (a leading BOM dropped), each read with a bound:
    `pending` counts the bytes read since the caller last reset it, so one row (a JSONL line, a CSV record over
    several lines) is refused once it passes MAX_ROW_BYTES, before the rest of it is read."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        self.file, self.path, self.number, self.pending = file, path, 0, 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        try:
            data = self.file.readline(MAX_ROW_BYTES - self.pending + 1)
        except OSError as e:
            raise DataError(self.path, f"cannot read the file: {e.strerror or e}") from None
        if not data:
            raise StopIteration
        self.number += 1
        self.pending += len(data)
        if self.pending > MAX_ROW_BYTES:
            raise DataError(
                self.path,
                f"line {self.number}: a row longer than {MAX_ROW_BYTES} bytes; no row the model takes is that long",
            )
        if self.number == 1 and data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                self.path,
                f"line {self.number}: byte 0x{data[e.start]:02x} is not valid UTF-8 ({e.reason}); "
                "re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
            ) from None


def _input_rows(path: Path) -> Iterator[tuple[int, dict[str, Any], int]]:
    """(row number as errors name it, row, bytes of text) of each row: JSONL rows numbered by their line, CSV rows
    by their data row. Rows that break a rule of the file's format are refused where they are."""
    kind = input_kind(path)
    with open_input(path) as file:
        lines = _Lines(file, path)
        yield from _jsonl_rows(lines, path) if kind == "jsonl" else _csv_rows(lines, path)


def _jsonl_rows(lines: _Lines, path: Path) -> Iterator[tuple[int, dict[str, Any], int]]:
    for line in lines:
        number, nbytes, lines.pending = lines.number, lines.pending, 0
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, f"not valid JSON: {e.msg}", row=number) from None
        except ValueError:  # an integer of more digits than Python converts
            raise DataError(path, "not valid JSON: a number with too many digits to read", row=number) from None
        except RecursionError:
            raise DataError(path, "not valid JSON: nested too deeply", row=number) from None
        if not isinstance(row, dict):
            raise DataError(path, f"expected a JSON object per line, got {type(row).__name__}", row=number)
        if len(row) > MAX_COLUMNS:
            raise DataError(path, f"{len(row)} columns; at most {MAX_COLUMNS}", row=number)
        if "\\u" in line and _SURROGATE_ESCAPE.search(line):
            _check_unicode(row, path, number)
        yield number, row, nbytes


def _check_unicode(row: dict[str, Any], path: Path, number: int) -> None:
    """A JSON escape can spell half of a UTF-16 pair (\\ud800) that no UTF-8 text can hold: refused here rather
    than failing in the tokenizer or in the written predictions."""
    rule = "is not valid Unicode: it holds a lone surrogate (a \\ud800-\\udfff escape without its pair)"
    for key, value in row.items():
        if _has_surrogate(key):
            raise DataError(path, f"a column name {rule}", row=number)
        if _has_surrogate(value):
            raise DataError(path, f"{key} {rule}", row=number)


def _has_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return False


def _csv_rows(lines: _Lines, path: Path) -> Iterator[tuple[int, dict[str, Any], int]]:
    columns: list[str] | None = None
    sequences: list[tuple[int, str]] = []
    row = 0
    for _, fields in csv_rows(lines, path):
        nbytes, lines.pending = lines.pending, 0
        if columns is None:
            columns = [c.strip() for c in fields]
            if len(columns) > MAX_COLUMNS:
                raise DataError(path, f"the header has {len(columns)} columns; at most {MAX_COLUMNS}")
            if twice := next((c for i, c in enumerate(columns) if c in columns[:i]), None):
                raise DataError(path, f"the header names column {twice!r} more than once; name each column once")
            sequences = [(i, c) for i, c in enumerate(columns) if c in SEQUENCE_MODALITIES]
            continue
        row += 1
        if len(fields) != len(columns):  # an unquoted comma would shift every later column: never guess
            raise DataError(
                path,
                f"expected {len(columns)} fields ({', '.join(columns)}), found {len(fields)}; "
                'quote a field that contains commas ("like, this")',
                row=row,
            )
        values: list[Any] = [None if v == "" else v for v in fields]
        for i, column in sequences:
            values[i] = json_cell(values[i], path, row, column)
        yield row, dict(zip(columns, values, strict=True)), nbytes
