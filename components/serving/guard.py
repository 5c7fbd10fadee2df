"""`msa serve`: MLflow's own scoring server for a verified model, behind a guard that measures each request first.

The app is MLflow's (`mlflow.pyfunc.scoring_server.init`: /invocations, /ping, /health, /version and their JSON),
built from the model `components.serving.pyfunc.load_model` loaded and verified, and run by uvicorn in this process on
loopback by default. A model this project packaged is served through the `Predictor` that load_model built: no
code from the model directory runs (`mlflow.pyfunc.load_model` would import the copy of `components` inside it).

Where each bound lives, and why:

- Here, before MLflow parses: the body's bytes (`serve.max_request_bytes`; 413 from Content-Length, or as soon as a
  streamed body passes it), and the shape that parsing would allocate: rows in a Parquet body from its footer
  (`serve.max_rows`; 140 KB of Parquet can hold 50 million rows, which MLflow expands to gigabytes before the model
  could count them), rows and columns of a CSV body, and JSON nesting depth, rows, keys and the number of lists and
  objects, all by a scan outside strings, not by parsing. MLflow reads and parses the whole body before the model
  sees a row, so only this layer can refuse what is expensive to parse.
- In the model (`Predictor`, the package's `limits.json`), after parsing: rows per request, text length, image
  bytes and pixels, frames per sequence, clip bytes and seconds. These need the parsed cell (a string's characters,
  an image's header) and the model's meaning of each column, and `msa predict` and `mlflow models serve` enforce
  them the same way; here they would be a second, diverging copy.

Refusals are MLflow's envelope, `{"error_code": "BAD_REQUEST", "message": ...}`, naming the bound and nothing about
the server. A content type MLflow does not take reaches MLflow (its own 415), under the byte bound like any body.
MLflow's own JSON errors can carry a `stack_trace` (a bad CSV body's 400 does: the server's paths and code); the
guard holds each JSON error response (at most `MAX_ERROR_BYTES`) and passes it on without that field.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.core.config import ServeParams
from components.core.errors import ConfigError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_DEPTH = 64  # JSON nesting: a request is {"dataframe_split": {"data": [[cell, [[frame]]]]}}, 6 levels
MAX_COLUMNS = 64  # columns (keys of a row, fields of a CSV line); at least the model's own inputs
CHUNK = 1 << 20  # bytes scanned at once: the scan's memory is a few times this, whatever the body
THREAD_OVER = 256 * 1024  # bodies larger than this are scanned off the event loop (/ping answers meanwhile)
MAX_ERROR_BYTES = 1 << 20  # a JSON error response held to drop its stack trace; MLflow's are a few KB

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


# ---------------------------------------------------------------------------------------------- the body's shape


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


# ---------------------------------------------------------------------------------------------- the ASGI guard


class RequestGuard:
    """ASGI middleware: reads each request's body under `bounds.max_bytes` (and `body_timeout` seconds), measures
    it (`check_body`), and hands the app the same bytes, or answers the refusal itself. The app's JSON errors
    reach the client without a stack trace (`WithoutStackTrace`)."""

    def __init__(
        self, app: ASGIApp, bounds: RequestBounds, *, body_timeout: float = 60.0, max_error_bytes: int = MAX_ERROR_BYTES
    ) -> None:
        self.app = app
        self.bounds = bounds
        self.body_timeout = body_timeout
        self.max_error_bytes = max_error_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read(scope, receive)
        except Refused as e:  # the body is left unread: the connection closes after the answer
            await refuse(send, e.status, e.message, close=True)
            return
        if body is None:
            return  # the client went away: nobody to answer
        if scope["method"] == "POST" and body:
            content_type = _header(scope, b"content-type")
            try:
                if len(body) > THREAD_OVER:
                    await asyncio.to_thread(check_body, body, content_type, self.bounds)
                else:
                    check_body(body, content_type, self.bounds)
            except Refused as e:
                await refuse(send, e.status, e.message)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed, body
            if replayed:
                return await receive()  # after the body: the disconnect, when it comes
            replayed, message = True, {"type": "http.request", "body": body, "more_body": False}
            body = b""
            return message

        await self.app(scope, replay, WithoutStackTrace(send, self.max_error_bytes))

    async def _read(self, scope: Scope, receive: Receive) -> bytes | None:
        limit = self.bounds.max_bytes
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise Refused(400, "Content-Length is not a number")
            if int(declared) > limit:
                raise Refused(
                    413, f"the request body is {int(declared)} bytes; at most {limit} (serve.max_request_bytes)"
                )
        try:
            return await asyncio.wait_for(self._receive_body(receive, limit), self.body_timeout)
        except TimeoutError:
            raise Refused(408, f"the request body did not arrive within {self.body_timeout:g} s") from None

    @staticmethod
    async def _receive_body(receive: Receive, limit: int) -> bytes | None:
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            part = message.get("body", b"")
            size += len(part)
            if size > limit:
                raise Refused(413, f"the request body is over {limit} bytes (serve.max_request_bytes)")
            if part:
                parts.append(part)
            if not message.get("more_body", False):
                return parts[0] if len(parts) == 1 else b"".join(parts)


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name`, as Starlette's `request.headers.get` (what MLflow reads) returns it."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def refuse(send: Send, status: int, message: str, *, close: bool = False) -> None:
    """Answer `status` with MLflow's error envelope; `close` when the body was left unread."""
    content = json.dumps({"error_code": "BAD_REQUEST", "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


class WithoutStackTrace:
    """The app's `send`, passing every response on as it comes except a JSON error (status >= 400, content type
    application/json): that one is held until its last part and sent without the `stack_trace` field (with its
    Content-Length fixed). One over `MAX_ERROR_BYTES` is replaced by a message that says only its status."""

    def __init__(self, send: Send, max_bytes: int = MAX_ERROR_BYTES) -> None:
        self.send = send
        self.max_bytes = max_bytes
        self.start: Message | None = None  # the held response's start, while one is held
        self.parts: list[bytes] = []
        self.size = 0

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start" and message.get("status", 200) >= 400 and _json_response(message):
            self.start = message
            return
        if self.start is None or kind != "http.response.body":
            await self.send(message)
            return
        part = message.get("body", b"")
        self.size += len(part)
        if self.size <= self.max_bytes:
            self.parts.append(part)
        else:
            self.parts.clear()  # too large to pass on checked: the rest is dropped as it comes
        if not message.get("more_body", False):
            start, self.start = self.start, None
            await self._send_held(start, b"".join(self.parts), self.size > self.max_bytes)

    async def _send_held(self, start: Message, body: bytes, too_large: bool) -> None:
        status = int(start["status"])
        if too_large:
            code = "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR"
            body = json.dumps({"error_code": code, "message": f"the request failed ({status})"}).encode()
        else:
            body = _without_stack_trace(body)
        headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.send({**start, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


def _json_response(start: Message) -> bool:
    for key, value in start.get("headers", ()):
        if key.lower() == b"content-type":
            return value.split(b";")[0].strip().lower() == JSON.encode()
    return False


def _without_stack_trace(body: bytes) -> bytes:
    """`body` as it is, or, where it is a JSON object with a `stack_trace`, re-encoded without it."""
    try:
        content = json.loads(body)
    except (ValueError, RecursionError):
        return body  # not JSON (MLflow's 504 says so in plain words): nothing to take out
    if not isinstance(content, dict) or "stack_trace" not in content:
        return body
    del content["stack_trace"]
    return json.dumps(content).encode()


# ---------------------------------------------------------------------------------------------- the server


def guarded_app(model_uri: str, scratch: Path, *, trust_model: bool = False) -> ASGIApp:
    """MLflow's scoring app for the model at `model_uri` (downloaded into `scratch` and verified by
    `components.serving.pyfunc.load_model`), behind a `RequestGuard` with the bounds the model was packaged with."""
    from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
    from mlflow.models import Model
    from mlflow.pyfunc import PyFuncModel, scoring_server

    from components.serving.pyfunc import load_model

    loaded = load_model(model_uri, scratch, trust_model=trust_model)
    if isinstance(loaded.predictor, PyFuncModel):  # a model someone else packaged, trusted: MLflow loaded it
        model, limits = loaded.predictor, ServeParams()
    else:  # ours: the Predictor load_model built from the verified directory, in MLflow's wrapper
        meta = Model.load(Path(loaded.path) / "MLmodel")  # for the signature only: the rest is not signed
        model = PyFuncModel(model_meta=meta, model_impl=loaded.predictor, predict_fn="predict", model_id=meta.model_id)
        limits = loaded.predictor.limits
    bounds = RequestBounds.of(limits, len(loaded.input_names or ()))
    return RequestGuard(
        scoring_server.init(model), bounds, body_timeout=float(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get())
    )


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: any free port), or a one-line error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def run_server(app: ASGIApp, host: str, port: int, *, on_ready: Callable[[str], None]) -> None:
    """Serve `app` on host:port with uvicorn in this process until SIGINT (Ctrl-C) or SIGTERM, then return after
    a graceful shutdown (requests in flight finish). `on_ready(url)` once the socket accepts connections."""
    import uvicorn

    sock = listen(host, port)
    concurrency = os.environ.get("UVICORN_LIMIT_CONCURRENCY")  # as `mlflow models serve` honours it
    if concurrency is not None and not concurrency.isdigit():
        raise ConfigError(f"UVICORN_LIMIT_CONCURRENCY must be a number of connections, got {concurrency!r}")
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, server_header=False, timeout_graceful_shutdown=10,
        limit_concurrency=int(concurrency) if concurrency else None,
    )  # fmt: skip

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                bound_host, bound_port = sock.getsockname()[:2]
                on_ready(f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}")

    with _signals_stop_quietly():
        Server(config).run(sockets=[sock])


@contextmanager
def _signals_stop_quietly() -> Iterator[None]:
    """uvicorn catches SIGINT and SIGTERM, shuts down, then raises the signal again to the handlers it found:
    these do nothing, so the command returns normally (and cleans up its temporary model copy)."""
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
