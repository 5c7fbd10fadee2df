"""The request guard of `msa serve` (components.serving.guard) in this process: bodies over a bound are refused
before the app behind it reads a byte, the rest reach it unchanged; and the JSON scan measures what parsing would."""

from __future__ import annotations

import asyncio
import io
import json
import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.core.config import ServeParams
from components.core.errors import ConfigError
from components.serving.guard import MAX_ERROR_BYTES, RequestGuard, listen
from components.serving.request_bounds import Refused, RequestBounds, check_csv, check_json

BOUNDS = RequestBounds(max_bytes=4_500, max_rows=8, max_columns=10, max_depth=64, max_containers=200)


class Echo:
    """The app behind the guard: reads the whole body, keeps it, answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(
    body: bytes | list[bytes] = b"",
    content_type: str | None = "application/json",
    *,
    length: int | None = None,
    method: str = "POST",
    bounds: RequestBounds = BOUNDS,
) -> tuple[int, dict, bytes, Echo, int]:
    """(status, headers, response body, the app behind, chunks the guard received) of one request. A list body
    arrives in those chunks without Content-Length (chunked transfer)."""
    chunks = body if isinstance(body, list) else [body]
    headers = [] if content_type is None else [(b"content-type", content_type.encode())]
    if length is not None or not isinstance(body, list):
        headers.append((b"content-length", str(len(body) if length is None else length).encode()))
    scope = {"type": "http", "method": method, "path": "/invocations", "headers": headers}
    pulled, sent, app = [0], [], Echo()

    async def receive():
        i = pulled[0]
        pulled[0] += 1
        if i < len(chunks):
            return {"type": "http.request", "body": chunks[i], "more_body": i < len(chunks) - 1}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(RequestGuard(app, bounds)(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), answer, app, pulled[0]


def refusal(answer: bytes) -> str:
    content = json.loads(answer)
    assert set(content) == {"error_code", "message"} and content["error_code"] == "BAD_REQUEST", content
    return content["message"]


def records(n: int, **cells) -> bytes:
    return json.dumps({"dataframe_records": [{"text": "a fine film"} | cells] * n}).encode()


def nested(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


def test_a_body_within_the_bounds_reaches_the_app_unchanged() -> None:
    body = records(8, audio=[[0.1, 0.2]] * 3)
    status, _, _, app, _ = call(body)
    assert status == 200 and app.bodies == [body]
    split = json.dumps({"dataframe_split": {"index": list(range(8)), "columns": ["text"], "data": [["x"]] * 8}})
    assert call(split.encode())[0] == 200  # index and data: 8 rows each, not 16


def test_content_length_over_the_bound_is_413_before_a_byte_is_read() -> None:
    status, headers, answer, app, pulled = call([b"{}"], length=10**12)
    assert (status, pulled, app.bodies) == (413, 0, [])
    assert headers[b"connection"] == b"close"
    assert refusal(answer) == "the request body is 1000000000000 bytes; at most 4500 (serve.max_request_bytes)"


def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_bound() -> None:
    status, _, answer, app, pulled = call([b" " * 1000] * 100)  # chunked: no Content-Length to go by
    assert (status, pulled, app.bodies) == (413, 5, [])
    assert refusal(answer) == "the request body is over 4500 bytes (serve.max_request_bytes)"


@pytest.mark.parametrize(("depth", "status"), [(64, 200), (65, 400), (100, 400)])
def test_json_nested_deeper_than_the_bound_is_refused(depth: int, status: int) -> None:
    got, _, answer, app, _ = call(nested(depth))
    assert got == status
    if status == 400:
        assert refusal(answer) == f"the JSON is nested {depth} levels deep; at most 64" and not app.bodies


def test_brackets_quotes_and_backslashes_inside_strings_are_text() -> None:
    texts = ["[[[[{{{{", 'say "[[[[" twice', "ends in a backslash \\", '\\"[[[[', "\\\\\\[[", "日本語 [[ ]] ,,,,,,,,,,"]
    for text in texts:
        assert call(records(2, text=text * 10))[0] == 200, text
        assert call(json.dumps({"inputs": {"text": [text * 10]}}, ensure_ascii=False).encode())[0] == 200, text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (records(9), "more than 8 rows in one request; at most 8 (serve.max_rows)"),
        (json.dumps({"instances": [["x"]] * 9}).encode(), "more than 8 rows in one request"),
        (json.dumps([{"text": "x"}] * 9).encode(), "more than 8 rows in one request"),
        (
            json.dumps({"dataframe_split": {"columns": ["text"], "data": [["x"]] * 11}}).encode(),
            "a JSON array of more than 10 rows or columns; at most 8 rows (serve.max_rows)",
        ),
        (
            json.dumps({"dataframe_records": [{f"c{i}": 0 for i in range(11)}]}).encode(),
            "a JSON object of more than 10 keys; at most 10 columns",
        ),
        (
            json.dumps({"dataframe_records": [{"audio": [[]] * 300}]}).encode(),
            "the JSON holds more than 200 lists and objects; at most 200",
        ),
        ('{"text": "x"}'.encode("utf-16"), "a JSON request must be UTF-8"),
    ],
    ids=["records", "instances", "top-level-list", "split-data", "row-keys", "lists", "utf-16"],
)
def test_json_over_a_bound_is_refused_before_parsing(body: bytes, message: str) -> None:
    status, _, answer, app, _ = call(body)
    assert status == 400 and message in refusal(answer) and not app.bodies


def test_the_json_bounds_follow_the_models_packaged_limits() -> None:
    bounds = RequestBounds.of(ServeParams(max_rows=8, max_frames=16, max_request_bytes=10**6), columns=5)
    assert (bounds.max_bytes, bounds.max_rows, bounds.max_columns) == (10**6, 8, 64)
    frames = [[0.1, 0.2, 0.3]] * 16
    row = {"text": "x", "image_base64": "QUJD", "audio": frames, "vision": frames}
    full = {"dataframe_split": json.loads(pd.DataFrame([row] * 8).to_json(orient="split"))}
    check_json(json.dumps(full).encode(), bounds)  # the largest request the model takes passes the guard


def _random_json(rng: random.Random, depth: int = 0):
    alphabet = 'ab[]{},:"\\ \n/é日🙂'
    kind = rng.random()
    if depth > 5 or kind < 0.4:
        return rng.choice([rng.randint(-5, 5), 0.5, None, True, "".join(rng.choices(alphabet, k=rng.randint(0, 8)))])
    if kind < 0.75:
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ("".join(rng.choices(alphabet, k=rng.randint(0, 4))) for _ in range(rng.randint(0, 3)))
    return {key: _random_json(rng, depth + 1) for key in keys}


def _measure(value, depth: int = 1) -> tuple[int, int, int]:
    """(nesting depth, most items of an array at the top two levels, lists and objects) by walking the parse."""
    if not isinstance(value, list | dict):
        return depth - 1, 0, 0
    children = [_measure(v, depth + 1) for v in (value if isinstance(value, list) else value.values())]
    items = len(value) if isinstance(value, list) and depth <= 2 else 0
    return (
        max([depth] + [c[0] for c in children]),
        max([items] + [c[1] for c in children]),
        1 + sum(c[2] for c in children),
    )


def test_the_scan_measures_what_parsing_finds_whatever_the_chunks() -> None:
    rng = random.Random(7)
    checked = 0
    for _ in range(200):
        value = _random_json(rng)
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        depth, items, containers = _measure(value)
        chunk = rng.choice([1, 2, 3, 7, 64, 1 << 20]) if len(text) < 400 else rng.choice([64, 1 << 20])
        exact = RequestBounds(
            10**9, max_rows=max(items, 1), max_columns=10**6, max_depth=depth, max_containers=containers
        )
        check_json(text, exact, chunk=chunk)  # at each bound: passes
        for tighter, words in [
            ({"max_depth": depth - 1}, "nested"),
            ({"max_containers": containers - 1}, "lists and objects"),
            ({"max_rows": items - 1}, "rows in one request"),
        ]:
            if depth < 1 or (words == "rows in one request" and items < 2):
                continue
            bounds = RequestBounds(**(vars(exact) | tighter))
            with pytest.raises(Refused, match=words):
                check_json(text, bounds, chunk=chunk)
            checked += 1
    assert checked > 200


def _parquet(columns: dict) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def test_parquet_rows_are_counted_from_the_footer() -> None:
    parquet = "application/vnd.apache.parquet"
    good = _parquet({"text": ["a fine film", "a dull one"]})
    assert call(good, parquet)[:1] == (200,)
    n = 1_000_000  # one repeated string, dictionary-encoded: a few KB that pandas expands to 1,000,000 objects
    text = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int8)), pa.array(["the same review"]))
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": text}), buffer, row_group_size=n, store_schema=False)
    assert len(buffer.getvalue()) < 4_500
    status, _, answer, app, _ = call(buffer.getvalue(), parquet)
    assert status == 400 and not app.bodies
    assert refusal(answer) == "1000000 rows in one request; at most 8 (serve.max_rows)"
    wide = _parquet({f"c{i}": [0] for i in range(11)})
    assert refusal(call(wide, parquet)[2]) == "11 Parquet columns; at most 10"
    assert refusal(call(b"PAR1 not parquet PAR1", parquet)[2]) == "the request is not a readable Parquet file"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"text\n" + b"a fine film\n" * 8, 200),
        (b"text\r\n" + b"a fine film\r\n" * 8, 200),
        (b"text\n" + b"a fine film\n" * 7 + b"no newline at the end", 200),
        (b"text\n" + b'"one text\nover\nmany\nlines"\n' * 8, 200),  # newlines inside quotes are text
        (b"text\n" + b'"she said ""hi""\n, twice"\n' * 8, 200),
        (b"text\n" + b"a fine film\n" * 9, 400),
        (b"text\n" + b"a fine film\n" * 8 + b"and one more", 400),
        (b"text\r" + b"old mac\r" * 9, 400),
        (b'text\na"b\n' + b"c\n" * 9, 400),  # a quote inside a field is text: it hides no lines
        (b"text\n" + b'"x" trailing, "\n' * 9, 400),
        (b"text\n" + b"," * 10 + b"\n", 400),  # 11 fields
    ],
)
def test_csv_rows_and_fields_are_counted_as_pandas_reads_them(body: bytes, status: int) -> None:
    got, _, answer, _, _ = call(body, "text/csv")
    assert got == status, answer
    if status == 200:
        assert pd.read_csv(io.BytesIO(body)).shape[0] <= 8  # what MLflow reads: no more rows than counted
    else:
        assert "rows in one request" in refusal(answer) or "fields" in refusal(answer)


def test_csv_scan_steps_are_bounded_by_rows_and_fields() -> None:
    with pytest.raises(Refused, match="more than 8 CSV rows"):
        check_csv(b"text\n" + b"x\n" * 50_000_000, BOUNDS)  # refused at the 10th line, not after 50 million


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", None])
def test_what_mlflow_does_not_take_passes_to_it_under_the_byte_bound(content_type: str | None) -> None:
    status, _, _, app, _ = call(nested(100), content_type)
    assert status == 200 and app.bodies == [nested(100)]
    assert call([b"x" * 5000], content_type)[0] == 413


def test_a_get_passes_through() -> None:
    status, _, _, app, _ = call(b"", None, method="GET")
    assert status == 200 and app.bodies == [b""]


def test_with_mlflows_own_app_the_formats_and_statuses_are_mlflows() -> None:
    import httpx
    from mlflow.models import Model
    from mlflow.pyfunc import PyFuncModel, scoring_server

    class Scores:
        def predict(self, frame: pd.DataFrame, params=None) -> pd.DataFrame:
            return pd.DataFrame({"score": [float(len(t)) for t in frame["text"]]})

    app = RequestGuard(scoring_server.init(PyFuncModel(Model(), Scores())), BOUNDS)

    async def requests() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://guarded") as client:
            post = client.post
            return [
                await client.get("/ping"),
                await post("/invocations", content=records(2), headers={"content-type": "application/json"}),
                await post("/invocations", content=nested(100), headers={"content-type": "application/json"}),
                await post("/invocations", content=b"text", headers={"content-type": "text/plain"}),
                await post("/invocations", content=b"x" * 5000, headers={"content-type": "text/plain"}),
                await post("/invocations", content=b'text\n"never closed', headers={"content-type": "text/csv"}),
            ]

    ping, good, deep, plain, large, bad_csv = asyncio.run(requests())
    assert ping.status_code == 200
    assert good.status_code == 200 and good.json() == {"predictions": [{"score": 11.0}, {"score": 11.0}]}
    assert deep.status_code == 400 and deep.json()["message"] == "the JSON is nested 100 levels deep; at most 64"
    assert plain.status_code == 415 and "content types" in plain.text  # MLflow's own answer
    assert large.status_code == 413
    # MLflow's answer to a CSV pandas cannot read carries a stack trace (server paths): the guard drops it
    assert bad_csv.status_code == 400 and bad_csv.json()["message"].startswith("Failed to parse input as a Pandas")
    assert "stack_trace" not in bad_csv.json() and ".py" not in bad_csv.text and "Traceback" not in bad_csv.text
    assert int(bad_csv.headers["content-length"]) == len(bad_csv.content)


def answered_by(status: int, content_type: bytes, parts: list[bytes], *, max_bytes: int = MAX_ERROR_BYTES):
    """(status, headers, body) the client gets when the app behind the guard answers `parts` with `status`."""

    async def app(scope, receive, send) -> None:
        await receive()
        headers = [(b"content-type", content_type), (b"content-length", str(sum(map(len, parts))).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1})

    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/invocations", "headers": []}
    asyncio.run(RequestGuard(app, BOUNDS, max_error_bytes=max_bytes)(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def test_a_stack_trace_in_an_error_from_the_app_is_dropped() -> None:
    error = {"error_code": "BAD_REQUEST", "message": "Failed to parse input", "stack_trace": "File /srv/app.py"}
    text = json.dumps(error).encode()
    status, headers, body = answered_by(400, b"application/json; charset=utf-8", [text[:20], text[20:]])
    assert status == 400 and json.loads(body) == {"error_code": "BAD_REQUEST", "message": "Failed to parse input"}
    assert headers[b"content-length"] == str(len(body)).encode() and headers[b"content-type"].startswith(b"appl")

    for answer in [
        (200, b"application/json", [text]),
        (400, b"text/plain", [text]),
        (504, b"application/json", [b"Request processing time exceeded limit"]),
        (500, b"application/json", [b"[1, 2]"]),
    ]:
        assert answered_by(*answer)[2] == b"".join(answer[2])  # not a JSON error object: passed on as it is

    status, headers, body = answered_by(400, b"application/json", [text[:40], text[40:]], max_bytes=50)
    assert status == 400 and json.loads(body) == {"error_code": "BAD_REQUEST", "message": "the request failed (400)"}
    assert headers[b"content-length"] == str(len(body)).encode()


def test_a_port_in_use_is_one_line() -> None:
    with listen("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        taken.listen()
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            listen("127.0.0.1", port).close()
