"""Prefect flows and the `msa` command line: thin wrappers over `components`."""

import logging
import os
import sys

# Prefect's telemetry writes to the ephemeral server's SQLite database while the first flow run starts, and the
# two writers then collide ("database is locked" tracebacks). It also needs the internet. Users may turn it on.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The first `msa run` migrates Prefect's new database before its ephemeral server answers: more than Prefect's
# default 20 s on a small, busy machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
# The components log what a person watching wants to see (the device a stage runs on, a line per epoch) at INFO.
# In a flow run Prefect hands those records to its own handlers: the terminal, and the server's UI when there is one.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "components")
logging.getLogger("components").setLevel(logging.INFO)
# Progress bars are for a person at a terminal: MLflow's artifact bars would fill a log or a pipe with redraws.
if not sys.stderr.isatty():
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
