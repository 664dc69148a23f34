"""The envelope sender of each message (VERP): ``bounces+{token}@domain``, where the token names
the outbox row and is signed with this installation's secret, so a bounce leads back to the
message that caused it and a forged one cannot touch another person.

The token is ``<outbox id>-<16 base32 characters of an HMAC-SHA256>``: lower case (some servers
lower-case local parts), about a microsecond to make, nothing to store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

SIGNATURE_CHARS = 16  # 80 bits


class ReturnPath:
    """Makes and reads the VERP addresses of one installation (``template`` holds ``{token}``;
    an empty template: every message goes out from ``fallback``)."""

    def __init__(self, template: str, fallback: str, secret: bytes) -> None:
        self.template = template
        self.fallback = fallback
        # Keyed once: each token copies the prepared HMAC state instead of keying it again.
        self._mac = hmac.new(
            hashlib.sha256(b"notifier-verp\0" + secret).digest(), digestmod=hashlib.sha256
        )
        pattern = ""
        if template:
            before, _, after = template.partition("{token}")
            pattern = re.escape(before) + rf"(?P<token>[0-9]{{1,18}}-[a-z2-7]{{{SIGNATURE_CHARS}}})"
            pattern += re.escape(after)
        self._pattern = re.compile(pattern, re.IGNORECASE) if pattern else None

    @property
    def active(self) -> bool:
        return self._pattern is not None

    def _signature(self, outbox_id: int) -> str:
        mac = self._mac.copy()
        mac.update(b"%d" % outbox_id)
        digest = mac.digest()
        return base64.b32encode(digest[:10]).decode("ascii").lower()

    def token(self, outbox_id: int) -> str:
        return f"{outbox_id}-{self._signature(outbox_id)}"

    def address(self, outbox_id: int) -> str:
        """The envelope sender of the message of ``outbox_id``."""
        if not self.template:
            return self.fallback
        return self.template.replace("{token}", self.token(outbox_id))

    def find(self, addresses: list[str]) -> tuple[int | None, bool]:
        """The outbox row named by the first address that has the form of a VERP address, and
        whether a token was there at all: ``(id, True)`` for a genuine token, ``(None, True)``
        for a forged or damaged one, ``(None, False)`` when none of them carries a token."""
        if self._pattern is None:
            return None, False
        for address in addresses:
            found = self._pattern.fullmatch(address.strip().strip("<>"))
            if found is None:
                continue
            number, _, signature = found.group("token").lower().partition("-")
            outbox_id = int(number)
            if hmac.compare_digest(signature, self._signature(outbox_id)):
                return outbox_id, True
            return None, True
        return None, False
