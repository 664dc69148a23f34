"""Metrics in Prometheus' format: what the service counts (:mod:`.instruments`), where the
processes of one machine keep it (:mod:`.directory`) and how a scrape reads it
(:mod:`.exposition`, served as ``GET /metrics`` by :mod:`.web`)."""

from .instruments import Instruments, configure, current, directory

__all__ = ["Instruments", "configure", "current", "directory"]
