"""The writer lock: one snapshot, prune or repair at a time.

``locks/writer`` is created with O_EXCL and holds JSON: owner, pid, host,
command and the time it was taken. A lock whose process is gone on this host
is stale and is removed by the next writer (as borg does for same-host locks);
a lock from another host is only removed by ``toolkit unlock``.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from catalog.errors import Locked, StoreFull
from catalog.store import fsync_dir

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
    if pid <= 0:  # 0 or negative would address a process group, never one holder
        return False
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


def lock_info(command: str) -> LockInfo:
    """This process as a lock holder: owner, pid, host, ``command`` and now."""
    return LockInfo(_current_owner(), os.getpid(), socket.gethostname(), command, datetime.now(UTC).isoformat())


@contextlib.contextmanager
def writer_lock(root: Path, command: str) -> Iterator[LockInfo]:
    """Hold the writer lock for the duration of the block."""
    path = lock_path(root)
    me = LockInfo(_current_owner(), os.getpid(), socket.gethostname(), command, datetime.now(UTC).isoformat())
    # The lock appears whole or not at all: written under a private name, then hard-linked into place.
    draft = root / "locks" / f".writer.{uuid.uuid4().hex}"
    try:
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(me), f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        draft.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFull(path=path) from exc
        raise
    try:
        _take(root, path, draft, me)
    finally:
        draft.unlink(missing_ok=True)
    try:
        yield me
    finally:
        path.unlink(missing_ok=True)


def _take(root: Path, path: Path, draft: Path, me: LockInfo) -> None:
    for _attempt in range(2):
        try:
            os.link(draft, path)
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
        fsync_dir(path.parent)
        return
    held = read_lock(root) or me
    raise Locked(owner=held.owner, pid=held.pid, host=held.host, since=held.since)


def lock_age_s(held: LockInfo, now: datetime) -> float | None:
    try:
        return (now - datetime.fromisoformat(held.since)).total_seconds()
    except ValueError:
        return None


def break_lock(
    root: Path, *, force: bool = False, older_than_s: float | None = None, now: datetime | None = None
) -> LockInfo | None:
    """Remove the writer lock if it is stale: its process is gone from this host, or (with
    ``older_than_s``) it was taken longer ago than that; always with ``force``. Returns what was removed."""
    held = read_lock(root)
    if held is None:
        return None
    age = lock_age_s(held, now or datetime.now(UTC))
    too_old = older_than_s is not None and age is not None and age > older_than_s
    if not force and not too_old and not held.is_stale_here:
        raise Locked(owner=held.owner, pid=held.pid, host=held.host, since=held.since)
    lock_path(root).unlink(missing_ok=True)
    return held


def register_reader(root: Path, command: str) -> Path | None:
    """Announce a reader (verify, restore, listings) so prune does not delete packs under it.

    Returns the reader file to remove when done, or None when the repository is
    read-only to us (a reader that cannot announce itself still works).
    """
    me = LockInfo(_current_owner(), os.getpid(), socket.gethostname(), command, datetime.now(UTC).isoformat())
    path = root / "locks" / f"reader-{uuid.uuid4().hex}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(me), f)
    except OSError:
        path.unlink(missing_ok=True)
        return None
    return path


def live_readers(root: Path) -> list[LockInfo]:
    """Readers other than this process; stale reader files (a dead process on this host) are removed."""
    out = []
    for path in (root / "locks").glob("reader-*"):
        try:
            data = json.loads(path.read_text())
            held = LockInfo(
                str(data["owner"]), int(data["pid"]), str(data["host"]), str(data["command"]), str(data["since"])
            )
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if held.pid == os.getpid() and held.host == socket.gethostname():
            continue
        if held.is_stale_here:
            path.unlink(missing_ok=True)
            continue
        out.append(held)
    return out
