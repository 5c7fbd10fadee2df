"""Signed packages: one line naming the file that differs, whatever bytes the library's message quotes."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.core.errors import UntrustedModelError
from components.serving import signing


@pytest.fixture
def package(tmp_path: Path) -> Path:
    root = tmp_path / "package"
    (root / "variant").mkdir(parents=True)
    (root / "variant" / "model.onnx").write_bytes(b"weights" * 1000)
    (root / "model.json").write_text("{}")
    signing.sign(root)
    signing.verify(root, "ok")
    return root


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda p: (p / "variant" / "model.onnx").write_bytes(b"other"), "package/variant/model.onnx was changed"),
        (lambda p: (p / "extra.py").write_text("import os"), "package/extra.py was added after signing"),
        (lambda p: (p / "model.json").unlink(), "package/model.json is missing (it was signed)"),
        (lambda p: (p / "model.sig").unlink(), "unsigned (no model.sig)"),
    ],
)
def test_a_changed_package_is_refused_in_one_line_naming_the_file(package, change, says) -> None:
    change(package)
    with pytest.raises(UntrustedModelError, match=None) as refused:
        signing.verify(package, "models:/m/1")
    assert says in str(refused.value) and len(str(refused.value).splitlines()) == 1


@pytest.mark.parametrize("quoted", ["'", "\\'"])
def test_the_file_is_named_however_the_library_quotes_it(tmp_path: Path, quoted: str) -> None:
    """A digest whose bytes hold a double quote makes Python's repr escape the single quotes around the name."""
    q = quoted
    reasons = [
        f'Signature mismatch: [{q}Hash mismatch for {q}variant/model.onnx{q}: Expected {q}b"x{q}{q}]',
        f"Signature mismatch: [{q}Extra files found in model {q}p{q}: extra.py{q}]",
    ]
    assert signing._why(reasons[:1], tmp_path / "package") == "package/variant/model.onnx was changed after signing"
    assert signing._why(reasons[1:], tmp_path / "package") == "package/extra.py was added after signing"


def test_another_key_is_not_trusted(package, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "someone-else"))
    signing.signing_key()  # this machine's own key, another than the one that signed
    with pytest.raises(UntrustedModelError, match="signed by a key this machine does not trust"):
        signing.verify(package, "models:/m/1")
