"""The shell blocks of a docs page, and the one bash script that runs them in order.

The convention the pages follow:
- Only ```bash fences run (an indented fence too, e.g. in a list item). ```text is output; ```yaml, ```python,
  ```json and the rest are never run.
- A marker on the line right before a ```bash fence changes how it runs:
    <!-- test: slow -->                  runs only under the `slow` marker (`make test-all`)
    <!-- test: skip (why) -->            never runs; the reason is required
    <!-- test: background port=5001 -->  starts in the background (its own process group); the page goes on once
                                         127.0.0.1:5001 accepts connections (timeout=SECONDS, default 180), and
                                         the group is stopped when the page ends
  `slow` combines with `background`. A marker before anything but a ```bash fence is an error.
- Blocks between <!-- team-setup: begin --> and <!-- team-setup: end --> are left to
  tests/e2e/test_readme_team_setup.py.

`page_script` lays the blocks out so that a block's lines keep their line numbers in the page: bash's own errors
("README.md.sh: line 23: ...") point into the page.
"""

from __future__ import annotations

import fcntl
import re
import shlex
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)")
MARKER = re.compile(r"^\s*<!--\s*test:(?P<body>.*?)-->\s*$")
ANY_MARKER = re.compile(r"<!--\s*test:")
TEAM_BEGIN, TEAM_END = "<!-- team-setup: begin -->", "<!-- team-setup: end -->"
DEFAULT_PORT_TIMEOUT = 180.0
BLOCK_BANNER = "##### docs block at line {line} #####"  # written to stderr before each block runs
TEAM_SETUP = "the team-setup block: tests/e2e/test_readme_team_setup.py runs it"  # its blocks' skip reason


class BlockError(ValueError):
    """A page that breaks the convention: names the page and line."""


@dataclass(frozen=True)
class Block:
    page: str  # as reports name it, e.g. docs/how-to/serve.md
    line: int  # the opening fence's line, 1-based
    code: str  # the block's text, the fence's indentation removed; ends with a newline
    language: str
    slow: bool = False
    skip: str | None = None  # why it never runs
    port: int | None = None  # run in the background until the page ends, once this port listens
    port_timeout: float = DEFAULT_PORT_TIMEOUT

    @property
    def runnable(self) -> bool:
        return self.language == "bash" and self.skip is None


@dataclass(frozen=True)
class Marker:
    line: int
    slow: bool = False
    skip: str | None = None
    port: int | None = None
    port_timeout: float = DEFAULT_PORT_TIMEOUT


def parse_marker(body: str, page: str, line: int) -> Marker:
    body = body.strip()
    if body == "skip" or body.startswith("skip"):
        reason = re.fullmatch(r"skip\s*\((?P<reason>.*)\)", body, re.S)
        if reason is None or not reason.group("reason").strip():
            raise BlockError(f"{page}:{line}: `test: skip` needs a reason: <!-- test: skip (why it cannot run) -->")
        return Marker(line, skip=reason.group("reason").strip())
    slow = background = False
    port: int | None = None
    timeout = DEFAULT_PORT_TIMEOUT
    for token in body.split():
        if token == "slow":
            slow = True
        elif token == "background":
            background = True
        elif (found := re.fullmatch(r"port=(\d{1,5})", token)) and 0 < int(found.group(1)) < 65536:
            port = int(found.group(1))
        elif found := re.fullmatch(r"timeout=(\d+(?:\.\d+)?)", token):
            timeout = float(found.group(1))
        else:
            raise BlockError(
                f"{page}:{line}: unknown test marker {token!r} in <!-- test:{body} -->; "
                "expected slow, skip (reason), or background port=NNNN [timeout=SECONDS]"
            )
    if background != (port is not None):
        raise BlockError(
            f"{page}:{line}: `background` and `port=NNNN` go together: <!-- test: background port=5001 -->"
        )
    if not (slow or background):
        raise BlockError(f"{page}:{line}: empty test marker <!-- test:{body} -->")
    return Marker(line, slow=slow, port=port, port_timeout=timeout)


def parse_page(text: str, page: str) -> list[Block]:
    """Every fenced block of `text` (all languages), with its marker applied and the team-setup region skipped."""
    lines = text.splitlines()
    blocks: list[Block] = []
    pending: Marker | None = None
    team_since: int | None = None
    i = 0
    while i < len(lines):
        line, number = lines[i], i + 1
        if line.strip() == TEAM_BEGIN:
            if team_since is not None:
                raise BlockError(f"{page}:{number}: team-setup begins again inside the one begun at line {team_since}")
            team_since = number
        elif line.strip() == TEAM_END:
            if team_since is None:
                raise BlockError(f"{page}:{number}: team-setup ends without a begin")
            team_since = None
        elif found := MARKER.match(line):
            if pending is not None:
                raise BlockError(f"{page}:{pending.line}: test marker not followed by a ```bash fence")
            pending = parse_marker(found.group("body"), page, number)
            i += 1
            continue
        elif ANY_MARKER.search(line):
            raise BlockError(f"{page}:{number}: a test marker must be a line of its own: <!-- test: ... -->")
        elif fence := FENCE.match(line):
            indent, mark = fence.group("indent"), fence.group("fence")
            language = fence.group("info").lower()
            end = i + 1
            closing = re.compile(rf"^[ \t]*{re.escape(mark[0])}{{{len(mark)},}}[ \t]*$")
            while end < len(lines) and not closing.match(lines[end]):
                end += 1
            if end == len(lines):
                raise BlockError(f"{page}:{number}: the fence opened here is never closed")
            code = "".join(_dedent(body, indent) + "\n" for body in lines[i + 1 : end])
            if pending is not None and language != "bash":
                raise BlockError(f"{page}:{pending.line}: test markers apply to ```bash blocks, not ```{language}")
            marker = pending or Marker(number)
            skip = marker.skip
            if team_since is not None:
                skip = TEAM_SETUP
            blocks.append(Block(page, number, code, language, marker.slow, skip, marker.port, marker.port_timeout))
            pending = None
            i = end + 1
            continue
        if pending is not None and line.strip():
            raise BlockError(f"{page}:{pending.line}: test marker not followed by a ```bash fence")
        if pending is not None:  # a blank line between marker and fence
            raise BlockError(f"{page}:{pending.line}: a test marker goes on the line right before its fence")
        i += 1
    if pending is not None:
        raise BlockError(f"{page}:{pending.line}: test marker not followed by a ```bash fence")
    if team_since is not None:
        raise BlockError(f"{page}:{team_since}: team-setup begins here and never ends")
    return blocks


def _dedent(line: str, indent: str) -> str:
    return line[len(indent) :] if line.startswith(indent) else line.lstrip(" \t")


def runnable(blocks: list[Block], *, slow: bool) -> list[Block]:
    """The blocks that run: bash, not skipped, and the slow ones only when `slow`."""
    return [b for b in blocks if b.runnable and (slow or not b.slow)]


HELPERS = r"""
# Sourced by the page's script before its first block.
__doc_status=${DOC_STATUS:?}
__doc_groups=${DOC_GROUPS:?}
__doc_logs=${DOC_LOGS:?}
__doc_begin() {  # a block starts: say which, where the test finds it
    printf '%s\n' "$1" > "$__doc_status"
    printf '\n%s\n' "$2" >&2
}
__doc_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
__doc_port_free() {
    if __doc_port_open "$1"; then
        echo "docs test: port $1 is taken on 127.0.0.1 before the block that listens on it starts" >&2
        return 1
    fi
}
__doc_wait_port() {  # group port timeout log
    local started=$SECONDS
    until __doc_port_open "$2"; do
        if ! kill -0 "$1" 2>/dev/null; then
            echo "docs test: the background block ended before 127.0.0.1:$2 listened; its output:" >&2
            tail -c 4000 "$4" >&2
            return 1
        fi
        if (( SECONDS - started > $3 )); then
            echo "docs test: 127.0.0.1:$2 did not listen within $3 s; the block's output:" >&2
            tail -c 4000 "$4" >&2
            return 1
        fi
        sleep 0.5
    done
}
"""


def page_script(blocks: list[Block]) -> str:
    """One bash script running `blocks` (from one page, in order), each block's text on its own lines of the page.

    Each block first records its line in $DOC_STATUS and writes BLOCK_BANNER to stderr. A background block runs
    as `{ ...; } &` with job control on, so it leads a process group of its own, recorded in $DOC_GROUPS; its
    output goes to $DOC_LOGS/background-<line>.log."""
    out = ['set -euo pipefail; source "${DOC_HELPERS:?}"']
    for block in blocks:
        begin = f"__doc_begin {block.line} {shlex.quote(BLOCK_BANNER.format(line=block.line))}"
        if block.line == 1:  # a fence on the page's first line: its line starts with the script's own
            begin = f"{out.pop()}; {begin}"
        elif block.line <= len(out):
            raise BlockError(f"{block.page}:{block.line}: blocks overlap (internal error)")
        out.extend([""] * (block.line - 1 - len(out)))
        body = block.code.rstrip("\n").split("\n")
        if block.port is None:
            out.append(begin)
            out.extend(body)
            out.append(":")  # the closing fence's line
        else:
            log = f'"$__doc_logs/background-{block.line}.log"'
            out.append(f"{begin}; __doc_port_free {block.port}; set -m; {{")
            out.extend(body)
            out.append(
                f'}} > {log} 2>&1 & __doc_pid=$!; set +m; echo $__doc_pid >> "$__doc_groups"; '
                f"__doc_wait_port $__doc_pid {block.port} {block.port_timeout:g} {log}"
            )
    return "\n".join(out) + "\n"


def block_failure(blocks: list[Block], status: Path, stderr: str, stdout: str, tail: int = 3000) -> str:
    """What a failed page run reports: the page, the failing block's line and command, its stderr tail."""
    line = int(status.read_text().strip()) if status.is_file() and status.read_text().strip() else None
    block = next((b for b in blocks if b.line == line), None)
    if block is None:
        return f"the page's script failed before its first block:\n{stderr[-tail:]}"
    banner = BLOCK_BANNER.format(line=line)
    own = stderr.rsplit(banner, 1)[-1].strip("\n")
    return (
        f"{block.page}, the block at line {block.line}, failed:\n{_indent(block.code.rstrip())}\n"
        f"--- its stderr (last {tail} characters):\n{own[-tail:]}\n"
        f"--- the page's stdout (last 1000 characters):\n{stdout[-1000:]}"
    )


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


@contextmanager
def port_locks(ports: Iterable[int], timeout: float = 3600) -> Iterator[None]:
    """Hold a lock per fixed loopback port (a file in the system's temp directory) while servers listen on it: the
    pages and the team-setup test that name the same port wait for each other when pytest-xdist runs them at once.
    Taken in port order, so two holders never wait on each other."""
    with ExitStack() as stack:
        for port in sorted(set(ports)):
            lock = stack.enter_context((Path(tempfile.gettempdir()) / f"msa-tests-port-{port}.lock").open("a"))
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"port {port}: another test held it for {timeout:g} s") from None
                    time.sleep(1)
        yield
