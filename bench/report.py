"""The report: each figure beside its floor with PASS or BELOW, and the details below."""

from __future__ import annotations

import os
import subprocess

from common import HOST, REPO, fmt_int, run_cmd
from procfs import CLK_TCK, OTHER_CPU_LIMIT
from raw import RAW_MAX
from service import Result

# The floors of issue 4 ("Performance floor"), defined at N = 100,000 with the C sink.
FLOOR_N = 100_000
FLOOR_E2E_RATE = 1_500.0  # messages/s end to end
FLOOR_RATIO = 0.9  # end to end / raw aiosmtplib, same run
FLOOR_ROUTING_S = 5.0  # send_at -> N recipients in the outbox
FLOOR_FIRST_S = 1.0  # send_at -> first message sent
FLOOR_RSS_MB = 200.0  # peak RSS of the notifier process tree
# Issue 14 (DKIM), in the same run: the signed end to end against the unsigned one, and the
# CPU a signature adds per message against one OpenSSL RSA-2048 signature of this machine.
FLOOR_SIGNED_RATIO = 0.45
FLOOR_SIGN_CPU = 1.5  # extra CPU per signed message, in OpenSSL RSA-2048 signatures


def verdict_word(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "BELOW")


def report(result: Result) -> list[bool | None]:
    """Print the table; returns the verdict of each floor (None: not measurable)."""
    n = result.n
    raw = result.raw
    memory = result.memory
    rows: list[tuple[str, str, str, str]] = []
    verdicts: list[bool | None] = []

    def floor(name: str, value: float | None, unit: str, text: str, ok: bool | None) -> None:
        digits = 1 if unit == "MB" else 2
        shown = (
            "—" if value is None else (fmt_int(value) if unit == "msg/s" else f"{value:.{digits}f}")
        )
        rows.append((name, f"{shown} {unit}".strip(), text, verdict_word(ok)))
        verdicts.append(ok)

    e2e, ratio = result.e2e_rate, result.ratio
    floor("end to end (send_at → last sent)", e2e, "msg/s", f"≥ {fmt_int(FLOOR_E2E_RATE)} msg/s",
          None if e2e is None else e2e >= FLOOR_E2E_RATE)  # fmt: skip
    floor("end to end / raw aiosmtplib", ratio, "", f"≥ {FLOOR_RATIO:.2f}",
          None if ratio is None else ratio >= FLOOR_RATIO)  # fmt: skip
    routing = result.outbox_full_s
    floor(f"routing {fmt_int(n)} into the outbox", routing, "s", f"≤ {FLOOR_ROUTING_S:g} s",
          None if routing is None else routing <= FLOOR_ROUTING_S)  # fmt: skip
    first = result.first_sent_s
    floor("first message sent after send_at", first, "s", f"≤ {FLOOR_FIRST_S:g} s",
          None if first is None else first <= FLOOR_FIRST_S)  # fmt: skip
    rss = None if memory is None else memory.tree_peak_mb
    floor("peak RSS, notifier process tree", rss, "MB", f"≤ {FLOOR_RSS_MB:g} MB",
          None if rss is None else rss <= FLOOR_RSS_MB)  # fmt: skip
    rows.append(("raw aiosmtplib, same run", f"{fmt_int(raw.rate)} msg/s", "(reference)", ""))

    width = max(len(r[0]) for r in rows)
    print()
    print(f"notifier delivery benchmark: N = {fmt_int(n)} subscribers, one announcement to all")
    print(f"  sink:      {result.sink_label} on {HOST}")
    print(f"  machine:   {os.cpu_count()} cores; commit {git_revision()}")
    applied = ", ".join(f"{k} = {v}" for k, v in result.delivery_applied.items())
    print(f"  [delivery] {applied}")
    if result.delivery_refused:
        print(f"             not accepted by this notifier: {', '.join(result.delivery_refused)}")
    for line in result.seeding.lines:
        print(f"  seeding:   {line}")
    print(
        f"  raw:       aiosmtplib, {raw.connections} reused connections, prebuilt "
        f"{fmt_int(raw.size)}-byte message, {fmt_int(raw.messages)} messages"
        + (f" (fixed {fmt_int(RAW_MAX)}: N is larger)" if n > RAW_MAX else " (= N)")
        + " a round"
    )
    print(
        f"             best of {len(raw.seconds)} round(s): "
        + " / ".join(f"{fmt_int(r)}" for r in raw.rates)
        + f" msg/s; the sink counted {fmt_int(raw.sink_received)} of "
        + fmt_int(raw.messages * len(raw.seconds))
    )
    print()
    print(f"  {'figure':<{width}}  {'value':>12}  {'floor':<15} result")
    print(f"  {'-' * width}  {'-' * 12}  {'-' * 15} ------")
    for name, value, text, verdict in rows:
        print(f"  {name:<{width}}  {value:>12}  {text:<15} {verdict}")
    print()
    print("  details")

    def detail(label: str, value: str) -> None:
        print(f"    {label:<44} {value}")

    def secs(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f} s"

    steady = result.steady_rate
    detail("sending rate (first sent → last sent)", "—" if steady is None else
           f"{fmt_int(steady)} msg/s")  # fmt: skip
    detail("last message sent after send_at", secs(result.last_sent_s))
    detail("items.routed_at − send_at (service's record)", secs(result.routed_at_s))
    detail("recipients routed (items.recipient_count)",
           "—" if result.recipient_count is None else fmt_int(result.recipient_count))  # fmt: skip
    detail("sink: first message received after send_at", secs(result.sink_first_s))
    detail("sink: last message received after send_at", secs(result.sink_last_s))
    sink_rate = (
        None
        if result.sink_last_s is None or result.sink_last_s <= 0
        else result.sink_received / result.sink_last_s
    )
    detail("sink: end to end (send_at → last received)",
           "—" if sink_rate is None else f"{fmt_int(sink_rate)} msg/s")  # fmt: skip
    detail("sink: messages received in the e2e phase",
           f"{fmt_int(result.sink_received)} of {fmt_int(n)}")  # fmt: skip
    states = ", ".join(f"{k} {fmt_int(v)}" for k, v in sorted(result.states.items())) or "empty"
    detail("outbox at the end", states)
    detail("SMTP connections open at the sink (peak)", str(result.peak_connections))
    if memory is not None:
        detail("peak RSS: main process (VmHWM)", f"{memory.root_peak_mb:.1f} MB")
        detail("peak RSS: sum of VmRSS at one sample", f"{memory.max_rss_sum_kb / 1024:.1f} MB")
        detail("peak PSS: sum at one sample", f"{memory.max_pss_sum_kb / 1024:.1f} MB")
        detail("processes seen in the tree", str(len(memory.hwm_kb)))
    if result.cpu is not None:
        detail("CPU, delivery phase", result.cpu.describe())
    detail("CPU, raw phase", raw.cpu.describe())
    detail("service start until ready", secs(result.startup_s))
    detail("announcement stored before send_at by", secs(result.lead_s))
    detail("seeding took", secs(result.seeding.seconds))
    detail(
        "stop after SIGTERM",
        "did not exit within 20 s (killed)" if result.stop_s is None else secs(result.stop_s),
    )
    if result.killed:
        detail("processes left after the stop (killed)", " ".join(map(str, result.killed)))
    for state, code, reply in result.failures:
        detail(f"sample {state} reply", f"{code} {reply}")
    busy = [
        f"{name} phase {window.other_cores:.2f}"
        for name, window in (("raw", raw.cpu), ("delivery", result.cpu))
        if window is not None and window.other_cores > OTHER_CPU_LIMIT
    ]
    if busy:
        result.notes.append(
            "DISTURBED: other processes used CPU during the run (cores: "
            + ", ".join(busy)
            + "); the figures are lower than on an idle machine"
        )
    if not result.complete:
        result.notes.append("the run did not complete: throughput figures are not given")
    if n != FLOOR_N or "smtp-sink" not in result.sink_label:
        result.notes.append(
            f"the floors are defined at N = {fmt_int(FLOOR_N)} with the C sink: this run is "
            "indicative"
        )
    for note in result.notes:
        print(f"  NOTE: {note}")
    return verdicts


def report_signed(result: Result) -> list[bool | None]:
    """The DKIM table: the signed run beside the unsigned one of the same run."""
    signed = result.signed
    if signed is None:
        return []
    n = result.n
    verdicts: list[bool | None] = []
    rows: list[tuple[str, str, str, str]] = []

    def floor(name: str, shown: str, text: str, ok: bool | None) -> None:
        rows.append((name, shown, text, verdict_word(ok) if text else ""))
        if text:
            verdicts.append(ok)

    unsigned_rate, signed_rate = result.e2e_rate, signed.e2e_rate
    floor("end to end, unsigned (above)", "—" if unsigned_rate is None else
          f"{fmt_int(unsigned_rate)} msg/s", "", None)  # fmt: skip
    floor("end to end, signed", "—" if signed_rate is None else
          f"{fmt_int(signed_rate)} msg/s", "", None)  # fmt: skip
    ratio = None if unsigned_rate is None or signed_rate is None else signed_rate / unsigned_rate
    floor("signed / unsigned end to end", "—" if ratio is None else f"{ratio:.2f}",
          f"≥ {FLOOR_SIGNED_RATIO:.2f}", None if ratio is None else
          ratio >= FLOOR_SIGNED_RATIO)  # fmt: skip
    rate = result.openssl_rate
    one = None if not rate else 1000 / rate  # ms of CPU per signature
    floor("OpenSSL RSA-2048 signatures, one core", "—" if rate is None else
          f"{fmt_int(rate)}/s", "(reference)", None)  # fmt: skip
    rows[-1] = (*rows[-1][:3], f"{one:.3f} ms each" if one else "")
    extra = None
    if result.cpu is not None and signed.cpu is not None and result.complete and signed.complete:
        extra = (signed.cpu.tree - result.cpu.tree) / CLK_TCK / n * 1000  # ms per message
    limit = None if one is None else FLOOR_SIGN_CPU * one
    floor("extra CPU per signed message", "—" if extra is None else f"{extra:.3f} ms",
          "—" if limit is None else f"≤ {limit:.3f} ms", None if extra is None or limit is None
          else extra <= limit)  # fmt: skip
    rss = None if signed.memory is None else signed.memory.tree_peak_mb
    floor("peak RSS, notifier process tree, signed", "—" if rss is None else f"{rss:.1f} MB",
          f"≤ {FLOOR_RSS_MB:g} MB", None if rss is None else rss <= FLOOR_RSS_MB)  # fmt: skip

    width = max(len(r[0]) for r in rows)
    print()
    print(
        f"DKIM (issue 14): the same announcement signed ({result.dkim_algorithm}, 2048-bit RSA "
        "key), on a copy of the seeded database"
    )
    print(f"  {'figure':<{width}}  {'value':>12}  {'floor':<15} result")
    print(f"  {'-' * width}  {'-' * 12}  {'-' * 15} ------")
    for name, value, text, verdict in rows:
        print(f"  {name:<{width}}  {value:>12}  {text:<15} {verdict}")
    print()
    print("  details")
    cpu_ms = [None if r.cpu is None else r.cpu.tree / CLK_TCK / n * 1000 for r in (result, signed)]
    print(
        "    notifier CPU per message (delivery phase)   "
        + " / ".join("—" if c is None else f"{c:.3f} ms" for c in cpu_ms)
        + " (unsigned / signed)"
    )
    if signed.cpu is not None:
        print(f"    CPU, signed delivery phase                   {signed.cpu.describe()}")
        if signed.cpu.other_cores > OTHER_CPU_LIMIT:
            signed.notes.append(
                f"DISTURBED: other processes used {signed.cpu.other_cores:.2f} cores during "
                "the signed run"
            )
    steady = signed.steady_rate
    print(
        "    signed: sending rate (first → last sent)     "
        + ("—" if steady is None else f"{fmt_int(steady)} msg/s")
    )
    states = ", ".join(f"{k} {fmt_int(v)}" for k, v in sorted(signed.states.items()))
    print("    signed: outbox at the end                    " + (states or "empty"))
    for note in signed.notes:
        print(f"  NOTE: {note}")
    return verdicts


_REVISION: str | None = None


def git_revision() -> str:
    global _REVISION
    if _REVISION is None:
        try:
            head = run_cmd(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], timeout=10)
            dirty = run_cmd(["git", "-C", REPO, "status", "--porcelain", "notifier"], timeout=10)
            _REVISION = head.stdout.strip() or "unknown"
            if dirty.stdout.strip():
                _REVISION += " + uncommitted changes in notifier/"
        except (OSError, subprocess.SubprocessError):
            _REVISION = "unknown"
    return _REVISION
