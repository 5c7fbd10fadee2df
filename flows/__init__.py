"""Prefect flows and the `msa` command line: thin wrappers over `components`."""

import os

# Prefect's telemetry writes to the ephemeral server's SQLite database while the first flow run starts, and the
# two writers then collide ("database is locked" tracebacks). It also needs the internet. Users may turn it on.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
