"""`msa run` with nothing to retrain: without a Prefect server it decides before Prefect (no ephemeral API to start,
Prefect not even imported); with one, the flow decides, so that the skip shows there as a flow run (the e2e test,
last, with a real `prefect server`)."""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from components.core.config import load_params
from components.core.errors import TrackingError
from components.training.lineage import Lineage, lineage
from flows import cli
from tests.conftest import tiny_dataset
from tests.e2e.conftest import working_directory
from tests.e2e.servers import free_port, serving
from tests.integration.shell import BIN, run

TEAM = '[profiles.team]\nPREFECT_API_URL = "http://prefect:4200/api"\n'  # a profile not active unless chosen
HEAVY = ("prefect", "torch", "transformers", "great_expectations")  # what the skip has no use for


def register_lineage(store: str, name: str, ours: Lineage) -> None:
    """A registered version `name` v1, champion, trained from `ours`: all that the lineage check reads. Nothing is
    trained; its source is any directory."""
    from mlflow import MlflowClient

    client = MlflowClient(store)
    client.create_registered_model(name)
    source = Path(store.removeprefix("sqlite:///")).parent / "model"
    source.mkdir()
    tags = {**ours.tags(), "msa.status": "registered"}
    version = client.create_model_version(name, str(source), tags=tags).version
    client.set_registered_model_alias(name, "champion", version)


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project (tiny dataset, params.yaml) whose data, params and code the champion of its sqlite store was
    trained from: an unchanged `msa run` there has nothing to retrain."""
    root = tmp_path_factory.mktemp("registered")
    tiny_dataset(root / "data", name="raw")
    # A text model that does not exist: a flow that should not have run fails at featurize, not minutes later.
    params = {"data": {"raw": "data/raw"}, "featurize": {"text_model": "no-such-model"}, "register": {"retries": 0}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with working_directory(root):  # data.raw is relative to it
        ours = lineage(load_params("params.yaml"))
    register_lineage(f"sqlite:///{root / 'mlflow.db'}", "raw", ours)
    return root


@pytest.fixture
def project(registered: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the `registered` project (its hashes do not depend on where it is), the working directory."""
    root = shutil.copytree(registered, tmp_path / "project")
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This process tracking into `project`'s store; the tracking settings `connected` exports undone after."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    for name, value in {"MAX_RETRIES": "0", "TIMEOUT": "20", "BACKOFF_FACTOR": "1"}.items():
        monkeypatch.setenv(f"MLFLOW_HTTP_REQUEST_{name}", value)
    yield project
    mlflow.set_tracking_uri(None)


@pytest.mark.integration
def test_an_unchanged_run_skips_without_importing_prefect(project: Path):
    ours = lineage(load_params("params.yaml"))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    # -X importtime lists every module the command imports, on stderr.
    done = run([sys.executable, "-X", "importtime", "-m", "flows.cli", "run"], cwd=project, env=env)
    assert re.fullmatch(
        rf"run: nothing registered: raw version 1 \(champion\) was trained from the same {ours.summary()}: nothing to "
        r"retrain \(--force trains anyway\) \[\d+\.\ds\]\n",
        done.stdout,
    ), done.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "mlflow" in imported and "components.registry.register" in imported, (
        "the check is MLflow's, not a copy of it"
    )
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY)
    assert not heavy, f"the skip imported {heavy}"


@pytest.mark.integration
def test_the_check_finds_the_registered_lineage_and_nothing_else(in_project: Path):
    skipped = cli._skip_before_prefect(Path("params.yaml"))
    assert skipped is not None and skipped.reason.startswith("raw version 1 (champion) was trained from the same")
    changed = in_project / "changed.yaml"
    changed.write_text(yaml.safe_dump(yaml.safe_load(Path("params.yaml").read_text()) | {"train": {"epochs": 7}}))
    assert cli._skip_before_prefect(changed) is None, "other params: the flow trains"


@pytest.mark.integration
def test_with_a_prefect_server_the_flow_decides(in_project: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    assert cli._skip_before_prefect(Path("params.yaml")) is None, "the flow records the skip on the server"


@pytest.mark.integration
def test_a_tracking_store_that_does_not_answer_leaves_the_check_to_the_flow(
    in_project: Path, monkeypatch: pytest.MonkeyPatch
):
    def down(*args: object) -> None:
        raise TrackingError("tracking server http://127.0.0.1:1 does not answer")

    monkeypatch.setattr("components.registry.register.registered_with_same_lineage", down)
    assert cli._skip_before_prefect(Path("params.yaml")) is None, "the flow's lineage task retries with backoff"


@pytest.mark.parametrize(
    ("profiles", "environment", "configured"),
    [
        (None, {}, False),
        (None, {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}, True),
        (None, {"PREFECT_PROFILE": "local"}, True),  # Prefect's own `local` profile names a server
        ('active = "dev"\n[profiles.dev]\nPREFECT_API_URL = "http://prefect:4200/api"\n', {}, True),
        ('active = "dev"\n[profiles.dev]\nPREFECT_LOGGING_LEVEL = "DEBUG"\n', {}, False),
        (f'active = "dev"\n[profiles.dev]\n{TEAM}', {}, False),
        (f'active = "dev"\n[profiles.dev]\n{TEAM}', {"PREFECT_PROFILE": "team"}, True),
        ("active = [not toml", {}, True),  # unsure: Prefect decides
    ],
)
@pytest.mark.integration
def test_a_prefect_server_is_configured_by_the_environment_or_the_active_profile(
    profiles: str | None, environment: dict[str, str], configured: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    for name in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    if profiles is not None:
        (tmp_path / "profiles.toml").write_text(profiles)
    assert cli._prefect_api_configured() is configured


@pytest.mark.e2e
def test_an_unchanged_run_with_a_prefect_server_is_a_flow_run_there(project: Path, tmp_path: Path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowFilter,
        FlowFilterName,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    prefect = {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api}
    server = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server += ["--no-ui", "--no-scheduler", "--analytics-off"]
    with serving(server, f"{api}/health", tmp_path / "server.log", cwd=tmp_path, env=prefect):
        env = prefect | {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
        done = run([str(BIN / "msa"), "run"], cwd=project, env=env)
        assert "run: nothing registered: raw version 1 (champion)" in done.stdout, done.stdout
        assert "Starting temporary server" not in done.stdout + done.stderr, "the configured server, not an ephemeral"
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            (flow_run,) = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["pipeline"])))
            ours = ArtifactFilterFlowRunId(any_=[flow_run.id])
            key = ArtifactFilterKey(any_=["msa-registration"])
            (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=key, flow_run_id=ours))
    assert flow_run.state_name == "Completed", flow_run.state
    assert "Nothing to retrain" in artifact.data, artifact.data
