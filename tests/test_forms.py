"""Forgiving forms and the organisation picker (issue 17, items 3 and 4): typed unit names
resolve against the real Eifelkreis tree or ask back; the tree is read once per TTL and its
picker rendered once; every missing field is reported at once, in German; "alle / nur diese"
topics; "wieder anmelden" restores the old choices within 30 days, and not after."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select
from starlette.formparsers import FormParser, MultiPartException

from notifier import selfservice
from notifier.db import Database
from notifier.db.models import Organisation, OrgKind, Rhythm, Role, Subscriber, SubscriberStatus
from notifier.links import LinkError, Links, LinkTarget
from notifier.orgtree import OrgTree, TreeCache, choose_many, choose_one, problem_text
from notifier.retention import plan, purge
from notifier.web.messages import german_detail

from .conftest import ORGANISATIONS, Project, Web
from .test_storage_contract import store

__all__ = ["store"]

HOLSTHUM, VG_SUEDEIFEL = "07232053", "072325005"
PRUEM, VG_PRUEM, BITBURG = "07232296", "072325006", "07232018"
DAY = timedelta(days=1)


async def _tree(project: Project, cache: TreeCache | None = None) -> OrgTree:
    db = Database(project.settings.database_url)
    try:
        async with db.reading() as session:
            return await (cache or TreeCache()).get(session)
    finally:
        await db.engine.dispose()


@pytest.fixture
def seeded(project: Project) -> Project:
    project.seed(None)
    return project


# -- the tree ---------------------------------------------------------------------------------


async def test_typed_names_resolve_and_ambiguous_ones_ask(seeded: Project) -> None:
    tree = await _tree(seeded)
    assert len(tree.units) == 239
    for typed in (
        "Holsthum",
        " holsthum ",
        "HOLSTHUM",
        "Holsthum (Verbandsgemeinde Südeifel)",
        HOLSTHUM,
        "OG Holsthum",
    ):
        found = tree.resolve(typed).unit
        assert found is not None and found.key == HOLSTHUM, typed
    prum = tree.resolve("Prüm")
    assert prum.unit is None and prum.ambiguous
    assert [u.key for u in prum.candidates] == [VG_PRUEM, PRUEM]
    assert prum.question == "Prüm: die Verbandsgemeinde oder die Ortsgemeinde?"
    assert tree.resolve("Pruem").ambiguous  # umlauts spelt out
    assert tree.resolve("Pru\u0308m").ambiguous  # a decomposed ü (as macOS types it)
    assert tree.resolve("VG Prüm").unit == tree.by_key[VG_PRUEM]
    assert tree.resolve("Verbandsgemeinde Prüm").unit == tree.by_key[VG_PRUEM]
    assert tree.resolve("Stadt Prüm").unit == tree.by_key[PRUEM]
    bitburg = tree.resolve("bitburg").unit
    assert bitburg is not None and bitburg.kind is OrgKind.stadt
    near = tree.resolve("Holst")
    assert near.unit is None and not near.ambiguous
    assert [u.key for u in near.candidates] == [HOLSTHUM]
    nothing = tree.resolve("Atlantis")
    assert nothing.unit is None and nothing.candidates == ()
    assert problem_text([nothing]) == (
        "Keine Einheit heißt „Atlantis“. Bitte prüfen Sie die Schreibweise oder wählen Sie "
        "aus der Liste."
    )
    assert "nicht eindeutig (Prüm: die Verbandsgemeinde oder die Ortsgemeinde?)" in (
        problem_text([prum])
    )


async def test_a_typed_name_wins_and_a_candidate_settles_an_ambiguous_one(
    seeded: Project,
) -> None:
    tree = await _tree(seeded)
    # One unit: a typed name wins over a unit ticked in the tree; no name: the ticked unit.
    assert [u.key for u in choose_one(tree, "Holsthum", [BITBURG]).units] == [HOLSTHUM]
    assert [u.key for u in choose_one(tree, "", [BITBURG]).units] == [BITBURG]
    assert [u.key for u in choose_one(tree, "Prüm", [PRUEM]).units] == [PRUEM]
    assert choose_one(tree, "Prüm", [BITBURG]).problems[0].ambiguous
    assert choose_one(tree, "", ["nope"]).units == []
    # Several units: ticked ones and typed ones, separated by commas, semicolons, lines.
    many = choose_many(tree, "Holsthum; VG Arzfeld,\nPrüm, holsthum", [BITBURG, "nope"])
    assert [u.key for u in many.units] == [BITBURG, HOLSTHUM, "072325001"]
    assert [p.text.strip() for p in many.problems] == ["Prüm"]
    assert many.unknown == ["nope"]
    settled = choose_many(tree, "Prüm", [VG_PRUEM])
    assert [u.key for u in settled.units] == [VG_PRUEM] and not settled.problems


async def test_the_tree_is_read_once_per_ttl_and_its_picker_rendered_once(
    seeded: Project,
) -> None:
    now = [0.0]
    cache = TreeCache(ttl=60, clock=lambda: now[0])
    first = await _tree(seeded, cache)
    # `notifier organisations load` renames a unit while the service runs.
    renamed = ORGANISATIONS.read_text("utf-8").replace(",Holsthum,", ",Holsthum an der Prüm,")
    seeded.cli("organisations", "load", seeded.write("orgs.csv", renamed))
    now[0] = 59.0
    assert await _tree(seeded, cache) is first
    now[0] = 60.0
    second = await _tree(seeded, cache)
    assert second is not first
    assert second.by_key[HOLSTHUM].name == "Holsthum an der Prüm"
    cache.invalidate()
    third = await _tree(seeded, cache)
    assert third is not second
    # Within the TTL no session is even opened: a database nobody can reach is not touched.
    unreachable = Database("postgresql+asyncpg://nobody@127.0.0.1:1/keine")
    try:
        assert await cache.read(unreachable) is third
        now[0] = 120.0
        with pytest.raises(OSError):
            await cache.read(unreachable)
    finally:
        await unreachable.engine.dispose()

    env = Environment(
        loader=FileSystemLoader(seeded.settings.template_dirs("web")),
        autoescape=select_autoescape(["html"]),
    )
    fragment = second.fragment(env, "organisation_key", False)
    assert second.fragment(env, "organisation_key", False) is fragment  # rendered once
    assert fragment.count('type="radio"') == 239 and " checked" not in fragment
    picker = second.picker(env, field="organisation", choice="organisation_key", chosen=[HOLSTHUM])
    html = str(picker.tree)
    assert html.count(" checked") == 1
    assert f'id="organisation_key-{HOLSTHUM}" checked' in html
    assert f'id="organisation_key-zweig-{VG_SUEDEIFEL}" open' in html
    assert html.count(" open") == 1
    assert " checked" not in second.fragment(env, "organisation_key", False)
    several = second.picker(
        env, field="scope_suche", choice="scope", chosen=[BITBURG, HOLSTHUM], multiple=True
    )
    assert str(several.tree).count('type="checkbox"') == 239
    assert str(several.tree).count(" checked") == 2


# -- Starlette's messages ----------------------------------------------------------------------


async def test_starlettes_form_messages_are_german() -> None:
    async def body() -> Any:
        yield b"name=" + b"x" * (1024 * 1024 + 1)

    parser = FormParser({"content-type": "application/x-www-form-urlencoded"}, body())
    with pytest.raises(MultiPartException) as caught:
        await parser.parse()
    english = caught.value.message
    assert english == "Field exceeded maximum size of 1024KB."
    assert (
        german_detail(english) == "Ein Feld des Formulars ist zu groß (höchstens 1024 KB je Feld)."
    )
    assert german_detail("Too many fields. Maximum number of fields is 1000.") == (
        "Das Formular hat zu viele Felder (höchstens 1000)."
    )
    assert german_detail("Der Link ist ungültig.") == "Der Link ist ungültig."


# -- the sign-up over HTTP ---------------------------------------------------------------------


def _db(project: Project) -> sqlite3.Connection:
    return sqlite3.connect(project.root / "var" / "test.db")


def _org_of(project: Project, email: str) -> str:
    with _db(project) as db:
        row = db.execute(
            "SELECT o.key FROM subscribers s JOIN organisations o ON o.id = s.organisation_id "
            "WHERE s.email = ?",
            (email,),
        ).fetchone()
    assert row is not None, email
    return str(row[0])


SIGNUP = {
    "email": "",
    "name": "Hanna Holst",
    "organisation": "Holsthum",
    "role": "mayor",
    "all_topics": "0",
    "topics": ["mobilitaet"],
    "rhythm": "immediate",
    "consent": "1",
}


def _sign_up(site: Web, **changes: Any) -> Any:
    data = {**SIGNUP, **changes, "csrf_token": site.csrf("/anmelden")}
    return site.client.post("/anmelden", data=data)


def test_the_sign_up_names_every_problem_and_resolves_typed_names(
    web: Callable[..., Web], project: Project
) -> None:
    site = web()
    form = site.client.get("/anmelden")
    assert 'src="/static/forms.js"' in form.text
    assert form.text.count('name="organisation_key"') == 239
    assert site.client.get("/static/forms.js").status_code == 200

    # Empty: all seven fields at once, Organisation and Funktion included.
    empty = site.client.post("/anmelden", data={"csrf_token": site.csrf("/anmelden")})
    assert empty.status_code == 422
    summary = empty.text.split('id="fehler"')[1].split("</div>")[0]
    listed = re.findall(r'<li><a href="#(\w+)">([^:]+):', summary)
    assert [f for f, _ in listed] == [
        "email",
        "name",
        "organisation",
        "role",
        "topics",
        "rhythm",
        "consent",
    ]
    assert "Bitte geben Sie Ihre Organisation an" in summary
    assert not re.search(r"\b(must|field|required|missing)\b", summary, re.IGNORECASE)

    # "Prüm" fits two units: the answer asks, the candidates are offered, the name cleared.
    asked = _sign_up(site, email="p.ruem@vg-pruem.example", organisation="Prüm")
    assert asked.status_code == 422
    assert "<legend>Prüm: die Verbandsgemeinde oder die Ortsgemeinde?</legend>" in asked.text
    assert f'id="organisation-wahl-{VG_PRUEM}" value="{VG_PRUEM}"' in asked.text
    assert 'name="organisation" value=""' in asked.text
    chosen = _sign_up(
        site, email="p.ruem@vg-pruem.example", organisation="", organisation_key=VG_PRUEM
    )
    assert chosen.status_code == 200, chosen.text
    assert _org_of(project, "p.ruem@vg-pruem.example") == VG_PRUEM

    # A plain name that fits one unit signs up at once.
    done = _sign_up(site, email="hanna@holsthum.example")
    assert done.status_code == 200 and "Bitte prüfen Sie Ihr Postfach" in done.text
    assert _org_of(project, "hanna@holsthum.example") == HOLSTHUM

    # "Alle" and single topics at once is asked back, not silently decided.
    both = _sign_up(site, email="b@holsthum.example", all_topics="1")
    assert both.status_code == 422
    assert "„Alle Themen“ gewählt und zugleich einzelne Themen" in both.text
    # Too many fields: Starlette's refusal, in German.
    flood = site.client.post(
        "/anmelden",
        content="&".join(f"f{i}=x" for i in range(1001)).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert flood.status_code == 400
    assert "Das Formular hat zu viele Felder (höchstens 1000)." in flood.text
    assert "Too many" not in flood.text


# -- "wieder anmelden" ---------------------------------------------------------------------------


def test_wieder_anmelden_restores_the_old_choices_in_one_click(
    web: Callable[..., Web], project: Project
) -> None:
    site = web()
    email = "hanna@holsthum.example"
    assert _sign_up(site, email=email, rhythm="weekly").status_code == 200
    [mail] = project.smtp.wait_for(1)
    confirm = site.link(mail.message.get_body(("plain",)).get_content(), "bestaetigen")
    done = site.client.post(confirm, data={"csrf_token": site.csrf(confirm)})
    preferences = re.search(r'href="[^"]*(/einstellungen/[^"]+)"', done.text)
    assert preferences is not None
    token = preferences.group(1).rsplit("/", 1)[1]

    gone = site.client.post(f"/abmelden/{token}", data={})
    assert "Sie sind abgemeldet" in gone.text
    back = re.search(r'<form method="post" action="(/wieder-anmelden/[^"]+)">', gone.text)
    assert back is not None and "Wieder anmelden</button>" in gone.text
    # The goodbye state of the preferences page offers the same.
    goodbye = site.client.get(f"/einstellungen/{token}")
    assert back.group(1) in goodbye.text
    with _db(project) as db:
        assert db.execute(
            "SELECT status FROM subscribers WHERE email = ?", (email,)
        ).fetchone() == ("unsubscribed",)
    # The link alone (a GET) changes nothing; it shows the old choices and the button.
    shown = site.client.get(back.group(1))
    assert shown.status_code == 200 and "Holsthum (Verbandsgemeinde Südeifel)" in shown.text
    assert shown.headers["Cache-Control"] == "no-store"
    restored = site.client.post(back.group(1), data={"csrf_token": site.csrf(back.group(1))})
    assert restored.status_code == 200 and "Sie sind wieder angemeldet" in restored.text
    with _db(project) as db:
        status, rhythm, all_topics, topics = db.execute(
            "SELECT status, rhythm, all_topics, group_concat(topic_key) FROM subscribers s "
            "JOIN subscriptions t ON t.subscriber_id = s.id WHERE email = ?",
            (email,),
        ).fetchone()
        consents = db.execute(
            "SELECT count(*), count(confirmed_at) FROM consents c JOIN subscribers s "
            "ON s.id = c.subscriber_id WHERE email = ?",
            (email,),
        ).fetchone()
        actions = [r[0] for r in db.execute("SELECT action FROM audit_log ORDER BY id")]
    assert (status, rhythm, all_topics, topics) == ("active", "weekly", 0, "mobilitaet")
    assert consents == (2, 2)
    assert actions.count("resubscribe") == 1
    # Once more: answered again, nothing changes twice.
    again = site.client.post(back.group(1), data={"csrf_token": site.csrf("/anmelden")})
    assert again.status_code == 200 and "Sie sind wieder angemeldet" in again.text
    # A forged token is refused.
    forged = site.client.get(back.group(1)[:-3] + "abc")
    assert forged.status_code == 404


async def test_wieder_anmelden_works_while_retention_keeps_the_choices(store: Project) -> None:
    settings = store.settings
    assert Links(settings, b"k" * 32).resubscribe_seconds == 30 * 86400
    # A shorter retention shortens the link: it must not outlive the choices it restores.
    short = settings.model_copy(
        update={"retention": settings.retention.model_copy(update={"unsubscribed_days": 10})}
    )
    assert Links(short, b"k" * 32).resubscribe_seconds == 10 * 86400
    t0 = datetime.now(UTC)
    db = Database(settings.database_url)
    try:
        async with db.transaction() as session:
            org = await session.scalar(select(Organisation).where(Organisation.key == HOLSTHUM))
            assert org is not None
            choices = selfservice.Choices(
                "Hanna Holst", org, Role.mayor, Rhythm.daily, ("mobilitaet",)
            )
            await selfservice.sign_up(
                session,
                "hanna@holsthum.example",
                choices,
                ip="192.0.2.1",
                settings=settings,
                now=t0,
            )
            sub = await session.scalar(
                select(Subscriber).where(Subscriber.email == "hanna@holsthum.example")
            )
            assert sub is not None
            target = LinkTarget(sub.id, sub.token_version)
            await selfservice.confirm(session, target, ip="192.0.2.1", settings=settings, now=t0)
            await selfservice.unsubscribe(session, sub, how="page", ip="192.0.2.1", now=t0)
        # Day 29: the purge leaves the person whole, the link restores them.
        day29 = t0 + 29 * DAY
        await purge(db, settings, day29)
        async with db.reading() as session:
            kept = await selfservice.resubscribable(session, target, settings=settings, now=day29)
            assert [s.topic_key for s in kept.subscriptions] == ["mobilitaet"]
        # Day 31: too late, whether or not the purge has run yet.
        day31 = t0 + 31 * DAY
        async with db.reading() as session:
            with pytest.raises(LinkError, match="nicht mehr gespeichert"):
                await selfservice.resubscribable(session, target, settings=settings, now=day31)
        assert (await plan(db, settings, day31)).unsubscribed == [target.subscriber_id]
        await purge(db, settings, day31)
        async with db.transaction() as session:
            with pytest.raises(LinkError, match="nicht mehr gespeichert"):
                await selfservice.resubscribe(
                    session, target, ip="192.0.2.1", settings=settings, now=day29
                )
    finally:
        await db.engine.dispose()


async def test_wieder_anmelden_within_the_window_makes_the_person_active(store: Project) -> None:
    settings = store.settings
    t0 = datetime.now(UTC)
    db = Database(settings.database_url)
    try:
        async with db.transaction() as session:
            org = await session.scalar(select(Organisation).where(Organisation.key == BITBURG))
            assert org is not None
            choices = selfservice.Choices("Bernd Burg", org, Role.staff, Rhythm.weekly, ())
            await selfservice.sign_up(
                session, "b@bitburg.example", choices, ip="192.0.2.1", settings=settings, now=t0
            )
            sub = await session.scalar(
                select(Subscriber).where(Subscriber.email == "b@bitburg.example")
            )
            assert sub is not None
            target = LinkTarget(sub.id, sub.token_version)
            await selfservice.confirm(session, target, ip="192.0.2.1", settings=settings, now=t0)
            await selfservice.unsubscribe(session, sub, how="page", ip="192.0.2.1", now=t0)
        async with db.transaction() as session:
            back = await selfservice.resubscribe(
                session, target, ip="192.0.2.2", settings=settings, now=t0 + 20 * DAY
            )
            assert back.status is SubscriberStatus.active and back.all_topics
            assert back.rhythm is Rhythm.weekly
    finally:
        await db.engine.dispose()
