"""DKIM keys for people: ``notifier dkim keygen`` and ``notifier dkim show``, and the DNS
records to publish. Uses ``cryptography`` (the signing itself, in every sender process, does
without it: see :mod:`notifier.openssl`)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from .config import SELECTOR_FORMAT, Settings
from .dkim import RSA_BITS, DkimKeyError, _read_pem, _sources, domain_of, load_key

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def public_value(key: PrivateKey) -> str:
    """The TXT record's value for ``key``: ``v=DKIM1; k=rsa; p=…`` (SubjectPublicKeyInfo) or
    ``k=ed25519`` with the raw 32-byte public key (RFC 8463)."""
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


def record_name(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{domain}"


def describe_record(selector: str, domain: str, key: PrivateKey) -> str:
    """The record to publish, for people: name, type, value, and a zone-file line (the value
    split into strings of at most 255 characters, as DNS requires)."""
    value = public_value(key)
    chunks = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
    kind = "RSA" if isinstance(key, rsa.RSAPrivateKey) else "Ed25519"
    return "\n".join(
        [
            f"DNS-Eintrag ({kind}) zum Veröffentlichen:",
            f"  Name: {record_name(selector, domain)}",
            "  Typ:  TXT",
            f"  Wert: {value}",
            "Als Zeile einer Zonendatei:",
            f"  {record_name(selector, domain)}. 3600 IN TXT ( {chunks} )",
        ]
    )


def write_key(path: Path, key: PrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, readable by its owner only (mode 0600). The
    file must not exist (an existing key is never overwritten)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), 0o600)  # whatever the umask says
        file.write(pem)


def new_key(algorithm: str) -> PrivateKey:
    if algorithm == "rsa-sha256":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return ed25519.Ed25519PrivateKey.generate()


def keygen(
    settings: Settings, *, selector: str | None, file: Path | None, ed25519_key: bool
) -> str:
    """Make a new key, write it (mode 0600; never over an existing file) and return what to
    publish and configure, for people (German). ``ed25519_key``: the Ed25519 key of the second
    signature instead of the RSA key. Raises :class:`DkimKeyError` if the file exists or cannot
    be written."""
    dkim = settings.dkim
    algorithm = "ed25519-sha256" if ed25519_key else "rsa-sha256"
    configured_selector = dkim.ed25519_selector if ed25519_key else dkim.selector
    selector = selector or configured_selector
    if not SELECTOR_FORMAT.match(selector):
        raise DkimKeyError(
            str(file or settings.dkim_key_path(ed25519=ed25519_key)),
            f"Selektor {selector!r} ungültig: erlaubt sind Buchstaben, Ziffern und '-', "
            "Teile getrennt durch '.'",
        )
    # A --file given relative to the current folder: config.toml would read it relative to its own.
    configured_path = settings.dkim_key_path(ed25519=ed25519_key)
    path = file.resolve() if file is not None else configured_path
    key = new_key(algorithm)
    try:
        write_key(path, key)
    except FileExistsError:
        raise DkimKeyError(
            str(path),
            "Datei existiert schon; nichts geändert (einen neuen Schlüssel mit neuem Selektor "
            "in eine andere Datei schreiben: --selector S --file PFAD)",
        ) from None
    except OSError as exc:
        raise DkimKeyError(str(path), f"nicht schreibbar ({exc.strerror})") from None
    lines = [
        f"Neuer {'Ed25519' if ed25519_key else f'RSA-{RSA_BITS}'}-Schlüssel in {path} "
        "(nur für den Eigentümer lesbar).",
        describe_record(selector, domain_of(settings), key),
    ]
    settings_lines = []
    if selector != configured_selector:
        name = "ed25519_selector" if ed25519_key else "selector"
        settings_lines.append(f'{name} = "{selector}"')
    if file is not None and configured_path.resolve() != path.resolve():
        name = "ed25519_key_file" if ed25519_key else "private_key_file"
        settings_lines.append(f'{name} = "{path}"')
    if ed25519_key and not dkim.ed25519:
        settings_lines.append('algorithm = "rsa-sha256+ed25519-sha256"')
    if not dkim.enabled:
        settings_lines.append("enabled = true")
    if settings_lines:
        lines.append(
            "Erst wenn der Eintrag im DNS abrufbar ist, in config.toml unter [dkim] setzen:"
        )
        lines.extend(f"  {line}" for line in settings_lines)
    env = "NOTIFIER_DKIM__ED25519_PRIVATE_KEY" if ed25519_key else "NOTIFIER_DKIM__PRIVATE_KEY"
    secret = dkim.ed25519_private_key if ed25519_key else dkim.private_key
    if secret.get_secret_value():
        lines.append(f"Achtung: {env} ist gesetzt und hat Vorrang vor dieser Datei.")
    return "\n".join(lines)


def show(settings: Settings) -> str:
    """The DNS records of the configured keys, for people (German). Raises
    :class:`DkimKeyError` for a key that cannot be used."""
    lines = []
    if not settings.dkim.enabled:
        lines.append("DKIM ist ausgeschaltet ([dkim] enabled = false): es wird nicht signiert.")
    dkim = settings.dkim
    for algorithm, source in _sources(settings):
        load_key(algorithm, source)  # the checks of a start: kind, size
        key = serialization.load_pem_private_key(_read_pem(source, algorithm), password=None)
        assert isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey)
        selector = dkim.selector if algorithm == "rsa-sha256" else dkim.ed25519_selector
        lines.append(describe_record(selector, domain_of(settings), key))
    return "\n".join(lines)


def expected_records(settings: Settings) -> list[tuple[str, str]]:
    """(name, value) of the TXT record each configured key needs. Raises
    :class:`DkimKeyError` for a key that cannot be used."""
    records = []
    dkim = settings.dkim
    for algorithm, source in _sources(settings):
        load_key(algorithm, source)
        key = serialization.load_pem_private_key(_read_pem(source, algorithm), password=None)
        assert isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey)
        selector = dkim.selector if algorithm == "rsa-sha256" else dkim.ed25519_selector
        records.append((record_name(selector, domain_of(settings)), public_value(key)))
    return records


def tags(value: str) -> dict[str, str]:
    """The tags of a DKIM key record (``v=DKIM1; k=rsa; p=…``), whitespace removed from values
    (a long p= is often published in pieces with spaces between them)."""
    found = {}
    for part in value.split(";"):
        name, _, tag_value = part.partition("=")
        if name.strip():
            found[name.strip()] = "".join(tag_value.split())
    return found
