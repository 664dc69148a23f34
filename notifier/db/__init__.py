"""Storage layer: engine and sessions, tables, named queries, migrations."""

from .engine import Database

__all__ = ["Database"]
