"""`msa serve`: MLflow's own scoring server for a verified model, behind a guard that measures each request first.

The app is MLflow's (`mlflow.pyfunc.scoring_server.init`: /invocations, /ping, /health, /version and their JSON),
built from the model `components.serving.pyfunc.load_model` loaded and verified, and run by uvicorn in this process on
loopback by default. A model this project packaged is served through the `Predictor` that load_model built: no
code from the model directory runs (`mlflow.pyfunc.load_model` would import the copy of `components` inside it).

Where each bound lives, and why:

- Here, before MLflow parses: the body's bytes (`serve.max_request_bytes`; 413 from Content-Length, or as soon as a
  streamed body passes it), and the shape that parsing would allocate (`components.serving.request_bounds`): rows
  in a Parquet body from its footer (`serve.max_rows`; 140 KB of Parquet can hold 50 million rows, which MLflow
  expands to gigabytes before the model could count them), rows and columns of a CSV body, and JSON nesting depth,
  rows, keys and the number of lists and objects, all by a scan outside strings, not by parsing. MLflow reads and
  parses the whole body before the model sees a row, so only this layer can refuse what is expensive to parse.
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
import json
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from components.core.config import ServeParams
from components.core.errors import ConfigError
from components.serving.request_bounds import JSON, Refused, RequestBounds, check_body

__all__ = [
    "MAX_ERROR_BYTES",
    "THREAD_OVER",
    "ASGIApp",
    "RequestGuard",
    "WithoutStackTrace",
    "guarded_app",
    "listen",
    "refuse",
    "run_server",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

THREAD_OVER = 256 * 1024  # bodies larger than this are scanned off the event loop (/ping answers meanwhile)
MAX_ERROR_BYTES = 1 << 20  # a JSON error response held to drop its stack trace; MLflow's are a few KB


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
        app,
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
        limit_concurrency=int(concurrency) if concurrency else None,
    )

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
