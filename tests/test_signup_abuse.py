"""The public sign-up form against a real ``notifier run`` used as a mail cannon: limits on the
confirmation mails per client address, domain, mailbox (through plus-addresses) and in all,
kept in the database; one CSRF token per post; a honeypot; and a confirmation mail that repeats
nothing typed into the form."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Project, Web

SIGNUP = {
    "name": "Erika Musterfrau",
    "organisation": "Bettingen (Verbandsgemeinde Bitburger Land)",
    "role": "mayor",
    "topics": ["mobilitaet"],
    "rhythm": "weekly",
    "consent": "1",
}
DONE = "Bitte prüfen Sie Ihr Postfach"


def _db(project: Project) -> sqlite3.Connection:
    return sqlite3.connect(project.root / "var" / "test.db")


def _client(site: Web, address: str = "127.0.0.1") -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=site.base, transport=transport, follow_redirects=False)


def _sign_up(site: Web, client: httpx.Client, email: str, **changes: Any) -> httpx.Response:
    data = {**SIGNUP, "email": email, **changes, "csrf_token": site.csrf("/anmelden", client)}
    return client.post("/anmelden", data=data)


def _mails_after(project: Project, seconds: float = 1.5) -> list[str]:
    """The recipients of every mail the catcher got, once nothing more arrives."""
    count = -1
    while count != len(project.smtp.messages()):
        count = len(project.smtp.messages())
        time.sleep(seconds)
    return project.smtp.recipients()


def _pages_alike(answers: list[httpx.Response]) -> None:
    """Every attempt was answered alike: nothing tells a refused one from one that went out."""
    assert {a.status_code for a in answers} == {200}
    bodies = {re.sub(r'value="[^"]+"', "", a.text) for a in answers}
    assert len(bodies) == 1 and DONE in bodies.pop()


def test_one_client_gets_its_limit_of_mails_and_the_same_page_after(
    web: Callable[..., Web], project: Project
) -> None:
    site = web({"web": {"signup_per_client_per_hour": 4}, "metrics": {"enabled": True}})
    with _client(site) as client:
        answers = [_sign_up(site, client, f"person{i}@og-{i}.example") for i in range(9)]
        answers.append(_sign_up(site, client, "bot@og-x.example", homepage="http://x.example"))
    _pages_alike(answers)
    assert len(_mails_after(project)) == 4
    # The refused posts are counted by reason.
    scraped = {
        (sample.name, sample.labels.get("reason", "")): sample.value
        for family in text_string_to_metric_families(site.client.get("/metrics").text)
        for sample in family.samples
        if sample.name.startswith("notifier_signups")
    }
    assert scraped[("notifier_signups_total", "")] == 4
    assert scraped[("notifier_signups_refused_total", "limit")] == 5
    assert scraped[("notifier_signups_refused_total", "honeypot")] == 1
    # Another client address is not held up by the first one.
    with _client(site, "127.0.0.2") as other:
        _pages_alike([_sign_up(site, other, "anna@og-anders.example")])
    assert len(_mails_after(project)) == 5
    with _db(project) as db:
        names = [n for (n,) in db.execute("SELECT name FROM rate_buckets")]
    # The limits live in the database (for every web process); their names hold no address.
    assert any(n.startswith("signup:c:") for n in names) and "signup:all" in names
    assert not any("127.0.0" in n or "example" in n for n in names)


def test_plus_addresses_are_one_mailbox_and_a_domain_has_its_limit(
    web: Callable[..., Web], project: Project
) -> None:
    site = web({"web": {"signup_per_mailbox_per_day": 2, "signup_per_domain_per_hour": 3}})
    answers = []
    for i in range(5):  # each from its own address: only the mailbox limit applies
        with _client(site, f"127.0.1.{i + 1}") as client:
            answers.append(_sign_up(site, client, f"Opfer+{i}@og-ziel.example"))
    assert len(_mails_after(project)) == 2
    for i in range(5):  # other mailboxes of one domain
        with _client(site, f"127.0.2.{i + 1}") as client:
            answers.append(_sign_up(site, client, f"leute{i}@og-domain.example"))
    _pages_alike(answers)
    assert len(_mails_after(project)) == 2 + 3


def test_the_whole_service_has_a_limit(web: Callable[..., Web], project: Project) -> None:
    site = web({"web": {"signup_per_hour": 3}})
    answers = []
    for i in range(6):
        with _client(site, f"127.0.3.{i + 1}") as client:
            answers.append(_sign_up(site, client, f"p{i}@og-global-{i}.example"))
    _pages_alike(answers)
    assert len(_mails_after(project)) == 3


def test_a_csrf_token_serves_one_post(web: Callable[..., Web], project: Project) -> None:
    site = web()
    with _client(site) as client:
        token = site.csrf("/anmelden", client)
        data = {**SIGNUP, "csrf_token": token}
        first = client.post("/anmelden", data={**data, "email": "eins@og-a.example"})
        again = client.post("/anmelden", data={**data, "email": "zwei@og-a.example"})
    assert first.status_code == 200 and DONE in first.text
    assert again.status_code == 403 and "Das Formular ist abgelaufen" in again.text
    assert _mails_after(project) == ["eins@og-a.example"]


def test_a_form_with_the_hidden_field_filled_in_sends_and_stores_nothing(
    web: Callable[..., Web], project: Project
) -> None:
    site = web()
    with _client(site) as client:
        form = client.get("/anmelden").text
        assert 'name="homepage"' in form and 'tabindex="-1"' in form
        answer = _sign_up(site, client, "bot@og-b.example", homepage="https://spam.example")
    _pages_alike([answer])
    assert _mails_after(project) == []
    with _db(project) as db:
        assert db.execute(
            "SELECT count(*) FROM subscribers WHERE email LIKE 'bot@%'"
        ).fetchone() == (0,)


def test_the_confirmation_repeats_nothing_typed_into_the_form(
    web: Callable[..., Web], project: Project
) -> None:
    site = web()
    lure = "Ihr Konto wird gesperrt, bestätigen Sie unter https://betrug.example/x"
    with _client(site) as client:
        _sign_up(site, client, "erika@og-c.example", name=lure)
    [mail] = project.smtp.wait_for(1)
    message = mail.message
    assert message["To"] == "erika@og-c.example"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    for body in (text, html, mail.data.decode("ascii", "replace")):
        assert "gesperrt" not in body and "betrug.example" not in body
    assert "Guten Tag," in text
    # The name is shown on the confirmation page, where the person confirms it.
    confirm = site.link(text, "bestaetigen")
    page = site.client.get(confirm)
    assert page.status_code == 200 and "Ihr Konto wird gesperrt" in page.text
