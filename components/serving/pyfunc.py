"""Loading a served model: MLflow's entry point for the packages this project logs, and `load_model` for
`msa predict`, `msa serve` and the gate.

Every logged model's MLmodel names `LOADER_MODULE` (`components.serving`, which hands MLflow's call to
`_load_pyfunc` here) and the package directory as its data (`components.serving.package`). Ours are verified
against their signature (`components.serving.signing`) before a byte is read, then load through `Predictor`, which
reads JSON, safetensors, ONNX and weights-only torch files: no pickle, and no code from the model directory.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.core.errors import DataError, UntrustedModelError, UserError, first_line
from components.serving.package import Evidence, read_evidence
from components.serving.predictor import Predictor

__all__ = ["LOADER_MODULE", "TRUST_ENV", "LoadedModel", "check_model_dir", "load_model", "local_model"]

TRUST_ENV = "MSA_TRUST_MODEL"  # "1": MLflow's loader skips verification (what `--trust-model` means for serving)

# The name every logged MLmodel records as its loader: the serving package, a name that stays as modules move.
LOADER_MODULE = "components.serving"


def _load_pyfunc(data_path: str) -> Predictor:
    """MLflow's entry point (`LOADER_MODULE`, which re-exports it): the package directory it was logged with,
    verified against its signature first (`mlflow models serve` and `mlflow.pyfunc.load_model` come here; the code
    is this installed module, never a copy from the artifact store). `MSA_TRUST_MODEL=1` skips the check, as
    `--trust-model` does."""
    from components.serving import signing

    if os.environ.get(TRUST_ENV) != "1":
        signing.verify(Path(data_path), str(data_path))
    return Predictor(data_path)


@dataclass(frozen=True)
class LoadedModel:
    predictor: Any  # a Predictor (a model this project packaged), or a trusted foreign mlflow.pyfunc model
    input_names: list[str] | None
    required: list[str]
    path: Path  # the local MLflow model directory
    evidence: Evidence | None = None  # ours, verified: what registration measured and signed


def load_model(model_uri: str, scratch: Path, *, trust_model: bool = False, verify: bool = True) -> LoadedModel:
    """The MLflow model at `model_uri` (a local directory, models:/ or runs:/), downloaded into `scratch`.

    Ours (`loader_module` `LOADER_MODULE`, safetensors and JSON inside) is verified against its signature before a
    byte of it is read (`components.serving.signing`), then loads through `Predictor`; no code from the model
    directory runs. Any other model's loader is code shipped with it (e.g. `python_model.pkl`): refused unless
    `trust_model`, which also loads ours unverified. `verify=False` is for the gate alone: it re-scores a champion
    whose signature fails, through `Predictor`, which reads only data formats.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from components.serving import signing

    local = Path(model_uri)
    try:
        if not local.is_dir():
            local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(scratch)))
        if not (local / "MLmodel").is_file():
            raise DataError(local, "no MLmodel file here: not an MLflow model directory")
        metadata = Model.load(local)
    except MlflowException as e:
        raise DataError(Path(model_uri), f"cannot load the model: {first_line(e)}") from None
    schema = metadata.get_input_schema()
    names = schema.input_names() if schema is not None else None
    required = [c.name for c in schema.inputs if c.required] if schema is not None else []
    flavor = metadata.flavors.get("python_function", {})
    if flavor.get("loader_module") == LOADER_MODULE and "data" in flavor and not flavor.get("code"):
        package = local / flavor["data"]
        if not package.resolve().is_relative_to(local.resolve()):
            raise UntrustedModelError(f"{model_uri}: its MLmodel points outside the model directory")
        checked = verify and not trust_model
        if checked:
            signing.verify(package, model_uri)
        evidence = read_evidence(package) if checked else None
        return LoadedModel(Predictor(package), names, required, local, evidence)
    if not trust_model:
        raise UntrustedModelError(
            f"{model_uri}: not a model this project packaged; loading it runs code shipped inside it "
            f"(its loader is {flavor.get('loader_module') or 'not a python_function'}, e.g. a pickle). "
            "Pass --trust-model only if you trust whoever wrote it"
        )
    try:
        return LoadedModel(mlflow.pyfunc.load_model(str(local)), names, required, local)
    except MlflowException as e:
        raise DataError(local, f"cannot load the model: {first_line(e)}") from None


def local_model(model_uri: str) -> Path | None:
    """The local directory `model_uri` names (a path, or a file: URI), to be read in place; None for a URI that
    MLflow resolves (models:/, runs:/, a remote store)."""
    parsed = urllib.parse.urlparse(model_uri)
    if parsed.scheme.lower() == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UserError(
                f"{model_uri}: names another machine; a file: URI names a directory on this one (file:///path/to/model)"
            )
        return Path(urllib.request.url2pathname(parsed.path))
    if not parsed.scheme or Path(model_uri).is_dir():
        return Path(model_uri)
    return None


def check_model_dir(path: Path) -> None:
    """A local model is read where it is, so it must be an MLflow model directory: nothing else is looked at."""
    rule = "--model names an MLflow model directory, or a models:/ or runs:/ URI"
    if not path.exists():
        raise DataError(path, f"no such model directory: {rule}")
    if not path.is_dir():
        raise DataError(path, f"is not a directory: {rule}")
    if not (path / "MLmodel").is_file():
        raise DataError(path, "no MLmodel file here: not an MLflow model directory")
