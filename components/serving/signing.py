"""Signed serving packages: OpenSSF model signing at registration, verification before any loader reads a byte.

Registration signs the serving package (the pyfunc's data: weights or compressed variant, spec, featurizer state,
tokenizer, input bounds and the gate's evidence) with an elliptic-curve key. The signature, a Sigstore bundle, is
the package's `model.sig`, left out of what it covers, so it travels with the registered version wherever its
artifacts go. `msa predict`, `msa serve`, MLflow's own loader (`components.serving.pyfunc._load_pyfunc`) and the
gate all call `verify` first: a changed, added, missing or unsigned file is refused in one line naming it.

Keys, for one person and for the tests: `MSA_SIGNING_KEY` names a PEM private key (P-256/384/521); without it the
key is `$XDG_CONFIG_HOME/msa/signing-key.pem` (default `~/.config/msa/`), made on first use, readable by its owner
only. A loader trusts that key's public half and every PEM public key in `MSA_TRUSTED_KEYS` (paths separated by
`os.pathsep`): a teammate's key, or the team's registration key on a serving host. Teams that would rather hold no
key sign keylessly with Sigstore (`model_signing sign sigstore`; see docs/how-to/serve-predict.md, "Signed models").
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.core.errors import UntrustedModelError

__all__ = ["sign", "signing_key", "verify"]

SIGNATURE = "model.sig"  # inside the package, outside what it signs
KEY_ENV, TRUSTED_ENV = "MSA_SIGNING_KEY", "MSA_TRUSTED_KEYS"


def signing_key() -> Path:
    """The private key registration signs with: $MSA_SIGNING_KEY, else the user's own, made on first use."""
    if named := os.environ.get(KEY_ENV):
        path = Path(named)
        if not path.is_file():
            raise UntrustedModelError(f"{path}: no such signing key (${KEY_ENV})")
        return path
    path = _config_dir() / "signing-key.pem"
    if not path.is_file():
        _make_key(path)
        logging.getLogger(__name__).warning(
            f"made a signing key at {path}: the models it signs load where it, or its public half in "
            f"${TRUSTED_ENV}, is; give workers one key with ${KEY_ENV}"
        )
    return path


def public_key(private: Path) -> bytes:
    """The PEM public half of the private key at `private`."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def sign(package: Path) -> Path:
    """Sign every file of `package` into `package/model.sig`; returns the signature's path."""
    import model_signing

    key, signature = signing_key(), package / SIGNATURE
    signature.unlink(missing_ok=True)
    (
        model_signing.signing.Config()
        .use_elliptic_key_signer(private_key=key)
        .set_hashing_config(_hashing())
        .sign(package, signature)
    )
    return signature


def verify(package: Path, what: str) -> None:
    """Refuse `package` (named `what` in the message) unless a trusted key signed exactly the files it holds."""
    import model_signing

    signature = package / SIGNATURE
    if not signature.is_file():
        raise UntrustedModelError(
            f"{what}: unsigned (no {SIGNATURE}); register it again, or pass --trust-model to load it unverified"
        )
    problems = []
    with _public_keys() as keys:
        for key in keys:
            try:
                (
                    model_signing.verifying.Config()
                    .use_elliptic_key_verifier(public_key=key)
                    .set_hashing_config(_hashing())
                    .verify(package, signature)
                )
                return
            except Exception as e:  # noqa: BLE001 - the library raises ValueError and others for a bad signature
                problems.append(str(e))
    raise UntrustedModelError(f"{what}: {_why(problems, package)}; refusing to load it (--trust-model skips this)")


def _hashing():
    import model_signing

    return model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False)


def _why(problems: list[str], package: Path) -> str:
    """One line from the library's reasons: the file that differs, when one does."""
    import re

    # The reasons come as the repr of a list, where a quote is escaped (\\') when a digest's bytes hold a ".
    q, names, model = r"\\?'", r"([^\"'\\\],]+)", r"in model \\?'[^'\\]*\\?'"
    for pattern, how in (
        (rf"Hash mismatch for {q}([^'\\]+){q}", "was changed after signing"),
        (rf"Extra files found {model}: {names}", "was added after signing"),
        (rf"Missing files {model}: {names}", "is missing (it was signed)"),
    ):
        for problem in problems:
            if found := re.search(pattern, problem):
                return f"{package.name}/{found.group(1).strip()} {how}"
    if not problems:
        return f"no trusted public key (set ${TRUSTED_ENV} or ${KEY_ENV})"
    reason = problems[0].splitlines()[0][:160] if problems[0].strip() else "no reason given"
    return f"signed by a key this machine does not trust, or the signature is damaged ({reason})"


@contextmanager
def _public_keys() -> Iterator[list[Path]]:
    """The trusted PEM public keys as files (the library reads paths): ours, written to a temporary file, and
    every file in $MSA_TRUSTED_KEYS."""
    keys = [Path(p) for p in os.environ.get(TRUSTED_ENV, "").split(os.pathsep) if p]
    ours = Path(os.environ[KEY_ENV]) if os.environ.get(KEY_ENV) else _config_dir() / "signing-key.pem"
    with tempfile.TemporaryDirectory(prefix="msa-keys-") as tmp:
        if ours.is_file():
            try:
                own = Path(tmp) / "own.pub.pem"
                own.write_bytes(public_key(ours))
                keys.insert(0, own)
            except (ValueError, TypeError) as e:  # encrypted, or not a PEM private key
                raise UntrustedModelError(f"{ours}: not a readable PEM private key ({e})") from None
        yield [k for k in keys if k.is_file()]


def _config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "msa"


def _make_key(path: Path) -> None:
    """A new P-256 key, written readable by its owner only and atomically (two first uses at once keep one)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    try:
        os.link(tmp, path)  # fails if another process made the key meanwhile: theirs is kept
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
