"""The image's recipe, read without Docker: the build context lets in what the Dockerfile copies and nothing else, the
final stage runs as a non-root user, no secret passes through an instruction that a layer or the image's history
keeps, and the three places that build the image agree on the torch build. (tests/e2e/test_docker_pool.py builds
and runs it.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from devtools import images

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.splitlines() if not line.startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def allowed() -> set[str]:
    """The paths .dockerignore lets into the build context (it ignores everything, then allows these)."""
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    assert "*" in lines, ".dockerignore starts from nothing: `*`, then `!path` for each path the build reads"
    return {line[1:].rstrip("/") for line in lines if line.startswith("!")}


def test_the_build_context_is_what_the_dockerfile_reads() -> None:
    copied = set()
    for name, arguments in instructions():
        if name == "COPY" and "--from=" not in arguments:
            copied |= set(shlex.split(arguments)[:-1])
    mounted = set(re.findall(r"--mount=type=bind,source=([^,\s]+)", DOCKERFILE))
    assert copied | mounted == allowed(), "the Dockerfile reads exactly what .dockerignore lets in"
    # devtools.images builds the same context by copying: the same paths, plus the two files Docker reads itself
    assert set(images.CONTEXT) - {"Dockerfile", ".dockerignore"} == allowed() - mounted


def test_the_image_runs_as_a_non_root_user() -> None:
    users = [arguments for name, arguments in instructions() if name == "USER"]
    assert users, "the final stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric uid (Kubernetes' runAsNonRoot checks it), not root"


def test_no_secret_passes_through_a_kept_instruction() -> None:
    for name, arguments in instructions():
        if name in {"ARG", "ENV", "LABEL"}:
            assert not re.search(r"PASSWORD|SECRET|TOKEN|CERT|KEY", arguments, re.I), (name, arguments)
    # The CA certificates enter only as a build secret, mounted for the one step that runs pip.
    assert "--mount=type=secret,id=ca" in DOCKERFILE
    assert "PIP_CERT=/run/secrets/ca" in DOCKERFILE


def test_the_torch_build_is_the_same_everywhere() -> None:
    dockerfile = re.search(r"^ARG TORCH=(\S+)", DOCKERFILE, re.M)
    makefile = re.search(r"^TORCH \?= (\S+)", (REPO / "Makefile").read_text(), re.M)
    assert dockerfile and makefile
    assert dockerfile.group(1) == makefile.group(1) == images.TORCH
