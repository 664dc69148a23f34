"""The fast message path (skeleton rendering, pre-encoded headers) against the straightforward
one (full template rendering, EmailMessage): same headers, same parts, same contents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from typing import Any

import icalendar
import pytest

from notifier.db.models import Item, ItemKind, Rhythm
from notifier.rendering import Prepared, Recipient, Renderer

from .conftest import Project

NOW = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
RECIPIENTS = [
    Recipient("anna@kreis.example", "Anna Alle", "Eifelkreis Bitburg-Prüm", []),
    Recipient(
        "j@og.example",
        "Jürgen Größ",
        "Prüm",
        ["Mobilität"],
        preferences_url="https://newsletter.example/einstellungen/WzEsMF0.aXs.sig-_x",
        unsubscribe_url="https://newsletter.example/abmelden/WzEsMF0.aXs.sig-_x",
    ),
    Recipient(
        "q@og.example", 'Ann "Q" O\'Neil & Söhne <GmbH>\xa0x', "A & B", ["Eifelleben", "Mobilität"]
    ),
    Recipient("n@og.example", "", "Bitburg", []),
]


def item(kind: ItemKind, **fields: Any) -> Item:
    base: dict[str, Any] = {
        "id": 7,
        "kind": kind,
        "subject": "Neue Sprechstunden in Prüm",
        "topics": ["eifelleben"],
        "scope": [],
        "roles": [],
        "send_at": NOW,
        "body": "Die **Kümmerer** helfen & <b>gern</b>.",
        "change_count": 0,
        "all_day": False,
        "event_cancelled": False,
    }
    base.update(fields)
    return Item(**base)


def normalised(data: bytes) -> tuple[Any, ...]:
    msg = message_from_bytes(data, policy=policy.default)
    headers = {
        name: str(msg[name])
        for name in (
            "Subject",
            "From",
            "To",
            "Reply-To",
            "Message-ID",
            "List-Id",
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
            "Feedback-ID",
            "Precedence",
            "Auto-Submitted",
            "MIME-Version",
        )
    }
    parts = [
        (p.get_content_type(), p.get_content(), p.get_filename(), p.get_param("method"))
        for p in msg.walk()
        if not p.is_multipart()
    ]
    return msg.get_content_type(), headers, msg["Date"].datetime, parts


@pytest.fixture
def renderer(project: Project) -> Renderer:
    return Renderer(project.settings)


def prepared_messages(renderer: Renderer) -> list[Prepared]:
    event = item(
        ItemKind.event,
        subject="Smart-City-Beirat",
        external_key="beirat@test",
        starts_at=NOW + timedelta(days=3),
        ends_at=NOW + timedelta(days=3, hours=2),
        location="Kreisverwaltung",
        body="Tagesordnung folgt.",
    )
    update = item(
        ItemKind.update,
        body="Kurz & knapp.",
        link="https://example.org/a?b=1&c=2",
        published_at=NOW,
    )
    return [
        renderer.prepare(item(ItemKind.announcement)),
        renderer.prepare(update),
        renderer.prepare(event),
        renderer.prepare(event, "reminder:1"),
        renderer.prepare(event, "cancelled"),
        renderer.prepare_briefing(
            Rhythm.weekly, [item(ItemKind.announcement), update, event], None
        ),
        renderer.prepare_service("confirm"),
        renderer.prepare_service("links"),
    ]


def test_fast_messages_equal_the_straightforward_ones(renderer: Renderer) -> None:
    for prepared in prepared_messages(renderer):
        for recipient in RECIPIENTS:
            fast = renderer.build_bytes(prepared, recipient, message_id="<1.a@x.example>", date=NOW)
            plain = renderer.build(prepared, recipient, message_id="<1.a@x.example>", date=NOW)
            assert normalised(fast) == normalised(plain.as_bytes()), (prepared.subject, recipient)
            assert max(len(line) for line in fast.split(b"\r\n")) <= 998
            assert b"\n" not in fast.replace(b"\r\n", b"")  # CRLF only


LIST_HEADERS = ("List-Id", "List-Unsubscribe", "List-Unsubscribe-Post", "Precedence", "Feedback-ID")


@pytest.mark.parametrize("extras", [False, True])
def test_only_bulk_mail_carries_list_headers(project: Project, extras: bool) -> None:
    # The sign-up confirmation and the personal-link mail are transactional: no list headers,
    # even for a recipient with an unsubscribe link; newsletters keep them (and, when
    # configured, the feedback id and the mailto address), on both paths alike.
    if extras:
        project.write_config(
            {
                "mail": {
                    "feedback_id": "ankuendigung:kreis:ev",
                    "unsubscribe_mailto": "ab@kreis.example",
                }
            }
        )
    renderer = Renderer(project.settings)
    linked = RECIPIENTS[1]
    for prepared in prepared_messages(renderer):
        for data in (
            renderer.build_bytes(prepared, linked, message_id="<1.a@x.example>", date=NOW),
            renderer.build(prepared, linked, message_id="<1.a@x.example>", date=NOW).as_bytes(),
        ):
            msg = message_from_bytes(data, policy=policy.default)
            present = {name: str(msg[name]) for name in LIST_HEADERS if name in msg}
            if prepared.template.startswith("service_"):
                assert present == {}, prepared.template
                continue
            unsubscribe = f"<{linked.unsubscribe_url}>"
            if extras:
                unsubscribe += ", <mailto:ab@kreis.example?subject=unsubscribe>"
            expected = {
                "List-Id": "EIFELKREIS VERBINDET <newsletter.eifelkreis-verbindet.example>",
                "List-Unsubscribe": unsubscribe,
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                "Precedence": "bulk",
            }
            if extras:
                expected["Feedback-ID"] = "ankuendigung:kreis:ev"
            assert present == expected, prepared.template


def test_the_skeleton_is_rendered_once_per_message_kind(renderer: Renderer) -> None:
    prepared = renderer.prepare(item(ItemKind.announcement))
    first = renderer.build_bytes(prepared, RECIPIENTS[1], message_id="<1@x>", date=NOW)
    skeleton = prepared.skeleton["linked"]
    other = Recipient(
        "anna@kreis.example",
        "Anna Alle",
        "Eifelkreis Bitburg-Prüm",
        [],
        preferences_url="https://newsletter.example/einstellungen/OTHER.token",
        unsubscribe_url="https://newsletter.example/abmelden/OTHER.token",
    )
    second = renderer.build_bytes(prepared, other, message_id="<2@x>", date=NOW)
    assert prepared.skeleton["linked"] is skeleton
    assert b"Anna Alle" in second and b"Anna Alle" not in first
    assert "Guten Tag J=C3=BCrgen Gr=C3=B6=C3=9F," in first.decode()
    for data, recipient in ((first, RECIPIENTS[1]), (second, other)):
        msg = message_from_bytes(data, policy=policy.default)
        assert msg["List-Unsubscribe"] == f"<{recipient.unsubscribe_url}>"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        for part in ("plain", "html"):
            body = msg.get_body((part,))
            assert body is not None
            content = body.get_content()
            assert recipient.preferences_url in content
            assert recipient.unsubscribe_url in content


def test_event_attachment_survives_the_fast_path(renderer: Renderer) -> None:
    cancelled = prepared_messages(renderer)[4]
    data = renderer.build_bytes(cancelled, RECIPIENTS[0], message_id="<1@x>", date=NOW)
    msg = message_from_bytes(data, policy=policy.default)
    assert msg.get_content_type() == "multipart/mixed"
    attachment = next(msg.iter_attachments())
    assert attachment.get_filename() == "termin.ics"
    calendar = icalendar.Calendar.from_ical(attachment.get_content())
    assert str(calendar["METHOD"]) == "CANCEL"


@pytest.mark.parametrize("name", ["Eve\r\nBcc: victim@example.org", "Eve\nX: y"])
def test_fast_path_refuses_header_injection(renderer: Renderer, name: str) -> None:
    prepared = renderer.prepare(item(ItemKind.announcement))
    with pytest.raises(ValueError, match="CR or LF"):
        renderer.build_bytes(
            prepared, Recipient("x@example.org", name, "Bitburg", []), message_id="<1@x>", date=NOW
        )
    evil = renderer.prepare(item(ItemKind.announcement, subject="Hallo\r\nBcc: victim@example.org"))
    with pytest.raises(ValueError, match="CR or LF"):
        renderer.build_bytes(evil, RECIPIENTS[0], message_id="<1@x>", date=NOW)


def test_line_by_line_quoted_printable_equals_the_whole(renderer: Renderer) -> None:
    from notifier.mime import _qp

    for prepared in prepared_messages(renderer):
        cache: dict[str, bytes] = {}
        for number, recipient in enumerate(RECIPIENTS):
            html, text = renderer.render(prepared, recipient)
            for body in (html, text, text.rstrip("\n"), "x" * 200 + " \n\n" + "ä" * 90):
                assert _qp(body, cache, learn=number == 0) == _qp(body)
        # The first copy taught its lines; the others' personal lines were not kept.
        first_html, _ = renderer.render(prepared, RECIPIENTS[0])
        assert set(first_html.split("\n")) <= set(cache)
        assert not any("Jürgen" in line for line in cache)
