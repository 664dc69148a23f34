"""The multiprocess directory: where the processes of one machine keep their metrics.

prometheus-client's multiprocess mode gives every process files of its own (``counter_<pid>.db``
and so on) and adds them up at the scrape. Counters of a process that ended stay (the totals
must not go down while others run); its live gauges are removed. Once no process that wrote
into the directory is alive, a start empties it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import multiprocess

logger = logging.getLogger(__name__)

_FILE = re.compile(r"^[a-z_]+_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def writers(directory: Path) -> set[int]:
    """The process ids that have files in ``directory``."""
    pids: set[int] = set()
    for path in directory.iterdir():
        match = _FILE.match(path.name)
        if match:
            pids.add(int(match.group(1)))
    return pids


@contextlib.contextmanager
def prepare_directory(directory: Path) -> Iterator[None]:
    """Make ``directory`` ready for this process's files; held locked against other starts
    until the block ends (the caller makes its files inside). Raises OSError."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        me = os.getpid()
        others = writers(directory) - {me}
        alive = {pid for pid in others if _alive(pid)}
        if not alive:
            for path in directory.iterdir():
                if _FILE.match(path.name):
                    path.unlink(missing_ok=True)
            logger.debug("metrics directory %s emptied", directory)
        else:
            for pid in others - alive:
                multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
        yield


def leave(directory: Path) -> None:
    """This process ends: its live gauges (scheduler leadership) no longer count."""
    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(os.getpid(), str(directory))  # type: ignore[no-untyped-call]


_LIVE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def forget_dead(directory: Path) -> None:
    """Remove the live gauges of processes that died without a clean stop (SIGKILL, a crash):
    a killed scheduler leader must not be shown leading. Called at each scrape (a listing)."""
    with contextlib.suppress(OSError):
        for path in directory.iterdir():
            match = _LIVE.match(path.name)
            if match and not _alive(int(match.group(1))):
                path.unlink(missing_ok=True)
