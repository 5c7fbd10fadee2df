"""The image's wheelhouse, and Docker images for the tests and for Docker hosts that reach no image registry: a
Docker client that builds with BuildKit, the daemon (started when none answers), a base image made from Debian's
packages (debootstrap, then `docker import`) and the project's image built from the Dockerfile on it. Each image is
tagged by the digest of what went into it, so that an unchanged recipe or tree reuses the image built before.
Standard library only: `make wheelhouse` runs it with any Python.

    python -m devtools.images wheelhouse  every wheel the image installs, into build/wheels (`make wheelhouse`)
    python -m devtools.images base        the Debian base (as root, with debootstrap): prints its tag
    python -m devtools.images project     the project's image on that base: prints its tag
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "DockerUnavailable",
    "base_image",
    "cached_wheelhouse",
    "docker_cli",
    "docker_daemon",
    "make_wheelhouse",
    "project_image",
    "wheel_python",
]

REPO = Path(__file__).resolve().parents[1]
# What a flow run needs in the image besides Python packages (the Dockerfile's system stage installs what a base
# lacks; this base has it all, so the build needs no package mirror).
BASE_PACKAGES = ("python3", "python3-venv", "git", "ca-certificates")
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
# The build context: what .dockerignore lets through, copied (the wheelhouse is linked in from its cache).
CONTEXT = ("Dockerfile", ".dockerignore", "pyproject.toml", "constraints.txt", "README.md", "components", "flows")
TORCH = "torch==2.13.0"
CA_CERTS = Path("/etc/ssl/certs/ca-certificates.crt")
LOG_TAIL = 4000


class DockerUnavailable(RuntimeError):
    """No Docker here to build or run with; the message says what is missing (tests skip with it)."""


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)


def docker_cli() -> str:
    """The first `docker` on PATH that builds with BuildKit: one with the buildx plugin, or a client older than 23
    (Debian's docker.io 20.10), which has BuildKit built in."""
    seen = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / "docker"
        if not os.access(candidate, os.X_OK) or candidate in seen:
            continue
        seen.append(candidate)
        if _run([str(candidate), "buildx", "version"]).returncode == 0:
            return str(candidate)
        version = _run([str(candidate), "version", "--format", "{{.Client.Version}}"]).stdout.strip()
        if version.split(".")[0].isdigit() and int(version.split(".")[0]) < 23:
            return str(candidate)
    if not seen:
        raise DockerUnavailable("Docker is not installed (Debian: apt-get install docker.io debootstrap)")
    raise DockerUnavailable(f"no docker client here builds with BuildKit ({', '.join(map(str, seen))}): add buildx")


@contextmanager
def docker_daemon(log: Path, timeout: float = 60) -> Iterator[str]:
    """The Docker client, with a daemon that answers it: the running one, or `dockerd` started here (as root) and
    stopped on exit. Images stay in the daemon's data root, so a later start reuses them."""
    cli = docker_cli()
    if _run([cli, "info"]).returncode == 0:
        yield cli
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        raise DockerUnavailable("no Docker daemon answers, and this process cannot start one (needs root and dockerd)")
    with log.open("w") as sink:
        daemon = subprocess.Popen([dockerd], stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while _run([cli, "info"]).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise DockerUnavailable(f"dockerd did not start:\n{log.read_text()[-LOG_TAIL:]}")
            time.sleep(0.5)
        yield cli
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)  # dockerd and the containerd it started
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()


def _exists(cli: str, image: str) -> bool:
    return _run([cli, "image", "inspect", image]).returncode == 0


def _checked(args: list[str], what: str, **kwargs) -> None:
    done = _run(args, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-LOG_TAIL:]}")


def base_image(cli: str) -> str:
    """A minimal Debian image with BASE_PACKAGES, made with debootstrap from Debian's mirror (about a minute, as
    root) unless an image of the same recipe exists; returns its tag."""
    recipe = hashlib.sha256(f"{SUITE} {MIRROR} {' '.join(BASE_PACKAGES)}".encode()).hexdigest()[:12]
    tag = f"msa-base:{SUITE}-{recipe}"
    if _exists(cli, tag):
        return tag
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        raise DockerUnavailable(
            "building the Debian base image needs root and debootstrap (apt-get install debootstrap)"
        )
    with tempfile.TemporaryDirectory(prefix="msa-base-") as scratch:
        root = Path(scratch) / "rootfs"
        include = ",".join(BASE_PACKAGES)
        _checked(["debootstrap", "--variant=minbase", f"--include={include}", SUITE, str(root), MIRROR], "debootstrap")
        for cache in (root / "var/cache/apt/archives", root / "var/lib/apt/lists"):
            for entry in cache.glob("*"):
                if entry.is_file():
                    entry.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        _checked([cli, "import", "-c", 'CMD ["/bin/bash"]', "-", tag], "docker import", stdin=tar.stdout)
        tar.wait()
    return tag


def _tree_digest(base_id: str) -> str:
    digest = hashlib.sha256(f"{base_id} {TORCH}".encode())
    for name in CONTEXT:
        path = REPO / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" not in file.parts and file.suffix != ".pyc":
                digest.update(f"{file.relative_to(REPO)}\0".encode() + file.read_bytes())
    return digest.hexdigest()[:12]


VERSION = "import platform; print(platform.python_version())"


def python_version(python: str) -> str:
    """The exact version (3.11.2) of the interpreter `python`."""
    return _run([python, "-c", VERSION]).stdout.strip()


def wheel_python(version: str) -> str:
    """An interpreter here of exactly `version`, to make the wheelhouse with: requirements' markers are resolved for
    the Python that resolves them (python_full_version < "3.11.3" differs between 3.11.2 and 3.11.7)."""
    for candidate in dict.fromkeys(filter(None, (sys.executable, shutil.which("python3"), "/usr/bin/python3"))):
        if Path(candidate).exists() and python_version(candidate) == version:
            return candidate
    raise DockerUnavailable(f"no Python {version} here (the base image's) to make its wheelhouse with")


def make_wheelhouse(
    out: Path, *, python: str = sys.executable, version: str = "", torch: str = TORCH, torch_index: str = ""
) -> None:
    """Every wheel the image installs, made by `python` (the base's Python, to the patch release) with this machine's
    indexes and certificates, into `out` (replaced): torch first, from `torch_index` when given, then the project's
    requirements at constraints.txt's versions, and `python-version`, which the build checks."""
    version = version or python_version(python)
    with tempfile.TemporaryDirectory(prefix="msa-wheels-") as scratch:
        project, made = Path(scratch) / "project", Path(scratch) / "wheels"
        project.mkdir()
        for name in ("pyproject.toml", "constraints.txt", "README.md", "components", "flows"):
            (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, project / name)
        pip = [python, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(made)]
        index = ["--index-url", torch_index, "--extra-index-url", "https://pypi.org/simple"] if torch_index else []
        _checked([*pip, *index, torch], "pip wheel (torch)")
        requirements = ["--find-links", str(made), "-c", "constraints.txt", torch, "setuptools", ".[gpu]"]
        _checked([*pip, *requirements], "pip wheel", cwd=project)
        for own in made.glob("msa_pipeline-*.whl"):  # the build makes the project's own: this one changes with the code
            own.unlink()
        (made / "python-version").write_text(f"{version}\n")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(made, out)


def cached_wheelhouse(python: str, version: str) -> Path:
    """make_wheelhouse's, kept between runs under ~/.cache/msa-pipeline by the digest of what decides its content:
    a tree whose requirements did not change reuses it, and the build then reuses its layer of dependencies."""
    digest = hashlib.sha256(f"{version} {TORCH}".encode())
    for name in ("pyproject.toml", "constraints.txt"):
        digest.update((REPO / name).read_bytes())
    cache = Path.home() / ".cache" / "msa-pipeline" / "wheelhouse"
    wheels = cache / digest.hexdigest()[:12]
    if not (wheels / "python-version").exists():
        for stale in cache.glob("*") if cache.exists() else []:  # the wheelhouses of earlier requirements
            shutil.rmtree(stale)
        make_wheelhouse(wheels, python=python, version=version)
    return wheels


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)  # the wheelhouse is 0.7 GB: no copy where the cache and the context share a disk
    except OSError:
        shutil.copy2(source, target)


def project_image(cli: str, base: str, log: Path) -> str:
    """The project's image on `base`, built with `make image`'s recipe (a wheelhouse made here by the base's Python,
    no index reached from the build, this machine's CA certificates as the build secret) unless one of the same tree
    exists."""
    base_id = _run([cli, "image", "inspect", "--format", "{{.Id}}", base]).stdout.strip()
    tag = f"msa-pipeline:{_tree_digest(base_id)}"
    if _exists(cli, tag):
        return tag
    version = _run([cli, "run", "--rm", "--network", "none", base, "python3", "-c", VERSION]).stdout.strip()
    wheels = cached_wheelhouse(wheel_python(version), version)
    with tempfile.TemporaryDirectory(prefix="msa-image-") as scratch:
        context = Path(scratch)
        for name in CONTEXT:
            (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, context / name)
        shutil.copytree(wheels, context / "build" / "wheels", copy_function=_link_or_copy)
        build = [
            cli,
            "build",
            "--progress",
            "plain",
            "--secret",
            f"id=ca,src={CA_CERTS}",
            "--build-arg",
            f"BASE={base}",
        ]
        build += ["--build-arg", f"TORCH={TORCH}", "--build-arg", "PIP_NO_INDEX=1", "-t", tag, str(context)]
        with log.open("w") as sink:
            env = {**os.environ, "DOCKER_BUILDKIT": "1"}
            done = subprocess.run(build, stdout=sink, stderr=subprocess.STDOUT, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"docker build failed ({done.returncode}):\n{log.read_text()[-LOG_TAIL:]}")
    return tag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["wheelhouse", "base", "project"])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "wheels", help="the wheelhouse's directory")
    parser.add_argument("--torch", default=TORCH, help="the torch requirement")
    parser.add_argument("--torch-index", default="", help="the index torch comes from (a CUDA build's)")
    args = parser.parse_args()
    if args.what == "wheelhouse":
        make_wheelhouse(args.out, torch=args.torch, torch_index=args.torch_index)
        return
    cli = docker_cli()
    base = base_image(cli)
    print(base if args.what == "base" else project_image(cli, base, Path(tempfile.gettempdir()) / "msa-image.log"))


if __name__ == "__main__":
    main()
