"""Prefect itself checks the pool templates of deploy/pools/: a real Prefect server (one for the module, on loopback,
with a home of its own) and the `prefect` CLI, run as the docs run them.

- `prefect work-pool create --type kubernetes|docker --base-job-template <file>` succeeds for both templates, and
  the server stores each template unchanged (read back with `prefect work-pool inspect --output json`).
- Broken copies are refused with a non-zero exit and no pool is made: a placeholder in job_configuration that no
  variable declares, and a variable's default of the wrong type.
- The server checks a deployment's job variables against the Kubernetes template's variables: `gpu: 2` and an image
  pass, `gpu: "two"` does not.

No worker package is needed to create a pool: the CLI asks the server which pool types exist, and the server
answers from Prefect's collection registry (fetched from GitHub, or the copy in Prefect's wheel when offline),
which lists the `kubernetes` and `docker` types whether or not prefect-kubernetes and prefect-docker are installed.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.servers import free_port, serving
from tests.integration.conftest import REPO
from tests.integration.shell import BIN, environment, run

pytestmark = pytest.mark.integration

POOLS = REPO / "deploy" / "pools"
KUBERNETES, DOCKER = POOLS / "kubernetes-gpu.json", POOLS / "docker-gpu.json"

Prefect = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API URL of a Prefect server started as users start it, with its own PREFECT_HOME (its database)."""
    root = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    args = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    args += ["--no-scheduler", "--analytics-off"]
    env = environment(PREFECT_HOME=str(root / "home"), PREFECT_API_URL=api)
    with serving(args, f"{api}/health", root / "server.log", cwd=root, env=env):
        yield api


@pytest.fixture(scope="module")
def prefect(server: str, tmp_path_factory: pytest.TempPathFactory) -> Prefect:
    """`prefect <args>` against the server, from the repository root (the paths the docs give), as a client with a
    home of its own."""
    env = {
        "PREFECT_API_URL": server,
        "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-client")),
        "PREFECT_CLI_PROMPT": "false",
    }

    def call(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([str(BIN / "prefect"), *args], cwd=REPO, check=check, env=env)

    return call


def inspect(prefect: Prefect, pool: str) -> dict:
    return json.loads(prefect("work-pool", "inspect", pool, "--output", "json").stdout)


@pytest.mark.parametrize(
    ("pool", "pool_type", "path"), [("gpu-k8s", "kubernetes", KUBERNETES), ("gpu-docker", "docker", DOCKER)]
)
def test_prefect_creates_a_pool_from_the_template_and_stores_it_unchanged(
    prefect: Prefect, pool: str, pool_type: str, path: Path
) -> None:
    prefect("work-pool", "create", pool, "--type", pool_type, "--base-job-template", str(path.relative_to(REPO)))
    stored = inspect(prefect, pool)
    assert stored["type"] == pool_type
    assert stored["base_job_template"] == json.loads(path.read_text())


def refused(prefect: Prefect, pool: str, template: dict, tmp_path: Path) -> str:
    """`work-pool create` of `template` as a Kubernetes pool: it must fail, and leave no pool; returns its output."""
    copy = tmp_path / "broken.json"
    copy.write_text(json.dumps(template))
    result = prefect("work-pool", "create", pool, "--type", "kubernetes", "--base-job-template", str(copy), check=False)
    assert result.returncode != 0, result.stdout
    assert prefect("work-pool", "inspect", pool, check=False).returncode != 0, f"{pool} was created anyway"
    return result.stdout + result.stderr


def test_a_template_with_an_undeclared_placeholder_is_refused(prefect: Prefect, tmp_path: Path) -> None:
    template = json.loads(KUBERNETES.read_text())
    template["job_configuration"]["job_manifest"]["spec"]["activeDeadlineSeconds"] = "{{ deadline }}"
    output = refused(prefect, "gpu-undeclared", template, tmp_path)
    # The server's 422; the CLI shows it as a traceback, its message naming the placeholder.
    assert "422" in output and "undeclared variable(s): deadline" in output, output


def test_a_template_whose_default_has_the_wrong_type_is_refused(prefect: Prefect, tmp_path: Path) -> None:
    template = json.loads(KUBERNETES.read_text())
    template["variables"]["properties"]["gpu"]["default"] = "one"
    output = refused(prefect, "gpu-bad-default", template, tmp_path)
    assert "job variable defaults: Validation failed for field 'gpu'" in output, output


def test_the_server_checks_a_deployments_job_variables_against_the_template(server: str, prefect: Prefect) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_URL, temporary_settings

    prefect("work-pool", "create", "gpu-jobs", "--type", "kubernetes", "--base-job-template", str(KUBERNETES))
    image = "registry.example.com/team/msa-pipeline:gpu"
    with temporary_settings({PREFECT_API_URL: server}), get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("training")

        def deploy(name: str, job_variables: dict) -> None:
            client.create_deployment(flow_id, name, work_pool_name="gpu-jobs", job_variables=job_variables)

        deploy("train-gpu", {"image": image, "gpu": 2})
        with pytest.raises(PrefectHTTPStatusError, match="Validation failed for field 'gpu'"):
            deploy("train-gpu-typo", {"gpu": "two"})
