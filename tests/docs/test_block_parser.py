"""The docs' shell-block convention (tests/docs/blocks.py) on strings: which blocks run and how, the markers' errors,
and the script that runs a page, on a throwaway page in a temporary directory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from devtools.servers import free_port, stop_group_id
from tests.docs.blocks import HELPERS, BlockError, block_failure, page_script, parse_page, port_locks, runnable

PAGE = textwrap.dedent(
    """\
    # A page

    ```bash
    echo one
    ```

    ```text
    one
    ```

    <!-- test: slow -->
    ```bash
    make run
    ```

    <!-- test: skip (needs a GPU) -->
    ```bash
    nvidia-smi
    ```

    - a list item:
      ```bash
      echo indented
      ```

    <!-- team-setup: begin -->
    ```bash
    initdb -D team
    ```
    <!-- team-setup: end -->

    ```python
    print("not run")
    ```

    <!-- test: background port=5001 timeout=30 -->
    ```bash
    msa serve models:/msa-demo@champion
    ```
    """
)


def test_blocks_markers_and_languages() -> None:
    blocks = parse_page(PAGE, "page.md")
    assert [(b.line, b.language) for b in blocks] == [
        (3, "bash"),
        (7, "text"),
        (12, "bash"),
        (17, "bash"),
        (22, "bash"),
        (27, "bash"),
        (32, "python"),
        (37, "bash"),
    ]
    one, _, slow, gpu, indented, team, _, serve = blocks
    assert one.code == "echo one\n" and one.runnable and not one.slow
    assert slow.slow and slow.runnable
    assert gpu.skip == "needs a GPU" and not gpu.runnable
    assert indented.code == "echo indented\n"
    assert team.skip and "test_readme_team_setup" in team.skip
    assert serve.port == 5001 and serve.port_timeout == 30 and not serve.slow
    assert [b.line for b in runnable(blocks, slow=False)] == [3, 22, 37]
    assert [b.line for b in runnable(blocks, slow=True)] == [3, 12, 22, 37]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("<!-- test: skip -->\n```bash\nx\n```\n", r"page.md:1: `test: skip` needs a reason"),
        ("<!-- test: skip () -->\n```bash\nx\n```\n", r"needs a reason"),
        ("<!-- test: skip because -->\n```bash\nx\n```\n", r"needs a reason"),
        ("<!-- test: sloww -->\n```bash\nx\n```\n", r"unknown test marker 'sloww'"),
        ("<!-- test: background -->\n```bash\nx\n```\n", r"`background` and `port=NNNN` go together"),
        ("<!-- test: port=5001 -->\n```bash\nx\n```\n", r"go together"),
        ("<!-- test: background port=99999 -->\n```bash\nx\n```\n", r"unknown test marker 'port=99999'"),
        ("<!-- test: slow -->\n```text\nx\n```\n", r"page.md:1: test markers apply to ```bash blocks, not ```text"),
        ("<!-- test: slow -->\n\n```bash\nx\n```\n", r"page.md:1: a test marker goes on the line right before"),
        ("<!-- test: slow -->\ntext\n", r"page.md:1: test marker not followed by a ```bash fence"),
        ("text\n<!-- test: slow -->\n", r"page.md:2: test marker not followed"),
        ("run it <!-- test: slow -->\n```bash\nx\n```\n", r"page.md:1: a test marker must be a line of its own"),
        ("```bash\nx\n", r"page.md:1: the fence opened here is never closed"),
        ("<!-- team-setup: begin -->\n```bash\nx\n```\n", r"page.md:1: team-setup begins here and never ends"),
    ],
    ids=lambda value: value.splitlines()[0][:40] if "\n" in value else "",
)
def test_marker_errors_name_page_and_line(text: str, error: str) -> None:
    with pytest.raises(BlockError, match=error):
        parse_page(text, "page.md")


def test_script_keeps_the_pages_line_numbers() -> None:
    blocks = runnable(parse_page(PAGE, "page.md"), slow=True)
    lines = page_script(blocks).splitlines()
    for block in blocks:
        first = block.code.splitlines()[0]
        assert lines[block.line] == first  # the line after the fence (0-based: block.line)
        assert lines[block.line - 1].startswith(f"__doc_begin {block.line} ")


def run_page(text: str, tmp_path: Path, timeout: float = 60) -> tuple[int, str, str, list[int]]:
    """The page's runnable (not slow) blocks in one bash, as test_shell_blocks runs them, in a new directory under
    `tmp_path`: (exit code, stdout, the failure's report, the background blocks' process groups)."""
    blocks = runnable(parse_page(text, "page.md"), slow=False)
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))
    (tmp_path / "page.md.sh").write_text(page_script(blocks))
    (tmp_path / "helpers.sh").write_text(HELPERS)
    (tmp_path / "logs").mkdir()
    (tmp_path / "groups").touch()
    env = {
        "PATH": os.environ["PATH"],
        "DOC_HELPERS": str(tmp_path / "helpers.sh"),
        "DOC_STATUS": str(tmp_path / "block"),
        "DOC_GROUPS": str(tmp_path / "groups"),
        "DOC_LOGS": str(tmp_path / "logs"),
    }
    shell = subprocess.run(
        ["bash", str(tmp_path / "page.md.sh")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )
    groups = [int(g) for g in (tmp_path / "groups").read_text().split()]
    report = block_failure(blocks, tmp_path / "block", shell.stderr, shell.stdout) if shell.returncode else ""
    return shell.returncode, shell.stdout, report, groups


def test_blocks_share_one_shell_and_a_failure_names_its_block(tmp_path: Path) -> None:
    page = "intro\n\n```bash\nX=41\ncd sub 2>/dev/null || mkdir sub\n```\n\n```bash\necho $((X + 1))\n```\n"
    code, stdout, _, _ = run_page(page, tmp_path)
    assert code == 0 and stdout.strip() == "42"

    failing = "```bash\necho fine >&2\n```\n\n```bash\necho before\necho boom >&2\nfalse\necho never\n```\n"
    code, stdout, report, _ = run_page(failing, tmp_path)
    assert code == 1 and "never" not in stdout
    assert report.startswith("page.md, the block at line 5, failed:")
    assert "boom" in report and "fine" not in report.split("its stderr")[1]


def test_unset_variables_and_pipelines_fail(tmp_path: Path) -> None:
    code, _, report, _ = run_page("x\n```bash\necho $UNSET_THING\n```\n", tmp_path)
    assert code != 0 and "line 2" in report and "UNSET_THING: unbound variable" in report
    code, _, report, _ = run_page("x\n```bash\nfalse | cat\n```\n", tmp_path)
    assert code != 0 and "the block at line 2" in report


def test_background_block_listens_then_the_page_goes_on(tmp_path: Path) -> None:
    port = free_port()
    server = f"{sys.executable} -m http.server {port} --bind 127.0.0.1"
    page = (
        f"x\n<!-- test: background port={port} timeout=30 -->\n```bash\n{server}\n```\n\n"
        f"```bash\ncurl -sf -o /dev/null 127.0.0.1:{port}/ && echo served\n```\n"
    )
    code, stdout, report, groups = run_page(page, tmp_path)
    try:
        assert code == 0, report
        assert stdout.strip() == "served"
        assert len(groups) == 1
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # still up after the page's bash ended: the test stops it
    finally:
        for pgid in groups:
            stop_group_id(pgid)
    deadline = time.monotonic() + 10  # a stopped server may take a moment to let its port go
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"something still listens on {port} 10 s after the test stopped the page's server")


def test_background_block_that_ends_or_never_listens_fails_the_page(tmp_path: Path) -> None:
    port = free_port()
    page = f"x\n<!-- test: background port={port} timeout=3 -->\n```bash\necho cannot start >&2; exit 3\n```\n"
    code, _, report, _ = run_page(page, tmp_path)
    assert code != 0 and "ended before" in report and "cannot start" in report
    page = f"x\n<!-- test: background port={port} timeout=2 -->\n```bash\nsleep 30\n```\n"
    code, _, report, groups = run_page(page, tmp_path)
    assert code != 0 and f"127.0.0.1:{port} did not listen within 2 s" in report
    for pgid in groups:
        stop_group_id(pgid)


def test_a_fixed_port_is_held_by_one_test_at_a_time() -> None:
    port = free_port()
    with port_locks([port]), pytest.raises(TimeoutError, match=f"port {port}"), port_locks([port], timeout=1):
        pass
    with port_locks([port, port]):  # free again; a page naming a port twice takes it once
        pass
