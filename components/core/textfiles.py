"""Reading text files users hand in: strict UTF-8 that names the line of a bad byte, and CSV rows that name theirs."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from pathlib import Path

from components.core.errors import DataError, first_line

__all__ = ["csv_records", "csv_rows", "yaml_problem"]

# Python's csv module refuses fields over 131072 characters by default; a long transcript is for validation's
# text_max_chars to judge (one clear line), not for the parser to crash on. The file is in memory already, so
# this bound only has to keep one field within reason.
FIELD_LIMIT = 1 << 26


def read_utf8(path: Path) -> str:
    """Decode a whole file as strict UTF-8 (a leading BOM is dropped).

    Guessing another encoding would silently turn accented or emoji text into mojibake, so a bad byte is an
    error that names its line: the user re-encodes the file once and every later import is exact.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read the file: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            path,
            f"line {line}: byte 0x{data[e.start]:02x} is not valid UTF-8 ({e.reason}); "
            "re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
        ) from None


def csv_records(path: Path, **dialect: object) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each row of a CSV/TSV file read as strict UTF-8, blank lines skipped; a malformed
    row is a DataError naming its line."""
    return csv_rows(io.StringIO(read_utf8(path), newline=""), path, **dialect)


def csv_rows(lines: Iterable[str], path: Path, **dialect: object) -> Iterator[tuple[int, list[str]]]:
    """`csv_records` over lines as they come (a file streamed in chunks): (line number, fields), blank rows
    skipped, a malformed row a DataError naming `path` and its line."""
    csv.field_size_limit(FIELD_LIMIT)
    reader = csv.reader(lines, **dialect)  # type: ignore[arg-type]  # the stub types each format keyword; `dialect` holds only csv.reader's own
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(path, f"line {reader.line_num}: not a well-formed row ({e})") from None
        if fields:
            yield reader.line_num, fields


def yaml_problem(error: Exception) -> str:
    """A YAML parse error in one line: where (line, column) and what, without PyYAML's multi-line excerpt."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(error, "problem", None) or first_line(error)
    return f"not valid YAML{where}: {problem}"
