"""The writer lock: one snapshot, prune or repair at a time.

``locks/writer`` is created with O_EXCL and holds JSON: owner, pid, host,
command and the time it was taken. A lock whose process is gone on this host
is stale and is removed by the next writer (as borg does for same-host locks);
a lock from another host is only removed by ``toolkit unlock``.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from catalog.errors import Locked

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LockInfo:
    owner: str
    pid: int
    host: str
    command: str
    since: str

    @property
    def is_stale_here(self) -> bool:
        """True when the holder ran on this host and its process is gone."""
        return self.host == socket.gethostname() and not _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_path(root: Path) -> Path:
    return root / "locks" / "writer"


def read_lock(root: Path) -> LockInfo | None:
    try:
        data = json.loads(lock_path(root).read_text())
        return LockInfo(
            str(data["owner"]), int(data["pid"]), str(data["host"]), str(data["command"]), str(data["since"])
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        # A torn lock file (the writer died while creating it): treat as stale here.
        return LockInfo("unknown", 0, socket.gethostname(), "unknown", "unknown")


def _current_owner() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


@contextlib.contextmanager
def writer_lock(root: Path, command: str) -> Iterator[LockInfo]:
    """Hold the writer lock for the duration of the block."""
    path = lock_path(root)
    me = LockInfo(_current_owner(), os.getpid(), socket.gethostname(), command, datetime.now(UTC).isoformat())
    for _attempt in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            held = read_lock(root)
            if held is not None and held.is_stale_here:
                log.warning(
                    "removing a stale lock left by pid %s (%s), which is no longer running",
                    held.pid,
                    held.command,
                )
                path.unlink(missing_ok=True)
                continue
            if held is None:
                continue
            raise Locked(owner=held.owner, pid=held.pid, host=held.host, since=held.since) from None
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(me), f)
            f.flush()
            os.fsync(f.fileno())
        break
    else:
        held = read_lock(root) or me
        raise Locked(owner=held.owner, pid=held.pid, host=held.host, since=held.since)
    try:
        yield me
    finally:
        path.unlink(missing_ok=True)


def break_lock(root: Path, *, force: bool = False) -> LockInfo | None:
    """Remove the writer lock if it is stale (or always with ``force``); returns what was removed."""
    held = read_lock(root)
    if held is None:
        return None
    if not force and not held.is_stale_here:
        raise Locked(owner=held.owner, pid=held.pid, host=held.host, since=held.since)
    lock_path(root).unlink(missing_ok=True)
    return held
