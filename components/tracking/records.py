"""Numbers, params and tags into one run, in batches of MLflow's limits: the primitives every payload is logged by."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["flatten", "log_numbers", "log_params", "log_tags"]


def log_numbers(
    client: MlflowClient, run_id: str, values: Mapping[str, Any], *, step: int = 0, when: int | None = None
) -> None:
    """The finite numbers of `values` as metrics, in batches of MLflow's limit."""
    from mlflow.entities import Metric

    when = int(time.time() * 1000) if when is None else when
    batch = [
        Metric(k, float(v), when, step)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]
    for start in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[start : start + 1000])


def log_params(client: MlflowClient, run_id: str, values: Mapping[str, Any]) -> None:
    """`values` as params, in batches of MLflow's limit; a param already logged with the same value is skipped."""
    from mlflow.entities import Param

    logged = client.get_run(run_id).data.params
    fresh = [Param(k, _param_value(v)) for k, v in values.items() if logged.get(k) != _param_value(v)]
    for start in range(0, len(fresh), 100):
        client.log_batch(run_id, params=fresh[start : start + 100])


def log_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def flatten(values: Mapping, separator: str, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a<separator>b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, separator, f"{name}{separator}")
        else:
            flat[name] = value
    return flat


def _param_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return json.dumps(list(value))
    return str(value)[:6000]
