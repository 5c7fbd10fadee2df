"""Servers on loopback for the tests, the benchmarks and the docs scripts: a free port, a server started the way
users start it in a process group of its own and waited for until its health URL answers, and the whole group
stopped whatever happens (a server's workers and children go with it); and a process group stopped by its id, for
groups this process did not start (a shell's background jobs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import psutil

__all__ = ["ServerError", "free_port", "free_ports", "serving", "stop_group", "stop_group_id"]

LOG_TAIL = 3000  # characters of a server's log that an error shows


class ServerError(RuntimeError):
    """A server exited before it answered, or did not answer in time; the message ends with its log's tail."""


def free_port() -> int:
    """A TCP port free on loopback now (another process may take it before a server binds it)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` different TCP ports free on loopback now: all bound at once, so that none comes twice."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def stop_group(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM to the process's group (started with start_new_session), SIGKILL if it is not gone in `timeout` s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def stop_group_id(pgid: int, grace: float = 15) -> None:
    """SIGTERM to process group `pgid`, SIGKILL if any live process of it (zombies aside) is left after `grace` s.
    For groups known by their id (a shell's background jobs), whose leader may not be this process's child or may be
    gone already; stop_group stops a Popen's group and waits for its leader."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_in_group(p, pgid) for p in psutil.process_iter()):
            time.sleep(0.2)


def _in_group(process: psutil.Process, pgid: int) -> bool:
    with suppress(psutil.Error, ProcessLookupError):
        return os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE
    return False


def _wait_until_healthy(process: subprocess.Popen, args: list[str], health: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise ServerError(f"{' '.join(args)} exited {process.returncode}:\n{log.read_text()[-LOG_TAIL:]}")
        try:
            with urllib.request.urlopen(health, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:  # refused, reset, timed out, or an HTTP error status while it starts
            pass
        if time.monotonic() > deadline:
            raise ServerError(f"{health} did not answer within {timeout} s:\n{log.read_text()[-LOG_TAIL:]}")
        time.sleep(0.5)


@contextmanager
def serving(
    args: list[str],
    health: str,
    log: Path,
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 240,
) -> Iterator[subprocess.Popen]:
    """Run `args` in its own process group, its output in `log`, until `health` answers 200; on exit, stop the
    whole group. `env` is the server's whole environment (None: this process's)."""
    with log.open("w") as sink:
        process = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_until_healthy(process, args, health, log, timeout)
        yield process
    finally:
        stop_group(process)
