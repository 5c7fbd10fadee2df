"""Start real servers on loopback the way users start them, and stop them whatever happens: devtools.servers with
the tests' environment, and the stop of the ephemeral Prefect server that in-process flows start."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devtools import servers
from devtools.servers import free_port
from tests.integration.shell import environment

__all__ = ["free_port", "serving", "stop_ephemeral_prefect_server"]


@contextmanager
def serving(
    args: list[str], health: str, log: Path, *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240
) -> Iterator[subprocess.Popen]:
    """Run `args` in its own process group, with this environment's executables and `env`, until `health` answers
    200; on exit, stop the whole group."""
    with servers.serving(args, health, log, cwd=cwd, env=environment(**(env or {})), timeout=timeout) as process:
        yield process


@pytest.fixture(scope="module", autouse=True)
def stop_ephemeral_prefect_server() -> Iterator[None]:
    """Stop the ephemeral Prefect server the in-process flows of a module started, while pytest still captures its
    output (left to Prefect's atexit hook, its goodbye is logged to a closed stream). Autouse in the modules that
    import it."""
    yield
    from prefect.server.api.server import SubprocessASGIServer

    SubprocessASGIServer().stop()  # the instance get_client starts (no port); a no-op when none runs
