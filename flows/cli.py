"""The `msa` command line: one subcommand per stage, the same functions DVC stages and Prefect tasks call."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
