"""What a model was trained from: content hashes of the dataset, the settings and the code.

Registration records them on the run and on the registered version; a retrain whose hashes equal a registered
version's has nothing new to learn, so the pipeline flow skips it. They are content hashes rather than data.dvc's
md5 and the git commit: a dataset regenerated without `dvc add`, or a module edited but not committed, still counts
as a change, and a clone in another directory, or a copy without git, hashes the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from components.config import Params

CODE_ROOT = Path(__file__).parent  # the `components` package: every line of ML logic
# Orchestration settings (where training runs, retries) do not change what is trained.
_NOT_IN_PARAMS_HASH = {"pipeline"}


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
    settings = params.model_dump_json(by_alias=True, exclude=_NOT_IN_PARAMS_HASH)
    return Lineage(
        data=tree_digest(params.data.raw).hexdigest()[:16],
        params=hashlib.sha256(settings.encode()).hexdigest()[:16],
        code=tree_digest(CODE_ROOT, "*.py").hexdigest()[:16],
    )


def tree_digest(root: str | Path, pattern: str = "*", digest: hashlib._Hash | None = None) -> hashlib._Hash:
    """Feed every file under `root` matching `pattern` (relative path, then bytes, in path order) into a sha256."""
    root = Path(root)
    digest = digest or hashlib.sha256()
    for file in sorted(p for p in root.rglob(pattern) if p.is_file() and "__pycache__" not in p.parts):
        digest.update(f"{file.relative_to(root).as_posix()}\0".encode())
        with file.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest
