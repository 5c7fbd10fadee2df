"""The docs run as written: every ```bash block of README.md, docs/getting-started.md, docs/how-to/*.md and
examples/README.md, and every input in examples/, against the project a newcomer has after `make run`.

A page's blocks run in order in one `bash` (`set -euo pipefail`), in a fresh copy of that project (built once per
session with small settings, tests/docs/conftest.py), with the venv first on PATH and HOME a copy of the build's.
tests/docs/blocks.py holds the convention (markers for slow, skipped and background blocks). A page with slow blocks
is two tests: without them (`make test`) and with them (marked slow: `make test-all`); a page of SLOW_PAGES is one
test, marked slow.

The examples' tests and the pages share one module so that the project is built once, in one pytest-xdist worker.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from devtools.servers import free_port, serving, stop_group_id
from tests.docs.blocks import (
    HELPERS,
    Block,
    BlockError,
    block_failure,
    page_script,
    parse_page,
    port_locks,
    runnable,
)
from tests.docs.conftest import REPO, Built, user_environment

pytestmark = pytest.mark.integration

PAGE_TIMEOUT = 1200  # seconds for one page's blocks
EXAMPLES = REPO / "examples"
MODEL = "models:/msa-demo@champion"


def pages() -> list[str]:
    found = [REPO / "README.md", REPO / "docs/getting-started.md", *sorted((REPO / "docs/how-to").glob("*.md"))]
    found.append(EXAMPLES / "README.md")
    return [str(p.relative_to(REPO)) for p in found if p.is_file()]


# Pages whose every block runs only under the slow marker: what they exercise `make test` covers elsewhere, and a
# run of each costs one to two minutes of the suite's budget. Each one with why.
SLOW_PAGES = {
    "docs/getting-started.md": "repeats the README's register, predict, serve and MLflow UI blocks",
    "docs/how-to/serve-predict.md": "repeats the README's predict and serve blocks, starting both servers again",
    "docs/how-to/prefect-local.md": "starts a Prefect server and a worker (tests/e2e run the deployments)",
    "docs/how-to/dvc-experiments.md": "runs DVC experiments (tests/integration/test_dvc_experiments.py runs them)",
    "examples/README.md": "the examples' tests below score every file and post the request",
}


def page_params() -> list:
    params = []
    for page in pages():
        if page in SLOW_PAGES:
            params.append(pytest.param(page, True, id=f"{page}+slow", marks=pytest.mark.slow))
            continue
        params.append(pytest.param(page, False, id=page))
        try:
            slow = any(b.runnable and b.slow for b in parse_page((REPO / page).read_text(), page))
        except BlockError:
            slow = False  # the test without slow blocks reports it
        if slow:
            params.append(pytest.param(page, True, id=f"{page}+slow", marks=pytest.mark.slow))
    return params


def run_blocks(blocks: list[Block], built: Built, scratch: Path, timeout: float = PAGE_TIMEOUT) -> None:
    """Run `blocks` (one page's, in order) in one bash in `built.project`; fail naming the block that failed."""
    name = blocks[0].page.replace("/", "_")
    script, helpers = scratch / f"{name}.sh", scratch / "doc-helpers.sh"
    script.write_text(page_script(blocks))
    helpers.write_text(HELPERS)
    status, groups, logs = scratch / "block", scratch / "groups", scratch / "logs"
    logs.mkdir()
    groups.touch()
    env = user_environment(
        built, DOC_HELPERS=str(helpers), DOC_STATUS=str(status), DOC_GROUPS=str(groups), DOC_LOGS=str(logs)
    )
    out, err = scratch / "stdout", scratch / "stderr"
    with port_locks(b.port for b in blocks if b.port is not None):
        with out.open("w") as stdout, err.open("w") as stderr:
            shell = subprocess.Popen(
                ["bash", str(script)], cwd=built.project, env=env, stdout=stdout, stderr=stderr, start_new_session=True
            )
        started = time.monotonic()
        try:
            code = shell.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            stop_group_id(shell.pid)  # what a foreground block left running
            for pgid in {int(line) for line in groups.read_text().split()}:
                stop_group_id(pgid)  # the background blocks: at the end of the page
            shell.wait()
    print(f"{blocks[0].page}: {len(blocks)} blocks in {time.monotonic() - started:.0f} s")
    if code != 0:
        what = f"timed out after {timeout} s" if code is None else f"exited {code}"
        report = block_failure(blocks, status, err.read_text(errors="replace"), out.read_text(errors="replace"))
        for log in sorted(logs.glob("*.log")):
            report += f"\n--- {log.name} (last 2000 characters):\n{log.read_text(errors='replace')[-2000:]}"
        pytest.fail(f"{blocks[0].page} {what}: {report}", pytrace=False)


@pytest.mark.parametrize(("page", "slow"), page_params())
def test_page_blocks_run_as_written(page: str, slow: bool, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    try:
        blocks = parse_page((REPO / page).read_text(), page)
    except BlockError as e:
        pytest.fail(str(e), pytrace=False)
    chosen = runnable(blocks, slow=slow)
    if not chosen:  # before the project is built
        slow_ones = any(b.runnable for b in blocks)
        pytest.skip(f"{page} has no ```bash block to run" + (" but slow ones" if slow_ones and not slow else ""))
    run_blocks(chosen, request.getfixturevalue("fresh_project"), tmp_path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_predictions(rows: list[dict], predictions: list[dict], what: str) -> None:
    assert len(predictions) == len(rows), what
    for row, prediction in zip(rows, predictions, strict=True):
        assert prediction.get("id") == row.get("id"), (what, prediction)
        assert math.isfinite(prediction["score"]), (what, prediction)  # a regression: unclamped, near -3 to 3
        assert prediction["class"] == ("positive" if prediction["score"] >= 0 else "negative"), (what, prediction)


def test_msa_predict_scores_every_example_and_uses_its_modalities(fresh_project: Built, tmp_path: Path) -> None:
    """`msa predict` on each examples/*.jsonl as the newcomer runs it; the image and the frames change the scores
    (they are read, not ignored), against the same rows with the text alone."""
    examples = sorted(EXAMPLES.glob("*.jsonl"))
    assert {p.name for p in examples} >= {"rows.jsonl", "image.jsonl", "frames.jsonl"}
    env = user_environment(fresh_project)
    text_only, scores = [], {}
    for example in examples:
        output = tmp_path / f"{example.stem}.predictions.jsonl"
        args = ["msa", "predict", "--model", MODEL, "--input", f"examples/{example.name}", "--output", str(output)]
        result = subprocess.run(args, cwd=fresh_project.project, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}"
        rows = read_jsonl(example)
        check_predictions(rows, read_jsonl(output), example.name)
        if any(set(row) - {"id", "text"} for row in rows):
            text_only += [{"id": row["id"], "text": row["text"]} for row in rows]
            scores |= {p["id"]: p["score"] for p in read_jsonl(output)}
    stripped = tmp_path / "text-only.jsonl"
    stripped.write_text("".join(json.dumps(row) + "\n" for row in text_only))
    args = ["msa", "predict", "--model", MODEL, "--input", str(stripped)]
    result = subprocess.run(args, cwd=fresh_project.project, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for prediction in read_jsonl(tmp_path / "text-only.predictions.jsonl"):
        assert prediction["score"] != pytest.approx(scores[prediction["id"]], abs=1e-6), prediction["id"]


@pytest.mark.e2e
def test_the_served_model_scores_examples_request_json(fresh_project: Built, tmp_path: Path) -> None:
    """examples/request.json posted to `msa serve` of the registered model: one prediction per record."""
    port, log = free_port(), tmp_path / "serve.log"
    args = ["msa", "serve", MODEL, "--port", str(port)]
    with serving(
        args, f"http://127.0.0.1:{port}/ping", log, cwd=fresh_project.project, env=user_environment(fresh_project)
    ):
        body = (EXAMPLES / "request.json").read_bytes()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as e:
            pytest.fail(f"{e.code}: {e.read().decode()[:2000]}")
    records = json.loads(body)["dataframe_records"]
    check_predictions([{} for _ in records], answer["predictions"], "request.json")
