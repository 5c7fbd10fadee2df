"""DVC experiments as a user runs them, in a git repository on tiny data: a queued sweep, `dvc exp show` comparing
it in a table that fits a terminal, `dvc exp apply` / `branch`, `dvc metrics diff` and `dvc plots diff` against the
previous commit, settings that change no result rerunning nothing, and the model fetched with `dvc artifacts get`."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.shell import BIN, run

pytestmark = pytest.mark.integration

DVC = str(BIN / "dvc")
TINY = {  # enough to train and compress for real, in seconds
    "data": {"demo": {"size": 60}},
    "model": {"hidden": 8, "textcnn": {"feature_maps": 4}},
    "train": {"epochs": 2, "batch_size": 8},
    "compress": {"variants": ["int8"], "latency_runs": 3, "throughput_batch": 4},
}
IDENTITY = {"user.name": "msa tests", "user.email": "tests@msa.invalid"}


def git(project: Path, *args: str) -> str:
    return run(["git", *args], cwd=project).stdout


def dvc(project: Path, *args: str) -> str:
    return run([DVC, *args], cwd=project).stdout


def set_params(project: Path, changes: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in changes.items():
        for key, value in values.items():
            current = params[section].get(key)
            params[section][key] = current | value if isinstance(current, dict) else value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def wait_for_queue(project: Path, timeout: float = 480) -> None:
    deadline = time.monotonic() + timeout
    while (status := dvc(project, "queue", "status")) and any(s in status for s in ("Queued", "Running")):
        assert time.monotonic() < deadline, f"the queue did not finish in {timeout} s:\n{status}"
        time.sleep(2)
    failed = [line.split()[1] for line in status.splitlines() if "Failed" in line]
    assert not failed, status + "".join(dvc(project, "queue", "logs", name) for name in failed)


def test_a_queued_sweep_compares_applies_and_diffs(project, msa, tmp_path):
    for key, value in IDENTITY.items():
        git(project, "config", key, value)
    set_params(project, TINY)
    msa("data", "demo", cwd=project)  # 60 samples: data.dvc records them, the cache holds them
    assert "Data and pipelines are up to date" in dvc(project, "status", "data.dvc")
    dvc(project, "repro")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "baseline")
    assert "metrics/evaluate.json" in git(project, "ls-files", "metrics")  # what DVC compares is in git

    # The trained model as a versioned artifact: a GTO version tag, then `dvc artifacts get` from the repository.
    run([str(BIN / "gto"), "register", "msa-model", "--version", "v0.1.0"], cwd=project)
    fetched = tmp_path / "fetched"
    dvc(project, "artifacts", "get", str(project), "msa-model", "--rev", "v0.1.0", "-o", str(fetched))
    model = project / "models" / "trained"
    assert (fetched / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    assert json.loads((fetched / "model.json").read_text()) == json.loads((model / "model.json").read_text())

    # Settings that say where files go or how fast work runs change no result: nothing reruns.
    set_params(project, {"featurize": {"workers": 3, "device": "cpu"}, "train": {"device": "cpu"}})
    assert "Data and pipelines are up to date" in dvc(project, "status")
    git(project, "checkout", "params.yaml")

    try:
        dvc(project, "exp", "run", "--queue", "-S", "train.lr=0.01,0.0003")
        dvc(project, "queue", "start", "--jobs", "2")
        wait_for_queue(project)
    finally:
        run([DVC, "queue", "stop", "--kill"], cwd=project, check=False)

    shown = json.loads(dvc(project, "exp", "show", "--json"))
    baseline = next(row for row in shown if row["rev"] != "workspace")
    experiments = {exp["name"]: exp["revs"][0]["data"] for exp in baseline["experiments"]}
    assert len(experiments) == 2, experiments
    lrs = {name: data["params"]["params.yaml"]["data"]["train"]["lr"] for name, data in experiments.items()}
    assert sorted(lrs.values()) == [0.0003, 0.01]
    headlines = {name: data["metrics"]["metrics/evaluate.json"]["data"] for name, data in experiments.items()}
    first, second = headlines.values()
    assert first["test"]["fusion"] != second["test"]["fusion"], headlines
    assert all(
        set(data["metrics"]) == {"metrics/evaluate.json", "metrics/compress.json"} for data in experiments.values()
    )

    # The default table, as a user types it: every changed column, and no more than 30 of them (the CSV adds two,
    # rev and typ, to the table's Experiment, Created, State and Executor).
    table = dvc(project, "exp", "show", "--only-changed", "--csv")
    header = next(csv.reader(io.StringIO(table)))
    assert "train.lr" in header and "test.fusion.mae" in header and "int8.faster" in header, header
    assert len(header) - 2 <= 30, (len(header), header)

    # The runs' training curves on one chart, one line per experiment.
    names = sorted(experiments, key=lambda name: lrs[name])
    (curves,) = json.loads(dvc(project, "plots", "diff", *names, "--json"))["data"]["metrics/plots/history.csv"]
    assert curves["revisions"] == names and {row["rev"] for row in curves["content"]["data"]["values"]} == set(names)

    # Apply the faster learner's run, commit it: the workspace holds its metrics and outputs (from DVC's cache),
    # and `dvc metrics diff` shows what changed against the baseline commit.
    chosen = names[1]
    dvc(project, "exp", "apply", chosen)
    assert json.loads((project / "metrics/evaluate.json").read_text()) == headlines[chosen]
    assert "Data and pipelines are up to date" in dvc(project, "status")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", f"apply {chosen}")
    diff = json.loads(dvc(project, "metrics", "diff", "HEAD~1", "--json"))
    mae = diff["metrics/evaluate.json"]["test.fusion.mae"]
    assert mae["new"] == headlines[chosen]["test"]["fusion"]["mae"] and mae["diff"] != 0, diff
    assert json.loads(dvc(project, "params", "diff", "HEAD~1", "--json"))["params.yaml"]["train.lr"]["new"] == 0.01

    dvc(project, "exp", "branch", names[0], "slow-learner")
    branched = json.loads(git(project, "show", "slow-learner:metrics/evaluate.json"))
    assert branched == headlines[names[0]]
