"""Versions and aliases of the registered model: the input contract a new version must keep, creating a version
whole or not at all, and which versions `champion` and a completed registration point at.

A version is created tagged `msa.status=registering` and only marked `registered` once its tags and aliases are
set; one that fails halfway is deleted (or, if the server cannot even do that, tagged `msa.status=failed` without
an alias). `champion` moves last.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

from components.core.errors import TrackingError, first_line
from components.data.dataset import SEQUENCE_MODALITIES
from components.serving.explain import EXPLAIN

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "MODEL_VERSIONS_TAG",
    "champion_version",
    "check_compatible",
    "create_version",
    "latest_registered",
]

CHALLENGER, CHAMPION = "challenger", "champion"
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # on a logged model: the versions made from it (what the UI reads)


def champion_version(client: MlflowClient, name: str) -> Any | None:
    """The version `champion` points at; None when there is no such registered model or no champion yet."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None  # no such registered model, or no champion yet


def latest_registered(client: MlflowClient, name: str) -> Any | None:
    """The newest version of `name` whose registration completed (`msa.status=registered`), if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"], max_results=20)
    except MlflowException:
        return None  # no such registered model
    return next((v for v in versions if (v.tags or {}).get("msa.status") == "registered"), None)


def check_compatible(client: MlflowClient, name: str, signature: Any) -> None:
    """Refuse to add a version whose inputs differ from the registered model's latest version."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import get_model_info

    try:  # any version, ours or not: a foreign one with other inputs is just as incompatible
        versions = client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"], max_results=1)
    except MlflowException:
        return
    if not versions:
        return
    latest = versions[0]
    try:
        theirs = get_model_info(f"models:/{name}/{latest.version}").signature
    except Exception as e:  # noqa: BLE001 - an unreadable old version: say so rather than guess
        raise TrackingError(
            f"registered model '{name}' version {latest.version} cannot be read to compare signatures: {first_line(e)}"
        ) from None
    ours = signature.inputs.to_dict()
    if theirs is None or _contract(theirs.inputs.to_dict()) != _contract(ours):
        found = "no signature" if theirs is None else _columns(theirs.inputs.to_dict())
        raise TrackingError(
            f"registered model '{name}' takes {found} (version {latest.version}), but this model takes "
            f"{_columns(ours)}: a different input contract needs its own name (set register.model_name)"
        )


def create_version(client: MlflowClient, name: str, info: Any, run_id: str, tags: dict[str, str], promote: bool) -> str:
    """A version of `name` from the logged model `info`, tagged `tags`, `challenger`, and `champion` when `promote`."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="Multimodal sentiment model registered by `msa register`")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise TrackingError(f"cannot create registered model '{name}': {first_line(e)}") from None
    version = client.create_model_version(
        name, source=info.model_uri, run_id=run_id, model_id=info.model_id, tags={"msa.status": "registering"}
    ).version
    try:
        _link(client, info.model_id, name, version)
        for key, value in {**tags, "msa.status": "registered"}.items():
            client.set_model_version_tag(name, version, key, value)
        client.set_registered_model_alias(name, CHALLENGER, version)
        if promote:
            client.set_registered_model_alias(name, CHAMPION, version)  # last: nothing can fail after it
    except Exception as e:  # noqa: BLE001 - whatever broke, the half-made version must not stay usable
        raise TrackingError(
            f"registering '{name}' version {version} failed ({type(e).__name__}: {first_line(e)}); "
            f"{_discard(client, name, version, info.model_id)}; the champion is unchanged"
        ) from None
    return version


def _link(client: MlflowClient, model_id: str, name: str, version: str) -> None:
    """What mlflow.register_model adds to a version: the logged model lists it, so the UI shows it registered. A
    tracking server records it itself when the version names the model id; a database store does not."""
    links = json.loads(client.get_logged_model(model_id).tags.get(MODEL_VERSIONS_TAG, "[]"))
    if not any(link.get("name") == name and str(link.get("version")) == str(version) for link in links):
        links.append({"name": name, "version": version})
        client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: json.dumps(links)})


def _discard(client: MlflowClient, name: str, version: str, model_id: str) -> str:
    with contextlib.suppress(Exception):  # a stale link only mislabels the Logged Models page
        client.delete_logged_model_tag(model_id, MODEL_VERSIONS_TAG)
    try:
        client.delete_model_version(name, version)
        return f"version {version} was deleted"
    except Exception:  # noqa: BLE001
        pass
    try:
        client.set_model_version_tag(name, version, "msa.status", "failed")
        return f"version {version} could not be deleted and is tagged msa.status=failed"
    except Exception:  # noqa: BLE001
        return f"version {version} could not be deleted or tagged: delete it by hand"


_FRAME_TYPES = ("array", "any", "string")  # a sequence column's type: older versions, then `Any`, now string


def _contract(schema: list[dict]) -> list[dict]:
    """What a caller must send: frames typed Array(Array(double)) by older versions, `Any` by later ones and an
    optional string now are one contract (the same JSON is accepted; only where it is checked moved into the
    model), compared by name and whether required, not by the array's item types."""
    return [
        {"name": c["name"], "type": "frames", "required": c.get("required", True)}
        if c.get("name") in SEQUENCE_MODALITIES and c.get("type") in _FRAME_TYPES
        else c
        for c in schema
        if c.get("name") != EXPLAIN  # optional: every request an older version took, a newer one takes
    ]


def _columns(schema: list[dict]) -> str:
    return "[" + ", ".join(f"{c.get('name')}{'' if c.get('required', True) else '?'}" for c in schema) + "]"
