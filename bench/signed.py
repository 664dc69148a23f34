"""The signed run of issue 14: the machine's OpenSSL sign rate, and a second project signing
with DKIM on a copy of the seeded database."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from project import Project, make_project

OPENSSL_SECONDS = 2.0  # how long the in-process OpenSSL sign rate is measured


def openssl_sign_rate(seconds: float = OPENSSL_SECONDS) -> float:
    """RSA-2048 PKCS#1 v1.5 SHA-256 signatures per CPU second of one core, made by OpenSSL
    through ``cryptography`` in this process (as ``openssl speed rsa2048`` would, but counted
    in CPU time, so other work on the machine does not lower it)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pad, digest, data = padding.PKCS1v15(), hashes.SHA256(), b"x" * 1024
    key.sign(data, pad, digest)
    count = 0
    started = time.process_time()
    while (spent := time.process_time() - started) < seconds:
        for _ in range(20):
            key.sign(data, pad, digest)
        count += 20
    return count / spent


def signed_project(
    folder: Path, port: int, delivery: dict[str, Any], seeded: Path, algorithm: str
) -> Project:
    """A second project beside the first, signing with a key made by ``notifier dkim keygen``,
    its database a copy of the seeded one (same subscribers, an empty outbox)."""
    folder.mkdir()
    dkim = {
        "enabled": True,
        "algorithm": algorithm,
        "private_key_file": str(folder / "dkim.key"),
        "ed25519_key_file": str(folder / "dkim-ed25519.key"),
    }
    project = make_project(folder, port, delivery, sections={"dkim": dkim})
    project.cli_ok("dkim", "keygen", timeout=120)
    if "ed25519" in algorithm:
        project.cli_ok("dkim", "keygen", "--ed25519", timeout=120)
    project.restore(seeded)
    return project
