"""Serving: the served model (a signed package behind MLflow's pyfunc), logging it to MLflow, `msa serve`'s guarded
server, signing.

    package         the serving package's format, its input bounds and the gate's evidence
    values          the input columns' values, bounded and decoded (and a dataset's rows written as them)
    predictor       `Predictor`: raw rows -> the model's tensors -> scores and classes
    pyfunc          loading a logged model: MLflow's `_load_pyfunc`, `load_model` (verified first)
    publish         logging the package to MLflow as a pyfunc model: signature, requirements, input example
    signing         signing packages at registration, verifying them before any loader reads a byte
    input_files     `msa predict`'s input files, read in bounded chunks
    predict         `msa predict`: a file of rows scored into a file of predictions
    request_bounds  the shape of a request body, measured before MLflow parses it
    guard           `msa serve`: the request guard around MLflow's scoring app, and the server

`components.serving` is the `loader_module` every logged model's MLmodel names, so MLflow's loader finds
`_load_pyfunc` here; the package stays light until a model is loaded.
"""

from __future__ import annotations

from typing import Any

__all__ = ["_load_pyfunc"]  # what MLflow's loader calls


def _load_pyfunc(data_path: str) -> Any:
    from components.serving.pyfunc import _load_pyfunc as load

    return load(data_path)
