"""Screenshots of the MLflow UI while `msa run` trains, for the README: what a user sees of a live run.

In a temporary copy of the project: the demo dataset, an `mlflow server` with proxied artifacts on loopback, and
`msa run` against it. Once the pipeline's run has a few epochs of curves, headless Chromium (Debian's `chromium`)
takes the experiment's runs table and the parent run's metrics page; then the run is left to finish.

    python docs/capture_live_run.py [--epochs 4] [--out docs]
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Annotated

import typer
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COPY = ("params.yaml", "dvc.yaml", "data.dvc", ".dvc/config", ".dvcignore", "data/.gitignore")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def screenshot(url: str, path: Path, size: str = "1500,900") -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={size}", "--virtual-time-budget=20000",
             f"--screenshot={path}", url],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip


def main(
    epochs_seen: Annotated[int, typer.Option("--epochs", help="Epochs of curves to wait for.")] = 4,
    out: Annotated[Path, typer.Option(help="Where the PNGs go.")] = ROOT / "docs",
) -> None:
    with tempfile.TemporaryDirectory(prefix="msa-live-") as tmp:
        project = Path(tmp)
        for name in COPY:
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
        port = free_port()
        uri = f"http://127.0.0.1:{port}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}", "--artifacts-destination",
             str(project / "artifacts")],
            cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        pipeline = None
        try:
            while True:
                try:
                    urllib.request.urlopen(f"{uri}/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            subprocess.run([str(BIN / "msa"), "data", "demo"], cwd=project, env=env, check=True)
            pipeline = subprocess.Popen([str(BIN / "msa"), "run"], cwd=project, env=env, start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            client = MlflowClient(uri)
            while True:
                assert pipeline.poll() is None, "msa run ended before the screenshots"
                experiment = client.get_experiment_by_name("msa-demo")
                runs = (
                    client.search_runs([experiment.experiment_id], "tags.`msa.kind` = 'pipeline'") if experiment else []
                )
                if runs and len(client.get_metric_history(runs[0].info.run_id, "epoch_valid_mae")) >= epochs_seen:
                    break
                time.sleep(1)
            exp, run = experiment.experiment_id, runs[0].info.run_id
            screenshot(f"{uri}/#/experiments/{exp}?workflowType=machine_learning", out / "mlflow-live-runs.png")
            screenshot(f"{uri}/#/experiments/{exp}/runs/{run}/model-metrics?workflowType=machine_learning",
                       out / "mlflow-live-run.png")  # fmt: skip
            print(f"-> {out / 'mlflow-live-runs.png'}, {out / 'mlflow-live-run.png'}")
        finally:
            for process in (pipeline, server):
                if process is not None and process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
                    try:
                        process.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()


if __name__ == "__main__":
    typer.run(main)
