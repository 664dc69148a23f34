"""The scrape: every process's metrics of this machine, and what the database knows now."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..db import Database
from ..db.scrape import SourceHealth, outbox_by_state, source_health
from . import instruments
from .directory import forget_dead


class _Snapshot(Collector):
    """Gauges read from the database just before the scrape (collectors cannot await)."""

    def __init__(self, outbox: dict[str, int], sources: list[SourceHealth], now: datetime):
        self.outbox = outbox
        self.sources = sources
        self.now = now

    def collect(self) -> Iterable[GaugeMetricFamily]:
        outbox = GaugeMetricFamily(
            "notifier_outbox_messages",
            "Outbox rows by state (queued, sending, deferred, failed), read at the scrape.",
            labels=["state"],
        )
        for state, count in self.outbox.items():
            outbox.add_metric([state], count)
        yield outbox
        at = GaugeMetricFamily(
            "notifier_source_last_success_timestamp_seconds",
            "Unix time of each source's last successful poll.",
            labels=["source"],
        )
        age = GaugeMetricFamily(
            "notifier_source_last_success_age_seconds",
            "Seconds since each source's last successful poll, at the scrape.",
            labels=["source"],
        )
        failing = GaugeMetricFamily(
            "notifier_source_failing",
            "1 if the source's last poll failed.",
            labels=["source"],
        )
        for source in self.sources:
            if source.last_success_at is not None:
                at.add_metric([source.name], source.last_success_at.timestamp())
                age.add_metric(
                    [source.name], max((self.now - source.last_success_at).total_seconds(), 0)
                )
            failing.add_metric([source.name], 1 if source.failing else 0)
        yield at
        yield age
        yield failing


def _with_zone(at: datetime | None) -> datetime | None:
    from datetime import UTC

    return at if at is None or at.tzinfo is not None else at.replace(tzinfo=UTC)


async def scrape(db: Database, now: datetime) -> bytes:
    """The text a scrape answers: the metrics of every process writing into this process's
    multiprocess directory (or this process's own), and the database's gauges."""
    async with db.reading() as session:
        outbox = {state.value: count for state, count in (await outbox_by_state(session)).items()}
        sources = [
            SourceHealth(s.name, _with_zone(s.last_success_at), s.failing)
            for s in await source_health(session)
        ]
    registry = CollectorRegistry(auto_describe=False)
    directory = instruments.directory()
    if directory is not None:
        forget_dead(directory)
        multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    else:
        registry.register(_Own(instruments.current().registry))
    registry.register(_Snapshot(outbox, sources, _with_zone(now) or now))
    return generate_latest(registry)


class _Own(Collector):
    """This process's own registry (single-process mode)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self.registry.collect()  # type: ignore[misc]
