"""DKIM signatures made by the OpenSSL library that Python's ``hashlib`` has loaded already.

Why not ``cryptography``: it signs as fast (the same OpenSSL), but importing it and loading a
key costs every sender process about 9 MB, and the delivery floor of 200 MB for the whole
process tree has about 10 MB to spare. The library that ``_hashlib`` links is mapped into
every Python process anyway; its signing functions, called through :mod:`ctypes`, cost nothing
to load. The few functions used (``EVP_DigestSign*``, PEM key loading) have the same meaning
in OpenSSL 1.1.1 and 3.x. Where no such library is found (``available()`` is False),
:mod:`notifier.dkim` falls back to ``cryptography``; the tests check that both make the same
signatures (RSA PKCS#1 v1.5 and Ed25519 are deterministic).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import hashlib
from ctypes import POINTER, c_char_p, c_int, c_size_t, c_void_p
from typing import Any

EVP_PKEY_RSA = 6
EVP_PKEY_ED25519 = 1087


class OpenSslError(ValueError):
    """A key OpenSSL cannot read, or a signature it could not make."""


@functools.cache
def _library() -> Any | None:
    """libcrypto as the running interpreter uses it, with the signatures of its functions
    declared; None where it cannot be found or lacks a function."""
    # Maps libcrypto into the process; a Python without OpenSSL looks for it by name below.
    with contextlib.suppress(ImportError):
        import _hashlib  # noqa: F401

    path = None
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and "/libcrypto.so" in fields[5]:
                    path = fields[5].strip()
                    break
    except OSError:
        pass
    path = path or ctypes.util.find_library("crypto")
    if not path:
        return None
    try:
        lib = ctypes.CDLL(path)
        declarations: list[tuple[str, tuple[str, ...], Any, list[Any]]] = [
            ("BIO_new_mem_buf", (), c_void_p, [c_char_p, c_int]),
            ("BIO_free", (), c_int, [c_void_p]),
            ("PEM_read_bio_PrivateKey", (), c_void_p, [c_void_p, c_void_p, c_void_p, c_void_p]),
            ("EVP_PKEY_free", (), None, [c_void_p]),
            ("base_id", ("EVP_PKEY_get_base_id", "EVP_PKEY_base_id"), c_int, [c_void_p]),
            ("bits", ("EVP_PKEY_get_bits", "EVP_PKEY_bits"), c_int, [c_void_p]),
            ("size", ("EVP_PKEY_get_size", "EVP_PKEY_size"), c_int, [c_void_p]),
            ("EVP_MD_CTX_new", (), c_void_p, []),
            ("EVP_MD_CTX_free", (), None, [c_void_p]),
            ("EVP_sha256", (), c_void_p, []),
            (
                "EVP_DigestSignInit",
                (),
                c_int,
                [c_void_p, c_void_p, c_void_p, c_void_p, c_void_p],
            ),
            (
                "EVP_DigestSign",
                (),
                c_int,
                [c_void_p, c_char_p, POINTER(c_size_t), c_char_p, c_size_t],
            ),
            ("ERR_clear_error", (), None, []),
        ]
        for name, candidates, restype, argtypes in declarations:
            function = None
            for candidate in candidates or (name,):
                function = getattr(lib, candidate, None)
                if function is not None:
                    break
            if function is None:
                return None
            function.restype = restype
            function.argtypes = argtypes
            setattr(lib, f"fn_{name}", function)
    except OSError:
        return None
    return lib


def available() -> bool:
    return _library() is not None


# A password callback that gives none: without it, OpenSSL would ask on the terminal for the
# password of an encrypted key.
_NO_PASSWORD = ctypes.CFUNCTYPE(c_int, c_void_p, c_int, c_int, c_void_p)(lambda *_: -1)


class Key:
    """A private key held by OpenSSL; :meth:`sign` makes the DKIM signature of its kind."""

    def __init__(self, pem: bytes) -> None:
        """Raises :class:`OpenSslError` if ``pem`` holds no private key OpenSSL can read
        without a password."""
        lib = _library()
        if lib is None:
            raise OpenSslError("OpenSSL is not available")
        self._lib = lib
        self._pkey: int | None = None
        bio = lib.fn_BIO_new_mem_buf(pem, len(pem))
        if not bio:
            raise OpenSslError("out of memory")
        try:
            pkey = lib.fn_PEM_read_bio_PrivateKey(bio, None, _NO_PASSWORD, None)
        finally:
            lib.fn_BIO_free(bio)
        if not pkey:
            lib.fn_ERR_clear_error()
            raise OpenSslError("no private key OpenSSL can read")
        self._pkey = pkey
        kind = lib.fn_base_id(pkey)
        self.kind = {EVP_PKEY_RSA: "rsa", EVP_PKEY_ED25519: "ed25519"}.get(kind, "other")
        self.bits: int = lib.fn_bits(pkey)
        self._size: int = lib.fn_size(pkey)  # the longest signature
        self._md = lib.fn_EVP_sha256() if self.kind == "rsa" else None

    def sign(self, data: bytes) -> bytes:
        """rsa: PKCS#1 v1.5 over the SHA-256 hash of ``data`` (rsa-sha256); ed25519: Ed25519
        over the SHA-256 hash of ``data`` (ed25519-sha256, RFC 8463)."""
        lib = self._lib
        if self.kind == "ed25519":
            data = hashlib.sha256(data).digest()
        elif self.kind != "rsa":
            raise OpenSslError("only RSA and Ed25519 keys sign")
        ctx = lib.fn_EVP_MD_CTX_new()
        if not ctx:
            raise OpenSslError("out of memory")
        try:
            signature = ctypes.create_string_buffer(self._size)
            length = c_size_t(self._size)
            if (
                lib.fn_EVP_DigestSignInit(ctx, None, self._md, None, self._pkey) != 1
                or lib.fn_EVP_DigestSign(ctx, signature, ctypes.byref(length), data, len(data)) != 1
            ):
                lib.fn_ERR_clear_error()
                raise OpenSslError("OpenSSL could not sign")
        finally:
            lib.fn_EVP_MD_CTX_free(ctx)
        return signature.raw[: length.value]

    def __del__(self) -> None:
        if getattr(self, "_pkey", None):
            self._lib.fn_EVP_PKEY_free(self._pkey)
            self._pkey = None
