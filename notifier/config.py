"""``config.toml`` → typed, validated settings.

Settings are read once, checked once and passed into constructors. Every problem stops the start
with one line that names the file, the key and what was expected. Secrets may come from the
environment: ``NOTIFIER_SMTP__PASSWORD`` sets ``[smtp] password``.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
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

from .branding import DEFAULT_COLOUR, LOGO_MAX_BYTES, LOGO_TYPES, colour_problem
from .errors import ConfigError, os_reason

ENV_PREFIX = "NOTIFIER_"
DEFAULT_CONFIG = "config.toml"
DEFAULT_DATA = "var"

# What the package carries: the templates, the example statements and the Eifelkreis structure.
PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED_TEMPLATES = PACKAGE_DIR / "templates"
PACKAGED_LEGAL = {
    "privacy_file": PACKAGE_DIR / "legal" / "datenschutz.md",
    "accessibility_file": PACKAGE_DIR / "legal" / "barrierefreiheit.md",
}
PACKAGED_ORGANISATIONS = PACKAGE_DIR / "data" / "organisations.csv"

_TOPIC_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    # Empty: the SQLite file notifier.db in [paths] data.
    url: str = ""
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
    directory: str = ""  # empty: mails/ in [paths] data


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
    # Hosts an announcement may load images from (each image tells its host who opened the
    # mail); an announcement with an image from any other host is refused. Empty: none.
    image_hosts: Annotated[list[str], Field(max_length=100)] = []

    @field_validator("image_hosts")
    @classmethod
    def _image_hosts(cls, value: list[str]) -> list[str]:
        label = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
        hosts = []
        for host in value:
            name = host.lower().removesuffix(".")
            if len(name) > 253 or not all(label.fullmatch(p) for p in name.split(".")):
                raise ValueError(
                    f"{host!r} is not a host name such as bilder.eifelkreis.de "
                    "(no scheme, path or port)"
                )
            hosts.append(name)
        return hosts

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


SELECTOR_FORMAT = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*$"
)


class DkimSettings(_Section):
    """DKIM signatures on every message (see notifier.dkim)."""

    enabled: bool = False
    # The signing domain (d=); empty: the domain of [mail] sender_address.
    domain: str = ""
    selector: str = "notifier"
    private_key_file: str = ""  # empty: dkim.key in [paths] data
    # The PEM key itself (from NOTIFIER_DKIM__PRIVATE_KEY); set, it replaces the file.
    private_key: SecretStr = SecretStr("")
    # "rsa-sha256+ed25519-sha256": a second signature with Ed25519 (RFC 8463) beside the RSA
    # one, under its own selector and key.
    algorithm: Literal["rsa-sha256", "rsa-sha256+ed25519-sha256"] = "rsa-sha256"
    ed25519_selector: str = "notifier-ed25519"
    ed25519_key_file: str = ""  # empty: dkim-ed25519.key in [paths] data
    ed25519_private_key: SecretStr = SecretStr("")
    # The DNS server `notifier doctor` asks for the published records, "HOST" or "HOST:PORT";
    # empty: the system's resolver (an internal DNS may not see the public zone).
    nameserver: str = ""

    @property
    def ed25519(self) -> bool:
        return self.algorithm.endswith("+ed25519-sha256")

    @field_validator("selector", "ed25519_selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        if not SELECTOR_FORMAT.match(value):
            raise ValueError("must be letters, digits and '-', parts separated by '.'")
        return value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        value = value.strip().lower().rstrip(".")
        if value and not value.isascii():
            value = _idna(value)
        if value and not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", value):
            raise ValueError("must be a domain name such as eifelkreis.de")
        return value


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


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ImapSettings(_Section):
    """The IMAP mailbox that receives the bounces (empty host: no polling)."""

    host: str = ""
    port: Annotated[int, Field(ge=1, le=65535)] = 993
    tls: Literal["tls", "none"] = "tls"
    user: str = ""
    password: SecretStr = SecretStr("")
    folder: str = "INBOX"
    processed_folder: str = "Verarbeitet"
    poll_minutes: Annotated[float, Field(gt=0)] = 5.0
    timeout: Annotated[float, Field(gt=0)] = 30.0
    # A CA certificate file (PEM) to trust instead of the system's (an in-house CA).
    ca_file: str = ""

    @field_validator("host", "user", "folder", "processed_folder")
    @classmethod
    def _plain(cls, value: str) -> str:
        if any(c in value for c in '\r\n"\\') or any(ord(c) < 32 for c in value):
            raise ValueError("must be a single line without quotes or backslashes")
        return value

    @model_validator(mode="after")
    def _tls_off_only_here(self) -> ImapSettings:
        # The password would cross the network in the clear.
        if self.host and self.tls == "none" and not _is_loopback_host(self.host):
            raise ValueError(f'tls = "none" only for a server on this machine, not {self.host}')
        return self


class BouncesSettings(_Section):
    """Bounces and complaints that come back after the relay accepted a message."""

    # Envelope sender (MAIL FROM) of every message, with "{token}" for the signed outbox row
    # (VERP), e.g. "bounces+{token}@example.org". Empty: the sender address; bounces are then
    # matched by the Message-ID and the original recipient inside the report.
    return_path: str = ""
    imap: ImapSettings = ImapSettings()
    # Inbound SMTP listener ("host:port") the mail server forwards the bounce address to.
    listen: str = ""
    suppress_after_soft_bounces: Annotated[int, Field(ge=1)] = 5
    soft_window_days: Annotated[float, Field(gt=0)] = 14.0
    keep_raw_days: Annotated[float, Field(ge=0)] = 30.0
    max_message_bytes: Annotated[int, Field(ge=10_000, le=100_000_000)] = 10_000_000
    max_per_poll: Annotated[int, Field(ge=1, le=10_000)] = 200
    poll_seconds_max: Annotated[float, Field(gt=0)] = 120.0

    @field_validator("return_path")
    @classmethod
    def _return_path(cls, value: str) -> str:
        if not value:
            return value
        local, at, domain = value.partition("@")
        if (
            local.count("{token}") != 1
            or not at
            or not re.fullmatch(r"[A-Za-z0-9.!#$%&'*+/=^_`|~\-]+", local.replace("{token}", ""))
            or not re.fullmatch(r"[A-Za-z0-9.\-]+\.[A-Za-z]{2,}", domain)
        ):
            raise ValueError(
                "must be an address with {token} once in the part before the @, "
                "such as bounces+{token}@example.org"
            )
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9.\-:\[\]]+:\d{1,5}", value):
            raise ValueError("must be HOST:PORT such as 127.0.0.1:2526")
        if value and int(value.rpartition(":")[2]) > 65535:
            raise ValueError("port must be at most 65535")
        return value

    @property
    def listen_address(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


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
    # More new items than this in one poll are held for the office (None: [sources]'s value).
    max_new_per_poll: Annotated[int, Field(ge=0)] | None = None

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
    # Reminders of a recurring series: only for its next occurrence, for each, or none.
    remind_series: Literal["next", "each", "none"] = "next"
    # true: the first poll announces the events the calendar already holds; false: records them.
    backfill: bool = False


class SourcesSettings(_Section):
    # Limits every source shares (each poll, each parse); see config.toml.
    max_concurrent_polls: Annotated[int, Field(ge=1, le=32)] = 2
    parse_seconds: Annotated[float, Field(gt=0, le=3600)] = 20.0
    parse_memory_mb: Annotated[int, Field(ge=256, le=65536)] = 1024
    max_per_series: Annotated[int, Field(ge=1)] = 1000
    max_per_calendar: Annotated[int, Field(ge=1)] = 20_000
    max_new_per_poll: Annotated[int, Field(ge=0)] = 20
    feed: list[FeedSource] = []
    calendar: list[CalendarSource] = []

    def new_per_poll(self, source: FeedSource | CalendarSource) -> int:
        """How many new items one poll of ``source`` may announce."""
        own = source.max_new_per_poll
        return self.max_new_per_poll if own is None else own

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
    secret_key_file: str = ""  # empty: secret.key in [paths] data
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
    # Office logins are throttled per client address and name (never the account as a whole):
    # after login_max_failures failures the next attempt from that address for that name waits
    # login_first_wait_seconds, doubling with each further failure (2, 4, 8 … by default), at
    # most login_max_delay_minutes; ten times as many failures from one address over all names
    # throttle the address alike.
    login_max_failures: Annotated[int, Field(ge=1)] = 5
    login_first_wait_seconds: Annotated[float, Field(gt=0)] = 2.0
    login_max_delay_minutes: Annotated[float, Field(gt=0)] = 15.0
    # The largest request body per route class, refused with 413 while it is read (before
    # login checks and parsing): forms, the office's CSV upload, the JSON API.
    max_form_bytes: Annotated[int, Field(ge=1024)] = 1_000_000
    max_upload_bytes: Annotated[int, Field(ge=1024)] = 20_000_000
    max_json_bytes: Annotated[int, Field(ge=1024)] = 1_000_000
    # Public pages (sign-up, preferences, unsubscribe, …) worked on at once; more wait their
    # turn in order. 0: no limit.
    public_pages_at_once: Annotated[int, Field(ge=0)] = 2
    # Confirmation mails of the public sign-up form (a sign-up beyond a limit sends nothing and
    # looks the same to the visitor): per client address and hour, per recipient domain and
    # hour, per mailbox (plus-addresses count as one) and day, and for the whole service per hour.
    signup_per_client_per_hour: Annotated[int, Field(ge=1)] = 10
    signup_per_domain_per_hour: Annotated[int, Field(ge=1)] = 100
    signup_per_mailbox_per_day: Annotated[int, Field(ge=1)] = 3
    signup_per_hour: Annotated[int, Field(ge=1)] = 500
    session_hours: Annotated[float, Field(gt=0)] = 12.0

    @field_validator("allowed_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        domains = [d.strip().lower().lstrip("@") for d in value if d.strip()]
        # Addresses are stored with IDNA domains (notifier.addresses); so are these.
        return [d if d.isascii() else _idna(d) for d in domains]


def _loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LdapSettings(_Section):
    """Office login with the Kreis's LDAP directory (Active Directory or OpenLDAP)."""

    enabled: bool = False
    # ldap://host[:port] (then start_tls) or ldaps://host[:port].
    url: str = ""
    start_tls: bool = True
    # PEM file of the CA that signed the directory's certificate; empty: the system's CAs.
    ca_file: str = ""
    # The service account that searches for the user; may come from the environment
    # (NOTIFIER_AUTH__LDAP__BIND_PASSWORD).
    bind_dn: str = ""
    bind_password: SecretStr = SecretStr("")
    # Where users are searched and how; {name} is the login name, escaped for the filter.
    user_base: str = ""
    user_filter: str = "(&(objectClass=inetOrgPerson)(uid={name}))"
    email_attribute: str = "mail"
    # Membership of this group grants office access. group_filter is searched in the group's
    # entry itself; {user_dn} is the user's DN, escaped.
    group_dn: str = ""
    group_filter: str = "(|(member={user_dn})(uniqueMember={user_dn}))"
    # Seconds for connecting and for each answer.
    timeout: Annotated[float, Field(gt=0, le=60)] = 10.0

    @model_validator(mode="after")
    def _complete(self) -> LdapSettings:
        if not self.enabled:
            return self
        if not re.fullmatch(r"ldaps?://[A-Za-z0-9.\-\[\]:]+/?", self.url):
            raise ValueError("url must be ldap://host[:port] or ldaps://host[:port]")
        for key in ("bind_dn", "user_base", "group_dn"):
            if not getattr(self, key).strip():
                raise ValueError(f"{key} is required when enabled = true")
        if "{name}" not in self.user_filter:
            raise ValueError("user_filter must contain {name}")
        if "{user_dn}" not in self.group_filter:
            raise ValueError("group_filter must contain {user_dn}")
        return self


class OidcSettings(_Section):
    """Office login with the Kreis's OpenID provider (Keycloak, ADFS): authorization code
    flow with PKCE."""

    enabled: bool = False
    # The provider's issuer; its /.well-known/openid-configuration is read. https only
    # (http only for a provider on this machine's loopback, as in tests).
    issuer: str = ""
    client_id: str = ""
    # May come from the environment (NOTIFIER_AUTH__OIDC__CLIENT_SECRET).
    client_secret: SecretStr = SecretStr("")
    scopes: list[str] = ["openid", "profile", "email"]
    # The claim (in the ID token or from the userinfo endpoint) that lists the user's groups,
    # and the group in it that grants office access.
    group_claim: str = "groups"
    group: str = ""
    # The claim that names the user in the console and the audit log.
    name_claim: str = "preferred_username"
    # The button on the login page.
    button_label: str = "Mit dem Konto der Kreisverwaltung anmelden"
    # Seconds for each request to the provider.
    timeout: Annotated[float, Field(gt=0, le=60)] = 10.0

    @model_validator(mode="after")
    def _complete(self) -> OidcSettings:
        if not self.enabled:
            return self
        found = re.fullmatch(
            r"(https?)://([A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\])(:\d+)?(/\S*)?", self.issuer
        )
        if not found:
            raise ValueError("issuer must be an https:// address")
        if found.group(1) == "http" and not _loopback_host(found.group(2)):
            raise ValueError("issuer must be an https:// address (http only on loopback)")
        for key in ("client_id", "group"):
            if not getattr(self, key).strip():
                raise ValueError(f"{key} is required when enabled = true")
        if "openid" not in self.scopes:
            raise ValueError("scopes must contain openid")
        return self


class AuthSettings(_Section):
    """How the office logs in: local accounts (``notifier users add``) always work; the
    directory (LDAP, OpenID Connect) may be added."""

    ldap: LdapSettings = LdapSettings()
    oidc: OidcSettings = OidcSettings()


class MetricsSettings(_Section):
    """``GET /metrics`` (Prometheus' text format) on the web application."""

    # Off: /metrics answers 404.
    enabled: bool = False
    # Non-empty: a scrape must send ``Authorization: Bearer <token>`` (else 401). May come from
    # the environment (NOTIFIER_METRICS__TOKEN).
    token: SecretStr = SecretStr("")
    # Where the processes of one machine keep their counters for each other (prometheus-client's
    # multiprocess mode); emptied at a start when no process that wrote into it is alive.
    directory: str = ""  # empty: metrics/ in the data directory ([paths] data)


class LoggingSettings(_Section):
    """How ``notifier run`` logs (to standard error)."""

    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class PathSettings(_Section):
    # The data directory: the SQLite file, the secret key and the catcher's mails live here
    # unless their own keys name another place. The default is created on first start.
    data: str = DEFAULT_DATA
    # A folder whose templates take precedence, file by file, over the packaged ones (email/…,
    # web/…, web/static/…). Empty: the packaged templates only.
    templates: str = ""

    @field_validator("data")
    @classmethod
    def _data_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError('must name a folder, such as "/var/lib/notifier"')
        return value


class BrandingSettings(_Section):
    """The Kreis's corporate design on the web pages (:mod:`notifier.branding`); checked at
    start by :func:`check_branding`."""

    # The header's logo: an image file (SVG, PNG, WebP, JPEG; at most 512 KB), relative paths
    # against the config file's folder, served by the service itself. Empty: no logo.
    logo: str = ""
    # The primary colour (header, buttons, links), "#rrggbb": must keep 4.5:1 against white
    # and carry white text with 4.5:1 (WCAG 2.1 AA).
    primary_colour: str = DEFAULT_COLOUR


class LegalSettings(_Section):
    """The Markdown files of the privacy notice (``/datenschutz``) and the accessibility
    statement (``/barrierefreiheit``); relative paths are resolved against the config file's
    folder. Empty: the packaged example texts. A named file must exist: the start stops
    otherwise."""

    privacy_file: str = ""
    accessibility_file: str = ""


class RetentionSettings(_Section):
    """How long personal data is kept (DSGVO art. 5(1)(e)); a daily job of the scheduler and
    ``notifier privacy purge`` remove what is older. Unconfirmed sign-ups go after
    ``[web] confirm_hours`` and :data:`notifier.retention.UNCONFIRMED_GRACE` more."""

    # Unsubscribed people: name, choices and messages go after this many days ...
    unsubscribed_days: Annotated[int, Field(ge=1, le=36_500)] = 30
    # ... their consent record (and address) as proof this many days later.
    consent_proof_days: Annotated[int, Field(ge=0, le=36_500)] = 1095
    # Outbox rows and briefings lose their recipient (the counts stay).
    outbox_days: Annotated[int, Field(ge=1, le=36_500)] = 180
    # IP addresses in consent records and the audit log.
    ip_days: Annotated[int, Field(ge=1, le=36_500)] = 90
    # Entries of the audit log.
    audit_days: Annotated[int, Field(ge=1, le=36_500)] = 730
    # Mails stored by the built-in catcher ([smtp] catcher).
    catcher_days: Annotated[int, Field(ge=1, le=36_500)] = 14


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
    bounces: BouncesSettings = BouncesSettings()
    dkim: DkimSettings = DkimSettings()
    paths: PathSettings = PathSettings()
    legal: LegalSettings = LegalSettings()
    branding: BrandingSettings = BrandingSettings()
    retention: RetentionSettings = RetentionSettings()
    web: WebSettings = WebSettings()
    auth: AuthSettings = AuthSettings()
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
    def data_dir(self) -> Path:
        """``[paths] data``: where the service keeps its files."""
        return self.path(self.paths.data)

    def template_dirs(self, part: str) -> list[Path]:
        """The folders a template of ``part`` (``email``, ``web``, ``web/static``) is looked up
        in, in order: the override folder of ``[paths] templates`` if any, then the package's."""
        dirs = [PACKAGED_TEMPLATES / part]
        if self.paths.templates:
            dirs.insert(0, self.path(self.paths.templates) / part)
        return dirs

    @property
    def logo_path(self) -> Path | None:
        """The file of ``[branding] logo``; None without a logo."""
        named = self.branding.logo.strip()
        return self.path(named) if named else None

    def legal_file(self, key: str) -> Path:
        """The file of ``[legal] key``; the packaged example text when the key is empty."""
        named: str = getattr(self.legal, key)
        return self.path(named) if named.strip() else PACKAGED_LEGAL[key]

    @property
    def catcher_dir(self) -> Path:
        """Where the catcher stores what it receives."""
        named = self.catcher.directory
        return self.path(named) if named else self.data_dir / "mails"

    @property
    def metrics_dir(self) -> Path:
        """Where the processes keep their counters (``[metrics] directory``; empty: in the data
        directory)."""
        named = self.metrics.directory
        return self.path(named) if named else self.data_dir / "metrics"

    def dkim_key_path(self, *, ed25519: bool = False) -> Path:
        """The DKIM key file (``[dkim] private_key_file`` or ``ed25519_key_file``); empty: in the
        data directory."""
        named = self.dkim.ed25519_key_file if ed25519 else self.dkim.private_key_file
        default = "dkim-ed25519.key" if ed25519 else "dkim.key"
        return self.path(named) if named else self.data_dir / default

    @property
    def secret_key_path(self) -> Path:
        """The file that keeps the key made on first use (when ``[web] secret_key`` is empty)."""
        named = self.web.secret_key_file
        return self.path(named) if named else self.data_dir / "secret.key"

    @property
    def database_url(self) -> str:
        """The database URL with a relative SQLite file made absolute; empty: the SQLite file
        ``notifier.db`` in the data directory."""
        url = self.database.url or f"sqlite+aiosqlite:///{self.data_dir / 'notifier.db'}"
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
    check_paths(settings)
    check_branding(settings)
    return settings


def check_paths(settings: Settings) -> None:
    """Check that the service can use every path of the configuration: the data directory
    (the default ``var`` is created), an override templates folder, the statements of
    ``[legal]``, the secret key file and the catcher's folder. (The database reports its own
    problems when it is opened: :mod:`notifier.db.failures`.)

    Raises :class:`ConfigError` naming the key and the path, in German, for the first problem.
    """
    shown = str(settings.config_file) if settings.config_file else "config"

    data = settings.data_dir
    if not data.exists() and settings.paths.data == DEFAULT_DATA:
        try:
            data.mkdir()
        except OSError as exc:
            raise ConfigError(
                shown,
                "paths.data",
                f"Verzeichnis {data} lässt sich nicht anlegen: {os_reason(exc)}",
            ) from None
    problem = _directory_problem(data)
    if problem:
        raise ConfigError(shown, "paths.data", problem)

    if settings.paths.templates:
        folder = settings.path(settings.paths.templates)
        if not folder.is_dir():
            what = "ist kein Verzeichnis" if folder.exists() else "existiert nicht"
            raise ConfigError(shown, "paths.templates", f"Vorlagenordner {folder} {what}")
        if not os.access(folder, os.R_OK | os.X_OK):
            raise ConfigError(shown, "paths.templates", f"Vorlagenordner {folder} ist nicht lesbar")

    # Every e-mail links to the privacy notice: a service without it must not start.
    for key in ("privacy_file", "accessibility_file"):
        path = settings.legal_file(key)
        if not path.is_file():
            what = "ist keine Datei" if path.exists() else "nicht gefunden"
            raise ConfigError(shown, f"legal.{key}", f"Datei {path} {what}")
        if not os.access(path, os.R_OK):
            raise ConfigError(shown, f"legal.{key}", f"Datei {path} ist nicht lesbar")

    if not settings.web.secret_key.get_secret_value():
        path = settings.secret_key_path
        if path.exists():
            if not path.is_file() or not os.access(path, os.R_OK):
                raise ConfigError(
                    shown, "web.secret_key_file", f"Schlüsseldatei {path} ist nicht lesbar"
                )
        else:
            problem = _creatable(path)
            if problem:
                raise ConfigError(shown, "web.secret_key_file", problem)

    if settings.smtp.catcher:
        problem = _creatable(settings.catcher_dir)
        if problem:
            raise ConfigError(shown, "catcher.directory", problem)


def check_branding(settings: Settings) -> None:
    """Check ``[branding]``: a colour with AA contrast, a logo file that can be served.

    Raises :class:`ConfigError` naming the key, in German, for the first problem."""
    shown = str(settings.config_file) if settings.config_file else "config"
    problem = colour_problem(settings.branding.primary_colour)
    if problem:
        raise ConfigError(shown, "branding.primary_colour", problem)
    if settings.branding.logo:
        problem = _logo_problem(settings.logo_path)
        if problem:
            raise ConfigError(shown, "branding.logo", problem)


def _logo_problem(path: Path | None) -> str | None:
    if path is None:
        return None
    if path.suffix.lower() not in LOGO_TYPES:
        kinds = ", ".join(sorted({s.lstrip(".").upper() for s in LOGO_TYPES} - {"JPEG"}))
        return f"Logo {path}: nur Bilder als {kinds} (Dateiendung {path.suffix or 'fehlt'})"
    if not path.is_file():
        return f"Logo {path} {'ist keine Datei' if path.exists() else 'nicht gefunden'}"
    if not os.access(path, os.R_OK):
        return f"Logo {path} ist nicht lesbar"
    size = path.stat().st_size
    if size > LOGO_MAX_BYTES:
        limit = LOGO_MAX_BYTES // 1024
        return f"Logo {path} ist {size // 1024} KB groß; erlaubt sind höchstens {limit} KB"
    return None


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, OSError):
        return str(os.geteuid())


def _directory_problem(path: Path) -> str | None:
    """What keeps the service from writing into the folder ``path``; None if nothing."""
    if not path.exists():
        return f"Verzeichnis {path} existiert nicht"
    if not path.is_dir():
        return f"{path} ist kein Verzeichnis"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"Verzeichnis {path} ist für Benutzer {_user()} nicht beschreibbar"
    return None


def _creatable(path: Path) -> str | None:
    """What keeps the service from writing ``path`` (a file or folder, created with its missing
    parents if it does not exist); None if nothing."""
    if path.exists():
        if path.is_dir():
            return _directory_problem(path)
        if not os.access(path, os.R_OK | os.W_OK):
            return f"{path} ist für Benutzer {_user()} nicht beschreibbar"
        return None
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    problem = _directory_problem(ancestor)
    return f"{path} lässt sich nicht anlegen: {problem}" if problem else None
