"""Parsing a fetched source in a separate process, with a time and a memory limit.

Parsing and expanding untrusted data is CPU work that would otherwise run on the event loop (a
4,778-event calendar took 2.3 s there) and that a hostile source can make endless
(``RRULE:FREQ=SECONDLY``). Each parse runs in a fresh ``python -m notifier.sources.worker``
process: a thread cannot be stopped, a process can. One that overruns its time limit is killed
(and the next parse starts a new one); its address space is capped, so it cannot take the
machine's memory either.

Protocol: the parent writes one JSON line (the request) followed by the raw body to the child's
stdin; the child writes one JSON document to stdout: ``{"entries": [...]}`` (a calendar adds
``"series"`` and ``"outside"``) or ``{"error": "…", "detail": "…"}`` (a German message for the
source's record, the technical cause for the log).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from ..errors import SourceError
from .calendar import CalendarEvent, CalendarSeries, ParsedCalendar, parse_calendar_full
from .feed import FeedEntry, parse_feed

__all__ = ["ParseLimits", "parse_isolated"]

_DATETIMES = frozenset({"published", "start", "end", "last"})


@dataclass(frozen=True)
class ParseLimits:
    """What one parse may take (see ``[sources]`` in the configuration)."""

    seconds: float
    memory_mb: int
    max_per_series: int
    max_per_calendar: int


async def parse_isolated(
    name: str,
    kind: str,
    body: bytes,
    limits: ParseLimits,
    *,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    tz: ZoneInfo | None = None,
    url: str | None = None,
) -> list[FeedEntry] | ParsedCalendar:
    """Parse ``body`` of source ``name`` (``kind`` "feed" or "calendar") in a worker process;
    a feed's relative links resolve against ``url``.

    Raises :class:`SourceError` for what the parsers refuse, for a parse over the time limit
    (the worker is killed) and for a worker that died (e.g. at its memory limit)."""
    request = {
        "name": name,
        "kind": kind,
        "window_start": window_start.isoformat() if window_start else None,
        "window_end": window_end.isoformat() if window_end else None,
        "tz": tz.key if tz else None,
        "url": url,
        "max_per_series": limits.max_per_series,
        "max_per_calendar": limits.max_per_calendar,
        "memory_mb": limits.memory_mb,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "notifier.sources.worker",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    payload = json.dumps(request).encode() + b"\n" + body
    try:
        async with asyncio.timeout(limits.seconds):
            out, err = await process.communicate(payload)
    except TimeoutError:
        raise SourceError(
            name,
            f"Auswerten abgebrochen: dauerte länger als {limits.seconds:g} Sekunden "
            "(Grenze parse_seconds)",
        ) from None
    finally:
        if process.returncode is None:  # timed out, or the caller was cancelled
            process.kill()
            await process.wait()
    try:
        answer = json.loads(out)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        memory = b"MemoryError" in err
        reason = (
            f"brauchte mehr als {limits.memory_mb} MB Speicher (Grenze parse_memory_mb)"
            if memory
            else f"Auswertung endete ohne Ergebnis (Code {process.returncode})"
        )
        last = err.decode("utf-8", "replace").strip().splitlines()[-1:]
        raise SourceError(
            name, f"Auswerten abgebrochen: {reason}", detail=last[0] if last else None
        )
    if "error" in answer:
        cause = answer.get("detail")
        raise SourceError(name, str(answer["error"]), detail=str(cause) if cause else None)
    if kind == "feed":
        return [FeedEntry(**_decode(e)) for e in answer["entries"]]
    return ParsedCalendar(
        events=[CalendarEvent(**_decode(e)) for e in answer["entries"]],
        series=[CalendarSeries(**_decode(e)) for e in answer.get("series", [])],
        outside=[CalendarEvent(**_decode(e)) for e in answer.get("outside", [])],
    )


def _encode(entry: FeedEntry | CalendarEvent | CalendarSeries) -> dict[str, Any]:
    data = asdict(entry)
    for key in _DATETIMES & data.keys():
        if data[key] is not None:
            data[key] = data[key].isoformat()
    return data


def _decode(data: dict[str, Any]) -> dict[str, Any]:
    for key in _DATETIMES & data.keys():
        if data[key] is not None:
            data[key] = datetime.fromisoformat(data[key])
    for key in ("categories", "exdates"):
        if key in data:
            data[key] = tuple(data[key])
    return data


def _limit_memory(megabytes: int) -> None:
    try:
        import resource
    except ImportError:  # not on POSIX: the time limit still holds
        return
    size = megabytes * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size, size))


def _work(request: dict[str, Any], body: bytes) -> dict[str, Any]:
    name = str(request["name"])
    if request["kind"] == "feed":
        return {"entries": [_encode(e) for e in parse_feed(name, body, request.get("url"))]}
    parsed = parse_calendar_full(
        name,
        body,
        window_start=datetime.fromisoformat(request["window_start"]),
        window_end=datetime.fromisoformat(request["window_end"]),
        tz=ZoneInfo(request["tz"]),
        max_per_series=int(request["max_per_series"]),
        max_per_calendar=int(request["max_per_calendar"]),
    )
    return {
        "entries": [_encode(e) for e in parsed.events],
        "series": [_encode(s) for s in parsed.series],
        "outside": [_encode(e) for e in parsed.outside],
    }


def main() -> None:
    """The worker process: one request from stdin, one answer to stdout."""
    data = sys.stdin.buffer.read()
    header, _, body = data.partition(b"\n")
    request = json.loads(header)
    _limit_memory(int(request["memory_mb"]))
    try:
        answer: dict[str, Any] = _work(request, body)
    except SourceError as exc:
        answer = {"error": exc.problem, "detail": exc.detail}
    except MemoryError:
        answer = {
            "error": f"Auswerten abgebrochen: brauchte mehr als {request['memory_mb']} MB "
            "Speicher (Grenze parse_memory_mb)"
        }
    sys.stdout.buffer.write(json.dumps(answer, ensure_ascii=False).encode())
    sys.stdout.flush()
    os._exit(0)  # nothing left to clean up; skip the interpreter's slow teardown


if __name__ == "__main__":
    main()
