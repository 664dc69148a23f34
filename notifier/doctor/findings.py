"""What a check of ``notifier doctor`` reports, and the deadlines every check keeps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..config import Settings

CHECK_SECONDS = 20.0
# Connecting to the SMTP server, fetching one source: at most this long.
NETWORK_SECONDS = 10.0


@dataclass(frozen=True)
class Finding:
    """One line of the checklist: ``ok`` or not, what was found, and for a ✗ what to do."""

    ok: bool
    text: str
    hint: str = ""


def passed(text: str) -> Finding:
    return Finding(True, text)


def failed(text: str, hint: str) -> Finding:
    return Finding(False, text, hint)


Check = Callable[[Settings], Awaitable[Sequence[Finding]]]
