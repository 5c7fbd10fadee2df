"""`msa serve` as a user starts it: MLflow's scoring server on loopback for the tiny packaged model, scoring as
`msa predict` does, with the request guard refusing what would be expensive to parse (a Parquet body of 50 million
rows, JSON nested 100 deep, a body over the byte bound) fast and without the server's memory moving; Ctrl-C stops
it with exit code 0."""

from __future__ import annotations

import http.client
import io
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.data.dataset import read_dataset
from components.serving.values import raw_frame
from tests.conftest import SERVE_LIMITS
from tests.e2e.servers import free_port, serving
from tests.hardening import msa
from tests.integration.shell import BIN

pytestmark = pytest.mark.e2e

BOMB_ROWS = 50_000_000


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


@pytest.fixture(scope="module")
def server(
    served_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """`msa serve MODEL --port N`; at the end, Ctrl-C (SIGINT), which must stop it cleanly."""
    root = tmp_path_factory.mktemp("msa-serve")
    port, log = free_port(), root / "serve.log"
    args = [str(BIN / "msa"), "serve", str(served_model), "--port", str(port)]
    with serving(args, f"http://127.0.0.1:{port}/ping", log, cwd=root) as process:
        yield f"http://127.0.0.1:{port}", process, log
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
        assert log.read_text().rstrip().endswith("serve: stopped")


def test_it_says_where_it_listens_and_scores_as_msa_predict(
    server, served_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, log = server
    assert f"serve: {served_model} at {url}/invocations (Ctrl-C stops)" in log.read_text()
    for path in ("/ping", "/health", "/version"):
        with urllib.request.urlopen(url + path, timeout=10) as response:
            assert response.status == 200

    rows = raw_frame(read_dataset(served_model.parent / "raw"), "test", inline_images=True).drop(
        columns=["id", "label"]
    )
    rows = rows.head(SERVE_LIMITS["max_rows"])
    body = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
    status, text = post(f"{url}/invocations", json.dumps(body).encode())
    assert status == 200, text
    served = [p["score"] for p in json.loads(text)["predictions"]]

    (tmp_path / "rows.jsonl").write_text(rows.to_json(orient="records", lines=True))
    monkeypatch.chdir(tmp_path)
    assert msa("predict", "--model", served_model, "--input", "rows.jsonl").code == 0
    expected = pd.read_json(tmp_path / "rows.predictions.jsonl", lines=True)["score"].to_list()
    assert served == pytest.approx(expected, abs=1e-5) and len(served) == len(rows)


def test_only_the_rows_that_ask_get_an_explanation(server) -> None:
    url, _, _ = server
    records = [{"text": "a warm and lovely film", "explain": True}, {"text": "dull and far too long"}]
    status, text = post(f"{url}/invocations", json.dumps({"dataframe_records": records}).encode())
    assert status == 200, text
    asked, silent = json.loads(text)["predictions"]
    assert asked["modality_shares"] == {"text": 1.0} and asked["top_words"], asked
    assert silent.get("modality_shares") is None and silent.get("top_words") is None, silent


def parquet_bomb(rows: int) -> bytes:
    """One `text` column of `rows` identical strings: dictionary-encoded, a few hundred KB; read by pandas, as
    MLflow reads it, gigabytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int8)), pa.array(["what a wonderful film"]))
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": text}), buffer, row_group_size=rows, store_schema=False)  # stored as strings
    return buffer.getvalue()


def test_a_parquet_bomb_is_refused_fast_with_flat_memory(server) -> None:
    url, process, _ = server
    bomb = parquet_bomb(BOMB_ROWS)
    assert len(bomb) < 1_000_000
    before = memory(process.pid)
    start = time.monotonic()
    status, text = post(f"{url}/invocations", bomb, "application/vnd.apache.parquet")
    seconds = time.monotonic() - start
    after = memory(process.pid)
    assert status == 400, text
    assert json.loads(text) == {
        "error_code": "BAD_REQUEST",
        "message": f"{BOMB_ROWS} rows in one request; at most {SERVE_LIMITS['max_rows']} (serve.max_rows)",
    }
    assert seconds < 5
    grew = after["VmHWM"] - before["VmHWM"]
    print(f"server RSS {before['VmRSS'] / 2**20:.0f} MB, peak grew {grew / 2**20:.1f} MB for the bomb")
    assert grew < 50 * 2**20  # unguarded, MLflow's pandas read of it peaks over 2 GB


def test_json_nested_100_deep_is_refused(server) -> None:
    url, _, _ = server
    status, text = post(f"{url}/invocations", b'{"inputs": ' + b"[" * 100 + b"]" * 100 + b"}")
    assert status == 400
    assert json.loads(text) == {
        "error_code": "BAD_REQUEST",
        "message": "the JSON is nested 101 levels deep; at most 64",
    }


def test_a_body_declared_over_the_byte_bound_is_413_before_it_is_sent(server) -> None:
    url, _, _ = server
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    try:
        connection.putrequest("POST", "/invocations")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(10**9))
        connection.endheaders()  # and not a byte of the body
        response = connection.getresponse()
        status, content = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert status == 413
    assert content["message"] == "the request body is 1000000000 bytes; at most 64000000 (serve.max_request_bytes)"
