"""The team-setup guide's block (docs/how-to/team-setup.md, between `<!-- team-setup: begin -->` and
`<!-- team-setup: end -->`), run as written in a fresh clone: a PostgreSQL cluster, the MLflow tracking server
on it with the basic-auth app and proxied artifacts, the Prefect server on it behind PREFECT_SERVER_API_AUTH_STRING,
a DVC remote holding the demo data, two pools and deployments, a worker per pool with a workdir of its own, and a
retrain that dispatches training to the gpu pool and registers. Then what a team relies on: a client without
credentials is refused by both servers and changes nothing; two more retrains, started with credentials as soon as
the deployment exists, run alongside the block's own and complete (one of the three trains and registers, the
others find its version and skip); and no log (servers, workers, PostgreSQL, clients) reports a database error. If
the page drifts from what works, this fails. (tests/docs/test_shell_blocks.py, which runs the other pages' blocks,
leaves this one to this test.)

Only the project's settings are the test's own (a small demo dataset and tiny models, so that it runs in minutes):
the commands are the page's, on the ports and paths it names, under a temporary HOME. One adaptation: PostgreSQL's
initdb and pg_ctl refuse to run as root, and CI runs as root. There the test puts two shell functions before the
block, `initdb` and `pg_ctl`, that run the real tools as the OS user `postgres` (`runuser -u postgres --`), the
first after giving $TEAM to that user; and the temporary HOME is then a directory of its own in the system's temp
directory (mode 711), not under pytest's, which is 0700 and set so again whenever a pytest session starts: postgres
must reach its data directory. As any other user the block runs unchanged.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from devtools.servers import stop_group_id
from tests.docs.blocks import TEAM_SETUP, parse_page, port_locks
from tests.integration.conftest import PROJECT_FILES, REPO, copy_project
from tests.integration.shell import environment, run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # minutes: `make test-all` runs it, `make test` does not

PAGE = "docs/how-to/team-setup.md"
CLONE_FILES = (*PROJECT_FILES, ".dvc/.gitignore", "prefect.yaml", "README.md", PAGE)
PORTS = (4200, 5000, 5433)  # the page's servers: Prefect, MLflow, PostgreSQL
MLFLOW, PREFECT = "http://127.0.0.1:5000", "http://127.0.0.1:4200/api"
PIPELINE_USER = "msa-pipeline"  # the page's MLflow user for the pipeline; its password is in $TEAM/secrets
DATABASE_ERRORS = re.compile(
    r"database is locked|deadlock detected|could not serialize|OperationalError|IntegrityError", re.I
)
# Names the block's settings take; a new user's shell has none of them.
UNSET = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_AUTH_CONFIG_PATH",
    "PREFECT_API_URL",
    "PREFECT_API_AUTH_STRING",
    "PREFECT_SERVER_API_AUTH_STRING",
    "PREFECT_HOME",
    "PREFECT_API_DATABASE_CONNECTION_URL",
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
)
AS_POSTGRES = """\
initdb() { chown -R postgres: "$TEAM"; runuser -u postgres -- %(initdb)s "$@"; }
pg_ctl() { runuser -u postgres -- %(pg_ctl)s "$@"; }
"""


def team_setup_block() -> str:
    """The ```bash blocks between the page's team-setup markers, in order, as one script."""
    blocks = [b for b in parse_page((REPO / PAGE).read_text(), PAGE) if b.skip == TEAM_SETUP and b.language == "bash"]
    assert blocks, f"{PAGE} has no ```bash block between <!-- team-setup: begin --> and <!-- team-setup: end -->"
    return "".join(b.code for b in blocks)


def port_free(port: int) -> bool:
    return all(c.laddr.port != port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN)


def postgres_tools() -> dict[str, str]:
    tools = {name: shutil.which(name) for name in ("initdb", "pg_ctl", "psql")}
    if missing := [name for name, path in tools.items() if path is None]:
        pytest.fail(f"PostgreSQL's {', '.join(missing)} not on PATH (Debian/Ubuntu: apt-get install postgresql)")
    return tools  # type: ignore[return-value]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """The block's HOME (see the module's docstring for root); the team's logs stay in tmp_path/team-logs."""
    if os.geteuid() != 0:
        (path := tmp_path / "home").mkdir()
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="msa-readme-home-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        (tmp_path / "team-logs").mkdir(exist_ok=True)
        for log in (path / "msa-team").glob("*.log"):
            shutil.copy(log, tmp_path / "team-logs")
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fixed_ports() -> Iterator[None]:
    """The page's ports, held against the other docs pages' blocks that listen on them (tests/docs)."""
    with port_locks(PORTS):
        yield


def stop_postgres(data: Path, pg_ctl: str, log: Path) -> None:
    """`pg_ctl stop` (fast: disconnects clients); if the cluster is still up after it, SIGINT then SIGKILL to its
    postmaster, by the pid it recorded."""
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return
    postmaster = 0
    with contextlib.suppress(ValueError, IndexError, OSError):
        postmaster = int(pid_file.read_text().split()[0])
    command = [pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    with log.open("w") as sink, contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, timeout=45, check=False)
    for sig in (signal.SIGINT, signal.SIGKILL):
        if not postmaster or not psutil.pid_exists(postmaster):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(postmaster, sig)
        with contextlib.suppress(psutil.Error):
            psutil.Process(postmaster).wait(timeout=15)


def secret(team: Path, name: str) -> str:
    """One of the secrets the block generated, "" before it has."""
    path = team / "secrets" / name
    return path.read_text().strip() if path.is_file() else ""


def deployed(team: Path) -> bool:
    """Whether the block has deployed pipeline/retrain yet."""
    if not (password := secret(team, "prefect")):
        return False
    with contextlib.suppress(httpx.HTTPError):
        auth = ("msa", password)
        return httpx.get(f"{PREFECT}/deployments/name/pipeline/retrain", auth=auth, timeout=5).status_code == 200
    return False


def test_the_readme_team_setup_block_runs_as_written(
    tmp_path: Path, home: Path, tiny_text_model: Path, monkeypatch: pytest.MonkeyPatch, fixed_ports: None
) -> None:
    if not all(port_free(p) for p in PORTS):
        pytest.fail(f"the page's ports {PORTS} are taken on this machine: stop what listens there")
    tools = postgres_tools()
    clone, team = tmp_path / "msa", home / "msa-team"
    copy_project(clone, CLONE_FILES)
    small = {  # the repository's params.yaml, with a small demo and tiny models
        "data": {"demo": {"size": 60}},
        "featurize": {"text_model": str(tiny_text_model), "image_size": 8},
        "model": {"hidden": 8, "textcnn": {"feature_maps": 4}},
        "train": {"epochs": 3, "batch_size": 8},
        "compress": {"latency_runs": 3, "throughput_batch": 4, "finetune_epochs": 1},
    }
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in small.items():
        for key, value in values.items():
            params[section][key] = params[section][key] | value if isinstance(value, dict) else value
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = {"GIT_AUTHOR_NAME": "msa", "GIT_AUTHOR_EMAIL": "msa@example.invalid"}
    git |= {"GIT_COMMITTER_NAME": "msa", "GIT_COMMITTER_EMAIL": "msa@example.invalid"}
    run(["git", "init", "-q", "-b", "main"], cwd=clone)
    run(["git", "add", "-A"], cwd=clone)
    run(["git", "commit", "-q", "-m", "clone"], cwd=clone, env=git)

    env = environment(
        HOME=str(home),
        OMP_NUM_THREADS="1",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="5",
        **git,
    )
    for key in UNSET:
        env.pop(key, None)  # the block sets what it needs, as in a new user's shell
    script = team_setup_block()
    if os.geteuid() == 0:  # see the module's docstring
        script = AS_POSTGRES % tools + script
    log = tmp_path / "block.log"
    retrain = ["prefect", "deployment", "run", "pipeline/retrain", "--watch"]
    outputs = [tmp_path / "retrain-2.log", tmp_path / "retrain-3.log"]
    extra: list[subprocess.Popen] = []  # the two more retrains
    with contextlib.ExitStack() as stack:
        with log.open("w") as sink:
            shell = subprocess.Popen(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=clone,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # Run last: the servers and workers stop first, then the database.
        stack.callback(stop_postgres, team / "pg", tools["pg_ctl"], tmp_path / "pg_ctl-stop.log")
        # What the block started in the background (servers, workers and their children) outlives the shell, in its
        # process group.
        stack.callback(stop_group_id, shell.pid)
        stack.callback(lambda: [stop_group_id(r.pid) for r in extra])
        started = time.monotonic()
        while shell.poll() is None:
            assert time.monotonic() - started < 900, f"the block did not end in 900 s:\n{log.read_text()[-5000:]}"
            if not extra and deployed(team):  # two more retrains, alongside the block's own
                login = env | {"PREFECT_API_URL": PREFECT, "PREFECT_API_AUTH_STRING": f"msa:{secret(team, 'prefect')}"}
                for output in outputs:
                    with output.open("w") as sink:
                        extra.append(
                            subprocess.Popen(
                                retrain,
                                cwd=clone,
                                env=login,
                                stdout=sink,
                                stderr=subprocess.STDOUT,
                                start_new_session=True,
                            )
                        )
            time.sleep(1)
        print(f"the team-setup block took {time.monotonic() - started:.0f} s")
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(team.glob("*.log")))
        assert shell.returncode == 0, f"the block exited {shell.returncode}:\n{log.read_text()[-5000:]}\n{logs}"
        assert len(extra) == 2, "the test never saw pipeline/retrain deployed"
        codes = [r.wait(timeout=600) for r in extra]
        print(f"all three retrains took {time.monotonic() - started:.0f} s from the block's start")
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(team.glob("*.log")))
        assert codes == [0, 0], "\n".join(p.read_text()[-3000:] for p in outputs) + logs

        assert all(p.stat().st_mode & 0o777 == 0o600 for p in (team / "secrets").iterdir()), "secrets are private"
        password = secret(team, PIPELINE_USER)
        pipeline_login = {"MLFLOW_TRACKING_USERNAME": PIPELINE_USER, "MLFLOW_TRACKING_PASSWORD": password}
        for key, value in pipeline_login.items():
            monkeypatch.setenv(key, value)

        # What the retrains did, read as the pipeline's user: one trained on the gpu pool and registered, the
        # other two found its version and skipped.
        mlflow = MlflowClient(MLFLOW)
        champion = mlflow.get_model_version_by_alias("msa-demo", "champion")
        parent = mlflow.get_run(champion.run_id)
        assert parent.info.status == "FINISHED"
        trains = mlflow.search_runs([parent.info.experiment_id], "tags.`msa.kind` = 'train'")
        assert len(trains) == 1 and mlflow.list_artifacts(trains[0].info.run_id, "model")
        assert len(mlflow.search_model_versions("name = 'msa-demo'")) == 1
        cpu_log = (team / "cpu-worker.log").read_text()
        assert "training dispatched to deployment train/train-gpu" in cpu_log and "nothing to retrain" in cpu_log
        assert (team / "artifacts").is_dir() and any((team / "dvc-remote").rglob("*")), "artifacts and data stored"
        (gpu_clone,) = (team / "gpu-worker").iterdir()
        (cpu_clone,) = (team / "cpu-worker").iterdir()
        checkpoints = Path("models", "trained", "checkpoints")
        assert (gpu_clone / checkpoints).is_dir() and not (cpu_clone / checkpoints).exists()
        admin = ("admin", secret(team, "mlflow-admin"))
        user = httpx.get(f"{MLFLOW}/api/2.0/mlflow/users/get", params={"username": PIPELINE_USER}, auth=admin)
        assert user.raise_for_status().json()["user"]["is_admin"] is False, "the pipeline is a user, not the admin"
        prefect = httpx.Client(base_url=PREFECT, auth=("msa", secret(team, "prefect")), timeout=30)
        flow_runs = [r for r in prefect.post("/flow_runs/filter", json={}).raise_for_status().json() if r["start_time"]]
        states = sorted((r["name"], r["state_type"]) for r in flow_runs)  # not the cron's next, still scheduled
        assert len(flow_runs) == 3 + 1 and all(state == "COMPLETED" for _, state in states), states

        # (a) MLflow without credentials: 401, and nothing registered.
        models = {m.name for m in mlflow.search_registered_models()}
        for key in pipeline_login:
            monkeypatch.delenv(key)
        stranger = MlflowClient(MLFLOW)
        for attempt in (stranger.search_registered_models, lambda: stranger.create_registered_model("intruder")):
            with pytest.raises(MlflowException, match=r"401|[Uu]nauthorized|credentials"):
                attempt()
        assert httpx.get(f"{MLFLOW}/api/2.0/mlflow/registered-models/search").status_code == 401
        wrong = httpx.get(f"{MLFLOW}/api/2.0/mlflow/registered-models/search", auth=(PIPELINE_USER, "not-its-pw"))
        assert wrong.status_code == 401
        for key, value in pipeline_login.items():
            monkeypatch.setenv(key, value)
        assert {m.name for m in mlflow.search_registered_models()} == models == {"msa-demo"}

        # (b) Prefect without PREFECT_API_AUTH_STRING: 401, and nothing created.
        anonymous = env | {"PREFECT_API_URL": PREFECT}
        listing = subprocess.run(
            ["prefect", "deployment", "ls"], cwd=clone, env=anonymous, capture_output=True, text=True, timeout=120
        )
        assert listing.returncode != 0 and "401" in listing.stdout + listing.stderr, listing.stdout + listing.stderr
        assert httpx.post(f"{PREFECT}/deployments/filter", json={}).status_code == 401
        assert httpx.post(f"{PREFECT}/work_pools/", json={"name": "intruder", "type": "process"}).status_code == 401
        pools = {p["name"] for p in prefect.post("/work_pools/filter", json={}).raise_for_status().json()}
        assert pools == {"cpu", "gpu"}
        deployments = {d["name"] for d in prefect.post("/deployments/filter", json={}).raise_for_status().json()}
        assert deployments == {"retrain", "score", "train-gpu", "tune-gpu"}

        # No database error anywhere: servers, workers, PostgreSQL, and the clients.
        errors = [
            f"{p.name}: {line}"
            for p in (*sorted(team.glob("*.log")), log, *outputs)
            for line in p.read_text(errors="replace").splitlines()
            if DATABASE_ERRORS.search(line)
        ]
        assert not errors, "\n".join(errors[:40])
