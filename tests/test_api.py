"""The JSON API over HTTP against a real ``notifier run``: bearer tokens, items pushed by a CMS,
announcements, subscribers, delivery state, validation errors that name the field."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from .conftest import Project, Web


def _db(project: Project) -> sqlite3.Connection:
    return sqlite3.connect(project.root / "var" / "test.db")


def _token(project: Project, name: str) -> str:
    token = project.cli("tokens", "add", name).output.splitlines()[0]
    assert token.startswith("ntf_")
    return token


@pytest.fixture
def client() -> Iterator[Callable[..., httpx.Client]]:
    """HTTP clients for the API (with a token or without), closed at the end."""
    made: list[httpx.Client] = []

    def make(site: Web, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        made.append(httpx.Client(base_url=site.url("/api/v1"), headers=headers, timeout=15))
        return made[-1]

    yield make
    for c in made:
        c.close()


def _fields(answer: httpx.Response) -> dict[str, str]:
    assert answer.status_code == 422, answer.text
    return {e["loc"][-1]: e["msg"] for e in answer.json()["detail"]}


def _wait(check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_tokens_items_and_the_openapi_description(
    web: Callable[..., Web], project: Project, client: Callable[..., httpx.Client]
) -> None:
    site = web()
    token = _token(project, "cms")
    revoked = _token(project, "alt")
    project.cli("tokens", "revoke", "alt")

    item = {
        "key": "news-42",
        "subject": "Neue Ladesäulen in Prüm",
        "body": "Zwei Ladesäulen am Hahnplatz.",
        "link": "https://eifelkreis-verbindet.example/news/42",
        "topics": ["mobilitaet"],
        "scope": ["Verbandsgemeinde Prüm"],
    }
    # Without a token, with a wrong one, with a revoked one: 401, nothing stored.
    plain = client(site)
    for headers in (
        {},
        {"Authorization": "Bearer ntf_falsch"},
        {"Authorization": f"Bearer {revoked}"},
        {"Authorization": f"Basic {token}"},
        {"Authorization": token},
    ):
        answer = plain.post("/items", json=item, headers=headers)
        assert answer.status_code == 401, headers
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert "Bearer-Token erforderlich" in answer.json()["detail"]
    for path in ("/announcements", "/subscribers", "/outbox"):
        assert plain.get(path).status_code == 401
    with _db(project) as db:
        assert db.execute("SELECT count(*) FROM items").fetchone() == (0,)

    api = client(site, token)
    created = api.post("/items", json=item)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["created"] is True and body["scope"] == ["072325006"]
    # Routed like a feed entry: the Prüm subscribers of Mobilität on "immediately".
    messages = project.smtp.wait_for(2)
    time.sleep(0.5)
    assert sorted(r for m in project.smtp.messages() for r in m.rcpt_tos) == [
        "maria.lenz@og-pruem.example",
        "thomas.becker@vg-pruem.example",
    ]
    text = messages[0].message.get_body(("plain",)).get_content()
    assert "Zwei Ladesäulen am Hahnplatz." in text and item["link"] in text
    # The same key again corrects the item and sends nothing new.
    again = api.post("/items", json={**item, "subject": "Neue Ladesäulen in Prüm (korrigiert)"})
    assert again.status_code == 200 and again.json()["created"] is False
    time.sleep(1.5)
    assert len(project.smtp.messages()) == 2
    with _db(project) as db:
        assert db.execute("SELECT subject, created_by, source FROM items").fetchall() == [
            ("Neue Ladesäulen in Prüm (korrigiert)", "api:cms", "api:cms")
        ]
        assert db.execute(
            "SELECT actor, action FROM audit_log WHERE actor = 'api:cms' ORDER BY id"
        ).fetchall() == [("api:cms", "item.pushed"), ("api:cms", "item.corrected")]

    # Validation: 422 naming the field, for the schema and for the checks behind it.
    assert set(_fields(api.post("/items", json={"key": "x"}))) == {"subject"}
    problems = _fields(
        api.post(
            "/items",
            json={
                **item,
                "key": "news-43",
                "subject": "Hallo\r\nBcc: alle@example.org",
                "topics": ["gibt-es-nicht"],
                "link": "javascript:alert(1)",
            },
        )
    )
    assert problems == {
        "subject": "Darf keine Zeilenumbrüche oder Steuerzeichen enthalten.",
        "topics": "Unbekannte Themen: gibt-es-nicht",
        "link": "Eine Adresse wie https://… ohne Leerzeichen angeben.",
    }
    assert _fields(api.post("/items", json={**item, "key": "n-44", "scope": ["Atlantis"]})) == {
        "scope": "Unbekannte Einheiten: Atlantis"
    }
    assert "extra" in _fields(api.post("/items", json={**item, "extra": 1}))

    openapi = plain.get("/openapi.json")
    assert openapi.status_code == 200
    spec = openapi.json()
    for path in (
        "/api/v1/items",
        "/api/v1/announcements",
        "/api/v1/announcements/{item_id}/deliveries",
        "/api/v1/subscribers/{subscriber_id}",
        "/api/v1/outbox",
    ):
        assert path in spec["paths"], path
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert not any(p.startswith(("/buero", "/anmelden")) for p in spec["paths"])
    # No Swagger UI from a CDN that the CSP and a closed network would block.
    assert plain.get("/docs").status_code == 404


def test_announcements_and_delivery_state(
    web: Callable[..., Web], project: Project, client: Callable[..., httpx.Client]
) -> None:
    project.smtp.refuse["heinz.kaiser@og-kyllburg.example"] = "550 5.1.1 Unbekannt"
    site = web()
    api = client(site, _token(project, "cms"))
    later = (datetime.now(ZoneInfo("Europe/Berlin")) + timedelta(days=1)).replace(
        tzinfo=None, second=0, microsecond=0
    )
    planned = api.post(
        "/announcements",
        json={
            "subject": "Sprechstunde der Kümmerer",
            "body": "Am **Montag** in Prüm.",
            "roles": ["mayor"],
            "send_at": later.isoformat(),
        },
    )
    assert planned.status_code == 201, planned.text
    first = planned.json()
    assert first["status"] == "scheduled" and first["created_by"] == "api:cms"
    assert first["audience"]["total"] == 5
    assert first["audience"]["by_role"] == {"mayor": 5}
    sent_at = datetime.fromisoformat(first["send_at"])
    assert sent_at.astimezone(ZoneInfo("Europe/Berlin")).replace(tzinfo=None) == later

    now = api.post(
        "/announcements",
        json={"subject": "Heute", "body": "Jetzt.", "roles": ["mayor"], "important": True},
    )
    assert now.status_code == 201
    item_id = now.json()["id"]
    project.smtp.wait_for(4)

    def finished() -> dict[str, Any] | None:
        state = api.get(f"/announcements/{item_id}").json()
        final = state["messages"].get("failed") == 1 and state["messages"].get("sent") == 4
        return state if final else None

    state = _wait(finished)
    assert state["status"] == "routed" and state["messages"] == {"sent": 4, "failed": 1}
    rows = api.get(f"/announcements/{item_id}/deliveries").json()
    assert rows[0]["email"] == "heinz.kaiser@og-kyllburg.example"
    assert (rows[0]["state"], rows[0]["code"]) == ("failed", 550)
    assert "Unbekannt" in rows[0]["reply"]
    assert {r["state"] for r in rows[1:]} == {"sent"}
    failed = api.get(f"/announcements/{item_id}/deliveries", params={"state": "failed"}).json()
    assert [r["email"] for r in failed] == ["heinz.kaiser@og-kyllburg.example"]
    outbox = api.get("/outbox").json()
    assert outbox["states"]["sent"] == 4 and outbox["days"][0]["sent"] == 4
    assert [a["id"] for a in api.get("/announcements").json()] == [first["id"], item_id]

    cancelled = api.post(f"/announcements/{first['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert api.post(f"/announcements/{first['id']}/cancel").status_code == 409
    assert api.post(f"/announcements/{item_id}/cancel").status_code == 409
    assert api.get("/announcements/999").status_code == 404

    problems = _fields(
        api.post(
            "/announcements",
            json={
                "subject": "A\nB",
                "body": "Text",
                "topics": ["x"],
                "send_at": "2020-01-01T09:00:00",
            },
        )
    )
    assert problems == {
        "subject": "Darf keine Zeilenumbrüche oder Steuerzeichen enthalten.",
        "topics": "Unbekannte Themen: x",
        "send_at": "Der Zeitpunkt liegt in der Vergangenheit.",
    }
    wrong = api.post("/announcements", json={"subject": "x", "roles": ["king"]})
    assert wrong.status_code == 422
    assert sorted(e["loc"] for e in wrong.json()["detail"]) == [
        ["body", "body"],
        ["body", "roles", 0],
    ]
    with _db(project) as db:
        assert db.execute("SELECT count(*) FROM items").fetchone() == (2,)


def test_subscribers_read_and_change(
    web: Callable[..., Web], project: Project, client: Callable[..., httpx.Client]
) -> None:
    site = web()
    api = client(site, _token(project, "crm"))
    found = api.get("/subscribers", params={"organisation": "Verbandsgemeinde Prüm"}).json()
    assert found["total"] == 3
    assert {s["email"] for s in found["subscribers"]} == {
        "thomas.becker@vg-pruem.example",
        "josef.thiel@og-schoenecken.example",
        "maria.lenz@og-pruem.example",
    }
    mayors = api.get("/subscribers", params={"role": "mayor", "topic": "versorgung"}).json()
    assert mayors["total"] == 5
    assert api.get("/subscribers", params={"role": "king"}).status_code == 422
    assert "organisation" in _fields(api.get("/subscribers", params={"organisation": "Atlantis"}))

    maria = next(s for s in found["subscribers"] if s["email"].startswith("maria"))
    assert api.get(f"/subscribers/{maria['id']}").json() == maria
    changed = api.patch(
        f"/subscribers/{maria['id']}",
        json={"name": "Maria Lenz-Schmitt", "topics": ["versorgung"], "rhythm": "daily"},
    )
    assert changed.status_code == 200, changed.text
    after = changed.json()
    assert (after["name"], after["topics"], after["rhythm"], after["role"]) == (
        "Maria Lenz-Schmitt",
        ["versorgung"],
        "daily",
        "deputy_mayor",
    )
    paused = api.patch(f"/subscribers/{maria['id']}", json={"status": "paused"})
    assert paused.json()["status"] == "paused"
    bad = api.patch(
        f"/subscribers/{maria['id']}",
        json={"name": "Eve\r\nBcc: x@example.org", "email": "kein-at"},
    )
    assert set(_fields(bad)) == {"name", "email"}
    assert _fields(api.patch(f"/subscribers/{maria['id']}", json={"status": "held"}))
    taken = api.patch(
        f"/subscribers/{maria['id']}", json={"email": "thomas.becker@vg-pruem.example"}
    )
    assert _fields(taken) == {"email": "Diese Adresse hat schon ein anderer Eintrag."}
    assert api.patch("/subscribers/9999", json={"name": "x"}).status_code == 404

    new = api.post(
        "/subscribers",
        json={
            "email": "Neu@OG-Speicher.example",
            "name": "Neu",
            "organisation": "Speicher",
            "role": "mayor",
        },
    )
    assert new.status_code == 201, new.text
    assert new.json()["email"] == "neu@og-speicher.example" and new.json()["status"] == "active"
    assert set(_fields(api.post("/subscribers", json={**new.json(), "id": 1}))) == {
        "id",
        "organisation_name",
        "status",
        "created_at",
        "updated_at",
    }
    dup = {
        "email": "neu@og-speicher.example",
        "name": "N",
        "organisation": "07232",
        "role": "staff",
    }
    assert _fields(api.post("/subscribers", json=dup)) == {
        "email": "Diese Adresse ist schon eingetragen."
    }
    deactivated = api.patch(f"/subscribers/{new.json()['id']}", json={"status": "unsubscribed"})
    assert deactivated.json()["status"] == "unsubscribed"
    assert (
        api.patch(f"/subscribers/{new.json()['id']}", json={"status": "paused"}).status_code == 409
    )
    with _db(project) as db:
        actions = db.execute(
            "SELECT action FROM audit_log WHERE actor = 'api:crm' ORDER BY id"
        ).fetchall()
    assert [a for (a,) in actions] == [
        "subscriber.edited",
        "subscriber.paused",
        "subscriber.added",
        "subscriber.deactivated",
    ]
