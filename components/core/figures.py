"""Figures as PNG bytes, with matplotlib's object API: no pyplot state, no GUI backend, nothing shown."""

from __future__ import annotations

import io
import math
from typing import Any

__all__ = ["grid", "png"]


def grid(panels: int, width: float = 3.4, height: float = 3.2) -> tuple[Any, list]:
    """A figure of `panels` axes, at most 4 a row; the unused cells of the last row hidden."""
    from matplotlib.figure import Figure  # matplotlib is imported only when plotting

    cols = min(panels, 4)
    rows = math.ceil(panels / cols)
    figure = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).flatten().tolist()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return figure, axes[:panels]


def png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
