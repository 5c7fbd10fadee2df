"""Training in containers on a Docker work pool, as a team runs it.

The project's image is built from the Dockerfile on a base made from Debian's packages (both cached by content
between runs; no registry is reached), and the `gpu` pool is a Docker pool created from deploy/pools/docker-gpu.json
with a Docker worker. This machine has no GPU: the test takes the pool's device request out and gives its containers
the host's network, to reach the servers on loopback. The servers are a team's: a Prefect server behind a login, an
MLflow server with the basic-auth app and proxied artifacts, a git server and a DVC remote over HTTP.

A training container shares no directory with anything: it clones the repository from the git server, pulls the
dataset from the DVC remote, logs in to MLflow with the login the pool takes from a Prefect variable and a Secret
block, and hands the model back through the tracking server. Killed mid-training, it is replaced by a fresh container
that resumes from the checkpoint on the tracking server; the pipeline, on a process worker of the `cpu` pool,
downloads the model, checks its digest and registers it. The test stops and removes every container, server and
process it started (and dockerd, if it started it); the images stay, as the cache of the next run.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from mlflow import MlflowClient

from devtools.images import DockerUnavailable, base_image, docker_daemon, project_image
from devtools.servers import stop_group
from tests.e2e.pools import MODEL, make_repository, stored_checkpoint, tail
from tests.e2e.servers import free_port, serving
from tests.integration.conftest import REPO
from tests.integration.shell import BIN, run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # minutes (an image build when the tree changed): `make test-all`

EPOCHS = 16  # the kill comes a checkpoint or two in: the replacement trains the rest
SILENCE_S = 12  # pipeline.train_silence
RUN_TIMEOUT_S = 900
POOL_TEMPLATE = REPO / "deploy" / "pools" / "docker-gpu.json"
CONTAINER_LABEL = "io.prefect.work-pool-name=gpu"  # prefect-docker labels each container with its pool


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Docker client with a daemon: the running one, or dockerd started for this module (skips without Docker)."""
    with ExitStack() as stack:
        try:
            cli = stack.enter_context(docker_daemon(tmp_path_factory.mktemp("dockerd") / "dockerd.log"))
        except DockerUnavailable as missing:
            pytest.skip(str(missing))
        yield cli


@pytest.fixture(scope="module")
def image(docker: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The project's image of this tree, on the Debian base: built unless the same tree's image exists."""
    try:
        return project_image(docker, base_image(docker), tmp_path_factory.mktemp("image") / "build.log")
    except DockerUnavailable as missing:
        pytest.skip(str(missing))


@contextmanager
def tracking_server(root: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """MLflow with the basic-auth app and proxied artifacts; yields its URL and the pipeline user's login."""
    port, admin = free_port(), secrets.token_urlsafe(16)
    url = f"http://127.0.0.1:{port}"
    root.mkdir()
    config = root / "auth.ini"
    config.write_text(
        f"[mlflow]\ndatabase_uri = sqlite:///{root / 'auth.db'}\ndefault_permission = READ\nadmin_username = admin\n"
    )
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    args = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art")]
    with serving([*args, "--workers", "1"], f"{url}/health", root / "mlflow.log", cwd=root, env=env):
        login = {"username": "msa-pipeline", "password": secrets.token_urlsafe(16)}
        httpx.post(f"{url}/api/2.0/mlflow/users/create", json=login, auth=("admin", admin)).raise_for_status()
        yield url, login


@contextmanager
def git_server(base: Path, log: Path) -> Iterator[str]:
    """`git daemon` serving the repositories under `base` on loopback; yields the URL of base/msa."""
    port = free_port()
    args = ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}", "--listen=127.0.0.1"]
    with log.open("w") as sink:
        daemon = subprocess.Popen(
            [*args, f"--port={port}", str(base)], stdout=sink, stderr=sink, start_new_session=True
        )
    url = f"git://127.0.0.1:{port}/msa"
    try:
        deadline = time.monotonic() + 30
        while run(["git", "ls-remote", url], cwd=base, check=False).returncode != 0:
            assert time.monotonic() < deadline and daemon.poll() is None, tail(log)
            time.sleep(0.2)
        yield url
    finally:
        stop_group(daemon)


def containers(cli: str, *, all_states: bool = False) -> list[dict]:
    listed = run([cli, "ps", "-q", *(["-a"] if all_states else []), "--filter", f"label={CONTAINER_LABEL}"], cwd=REPO)
    ids = listed.stdout.split()
    return json.loads(run([cli, "inspect", *ids], cwd=REPO).stdout) if ids else []


def test_training_in_containers_on_a_docker_pool_resumes_in_a_fresh_container_and_registers(
    tmp_path: Path, tiny_text_model: Path, docker: str, image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    logs, served = tmp_path / "logs", tmp_path / "served"
    logs.mkdir()
    repository, store = served / "msa", served / "dvc"
    store.mkdir(parents=True)
    port, auth = free_port(), f"msa:{secrets.token_urlsafe(16)}"
    api = f"http://127.0.0.1:{port}/api"
    prefect = {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": auth}
    prefect["PREFECT_CLI_PROMPT"] = "false"
    cli = str(BIN / "prefect")

    def prefect_cli(*args: str) -> str:
        return run([cli, *args], cwd=repository, env=prefect).stdout

    def api_client():
        return temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: auth})

    with ExitStack() as stack:
        stack.callback(lambda: [run([docker, "rm", "-f", c["Id"]], cwd=REPO, check=False) for c in containers(docker)])
        dvc_port = free_port()
        dvc_remote = f"http://127.0.0.1:{dvc_port}"
        http = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(store), str(dvc_port)]
        stack.enter_context(serving(http, f"{dvc_remote}/", logs / "dvc-remote.log", cwd=tmp_path))
        commit = make_repository(
            repository, tiny_text_model, remote=dvc_remote, store=store, epochs=EPOCHS, silence=SILENCE_S
        )
        git_url = stack.enter_context(git_server(served, logs / "git.log"))
        mlflow_url, login = stack.enter_context(tracking_server(tmp_path / "mlflow"))
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", login["username"])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", login["password"])

        server = [cli, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui", "--no-scheduler"]
        server_env = {**prefect, "PREFECT_SERVER_API_AUTH_STRING": auth}
        server_log = logs / "server.log"
        stack.enter_context(
            serving([*server, "--analytics-off"], f"{api}/health", server_log, cwd=tmp_path, env=server_env)
        )

        # The pool as the repository has it, adapted to this machine the way a site adapts it: no GPU, the image
        # built above and never pulled, the host's network (the servers listen on loopback).
        template = json.loads(POOL_TEMPLATE.read_text())
        defaults = template["variables"]["properties"]
        defaults["image"]["default"] = image
        defaults["image_pull_policy"]["default"] = "Never"
        defaults["network_mode"] = {**defaults["network_mode"], "default": "host"}
        defaults["container_create_kwargs"]["default"] = {}
        (adapted := tmp_path / "docker-pool.json").write_text(json.dumps(template))
        prefect_cli("work-pool", "create", "gpu", "--type", "docker", "--base-job-template", str(adapted))
        prefect_cli("work-pool", "create", "cpu", "--type", "process")
        # The site's values the template reads: Prefect variables, and the password as a Secret block.
        prefect_cli("variable", "set", "msa_repository", git_url)
        prefect_cli("variable", "set", "mlflow_tracking_uri", mlflow_url)
        prefect_cli("variable", "set", "mlflow_tracking_username", login["username"])
        with api_client():
            Secret(value=login["password"]).save("mlflow-tracking-password")
        prefect_cli("deploy", "--all", "--no-prompt")

        def worker(pool: str, name: str, *extra: str, **env: str):
            home, health = tmp_path / "machines" / name, free_port()
            home.mkdir(parents=True)
            args = [cli, "worker", "start", "--pool", pool, "--name", name, "--with-healthcheck", *extra]
            env = {**prefect, "HOME": str(home), "PREFECT_HOME": str(home / ".prefect"), **env}
            env |= {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_WEBSERVER_PORT": str(health)}
            env |= {"PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1", "OMP_NUM_THREADS": "1"}
            url = f"http://127.0.0.1:{health}/health"
            return stack.enter_context(serving(args, url, logs / f"{name}.log", cwd=home, env=env))

        def diagnostics() -> str:
            return "\n".join(f"--- {log.name}\n{tail(log)}" for log in sorted(logs.glob("*.log")))

        cpu_home = tmp_path / "machines" / "cpu"
        site = {"MSA_REPOSITORY": git_url, "MSA_WORKDIR": str(cpu_home / "work"), "MLFLOW_TRACKING_URI": mlflow_url}
        site |= {"MLFLOW_TRACKING_USERNAME": login["username"], "MLFLOW_TRACKING_PASSWORD": login["password"]}
        worker("cpu", "cpu", **site)
        worker("gpu", "docker", "--type", "docker")

        started = prefect_cli("deployment", "run", "pipeline/retrain")
        found = re.search(r"UUID:\s*([0-9a-f-]{36})", started)
        assert found, started
        retrain = UUID(found.group(1))

        # A training container runs: alone with its image, on the host's network, as the image's user, no mounts.
        mlflow = MlflowClient(mlflow_url)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        stored_checkpoint(mlflow, deadline, diagnostics)
        (first,) = containers(docker)
        assert first["Config"]["Image"] == image and first["Config"]["User"] == "10001:10001"
        assert first["Mounts"] == [] and first["HostConfig"]["Binds"] in (None, [])
        assert first["HostConfig"]["NetworkMode"] == "host"
        env = dict(e.split("=", 1) for e in first["Config"]["Env"])
        assert env["MLFLOW_TRACKING_PASSWORD"] == login["password"] and env["MSA_REPOSITORY"] == git_url
        run([docker, "kill", first["Id"]], cwd=REPO)

        with api_client(), get_client(sync_client=True) as client:
            while True:
                flow_run = client.read_flow_run(retrain)
                if flow_run.state is not None and flow_run.state.is_final():
                    break
                assert time.monotonic() < deadline, f"retrain still {flow_run.state_name}:\n{diagnostics()}"
                time.sleep(1)
            assert flow_run.state.is_completed(), f"retrain ended {flow_run.state_name}:\n{diagnostics()}"
            training = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["train"])))
        states = sorted(r.state_name for r in training)
        assert states == ["Completed", "Crashed"], f"{states}\n{diagnostics()}"

        # The replacement container restored the stored checkpoint and trained the rest.
        output = tail(logs / "docker.log", 400000)
        assert "restored the checkpoint of training run" in output, diagnostics()
        assert re.search(r"resumed after epoch [1-9]", output), diagnostics()
        champion = mlflow.get_model_version_by_alias(MODEL, "champion")
        pipeline_run = mlflow.get_run(champion.run_id)
        assert pipeline_run.data.tags["git_commit"].startswith(commit)
        attempts = mlflow.search_runs(
            [pipeline_run.info.experiment_id],
            f"tags.`mlflow.parentRunId` = '{champion.run_id}' and tags.`msa.kind` = 'train'",
        )
        statuses = {r.info.run_name: r.info.status for r in attempts}
        assert statuses == {"train": "KILLED", "train (attempt 2)": "FINISHED"}, statuses
        replacement = next(r for r in attempts if r.info.run_name == "train (attempt 2)")
        assert replacement.data.tags["msa.model_digest"] == champion.tags["msa.model_digest"]
        (cpu_clone,) = (cpu_home / "work").iterdir()
        assert not (cpu_clone / "models" / "trained" / "checkpoints").exists(), "the cpu worker never trained"

    assert containers(docker, all_states=True) == [], "the test leaves no container behind"
