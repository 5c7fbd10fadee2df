"""Screenshots of the MLflow UI after two tiny real pipeline runs, for the docs: what a user sees in MLflow.

In a temporary clone of this repository (at HEAD, so the runs carry its git commit and branch): a small synthetic
demo dataset, an `mlflow server` with proxied artifacts on loopback, and `msa run` twice against it, the second
with more epochs and a gate margin no model beats, so that version 1 stays `champion` and version 2 is `challenger`.
Then headless Chromium (Debian's `chromium`, over the DevTools protocol) takes:

    docs/images/mlflow-runs.png      the experiment's runs table (model-training view), runs expanded
    docs/images/mlflow-run.png       the fusion head's run: its params, dataset, duration, source and git commit
    docs/images/mlflow-compare.png   the compare view of the second pipeline run's head runs
    docs/images/mlflow-registry.png  the registered model: its versions and their champion/challenger aliases

    python docs/capture_mlflow.py [--out docs/images] [--keep DIR]

With --keep DIR the project and its MLflow store stay in DIR, and a later call with the same DIR takes the
screenshots again without running the pipeline.

It takes a few minutes on a laptop's CPU (two short trainings, compression, robustness, registration).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Annotated, ClassVar

import typer
import yaml
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))
from components import tracking  # noqa: E402 - after the path setup above
from components.evaluation.logged import HEAD  # noqa: E402 - the links the pipeline prints
from devtools.servers import free_port, serving, stop_group  # noqa: E402 - the launcher the tests use too

SETTINGS = {  # small enough for minutes on a CPU; everything else is params.yaml's
    ("data", "demo", "size"): 60,
    ("train", "epochs"): 3,
    ("robustness", "perturbations"): {"text_typos": [0.3], "missing_image": [0.5]},
    ("compress", "variants"): ["int8", "prune_unstructured", "onnx_fp32"],
    ("compress", "finetune_epochs"): 1,
    ("compress", "latency_runs"): 10,
}
SECOND = {("train", "epochs"): 5, ("register", "margin"): 100.0}  # trains longer; the gate keeps v1 champion


class Browser:
    """Headless Chromium (Debian's `chromium`) driven over the DevTools protocol: the MLflow UI's first visit opens
    its Assistant panel over a third of the page, which only the page's own storage can keep closed."""

    STORAGE: ClassVar[dict[str, str]] = {
        "mlflow.assistant.panelOpen_v1": "false",
        "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
    }
    FLAGS = (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    )

    def __init__(self, profile: Path) -> None:
        from websockets.sync.client import connect

        port = free_port()
        args = ["chromium", *self.FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "about:blank"]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as answer:
                    page = next(t for t in json.load(answer) if t["type"] == "page")
                break
            except (OSError, StopIteration):
                time.sleep(0.3)
        self.socket, self.calls = connect(page["webSocketDebuggerUrl"], max_size=None), 0

    def call(self, method: str, **params: object) -> dict:
        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.calls:
                return message.get("result", {})

    def screenshot(self, url: str, path: Path, width: int = 1600, height: int = 1000, wait: float = 8.0) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=url)
        time.sleep(2)
        settings = "".join(f"localStorage.setItem({k!r}, {v!r});" for k, v in self.STORAGE.items())
        self.call("Runtime.evaluate", expression=settings)
        self.call("Page.reload")
        time.sleep(wait)
        shot = self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        print(f"-> {path}  ({url})")

    def close(self) -> None:
        self.socket.close()
        stop_group(self.process, timeout=30)


def set_params(path: Path, settings: dict[tuple[str, ...], object]) -> None:
    params = yaml.safe_load(path.read_text())
    for keys, value in settings.items():
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def clone(project: Path) -> None:
    """A clone of HEAD that names the same remote (if any) as this repository; nothing here is changed."""
    subprocess.run(["git", "clone", "-q", "--shared", str(ROOT), str(project)], check=True)
    origin = subprocess.run(["git", "-C", str(ROOT), "remote", "get-url", "origin"], capture_output=True, text=True)
    if origin.returncode == 0:
        subprocess.run(["git", "-C", str(project), "remote", "set-url", "origin", origin.stdout.strip()], check=True)
    else:
        subprocess.run(["git", "-C", str(project), "remote", "remove", "origin"], check=True)


def run_pipelines(project: Path, params: Path, env: dict[str, str]) -> None:
    """The demo dataset and two `msa run`: version 1 (champion), then version 2 (challenger, SECOND's settings)."""
    msa = str(BIN / "msa")
    subprocess.run([msa, "data", "demo"], cwd=project, env=env, check=True)
    subprocess.run([msa, "run"], cwd=project, env=env, check=True)
    set_params(params, SECOND)
    subprocess.run([msa, "run"], cwd=project, env=env, check=True)


def screenshots(uri: str, out: Path, profile: Path) -> None:
    """The runs table, the fusion head's run, the compare view of the latest pipeline run's heads, the registry."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("msa-demo").experiment_id
    parents = client.search_runs([experiment], "tags.`msa.kind` = 'pipeline'", order_by=["start_time DESC"])
    latest = parents[0].info.run_id
    heads = tracking.child_runs(client, latest, "head")
    fusion = next(r.info.run_id for r in heads if r.data.tags.get(HEAD) == "fusion")
    ids = json.dumps([r.info.run_id for r in heads])
    out.mkdir(parents=True, exist_ok=True)
    browser = Browser(profile)
    try:
        browser.screenshot(tracking.ui_url(experiment), out / "mlflow-runs.png")
        browser.screenshot(tracking.ui_url(experiment, fusion), out / "mlflow-run.png", height=1300)
        compare = urllib.parse.urlencode({"runs": ids, "experiments": json.dumps([experiment])})
        url = f"{uri}/#/compare-runs?{compare}&{tracking.WORKFLOW}"
        browser.screenshot(url, out / "mlflow-compare.png", height=1400)
        browser.screenshot(tracking.model_url("msa-demo"), out / "mlflow-registry.png", height=2000)
    finally:
        browser.close()


def main(
    out: Annotated[Path, typer.Option(help="Where the PNGs go.")] = ROOT / "docs" / "images",
    keep: Annotated[Path | None, typer.Option(help="Keep the project and its MLflow store here (reused).")] = None,
) -> None:
    tmp = keep.resolve() if keep is not None else Path(tempfile.mkdtemp(prefix="msa-mlflow-"))
    project, params = tmp / "project", tmp / "project" / "params.yaml"
    fresh = not (tmp / "mlflow.db").is_file()
    if fresh:
        tmp.mkdir(parents=True, exist_ok=True)
        clone(project)
        set_params(params, SETTINGS)
        (project / "data.dvc").unlink()  # it describes the full demo dataset: the runs' digest is the data's own hash
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    os.environ["MLFLOW_TRACKING_URI"] = uri  # the links tracking.ui_url makes
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_HOME": str(tmp / "prefect"),
    }
    server = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server += [
        "--backend-store-uri",
        f"sqlite:///{tmp / 'mlflow.db'}",
        "--artifacts-destination",
        str(tmp / "artifacts"),
    ]
    try:
        with serving(server, f"{uri}/health", tmp / "mlflow.log", cwd=tmp, env=env):
            if fresh:
                run_pipelines(project, params, env)
            screenshots(uri, out, tmp / "chromium")
    finally:
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    typer.run(main)
