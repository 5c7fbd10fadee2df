"""What a model was trained from: content hashes of the dataset, the settings and the code.

Registration records them on the run and on the registered version; a retrain whose hashes equal a registered
version's has nothing new to learn, so the pipeline flow skips it. They are content hashes rather than data.dvc's
md5 and the git commit: a dataset regenerated without `dvc add`, or a module edited but not committed, still counts
as a change, and a clone in another directory, or a copy without git, hashes the same.

The code hash covers only the modules that featurize and train import, and each as its syntax tree without
docstrings: editing the tracking code, a docstring or a comment does not ask for a retrain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from components.core.config import Params, result_settings
from components.core.hashing import CODE_ROOT, code_digest, module_closure, tree_digest
from components.data.dataset import read_manifest

__all__ = ["TRAINED_BY", "Lineage", "lineage", "trained_code_hash"]

TRAINED_BY = ("components.features.featurize", "components.training.train")  # what `msa featurize` and `msa train` call


@dataclass(frozen=True)
class Lineage:
    data: str
    params: str
    code: str

    def tags(self) -> dict[str, str]:
        return {"data_hash": self.data, "params_hash": self.params, "code_hash": self.code}

    def matches(self, tags: Mapping[str, str]) -> bool:
        return all(tags.get(key) == value for key, value in self.tags().items())

    def summary(self) -> str:
        return f"data {self.data}, params {self.params}, code {self.code}"


def lineage(params: Params) -> Lineage:
    # Paths, devices, timeouts and orchestration (config.RUNTIME_SETTINGS) do not change what is trained.
    settings = json.dumps(result_settings(params), sort_keys=True)
    read_manifest(params.data.raw)  # a dataset directory, or refused at once: hashing a folder that is not one is waste
    return Lineage(
        data=tree_digest(params.data.raw).hexdigest()[:16],
        params=hashlib.sha256(settings.encode()).hexdigest()[:16],
        code=trained_code_hash(),
    )


def trained_code_hash() -> str:
    """The hash of the code a trained model depends on: what featurize and train import, docstrings aside."""
    return code_digest(module_closure(*TRAINED_BY, root=CODE_ROOT), CODE_ROOT.parent).hexdigest()[:16]
