"""DKIM: every kind of message, sent by the real sender to a real SMTP server, verifies with
dkimpy's verifier against the record `notifier dkim keygen` printed; any change to a signed
header or the body breaks it; the key commands and the start with a bad key."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dkim as dkimpy
import idna
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.canonicalization import Relaxed, Simple
from sqlalchemy import select

from notifier import dkim, dkim_keys, openssl
from notifier.briefings import run_due_briefings
from notifier.console import send_test
from notifier.db import Database
from notifier.db.models import (
    Item,
    ItemKind,
    ItemStatus,
    OutboxMessage,
    OutboxState,
    Rhythm,
    Subscriber,
    SubscriberStatus,
)
from notifier.delivery import Sender, SmtpTransport
from notifier.rendering import Renderer
from notifier.routing import release_due

from .conftest import Project
from .smtpd import Received

PEOPLE = """email,name,role,organisation,topics,rhythm
sofort@kreis.example,Anna Äbelé,staff,07232,,immediate
taeglich@bitburg.example,Tina Täglich,staff,Bitburg,,daily
"""
NOTE = """+++
subject = "Breitband: Ausbau in der Südeifel – „fertig“"
send_at = "now"
+++
Der Ausbau ist  abgeschlossen.\t Mit Tab und doppelten  Leerzeichen.
"""
SIGNING = {"dkim": {"enabled": True, "algorithm": "rsa-sha256+ed25519-sha256"}}
RECORD = re.compile(r"Name: (\S+)\n\s+Typ:  TXT\n\s+Wert: (v=DKIM1; [^\n]+)")


@dataclass
class Keys:
    """The DNS records `notifier dkim keygen` printed, by name (as dkimpy asks for them)."""

    records: dict[bytes, bytes]

    def dns(self, name: bytes, timeout: int = 5) -> bytes | None:
        return self.records.get(name)


def published(output: str) -> dict[bytes, bytes]:
    found = {f"{n}.".encode(): v.encode() for n, v in RECORD.findall(output)}
    assert found, output
    return found


@pytest.fixture
def keys(project: Project) -> Keys:
    """A project that signs with RSA and Ed25519, its keys made by the CLI."""
    records: dict[bytes, bytes] = {}
    records |= published(project.cli("dkim", "keygen").output)
    records |= published(project.cli("dkim", "keygen", "--ed25519").output)
    project.write_config({"dkim": {"enabled": True, "algorithm": "rsa-sha256+ed25519-sha256"}})
    return Keys(records)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def signatures(data: bytes) -> list[dict[bytes, bytes]]:
    """The tags of each DKIM-Signature header, in order."""
    parsed = dkimpy.DKIM(data)
    out = []
    for name, value in parsed.headers:
        if name.lower() == b"dkim-signature":
            out.append(dkimpy.util.parse_tag_value(value))
    return out


def verifies(data: bytes, keys: Keys) -> list[bool]:
    """Whether each signature of ``data`` verifies (RSA first, then Ed25519)."""
    checker = dkimpy.DKIM(data)
    results = []
    for index in range(len(signatures(data))):
        try:
            results.append(bool(checker.verify(index, dnsfunc=keys.dns)))
        except dkimpy.DKIMException:  # some failures are raised rather than returned
            results.append(False)
    return results


def signed_names(data: bytes) -> list[str]:
    return [n.strip().decode() for n in signatures(data)[0][b"h"].split(b":")]


async def send_every_kind(
    project: Project, mail: dict[str, str] | None = None
) -> dict[str, Received]:
    """An announcement, an update, an event (with its calendar file), a daily briefing, a
    sign-up confirmation and a personal-link mail, each sent by the real sender, signing."""
    project.write_config({**SIGNING, "briefings": {"daily": "* * * * *"}, "mail": mail or {}})
    project.seed(project.write("people.csv", PEOPLE))
    settings = project.settings
    clock = Clock()
    async with Database(settings.database_url) as db:
        assert await run_due_briefings(db, settings, clock()) == {}  # counting starts now
        project.cli("announce", project.write("a.md", NOTE))
        now = clock.now = datetime.now(UTC)  # the announcement is due
        async with db.transaction() as session:
            common = {"topics": [], "scope": [], "roles": [], "send_at": now, "created_at": now}
            session.add(
                Item(
                    kind=ItemKind.update,
                    subject="Neues aus dem Projekt",
                    body="Zusammenfassung",
                    status=ItemStatus.scheduled,
                    created_by="source:news",
                    source="news",
                    external_key="news-1",
                    link="https://example.org/news-1",
                    published_at=now,
                    **common,
                )
            )
            session.add(
                Item(
                    kind=ItemKind.event,
                    subject="Digitalwerkstatt",
                    body="Ein Termin",
                    status=ItemStatus.scheduled,
                    created_by="source:termine",
                    source="termine",
                    external_key="termin-1",
                    starts_at=now + timedelta(days=10),
                    ends_at=now + timedelta(days=10, hours=2),
                    location="Kreishaus Bitburg",
                    **common,
                )
            )
            active = await session.scalar(
                select(Subscriber).where(Subscriber.email == "sofort@kreis.example")
            )
            assert active is not None
            pending = Subscriber(
                email="neu@pruem.example",
                name="Neue Person",
                role=active.role,
                organisation_id=active.organisation_id,
                status=SubscriberStatus.pending,
                created_at=now,
                updated_at=now,
                token_version=0,
                subscriptions=[],
            )
            session.add(pending)
            await session.flush()
            for subscriber_id, notice in ((pending.id, "confirm"), (active.id, "links")):
                session.add(
                    OutboxMessage(
                        subscriber_id=subscriber_id,
                        notice=notice,
                        state=OutboxState.queued,
                        created_at=now,
                        updated_at=now,
                        next_attempt_at=now,
                    )
                )
        assert len(await release_due(db, now)) == 3
        sender = Sender(
            db, settings, Renderer(settings), lambda: SmtpTransport(settings.smtp), clock
        )
        try:
            while await sender.run_once():
                continue
            clock.now += timedelta(minutes=2)
            assert await run_due_briefings(db, settings, clock()) == {Rhythm.daily: 1}
            while await sender.run_once():
                continue
        finally:
            await sender.close()
    kinds: dict[str, Received] = {}
    for received in project.smtp.messages():
        message = received.message
        subject = str(message["Subject"])
        to = received.rcpt_tos[0]
        if subject.startswith("Bitte bestätigen"):
            kinds["confirm"] = received
        elif subject.startswith("Ihr persönlicher Link"):
            kinds["links"] = received
        elif subject.startswith("Ihr Tagesüberblick"):
            kinds["briefing"] = received
        elif to != "sofort@kreis.example":
            continue
        elif subject.startswith("Breitband"):
            kinds["announcement"] = received
        elif subject.startswith("Termin:"):
            kinds["event"] = received
        elif subject == "Neues aus dem Projekt":
            kinds["update"] = received
    return kinds


@pytest.fixture
async def sent(project: Project, keys: Keys) -> AsyncIterator[dict[str, Received]]:
    yield await send_every_kind(project)


KINDS = ["announcement", "update", "event", "briefing", "confirm", "links"]
BULK = [
    "subject",
    "from",
    "reply-to",
    "list-id",
    "mime-version",
    "to",
    "date",
    "message-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "content-type",
]
SERVICE = [h for h in BULK if not h.startswith("list-")]


async def test_every_kind_of_message_verifies_with_both_signatures(
    sent: dict[str, Received], keys: Keys
) -> None:
    assert sorted(sent) == sorted(KINDS)
    for kind, received in sent.items():
        assert verifies(received.data, keys) == [True, True], kind
        rsa_tags, ed_tags = signatures(received.data)
        assert (rsa_tags[b"a"], ed_tags[b"a"]) == (b"rsa-sha256", b"ed25519-sha256")
        assert rsa_tags[b"c"] == b"relaxed/simple"
        assert rsa_tags[b"d"] == b"eifelkreis-verbindet.example"
        assert (rsa_tags[b"s"], ed_tags[b"s"]) == (b"notifier", b"notifier-ed25519")
        # Exactly the listed headers that the message has: transactional mail has no list
        # headers; the event's Content-Type is multipart/mixed (with the calendar file).
        assert signed_names(received.data) == (SERVICE if kind in ("confirm", "links") else BULK)
    assert "multipart/mixed" in str(sent["event"].message["Content-Type"])


async def test_changing_a_signed_header_or_the_body_breaks_the_signature(
    sent: dict[str, Received], keys: Keys
) -> None:
    data = sent["announcement"].data
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    for name in BULK:
        index = next(
            i for i, line in enumerate(lines) if line.lower().startswith(name.encode() + b":")
        )
        changed = list(lines)
        changed[index] = changed[index][:-1] + (b"X" if changed[index][-1:] != b"X" else b"Y")
        tampered = b"\r\n".join(changed) + b"\r\n\r\n" + body
        assert verifies(tampered, keys) == [False, False], name
    # A changed byte anywhere in the body, and a line added at its end.
    for position in (10, len(body) // 2, len(body) - 5):
        flipped = bytearray(body)
        flipped[position] = ord("A") if flipped[position] != ord("A") else ord("B")
        assert verifies(head + b"\r\n\r\n" + bytes(flipped), keys) == [False, False]
    assert verifies(data + b"Noch ein Satz.\r\n", keys) == [False, False]
    # A second From, above or below the signed one, fails too (RFC 6376 8.15).
    assert verifies(b"From: Jemand <x@evil.example>\r\n" + data, keys) == [False, False]
    assert verifies(head + b"\r\nFrom: x@evil.example\r\n\r\n" + body, keys) == [False, False]
    # Unchanged, and with an unsigned header added on the way (as relays do), it verifies.
    assert verifies(b"Received: from relay\r\n" + data, keys) == [True, True]


async def test_the_office_test_message_is_signed(project: Project, keys: Keys) -> None:
    settings = project.settings
    now = datetime.now(UTC)
    item = Item(
        id=1,
        kind=ItemKind.announcement,
        subject="Entwurf",
        body="Ein Entwurf.",
        topics=[],
        send_at=now,
        created_at=now,
        created_by="buero",
    )
    endpoint = ("127.0.0.1", project.smtp.port, "none")
    await send_test(
        settings,
        Renderer(settings),
        endpoint,
        item,
        name="Büro",
        email="buero@kreis.example",
        now=now,
    )
    (received,) = project.smtp.messages()
    assert str(received.message["Subject"]) == "[Test] Entwurf"
    assert verifies(received.data, keys) == [True, True]


async def test_headers_not_present_are_not_signed(project: Project, keys: Keys) -> None:
    sent = await send_every_kind(project, {"reply_to": ""})
    data = sent["announcement"].data
    assert "Reply-To" not in sent["announcement"].message
    assert signed_names(data) == [h for h in BULK if h != "reply-to"]
    assert verifies(data, keys) == [True, True]


def test_relaxed_header_matches_dkimpy() -> None:
    rng = random.Random(14)
    pieces = [
        b"a",
        b"B",
        b" ",
        b"  ",
        b"\t",
        b"\r\n ",
        b"\r\n\t",
        b"=?utf-8?q?=C3=9C?=",
        b":",
        b";",
    ]
    samples = [(b"Subject", b""), (b"Subject", b" "), (b"TO ", b" a@b.example\r\n")]
    for _ in range(3000):
        name = rng.choice([b"Subject", b"From", b"Message-ID", b"To ", b"LIST-ID"])
        value = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        samples.append((name, value + rng.choice([b"", b"\r\n"])))
    for name, value in samples:
        ((cname, cvalue),) = Relaxed.canonicalize_headers([(name, value)])
        assert dkim.relaxed_header(name, value) == cname + b":" + cvalue, (name, value)


def test_simple_body_and_folding_match_dkimpy() -> None:
    rng = random.Random(8463)
    pieces = [b"a", b" ", b"\r\n", b"\r\n\r\n", b"\r", b"\n", b"=20"]
    samples = [b"", b"\r\n", b"\r\n\r\n", b"a", b"a\r\n\r\n\r\n", b"\n\r\n"]
    samples += [
        b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 20))) for _ in range(3000)
    ]
    for body in samples:
        assert dkim.simple_body(body) == Simple.canonicalize_body(body), body
    # Folding keeps the words and their order, and the lines within 78 characters.
    value = b"v=1; a=rsa-sha256; h=" + b" : ".join([b"list-unsubscribe-post"] * 12) + b";"
    folded = dkim.fold(value, first=16)
    assert folded.replace(b"\r\n ", b" ") == value
    lines = folded.split(b"\r\n")
    assert len(lines[0]) + 16 <= 78 and all(len(line) <= 78 for line in lines)


def test_keygen_writes_a_private_2048_bit_key_and_show_prints_its_record(project: Project) -> None:
    result = project.cli("dkim", "keygen", "--selector", "eifel2026")
    path = project.root / "var" / "dkim.key"
    assert path.stat().st_mode & 0o777 == 0o600
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    record = published(result.output)
    assert list(record) == [b"eifel2026._domainkey.eifelkreis-verbindet.example."]
    assert 'selector = "eifel2026"' in result.output and "enabled = true" in result.output
    # The zone-file line splits the value into strings DNS accepts (at most 255 characters).
    zone = next(line for line in result.output.splitlines() if " IN TXT " in line)
    strings = re.findall(r'"([^"]*)"', zone)
    assert "".join(strings) == next(iter(record.values())).decode()
    assert all(len(s) <= 255 for s in strings) and len(strings) == 2
    # An existing key is never overwritten.
    again = project.cli("dkim", "keygen", ok=False)
    assert again.exit_code == 1
    assert f"Fehler: DKIM-Schlüssel {path}: Datei existiert schon" in again.output
    assert serialization.load_pem_private_key(path.read_bytes(), None).key_size == 2048  # type: ignore[union-attr]
    # show prints the record of the configured key (here under the selector given to keygen).
    project.write_config({"dkim": {"selector": "eifel2026"}})
    shown = project.cli("dkim", "show").output
    assert published(shown) == record
    assert "DKIM ist ausgeschaltet" in shown


def test_keygen_writes_another_file_for_a_new_selector(project: Project) -> None:
    project.cli("dkim", "keygen")
    result = project.cli(
        "dkim", "keygen", "--selector", "neu", "--file", str(project.root / "neu.key")
    )
    assert (project.root / "neu.key").stat().st_mode & 0o777 == 0o600
    assert f'private_key_file = "{project.root / "neu.key"}"' in result.output
    assert list(published(result.output)) == [b"neu._domainkey.eifelkreis-verbindet.example."]


def test_the_key_may_come_from_the_environment(project: Project, keys: Keys) -> None:
    pem = (project.root / "var" / "dkim.key").read_text()
    (project.root / "var" / "dkim.key").unlink()
    from notifier.config import load_settings

    settings = load_settings(
        project.config, environ={"NOTIFIER_DKIM__PRIVATE_KEY": pem.replace("\n", "\\n")}
    )
    assert dkim.check(settings) is None
    assert published(dkim_keys.show(settings)) == keys.records


def _rsa_pem(bits: int) -> bytes:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("missing", "Datei nicht gefunden (anlegen mit: notifier dkim keygen)"),
        ("directory", "ist ein Verzeichnis, keine Schlüsseldatei"),
        ("garbage", "kein lesbarer privater Schlüssel im PEM-Format"),
        ("small", "RSA-Schlüssel hat 1024 Bit, erwartet werden 2048 bis 4096 Bit"),
        ("ed25519", "kein RSA-Schlüssel (für rsa-sha256)"),
        ("unreadable", "Datei nicht lesbar (keine Berechtigung)"),
        ("encrypted", "Schlüssel ist verschlüsselt (ohne Passwort ablegen)"),
    ],
)
def test_a_start_with_an_unusable_key_stops_with_one_german_line(
    project: Project, case: str, problem: str
) -> None:
    path = project.root / "var" / "dkim.key"
    path.parent.mkdir(exist_ok=True)
    if case == "directory":
        path.mkdir()
    elif case == "garbage":
        path.write_text("-----BEGIN PRIVATE KEY-----\nbXVlbGw=\n-----END PRIVATE KEY-----\n")
    elif case == "small":
        path.write_bytes(_rsa_pem(1024))
    elif case == "ed25519":
        path.write_bytes(
            dkim_keys.new_key("ed25519-sha256").private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    elif case == "encrypted":
        path.write_bytes(
            rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"geheim"),
            )
        )
    elif case == "unreadable":
        path.write_bytes(_rsa_pem(2048))
        path.chmod(0)
    project.write_config({"dkim": {"enabled": True}})
    expected = f"Fehler: DKIM-Schlüssel {path}: {problem}"
    if case == "unreadable" and os.geteuid() == 0:
        # root reads any file whatever its mode: the check runs as nobody instead, who may
        # not even enter the test's folder.
        code = (
            "import os, sys\n"
            "from notifier import dkim\n"
            "from notifier.config import load_settings\n"
            "settings = load_settings(sys.argv[1], environ={})\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "print(dkim.check(settings))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(project.config)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert done.stdout.strip() == expected.removeprefix("Fehler: ")
        return
    assert dkim.check(project.settings) == expected.removeprefix("Fehler: ")
    running = project.spawn("run")
    assert running.proc.wait(30) == 1
    running.close()
    assert running.output.strip().splitlines() == [expected]


def test_check_is_quiet_when_off_or_usable(project: Project, keys: Keys) -> None:
    assert dkim.check(project.settings) is None
    project.write_config({"dkim": {"enabled": False, "private_key_file": "nirgends.key"}})
    assert dkim.check(project.settings) is None
    project.write_config({"dkim": {"enabled": True, "private_key_file": "nirgends.key"}})
    assert "nirgends.key: Datei nicht gefunden" in str(dkim.check(project.settings))
    project.write_config(SIGNING)
    assert dkim.check(project.settings) is None


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_openssl_through_ctypes_signs_as_cryptography_does(kind: str) -> None:
    """The sender's signatures (OpenSSL through ctypes) and the fallback's (cryptography) are
    the same bytes: both schemes are deterministic."""
    assert openssl.available()
    algorithm = "rsa-sha256" if kind == "rsa" else "ed25519-sha256"
    pem = dkim_keys.new_key(algorithm).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fast, fallback = openssl.Key(pem), dkim._CryptographyKey(pem)
    assert (
        (fast.kind, fast.bits)
        == (fallback.kind, fallback.bits)
        == ((kind, 2048) if kind == "rsa" else (kind, 256))
    )
    for data in (b"", b"from:Anna <a@b.example>\r\n", bytes(range(256)) * 40):
        assert fast.sign(data) == fallback.sign(data)
    with pytest.raises(openssl.OpenSslError):
        openssl.Key(b"-----BEGIN PRIVATE KEY-----\nbXVlbGw=\n-----END PRIVATE KEY-----\n")


def test_the_signing_domain_is_the_senders_in_its_idna_form(project: Project) -> None:
    project.write_config({"mail": {"sender_address": "newsletter@Kreis-Prüm.example"}})
    assert dkim.domain_of(project.settings) == idna.encode("kreis-prüm.example").decode()
    project.write_config({"dkim": {"domain": "Prüm.example."}})
    assert dkim.domain_of(project.settings) == idna.encode("prüm.example").decode()
