"""The writer lock: one snapshot, prune, repair or copy at a time.

``locks/writer`` appears whole or not at all (a finished draft hard-linked into place, which
fails when the name exists) and holds JSON: owner, pid, host, command, since, a random
``token`` and ``refreshed``. While the holder runs, a daemon thread writes the lock again every
:data:`HEARTBEAT_S` with the time in ``refreshed`` (a new draft renamed over it, only while it
still holds the holder's token).

A lock is stale, and the next writer removes it with a warning and takes it, when its holder ran
on this host and its process is gone (as borg judges same-host locks), or when it ran on another
host and was not refreshed for :data:`STALE_AFTER_S` by this host's clock (``since`` when it has
no ``refreshed``), as restic does. A lock whose time cannot be read is removed only by
``toolkit unlock``.

A holder that stalled long enough to lose its lock must not commit: before every commit it calls
:meth:`HeldLock.check`, which reads the lock and raises :class:`catalog.errors.LockLost` unless
it still holds the holder's token.

Readers (verify, restore, listings) take no lock; each announces itself as ``locks/reader-<random>``
so that prune keeps the packs under it (:class:`ReaderAnnouncement`, in a directory or an object
store). The announcement holds the same JSON (an empty ``token``) and is written again every
:data:`HEARTBEAT_S` while the reader runs; whoever lists the readers removes those whose reader is
gone (:func:`judge_readers`): by the rules above in a directory, and in an object store also an
announcement of this host not refreshed in time.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from catalog.errors import Error, Locked, LockLost, StoreFull
from catalog.store import fsync_dir

log = logging.getLogger(__name__)

# A holder writes its lock (and a reader its announcement) again this often (tests make it tiny). One small
# write every five minutes costs nothing, even for a job that runs for days, and keeps STALE_AFTER_S under an hour.
HEARTBEAT_S: Final = 300.0
# The times in a lock come from the holder's clock and are judged by another host's clock. S3 refuses a signed
# request whose time is more than 15 minutes off its own (RequestTimeTooSkewed; Ceph RGW and MinIO enforce the
# same window), so two hosts that both use a bucket are at most 30 minutes apart; hosts that share a directory
# repository are expected to keep their clocks at least as close (NTP).
MAX_CLOCK_SKEW_S: Final = 15 * 60.0
# A lock or announcement not refreshed for this long belongs to a process that died (kill -9, power loss, a host
# cut off): the worst skew between two hosts (2 x 15 min) plus three missed refreshes (15 min), which also covers
# a refresh slowed by the store's retries. 45 minutes.
STALE_AFTER_S: Final = 2 * MAX_CLOCK_SKEW_S + 3 * HEARTBEAT_S
# A withdrawing reader waits this long for a refresh in flight; a refresh that lands later removes what it wrote.
WITHDRAW_WAIT_S: Final = 10.0
READER_PREFIX: Final = "reader-"


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


def parse_lock(data: bytes) -> LockInfo:
    """The holder a lock names; one that does not parse (a torn file) is taken for a stale lock of this host."""
    try:
        d = json.loads(data)
        return LockInfo(str(d["owner"]), int(d["pid"]), str(d["host"]), str(d["command"]), str(d["since"]))
    except (ValueError, KeyError, TypeError):
        return LockInfo("unknown", 0, socket.gethostname(), "unknown", "unknown")


def lock_token(data: bytes | None) -> str | None:
    """The ``token`` a lock holds; None when there is no lock or it has none."""
    if data is None:
        return None
    try:
        token = json.loads(data).get("token")
    except (ValueError, AttributeError):
        return None
    return token if isinstance(token, str) and token else None


def refreshed_at(data: bytes, held: LockInfo) -> datetime | None:
    """When a lock or reader announcement was last written: ``refreshed``, else (older ones) ``since``.

    None when the time cannot be read (this program never writes such a one): the lock is kept.
    """
    try:
        stamp = json.loads(data).get("refreshed") or held.since
        at = datetime.fromisoformat(str(stamp))
    except (ValueError, TypeError, AttributeError):
        return None
    return at if at.tzinfo is not None else None  # a time without a zone could be any host's local time


def stale_reason(
    data: bytes, held: LockInfo, now: datetime, stale_after_s: float, *, what: str = "writer", any_host: bool = False
) -> str | None:
    """Why a writer lock (or a ``what``'s announcement) belongs to a process that is gone, or None while it may run.

    Gone: it ran on this host and its process no longer exists, or it ran on another host (on any
    host with ``any_host``) and was not refreshed for ``stale_after_s`` by ``now`` (this host's
    clock). Without ``any_host`` one of this host whose process still runs is never stale.
    """
    if held.is_stale_here:
        return "its process is no longer running"
    if held.host == socket.gethostname() and not any_host:
        return None
    at = refreshed_at(data, held)
    if at is None or (now - at).total_seconds() <= stale_after_s:
        return None
    return (
        f"not refreshed since {at.isoformat(timespec='seconds')}, more than {stale_after_s / 60:.0f} minutes ago, "
        f"so that {what} is gone"
    )


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def read_lock(root: Path) -> LockInfo | None:
    data = _read_bytes(lock_path(root))
    return None if data is None else parse_lock(data)


def _current_owner() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def lock_info(command: str) -> LockInfo:
    """This process as a lock holder: owner, pid, host, ``command`` and now."""
    return LockInfo(_current_owner(), os.getpid(), socket.gethostname(), command, datetime.now(UTC).isoformat())


def timings(heartbeat_s: float | None, stale_after_s: float | None) -> tuple[float, float]:
    """The refresh interval and stale limit a writer lock uses: those given, else :data:`HEARTBEAT_S` and
    :data:`STALE_AFTER_S` as they are now (tests make them tiny)."""
    return (
        HEARTBEAT_S if heartbeat_s is None else heartbeat_s,
        STALE_AFTER_S if stale_after_s is None else stale_after_s,
    )


def _now_iso(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).isoformat(timespec="microseconds")


class HeldLock:
    """The writer lock as its holder has it, written again every ``heartbeat_s`` on a daemon thread until released.

    A refresh replaces the lock only while it still holds :attr:`token`. One that finds the lock gone
    or another writer's records the loss; :meth:`check`, which every commit calls first, then raises
    :class:`LockLost`. A refresh that fails is logged and never reaches the command. Subclasses say
    where the lock is kept (a directory, an object store).
    """

    def __init__(self, info: LockInfo, where: str, heartbeat_s: float, stale_after_s: float) -> None:
        self.info = info
        self.where = where
        self.token = uuid.uuid4().hex
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.refreshed = info.since
        self.lost: str | None = None  # what a refresh or check found in place of this lock
        self._released = False
        self._stop = threading.Event()
        self._mutex = threading.Lock()  # refreshes, checks and the release one at a time
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-writer-{self.token[:8]}", daemon=True)

    @property
    def pid(self) -> int:
        return self.info.pid

    def data(self, refreshed: str | None = None) -> bytes:
        """The lock as written: the holder, the token and when it was (or is now) refreshed."""
        fields = asdict(self.info) | {"token": self.token, "refreshed": refreshed or self.refreshed}
        return json.dumps(fields, sort_keys=True).encode() + b"\n"

    # -- where the lock is kept -------------------------------------------------------------------------------

    def _read(self) -> bytes | None:
        """The lock as it is now; None when there is none."""
        raise NotImplementedError

    def _replace_if_ours(self, data: bytes) -> bool:
        """Write ``data`` over the lock if it still holds our token; False (nothing written) when it does not."""
        raise NotImplementedError

    def _remove(self) -> None:
        raise NotImplementedError

    # -- the holder's side ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def _note_lost(self, current: bytes | None) -> None:
        if current is None:
            self.lost = "it was removed"
        else:
            held = parse_lock(current)
            self.lost = f"{held.command} of {held.owner}, pid {held.pid} on {held.host} since {held.since}, holds it"
        log.warning(
            "the writer lock %s is no longer held by this %s: %s; it stops before its next commit",
            self.where,
            self.info.command,
            self.lost,
        )

    def _still_ours(self) -> bool:
        """Read the lock (call with the mutex held); record the loss when it is not ours any more."""
        if self.lost is None:
            current = self._read()
            if lock_token(current) != self.token:
                self._note_lost(current)
        return self.lost is None

    def refresh(self, now: datetime | None = None) -> None:
        """Write the lock again with ``refreshed`` = ``now`` if it is still ours; a failure is logged, never raised."""
        with self._mutex:
            if self._released or self.lost is not None:
                return
            stamp = _now_iso(now)
            try:
                if self._replace_if_ours(self.data(stamp)):
                    self.refreshed = stamp
                else:
                    self._still_ours()
            except Exception as exc:  # noqa: BLE001 (a daemon thread with nothing above it: the command goes on)
                log.warning(
                    "could not refresh the writer lock %s: %s; another writer takes it over once it is %.0f "
                    "minutes old",
                    self.where,
                    exc,
                    self.stale_after_s / 60,
                )

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.refresh()

    def check(self) -> None:
        """Raise :class:`LockLost` unless this process still holds the lock; call it before every commit."""
        with self._mutex:
            if not self._still_ours():
                raise LockLost(command=self.info.command, what=self.lost, minutes=f"{self.stale_after_s / 60:.0f}")

    def release(self) -> None:
        """Stop the refreshes, then remove the lock if it is still ours."""
        self._stop.set()
        with self._mutex:
            self._released = True
            if self.lost is None and lock_token(self._read()) == self.token:
                self._remove()
        if self._thread.is_alive():
            self._thread.join()  # it can only be waking up now: a refresh after the release returns at once


class DirectoryLock(HeldLock):
    """``locks/writer`` of a directory repository."""

    def __init__(self, root: Path, info: LockInfo, heartbeat_s: float, stale_after_s: float) -> None:
        super().__init__(info, str(lock_path(root)), heartbeat_s, stale_after_s)
        self.root = root

    def _read(self) -> bytes | None:
        return _read_bytes(lock_path(self.root))

    def _replace_if_ours(self, data: bytes) -> bool:
        draft = write_draft(self.root, data, lock_path(self.root))
        try:
            if lock_token(self._read()) != self.token:
                return False
            draft.replace(lock_path(self.root))  # atomic: readers see the old lock or the new one
        finally:
            draft.unlink(missing_ok=True)
        fsync_dir(self.root / "locks")
        return True

    def _remove(self) -> None:
        lock_path(self.root).unlink(missing_ok=True)


def write_draft(root: Path, data: bytes, target: Path, *, sync: bool = True) -> Path:
    """``data`` in a new private file beside ``target`` (under ``locks/``), synced unless ``sync`` is false:
    what is linked or renamed into place."""
    draft = root / "locks" / f".{target.name}.{uuid.uuid4().hex}"
    try:
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
    except OSError as exc:
        draft.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFull(path=target) from exc
        raise
    return draft


@contextlib.contextmanager
def writer_lock(
    root: Path, command: str, *, heartbeat_s: float | None = None, stale_after_s: float | None = None
) -> Iterator[HeldLock]:
    """Hold the writer lock for the duration of the block, refreshing it every ``heartbeat_s``
    (:data:`HEARTBEAT_S`); a lock of another host not refreshed for ``stale_after_s`` (:data:`STALE_AFTER_S`)
    is taken over."""
    held = DirectoryLock(root, lock_info(command), *timings(heartbeat_s, stale_after_s))
    draft = write_draft(root, held.data(), lock_path(root))
    try:
        _take(root, lock_path(root), draft, held)
    finally:
        draft.unlink(missing_ok=True)
    sweep_drafts(root, held.stale_after_s)
    held.start()
    try:
        yield held
    finally:
        held.release()


def sweep_drafts(root: Path, older_than_s: float, now: float | None = None) -> list[Path]:
    """Remove the drafts (``locks/.NAME.<hex>``) that processes killed between writing and placing them left.

    A draft lives for the moment between its write and its link or rename, so one older than
    ``older_than_s`` (by its time on the storage, hence the stale limit, which allows for clock skew)
    belongs to no running process. Returns what was removed.
    """
    limit = (time.time() if now is None else now) - older_than_s
    gone = []
    for path in (root / "locks").glob(".*"):
        try:
            if path.stat().st_mtime < limit:
                path.unlink()
                gone.append(path)
        except FileNotFoundError:
            continue
    if gone:
        log.info("removed %d draft(s) that killed processes left in %s", len(gone), root / "locks")
    return gone


def _take(root: Path, path: Path, draft: Path, me: HeldLock) -> None:
    for _attempt in range(3):
        try:
            os.link(draft, path)
        except FileExistsError:
            data = _read_bytes(path)
            if data is None:
                continue  # released meanwhile
            held = parse_lock(data)
            why = stale_reason(data, held, datetime.now(UTC), me.stale_after_s)
            if why is None:
                raise Locked(owner=held.owner, pid=held.pid, host=held.host, since=held.since) from None
            warn_stale(held, data, why)
            if _read_bytes(path) == data:  # not refreshed (nor taken by another writer) meanwhile
                path.unlink(missing_ok=True)
            continue
        fsync_dir(path.parent)
        return
    held = read_lock(root) or me.info
    raise Locked(owner=held.owner, pid=held.pid, host=held.host, since=held.since)


def warn_stale(held: LockInfo, data: bytes, why: str, what: str = "stale writer lock") -> None:
    """Say whose stale writer lock (or ``what``) is being removed, and why."""
    at = refreshed_at(data, held)
    log.warning(
        "removing the %s of pid %s on %s (%s, since %s, last refreshed %s): %s",
        what,
        held.pid,
        held.host,
        held.command,
        held.since,
        "unknown" if at is None else at.isoformat(timespec="seconds"),
        why,
    )


def lock_age_s(held: LockInfo, now: datetime) -> float | None:
    try:
        return (now - datetime.fromisoformat(held.since)).total_seconds()
    except (ValueError, TypeError):
        return None


def breakable(
    data: bytes, *, force: bool, older_than_s: float | None, now: datetime | None, stale_after_s: float | None = None
) -> LockInfo:
    """The holder of a lock ``toolkit unlock`` may remove: stale (:func:`stale_reason`), taken more than
    ``older_than_s`` ago, or any with ``force``; raises :class:`Locked` otherwise."""
    held = parse_lock(data)
    now = now or datetime.now(UTC)
    age = lock_age_s(held, now)
    too_old = older_than_s is not None and age is not None and age > older_than_s
    stale = stale_reason(data, held, now, timings(None, stale_after_s)[1]) is not None
    if not force and not too_old and not stale:
        raise Locked(owner=held.owner, pid=held.pid, host=held.host, since=held.since)
    return held


def break_lock(
    root: Path, *, force: bool = False, older_than_s: float | None = None, now: datetime | None = None
) -> LockInfo | None:
    """Remove the writer lock if it is stale: its process is gone from this host, or it is another host's and
    was not refreshed for :data:`STALE_AFTER_S`, or (with ``older_than_s``) it was taken longer ago than that;
    always with ``force``. Returns what was removed."""
    data = _read_bytes(lock_path(root))
    if data is None:
        return None
    held = breakable(data, force=force, older_than_s=older_than_s, now=now)
    lock_path(root).unlink(missing_ok=True)
    return held


# -- readers ------------------------------------------------------------------------------------------------


def reader_data(info: LockInfo, refreshed: str) -> bytes:
    """A reader's announcement as written: the reader, an empty ``token`` and when it was last written."""
    return json.dumps(asdict(info) | {"token": "", "refreshed": refreshed}, sort_keys=True).encode() + b"\n"


class ReaderAnnouncement:
    """A reader's ``locks/reader-<random>``, written again every ``heartbeat_s`` on a daemon thread until
    :meth:`withdraw`.

    The thread ends with the process, so an announcement a dead reader leaves stops being refreshed
    and :func:`judge_readers` removes it once it is ``stale_after_s`` old. A refresh that fails is
    logged and never reaches the command. A refresh still writing when the reader withdraws removes
    what it wrote once it lands. Subclasses say where the announcement is kept.
    """

    def __init__(
        self, name: str, where: str, holder: LockInfo, heartbeat_s: float, stale_after_s: float, withdraw_wait_s: float
    ) -> None:
        self.name = name
        self.where = where
        self.holder = holder
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.withdraw_wait_s = withdraw_wait_s
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._withdrawn = False
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{name}", daemon=True)

    # -- where the announcement is kept -----------------------------------------------------------------------

    def _put(self, data: bytes) -> None:
        """Write ``data`` as the announcement, whole (a new one, or over the one there)."""
        raise NotImplementedError

    def _remove(self) -> None:
        """Remove the announcement; no error when it is gone already."""
        raise NotImplementedError

    # -- the reader's side ------------------------------------------------------------------------------------

    def announce(self) -> bool:
        """Write the announcement and start refreshing it; False (nothing started) when it cannot be written."""
        try:
            self._put(reader_data(self.holder, self.holder.since))
        except (Error, OSError) as exc:
            log.info("could not announce this reader as %s: %s", self.where, exc)
            return False
        self._thread.start()
        return True

    def _is_withdrawn(self) -> bool:
        with self._mutex:
            return self._withdrawn

    def refresh(self, now: datetime | None = None) -> None:
        """Write the announcement again with ``refreshed`` = ``now``; a failure is logged, never raised."""
        if self._is_withdrawn():
            return
        try:
            self._put(reader_data(self.holder, _now_iso(now)))
        except Exception as exc:  # noqa: BLE001 (a daemon thread with nothing above it: the command goes on)
            log.warning(
                "could not refresh the reader announcement %s: %s; a prune elsewhere ignores it once it is %.0f "
                "minutes old",
                self.where,
                exc,
                self.stale_after_s / 60,
            )
        if self._is_withdrawn():  # withdrawn while this refresh was writing: what it wrote must not stay
            self._delete()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.refresh()

    def _delete(self) -> None:
        try:
            self._remove()
        except (Error, OSError) as exc:
            log.warning("could not remove the reader announcement %s: %s", self.where, exc)

    def withdraw(self) -> None:
        """Stop the refreshes, then remove the announcement.

        A refresh in flight is waited for up to ``withdraw_wait_s``; one still writing after that
        removes the announcement again once its write lands.
        """
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.withdraw_wait_s)
        with self._mutex:
            self._withdrawn = True
        self._delete()


class DirectoryReader(ReaderAnnouncement):
    """``locks/reader-<random>`` of a directory repository, written as a draft renamed into place.

    Not synced: an announcement need not outlive a power loss, which ends its reader too (and a torn
    file left by one is judged as a dead reader's); an fsync would cost every command a disk flush.
    """

    def __init__(self, root: Path, holder: LockInfo, heartbeat_s: float, stale_after_s: float) -> None:
        name = f"{READER_PREFIX}{uuid.uuid4().hex}"
        self.root = root
        self.path = root / "locks" / name
        super().__init__(name, str(self.path), holder, heartbeat_s, stale_after_s, WITHDRAW_WAIT_S)

    def _put(self, data: bytes) -> None:
        draft = write_draft(self.root, data, self.path, sync=False)
        try:
            draft.replace(self.path)  # atomic: a prune reads the old announcement or the new one, never a torn one
        finally:
            draft.unlink(missing_ok=True)

    def _remove(self) -> None:
        self.path.unlink(missing_ok=True)


def register_reader(
    root: Path, command: str, *, heartbeat_s: float | None = None, stale_after_s: float | None = None
) -> DirectoryReader | None:
    """Announce a reader (verify, restore, listings) so prune does not delete packs under it.

    The announcement is written again every ``heartbeat_s`` (:data:`HEARTBEAT_S`) until it is
    withdrawn (:meth:`ReaderAnnouncement.withdraw`). None when the repository is read-only to us
    (a reader that cannot announce itself still works).
    """
    reader = DirectoryReader(root, lock_info(command), *timings(heartbeat_s, stale_after_s))
    return reader if reader.announce() else None


def judge_readers(
    names: Iterable[str],
    read: Callable[[str], bytes | None],
    remove: Callable[[str], None],
    *,
    now: datetime,
    stale_after_s: float,
    any_host: bool = False,
) -> list[LockInfo]:
    """The readers other than this process among the announcements ``names``; those of dead readers are removed.

    Dead (:func:`stale_reason`): its process is gone from this host, or it was not refreshed for
    ``stale_after_s`` by ``now`` and ran on another host (any host with ``any_host``). One judged
    dead by its time is read again first and removed, with a warning, only if unchanged.
    """
    out = []
    for name in names:
        data = read(name)
        if data is None:
            continue  # withdrawn meanwhile
        held = parse_lock(data)  # one that does not parse (torn) is taken for a dead reader of this host
        if held.pid == os.getpid() and held.host == socket.gethostname():
            continue
        why = stale_reason(data, held, now, stale_after_s, what="reader", any_host=any_host)
        if why is None:
            out.append(held)
            continue
        if not held.is_stale_here:
            current = read(name)  # a reader cut off for that long may have come back meanwhile
            if current is None:
                continue  # removed meanwhile (by a prune elsewhere)
            if current != data:
                out.append(held)
                continue
            warn_stale(held, data, why, "reader announcement")
        remove(name)
    return out


def live_readers(root: Path, *, now: datetime | None = None, stale_after_s: float | None = None) -> list[LockInfo]:
    """Readers of a directory repository other than this process; reader files of dead readers are removed
    (:func:`judge_readers`, another host's once not refreshed for ``stale_after_s``, :data:`STALE_AFTER_S`)."""
    locks = root / "locks"
    return judge_readers(
        sorted(p.name for p in locks.glob(f"{READER_PREFIX}*")),
        lambda name: _read_bytes(locks / name),
        lambda name: (locks / name).unlink(missing_ok=True),
        now=now or datetime.now(UTC),
        stale_after_s=timings(None, stale_after_s)[1],
    )
