"""What every `msa` command shares: the consoles it prints to and the --params option."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["ParamsOpt", "err", "out"]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read settings from.")]
