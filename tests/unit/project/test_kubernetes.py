"""The Kubernetes GPU pool as code, checked offline: deploy/kubernetes/worker.yaml and the Job the pool template
deploy/pools/kubernetes-gpu.json makes.

- Every document of the worker's manifest validates, strictly (no unknown field), against the OpenAPI schema of a
  pinned Kubernetes version (kubernetes-validate ships the schemas), and a broken copy does not: the validator
  rejects, it does not just parse.
- The worker's rights stay the least Prefect documents for its Kubernetes worker: a Role in its namespace, no
  ClusterRole, no Secrets, and the observer kept to that namespace (unset, it watches the whole cluster).
- The pool template, rendered as the worker renders it (its variables' defaults, or a deployment's job variables,
  applied with Prefect's own templating), is a valid batch/v1 Job with the GPU limit, GPU node placement, the
  Secret's environment and /dev/shm in place, in the namespace the worker may create Jobs in.
- Every placeholder of each pool template's job_configuration (deploy/pools/*.json) is one of its variables, as the
  Prefect server demands, and every variable is used; the job variables of prefect.yaml's deployments on the gpu
  pool are variables of either template, of the right type.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prefect.utilities.schema_tools import is_valid_schema
from prefect.utilities.schema_tools import validate as validate_variables
from prefect.utilities.templating import apply_values, find_placeholders

REPO = Path(__file__).resolve().parents[3]
WORKER = REPO / "deploy" / "kubernetes" / "worker.yaml"
POOLS = REPO / "deploy" / "pools"
GPU_POOL = POOLS / "kubernetes-gpu.json"
# Pinned so that a new kubernetes-validate cannot change the verdict; the oldest minor the manifests should run on.
KUBERNETES = "1.33"
# The Kubernetes worker requires these in the pod spec (prefect_kubernetes.worker._get_base_job_manifest) although
# PodSpec has no such fields: the API server drops them with a warning, a strict schema rejects them.
PREFECT_POD_KEYS = ("parallelism", "completions")
DOCUMENTS = [document for document in yaml.safe_load_all(WORKER.read_text()) if document]


def validate(resource: dict[str, Any]) -> str:
    return kubernetes_validate.validate(resource, KUBERNETES, strict=True)


def document(kind: str) -> dict[str, Any]:
    (found,) = [d for d in DOCUMENTS if d["kind"] == kind]
    return found


def worker_container() -> dict[str, Any]:
    (container,) = document("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def worker_env(name: str) -> dict[str, Any]:
    (entry,) = [e for e in worker_container()["env"] if e["name"] == name]
    return entry


def template(path: Path = GPU_POOL) -> dict[str, Any]:
    return json.loads(path.read_text())


def defaults(base: dict[str, Any]) -> dict[str, Any]:
    """The variables' defaults as Prefect takes them (BaseJobConfiguration._get_base_config_defaults): None is no
    default."""
    properties = base["variables"]["properties"]
    return {name: p["default"] for name, p in properties.items() if p.get("default") is not None}


def rendered_job(**job_variables: Any) -> dict[str, Any]:
    """The Job the worker submits for a flow run whose deployment sets `job_variables`: job_configuration with the
    defaults and the job variables applied by Prefect's templating (a placeholder left without a value drops its
    key), then the worker's one rewrite of the manifest's shape: `env`, a mapping, becomes Kubernetes' list."""
    base = template()
    configuration = apply_values(base["job_configuration"], {**defaults(base), **job_variables})
    job = configuration["job_manifest"]
    for container in job["spec"]["template"]["spec"]["containers"]:
        container["env"] = [{"name": k, "value": v} for k, v in container["env"].items()]
    return job


def without_prefect_keys(job: dict[str, Any]) -> dict[str, Any]:
    job = copy.deepcopy(job)
    pod = job["spec"]["template"]["spec"]
    for key in PREFECT_POD_KEYS:
        assert pod.pop(key) == 1, f"the worker refuses a manifest without spec.template.spec.{key}: 1"
    return job


def undeclared(base: dict[str, Any]) -> set[str]:
    """Placeholders of job_configuration that no variable declares, found as the server finds them
    (prefect.server.schemas.actions.validate_base_job_template)."""
    used = {p.name for value in base["job_configuration"].values() for p in find_placeholders(json.dumps(value))}
    return used - set(base["variables"]["properties"])


@pytest.mark.parametrize("resource", DOCUMENTS, ids=[f"{d['kind']}/{d['metadata']['name']}" for d in DOCUMENTS])
def test_every_document_of_the_worker_manifest_is_valid_kubernetes(resource: dict[str, Any]) -> None:
    assert validate(resource) == KUBERNETES


def test_the_validator_rejects_unknown_fields_and_wrong_types() -> None:
    deployment = document("Deployment")
    validate(deployment)
    unknown = copy.deepcopy(deployment)
    unknown["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {"httpGet": {"port": 8080}}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "one"
    for broken in (unknown, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(broken)


def test_the_worker_manifest_holds_what_a_worker_needs_and_no_cluster_wide_object() -> None:
    assert [d["kind"] for d in DOCUMENTS] == ["Namespace", "ServiceAccount", "Role", "RoleBinding", "Deployment"]
    namespace = document("Namespace")["metadata"]["name"]
    assert all(d["metadata"].get("namespace") == namespace for d in DOCUMENTS[1:])


def test_the_worker_has_the_least_rights_prefect_documents() -> None:
    rules = {
        (group, resource, verb)
        for rule in document("Role")["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    jobs = {("batch", "jobs", verb) for verb in ("get", "list", "watch", "create", "delete")}
    pods = {("", "pods", verb) for verb in ("get", "list", "watch")} | {("", "pods/log", "get")}
    assert rules == jobs | pods
    binding, account = document("RoleBinding"), document("ServiceAccount")["metadata"]["name"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "prefect-worker"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "msa"}]
    assert document("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == account
    # Unset, the observer watches Jobs and pods cluster-wide, which this Role does not allow.
    observer = worker_env("PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES")
    assert observer["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_the_worker_runs_prefects_version_serves_the_gpu_pool_and_is_probed() -> None:
    pinned = next(line for line in (REPO / "constraints.txt").read_text().splitlines() if line.startswith("prefect=="))
    container = worker_container()
    assert container["image"] == f"prefecthq/prefect:{pinned.removeprefix('prefect==')}-python3.11-kubernetes"
    args = container["args"]
    assert args[:3] == ["prefect", "worker", "start"] and "--with-healthcheck" in args
    assert args[args.index("--pool") + 1] == "gpu" and args[args.index("--type") + 1] == "kubernetes"
    for name, key in (("PREFECT_API_URL", "api-url"), ("PREFECT_API_AUTH_STRING", "auth-string")):
        assert worker_env(name)["valueFrom"] == {"secretKeyRef": {"name": "prefect-api", "key": key}}
    # The probe asks the worker's health server where it listens.
    port = int(worker_env("PREFECT_WORKER_WEBSERVER_PORT")["value"])
    assert worker_env("PREFECT_WORKER_WEBSERVER_HOST")["value"] == "0.0.0.0"
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/health"
    assert [p["containerPort"] for p in container["ports"] if p["name"] == probe["port"]] == [port]
    assert set(container["resources"]) == {"requests", "limits"}


def test_the_worker_runs_unprivileged_on_a_read_only_root_and_writes_only_to_an_empty_dir() -> None:
    pod = document("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    context = worker_container()["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    scratch = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = [m["mountPath"] for m in worker_container()["volumeMounts"] if m["name"] in scratch]
    for name in ("HOME", "PREFECT_HOME"):
        path = worker_env(name)["value"]
        assert any(path == m or path.startswith(f"{m}/") for m in mounts), f"{name}={path} is not on an emptyDir"


def test_the_pool_template_makes_a_valid_gpu_job_with_its_defaults() -> None:
    job = rendered_job()
    # The worker's required keys fail a strict schema: taken out as the API server drops them, nothing else is.
    with pytest.raises(kubernetes_validate.ValidationError, match="parallelism"):
        validate(job)
    assert validate(without_prefect_keys(job)) == KUBERNETES

    assert job["metadata"]["namespace"] == document("Namespace")["metadata"]["name"], "where the worker's Role is"
    assert isinstance(job["spec"]["ttlSecondsAfterFinished"], int)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    (container,) = pod["containers"]
    assert container["image"] == "msa-pipeline:latest"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["envFrom"] == [{"secretRef": {"name": "msa-pipeline"}}]
    assert {"name": "MSA_WORKDIR", "value": "/tmp/msa"} in container["env"]
    (shm,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == shm["name"]]
    assert volume["emptyDir"]["medium"] == "Memory"


def test_a_deployments_job_variables_change_the_job() -> None:
    image = "registry.example.com/team/msa-pipeline:gpu"
    selector = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    job = rendered_job(image=image, gpu=2, node_selector=selector, env_secret="msa-staging", cpu_request="4")
    validate(without_prefect_keys(job))
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == image and pod["nodeSelector"] == selector
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 2}, "requests": {"cpu": "4"}}
    assert container["envFrom"] == [{"secretRef": {"name": "msa-staging"}}]


@pytest.mark.parametrize("path", sorted(POOLS.glob("*.json")), ids=lambda p: p.name)
def test_every_placeholder_of_a_pool_template_is_a_variable_and_every_variable_is_used(path: Path) -> None:
    base = template(path)
    assert undeclared(base) == set(), "the Prefect server refuses the template"
    used = {p.name for p in find_placeholders(base["job_configuration"])}
    assert set(base["variables"]["properties"]) - used == set(), "a variable no placeholder uses does nothing"
    is_valid_schema(base["variables"], preprocess=False)
    validate_variables(defaults(base), base["variables"], raise_on_error=True, ignore_required=True)


def test_both_pool_templates_are_checked_and_a_stray_placeholder_is_found() -> None:
    assert {p.name for p in POOLS.glob("*.json")} >= {"docker-gpu.json", "kubernetes-gpu.json"}
    broken = template()
    broken["job_configuration"]["job_manifest"]["spec"]["activeDeadlineSeconds"] = "{{ deadline }}"
    assert undeclared(broken) == {"deadline"}


@pytest.mark.parametrize("path", [GPU_POOL, POOLS / "docker-gpu.json"], ids=lambda p: p.name)
def test_the_gpu_deployments_job_variables_are_variables_of_the_pool_template(path: Path) -> None:
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    on_gpu = [d for d in deployments if d["work_pool"]["name"] == "gpu"]
    assert on_gpu, "prefect.yaml has no deployment on the gpu pool"
    variables = template(path)["variables"]
    for deployment in on_gpu:
        ours = deployment["work_pool"].get("job_variables") or {}
        assert set(ours) <= set(variables["properties"]), deployment["name"]
        validate_variables(ours, variables, raise_on_error=True, ignore_required=True)
