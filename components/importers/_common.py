"""What every importer shares: strict text decoding that names the line of a bad byte."""

from __future__ import annotations

from pathlib import Path

from components.errors import DataError


def read_utf8(path: Path) -> str:
    """Decode a whole file as strict UTF-8 (a leading BOM is dropped).

    Guessing another encoding would silently turn accented or emoji text into mojibake, so a bad byte is an
    error that names its line: the user re-encodes the file once and every later import is exact.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read the file: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            path,
            f"line {line}: byte 0x{data[e.start]:02x} is not valid UTF-8 ({e.reason}); "
            "re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
        ) from None
