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
from . import erasure, reach, retention
from .addresses import check_email, display_email
from .catcher import MailStore
from .clock import utcnow
from .config import DEFAULT_CONFIG, PACKAGED_ORGANISATIONS, Settings, load_settings
from .db import Database, queries
from .db import backup as backups
from .db.failures import database_error, where
from .db.models import Item, ItemStatus, OutboxState, SourceState
from .errors import ConfigError, FileError, NotFoundError, NotifierError, megabytes, os_reason
from .labels import BOUNCE_LABELS, FINAL_STATES, ITEM_LABELS, ROLE_LABELS, STATE_LABELS, smtp_state
from .links import Links
from .logs import configure_logging
from .organisations import LEVEL_LABELS, load_organisations
from .reach import text as reach_text
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
    # Their INFO lines (every job run, every SMTP command of the catcher) drown the service's own;
    # flufl.bounce logs each detector it tries, aioimaplib every line it receives.
    for noisy in ("apscheduler", "mail.log", "alembic", "flufl.bounce", "aioimaplib"):
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

    ctx.obj = {"settings": settings, "loaded": loaded, "verbose": verbose, "config": config_path}


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
    """Sicherung und Wiederherstellung der SQLite-Datenbank, Umzug nach PostgreSQL."""


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


def _new_password(given: str | None, *, password_stdin: bool) -> str:
    """The password of ``users add``: as given, from stdin with ``--password-stdin``, or asked
    for at a terminal; never read silently from a pipe."""
    if given is not None and password_stdin:
        raise click.UsageError("--password und --password-stdin schließen einander aus.")
    if given is not None:
        return given
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise click.UsageError(
            "Die Standardeingabe ist kein Terminal: Passwort mit --password-stdin aus der "
            "Standardeingabe lesen lassen (oder am Terminal abfragen lassen)."
        )
    return str(
        click.prompt(
            "Passwort",
            hide_input=True,
            confirmation_prompt="Passwort wiederholen",
        )
    )


@db.command("copy")
@click.option(
    "--to",
    "target",
    required=True,
    metavar="URL",
    help="Die leere PostgreSQL-Datenbank: postgresql+asyncpg://BENUTZER@HOST:5432/DATENBANK.",
)
@click.pass_context
@run_async
async def db_copy(ctx: click.Context, target: str) -> None:
    """Die SQLite-Datenbank vollständig nach PostgreSQL kopieren (nur bei beendetem Dienst).

    Danach [database] url auf die PostgreSQL-Datenbank stellen."""
    from .db import copy as copying

    source = _settings(ctx).database_url
    click.echo(f"Kopiere {where(source)} nach {where(target)} …")
    try:
        copied = await copying.copy_database(source, target)
    except copying.CountMismatchError as exc:
        for line in copying.summary(exc.copied):
            click.echo(line)
        raise
    for line in copying.summary(copied):
        click.echo(line)
    rows = sum(t.target for t in copied.tables)
    click.echo(
        f"{len(copied.tables)} Tabellen, {rows} Zeilen kopiert; die Zahlen stimmen überein. "
        "Stellen Sie jetzt [database] url auf die PostgreSQL-Datenbank um."
    )


@main.command()
@click.pass_context
@run_async
async def doctor(ctx: click.Context) -> None:
    """Konfiguration und Umgebung prüfen: Datenbank, SMTP, Vorlagen, Adresse, Pfade, Quellen.

    Gibt eine Checkliste mit ✓/✗ aus und zu jedem ✗, was zu tun ist; Rückgabewert 1 bei einem ✗."""
    from . import doctor as checks

    config: Path = ctx.obj["config"]
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        click.echo(f"✗ Konfiguration {exc}")  # the error names the file
        click.echo(
            "    → Korrigieren Sie die genannte Stelle; config.toml beschreibt jeden Schlüssel."
        )
        sys.exit(1)
    click.echo(f"✓ Konfiguration {settings.config_file} geladen")
    findings = await checks.run_checks(settings)
    for line in checks.lines(findings):
        click.echo(line)
    problems = sum(1 for f in findings if not f.ok)
    if problems:
        click.echo(f"{problems} {'Problem' if problems == 1 else 'Probleme'} gefunden.")
        sys.exit(1)
    click.echo("Alles in Ordnung.")


@main.group()
def users() -> None:
    """Anmeldungen des Projektbüros für die Web-Oberfläche."""


@users.command("add")
@click.argument("name")
@click.option("--email", default="", help="Adresse für Test-E-Mails aus der Oberfläche.")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Das Passwort aus der ersten Zeile der Standardeingabe lesen (für Skripte).",
)
@click.option(
    "--password",
    default=None,
    help="Das Passwort als Argument (sichtbar in der Prozessliste; besser abfragen lassen).",
)
@click.pass_context
@run_async
async def users_add(
    ctx: click.Context, name: str, email: str, password_stdin: bool, password: str | None
) -> None:
    """Eine Anmeldung NAME anlegen; das Passwort wird mit argon2 gehasht gespeichert.

    Ohne --password/--password-stdin wird es am Terminal abgefragt (zweimal, ohne Anzeige).
    Kommt die Standardeingabe nicht von einem Terminal, ist --password-stdin nötig: ein
    versehentlich umgeleitetes Passwort wird nicht stillschweigend übernommen.
    """
    from .accounts import add_user

    password = _new_password(password, password_stdin=password_stdin)
    if email:
        email = check_email("--email", email)
    async with await _open(_settings(ctx)) as db, db.transaction() as session:
        await add_user(session, name, password, email=email, actor=_actor(), now=utcnow())
    click.echo(f"Anmeldung {name!r} angelegt.")


@users.command("list")
@click.pass_context
@run_async
async def users_list(ctx: click.Context) -> None:
    """Die Anmeldungen mit Herkunft (lokal, LDAP, OpenID) und letzter Anmeldung."""
    from .db.models import User

    async with await _open(_settings(ctx)) as db, db.transaction() as session:
        rows = (await session.scalars(select(User).order_by(User.name))).all()
    tz = _settings(ctx).scheduler.tz
    for user in rows:
        last = german_datetime(user.last_login_at, tz) if user.last_login_at else "nie"
        state = "aktiv" if user.active else "deaktiviert"
        address = display_email(user.email) if user.email else "–"
        origin = USER_SOURCES.get(user.source, user.source)
        click.echo(f"{user.name:<24} {address:<36} {origin:<8} {state:<12} zuletzt: {last}")


# Where a user logs in (users.source), as `users list` shows it.
USER_SOURCES = {"local": "lokal", "ldap": "LDAP", "oidc": "OpenID"}


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
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option(
    "--if-empty", is_flag=True, help="Nur laden, wenn noch keine Struktur gespeichert ist."
)
@click.pass_context
@run_async
async def organisations_load(ctx: click.Context, file: Path | None, if_empty: bool) -> None:
    """Struktur aus FILE (key,name,kind,parent) abgleichen; ohne FILE die mitgelieferte
    Struktur des Eifelkreises Bitburg-Prüm."""
    file = file or PACKAGED_ORGANISATIONS
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
    if report.skipped_erased:
        count = len(report.skipped_erased)
        rows = "1 Zeile" if count == 1 else f"{count} Zeilen"
        click.echo(f"  {rows} übersprungen, weil die Person gelöscht wurde:")
        for row in report.skipped_erased:
            click.echo(f"  {row.message}")


@subscribers.command("erase")
@click.argument("address")
@click.option("--yes", "-y", is_flag=True, help="Ohne Rückfrage löschen.")
@click.pass_context
@run_async
async def subscribers_erase(ctx: click.Context, address: str, yes: bool) -> None:
    """Alle Daten der Person mit ADDRESS löschen (DSGVO Art. 17)."""
    settings = _settings(ctx)
    async with await _open(settings) as db:
        async with db.reading() as session:
            sub = await erasure.subscriber_by_address(session, address)
            shown = f"{display_email(sub.email)} (Nr. {sub.id}, {sub.name})"
        if not yes and not click.confirm(
            f"Alle Daten von {shown} unwiderruflich löschen?", default=False
        ):
            click.echo("Abgebrochen; nichts gelöscht.")
            return
        async with db.transaction() as session:
            sub = await erasure.subscriber_by_address(session, address)
            done = await erasure.erase_subscriber(session, sub, actor=_actor(), now=utcnow())
    cancelled = done.rows.get(erasure.CANCELLED_STEP, 0)
    click.echo(
        f"Abonnent Nr. {done.subscriber_id} gelöscht; {cancelled} noch nicht versandte "
        "Nachrichten storniert. Ein späterer Import überspringt die Adresse."
    )


@main.group()
def privacy() -> None:
    """Datenschutz: Löschfristen ([retention])."""


@privacy.command("purge")
@click.option("--dry-run", is_flag=True, help="Nur zeigen, was entfernt würde.")
@click.pass_context
@run_async
async def privacy_purge(ctx: click.Context, dry_run: bool) -> None:
    """Entfernen, was älter ist als die Fristen in [retention] (sonst täglich durch den Planer)."""
    settings = _settings(ctx)
    now = utcnow()
    async with await _open(settings) as db:
        if dry_run:
            due = await retention.plan(db, settings, now)
        else:
            due = await retention.purge(db, settings, now)
    for line in retention.report_lines(due, settings, dry_run=dry_run):
        click.echo(line)


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


@main.command("reach")
@click.option(
    "--csv",
    "as_csv",
    is_flag=True,
    help="Nur die Ortsgemeinden ohne angemeldete/n Bürgermeister/in, als CSV (für Anschreiben).",
)
@click.option(
    "--excel",
    is_flag=True,
    help="Mit --csv: mit Semikolon getrennt und mit BOM, so öffnet Excel die Datei direkt.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Mit --csv: Zieldatei (sonst Standardausgabe).",
)
@click.pass_context
@run_async
async def reach_command(ctx: click.Context, as_csv: bool, excel: bool, output: Path | None) -> None:
    """Reichweite: Bürgermeister/innen, Abonnenten und Themen je Einheit des Baums."""
    settings = _settings(ctx)
    if (excel or output) and not as_csv:
        raise click.UsageError("--excel und --output gelten nur zusammen mit --csv.")
    async with await _open(settings) as db, db.reading() as session:
        report = await reach.read(session, settings.topic_keys)
    if not as_csv:
        day = utcnow().astimezone(settings.scheduler.tz).strftime("%d.%m.%Y")
        titles = {t.key: t.title for t in settings.topics}
        for line in reach_text.table_lines(report, titles, day=day):
            click.echo(line)
        return
    text = reach.not_reached_csv(report, excel=excel)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        await asyncio.to_thread(output.write_text, text, encoding="utf-8")
    except OSError as exc:
        raise FileError.from_os(exc, output) from exc
    click.echo(f"{len(report.not_reached())} Ortsgemeinden nach {output} geschrieben.")


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
            await ann.check_message(session, unsaved, renderer=renderer, links=links, now=now)
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
    """Quellen (News-Feeds, Kalender): Zustand ansehen, jetzt abrufen, Zurückgehaltenes
    freigeben oder verwerfen."""
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
    from .sources.feed import FALLBACK_PREFIX
    from .sources.held import held_counts, item_counts, source_kind

    async with await _open(settings) as db, db.transaction() as session:
        states = {s.name: s for s in await session.scalars(select(SourceState))}
        counts = await item_counts(session)
        held = await held_counts(session)
        keyless = await queries.keyless_counts(session, FALLBACK_PREFIX)
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
        if keyless.get(source.name):
            count = keyless[source.name]
            click.echo(
                f"  ohne ID und Link: {count} {'Eintrag' if count == 1 else 'Einträge'}, "
                "erkannt an Titel, Datum und Text (ändert die Quelle einen davon, gilt er als "
                "neuer Eintrag)"
            )
        if held.get(source.name):
            click.echo(
                f"  auffällig: {held[source.name]} neue Einträge zurückgehalten (mehr als "
                f"{settings.sources.new_per_poll(source)} in einem Abruf); freigeben mit "
                f"`notifier sources release {source.name}`, verwerfen mit "
                f"`notifier sources discard {source.name}`"
            )


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
        # Each source's failure is its own line; the others are still polled.
        for source, result in zip(chosen, await poller.poll_all(chosen), strict=True):
            if result.error:
                failed = True
                click.echo(f"{source.name}: Fehler: {result.error}")
            elif result.not_modified:
                click.echo(f"{source.name}: unverändert")
            else:
                held = f" ({result.held} zurückgehalten: auffällig)" if result.held else ""
                click.echo(
                    f"{source.name}: {result.new} neu{held}, {result.changed} geändert, "
                    f"{result.cancelled} abgesagt"
                )
    if failed:
        sys.exit(1)


def _configured_source(ctx: click.Context, name: str) -> str:
    if not any(s.name == name for s in _settings(ctx).sources.all):
        raise NotFoundError(f"keine Quelle {name!r} in der Konfiguration")
    return name


@sources.command("release")
@click.argument("name")
@click.pass_context
@run_async
async def sources_release(ctx: click.Context, name: str) -> None:
    """Zurückgehaltene Einträge der Quelle NAME jetzt ankündigen."""
    from .sources.held import release_held

    _configured_source(ctx, name)
    async with await _open(_settings(ctx)) as db, db.transaction() as session:
        done = await release_held(session, name, actor=_actor(), now=utcnow())
    click.echo(
        f"{name}: {done.released} Einträge freigegeben (gehen mit der nächsten Prüfung hinaus)"
        + (f", {done.discarded} schon begonnene Termine nur erfasst" if done.discarded else "")
    )


@sources.command("discard")
@click.argument("name")
@click.pass_context
@run_async
async def sources_discard(ctx: click.Context, name: str) -> None:
    """Zurückgehaltene Einträge der Quelle NAME verwerfen (nur erfasst, nie angekündigt)."""
    from .sources.held import discard_held

    _configured_source(ctx, name)
    async with await _open(_settings(ctx)) as db, db.transaction() as session:
        done = await discard_held(session, name, actor=_actor(), now=utcnow())
    click.echo(f"{name}: {done.discarded} Einträge verworfen (erfasst, nicht angekündigt)")


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
    return MailStore(settings.catcher_dir)


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


@main.group(invoke_without_command=True)
@click.pass_context
def bounces(ctx: click.Context) -> None:
    """Zurückgekommene Nachrichten: Bounces, Beschwerden, Abmeldungen per E-Mail."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(bounces_list)


@bounces.command("list")
@click.option("--limit", default=50, show_default=True, help="So viele neueste zeigen.")
@click.option("--address", default=None, help="Nur die einer Adresse.")
@click.pass_context
@run_async
async def bounces_list(ctx: click.Context, limit: int, address: str | None) -> None:
    """Die neuesten Bounces, eine pro Zeile: Nr., Zeit, Art, Adresse, Status, was geschah."""
    from .db import bounces as store

    settings = _settings(ctx)
    async with await _open(settings) as db, db.reading() as session:
        rows = await store.latest(session, limit=limit, address=address)
    if not rows:
        click.echo("Noch keine Bounces empfangen.")
    for row in rows:
        click.echo(
            f"{row.id:>5}  {german_datetime(row.received_at, settings.scheduler.tz)}  "
            f"{BOUNCE_LABELS[row.kind.value]}  {row.address or '–'}  {row.status or ''}  "
            f"{row.action}"
        )


@bounces.command("show")
@click.argument("number", type=int)
@click.option("--raw", is_flag=True, help="Die Nachricht, wie empfangen (solange aufbewahrt).")
@click.pass_context
@run_async
async def bounces_show(ctx: click.Context, number: int, raw: bool) -> None:
    """Bounce NUMBER mit Zuordnung, Diagnose und was geschah."""
    from .db import bounces as store

    settings = _settings(ctx)
    async with await _open(settings) as db, db.reading() as session:
        bounce = await store.get(session, number)
    if bounce is None:
        raise NotFoundError(f"kein Bounce Nr. {number}")
    if raw:
        if bounce.raw is None:
            raise NotFoundError(
                f"Bounce Nr. {number}: die Nachricht ist nicht mehr aufbewahrt "
                "([bounces] keep_raw_days)"
            )
        click.echo(bounce.raw.decode("utf-8", errors="replace"), nl=False)
        return
    tz = settings.scheduler.tz
    for label, value in (
        ("Empfangen", f"{german_datetime(bounce.received_at, tz)} ({bounce.source})"),
        ("Art", BOUNCE_LABELS[bounce.kind.value]),
        ("Adresse", bounce.address or "–"),
        ("Abonnent", bounce.subscriber_id or "–"),
        ("Nachricht (outbox)", bounce.outbox_id or "–"),
        ("Status", bounce.status or "–"),
        ("Diagnose", bounce.diagnostic or "–"),
        ("Ergebnis", bounce.action or "–"),
        ("Größe", f"{bounce.size} Bytes" + ("" if bounce.raw is not None else ", nicht mehr da")),
    ):
        click.echo(f"{label}: {value}")


@bounces.command("poll")
@click.pass_context
@run_async
async def bounces_poll(ctx: click.Context) -> None:
    """Das Bounce-Postfach ([bounces.imap]) jetzt abrufen."""
    from .bounces.imap import ImapPoller
    from .bounces.intake import BounceIntake

    settings = _settings(ctx)
    if not settings.bounces.imap.host:
        raise NotifierError("kein Bounce-Postfach konfiguriert ([bounces.imap] host)")
    async with await _open(settings) as db:
        intake = BounceIntake(db, settings, utcnow)
        result = await ImapPoller(settings, intake).poll()
        await intake.clean()
    kinds = ", ".join(f"{BOUNCE_LABELS[k]}: {n}" for k, n in sorted(result.kinds.items()))
    click.echo(
        f"{result.looked_at} Nachrichten angesehen, {result.processed} verarbeitet und "
        f"verschoben, {result.left} liegen gelassen" + (f" ({kinds})" if kinds else "")
    )
    if result.more:
        click.echo("Weitere Nachrichten warten auf den nächsten Abruf.")


@bounces.command("feed")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
@run_async
async def bounces_feed(ctx: click.Context, file: Path) -> None:
    """Eine gespeicherte Nachricht (.eml) wie einen eingegangenen Bounce verarbeiten."""
    from .bounces.intake import HEAD_BYTES, BounceIntake

    settings = _settings(ctx)
    raw, size = _read_start(file, settings.bounces.max_message_bytes, HEAD_BYTES)
    async with await _open(settings) as db:
        handled = await BounceIntake(db, settings, utcnow).handle(raw, source="cli", size=size)
    click.echo(
        f"Bounce Nr. {handled.bounce_id}: {BOUNCE_LABELS[handled.kind.value]}, {handled.action}"
    )


def _read_start(file: Path, limit: int, head: int) -> tuple[bytes, int]:
    """The file's bytes, or only its first ``head`` bytes if it is over ``limit``; its size."""
    size = file.stat().st_size
    with file.open("rb") as handle:
        return handle.read(head if size > limit else size), size


@main.group()
def dkim() -> None:
    """DKIM-Schlüssel anlegen und den DNS-Eintrag dazu anzeigen."""


@dkim.command("keygen")
@click.option("--selector", help="Selektor des neuen Schlüssels (sonst [dkim] selector).")
@click.option(
    "--file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Schlüsseldatei (sonst [dkim] private_key_file); eine vorhandene bleibt unberührt.",
)
@click.option(
    "--ed25519",
    "ed25519_key",
    is_flag=True,
    help="Den Ed25519-Schlüssel der zweiten Signatur anlegen statt des RSA-Schlüssels.",
)
@click.pass_context
def dkim_keygen(
    ctx: click.Context, selector: str | None, file: Path | None, ed25519_key: bool
) -> None:
    """Neuen Schlüssel schreiben (RSA 2048 Bit, Dateirechte 0600) und den DNS-Eintrag zeigen."""
    from . import dkim_keys  # cryptography only for the commands that need it

    click.echo(
        dkim_keys.keygen(_settings(ctx), selector=selector, file=file, ed25519_key=ed25519_key)
    )


@dkim.command("show")
@click.pass_context
def dkim_show(ctx: click.Context) -> None:
    """Den DNS-Eintrag (TXT) der konfigurierten Schlüssel anzeigen."""
    from . import dkim_keys

    click.echo(dkim_keys.show(_settings(ctx)))


__all__ = ["main"]
