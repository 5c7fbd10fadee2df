"""`mlflow models serve` on the registered champion: raw rows over REST, as a client of the served model sends them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import mlflow
import pandas as pd
import pytest

from components.data.dataset import read_dataset
from components.serving.values import raw_frame
from tests.e2e.servers import free_port, serving
from tests.e2e.test_registry import msa, params_for
from tests.integration.shell import BIN

pytestmark = pytest.mark.e2e


def request(url: str, body: dict) -> tuple[int, str]:
    """POST `body` as JSON; (status, response text), for error statuses too."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def dataframe_split(frame: pd.DataFrame) -> dict:
    """MLflow's `dataframe_split` payload: images inline as base64 text, sequences as nested lists of numbers."""
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}


def test_served_champion_answers_raw_rows_like_the_loaded_pyfunc(tiny_project, mlflow_server, tmp_path):
    name = "served"
    msa(tiny_project, mlflow_server, "register", "--params", str(params_for(tiny_project, name)))
    uri = f"models:/{name}@champion"
    frame = raw_frame(read_dataset(tiny_project / "data" / "raw"), "test", inline_images=True)
    rows = frame.drop(columns=["id", "label"])
    assert {"text", "image_base64", "audio", "vision"} <= set(rows.columns) and len(rows) >= 2
    rows.loc[1, "image_base64"] = None  # a row without an image

    mlflow.set_tracking_uri(mlflow_server)
    expected = mlflow.pyfunc.load_model(uri).predict(rows)

    port = free_port()
    args = [str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local"]
    args += ["-h", "127.0.0.1", "-p", str(port)]
    health, log = f"http://127.0.0.1:{port}/health", tmp_path / "serve.log"
    with serving(args, health, log, cwd=tiny_project, env={"MLFLOW_TRACKING_URI": mlflow_server}):
        invocations = f"http://127.0.0.1:{port}/invocations"
        status, text = request(invocations, dataframe_split(rows))
        assert status == 200, text
        served = pd.DataFrame(json.loads(text)["predictions"])
        assert list(served.columns) == ["score", "class"] and len(served) == len(rows)
        assert served["score"].to_numpy() == pytest.approx(expected["score"].to_numpy(), abs=1e-5)
        assert list(served["class"]) == list(expected["class"])

        # Schema enforcement answers a request without the required column before the model sees it.
        status, text = request(invocations, dataframe_split(rows.drop(columns=["text"])))
    assert status == 400, text
    error = json.loads(text)  # MLflow's own words, after its echo of the request's data
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "Model is missing inputs ['text']." in error["message"], error["message"]
