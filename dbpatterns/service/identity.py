"""Request identity: only restate-server may call the service.

A handler called directly, bypassing Restate, has no journal, no retries and no idempotency:
every guarantee of the lab is gone. So restate-server signs each request it sends to the
service (header ``x-restate-jwt-v1``) with an Ed25519 private key, and the service verifies
the signature with the matching public key and refuses anything else.

The embedded stack makes the key pair on first ``up`` (kept in the working folder, never
committed): restate-server reads the private key PEM, the service gets the public key in
Restate's ``publickeyv1_<base58 of the raw 32 bytes>`` form through
``DBPATTERNS_IDENTITY_PUBLIC_KEY``.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PRIVATE_KEY_FILE = "request-identity.pem"
PUBLIC_KEY_FILE = "request-identity.pub"
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def base58(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits = ""
    while number:
        number, rest = divmod(number, 58)
        digits = _BASE58[rest] + digits
    leading_zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * leading_zeros + digits


def public_key_of(private_key_pem: bytes) -> str:
    """The ``publickeyv1_...`` string the SDK takes, for a PEM Ed25519 private key."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the request identity key must be an Ed25519 private key")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "publickeyv1_" + base58(raw)


def ensure_key_pair(folder: Path) -> tuple[Path, str]:
    """The private key file in ``folder`` (made on first use, mode 0600) and its public key,
    which is also written beside it (``request-identity.pub``) for services that read a file."""
    path = folder / PRIVATE_KEY_FILE
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    public_key = public_key_of(path.read_bytes())
    public_file = folder / PUBLIC_KEY_FILE
    if not public_file.exists() or public_file.read_text().strip() != public_key:
        public_file.write_text(public_key + "\n")
    return path, public_key
