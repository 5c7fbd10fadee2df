"""Delivery: the served model (a signed package behind MLflow's pyfunc), `msa serve`'s guarded server, signing.

`components.serving` is the `loader_module` every logged model's MLmodel names, so MLflow's loader finds
`_load_pyfunc` here; the package stays light until a model is loaded.
"""

from __future__ import annotations

from typing import Any


def _load_pyfunc(data_path: str) -> Any:
    from components.serving.pyfunc import _load_pyfunc as load

    return load(data_path)
