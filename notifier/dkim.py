"""DKIM signatures (RFC 6376, and RFC 8463 for the optional Ed25519 one) on every message.

dkimpy supplies the canonicalisation (relaxed/relaxed) and the folding of the header; the
signature itself is made by OpenSSL through ``cryptography``. dkimpy's own RSA is pure Python
(about 130 signatures/s) and it parses the PEM key and the whole message again for every
signature; here the key is loaded once per process, and what is the same for every message
(the folded and canonicalised static part of the DKIM-Signature header, the canonical form of
the headers shared by all copies of a message) is made once, so a message costs its body hash,
a few header lines and the signature itself.

Signing runs in the sender's event loop: RSA-2048 takes about 0.3 ms of one core, less than a
hop to a worker thread and back costs in wake-ups, and on the two-core machine both cores are
busy with sender processes already (bench/README.md, "DKIM").
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim import fold
from dkim.canonicalization import Relaxed, correct_empty_body, strip_trailing_lines

from .config import SELECTOR_FORMAT as _SELECTOR_FORMAT
from .config import DkimSettings, Settings
from .errors import NotifierError

# The headers signed when present (issue 14): RFC 8058 asks for the List-Unsubscribe pair.
SIGNED_HEADERS = (
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "mime-version",
    "content-type",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
_SIGNED = frozenset(SIGNED_HEADERS)
RSA_BITS = 2048
RSA_MIN_BITS, RSA_MAX_BITS = 2048, 4096
# A key file larger than this is no key (a 4096-bit PEM is about 3.3 KB).
MAX_KEY_FILE_BYTES = 64_000
# Canonical forms of header lines seen (static ones repeat in every copy); cleared when full.
_CACHE_LIMIT = 4096
_WHITESPACE_RUN = re.compile(rb"[\t ]{2,}|\t")


class DkimKeyError(NotifierError):
    """A DKIM key cannot be used; ``path`` names the file (or the environment variable)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"DKIM-Schlüssel {path}: {problem}")


@dataclass(frozen=True)
class KeySource:
    """Where a key comes from: a file, or its PEM text from the environment."""

    shown: str  # the file or the environment variable, for messages
    path: Path | None
    pem: str  # from the environment; empty: read ``path``


def _sources(settings: Settings) -> list[tuple[str, KeySource]]:
    """(algorithm, source) of every signature configured."""
    dkim = settings.dkim
    out: list[tuple[str, KeySource]] = []
    rsa_pem = dkim.private_key.get_secret_value()
    if rsa_pem:
        out.append(("rsa-sha256", KeySource("NOTIFIER_DKIM__PRIVATE_KEY", None, rsa_pem)))
    else:
        path = settings.path(dkim.private_key_file)
        out.append(("rsa-sha256", KeySource(str(path), path, "")))
    if dkim.ed25519:
        ed_pem = dkim.ed25519_private_key.get_secret_value()
        if ed_pem:
            shown = "NOTIFIER_DKIM__ED25519_PRIVATE_KEY"
            out.append(("ed25519-sha256", KeySource(shown, None, ed_pem)))
        else:
            path = settings.path(dkim.ed25519_key_file)
            out.append(("ed25519-sha256", KeySource(str(path), path, "")))
    return out


def _read_pem(source: KeySource, algorithm: str) -> bytes:
    if source.pem:
        # Environments often carry a PEM with its line breaks written as \n.
        return source.pem.replace("\\n", "\n").encode("ascii", "replace")
    assert source.path is not None
    try:
        if source.path.stat().st_size > MAX_KEY_FILE_BYTES:
            raise DkimKeyError(source.shown, "Datei ist zu groß für einen Schlüssel")
        return source.path.read_bytes()
    except FileNotFoundError:
        command = "notifier dkim keygen" + (" --ed25519" if algorithm != "rsa-sha256" else "")
        raise DkimKeyError(source.shown, f"Datei nicht gefunden (anlegen mit: {command})") from None
    except PermissionError:
        raise DkimKeyError(source.shown, "Datei nicht lesbar (keine Berechtigung)") from None
    except IsADirectoryError:
        raise DkimKeyError(source.shown, "ist ein Verzeichnis, keine Schlüsseldatei") from None
    except OSError as exc:
        raise DkimKeyError(source.shown, f"Datei nicht lesbar ({exc.strerror})") from None


PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def load_key(algorithm: str, source: KeySource) -> PrivateKey:
    """The private key of ``source``, checked for its kind and size.

    Raises :class:`DkimKeyError` naming the file for a missing, unreadable or unfit key."""
    data = _read_pem(source, algorithm)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise DkimKeyError(
            source.shown, "Schlüssel ist verschlüsselt (ohne Passwort ablegen)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise DkimKeyError(source.shown, "kein lesbarer privater Schlüssel im PEM-Format") from None
    if algorithm == "rsa-sha256":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise DkimKeyError(source.shown, "kein RSA-Schlüssel (für rsa-sha256)")
        if not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
            raise DkimKeyError(
                source.shown,
                f"RSA-Schlüssel hat {key.key_size} Bit, erwartet werden "
                f"{RSA_MIN_BITS} bis {RSA_MAX_BITS} Bit",
            )
        return key
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise DkimKeyError(source.shown, "kein Ed25519-Schlüssel (für ed25519-sha256)")
    return key


def check(settings: Settings) -> str | None:
    """None when DKIM is off or every configured key is usable; otherwise the German problem
    (one line, naming the file). For ``notifier doctor`` and the start of the service."""
    if not settings.dkim.enabled:
        return None
    try:
        Signer.from_settings(settings)
    except DkimKeyError as exc:
        return str(exc)
    return None


# -- DNS records ---------------------------------------------------------------------------


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


def relaxed_body(body: bytes) -> bytes:
    """The relaxed canonical body (RFC 6376 3.4.4), as dkimpy's ``Relaxed.canonicalize_body``
    makes it (the tests compare the two), in fewer passes: dkimpy replaces every space with a
    space; here only runs of whitespace and tabs are touched, and only if there are any."""
    if b"\t" in body or b"  " in body:
        body = _WHITESPACE_RUN.sub(b" ", body)
    # After that, whitespace at a line end is at most one space.
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")
    result: bytes = correct_empty_body(strip_trailing_lines(body))
    return result


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
    configured_file = dkim.ed25519_key_file if ed25519_key else dkim.private_key_file
    selector = selector or configured_selector
    if not _SELECTOR_FORMAT.match(selector):
        raise DkimKeyError(
            str(file or configured_file),
            f"Selektor {selector!r} ungültig: erlaubt sind Buchstaben, Ziffern und '-', "
            "Teile getrennt durch '.'",
        )
    path = file if file is not None else settings.path(configured_file)
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
    if file is not None and settings.path(configured_file).resolve() != path.resolve():
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
    signer = Signer.from_settings(settings)
    lines = []
    if not settings.dkim.enabled:
        lines.append("DKIM ist ausgeschaltet ([dkim] enabled = false): es wird nicht signiert.")
    for signature in signer.signatures:
        lines.append(describe_record(signature.selector, signature.domain, signature.key))
    return "\n".join(lines)


def domain_of(settings: Settings) -> str:
    """The signing domain: ``[dkim] domain`` or the domain of the sender address."""
    return settings.dkim.domain or settings.mail.sender_address.rpartition("@")[2].lower()


# -- signing -------------------------------------------------------------------------------


class _Signature:
    """One configured signature (algorithm, key, selector, domain) and the static parts of its
    header, prepared once per set of signed headers."""

    def __init__(self, algorithm: str, key: PrivateKey, domain: str, selector: str) -> None:
        self.algorithm = algorithm
        self.key = key
        self.domain = domain
        self.selector = selector
        # Signed header names (as present, in order) -> (folded static header, its canonical
        # form), both without the per-message t=, bh= and b=.
        self._static: dict[tuple[str, ...], tuple[bytes, bytes]] = {}
        self._sign: Callable[[bytes], bytes]
        if isinstance(key, rsa.RSAPrivateKey):
            rsa_key, pad, prehashed = key, padding.PKCS1v15(), Prehashed(hashes.SHA256())
            self._sign = lambda digest: rsa_key.sign(digest, pad, prehashed)
        else:
            # RFC 8463: Ed25519 signs the SHA-256 hash of the canonical header data.
            self._sign = key.sign

    def static(self, names: tuple[str, ...]) -> tuple[bytes, bytes]:
        found = self._static.get(names)
        if found is None:
            value = (
                f"v=1; a={self.algorithm}; c=relaxed/relaxed; d={self.domain}; "
                f"s={self.selector}; q=dns/txt; h={' : '.join(names)};"
            ).encode("ascii")
            folded = fold(value, namelen=len(b"DKIM-Signature: "))
            ((_, canonical),) = Relaxed.canonicalize_headers([(b"DKIM-Signature", folded)])
            found = (b"DKIM-Signature: " + folded, b"dkim-signature:" + canonical.rstrip())
            if len(self._static) < 64:
                self._static[names] = found
        return found

    def header(
        self, names: tuple[str, ...], canonical_headers: bytes, stamp: bytes, body_hash: bytes
    ) -> bytes:
        """The whole DKIM-Signature header line(s), CRLF-terminated."""
        folded, canonical = self.static(names)
        variable = b"t=" + stamp + b"; bh=" + body_hash + b";"
        # What a verifier hashes: the signed headers, then this header with an empty b=
        # (relaxed: unfolded, one space where the lines were joined, no CRLF at the end).
        digest = hashlib.sha256(canonical_headers + canonical + b" " + variable + b" b=").digest()
        signature = base64.b64encode(self._sign(digest))
        # b= on lines of its own; verifiers remove it with its folding whitespace.
        lines = [signature[i : i + 72] for i in range(0, len(signature), 72)]
        return folded + b"\r\n " + variable + b"\r\n b=" + b"\r\n ".join(lines) + b"\r\n"


class Signer:
    """Signs whole messages (bytes with CRLF line ends): :meth:`sign` returns the message with
    its DKIM-Signature header(s) in front. Made once per process (the keys are loaded here)."""

    def __init__(self, signatures: Sequence[_Signature]) -> None:
        self.signatures = list(signatures)
        self._canonical: dict[bytes, tuple[str, bytes]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Signer:
        """The signer of ``[dkim]`` (enabled or not). Raises :class:`DkimKeyError`."""
        dkim: DkimSettings = settings.dkim
        domain = domain_of(settings)
        signatures = []
        for algorithm, source in _sources(settings):
            selector = dkim.selector if algorithm == "rsa-sha256" else dkim.ed25519_selector
            signatures.append(_Signature(algorithm, load_key(algorithm, source), domain, selector))
        return cls(signatures)

    def _header_line(self, raw: bytes) -> tuple[str, bytes]:
        """(lower-case name, relaxed canonical line with CRLF) of one header; name "" for a
        header that is not signed."""
        found = self._canonical.get(raw)
        if found is None:
            name, _, value = raw.partition(b":")
            lower = name.strip().lower().decode("ascii", "replace")
            if lower in _SIGNED:
                ((cname, cvalue),) = Relaxed.canonicalize_headers([(name, value)])
                found = (lower, cname + b":" + cvalue)
            else:
                found = ("", b"")
            if len(self._canonical) >= _CACHE_LIMIT:
                self._canonical.clear()
            self._canonical[raw] = found
        return found

    def sign(self, message: bytes) -> bytes:
        """``message`` with a DKIM-Signature per configured key in front. Signed are the
        headers of :data:`SIGNED_HEADERS` that the message has (each once; the messages this
        service builds carry each at most once)."""
        end = message.find(b"\r\n\r\n")
        if end < 0:
            raise ValueError("message without a header/body separator")
        head, body = message[: end + 2], message[end + 4 :]
        # Name -> canonical line; a verifier reads the last of repeated headers.
        found: dict[str, bytes] = {}
        lines = head.split(b"\r\n")
        i, count = 0, len(lines) - 1  # the last element is the empty rest after the last CRLF
        while i < count:
            j = i + 1
            while j < count and lines[j][:1] in (b" ", b"\t"):
                j += 1
            raw = lines[i] if j == i + 1 else b"\r\n".join(lines[i:j])
            name, line = self._header_line(raw)
            if name:
                found[name] = line
            i = j
        if "from" not in found:
            raise ValueError("a DKIM signature needs a From header")
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
        signed = tuple(found)
        joined = b"".join(found.values())
        stamp = str(int(time.time())).encode()
        headers = [s.header(signed, joined, stamp, body_hash) for s in self.signatures]
        return b"".join(headers) + message
