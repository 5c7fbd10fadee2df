"""What the bad-input tables share: the `msa` CLI run in-process, fingerprints of what must not change, and files
built to break a reader (an image whose header claims 20000x20000 pixels, a PNG that is text)."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from flows.cli import app

GUARDED = ("data/raw", "models", "mlflow.db")  # what no bad input may change


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def error(self) -> str:
        return self.stderr.strip()


def msa(*args: str | Path) -> Outcome:
    """`msa ARGS` in this process (as fast as a function call), with stdout and stderr apart."""
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is a failure of the table, not a case that "exited 1"
    return Outcome(result.exit_code, result.stdout, result.stderr)


def fingerprint(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file (and the target of every link) under `roots`; missing roots count as absent."""
    prints: dict[str, str] = {}
    for root in roots:
        paths = [root] if root.is_file() or root.is_symlink() else sorted(root.rglob("*")) if root.exists() else []
        for path in paths:
            if path.is_symlink():
                prints[str(path)] = f"-> {path.readlink()}"
            elif path.is_file():
                prints[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                prints[str(path)] = "dir"
    return prints


def guarded(project: Path) -> dict[str, str]:
    return fingerprint(*(project / name for name in GUARDED))


def png(size: int = 8, color: tuple[int, int, int] = (120, 40, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose header says `width` x `height`: a decompression bomb as a reader sees it before
    decoding (building a real 20000x20000 one would take 400 MB here)."""
    data = bytearray(png(1))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="GIF")
    return buffer.getvalue()


@dataclass
class Case:
    """One bad input: the files it needs, the command, and what the user must see."""

    id: str
    args: tuple[str, ...]
    code: int = 1
    message: str = ""  # a substring of stderr (or of the HTTP body)
    files: dict[str, bytes | str] = field(default_factory=dict)  # written under the case's directory first
    links: dict[str, str] = field(default_factory=dict)  # name -> target

    def materialize(self, root: Path) -> None:
        for name, content in self.files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        for name, target in self.links.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).symlink_to(target)
