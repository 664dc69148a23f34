"""A self-signed certificate for 127.0.0.1, for the real servers the tests start with TLS
(Dovecot, slapd)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(key: Path, cert: Path, *, days: int = 2) -> None:
    """Write a new RSA key and a self-signed certificate for 127.0.0.1 (CN and IP SAN)."""
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            str(days),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
