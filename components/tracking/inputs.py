"""Datasets as a run's inputs, as `mlflow.log_input` logs them: a table's MLflow schema and profile, named and
digested by the caller, with where to get it (a DVC-tracked path); and copying one run's inputs onto others.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

__all__ = ["InputDataset", "copy_inputs", "log_dataset"]


@dataclass(frozen=True)
class InputDataset:
    """A table a run took as input: `digest` identifies its content, `source` says where to get it (path, DVC md5,
    git commit), `profile` adds to MLflow's profile of the table (its row count)."""

    samples: pd.DataFrame
    name: str
    digest: str
    source: Mapping[str, str]
    profile: Mapping[str, Any] = field(default_factory=dict)
    targets: str | None = "label"  # the column a model learns
    context: str = "training"  # what the run did with it (MLflow's `mlflow.data.context` input tag)


def log_dataset(client: MlflowClient, run_id: str, dataset: InputDataset) -> None:
    """`dataset` as an input of run `run_id`: the entity `mlflow.log_input` sends for a pandas dataset, its profile
    extended by `dataset.profile`."""
    from mlflow.data.pandas_dataset import PandasDataset
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source = _dataset_source()(dataset.source)
    with warnings.catch_warnings():  # its hint about integer columns is for model signatures, not datasets
        warnings.simplefilter("ignore", UserWarning)
        logged = PandasDataset(
            dataset.samples, source, targets=dataset.targets, name=dataset.name, digest=dataset.digest
        )
        entity = logged._to_mlflow_entity()  # what mlflow.log_input sends
    profile = {**json.loads(entity.profile or "{}"), **dataset.profile}
    entity = Dataset(entity.name, entity.digest, entity.source_type, entity.source, entity.schema, json.dumps(profile))
    context = InputTag(key="mlflow.data.context", value=dataset.context)
    client.log_inputs(run_id, datasets=[DatasetInput(dataset=entity, tags=[context])])


def copy_inputs(client: MlflowClient, source_run: str, run_ids: Iterable[str]) -> None:
    """The datasets run `source_run` took as inputs (the pipeline run's, logged by validate), as inputs of each of
    `run_ids` too: a train or head run shows what it was trained on, from whichever machine trains."""
    from mlflow.entities import DatasetInput

    inputs = client.get_run(source_run).inputs
    datasets = [DatasetInput(d.dataset, d.tags) for d in (inputs.dataset_inputs if inputs else [])]
    if datasets:
        for run_id in run_ids:
            client.log_inputs(run_id, datasets=datasets)


@functools.cache
def _dataset_source() -> type:
    """The dataset source class of a DVC-tracked dataset (defined on first use: MLflow is imported late)."""
    from mlflow.data.dataset_source import DatasetSource

    class DvcSource(DatasetSource):
        """A dataset DVC tracks: its path in the repository, data.dvc's md5 (what `dvc pull` fetches at that
        commit) and the git commit."""

        def __init__(self, where: Mapping[str, str]) -> None:
            self.where = dict(where)

        @staticmethod
        def _get_source_type() -> str:
            return "dvc"

        def load(self, dst_path: str | None = None) -> str:
            raise NotImplementedError("`dvc pull` at the recorded git commit fetches this dataset")

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> Any:
            raise NotImplementedError

        def to_dict(self) -> dict[str, str]:
            return self.where

        @classmethod
        def from_dict(cls, source_dict: dict) -> Any:
            return cls(source_dict)

    return DvcSource
