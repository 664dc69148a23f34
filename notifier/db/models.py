"""Tables of notifier (SQLAlchemy 2 declarative models).

Times are stored as timezone-aware UTC values and shown in Europe/Berlin by the callers.
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """A DateTime that always comes back timezone-aware in UTC (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class OrgKind(enum.StrEnum):
    kreis = "kreis"
    verbandsgemeinde = "verbandsgemeinde"
    stadt = "stadt"
    ortsgemeinde = "ortsgemeinde"


class Role(enum.StrEnum):
    staff = "staff"
    mayor = "mayor"
    deputy_mayor = "deputy_mayor"
    council_member = "council_member"
    project_office = "project_office"


class Rhythm(enum.StrEnum):
    immediate = "immediate"
    daily = "daily"
    weekly = "weekly"


class SubscriberStatus(enum.StrEnum):
    active = "active"
    unsubscribed = "unsubscribed"
    suppressed = "suppressed"
    pending = "pending"  # signed up on the web, not yet confirmed (double opt-in)
    held = "held"  # confirmed, waiting for the project office (address outside allowed_domains)
    paused = "paused"  # keeps the subscription, receives nothing until resumed


class LegalBasis(enum.StrEnum):
    """Why the service may hold a subscriber's data (DSGVO art. 6(1))."""

    consent = "consent"  # art. 6(1)(a): signed up and confirmed themselves
    public_task = "public_task"  # art. 6(1)(e): added by the office (import, console, API)


class SubscriberSource(enum.StrEnum):
    """How a subscriber came in."""

    signup = "signup"  # the public sign-up form
    csv_import = "import"  # a CSV file (office upload or ``notifier subscribers import``)
    api = "api"
    office = "office"  # the office console's form
    cli = "cli"
    unknown = "unknown"  # stored before provenance was recorded (migration 0011)


class ItemKind(enum.StrEnum):
    announcement = "announcement"
    update = "update"  # an entry of a news feed
    event = "event"  # one occurrence of a calendar event


class ItemStatus(enum.StrEnum):
    scheduled = "scheduled"  # waiting for send_at
    routed = "routed"  # outbox rows (or briefing queue rows) written
    cancelled = "cancelled"
    # Seen on the first poll of a new source: kept so it is not announced later, never sent.
    recorded = "recorded"
    # New from a source beyond its max_new_per_poll: waits for the office to release (→
    # scheduled) or discard (→ recorded) it.
    held = "held"


class OutboxState(enum.StrEnum):
    queued = "queued"
    sending = "sending"
    sent = "sent"
    deferred = "deferred"
    failed = "failed"
    cancelled = "cancelled"


def _enum(cls: type[enum.StrEnum]) -> Enum:
    # Stored as plain strings with a CHECK constraint; portable across SQLite and PostgreSQL.
    return Enum(
        cls,
        native_enum=False,
        length=32,
        validate_strings=True,
        values_callable=lambda e: [m.value for m in e],
    )


class Organisation(Base):
    __tablename__ = "organisations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(16), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[OrgKind] = mapped_column(_enum(OrgKind))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"))
    # Materialised path of keys, "/07232/072325001/07232201/": a subtree is a prefix match.
    path: Mapped[str] = mapped_column(String(400), index=True)
    depth: Mapped[int] = mapped_column(Integer)

    parent: Mapped[Organisation | None] = relationship(remote_side=[id])


class Topic(Base):
    __tablename__ = "topics"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    active: Mapped[bool] = mapped_column(default=True)


class Subscriber(Base):
    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[Role] = mapped_column(_enum(Role))
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    rhythm: Mapped[Rhythm] = mapped_column(_enum(Rhythm), default=Rhythm.immediate)
    # True: every topic, including ones added later. False: the rows in subscriptions.
    all_topics: Mapped[bool] = mapped_column(default=True)
    status: Mapped[SubscriberStatus] = mapped_column(
        _enum(SubscriberStatus), default=SubscriberStatus.active
    )
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # Part of every personal link: raising it revokes all links sent so far.
    token_version: Mapped[int] = mapped_column(Integer, default=0)
    # Provenance, set when the subscriber is created (or signs up again): the legal basis, the
    # way in, and who did it ("web", "office:buero", "api:crm", "cli:root (liste.csv)").
    basis: Mapped[LegalBasis] = mapped_column(
        _enum(LegalBasis), server_default=LegalBasis.public_task.value
    )
    source: Mapped[SubscriberSource] = mapped_column(
        _enum(SubscriberSource), server_default=SubscriberSource.unknown.value
    )
    actor: Mapped[str] = mapped_column(String(200), server_default="")

    organisation: Mapped[Organisation] = relationship()
    subscriptions: Mapped[list[Subscription]] = relationship(
        cascade="all, delete-orphan", order_by="Subscription.topic_key"
    )


class Subscription(Base):
    __tablename__ = "subscriptions"

    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True
    )
    topic_key: Mapped[str] = mapped_column(ForeignKey("topics.key"), primary_key=True, index=True)


class Item(Base):
    """A thing worth telling: an announcement now; feed updates and events later."""

    __tablename__ = "items"
    __table_args__ = (
        Index("ix_items_status_send_at", "status", "send_at"),
        Index("uq_items_source_key", "source", "external_key", unique=True),
        Index("ix_items_kind_starts_at", "kind", "starts_at"),
        Index("ix_items_source_series", "source", "series_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[ItemKind] = mapped_column(_enum(ItemKind))
    subject: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)  # Markdown
    # Empty lists mean "all": all topics, all roles; scope empty means the whole tree.
    topics: Mapped[list[str]] = mapped_column(JSON, default=list)
    scope: Mapped[list[str]] = mapped_column(JSON, default=list)  # organisation keys
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    important: Mapped[bool] = mapped_column(default=False)
    send_at: Mapped[datetime]
    status: Mapped[ItemStatus] = mapped_column(_enum(ItemStatus), default=ItemStatus.scheduled)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200))
    routed_at: Mapped[datetime | None]
    recipient_count: Mapped[int | None]
    source_file: Mapped[str | None] = mapped_column(String(500))
    # Items from sources (feeds, calendars): the source's name and the entry's key there.
    source: Mapped[str | None] = mapped_column(String(100))
    external_key: Mapped[str | None] = mapped_column(String(500))
    link: Mapped[str | None] = mapped_column(String(2000))
    published_at: Mapped[datetime | None]
    content_hash: Mapped[str | None] = mapped_column(String(64))
    # Events only.
    starts_at: Mapped[datetime | None]
    ends_at: Mapped[datetime | None]
    all_day: Mapped[bool] = mapped_column(default=False)
    location: Mapped[str | None] = mapped_column(String(500))
    event_cancelled: Mapped[bool] = mapped_column(default=False)
    change_count: Mapped[int] = mapped_column(Integer, default=0)
    # A recurring series is one item (announced once) whose ``recurrence`` holds the rule in
    # words' ingredients and the series' calendar text ("rule", "exdates", "last", "start",
    # "end", "ics"); its occurrences are items of their own with ``series_key`` = the series'
    # external key, never announced themselves (reminders, changes and cancellations are).
    series_key: Mapped[str | None] = mapped_column(String(500))
    recurrence: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # What each change notice tells: [{"n": change_count, "fields": {field: [old, new]}}].
    change_log: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))


# The rows a claim may take, as literal SQL: the partial index below and the claim's WHERE
# clause must say the same, for both databases to see that the index serves the claim.
OUTBOX_OPEN = "state IN ('queued', 'deferred', 'sending')"
# The rows worth a look: failed for good, or waiting for another attempt (ix_outbox_trouble).
OUTBOX_TROUBLE = "state IN ('failed', 'deferred')"


class OutboxMessage(Base):
    """One row per recipient and item; the single source of truth for what was sent."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("item_id", "subscriber_id", "notice", name="uq_outbox_item_subscriber"),
        UniqueConstraint("digest_id", name="uq_outbox_digest"),
        # The list of recent failures (failed and deferred rows by time); routing and sending
        # never touch it.
        Index(
            "ix_outbox_trouble",
            "updated_at",
            postgresql_where=text(OUTBOX_TROUBLE),
            sqlite_where=text(OUTBOX_TROUBLE),
        ),
        # Claims walk the open rows in id order without reading the (many) finished ones.
        Index(
            "ix_outbox_open",
            "id",
            postgresql_where=text(OUTBOX_OPEN),
            sqlite_where=text(OUTBOX_OPEN),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Exactly one of item_id (a message about one item) and digest_id (a briefing) is set.
    # No index of its own: uq_outbox_item_subscriber starts with item_id.
    item_id: Mapped[int | None] = mapped_column(ForeignKey("items.id"))
    digest_id: Mapped[int | None] = mapped_column(ForeignKey("digests.id", name="fk_outbox_digest"))
    # Which message about the item: "" (the item itself), "reminder:7", "changed:2",
    # "cancelled:3" ("cancelled" before issue 15), "restored:4".
    notice: Mapped[str] = mapped_column(String(40), default="")
    # NULL once the recipient is erased or the row is older than [retention] outbox_days: the
    # row still counts for the statistics, but no longer says whom it went to.
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id"), index=True)
    state: Mapped[OutboxState] = mapped_column(_enum(OutboxState), default=OutboxState.queued)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    # Who holds the lease: one claim of one sender process (see queries.claim_batch). Outcomes
    # are written only by that claim, so a process whose lease ran out cannot overwrite a row
    # another process has claimed since.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    sent_at: Mapped[datetime | None]
    last_code: Mapped[int | None]
    last_reply: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(300))
    # The server refused the address itself (5xx at RCPT); counts towards suppression.
    bounced: Mapped[bool] = mapped_column(default=False)


class BriefingQueue(Base):
    """Items waiting for a subscriber's next daily or weekly briefing."""

    __tablename__ = "briefing_queue"

    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True
    )
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), primary_key=True, index=True)
    queued_at: Mapped[datetime]


class Digest(Base):
    """One briefing of one subscriber; its items are in digest_items."""

    __tablename__ = "digests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # NULL once the subscriber is erased (see OutboxMessage.subscriber_id).
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id"), index=True)
    rhythm: Mapped[Rhythm] = mapped_column(_enum(Rhythm))
    slot_at: Mapped[datetime]
    created_at: Mapped[datetime]


class DigestItem(Base):
    __tablename__ = "digest_items"

    digest_id: Mapped[int] = mapped_column(
        ForeignKey("digests.id", ondelete="CASCADE"), primary_key=True
    )
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), primary_key=True, index=True)


class SourceState(Base):
    """What the service remembers of each configured source between polls."""

    __tablename__ = "sources"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    initialized: Mapped[bool] = mapped_column(default=False)
    etag: Mapped[str | None] = mapped_column(String(500))
    last_modified: Mapped[str | None] = mapped_column(String(100))
    last_poll_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)


class ScheduleState(Base):
    """The last slot a cron-driven job (a briefing rhythm) has handled."""

    __tablename__ = "schedule_state"

    key: Mapped[str] = mapped_column(String(60), primary_key=True)
    last_slot_at: Mapped[datetime]


class RateBucket(Base):
    """A token bucket shared by every sender process: one row per configured rate limit.

    ``tokens`` are the messages that may go out now; they refill at the configured rate up to
    the bucket's size. ``updated_at`` is Unix time in seconds (the senders' clocks).
    """

    __tablename__ = "rate_buckets"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class SenderStatus(Base):
    """What one sender process knows of its SMTP server: reachable or not since when (and why,
    and how many messages were waiting then), and the largest message it takes (its SIZE).
    Written when that changes; ``updated_at`` is refreshed while the server is unreachable, so
    a row that stopped being refreshed belongs to a process that is gone."""

    __tablename__ = "sender_status"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)  # host:pid:random
    reachable: Mapped[bool]
    since: Mapped[datetime]
    reason: Mapped[str | None] = mapped_column(Text)
    waiting: Mapped[int | None]
    max_size: Mapped[int | None]
    updated_at: Mapped[datetime]


class InstallationValue(Base):
    """Values made once per database, such as the secret that keeps this installation's
    Message-IDs apart from another's (a copy of the database keeps them)."""

    __tablename__ = "installation"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ErasedAddress(Base):
    """An address whose owner asked to be erased (or was erased after unsubscribing), kept
    only as a salted hash (salt: ``installation.erasure_salt``), so that a later CSV import
    can say so instead of adding the person again."""

    __tablename__ = "erased_addresses"

    address_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(20))  # "request" or "retention"
    erased_at: Mapped[datetime]


class AuditEntry(Base):
    """Who changed what, when: imports, announcements, cancellations, organisation syncs."""

    __tablename__ = "audit_log"
    # An erasure finds the entries about one subscriber through it.
    __table_args__ = (Index("ix_audit_log_entity", "entity", "entity_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(60))
    entity: Mapped[str] = mapped_column(String(60))
    entity_id: Mapped[str | None] = mapped_column(String(100))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Consent(Base):
    """A sign-up's consent: what was agreed to, when, from where, and when it was confirmed."""

    __tablename__ = "consents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    text_version: Mapped[str] = mapped_column(String(40))
    text: Mapped[str] = mapped_column(Text)
    requested_at: Mapped[datetime]
    ip: Mapped[str] = mapped_column(String(45))
    confirmed_at: Mapped[datetime | None]


class User(Base):
    """A login of the project office: a local account (``notifier users add``) or a user of
    the Kreis's directory, made or updated at each login through it (:mod:`notifier.auth`)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    email: Mapped[str] = mapped_column(String(320), default="")
    # Empty for a user of the directory, who has no local password.
    password_hash: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime]
    last_login_at: Mapped[datetime | None]
    # "local" (notifier users add), "ldap" or "oidc": where the user logs in.
    source: Mapped[str] = mapped_column(String(10), default="local", server_default="local")
    # The user's identity in the directory: the LDAP DN, or the OpenID issuer and subject.
    external_id: Mapped[str | None] = mapped_column(String(500), unique=True)
    # Sessions that began before this time are over (set by logging out): a copied session
    # cookie stops working too, although the cookie itself is only signed, not stored.
    sessions_from: Mapped[datetime | None]


class LoginThrottle(Base):
    """Failed office logins of one client address, for one name or for all names together.

    ``key`` is a SHA-256 of the address and the name as typed, so the table holds neither, and a
    name that does not exist is throttled exactly like one that does. Rows of old failures are
    removed by the next login attempt.
    """

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(index=True)
    wait_until: Mapped[datetime | None]


class ApiToken(Base):
    """A bearer token of the JSON API (``notifier tokens add``); only its hash is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class BounceKind(enum.StrEnum):
    hard = "hard"  # 5.x.x: the address does not exist or refuses for good
    soft = "soft"  # 4.x.x: mailbox full, greylisting, temporary trouble
    complaint = "complaint"  # an ARF report: the recipient marked a message as spam
    unsubscribe = "unsubscribe"  # a mail to [mail] unsubscribe_mailto
    ignored = "ignored"  # an auto-reply, an out-of-office note, a delivery report of success
    unparseable = "unparseable"  # too big, no report inside, a forged token, broken MIME


class Bounce(Base):
    """One message that came back to the bounce address (or to unsubscribe_mailto).

    ``subscriber_id`` and ``outbox_id`` tie it to a person: erasing a person deletes its rows
    with one statement. ``raw`` (the message as received, at most [bounces] max_message_bytes)
    is cleared after keep_raw_days."""

    __tablename__ = "bounces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(index=True)
    source: Mapped[str] = mapped_column(String(10))  # "imap", "smtp" or "cli"
    kind: Mapped[BounceKind] = mapped_column(_enum(BounceKind))
    address: Mapped[str | None] = mapped_column(String(320), index=True)
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", name="fk_bounces_subscriber"), index=True
    )
    outbox_id: Mapped[int | None] = mapped_column(
        ForeignKey("outbox.id", name="fk_bounces_outbox"), index=True
    )
    status: Mapped[str | None] = mapped_column(String(16))  # the DSN status code, e.g. 5.1.1
    diagnostic: Mapped[str | None] = mapped_column(Text)
    # What was done: "suppressed", "counted", "unsubscribed", "none", or why it was left.
    action: Mapped[str] = mapped_column(String(200), default="")
    message_id: Mapped[str | None] = mapped_column(String(300))  # the incoming message's own
    size: Mapped[int] = mapped_column(Integer, default=0)
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Counts towards suppressing the address; an un-suppression by the office sets it false.
    counts: Mapped[bool] = mapped_column(default=True)


class ReachSnapshot(Base):
    """The reach of one day (the office's zone): how many are subscribed and how many
    Ortsgemeinden have their mayor among them. Written by the scheduler's leader at its start
    and every hour, so a day keeps its last figures; only counts, nothing about a person."""

    __tablename__ = "reach_snapshots"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    taken_at: Mapped[datetime]
    subscribers: Mapped[int] = mapped_column(Integer)  # active subscribers
    units_reached: Mapped[int] = mapped_column(Integer)  # units with an active subscriber
    mayors_reached: Mapped[int] = mapped_column(Integer)  # Ortsgemeinden with an active mayor
    ortsgemeinden: Mapped[int] = mapped_column(Integer)  # Ortsgemeinden in the tree
    # Per Verbandsgemeinde key: [Ortsgemeinden reached, Ortsgemeinden in it].
    by_vg: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
