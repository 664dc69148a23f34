"""Numbers beyond SQLite's 64-bit INTEGER in paths and query strings, against a real
``notifier run``: the API names the field (422) or answers 404 for an id no row can have, the
office shows a German page; never a 500."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx

from .conftest import Project, Web

HUGE = "99999999999999999999"  # 10**20, beyond 2**63 - 1
USER, PASSWORD = "buero", "ein-langes-passwort"


def test_huge_ids_offsets_and_pages(web: Callable[..., Web], project: Project) -> None:
    site = web()
    token = project.cli("tokens", "add", "cms").output.splitlines()[0]
    api = httpx.Client(
        base_url=site.url("/api/v1"), headers={"Authorization": f"Bearer {token}"}, timeout=15
    )
    later = datetime.now(ZoneInfo("Europe/Berlin")) + timedelta(days=1)
    made = api.post(
        "/announcements",
        json={"subject": "Sprechstunde", "body": "Text", "send_at": later.isoformat()},
    )
    assert made.status_code == 201, made.text
    item = made.json()["id"]

    # Offsets: 422 naming the field; the largest allowed offset is an empty page.
    for path in ("/subscribers", f"/announcements/{item}/deliveries"):
        for offset in (HUGE, str(2**63), "-" + HUGE):
            answer = api.get(path, params={"offset": offset})
            assert answer.status_code == 422, answer.text
            assert [e["loc"] for e in answer.json()["detail"]] == [["query", "offset"]]
        edge = api.get(path, params={"offset": str(2**63 - 1)})
        assert edge.status_code == 200, edge.text
    assert api.get("/subscribers", params={"offset": str(2**63 - 1)}).json()["subscribers"] == []

    # Ids that cannot exist: 404, as for a missing row; a non-number is still a 422.
    for number in (HUGE, str(2**63), "-" + HUGE, "9" * 5000):
        for method, path in (
            ("GET", f"/subscribers/{number}"),
            ("PATCH", f"/subscribers/{number}"),
            ("GET", f"/announcements/{number}"),
            ("POST", f"/announcements/{number}/cancel"),
            ("GET", f"/announcements/{number}/deliveries"),
        ):
            body = {"name": "X"} if method == "PATCH" else None
            answer = api.request(method, path, json=body)
            assert answer.status_code == 404, (method, path, answer.text)
            assert "gibt es nicht" in answer.json()["detail"]
    assert api.get(f"/announcements/{2**63 - 1}").status_code == 404
    assert api.get("/subscribers/zwei").status_code == 422
    api.close()

    # The office: German 404 pages for ids, page numbers past the end show an empty list.
    project.cli("users", "add", USER, "--email", "buero@kreis.example", "--password", PASSWORD)
    token = site.csrf("/buero/anmelden")
    login = site.client.post(
        "/buero/anmelden", data={"name": USER, "password": PASSWORD, "csrf_token": token}
    )
    assert login.status_code == 303, login.text
    for path in (
        f"/buero/abonnenten/{HUGE}",
        f"/buero/mitteilungen/{HUGE}",
        f"/buero/mitteilungen/{HUGE}/bearbeiten",
        f"/buero/mitteilungen/{HUGE}/email",
    ):
        answer = site.client.get(path)
        assert answer.status_code == 404, (path, answer.text)
        assert '<html lang="de"' in answer.text and "gibt es nicht" in answer.text
    csrf = site.csrf("/buero/abonnenten")
    for path in (f"/buero/abonnenten/{HUGE}/status", f"/buero/mitteilungen/{HUGE}/absagen"):
        answer = site.client.post(path, data={"csrf_token": csrf, "action": "pause"})
        assert answer.status_code == 404, (path, answer.text)
    for path in ("/buero/abonnenten", f"/buero/mitteilungen/{item}"):
        for page in (HUGE, "-" + HUGE, str(2**63)):
            answer = site.client.get(path, params={"seite": page})
            assert answer.status_code == 200, (path, page, answer.text)
    listed = site.client.get("/buero/abonnenten", params={"seite": HUGE})
    assert "josef.thiel@og-schoenecken.example" not in listed.text
    assert "josef.thiel@og-schoenecken.example" in site.client.get("/buero/abonnenten").text
