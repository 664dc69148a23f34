"""The throw-away project folder: config.toml written for the benchmark, the notifier CLI run
against it, and read-only queries on its SQLite database."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import HOST, REPO, BenchError, run_cmd
from seeding import insert_sql

# Delivery keys the parallel engine work adds; written only if the installed notifier accepts
# them (an unknown key stops `notifier` with "key 'delivery.X': unknown key").
OPTIONAL_DELIVERY_KEYS = ("connections", "processes")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise BenchError(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def dump_toml(data: dict[str, Any]) -> str:
    """Enough TOML for config.toml: tables, arrays of tables, scalars, lists, inline tables."""
    out: list[str] = []

    def table(path: list[str], body: dict[str, Any], header: str | None) -> None:
        plain = {
            k: v for k, v in body.items() if not isinstance(v, dict) and not _is_table_array(v)
        }
        if header is not None:
            out.append(header)
        out.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in plain.items())
        out.append("")
        for key, value in body.items():
            sub = [*path, _toml_key(key)]
            if isinstance(value, dict):
                table(sub, value, f"[{'.'.join(sub)}]")
            elif _is_table_array(value):
                for entry in value:
                    table(sub, entry, f"[[{'.'.join(sub)}]]")

    table([], data, None)
    text = "\n".join(out).strip() + "\n"
    if tomllib.loads(text) != data:
        raise BenchError("internal error: the written config does not read back the same")
    return text


def snapshot(db: Path, to: Path) -> None:
    """A consistent copy of a SQLite file (WAL included), through SQLite's backup API."""
    with (
        contextlib.closing(sqlite3.connect(db)) as src,
        contextlib.closing(sqlite3.connect(to)) as dst,
    ):
        src.backup(dst)


@dataclass
class Project:
    """A throw-away project folder: config.toml, the SQLite file, CSVs, the service log."""

    folder: Path
    notifier: Path
    env: dict[str, str]
    delivery_applied: dict[str, Any] = field(default_factory=dict)
    delivery_refused: list[str] = field(default_factory=list)
    rate_limits_lifted: list[str] = field(default_factory=list)
    # Another database than the SQLite file in the folder (bench/cluster.py: PostgreSQL): its
    # URL, how to watch it and how to insert subscribers directly.
    database_url: str = ""
    watcher_factory: Callable[[Project], Any] | None = None
    cpu_groups: dict[str, Callable[[], int]] = field(default_factory=dict)
    direct_insert: Callable[[Project, Sequence[Sequence[str]]], None] | None = None

    @property
    def config(self) -> Path:
        return self.folder / "config.toml"

    @property
    def db(self) -> Path:
        return self.folder / "notifier.db"

    def watcher(self) -> Any:
        """Read-only queries on the service's database (see :class:`Watcher`)."""
        return Watcher(self.db) if self.watcher_factory is None else self.watcher_factory(self)

    def restore(self, seeded: Path) -> None:
        """Replace the project's database with a copy of ``seeded`` (see :func:`snapshot`)."""
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.db}{suffix}").unlink(missing_ok=True)
        snapshot(seeded, self.db)

    def insert_rows(self, rows: Sequence[Sequence[str]]) -> None:
        if self.direct_insert is None:
            insert_sql(self.db, rows)
        else:
            self.direct_insert(self, rows)

    def cli(self, *args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_cmd(
            [self.notifier, "--config", self.config, *args], timeout=timeout, env=self.env
        )

    def cli_ok(self, *args: str | Path, timeout: float = 300) -> str:
        result = self.cli(*args, timeout=timeout)
        if result.returncode != 0:
            shown = " ".join(str(a) for a in args)
            raise BenchError(
                f"`notifier {shown}` failed ({result.returncode}): "
                + (result.stderr.strip() or result.stdout.strip())[-2000:]
            )
        return result.stdout


def make_project(
    folder: Path,
    port: int,
    delivery: dict[str, Any],
    database_url: str = "",
    sections: dict[str, dict[str, Any]] | None = None,
) -> Project:
    notifier = Path(sys.executable).parent / "notifier"
    if not notifier.exists():
        raise BenchError(f"{notifier} not found: run bench/run, which installs the project")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env["PYTHONUNBUFFERED"] = "1"
    project = Project(folder, notifier, env, database_url=database_url)

    config = tomllib.loads((REPO / "config.toml").read_text(encoding="utf-8"))
    config.pop("sources", None)  # no feeds or calendars: nothing but the announcement
    url = database_url or f"sqlite+aiosqlite:///{project.db}"
    config["database"] = {**config.get("database", {}), "url": url}
    smtp = {k: v for k, v in config.get("smtp", {}).items() if k not in ("user", "password")}
    config["smtp"] = {**smtp, "catcher": False, "host": HOST, "port": port, "tls": "none"}
    config["catcher"] = {**config.get("catcher", {}), "directory": str(folder / "mails")}
    # The checkout's templates and example texts: the package's own, whichever notifier runs
    # (an empty key means the packaged ones; an older notifier reads them from the checkout).
    paths = {**config.get("paths", {}), "templates": ""}
    if (REPO / "notifier" / "templates").is_dir():
        paths["data"] = str(folder)  # the secret key beside the database
    else:
        paths["templates"] = str(REPO / "templates")
    config["paths"] = paths
    if "legal" in config:
        config["legal"] = {k: str(REPO / v) if v else "" for k, v in config["legal"].items()}
    if "web" in config:  # the web application runs as it does by default, on a free port
        config["web"] = {**config["web"], "port": 0}
    for name, values in (sections or {}).items():  # e.g. [dkim] for the signed run
        config[name] = {**config.get(name, {}), **values}
    wanted = dict(delivery)
    for key, value in config.get("delivery", {}).items():
        if key.startswith("rate_") and value:
            # A provider's rate limit would measure the limit, not the engine.
            wanted[key] = 0
            project.rate_limits_lifted.append(f"{key} = {value}")
    # Find out which delivery keys this notifier accepts: `status` names the first unknown key.
    for _ in range(len(wanted) + 1):
        config["delivery"] = {**config.get("delivery", {}), **wanted}
        project.config.write_text(dump_toml(config), encoding="utf-8")
        result = project.cli("status", timeout=120)
        if result.returncode == 0:
            break
        message = (result.stderr or result.stdout).strip()
        refused = re.search(r"key 'delivery\.(\w+)': unknown key", message)
        if refused and refused.group(1) in wanted and refused.group(1) in OPTIONAL_DELIVERY_KEYS:
            key = refused.group(1)
            project.delivery_refused.append(key)
            del wanted[key]
            config["delivery"].pop(key, None)
            continue
        raise BenchError(f"the benchmark's config is refused: {message[-1500:]}")
    else:
        raise BenchError("could not find a config the installed notifier accepts")
    project.delivery_applied = wanted
    return project


# --------------------------------------------------------------------------------------------
# the project's database, read-only


def _unix(column: str) -> str:
    """SQL for a stored UTC datetime (any ISO form) as Unix seconds (millisecond precision)."""
    return f"(julianday({column}) - 2440587.5) * 86400.0"


# The outbox's rows, and those still to be sent (the service's partial index ix_outbox_open).
PROGRESS_SQL = (
    "SELECT (SELECT COUNT(*) FROM outbox),"
    " (SELECT COUNT(*) FROM outbox WHERE state IN ('queued', 'deferred', 'sending'))"
)


class Watcher:
    """Read-only queries on the service's SQLite file."""

    def __init__(self, db: Path) -> None:
        self.con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        self.con.isolation_level = None  # autocommit: never hold a read transaction open

    def states(self) -> dict[str, int]:
        return dict(self.con.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"))

    def progress(self) -> tuple[int, int]:
        """(rows, open rows): polled often, so only what the indexes answer cheaply; counting
        by state reads every row, which would cost the machine more than it measures."""
        row = self.con.execute(PROGRESS_SQL).fetchone()
        return int(row[0]), int(row[1])

    def item(self, item_id: int) -> tuple[str, float, float | None, int | None]:
        row = self.con.execute(
            f"SELECT status, {_unix('send_at')}, {_unix('routed_at')}, recipient_count"  # noqa: S608
            " FROM items WHERE id = ?",
            (item_id,),
        ).fetchone()
        if row is None:
            raise BenchError(f"item {item_id} is not in the database")
        return row[0], row[1], row[2], row[3]

    def last_item_id(self) -> int | None:
        row = self.con.execute("SELECT MAX(id) FROM items").fetchone()
        return None if row is None else row[0]

    def sent_span(self) -> tuple[float | None, float | None, int]:
        row = self.con.execute(
            f"SELECT MIN({_unix('sent_at')}), MAX({_unix('sent_at')}), COUNT(sent_at)"  # noqa: S608
            " FROM outbox WHERE state = 'sent'"
        ).fetchone()
        return row[0], row[1], row[2]

    def failures(self, limit: int = 3) -> list[tuple[str, int | None, str | None]]:
        return self.con.execute(
            "SELECT state, last_code, last_reply FROM outbox"
            " WHERE state IN ('failed', 'deferred') AND last_reply IS NOT NULL LIMIT ?",
            (limit,),
        ).fetchall()

    def close(self) -> None:
        self.con.close()
