"""Delivery benchmark: the real ``notifier run`` path against an SMTP sink on loopback.

It drives the service only through stable interfaces: the ``notifier`` CLI, the ``notifier run``
process, ``config.toml`` keys and the SQLite database file (read-only while the service runs).
See bench/README.md for what is measured and how to read the output. Entry point: ``bench/run``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from common import HOST, BenchError, fmt_int, log, terminate
from project import make_project, snapshot
from raw import RAW_MAX, RAW_ROUNDS, measure_raw
from report import FLOOR_N, report, report_signed, verdict_word
from seeding import CLI_SAMPLE, seed
from service import Result, run_e2e
from signed import openssl_sign_rate, signed_project
from sink import Sink
from storm import IMPORT_ROWS, STORM_CLIENTS, UNSUBSCRIBE_SHARE, report_storm, run_storm

FLAT_TOLERANCE = 1.2  # "flat": peak RSS at 100,000 at most this times the one at 10,000
FLAT_SIZES = (10_000, 100_000)


def bench_once(n: int, args: argparse.Namespace) -> Result:
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        sink = Sink(args.sink, notes)
        stack.callback(sink.stop)
        sink.start()
        log(f"sink: {sink.label} on {HOST}:{sink.port}")
        folder = Path(tempfile.mkdtemp(prefix="notifier-bench-"))
        if args.keep:
            log(f"keeping the project folder {folder}")
        else:
            stack.callback(shutil.rmtree, folder, True)
        delivery = {
            "connections": args.connections,
            "processes": args.processes,
            "batch_size": args.batch_size,
        }
        log(f"project folder {folder}: config, migrations, accepted [delivery] keys …")
        project = make_project(folder, sink.port, delivery)
        if project.rate_limits_lifted:
            notes.append(
                "config.toml's rate limits were set to 0 (no limit) for the benchmark: "
                + ", ".join(project.rate_limits_lifted)
            )
        log(f"seeding {fmt_int(n)} subscribers …")
        seeding = seed(project, n, args.seed, args.cli_budget)
        for line in seeding.lines:
            log(f"  {line}")
        seeded = folder / "seeded.db"
        if args.dkim != "off" or args.storm:
            snapshot(project.db, seeded)  # later runs start from the same subscribers
        raw = measure_raw(sink, min(n, RAW_MAX), args.raw_connections, args.raw_rounds)
        log(f"raw: {fmt_int(raw.rate)} msg/s")
        result = Result(
            n=n,
            sink_label=sink.label,
            raw=raw,
            seeding=seeding,
            delivery_applied=project.delivery_applied,
            delivery_refused=project.delivery_refused,
            notes=notes,
        )
        args_timeout = n / 50 + 120 if args.timeout is None else args.timeout
        run_args = argparse.Namespace(**{**vars(args), "timeout": args_timeout})
        run_e2e(result, project, sink, run_args)
        if args.dkim != "off" and result.complete:
            result.dkim_algorithm = {"rsa": "rsa-sha256", "both": "rsa-sha256+ed25519-sha256"}[
                args.dkim
            ]
            result.openssl_rate = openssl_sign_rate()
            log(f"OpenSSL RSA-2048: {fmt_int(result.openssl_rate)} signatures/s on one core")
            log("the signed run: a second project with a DKIM key, the seeded subscribers …")
            try:
                signed_folder = signed_project(
                    folder / "signed", sink.port, delivery, seeded, result.dkim_algorithm
                )
            except BenchError as exc:
                notes.append(f"the signed run was skipped: {exc}")
            else:
                result.signed = Result(
                    n=n,
                    sink_label=sink.label,
                    raw=raw,
                    seeding=seeding,
                    delivery_applied=signed_folder.delivery_applied,
                    delivery_refused=signed_folder.delivery_refused,
                )
                run_e2e(result.signed, signed_folder, sink, run_args)
        if args.storm and result.complete:
            result.storm = run_storm(folder, sink, delivery, seeded, result, run_args)
        return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description="End-to-end delivery benchmark of notifier against an SMTP sink on loopback "
        "(the floors of issue 4).",
    )
    parser.add_argument("--n", type=int, default=FLOOR_N, help="subscribers (default 100000)")
    parser.add_argument(
        "--flat",
        action="store_true",
        help="run N = 10,000 and N = 100,000 and compare peak RSS (ignores --n)",
    )
    parser.add_argument(
        "--sink", choices=("c", "python"), default="c", help="postfix smtp-sink or aiosmtpd"
    )
    parser.add_argument("--connections", type=int, default=16, help="[delivery] connections")
    parser.add_argument("--processes", type=int, default=2, help="[delivery] processes")
    parser.add_argument("--batch-size", type=int, default=500, help="[delivery] batch_size")
    parser.add_argument("--raw-connections", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument(
        "--raw-rounds",
        type=int,
        default=RAW_ROUNDS,
        help=f"rounds of the raw figure, the best counts (default {RAW_ROUNDS})",
    )
    parser.add_argument(
        "--seed",
        choices=("auto", "cli", "sql"),
        default="auto",
        help="subscribers through `notifier subscribers import` (cli), directly into SQLite "
        f"(sql), or auto: the first {fmt_int(CLI_SAMPLE)} through the CLI, timed, the rest "
        "too if that takes at most --cli-budget seconds, else directly",
    )
    parser.add_argument("--cli-budget", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--lead", type=float, default=4.0, help="seconds from announcing to send_at (default 4)"
    )
    parser.add_argument(
        "--poll", type=float, default=0.2, help="seconds between database polls (default 0.2)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="limit for the delivery phase in seconds (default N/50 + 120)",
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=60.0,
        help="give up when nothing was sent for this many seconds (default 60)",
    )
    parser.add_argument(
        "--dkim",
        choices=("rsa", "both", "off"),
        default="rsa",
        help="after the unsigned run, the same announcement DKIM-signed: rsa-sha256 (rsa, the "
        "default), with a second ed25519-sha256 signature (both), or no signed run (off; "
        "--flat and --storm imply it)",
    )
    parser.add_argument(
        "--storm",
        action="store_true",
        help="after the unsigned run, the same announcement again under a click storm "
        "(preferences pages and one-click unsubscribes), then again during the office's CSV "
        "import with /healthz probed (issue 12; fresh copies of the seeded database)",
    )
    parser.add_argument(
        "--storm-clients",
        type=int,
        default=STORM_CLIENTS,
        help=f"concurrent clients of the storm (default {STORM_CLIENTS})",
    )
    parser.add_argument(
        "--storm-unsubscribe",
        type=float,
        default=UNSUBSCRIBE_SHARE,
        help=f"share of the storm's requests that unsubscribe (default {UNSUBSCRIBE_SHARE})",
    )
    parser.add_argument(
        "--storm-import-rows",
        type=int,
        default=IMPORT_ROWS,
        help=f"rows of the office's CSV import (default {IMPORT_ROWS}; 0: no import run)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="with --storm: record the service's main process with py-spy during the storm "
        "into FILE (collapsed stacks; summary: python bench/storm.py profile FILE)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary project folder")
    parser.add_argument(
        "--check", action="store_true", help="exit with status 3 if a figure is below its floor"
    )
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    if args.raw_rounds < 1:
        parser.error("--raw-rounds must be at least 1")
    if args.storm and args.flat:
        parser.error("--storm and --flat are separate runs")
    if args.storm_clients < 1 or not 0 <= args.storm_unsubscribe <= 1:
        parser.error("--storm-clients must be at least 1, --storm-unsubscribe within 0 … 1")
    if args.profile and not args.storm:
        parser.error("--profile needs --storm")
    if args.flat or args.storm:
        args.dkim = "off"  # the memory comparison and the storm need the unsigned runs only
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, terminate)  # also when started with SIGINT ignored
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    sizes: Iterator[int] = iter(FLAT_SIZES if args.flat else (args.n,))
    results: list[Result] = []
    all_verdicts: list[bool | None] = []
    try:
        for n in sizes:
            result = bench_once(n, args)
            all_verdicts += report(result)
            all_verdicts += report_signed(result)
            if result.storm is not None:
                all_verdicts += report_storm(result, result.storm)
            results.append(result)
            if not result.complete:
                break
    except KeyboardInterrupt:
        log("interrupted: everything started was stopped")
        return 130
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    if args.flat and len(results) == len(FLAT_SIZES):
        small, large = (r.memory.tree_peak_mb if r.memory else math.nan for r in results)
        flat = large <= small * FLAT_TOLERANCE
        all_verdicts.append(flat)
        print()
        print(
            f"flat memory: peak RSS {small:.1f} MB at N = {fmt_int(FLAT_SIZES[0])}, "
            f"{large:.1f} MB at N = {fmt_int(FLAT_SIZES[1])} (ratio {large / small:.2f}, "
            f"flat means ≤ {FLAT_TOLERANCE:.2f})  {verdict_word(flat)}"
        )
    if not results or not results[-1].complete:
        return 1
    return 3 if args.check and not all(all_verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
