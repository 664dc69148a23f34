"""The ``notifier`` command. Messages for people are German; ``--help`` texts too."""

from __future__ import annotations

import asyncio
import errno
import functools
import getpass
import logging
import os
import secrets
import sys
import traceback
from collections.abc import Callable, Coroutine
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import select

from . import announcements as ann
from .addresses import check_email, display_email
from .catcher import MailStore
from .clock import utcnow
from .config import DEFAULT_CONFIG, Settings, load_settings
from .db import Database, queries
from .db import backup as backups
from .db.failures import database_error
from .db.models import Item, ItemStatus, OutboxState, SourceState
from .errors import ConfigError, FileError, NotFoundError, NotifierError, megabytes, os_reason
from .labels import FINAL_STATES, ITEM_LABELS, ROLE_LABELS, STATE_LABELS, smtp_state
from .links import Links
from .logs import configure_logging
from .organisations import LEVEL_LABELS, load_organisations
from .rendering import Renderer, german_datetime
from .service import ROLES, Service, prepare_database
from .subscribers import export_subscribers, import_subscribers

T = TypeVar("T")


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj["settings"]()
    return settings


def run_async(func: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command body in an event loop of its own."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return asyncio.run(func(*args, **kwargs))

    return wrapper


def _failure(exc: Exception, obj: dict[str, Any] | None) -> NotifierError | None:
    """What a command's exception means for people; None for a bug (its traceback is shown)."""
    loaded: list[Settings] = (obj or {}).get("loaded", [])
    if loaded:
        found = database_error(exc, loaded[0].database_url)
        if found is not None:
            return found
    if isinstance(exc, NotifierError):
        return exc
    if isinstance(exc, OSError):
        return FileError.from_os(exc) if exc.filename else NotifierError(os_reason(exc))
    return None


class _Notifier(click.Group):
    """The ``notifier`` group. Whatever fails in one of its commands ends in one German line on
    stderr, "Fehler: …", and exit code 1; ``--verbose`` shows the traceback before it."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
                raise  # click ends quietly when a pipe reader (e.g. head) has gone
            failure = _failure(exc, ctx.obj)
            if failure is None:
                raise
            if (ctx.obj or {}).get("verbose"):
                traceback.print_exception(exc)
            click.echo(f"Fehler: {failure}", err=True)
            sys.exit(1)


async def _open(settings: Settings) -> Database:
    db = Database(settings.database_url, echo=settings.database.echo)
    await prepare_database(db, settings)
    return db


@click.group(cls=_Notifier)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: os.environ.get("NOTIFIER_CONFIG", DEFAULT_CONFIG),
    show_default="config.toml oder $NOTIFIER_CONFIG",
    help="Konfigurationsdatei.",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Ausführliche Protokollausgabe; bei Fehlern auch der Traceback.",
)
@click.pass_context
def main(ctx: click.Context, config_path: Path, verbose: bool) -> None:
    """notifier: Benachrichtigungsdienst von EIFELKREIS VERBINDET."""
    logging.basicConfig(
        level=logging.DEBUG
        if verbose
        else logging.INFO
        if ctx.invoked_subcommand == "run"
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Their INFO lines (every job run, every SMTP command of the catcher) drown the service's own.
    for noisy in ("apscheduler", "mail.log", "alembic"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    loaded: list[Settings] = []

    def settings() -> Settings:
        if not loaded:
            try:
                loaded.append(load_settings(config_path))
            except ConfigError as exc:
                click.echo(f"Konfigurationsfehler: {exc}", err=True)
                sys.exit(2)
        return loaded[0]

    ctx.obj = {"settings": settings, "loaded": loaded, "verbose": verbose}


@main.command()
@click.option(
    "--only",
    type=click.Choice(ROLES),
    help="Nur diesen Teil des Dienstes betreiben (weitere Prozesse desselben Dienstes).",
)
@click.option("--smtp", "smtp", hidden=True, help="HOST:PORT statt [smtp] (für Sendeprozesse).")
@click.option("--parent", type=int, hidden=True, help="Beenden, wenn dieser Prozess endet.")
@click.pass_context
@run_async
async def run(ctx: click.Context, only: str | None, smtp: str | None, parent: int | None) -> None:
    """Den Dienst starten (Planer, Versand, ggf. Mail-Catcher) bis Strg+C."""
    settings = _settings(ctx)
    configure_logging(
        settings.logging.format, "DEBUG" if ctx.obj["verbose"] else settings.logging.level
    )
    override = None
    if smtp:
        host, _, port = smtp.rpartition(":")
        override = (host, int(port))
    service = Service(
        settings, roles=(only,) if only else ROLES, smtp_override=override, parent_pid=parent
    )
    task = asyncio.create_task(service.run())
    ready = asyncio.create_task(service.ready.wait())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if service.ready.is_set() and parent is None:
        click.echo(f"notifier läuft. Konfiguration: {settings.base_dir}")
        click.echo(f"  Datenbank:   {settings.database_url.split('@')[-1]}")
        if service.catcher is not None:
            click.echo(
                f"  Mail-Catcher: SMTP auf {service.catcher.host}:{service.catcher.port}, "
                f"Nachrichten in {service.catcher.store.directory}"
            )
            click.echo("               ansehen mit: notifier mails / notifier mails show N")
        else:
            click.echo(
                f"  SMTP:        {settings.smtp.host}:{settings.smtp.port} ({settings.smtp.tls})"
            )
        if service.web_port is not None:
            click.echo(
                f"  Web:         http://{settings.web.host}:{service.web_port}/anmelden "
                f"(Projektbüro: /buero, API: /api/v1/openapi.json)"
            )
        click.echo("Beenden mit Strg+C.")
    ready.cancel()
    await task


@main.command()
@click.pass_context
@run_async
async def migrate(ctx: click.Context) -> None:
    """Datenbankschema anlegen bzw. aktualisieren."""
    async with await _open(_settings(ctx)):
        click.echo("Datenbank ist auf dem neuesten Stand.")


@main.group()
def db() -> None:
    """Sicherung und Wiederherstellung der SQLite-Datenbank."""


def _counts(checked: backups.Checked) -> str:
    return ", ".join(
        f"{checked.counts.get(table, 0)} {label}" for table, label in backups.COUNTED.items()
    )


def _revision(checked: backups.Checked) -> str:
    if checked.at_head:
        return f"Schema-Stand {checked.revision}"
    return f"Schema-Stand {checked.revision}, wird beim nächsten Start migriert"


@db.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Eine vorhandene Datei FILE überschreiben.")
@click.pass_context
def db_backup(ctx: click.Context, file: Path, force: bool) -> None:
    """Die Datenbank nach FILE sichern und die Kopie prüfen (auch während der Dienst sendet)."""
    checked = backups.backup(_settings(ctx).database_url, file, force=force)
    click.echo(
        f"Sicherung {file} geschrieben und geprüft: {megabytes(checked.size)}, "
        f"{_counts(checked)}, {_revision(checked)}."
    )


@db.command("restore")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def db_restore(ctx: click.Context, file: Path) -> None:
    """Die Sicherung FILE als Datenbank einsetzen (nur bei beendetem Dienst)."""
    done = backups.restore(_settings(ctx).database_url, file, now=utcnow())
    click.echo(
        f"Sicherung {file} geprüft und als {done.database} eingesetzt: "
        f"{_counts(done.backup)}, {_revision(done.backup)}."
    )
    if done.kept is not None:
        click.echo(f"Die bisherige Datenbank liegt unter {done.kept}.")


@main.group()
def users() -> None:
    """Anmeldungen des Projektbüros für die Web-Oberfläche."""


@users.command("add")
@click.argument("name")
@click.option("--email", default="", help="Adresse für Test-E-Mails aus der Oberfläche.")
@click.password_option(
    "--password",
    prompt="Passwort",
    confirmation_prompt="Passwort wiederholen",
    help="Wird abgefragt (ohne Anzeige), wenn nicht angegeben.",
)
@click.pass_context
@run_async
async def users_add(ctx: click.Context, name: str, email: str, password: str) -> None:
    """Eine Anmeldung NAME anlegen; das Passwort wird mit argon2 gehasht gespeichert."""
    from .accounts import add_user

    if email:
        email = check_email("--email", email)
    async with await _open(_settings(ctx)) as db, db.transaction() as session:
        await add_user(session, name, password, email=email, actor=_actor(), now=utcnow())
    click.echo(f"Anmeldung {name!r} angelegt.")


@users.command("list")
@click.pass_context
@run_async
async def users_list(ctx: click.Context) -> None:
    """Die Anmeldungen mit letzter Anmeldung."""
    from .db.models import User

    async with await _open(_settings(ctx)) as db, db.transaction() as session:
        rows = (await session.scalars(select(User).order_by(User.name))).all()
    tz = _settings(ctx).scheduler.tz
    for user in rows:
        last = german_datetime(user.last_login_at, tz) if user.last_login_at else "nie"
        state = "aktiv" if user.active else "deaktiviert"
        address = display_email(user.email) if user.email else "–"
        click.echo(f"{user.name:<24} {address:<36} {state:<12} zuletzt: {last}")


@main.group()
def tokens() -> None:
    """Zugangsschlüssel (Bearer-Token) für die JSON-API."""


@tokens.command("add")
@click.argument("name")
@click.pass_context
@run_async
async def tokens_add(ctx: click.Context, name: str) -> None:
    """Einen Token NAME anlegen; er wird nur dieses eine Mal angezeigt."""
    from .accounts import add_token

    async with await _open(_settings(ctx)) as db, db.transaction() as session:
        token = await add_token(session, name, actor=_actor(), now=utcnow())
    click.echo(token)
    click.echo(
        f"Token {name!r} angelegt. Er wird nicht gespeichert und nur jetzt angezeigt; "
        "verwenden Sie ihn als 'Authorization: Bearer …'.",
        err=True,
    )


@tokens.command("revoke")
@click.argument("name")
@click.pass_context
@run_async
async def tokens_revoke(ctx: click.Context, name: str) -> None:
    """Den Token NAME sperren."""
    from .accounts import revoke_token

    async with await _open(_settings(ctx)) as db, db.transaction() as session:
        await revoke_token(session, name, actor=_actor(), now=utcnow())
    click.echo(f"Token {name!r} gesperrt.")


@main.group()
def organisations() -> None:
    """Organisationsstruktur (Kreis, Verbandsgemeinden, Ortsgemeinden)."""


@organisations.command("load")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--if-empty", is_flag=True, help="Nur laden, wenn noch keine Struktur gespeichert ist."
)
@click.pass_context
@run_async
async def organisations_load(ctx: click.Context, file: Path, if_empty: bool) -> None:
    """Struktur aus FILE (key,name,kind,parent) abgleichen."""
    async with await _open(_settings(ctx)) as db, db.transaction() as session:
        if if_empty and (await queries.organisation_count(session)) > 0:
            click.echo("Organisationsstruktur ist schon geladen; nichts geändert.")
            return
        report = await load_organisations(session, file, actor=_actor())
    if report.unchanged:
        click.echo(f"{file}: keine Änderungen.")
        return
    click.echo(
        f"{file}: {len(report.added)} neu, {len(report.changed)} geändert, "
        f"{len(report.removed)} entfernt."
    )
    for email, old, new in report.moved_subscribers:
        click.echo(f"  {display_email(email)}: von {old} nach {new} verschoben (Einheit entfernt)")


@main.group()
def subscribers() -> None:
    """Abonnentinnen und Abonnenten."""


@subscribers.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Nur prüfen und berichten, nichts speichern.")
@click.option(
    "--if-empty", is_flag=True, help="Nur importieren, wenn noch niemand gespeichert ist."
)
@click.pass_context
@run_async
async def subscribers_import(ctx: click.Context, file: Path, dry_run: bool, if_empty: bool) -> None:
    """Abonnenten aus FILE (email,name,role,organisation,topics,rhythm) importieren."""
    settings = _settings(ctx)
    async with await _open(settings) as db, db.transaction() as session:
        if if_empty and (await queries.subscriber_count(session)) > 0:
            click.echo("Es sind schon Abonnenten gespeichert; nichts importiert.")
            return
        report = await import_subscribers(
            session, file, set(settings.topic_keys), actor=_actor(), dry_run=dry_run
        )
        if dry_run:
            await session.rollback()
    prefix = "Probelauf, nichts gespeichert: " if dry_run else ""
    click.echo(
        f"{prefix}{file}: {report.added} neu, {report.updated} geändert, "
        f"{report.unchanged} unverändert."
    )
    if report.kept_inactive:
        click.echo(
            f"  {len(report.kept_inactive)} abgemeldete Adressen bleiben abgemeldet: "
            + ", ".join(display_email(e) for e in report.kept_inactive)
        )


@subscribers.command("export")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Zieldatei (sonst Standardausgabe).",
)
@click.option(
    "--excel",
    is_flag=True,
    help="Für Excel: mit Semikolon getrennt und mit BOM, so öffnet Excel die Datei direkt.",
)
@click.pass_context
@run_async
async def subscribers_export(ctx: click.Context, output: Path | None, excel: bool) -> None:
    """Aktive Abonnenten im Importformat ausgeben."""
    async with await _open(_settings(ctx)) as db, db.transaction() as session:
        text = await export_subscribers(session, excel=excel)
    if output is None:
        click.echo(text, nl=False)
    else:
        try:
            await asyncio.to_thread(output.write_text, text, encoding="utf-8")
        except OSError as exc:  # a failed write names no file
            raise FileError.from_os(exc, output) from exc
        click.echo(f"{text.count(chr(10)) - 1} Abonnenten nach {output} geschrieben.")


def _print_audience(audience: ann.Audience) -> None:
    click.echo(f"Empfänger: {audience.total}")
    if audience.total:
        levels = ", ".join(
            f"{LEVEL_LABELS[k]} {n}"
            for k, n in sorted(
                audience.by_level.items(), key=lambda kv: list(LEVEL_LABELS).index(kv[0])
            )
        )
        roles = ", ".join(
            f"{ROLE_LABELS[r]} {n}"
            for r, n in sorted(
                audience.by_role.items(), key=lambda kv: list(ROLE_LABELS).index(kv[0])
            )
        )
        click.echo(f"  nach Ebene: {levels}")
        click.echo(f"  nach Rolle: {roles}")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Nur die Empfänger zählen, nichts planen.")
@click.option(
    "--follow",
    is_flag=True,
    help="Danach den Versand als Fortschrittsbalken verfolgen (der Dienst muss laufen).",
)
@click.pass_context
@run_async
async def announce(ctx: click.Context, file: Path, dry_run: bool, follow: bool) -> None:
    """Mitteilung aus FILE (Markdown mit TOML-Kopf zwischen +++) planen."""
    settings = _settings(ctx)
    tz = settings.scheduler.tz
    now = utcnow()
    renderer = Renderer(settings)
    # The size check renders the message with personal links; they lead nowhere, and a key of
    # the moment signs them as long as the service's key would, without this command creating
    # or reading the service's key file.
    links = Links(settings, key=secrets.token_bytes(32))
    item = None
    async with await _open(settings) as db, db.transaction() as session:
        draft = await ann.parse_announcement(
            session, file, topic_keys=set(settings.topic_keys), tz=tz, now=now
        )
        unsaved = ann.draft_item(draft, actor=_actor(), now=now)
        audience = await ann.audience(session, unsaved)
        if dry_run:
            await ann.check_size(session, unsaved, renderer=renderer, links=links, now=now)
        else:
            item = await ann.schedule(
                session, draft, actor=_actor(), now=now, renderer=renderer, links=links
            )
    # Only now, with the transaction committed: the audience reads as success.
    click.echo(f"Mitteilung: {draft.subject}")
    click.echo(
        f"Versand:    {german_datetime(draft.send_at, tz)}"
        + (" (wichtig)" if draft.important else "")
    )
    _print_audience(audience)
    if item is None:
        click.echo("Probelauf: nichts geplant.")
        return
    click.echo(f"Geplant als Mitteilung Nr. {item.id}.")
    if follow:
        click.echo("Versand (wartet auf den Sendezeitpunkt und den laufenden Dienst):")
        async with await _open(settings) as db:
            await _follow(db, item.id)


@main.group(invoke_without_command=True)
@click.pass_context
def announcements(ctx: click.Context) -> None:
    """Mitteilungen auflisten und absagen."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(announcements_list)


@announcements.command("list")
@click.pass_context
@run_async
async def announcements_list(ctx: click.Context) -> None:
    """Alle Mitteilungen mit Versandstand."""
    settings = _settings(ctx)
    async with await _open(settings) as db, db.transaction() as session:
        rows = await ann.list_announcements(session)
    if not rows:
        click.echo("Keine Mitteilungen.")
    for item, counts in rows:
        state = ", ".join(f"{STATE_LABELS[s]} {n}" for s, n in counts.items() if n)
        click.echo(
            f"Nr. {item.id:<4} {ITEM_LABELS[item.status]:<9} "
            f"{german_datetime(item.send_at, settings.scheduler.tz)}  {item.subject}"
            + (f"  [{state}]" if state else "")
        )


@announcements.command("cancel")
@click.argument("item_id", type=int, metavar="ID")
@click.pass_context
@run_async
async def announcements_cancel(ctx: click.Context, item_id: int) -> None:
    """Mitteilung ID absagen: noch nicht versandte Nachrichten gehen nicht mehr hinaus."""
    async with await _open(_settings(ctx)) as db, db.transaction() as session:
        stopped = await ann.cancel(session, item_id, actor=_actor(), now=utcnow())
    click.echo(f"Mitteilung Nr. {item_id} abgesagt; {stopped} Nachrichten werden nicht versandt.")


@main.group(invoke_without_command=True)
@click.pass_context
def sources(ctx: click.Context) -> None:
    """Quellen (News-Feeds, Kalender): Zustand ansehen, jetzt abrufen."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(sources_list)


@sources.command("list")
@click.pass_context
@run_async
async def sources_list(ctx: click.Context) -> None:
    """Jede Quelle mit letztem Abruf, letztem Fehler und Zahl der Einträge."""
    settings = _settings(ctx)
    tz = settings.scheduler.tz
    if not settings.sources.all:
        click.echo("Keine Quellen konfiguriert ([[sources.feed]] / [[sources.calendar]]).")
        return
    from .sources.poller import item_counts, source_kind

    async with await _open(settings) as db, db.transaction() as session:
        states = {s.name: s for s in await session.scalars(select(SourceState))}
        counts = await item_counts(session)
    for source in settings.sources.all:
        state = states.get(source.name)
        last = german_datetime(state.last_poll_at, tz) if state and state.last_poll_at else "nie"
        click.echo(
            f"{source.name} ({source_kind(source)}, alle {source.poll_minutes:g} min): "
            f"{counts.get(source.name, 0)} Einträge, letzter Abruf {last}"
        )
        click.echo(f"  {source.url}")
        if state and state.last_error:
            click.echo(f"  letzter Fehler: {state.last_error}")


@sources.command("poll")
@click.argument("name", required=False)
@click.pass_context
@run_async
async def sources_poll(ctx: click.Context, name: str | None) -> None:
    """Quelle NAME (ohne NAME: alle) jetzt abrufen; Neues versendet der laufende Dienst."""
    from .sources.poller import SourcePoller, http_client

    settings = _settings(ctx)
    chosen = [s for s in settings.sources.all if name is None or s.name == name]
    if not chosen:
        raise NotFoundError(f"keine Quelle {name!r} in der Konfiguration")
    failed = False
    async with await _open(settings) as db, http_client() as client:
        poller = SourcePoller(db, settings, client, utcnow)
        for source in chosen:
            result = await poller.poll(source)
            if result.error:
                failed = True
                click.echo(f"{source.name}: Fehler: {result.error}")
            elif result.not_modified:
                click.echo(f"{source.name}: unverändert")
            else:
                click.echo(
                    f"{source.name}: {result.new} neu, {result.changed} geändert, "
                    f"{result.cancelled} abgesagt"
                )
    if failed:
        sys.exit(1)


@main.command()
@click.option("--failures", default=10, show_default=True, help="So viele letzte Fehler zeigen.")
@click.pass_context
@run_async
async def status(ctx: click.Context, failures: int) -> None:
    """Warteschlange nach Zustand, aktuelle Senderate, letzte Fehler mit Antwort des Servers."""
    settings = _settings(ctx)
    tz = settings.scheduler.tz
    now = utcnow()
    async with await _open(settings) as db, db.transaction() as session:
        counts = await queries.outbox_counts(session)
        rate = await queries.send_rate(session, now, timedelta(minutes=1))
        recent = await queries.recent_failures(session, failures)
        senders = await queries.sender_statuses(session, now)
    for state in OutboxState:
        click.echo(f"{STATE_LABELS[state]:<15} {counts.get(state, 0)}")
    click.echo(f"Senderate (letzte Minute): {rate:.1f} Nachrichten/s ({round(rate * 60)} versandt)")
    for sender in senders:
        line = smtp_state(
            sender.reachable, german_datetime(sender.since, tz), sender.reason, sender.waiting
        )
        if sender.max_size:
            line += f", Nachrichten bis {megabytes(sender.max_size)}"
        click.echo(f"{line} (Versandprozess {sender.owner.split(':')[1]})")
    if recent:
        click.echo("Letzte Fehler:")
    for f in recent:
        when = german_datetime(f.at, tz)
        retry = (
            f", nächster Versuch {german_datetime(f.next_attempt_at, tz)}"
            if f.state is OutboxState.deferred
            else ""
        )
        click.echo(
            f"  {when}  {display_email(f.email)}  {STATE_LABELS[f.state]} nach {f.attempts} "
            f"Versuch(en){retry}: {f.code or '-'} {f.reply or ''}".rstrip()
        )


async def _follow(db: Database, item_id: int) -> None:
    """A progress bar of an item's messages until none is waiting any more."""
    from tqdm import tqdm

    bar: tqdm[None] | None = None
    try:
        while True:
            async with db.transaction() as session:
                item = await session.get(Item, item_id)
                counts = await queries.outbox_counts(session, item_id)
            if item is None:
                raise NotFoundError(f"keine Mitteilung mit der Nummer {item_id}")
            if item.status is ItemStatus.scheduled:
                await asyncio.sleep(0.5)
                continue
            total = sum(counts.values())
            done = sum(counts.get(s, 0) for s in FINAL_STATES)
            if bar is None:
                bar = tqdm(total=total, unit="Nachr.", desc=f"Mitteilung {item_id}")
            bar.total = total
            bar.n = done
            bar.set_postfix_str(
                ", ".join(f"{STATE_LABELS[s]} {n}" for s, n in counts.items() if n), refresh=False
            )
            bar.refresh()
            if item.status is ItemStatus.cancelled or done >= total:
                return
            await asyncio.sleep(0.5)
    finally:
        if bar is not None:
            bar.close()


@announcements.command("follow")
@click.argument("item_id", type=int, metavar="ID")
@click.pass_context
@run_async
async def announcements_follow(ctx: click.Context, item_id: int) -> None:
    """Den Versand der Mitteilung ID als Fortschrittsbalken verfolgen (Strg+C beendet nur das
    Verfolgen, nicht den Versand)."""
    async with await _open(_settings(ctx)) as db:
        await _follow(db, item_id)


def _mail_store(ctx: click.Context) -> MailStore:
    settings = _settings(ctx)
    return MailStore(settings.path(settings.catcher.directory))


@main.group(invoke_without_command=True)
@click.pass_context
def mails(ctx: click.Context) -> None:
    """Vom eingebauten Mail-Catcher empfangene Nachrichten."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(mails_list)


@mails.command("list")
@click.pass_context
def mails_list(ctx: click.Context) -> None:
    """Alle empfangenen Nachrichten, eine pro Zeile."""
    settings = _settings(ctx)
    caught = _mail_store(ctx).list()
    if not caught:
        click.echo("Noch keine Nachrichten empfangen.")
    for mail in caught:
        click.echo(
            f"{mail.number:>5}  {german_datetime(mail.received_at, settings.scheduler.tz)}  "
            f"{', '.join(mail.rcpt_tos)}  {mail.subject}"
        )


def _text_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    return "" if part is None else str(part.get_content())


@mails.command("show")
@click.argument("number", type=int)
@click.option("--raw", is_flag=True, help="Die Nachricht unverändert, wie empfangen.")
@click.option("--html", is_flag=True, help="Den HTML-Teil statt des Textteils.")
@click.pass_context
def mails_show(ctx: click.Context, number: int, raw: bool, html: bool) -> None:
    """Nachricht NUMBER anzeigen."""
    mail = _mail_store(ctx).get(number)
    if raw:
        click.echo(mail.path.read_bytes().decode("utf-8", errors="replace"), nl=False)
        return
    message = mail.message()
    for header in ("Date", "From", "To", "Reply-To", "Subject", "Message-ID", "List-Id"):
        if header in message:
            click.echo(f"{header}: {message[header]}")
    click.echo()
    if html:
        part = message.get_body(preferencelist=("html",))
        click.echo("" if part is None else part.get_content())
    else:
        click.echo(_text_part(message))


__all__ = ["main"]
