"""Polling the bounce mailbox over IMAP (aioimaplib).

Each poll logs in, looks at up to ``max_per_poll`` messages not looked at before, and hands each
to the intake. Bounces, complaints and unsubscribe mails are moved to ``processed_folder``;
everything else (auto-replies, mail for people, unreadable or too big messages) stays where it
is, unread, marked with the keyword ``NotifierChecked`` so the next poll passes it by. Nothing
is ever deleted. A message over the size limit is never fetched whole (its headers are); a
message whose processing fails in the database stays unmarked for the next poll.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from dataclasses import dataclass, field

import aioimaplib

from ..config import Settings
from ..errors import NotifierError
from .intake import HEAD_BYTES, BounceIntake, Handled

logger = logging.getLogger(__name__)

CHECKED = "NotifierChecked"  # IMAP keyword of messages looked at and left in place
_SIZE = re.compile(rb"UID (\d+)[^)]*?RFC822\.SIZE (\d+)|RFC822\.SIZE (\d+)[^)]*?UID (\d+)")


class ImapError(NotifierError):
    """The mailbox cannot be read (connection, login, folder)."""


@dataclass
class PollResult:
    looked_at: int = 0
    processed: int = 0
    left: int = 0
    more: bool = False  # more messages wait than one poll takes
    kinds: dict[str, int] = field(default_factory=dict)


def _ok(response: aioimaplib.Response, what: str) -> aioimaplib.Response:
    if response.result != "OK":
        text = b" ".join(bytes(line) for line in response.lines)[:300]
        raise ImapError(f"IMAP {what}: {text.decode('utf-8', 'replace')}")
    return response


def _literal(response: aioimaplib.Response) -> bytes:
    for line in response.lines:
        if isinstance(line, bytearray):
            return bytes(line)
    return b""


def _search_uids(response: aioimaplib.Response) -> set[int]:
    """The UIDs of a SEARCH answer: its lines of numbers only (a message arriving meanwhile
    adds lines such as ``3 EXISTS``, which are not UIDs)."""
    uids: set[int] = set()
    for line in response.lines[:-1]:  # the last line is the tagged "Search completed"
        words = bytes(line).split()
        if words and all(w.isdigit() for w in words):
            uids.update(int(w) for w in words)
    return uids


def _quote(name: str) -> str:
    return '"' + name + '"'  # the config refuses quotes and backslashes in folder names


class ImapPoller:
    """Reads the mailbox of ``[bounces.imap]`` into a :class:`BounceIntake`."""

    def __init__(self, settings: Settings, intake: BounceIntake) -> None:
        self.settings = settings
        self.imap = settings.bounces.imap
        self.bounces = settings.bounces
        self.intake = intake

    @property
    def configured(self) -> bool:
        return bool(self.imap.host)

    async def poll(self) -> PollResult:
        """One poll; raises :class:`ImapError` if the mailbox cannot be reached or read."""
        if not self.configured:
            raise ImapError("[bounces.imap] host ist nicht gesetzt")
        budget = self.bounces.poll_seconds_max
        try:
            async with asyncio.timeout(budget + self.imap.timeout):
                return await self._poll(asyncio.get_running_loop().time() + budget)
        except TimeoutError as exc:
            raise ImapError(
                f"IMAP {self.imap.host}:{self.imap.port}: keine Antwort in {budget:.0f} s"
            ) from exc
        except (OSError, aioimaplib.AioImapException) as exc:
            raise ImapError(f"IMAP {self.imap.host}:{self.imap.port}: {exc}") from exc

    async def _connect(self) -> aioimaplib.IMAP4:
        imap = self.imap
        client: aioimaplib.IMAP4
        if imap.tls == "tls":
            client = aioimaplib.IMAP4_SSL(
                imap.host, imap.port, timeout=imap.timeout, ssl_context=self._tls()
            )
        else:
            client = aioimaplib.IMAP4(imap.host, imap.port, timeout=imap.timeout)
        try:
            await client.wait_hello_from_server()
            if client.protocol is None or client.protocol.state != "NONAUTH":
                raise ImapError(f"IMAP {imap.host}:{imap.port}: keine Verbindung")
            response = await client.login(imap.user, imap.password.get_secret_value())
            if response.result != "OK":
                raise ImapError(
                    f"IMAP {imap.host}:{imap.port}: Anmeldung als {imap.user} abgelehnt"
                )
        except BaseException:
            await self._close(client, logout=False)
            raise
        return client

    def _tls(self) -> ssl.SSLContext:
        if not self.imap.ca_file:
            return ssl.create_default_context()
        path = self.settings.path(self.imap.ca_file)
        try:
            return ssl.create_default_context(cafile=str(path))
        except (OSError, ssl.SSLError) as exc:
            raise ImapError(f"[bounces.imap] ca_file {path}: nicht lesbar ({exc})") from exc

    async def _close(self, client: aioimaplib.IMAP4, *, logout: bool = True) -> None:
        try:
            if logout:
                await asyncio.wait_for(client.logout(), self.imap.timeout)
        except (OSError, TimeoutError, aioimaplib.AioImapException):
            logger.debug("IMAP logout failed", exc_info=True)
        finally:
            transport = getattr(client.protocol, "transport", None)
            if transport is not None:
                transport.close()

    async def _poll(self, deadline: float) -> PollResult:
        loop = asyncio.get_running_loop()
        result = PollResult()
        client = await self._connect()
        try:
            _ok(await client.select(_quote(self.imap.folder)), f"Ordner {self.imap.folder}")
            created = await client.create(_quote(self.imap.processed_folder))
            if created.result != "OK" and b"ALREADYEXISTS" not in b"".join(
                bytes(line) for line in created.lines
            ):
                _ok(created, f"Ordner {self.imap.processed_folder} anlegen")
            found = _ok(await client.uid_search("UNKEYWORD", CHECKED, charset=None), "SEARCH")
            uids = sorted(_search_uids(found))
            result.more = len(uids) > self.bounces.max_per_poll
            uids = uids[: self.bounces.max_per_poll]
            sizes = await self._sizes(client, uids)
            can_move = "MOVE" in (client.protocol.capabilities if client.protocol else set())
            for uid in uids:
                if result.looked_at and loop.time() > deadline:
                    result.more = True  # at least one message per poll, however slow
                    break
                size = sizes.get(uid)
                if size is None:
                    continue  # gone meanwhile (another client moved it)
                try:
                    handled = await self._one(client, uid, size)
                except ImapError as exc:
                    # One message the server will not hand out must not block the others.
                    logger.warning("Bounce-Postfach: Nachricht UID %d übersprungen: %s", uid, exc)
                    await client.uid("store", str(uid), "+FLAGS", f"({CHECKED})")
                    result.left += 1
                    continue
                result.looked_at += 1
                result.kinds[handled.kind.value] = result.kinds.get(handled.kind.value, 0) + 1
                if handled.processed:
                    await self._move(client, uid, can_move)
                    result.processed += 1
                else:
                    _ok(await client.uid("store", str(uid), "+FLAGS", f"({CHECKED})"), "STORE")
                    result.left += 1
        finally:
            await self._close(client)
        return result

    async def _sizes(self, client: aioimaplib.IMAP4, uids: list[int]) -> dict[int, int]:
        sizes: dict[int, int] = {}
        for start in range(0, len(uids), 100):
            chunk = ",".join(map(str, uids[start : start + 100]))
            response = _ok(await client.uid("fetch", chunk, "(RFC822.SIZE)"), "FETCH")
            for line in response.lines:
                found = _SIZE.search(bytes(line))
                if found:
                    uid, size = (found.group(1), found.group(2))
                    if uid is None:
                        uid, size = found.group(4), found.group(3)
                    sizes[int(uid)] = int(size)
        return sizes

    async def _one(self, client: aioimaplib.IMAP4, uid: int, size: int) -> Handled:
        limit = self.bounces.max_message_bytes
        if size > limit:
            # Only the start of the headers: a huge message is never loaded.
            part = f"(BODY.PEEK[HEADER]<0.{HEAD_BYTES}>)"
        else:
            # The server's size may be wrong: never more than one byte past the limit.
            part = f"(BODY.PEEK[]<0.{limit + 1}>)"
        raw = _literal(_ok(await client.uid("fetch", str(uid), part), "FETCH"))
        return await self.intake.handle(
            raw, source="imap", size=max(size, len(raw)) if size > limit else len(raw)
        )

    async def _move(self, client: aioimaplib.IMAP4, uid: int, can_move: bool) -> None:
        folder = _quote(self.imap.processed_folder)
        if can_move:
            _ok(await client.uid("move", str(uid), folder), "MOVE")
            return
        _ok(await client.uid("copy", str(uid), folder), "COPY")
        _ok(await client.uid("store", str(uid), "+FLAGS", r"(\Deleted)"), "STORE")
        _ok(await client.uid("expunge", str(uid)), "EXPUNGE")
