"""The storage layer's contract, the same on every backend: a SQLite file and a real PostgreSQL
database (each test gets its own). The promises the rest of notifier builds on: the schema comes
from the migrations, and every guard holds when several processes (here: several engines, each
with its own connections) do the same work at the same moment."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import combinations

import pytest
from sqlalchemy import Connection, func, inspect, select, text

from notifier.briefings import run_due_briefings
from notifier.db import Database, queries
from notifier.db.engine import MIGRATIONS, head_revision
from notifier.db.leader import LeaderLock
from notifier.db.models import (
    BriefingQueue,
    Digest,
    DigestItem,
    Item,
    ItemStatus,
    OutboxMessage,
    OutboxState,
    Rhythm,
    Subscriber,
)
from notifier.routing import release_due

from .conftest import Project

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)  # a Monday
LEASE = timedelta(seconds=60)


def people(count: int, rhythm: str = "immediate") -> str:
    rows = "".join(
        f"p{i}@contract.example,Person {i},staff,Bitburg,,{rhythm}\n" for i in range(count)
    )
    return "email,name,role,organisation,topics,rhythm\n" + rows


def note(subject: str, send_at: str = "now") -> str:
    return f'+++\nsubject = "{subject}"\nsend_at = "{send_at}"\n+++\nText.\n'


@pytest.fixture
def store(project: Project, backend: str) -> Project:
    """The test project on the backend under test, migrated and holding the organisations."""
    project.write_config({"database": {"url": backend}})
    project.seed(None)
    return project


async def engines(url: str, count: int) -> list[Database]:
    return [Database(url, role=f"contract-{i}") for i in range(count)]


async def dispose(dbs: list[Database]) -> None:
    for db in dbs:
        await db.engine.dispose()


async def queued(store: Project, count: int, subject: str = "Rundschreiben") -> Database:
    """``count`` subscribers and one announcement routed to all: ``count`` queued rows."""
    await asyncio.to_thread(store.seed, store.write("people.csv", people(count)))
    await asyncio.to_thread(store.cli, "announce", store.write("a.md", note(subject)))
    db = Database(store.settings.database_url)
    routed = await release_due(db, datetime.now(UTC))
    assert routed == [(1, count)]
    return db


# -- schema ----------------------------------------------------------------------------------------


async def test_migrations_build_the_same_schema_and_may_run_at_once(backend: str) -> None:
    dbs = await engines(backend, 3)
    try:
        # Three processes starting together: one migrates, the others find nothing to do.
        await asyncio.gather(*(db.migrate() for db in dbs))
        await dbs[0].migrate()
        async with dbs[0].engine.connect() as connection:
            version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
            outbox = await connection.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("outbox")}
            )
            indexes = await connection.run_sync(
                lambda c: {ix["name"] for ix in inspect(c).get_indexes("outbox")}
            )
    finally:
        await dispose(dbs)
    # The newest migration file (by its number) is the schema's version.
    newest = sorted(p.name for p in (MIGRATIONS / "versions").glob("0*.py"))[-1]
    assert version == head_revision() == newest[:4]
    assert {"outbox", "items", "subscribers", "rate_buckets", "schedule_state"} <= tables
    assert {"lease_until", "lease_owner", "bounced"} <= outbox
    assert {"ix_outbox_open", "ix_outbox_trouble"} <= indexes
    assert "ix_outbox_state_next" not in indexes  # routing and sending no longer touch it
    assert "ix_outbox_item_id" not in indexes  # uq_outbox_item_subscriber serves item_id


# -- routing ---------------------------------------------------------------------------------------


async def test_racing_releases_route_an_item_once(store: Project) -> None:
    await asyncio.to_thread(store.seed, store.write("people.csv", people(40)))
    await asyncio.to_thread(store.cli, "announce", store.write("a.md", note("Einmal")))
    dbs = await engines(store.settings.database_url, 3)
    try:
        results = await asyncio.gather(*(release_due(db, datetime.now(UTC)) for db in dbs))
        async with dbs[0].transaction() as session:
            rows = await session.scalar(select(func.count()).select_from(OutboxMessage))
            item = await session.get_one(Item, 1)
    finally:
        await dispose(dbs)
    assert sorted(results, key=len) == [[], [], [(1, 40)]]
    assert rows == 40
    assert item.status is ItemStatus.routed and item.recipient_count == 40


# -- claiming --------------------------------------------------------------------------------------


async def test_racing_claims_get_disjoint_batches_and_together_everything(store: Project) -> None:
    db = await queued(store, 300)
    dbs = await engines(store.settings.database_url, 4)

    async def claimer(index: int, engine: Database) -> list[int]:
        got: list[int] = []
        for n in range(100):
            owner = f"claimer-{index}:{n}"
            batch = await engine.write(
                lambda c, owner=owner: queries.claim_batch(c, T0, 17, LEASE, owner)
            )
            if not batch:
                return got
            got += [c.id for c in batch]
            assert all(c.owner == f"claimer-{index}:{n}" for c in batch)
            await asyncio.sleep(0)
        return got

    try:
        claims = await asyncio.gather(*(claimer(i, e) for i, e in enumerate(dbs)))
        async with db.transaction() as session:
            states = Counter(await session.scalars(select(OutboxMessage.state)))
            attempts = set(await session.scalars(select(OutboxMessage.attempts)))
    finally:
        await dispose([db, *dbs])
    for a, b in combinations(claims, 2):
        assert not set(a) & set(b)
    assert sorted(i for c in claims for i in c) == list(range(1, 301))
    assert states == {OutboxState.sending: 300}
    assert attempts == {1}


async def test_expired_lease_is_taken_over_and_the_old_claim_changes_nothing(
    store: Project,
) -> None:
    db = await queued(store, 3)
    try:
        first = await db.write(lambda c: queries.claim_batch(c, T0, 10, LEASE, "old:1"))
        early = T0 + LEASE / 2
        assert await db.write(lambda c: queries.claim_batch(c, early, 10, LEASE, "x:1")) == []
        # The old process is presumed dead once its lease has run out.
        later = T0 + LEASE + timedelta(seconds=1)
        second = await db.write(lambda c: queries.claim_batch(c, later, 10, LEASE, "new:1"))
        assert [c.id for c in second] == [c.id for c in first]
        assert [c.attempts for c in second] == [2, 2, 2]
        # The old process wakes up: its outcomes and its hand-back must not touch the rows.
        late = [
            queries.Outcome(first[0].id, OutboxState.sent, later, 250, "ok", owner="old:1"),
            queries.Outcome(first[1].id, OutboxState.deferred, later, 451, "später", owner="old:1"),
        ]

        def old_process(connection: Connection) -> None:
            queries.record_outcomes(connection, late)
            queries.release(connection, [(first[2].id, "old:1")], later)

        await db.write(old_process)
        async with db.transaction() as session:
            rows = {r.id: r for r in await session.scalars(select(OutboxMessage))}
        assert {r.state for r in rows.values()} == {OutboxState.sending}
        assert {r.lease_owner for r in rows.values()} == {"new:1"}
        # The new claim records what became of its messages, one outcome of each kind.
        done = later + timedelta(seconds=2)
        await db.write(
            lambda connection: queries.record_outcomes(
                connection,
                [
                    queries.Outcome(
                        second[0].id, OutboxState.sent, done, 250, "ok", "<m@x>", owner="new:1"
                    ),
                    queries.Outcome(
                        second[1].id,
                        OutboxState.deferred,
                        done,
                        451,
                        "später",
                        retry_at=done + LEASE,
                        owner="new:1",
                    ),
                    queries.Outcome(
                        second[2].id,
                        OutboxState.failed,
                        done,
                        550,
                        "unbekannt",
                        subscriber_id=second[2].subscriber_id,
                        owner="new:1",
                    ),
                ],
            )
        )
        async with db.transaction() as session:
            rows = {r.id: r for r in await session.scalars(select(OutboxMessage))}
    finally:
        await db.engine.dispose()
    sent, deferred, failed = (rows[c.id] for c in second)
    assert (sent.state, sent.sent_at, sent.message_id) == (OutboxState.sent, done, "<m@x>")
    assert (deferred.state, deferred.next_attempt_at) == (OutboxState.deferred, done + LEASE)
    assert (failed.state, failed.last_code, failed.bounced) == (OutboxState.failed, 550, True)
    assert {r.lease_owner for r in rows.values()} == {None}
    assert {r.lease_until for r in rows.values()} == {None}


async def test_release_hands_back_its_own_claims_without_counting_an_attempt(
    store: Project,
) -> None:
    db = await queued(store, 4)
    try:
        batch = await db.write(lambda c: queries.claim_batch(c, T0, 4, LEASE, "me:1"))
        claims = [(c.id, c.owner) for c in batch[:3]]
        await db.write(lambda c: queries.release(c, claims, T0))
        async with db.transaction() as session:
            rows = list(await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))
    finally:
        await db.engine.dispose()
    assert [(r.state, r.attempts, r.lease_owner) for r in rows] == [
        (OutboxState.queued, 0, None),
        (OutboxState.queued, 0, None),
        (OutboxState.queued, 0, None),
        (OutboxState.sending, 1, "me:1"),
    ]


# -- the scheduler's guards ------------------------------------------------------------------------


async def test_slot_state_moves_once_when_raced(backend: str) -> None:
    dbs = await engines(backend, 4)
    try:
        await dbs[0].migrate()

        async def move(db: Database, previous: datetime | None, slot: datetime) -> bool:
            async with db.transaction() as session:
                return await queries.set_slot_state(session, "reminder:1:7", previous, slot)

        first = await asyncio.gather(*(move(db, None, T0) for db in dbs))
        later = T0 + timedelta(days=1)
        second = await asyncio.gather(*(move(db, T0, later) for db in dbs))
        async with dbs[0].transaction() as session:
            state = await queries.slot_state(session, "reminder:1:7")
    finally:
        await dispose(dbs)
    assert sorted(first) == [False, False, False, True]
    assert sorted(second) == [False, False, False, True]
    assert state == later


async def test_racing_briefing_builds_put_each_item_in_one_briefing(store: Project) -> None:
    """Daily and weekly slots of the same Monday built at once by two processes: someone who
    switched to "immediate" meanwhile is in both builds' reach, and still gets one briefing."""
    csv = people(5, "daily") + "w@contract.example,Wilma,staff,Bitburg,,weekly\n"
    await asyncio.to_thread(store.seed, store.write("people.csv", csv))
    for n in range(3):
        await asyncio.to_thread(store.cli, "announce", store.write(f"a{n}.md", note(f"M {n}")))
    dbs = await engines(store.settings.database_url, 2)
    try:
        assert [count for _, count in await release_due(dbs[0], datetime.now(UTC))] == [6, 6, 6]
        async with dbs[0].transaction() as session:
            switched = await session.scalar(
                select(Subscriber).where(Subscriber.email == "p0@contract.example")
            )
            assert switched is not None
            switched.rhythm = Rhythm.immediate
        now = datetime.now(UTC) + timedelta(seconds=1)

        async def build(db: Database, rhythm: Rhythm) -> int:
            async with db.transaction() as session:
                return await queries.build_briefings(session, rhythm, now, now)

        built = await asyncio.gather(build(dbs[0], Rhythm.daily), build(dbs[1], Rhythm.weekly))
        async with dbs[0].transaction() as session:
            per_subscriber = Counter(
                (
                    await session.execute(
                        select(Digest.subscriber_id, DigestItem.item_id).join(
                            DigestItem, DigestItem.digest_id == Digest.id
                        )
                    )
                ).all()
            )
            waiting = await session.scalar(select(func.count()).select_from(BriefingQueue))
            outbox = await session.scalar(
                select(func.count())
                .select_from(OutboxMessage)
                .where(OutboxMessage.digest_id.is_not(None))
            )
    finally:
        await dispose(dbs)
    # 4 daily + p0 (switched) + the weekly one: 6 briefings, each item once per subscriber.
    assert sum(built) == 6 and outbox == 6
    assert set(per_subscriber.values()) == {1}
    assert len(per_subscriber) == 6 * 3
    assert waiting == 0


async def test_racing_briefing_checks_build_each_slot_once(store: Project) -> None:
    await asyncio.to_thread(store.seed, store.write("people.csv", people(5, "daily")))
    settings = store.settings
    dbs = await engines(settings.database_url, 3)
    try:
        sunday = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
        assert await run_due_briefings(dbs[0], settings, sunday) == {}
        await asyncio.to_thread(store.cli, "announce", store.write("a.md", note("Wochenstart")))
        await release_due(dbs[0], datetime.now(UTC))
        monday = datetime(2026, 12, 7, 6, 30, tzinfo=UTC)  # 07:30 in Berlin
        results = await asyncio.gather(*(run_due_briefings(db, settings, monday) for db in dbs))
        async with dbs[0].transaction() as session:
            digests = await session.scalar(select(func.count()).select_from(Digest))
    finally:
        await dispose(dbs)
    built = [(rhythm, count) for result in results for rhythm, count in result.items()]
    assert sorted(built) == [(Rhythm.daily, 5), (Rhythm.weekly, 0)]
    assert digests == 5


# -- shared rate limits ----------------------------------------------------------------------------


async def test_rate_buckets_hand_out_no_token_twice(backend: str) -> None:
    buckets = [queries.Bucket("per_second", 10, 10.0), queries.Bucket("per_hour", 25, 25 / 3600)]
    dbs = await engines(backend, 4)
    now = 1_800_000_000.0
    try:
        await dbs[0].migrate()

        async def take(db: Database, at: float) -> int:
            async with db.transaction() as session:
                granted, _ = await queries.take_tokens(session, buckets, 3, at)
                return granted

        burst = await asyncio.gather(*(take(db, now) for db in dbs for _ in range(3)))
        assert sum(burst) == 10  # the per-second bucket starts full
        async with dbs[0].transaction() as session:
            granted, wait = await queries.take_tokens(session, buckets, 1, now)
        assert granted == 0 and wait == pytest.approx(0.1)
        half = await asyncio.gather(*(take(db, now + 0.5) for db in dbs for _ in range(3)))
        assert sum(half) == 5
        # The hourly bucket has 10 left; half a second adds almost nothing to it.
        rest = await asyncio.gather(*(take(db, now + 5) for db in dbs for _ in range(3)))
        assert sum(rest) == 10
        async with dbs[0].transaction() as session:
            granted, wait = await queries.take_tokens(session, buckets, 1, now + 5)
            assert granted == 0 and wait == pytest.approx(3600 / 25, rel=0.05)
            await queries.give_back_tokens(session, buckets, 2, now + 5)
        assert await take(dbs[1], now + 5) == 2
    finally:
        await dispose(dbs)


# -- leadership ------------------------------------------------------------------------------------


async def test_leader_lock_has_one_holder_and_passes_on(backend: str) -> None:
    db = Database(backend)
    other = Database(backend)
    try:
        await db.migrate()
        first = LeaderLock(db, 4711, name="contract-a")
        second = LeaderLock(other, 4711, name="contract-b")
        if db.is_sqlite:
            # One service per SQLite file (see test_cluster.py): it always leads.
            assert await first.try_acquire() and await second.try_acquire()
            return
        assert await first.try_acquire()
        assert await first.try_acquire()  # asking again while holding it
        assert not await second.try_acquire()
        assert await first.holds()
        # The holder's session ends (as when its process dies): the lock is free at once.
        await first.release()
        assert not await first.holds()
        assert await second.try_acquire()
        assert not await first.try_acquire()
        await second.aclose()
        await first.aclose()
    finally:
        await db.engine.dispose()
        await other.engine.dispose()


# -- installation ----------------------------------------------------------------------------------


async def test_the_message_id_key_is_made_once_per_database(store: Project) -> None:
    db = Database(store.settings.database_url)
    try:
        async with db.transaction() as session:
            made = await queries.message_id_key(session)
        async with db.transaction() as session:
            assert await queries.message_id_key(session) == made
        assert len(made) == 32
        # A database that lost the row gets a new key instead of failing.
        async with db.transaction() as session:
            await session.execute(text("DELETE FROM installation"))
        async with db.transaction() as session:
            remade = await queries.message_id_key(session)
        async with db.transaction() as session:
            assert await queries.message_id_key(session) == remade != made
    finally:
        await db.engine.dispose()
