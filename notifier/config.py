"""``config.toml`` → typed, validated settings.

Settings are read once, checked once and passed into constructors. Every problem stops the start
with one line that names the file, the key and what was expected. Secrets may come from the
environment: ``NOTIFIER_SMTP__PASSWORD`` sets ``[smtp] password``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

ENV_PREFIX = "NOTIFIER_"
DEFAULT_CONFIG = "config.toml"

_TOPIC_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    url: str = "sqlite+aiosqlite:///var/notifier.db"
    echo: bool = False


class SmtpSettings(_Section):
    catcher: bool = True
    host: str = "localhost"
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    tls: Literal["none", "starttls", "tls"] = "starttls"
    user: str = ""
    password: SecretStr = SecretStr("")
    timeout: Annotated[float, Field(gt=0)] = 30.0


class CatcherSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 2525
    directory: str = "var/mails"


class MailSettings(_Section):
    sender_name: str
    sender_address: str
    reply_to: str = ""
    list_id: str
    message_id_domain: str = ""
    imprint_text: str
    imprint_url: str
    public_base_url: str
    # Feedback-ID header of bulk mail (Gmail's feedback loop); empty: none.
    feedback_id: str = ""
    # An address that List-Unsubscribe names besides the HTTPS link; empty: none.
    unsubscribe_mailto: str = ""
    # The largest message (headers and every part, as sent); larger announcements are refused.
    max_message_bytes: Annotated[int, Field(gt=0)] = 10_000_000

    @field_validator("sender_name", "sender_address", "reply_to", "list_id", "message_id_domain")
    @classmethod
    def _single_line(cls, value: str) -> str:
        if any(c in value for c in "\r\n"):
            raise ValueError("must be a single line")
        return value

    @field_validator("feedback_id")
    @classmethod
    def _feedback_id(cls, value: str) -> str:
        # Gmail reads colon-separated fields (a:b:c:SenderId); one token without spaces.
        if value and not re.fullmatch(r"[\x21-\x7e]{1,200}", value):
            raise ValueError("must be one line of printable ASCII without spaces, such as a:b:c:id")
        return value

    @field_validator("unsubscribe_mailto")
    @classmethod
    def _unsubscribe_mailto(cls, value: str) -> str:
        # Plain ASCII: it goes into the header as it is, followed by ?subject=unsubscribe.
        if value and not re.fullmatch(r"[A-Za-z0-9.!#$%&'*+/=^_`{|}~\-]+@[A-Za-z0-9.\-]+", value):
            raise ValueError("must be an e-mail address such as abmelden@example.org")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/\-]*)?", value):
            raise ValueError(
                "must be an http:// or https:// address such as https://newsletter.example.org"
            )
        return value.rstrip("/")

    @property
    def domain(self) -> str:
        return self.message_id_domain or self.sender_address.rpartition("@")[2]


class SchedulerSettings(_Section):
    timezone: str = "Europe/Berlin"
    poll_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class DeliverySettings(_Section):
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 100
    lease_seconds: Annotated[float, Field(gt=0)] = 300.0
    retry_base_seconds: Annotated[float, Field(gt=0)] = 60.0
    max_age_hours: Annotated[float, Field(gt=0)] = 72.0
    idle_poll_seconds: Annotated[float, Field(gt=0, le=60)] = 0.25
    connections: Annotated[int, Field(ge=1, le=100)] = 4
    processes: Annotated[int, Field(ge=1, le=32)] = 1
    rate_per_second: Annotated[float, Field(ge=0)] = 0.0  # 0: no limit
    rate_per_hour: Annotated[float, Field(ge=0)] = 0.0  # 0: no limit
    suppress_after_hard_failures: Annotated[int, Field(ge=1)] = 3


_SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def _check_cron(value: str) -> str:
    fields = value.split()
    if len(fields) == 5 and any(c.isdigit() for c in fields[4]):
        # APScheduler 3 reads weekday numbers with 0 = Monday, cron with 0 = Sunday: refuse the
        # ambiguity rather than send briefings a day off.
        raise ValueError("write weekdays as names (e.g. mon-fri), not numbers")
    try:
        CronTrigger.from_crontab(value)
    except ValueError as exc:
        raise ValueError(f"not a cron expression (minute hour day month weekday): {exc}") from exc
    return value


class BriefingSettings(_Section):
    """When daily and weekly briefings go out (cron, evaluated in [scheduler] timezone)."""

    daily: str = "0 7 * * mon-fri"
    weekly: str = "0 7 * * mon"
    grace_hours: Annotated[float, Field(ge=0)] = 12.0

    _cron = field_validator("daily", "weekly")(_check_cron)

    def trigger(self, rhythm: str, tz: ZoneInfo) -> CronTrigger:
        return CronTrigger.from_crontab(getattr(self, rhythm), timezone=tz)


class _SourceSettings(_Section):
    name: str
    url: str
    poll_minutes: Annotated[float, Field(gt=0)] = 15.0
    # The source's category (as it is written there) → topic key.
    categories: dict[str, str] = {}
    # Topics of every item of this source (besides those from categories). Empty and no
    # matching category: the item goes to every topic.
    topics: list[str] = []
    # Organisation keys or names the items are meant for; empty: the whole Kreis.
    scope: list[str] = []
    timeout: Annotated[float, Field(gt=0)] = 20.0
    max_bytes: Annotated[int, Field(gt=0)] = 5_000_000

    @field_validator("name")
    @classmethod
    def _name_format(cls, value: str) -> str:
        if not _SOURCE_NAME.match(value):
            raise ValueError("must be lower-case letters, digits, '-' or '_'")
        return value


class FeedSource(_SourceSettings):
    # true: the first poll announces what the feed already holds; false: it only records it.
    backfill: bool = False


class CalendarSource(_SourceSettings):
    lookahead_days: Annotated[int, Field(ge=1, le=3650)] = 180
    remind_days_before: list[Annotated[int, Field(ge=1, le=365)]] = [7, 1]


class SourcesSettings(_Section):
    feed: list[FeedSource] = []
    calendar: list[CalendarSource] = []

    @property
    def all(self) -> list[FeedSource | CalendarSource]:
        return [*self.feed, *self.calendar]


def _idna(domain: str) -> str:
    import idna  # only for a domain outside ASCII: a sender process does without it

    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"{domain!r} is not a valid domain name ({exc})") from exc


class WebSettings(_Section):
    """The web application (preference centre, office console, JSON API)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    # Signs personal links and session cookies. Empty: a random key is made once and kept in
    # ``secret_key_file``. Several processes or machines must share one key.
    secret_key: SecretStr = SecretStr("")
    secret_key_file: str = "var/secret.key"  # noqa: S105 (a path)
    # How long a sign-up's confirmation link and a preferences link stay valid.
    confirm_hours: Annotated[float, Field(gt=0)] = 48.0
    link_days: Annotated[float, Field(gt=0)] = 365.0
    # Sign-ups from these e-mail domains are confirmed by the subscriber alone; others wait,
    # after their confirmation, for the project office's approval. Empty: every domain.
    allowed_domains: list[str] = []
    consent_version: str = "2026-11"
    consent_text: str = (
        "Ich willige ein, dass der Eifelkreis Bitburg-Prüm meine Angaben speichert, um mir "
        "Informationen von EIFELKREIS VERBINDET per E-Mail zu senden. Ich kann die Einwilligung "
        "jederzeit über den Link in jeder E-Mail widerrufen."
    )
    # Office logins: after this many failures in a row the account waits lockout_minutes.
    login_max_failures: Annotated[int, Field(ge=1)] = 5
    login_lockout_minutes: Annotated[float, Field(gt=0)] = 15.0
    session_hours: Annotated[float, Field(gt=0)] = 12.0

    @field_validator("allowed_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        domains = [d.strip().lower().lstrip("@") for d in value if d.strip()]
        # Addresses are stored with IDNA domains (notifier.addresses); so are these.
        return [d if d.isascii() else _idna(d) for d in domains]


class MetricsSettings(_Section):
    """``GET /metrics`` (Prometheus' text format) on the web application."""

    # Off: /metrics answers 404.
    enabled: bool = False
    # Non-empty: a scrape must send ``Authorization: Bearer <token>`` (else 401). May come from
    # the environment (NOTIFIER_METRICS__TOKEN).
    token: SecretStr = SecretStr("")
    # Where the processes of one machine keep their counters for each other (prometheus-client's
    # multiprocess mode); emptied at a start when no process that wrote into it is alive.
    directory: str = "var/metrics"


class LoggingSettings(_Section):
    """How ``notifier run`` logs (to standard error)."""

    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class PathSettings(_Section):
    templates: str = "templates"


class LegalSettings(_Section):
    """The Markdown files of the privacy notice (``/datenschutz``) and the accessibility
    statement (``/barrierefreiheit``); relative paths are resolved against the config file's
    folder. Both must exist: the start stops otherwise."""

    privacy_file: str = "legal/datenschutz.md"
    accessibility_file: str = "legal/barrierefreiheit.md"

    @field_validator("privacy_file", "accessibility_file")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a Markdown file")
        return value


class Topic(_Section):
    key: str
    title: str
    description: str = ""

    @field_validator("key")
    @classmethod
    def _key_format(cls, value: str) -> str:
        if not _TOPIC_KEY.match(value):
            raise ValueError(
                "must be lower-case letters, digits, '-' or '_', starting with a letter"
            )
        return value


class Settings(_Section):
    database: DatabaseSettings = DatabaseSettings()
    smtp: SmtpSettings = SmtpSettings()
    catcher: CatcherSettings = CatcherSettings()
    mail: MailSettings
    scheduler: SchedulerSettings = SchedulerSettings()
    delivery: DeliverySettings = DeliverySettings()
    paths: PathSettings = PathSettings()
    legal: LegalSettings = LegalSettings()
    web: WebSettings = WebSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    briefings: BriefingSettings = BriefingSettings()
    sources: SourcesSettings = SourcesSettings()
    topics: Annotated[list[Topic], Field(min_length=1)]
    # Where the file lives; relative paths in it are resolved against this folder.
    base_dir: Path = Path()
    config_file: Path | None = None

    @field_validator("topics")
    @classmethod
    def _unique_topics(cls, value: list[Topic]) -> list[Topic]:
        seen: set[str] = set()
        for topic in value:
            if topic.key in seen:
                raise ValueError(f"topic key {topic.key!r} appears twice")
            seen.add(topic.key)
        return value

    @model_validator(mode="after")
    def _sources_consistent(self) -> Settings:
        keys = {t.key for t in self.topics}
        seen: set[str] = set()
        for index, source in enumerate(self.sources.all):
            kind = "feed" if isinstance(source, FeedSource) else "calendar"
            where = f"sources.{kind}[{index if kind == 'feed' else index - len(self.sources.feed)}]"
            if source.name in seen:
                raise ValueError(f"{where}.name: source name {source.name!r} appears twice")
            seen.add(source.name)
            unknown = [t for t in [*source.topics, *source.categories.values()] if t not in keys]
            if unknown:
                raise ValueError(f"{where}: unknown topic keys {', '.join(unknown)}")
        return self

    def path(self, relative: str) -> Path:
        """Resolve a path from the file against the config file's folder."""
        candidate = Path(relative)
        return candidate if candidate.is_absolute() else self.base_dir / candidate

    @property
    def database_url(self) -> str:
        """The database URL with a relative SQLite file made absolute."""
        url = self.database.url
        for prefix in ("sqlite+aiosqlite:///", "sqlite:///"):
            if url.startswith(prefix):
                rest = url[len(prefix) :]
                if rest and not rest.startswith((":memory:", "/")):
                    return prefix + str(self.path(rest))
        return url

    @property
    def topic_keys(self) -> list[str]:
        return [t.key for t in self.topics]


def _env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    overrides: dict[tuple[str, ...], str] = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and "__" in name:
            parts = tuple(p.lower() for p in name[len(ENV_PREFIX) :].split("__"))
            if all(parts):
                overrides[parts] = value
    return overrides


def _describe(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required value is missing"
    if kind == "extra_forbidden":
        return "unknown key"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    given = error.get("input")
    if isinstance(given, str | int | float | bool) and not isinstance(given, dict):
        return f"{message} (got {given!r})"
    return message


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_settings(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> Settings:
    """Read, overlay the environment on and validate a config file.

    Raises :class:`ConfigError` naming the file and the key for any problem.
    """
    file = Path(path)
    shown = str(file)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(shown, None, "file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(shown, None, f"cannot read file: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(shown, None, f"invalid TOML: {exc}") from exc

    from_env: dict[str, str] = {}
    for parts, value in _env_overrides(os.environ if environ is None else environ).items():
        node: dict[str, Any] = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(shown, ".".join(parts), "environment override of a non-table")
            node = child
        node[parts[-1]] = value
        from_env[".".join(parts)] = ENV_PREFIX + "__".join(p.upper() for p in parts)
    for internal in ("base_dir", "config_file"):
        if internal in raw:
            raise ConfigError(shown, internal, "unknown key")
    raw["base_dir"] = file.resolve().parent
    raw["config_file"] = file.resolve()

    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = _dotted(first["loc"])
        problem = _describe(first)
        if key in from_env:
            problem += f" (set by environment variable {from_env[key]})"
        more = exc.error_count() - 1
        if more:
            problem += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise ConfigError(shown, key, problem) from None
    _check_legal_files(settings, shown)
    return settings


def _check_legal_files(settings: Settings, shown: str) -> None:
    # Every e-mail links to the privacy notice: a service without it must not start.
    for key in ("privacy_file", "accessibility_file"):
        path = settings.path(getattr(settings.legal, key))
        if not path.is_file():
            raise ConfigError(shown, f"legal.{key}", f"file not found: {path}")
