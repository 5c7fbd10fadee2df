"""The shape of a request body, measured before MLflow parses it: rows, columns, JSON nesting and the lists and
objects parsing would allocate, read from a Parquet footer, a CSV scan or a JSON scan outside strings, never by
parsing. `check_body` raises `Refused` for a body over its `RequestBounds`; `components.serving.guard` calls it."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass

import numpy as np

from components.core.config import ServeParams

__all__ = [
    "CHUNK",
    "CSV",
    "JSON",
    "MAX_COLUMNS",
    "MAX_DEPTH",
    "PARQUET",
    "Refused",
    "RequestBounds",
    "check_body",
    "check_csv",
    "check_json",
    "check_parquet",
]

MAX_DEPTH = 64  # JSON nesting: a request is {"dataframe_split": {"data": [[cell, [[frame]]]]}}, 6 levels
MAX_COLUMNS = 64  # columns (keys of a row, fields of a CSV line); at least the model's own inputs
CHUNK = 1 << 20  # bytes scanned at once: the scan's memory is a few times this, whatever the body

JSON, CSV, PARQUET = "application/json", "text/csv", "application/vnd.apache.parquet"  # what MLflow takes


class Refused(Exception):
    """A request over a bound: the status and the message its answer carries."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RequestBounds:
    max_bytes: int  # body bytes
    max_rows: int  # rows (JSON arrays at the top two levels, CSV lines after the header, Parquet rows)
    max_columns: int = MAX_COLUMNS  # JSON keys per object, CSV fields per line, Parquet columns
    max_depth: int = MAX_DEPTH  # JSON nesting
    max_containers: int = 1 << 20  # JSON lists and objects in one body

    @classmethod
    def of(cls, limits: ServeParams, columns: int = 0) -> RequestBounds:
        """The guard's bounds for a model packaged with `limits` taking `columns` inputs. The lists and objects a
        request within the model's bounds holds: per row, the row and two sequences of max_frames frames, plus the
        envelope's few."""
        return cls(
            max_bytes=limits.max_request_bytes,
            max_rows=limits.max_rows,
            max_columns=max(MAX_COLUMNS, columns),
            max_containers=limits.max_rows * 2 * (limits.max_frames + 2) + _ENVELOPE,
        )


_ENVELOPE = 64  # lists and objects around the rows: {"dataframe_split": {"columns": [...], "data": [...]}}, params


def check_body(body: bytes, content_type: str | None, bounds: RequestBounds) -> None:
    """Raise `Refused` (400) when the body, read as MLflow would read its content type, is over a bound."""
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime == JSON:
        check_json(body, bounds)
    elif mime == CSV:
        check_csv(body, bounds)
    elif mime == PARQUET:
        check_parquet(body, bounds)


def _bad(message: str) -> Refused:
    return Refused(400, message)


# Byte classes of the JSON scan. In UTF-8 these bytes never occur inside a multi-byte character.
_OPEN_ARRAY, _OPEN_OBJECT, _CLOSE, _COMMA = 1, 2, 3, 4


_KIND = np.zeros(256, np.int8)
_KIND[ord("[")], _KIND[ord("{")], _KIND[ord("]")], _KIND[ord("}")], _KIND[ord(",")] = 1, 2, 3, 3, 4
_QUOTE, _BACKSLASH = ord('"'), ord("\\")


def check_json(body: bytes, bounds: RequestBounds, *, chunk: int = CHUNK) -> None:
    """Nesting depth, rows (items of an array at the top two levels; at the third, rows or columns), keys per object
    at the top three levels and the count of lists and objects, from the brackets and commas outside strings.

    One vectorized pass per chunk, no parsing: what the scan keeps is a few integers, whatever the body holds.
    Malformed JSON is left to MLflow (its 400), but never measured as smaller than it parses.
    """
    if body[:4] and json.detect_encoding(body[:4]) not in ("utf-8", "utf-8-sig"):
        raise _bad("a JSON request must be UTF-8")  # json.loads would read UTF-16/32, where the byte scan is blind
    scan = _JsonScan(bounds)
    view = memoryview(body)
    for start in range(0, len(body), chunk):
        scan.feed(np.frombuffer(view[start : start + chunk], np.uint8))


class _JsonScan:
    def __init__(self, bounds: RequestBounds) -> None:
        self.bounds = bounds
        wide = max(bounds.max_rows, bounds.max_columns)
        # depth -> (items an array may hold, keys an object may hold); an array at depth 3 is dataframe_split's
        # data, index or columns, a row of `instances`, or a column of `inputs`
        self.levels = {1: (bounds.max_rows, wide), 2: (bounds.max_rows, wide), 3: (wide, wide)}
        self.in_string = False
        self.escape_next = False  # the chunk ended in an escaping backslash
        self.depth = 0
        self.containers = 0
        self.open_kind = dict.fromkeys(self.levels, 0)  # the container open at each level when the chunk ends
        self.commas = dict.fromkeys(self.levels, 0)  # and the commas seen in it so far

    def feed(self, b: np.ndarray) -> None:
        quotes = np.flatnonzero(b == _QUOTE)
        escaped = self._escaped(b)
        if escaped.size and quotes.size:
            quotes = quotes[~np.isin(quotes, escaped, assume_unique=True)]
        kinds = _KIND[b]
        at = np.flatnonzero(kinds)
        if at.size:
            at = at[((np.searchsorted(quotes, at) + self.in_string) & 1) == 0]  # outside strings
        self.in_string ^= bool(quotes.size & 1)
        if not at.size:
            return
        kind = kinds[at]
        opens = kind <= _OPEN_OBJECT
        step = opens.astype(np.int64) - (kind == _CLOSE)
        after = self.depth + np.cumsum(step)
        before = after - step
        self.depth = int(after[-1])
        if (deepest := int(after.max())) > self.bounds.max_depth:
            raise _bad(f"the JSON is nested {deepest} levels deep; at most {self.bounds.max_depth}")
        self.containers += int(opens.sum())
        if self.containers > self.bounds.max_containers:
            raise _bad(
                f"the JSON holds more than {self.bounds.max_containers} lists and objects; at most "
                f"{self.bounds.max_containers} (serve.max_rows x 2 x (serve.max_frames + 2) + {_ENVELOPE})"
            )
        for level, (max_items, max_keys) in self.levels.items():
            opened = opens & (after == level)
            commas = (kind == _COMMA) & (before == level)
            if not (opened.any() or commas.any()):
                continue
            segment = np.cumsum(opened)  # 0: the container open at this level when the chunk began
            counts = np.bincount(segment[commas], minlength=int(segment[-1]) + 1)
            counts[0] += self.commas[level]
            segment_kinds = np.concatenate(([self.open_kind[level]], kind[opened]))
            over = counts >= np.where(segment_kinds == _OPEN_ARRAY, max_items, max_keys)  # items = commas + 1
            if over.any():
                self._refuse(level, int(segment_kinds[np.argmax(over)]))
            self.commas[level] = int(counts[-1])
            self.open_kind[level] = int(segment_kinds[-1])

    def _refuse(self, level: int, kind: int) -> None:
        rows = self.bounds.max_rows
        if kind == _OPEN_ARRAY and level < 3:
            raise _bad(f"more than {rows} rows in one request; at most {rows} (serve.max_rows)")
        wide = max(rows, self.bounds.max_columns)
        if kind == _OPEN_ARRAY:
            raise _bad(f"a JSON array of more than {wide} rows or columns; at most {rows} rows (serve.max_rows)")
        raise _bad(f"a JSON object of more than {wide} keys; at most {self.bounds.max_columns} columns")

    def _escaped(self, b: np.ndarray) -> np.ndarray:
        """Positions of the bytes a backslash escapes: the byte after each run of backslashes of odd length."""
        slashes = np.flatnonzero(b == _BACKSLASH)
        carried, self.escape_next = self.escape_next, False
        if carried and slashes.size and slashes[0] == 0:
            slashes = slashes[1:]  # an escaped backslash escapes nothing
        escaped = np.empty(0, np.int64)
        if slashes.size:
            starts = np.concatenate(([0], np.flatnonzero(np.diff(slashes) != 1) + 1))
            lengths = np.diff(np.append(starts, slashes.size))
            escaped = (slashes[starts] + lengths)[lengths % 2 == 1]
            if escaped.size and escaped[-1] == b.size:
                self.escape_next, escaped = True, escaped[:-1]
        return np.concatenate(([0], escaped)) if carried else escaped


_QUOTED = re.compile(rb'[^"]*(?:""[^"]*)*"')  # the rest of a quoted CSV field, "" inside, to its closing quote
_FIELD_END = re.compile(rb"[,\r\n]")


def check_csv(body: bytes, bounds: RequestBounds) -> None:
    """Lines after the header and fields per line, read as pandas' C parser reads them (a quote opens a quoted
    field only at the field's start; inside one, "" is a quote), one regular-expression step per field: at most
    (max_rows + 2) x (max_columns + 1) steps before a bound is passed."""
    lines, fields, at, end = 0, 0, 0, len(body)
    while at < end:
        if body[at] == 0x22:  # '"': a quoted field
            closing = _QUOTED.match(body, at + 1)
            if closing is None:
                return  # an unterminated quote: pandas refuses the body (MLflow's 400)
            at = closing.end()
        stop = _FIELD_END.search(body, at)
        fields += 1
        if fields > bounds.max_columns:
            raise _bad(f"a CSV line of more than {bounds.max_columns} fields; at most {bounds.max_columns} columns")
        at = stop.end() if stop is not None else end
        if stop is not None and body[stop.start()] == 0x2C:  # ','
            continue
        if stop is not None and body[stop.start()] == 0x0D and body[at : at + 1] == b"\n":
            at += 1
        lines, fields = lines + 1, 0
        if lines - 1 > bounds.max_rows:  # the first line is the header
            raise _bad(
                f"more than {bounds.max_rows} CSV rows in one request; at most {bounds.max_rows} (serve.max_rows)"
            )


def check_parquet(body: bytes, bounds: RequestBounds) -> None:
    """Rows, columns and decoded bytes as the file's footer declares them, read without decoding a page."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(io.BytesIO(body)).metadata
    except (pa.ArrowException, OSError, ValueError, TypeError):
        raise _bad("the request is not a readable Parquet file") from None
    if meta.num_rows > bounds.max_rows:
        raise _bad(f"{meta.num_rows} rows in one request; at most {bounds.max_rows} (serve.max_rows)")
    if meta.num_row_groups > bounds.max_rows:  # each holds a row: refused before a Python loop over them
        raise _bad(f"{meta.num_row_groups} Parquet row groups; at most {bounds.max_rows} rows (serve.max_rows)")
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    if (rows := sum(g.num_rows for g in groups)) > bounds.max_rows:  # the groups' own counts, should the file's lie
        raise _bad(f"{rows} rows in one request; at most {bounds.max_rows} (serve.max_rows)")
    if meta.num_columns > bounds.max_columns:
        raise _bad(f"{meta.num_columns} Parquet columns; at most {bounds.max_columns}")
    expanded = sum(
        max(g.total_byte_size, sum(g.column(j).total_uncompressed_size for j in range(g.num_columns))) for g in groups
    )
    if expanded > bounds.max_bytes:
        raise _bad(
            f"the Parquet data expands to {expanded} bytes; at most {bounds.max_bytes} (serve.max_request_bytes)"
        )
