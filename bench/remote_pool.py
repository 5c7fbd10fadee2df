"""Benchmark: the demo pipeline with training dispatched to a worker that shares no disk, against training in-process.

In one run, on this machine, with the same servers for both: an MLflow server with proxied artifacts, a Prefect
server, a DVC remote directory (standing in for S3) holding the demo data, and a git repository of this project
that a process worker on the `gpu` pool clones into a HOME and workdir of its own. Each contender is `msa run
--force` in the repository after its outputs (features, models, reports, metrics) are removed, so both featurize
and train:

    in-process   pipeline.training: local       training in the pipeline's process, on the pipeline's disk
    dispatched   pipeline.training: deployment  the train-gpu deployment on the worker: clone, dvc pull,
                                                featurize, train; the model comes back through the tracking server

Reported: wall seconds of each; the artifact exchange itself (seconds the worker spent uploading checkpoints and
the model, and the pipeline downloading the model) and its share of the dispatched pipeline; the bytes moved; and
what else the difference holds (clone, dvc pull, the worker's own featurize, dispatch and polling). Goal: the
exchange at most 5% of the pipeline's wall time.

    python bench/remote_pool.py                      # params.yaml as it is
    python bench/remote_pool.py --epochs 3 --size 300 --finetune-epochs 0 --latency-runs 5   # a quick check
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
import yaml
from _support.machine import this_machine
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from devtools.servers import ServerError, free_port, serving  # noqa: E402 - the launcher the tests use too

RESULTS = Path(__file__).parent / "results" / "remote_pool.json"
BIN = Path(sys.executable).parent
PROJECT = (
    "params.yaml",
    "dvc.yaml",
    "data.dvc",
    ".dvc/config",
    ".dvcignore",
    "data/.gitignore",
    ".gitignore",
    "prefect.yaml",
    "components",
    "flows",
)
OUTPUTS = ("data/features", "models", "reports", "metrics")
EXCHANGE_GOAL = 0.05


def sh(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout


def make_repository(repo: Path, remote: Path, settings: dict, size: int, env: dict[str, str]) -> None:
    for name in PROJECT:
        source, target = ROOT / name, repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    for name, training in (("params.yaml", "deployment"), ("params-local.yaml", "local")):
        pipeline = {**settings["pipeline"], "training": training}
        (repo / name).write_text(yaml.safe_dump(settings | {"pipeline": pipeline}))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    sh(["git", "init", "-q", "-b", "main"], repo, env)
    sh([str(BIN / "msa"), "data", "demo", "--size", str(size)], repo, env)
    sh([str(BIN / "dvc"), "remote", "add", "--default", "--force", "bench", str(remote)], repo, env)
    sh([str(BIN / "dvc"), "add", "-q", "data/raw"], repo, env)
    sh([str(BIN / "dvc"), "push", "-q", "data.dvc"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh([*git, "commit", "-q", "-m", "bench"], repo, env)


def pipeline_run(repo: Path, env: dict[str, str], params: str, tracking: str) -> dict:
    """`msa run --force` from scratch; its wall seconds and what the tracking server recorded of its exchange."""
    from mlflow import MlflowClient

    for output in OUTPUTS:
        shutil.rmtree(repo / output, ignore_errors=True)
    started = time.perf_counter()
    out = sh([str(BIN / "msa"), "run", "--force", "--params", params], repo, env)
    wall = time.perf_counter() - started
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("msa-demo").experiment_id
    (parent,) = client.search_runs(
        [experiment], "tags.`msa.kind` = 'pipeline'", order_by=["start_time DESC"], max_results=1
    )
    its_training = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`msa.kind` = 'train'"
    (train,) = client.search_runs([experiment], its_training)
    metrics = parent.data.metrics | {f"train.{k}": v for k, v in train.data.metrics.items()}
    return {
        "seconds": wall,
        "run_seconds": (parent.info.end_time - parent.info.start_time) / 1000,
        "upload_seconds": metrics["train.upload_seconds"],
        "uploaded_mb": metrics["train.uploaded_mb"],
        "download_seconds": metrics.get("model_download_seconds", 0.0),
        "downloaded_mb": metrics.get("model_download_mb", 0.0),
        "epochs": metrics["train.epochs_run"],
        "outcome": out.strip().splitlines()[-1],
    }


def start(stack: ExitStack, args: list[str], health: str, log: Path, env: dict[str, str], cwd: Path) -> None:
    """A server on `stack` until the benchmark ends; one that does not start ends the benchmark with its log."""
    try:
        stack.enter_context(serving(args, health, log, cwd=cwd, env=env))
    except ServerError as e:
        raise SystemExit(str(e)) from None


def start_servers(stack: ExitStack, root: Path, threads: int) -> tuple[dict[str, str], str]:
    """An MLflow server with proxied artifacts and a Prefect server; (the environment naming both, the tracking URI)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    base |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HOME": str(root / "home")}
    base["PATH"] = f"{BIN}{os.pathsep}{base.get('PATH', '')}"  # the pull steps call dvc, as in an activated venv
    mlflow_port, prefect_port = free_port(), free_port()
    tracking, api = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{prefect_port}/api"
    env = base | {"MLFLOW_TRACKING_URI": tracking, "PREFECT_API_URL": api, "PREFECT_HOME": str(root / "prefect")}
    (root / "home").mkdir()
    mlflow = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"]
    mlflow += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art")]
    start(stack, mlflow, f"{tracking}/health", root / "mlflow.log", base, root)
    prefect = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)]
    prefect += ["--no-ui", "--no-scheduler", "--analytics-off"]
    start(stack, prefect, f"{api}/health", root / "prefect.log", env, root)
    return env, tracking


def start_gpu_worker(stack: ExitStack, root: Path, repo: Path, env: dict[str, str]) -> None:
    """The work pools and deployments, and a process worker on the `gpu` pool with a HOME and workdir of its own."""
    for pool in ("cpu", "gpu"):
        sh([str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process"], repo, env)
    sh([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], repo, env)
    worker_home, health = root / "gpu-machine", free_port()
    worker_home.mkdir()
    worker_env = env | {
        "HOME": str(worker_home),
        "PREFECT_HOME": str(worker_home / ".prefect"),
        "MSA_REPOSITORY": str(repo),
        "MSA_WORKDIR": str(worker_home / "work"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_WEBSERVER_PORT": str(health),
    }
    worker = [str(BIN / "prefect"), "worker", "start", "--pool", "gpu", "--with-healthcheck"]
    start(stack, worker, f"http://127.0.0.1:{health}/health", root / "worker.log", worker_env, worker_home)


def run_contenders(repo: Path, root: Path, env: dict[str, str], tracking: str, console: Console) -> dict[str, dict]:
    results = {}
    for name, params in (("in-process", "params-local.yaml"), ("dispatched", "params.yaml")):
        console.print(f"msa run --force ({name}) ...")
        try:
            results[name] = pipeline_run(repo, env, params, tracking)
        except SystemExit as e:
            raise SystemExit(f"{e}\n--- the gpu worker's log\n{(root / 'worker.log').read_text()[-4000:]}") from None
    return results


def report(results: dict[str, dict], size: int, console: Console) -> dict:
    """The table and the verdict on the console; the summary that goes into the results."""
    local, remote = results["in-process"], results["dispatched"]
    exchange = remote["upload_seconds"] + remote["download_seconds"]
    summary = {
        "exchange_seconds": exchange,
        "exchange_share": exchange / remote["seconds"],
        "wall_overhead": remote["seconds"] / local["seconds"] - 1,
        "moved_mb": remote["uploaded_mb"] + remote["downloaded_mb"],
        "goal_exchange_share": EXCHANGE_GOAL,
        "met": exchange / remote["seconds"] <= EXCHANGE_GOAL,
    }
    table = Table(title=f"demo pipeline ({size} samples), training in-process vs on a worker without a shared disk")
    for column in ("contender", "wall s", "epochs", "upload s", "uploaded MB", "download s", "downloaded MB"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['seconds']:.1f}",
            f"{r['epochs']:.0f}",
            f"{r['upload_seconds']:.2f}",
            f"{r['uploaded_mb']:.1f}",
            f"{r['download_seconds']:.2f}",
            f"{r['downloaded_mb']:.1f}",
        )
    console.print(table)
    console.print(
        f"artifact exchange: {exchange:.2f} s = {summary['exchange_share']:.1%} of the dispatched pipeline "
        f"(goal <= {EXCHANGE_GOAL:.0%}: {'met' if summary['met'] else 'MISSED'}); {summary['moved_mb']:.1f} MB moved; "
        f"whole wall time {summary['wall_overhead']:+.1%} against in-process (clone, dvc pull, the worker's featurize, "
        "dispatch and polling included)"
    )
    return summary


def main(
    epochs: Annotated[int | None, typer.Option(min=1, help="train.epochs (default: params.yaml's).")] = None,
    size: Annotated[int, typer.Option(min=30, help="Demo dataset size.")] = 1000,
    finetune_epochs: Annotated[int | None, typer.Option(min=0, help="compress.finetune_epochs.")] = None,
    latency_runs: Annotated[int | None, typer.Option(min=1, help="compress.latency_runs.")] = None,
    threads: Annotated[int, typer.Option(min=1, help="OMP/MKL threads of every process.")] = 1,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = RESULTS,
) -> None:
    settings = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides = (
        ("train", "epochs", epochs),
        ("compress", "finetune_epochs", finetune_epochs),
        ("compress", "latency_runs", latency_runs),
    )
    for section, key, value in overrides:
        if value is not None:
            settings[section][key] = value
    console = Console(width=120)
    with tempfile.TemporaryDirectory(prefix="msa-bench-pool-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        console.print("starting an MLflow server (proxied artifacts) and a Prefect server ...")
        env, tracking = start_servers(stack, root, threads)
        repo = root / "msa"
        console.print(f"a repository with the {size}-sample demo in a DVC remote; pools, deployments, a gpu worker")
        make_repository(repo, root / "dvc-remote", settings, size, env)
        start_gpu_worker(stack, root, repo, env)
        results = run_contenders(repo, root, env, tracking, console)
    summary = report(results, size, console)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    machine = this_machine()  # torch's threads here are this process's; the stages ran with --threads
    settings = {
        "size": size,
        "threads": threads,
        "epochs": epochs,
        "machine": machine.summary,
        "date": machine.date,
        "machine_details": machine.details,
    }
    json_path.write_text(json.dumps({"settings": settings, "results": results, "summary": summary}, indent=2) + "\n")
    console.print(f"-> {json_path}")


if __name__ == "__main__":
    typer.run(main)
