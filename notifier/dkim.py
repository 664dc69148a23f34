"""DKIM signatures (RFC 6376, and RFC 8463 for the optional Ed25519 one) on every message.

The canonicalisation (relaxed headers, simple body) is the few lines of RFC 6376 3.4 here, and
the tests hold it to dkimpy's and verify every kind of message with dkimpy's verifier; dkimpy
itself is not imported by the service: its package imports dnspython (and PyNaCl where
installed), about 3 MB in every sender process, and the process tree has about 10 MB to spare
under the 200 MB floor. The signature is made by OpenSSL (:mod:`notifier.openssl`: through
ctypes, which costs a sender process no memory either, with ``cryptography`` as the fallback).
dkimpy's own signing path would use pure-Python RSA (about 130 signatures/s) and parse the PEM
key and the whole message again for every signature. Here the key is loaded once per process;
the folded and canonical static part of the DKIM-Signature header is made once per set of
signed headers, and the canonical form of the folded headers every copy shares (Subject, From
…) once per message kind. A message costs its body hash, a few header lines and the signature
itself: 1.1–1.3 RSA-2048 signatures of CPU in all, measured in one process (bench/README.md,
"DKIM", on what the end-to-end figure adds).

Signing runs in the sender's event loop, not in a thread. OpenSSL releases the GIL, so a thread
could sign while the loop sends, but on the two-core machine the two sender processes keep both
cores busy already, and the hop costs CPU: measured with ``asyncio.to_thread`` around the
signature, 0.29 ms of CPU per message against 0.24 ms inline, a fifth of a signature more.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import openssl
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
_CACHE_LIMIT = 256


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
        path = settings.dkim_key_path()
        out.append(("rsa-sha256", KeySource(str(path), path, "")))
    if dkim.ed25519:
        ed_pem = dkim.ed25519_private_key.get_secret_value()
        if ed_pem:
            shown = "NOTIFIER_DKIM__ED25519_PRIVATE_KEY"
            out.append(("ed25519-sha256", KeySource(shown, None, ed_pem)))
        else:
            path = settings.dkim_key_path(ed25519=True)
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


class SigningKey(Protocol):
    """A private key that makes DKIM signatures (see :class:`notifier.openssl.Key`)."""

    kind: str  # "rsa", "ed25519" or "other"
    bits: int

    def sign(self, data: bytes) -> bytes:
        """rsa-sha256 or ed25519-sha256 signature of ``data``."""
        ...


class _CryptographyKey:
    """The same through ``cryptography``, where no OpenSSL library is found for ctypes."""

    def __init__(self, pem: bytes) -> None:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

        key = serialization.load_pem_private_key(pem, password=None)
        if isinstance(key, rsa.RSAPrivateKey):
            rsa_key, pad, sha256 = key, padding.PKCS1v15(), hashes.SHA256()
            self.kind, self.bits = "rsa", key.key_size
            self._sign: Callable[[bytes], bytes] = lambda data: rsa_key.sign(data, pad, sha256)
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            ed_key = key
            self.kind, self.bits = "ed25519", 256
            self._sign = lambda data: ed_key.sign(hashlib.sha256(data).digest())
        else:
            self.kind, self.bits = "other", 0
            self._sign = lambda data: b""

    def sign(self, data: bytes) -> bytes:
        return self._sign(data)


def parse_key(pem: bytes) -> SigningKey:
    """A key from PEM text: held by OpenSSL through ctypes, or by ``cryptography`` where that
    is not available. Raises ``ValueError`` (``TypeError`` for an encrypted key)."""
    if b"ENCRYPTED" in pem:
        raise TypeError("encrypted key")
    if openssl.available():
        return openssl.Key(pem)
    return _CryptographyKey(pem)


def load_key(algorithm: str, source: KeySource) -> SigningKey:
    """The private key of ``source``, checked for its kind and size.

    Raises :class:`DkimKeyError` naming the file for a missing, unreadable or unfit key."""
    data = _read_pem(source, algorithm)
    try:
        key = parse_key(data)
    except TypeError:
        raise DkimKeyError(
            source.shown, "Schlüssel ist verschlüsselt (ohne Passwort ablegen)"
        ) from None
    except Exception:  # whatever the library says: the file holds no usable key
        raise DkimKeyError(source.shown, "kein lesbarer privater Schlüssel im PEM-Format") from None
    if algorithm == "rsa-sha256":
        if key.kind != "rsa":
            raise DkimKeyError(source.shown, "kein RSA-Schlüssel (für rsa-sha256)")
        if not RSA_MIN_BITS <= key.bits <= RSA_MAX_BITS:
            raise DkimKeyError(
                source.shown,
                f"RSA-Schlüssel hat {key.bits} Bit, erwartet werden "
                f"{RSA_MIN_BITS} bis {RSA_MAX_BITS} Bit",
            )
        return key
    if key.kind != "ed25519":
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


def domain_of(settings: Settings) -> str:
    """The signing domain: ``[dkim] domain`` or the domain of the sender address."""
    if settings.dkim.domain:
        return settings.dkim.domain  # validated, in its IDNA form
    domain = settings.mail.sender_address.rpartition("@")[2].lower()
    return domain if domain.isascii() else domain.encode("idna").decode("ascii")


_WSP = re.compile(rb"[\t ]+")
_FOLD = re.compile(rb"\r?\n")


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """One header in relaxed canonical form (RFC 6376 3.4.2), CRLF-terminated: the name in
    lower case, the value unfolded, runs of whitespace as one space, stripped. The tests
    compare it with dkimpy's ``Relaxed.canonicalize_headers``. Most headers of a message are
    one line without tabs or double spaces: for them no regular expression runs."""
    if b"\n" in value or b"\r" in value or b"\t" in value or b"  " in value:
        value = _WSP.sub(b" ", _FOLD.sub(b"", value))
    return name.lower().rstrip() + b":" + value.strip() + b"\r\n"


def simple_body(body: bytes) -> bytes:
    """The simple canonical body (RFC 6376 3.4.3): empty lines at the end removed, an empty
    body as one CRLF. The tests compare it with dkimpy's ``Simple.canonicalize_body``."""
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    return body[:end] + b"\r\n"


def fold(value: bytes, first: int, width: int = 78) -> bytes:
    """``value`` folded at spaces so that lines stay within ``width`` (the first line starts
    after ``first`` characters of header name); a word longer than a line stays whole."""
    lines: list[bytes] = []
    line, room = b"", width - first
    for word in value.split(b" "):
        if line and len(line) + 1 + len(word) > room:
            lines.append(line)
            line, room = word, width - 1
        else:
            line = line + b" " + word if line else word
    lines.append(line)
    return b"\r\n ".join(lines)


# -- signing -------------------------------------------------------------------------------


class _Signature:
    """One configured signature (algorithm, key, selector, domain) and the static parts of its
    header, prepared once per set of signed headers."""

    def __init__(self, algorithm: str, key: SigningKey, domain: str, selector: str) -> None:
        self.algorithm = algorithm
        self.key = key
        self.domain = domain
        self.selector = selector
        # Signed header names (as present, in order) -> (folded static header, its canonical
        # form), both without the per-message t=, bh= and b=.
        self._static: dict[tuple[str, ...], tuple[bytes, bytes]] = {}

    def static(self, names: tuple[str, ...]) -> tuple[bytes, bytes]:
        found = self._static.get(names)
        if found is None:
            value = (
                f"v=1; a={self.algorithm}; c=relaxed/simple; d={self.domain}; "
                f"s={self.selector}; q=dns/txt; h={' : '.join(names)};"
            ).encode("ascii")
            folded = fold(value, first=len(b"DKIM-Signature: "))
            canonical = relaxed_header(b"DKIM-Signature", folded)
            found = (b"DKIM-Signature: " + folded, canonical.removesuffix(b"\r\n"))
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
        data = canonical_headers + canonical + b" " + variable + b" b="
        signature = base64.b64encode(self.key.sign(data))
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
        if found is not None:
            return found
        name, _, value = raw.partition(b":")
        lower = name.strip().lower().decode("ascii", "replace")
        if lower not in _SIGNED:
            return "", b""
        found = (lower, relaxed_header(name, value))
        if b"\r\n" in raw:  # folded: the shared ones (Subject, From …), worth keeping
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
        # Simple body canonicalisation: the body is 7-bit quoted-printable and base64 with CRLF
        # lines of at most 76 characters, which relays pass on unchanged; relaxed would cost a
        # regular expression over every body (about 40 µs, 15 % of the signature itself).
        body_hash = base64.b64encode(hashlib.sha256(simple_body(body)).digest())
        signed = tuple(found)
        joined = b"".join(found.values())
        stamp = str(int(time.time())).encode()
        headers = [s.header(signed, joined, stamp, body_hash) for s in self.signatures]
        return b"".join(headers) + message
