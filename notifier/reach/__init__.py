"""Reach: whom the service reaches in the tree (mayors, staff, council members, topics), and
how that develops day by day. The computation lives here; the office page, the CLI and the
JSON API only present it; the SQL is in :mod:`notifier.db.reach`."""

from .figures import (
    GroupReach,
    ReachReport,
    UnitReach,
    compute,
    not_reached_csv,
    read,
)
from .history import DAYS_SHOWN, SNAPSHOT_SECONDS, history, take_snapshot

__all__ = [
    "DAYS_SHOWN",
    "SNAPSHOT_SECONDS",
    "GroupReach",
    "ReachReport",
    "UnitReach",
    "compute",
    "history",
    "not_reached_csv",
    "read",
    "take_snapshot",
]
