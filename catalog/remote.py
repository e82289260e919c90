"""A repository kept in an object store, seen from this host: the port to the store and the local cache.

The store is reached only through :class:`Remote` (``toolkit/s3repo.py`` implements it over
S3); nothing here opens a socket. The repository's objects have the directory layout's names
(``config``, ``packs/<ab>/<pack_id>``, ``snapshots/<snapshot_id>.json``, ``locks/...``), and the
local cache directory is laid out as a directory repository whose ``catalog.db`` and packs
are copies: the cache is disposable, and the object store is the truth.

- :class:`PackCache`: whole packs under the cache's ``packs/``, least recently used out first
  once they pass a size limit. A chunk of a pack not in the cache is read with a ranged GET;
  a pack read from a second time is fetched whole (checked against its name first), since a
  restore reads most of every pack it touches while a catalog rebuild reads one manifest here
  and there.
- :func:`reconcile_remote`: the catalog follows the store. Snapshot documents listed first,
  then packs (a document is put only after all its packs, so every document listed has its
  packs in the later listing); what the store lacks is forgotten, what the catalog lacks is
  indexed: pack indexes through two ranged GETs at most, documents downloaded.
- Locks: the writer lock is ``locks/writer``, created only if absent (a conditional PUT that
  one of two racing writers wins), holding the directory lock's JSON (with its random token);
  its holder writes it again every :data:`catalog.lock.HEARTBEAT_S` while it still holds its
  token, and stale writer locks are judged as for a directory (:func:`catalog.lock.stale_reason`).
  Readers announce themselves as ``locks/reader-<random>`` (:class:`catalog.lock.ReaderAnnouncement`)
  and a daemon thread writes the announcement again every :data:`READER_HEARTBEAT_S` with the time
  in ``refreshed``; one not refreshed for :data:`READER_STALE_S` belongs to a reader that died, on
  any host, and is removed (:func:`catalog.lock.judge_readers`).
- Object Lock: packs and documents may carry a retention; a delete the store refuses for it
  raises :class:`Retained`, and a dropped snapshot whose document cannot go yet is marked
  ``forgotten/<snapshot_id>`` so no cache indexes it again and the next prune retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sqlite3
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import xxhash

from catalog import pack
from catalog.errors import Error, Locked, PackCorrupt, SnapshotDocumentCorrupt
from catalog.lock import (
    HEARTBEAT_S,
    READER_PREFIX,
    STALE_AFTER_S,
    WITHDRAW_WAIT_S,
    HeldLock,
    LockInfo,
    ReaderAnnouncement,
    breakable,
    judge_readers,
    lock_info,
    lock_token,
    parse_lock,
    stale_reason,
    timings,
    warn_stale,
)
from catalog.store import pack_path, write_atomic
from catalog.types import PackEntry, PackId

if TYPE_CHECKING:
    from catalog.repo import Repository

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES: Final = 4 << 30  # 4 GiB: the packs of a few large AppStacks, on any backup host's disk
UPLOADS_IN_FLIGHT: Final = 4  # packs uploaded at once while a snapshot goes on; each is streamed from disk
INDEX_READERS: Final = 8  # ranged GETs in flight while new packs are indexed: latency, not bandwidth, is the cost
TAIL_BYTES: Final = 64 << 10  # one ranged GET takes the footer and, up to ~960 records, the whole index
HASH_BLOCK_BYTES: Final = 1 << 20
STALE_PARTIAL_S: Final = 24 * 3600.0  # an unfinished download older than this belongs to no running process
FETCH_DIR: Final = "fetch"  # packs downloaded for verification (not tmp/, which a starting writer empties)
WRITER: Final = "writer"
# A reader writes its announcement again this often (tests make it tiny), as a writer its lock: one small PUT
# every five minutes (catalog.lock.HEARTBEAT_S, which says why).
READER_HEARTBEAT_S: Final = HEARTBEAT_S
# An announcement not refreshed for this long belongs to a reader that died: 45 minutes, the worst clock
# skew between two hosts that S3 accepts requests from plus three missed heartbeats, as for a writer lock
# (catalog.lock.STALE_AFTER_S, which says why).
READER_STALE_S: Final = STALE_AFTER_S
# Withdrawing waits this long for a refresh in flight; a refresh that lands later removes the object itself.
READER_WITHDRAW_WAIT_S: Final = WITHDRAW_WAIT_S
PACK_NAME: Final = re.compile(r"[0-9a-f]{32}")
SNAPSHOT_NAME: Final = re.compile(r"[0-9a-f]{64}")


class Retained(Error):
    template = "{what} is under object lock until {until}"
    hint = "it is removed by the first prune after that date"
    code = "retained"
    exit_code = 1


class RemotePackMissing(PackCorrupt):
    template = "pack {pack_id} is missing from {url}"
    hint = "run: toolkit verify to list the affected volumes"
    code = "remote_pack_missing"


class PacksNotUploaded(Error):
    template = "{count} pack(s) the catalog lists were never uploaded to {url} (e.g. {example}); nothing was committed"
    hint = "a program error: packs of a repository in an object store are written through Repository.pack_writer"
    code = "packs_not_uploaded"
    exit_code = 1


@dataclass(frozen=True, slots=True)
class RemoteObject:
    """A pack or snapshot document as a listing shows it: its id, size and ETag."""

    name: str
    size: int
    etag: str


class Remote(Protocol):
    """What a repository needs from an object store. Every method is safe to call from several threads."""

    @property
    def url(self) -> str: ...

    # packs
    def list_packs(self) -> Iterable[RemoteObject]: ...

    def upload_pack(self, pack_id: str, path: Path) -> None:
        """Store a sealed pack; returns once the store confirmed it (an existing one is never replaced)."""

    def fetch_pack(self, pack_id: str, path: Path) -> None:
        """Download a whole pack to ``path`` (whole or not at all); :class:`RemotePackMissing` if absent."""

    def read_pack(self, pack_id: str, offset: int, length: int) -> bytes:
        """``length`` bytes of a pack from ``offset`` (fewer at its end); :class:`RemotePackMissing` if absent."""

    def delete_pack(self, pack_id: str) -> None:
        """Remove a pack; :class:`Retained` while the store keeps it under retention."""

    def pack_retained_until(self, pack_id: str) -> str | None:
        """When a pack's retention ends (ISO 8601), or None when it can be deleted now."""

    # snapshot documents
    def list_documents(self) -> Iterable[RemoteObject]: ...

    def get_document(self, snapshot_id: str) -> bytes: ...

    def put_document(self, snapshot_id: str, data: bytes) -> None:
        """Store a snapshot document (the commit point); an existing one is never replaced."""

    def delete_document(self, snapshot_id: str) -> None:
        """Remove a document; :class:`Retained` while the store keeps it under retention."""

    def list_forgotten(self) -> set[str]:
        """Snapshots a prune dropped whose documents are still retained."""

    def mark_forgotten(self, snapshot_id: str) -> None: ...

    def unmark_forgotten(self, snapshot_id: str) -> None: ...

    # locks (objects under locks/, never retained)
    def create_lock(self, name: str, data: bytes) -> bool:
        """Create ``locks/<name>`` only if it does not exist; True when this call created it."""

    def put_lock(self, name: str, data: bytes) -> None: ...

    def read_lock(self, name: str) -> bytes | None: ...

    def delete_lock(self, name: str) -> None: ...

    def list_locks(self) -> list[str]: ...


def file_xxh3(path: Path) -> str:
    """xxh3-128 of a file in lowercase hex: a pack's name when it is whole."""
    digest = xxhash.xxh3_128()
    with path.open("rb") as f:
        while block := f.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


# -- locks --------------------------------------------------------------------------------------------------


def _delete_if_unchanged(remote: Remote, name: str, data: bytes) -> None:
    """Delete a lock only while it still holds ``data`` (it was not broken and taken by another writer)."""
    if remote.read_lock(name) == data:
        remote.delete_lock(name)


class RemoteLock(HeldLock):
    """``locks/writer`` in an object store, as its holder has it (:class:`catalog.lock.HeldLock`)."""

    def __init__(self, remote: Remote, info: LockInfo, heartbeat_s: float, stale_after_s: float) -> None:
        super().__init__(info, f"{remote.url}/locks/{WRITER}", heartbeat_s, stale_after_s)
        self.remote = remote

    def _read(self) -> bytes | None:
        return self.remote.read_lock(WRITER)

    def _replace_if_ours(self, data: bytes) -> bool:
        if lock_token(self.remote.read_lock(WRITER)) != self.token:
            return False
        self.remote.put_lock(WRITER, data)
        return True

    def _remove(self) -> None:
        self.remote.delete_lock(WRITER)


@contextlib.contextmanager
def remote_writer_lock(
    remote: Remote, command: str, *, heartbeat_s: float | None = None, stale_after_s: float | None = None
) -> Iterator[HeldLock]:
    """Hold ``locks/writer`` in the object store for the duration of the block, refreshing it every
    ``heartbeat_s`` (:data:`catalog.lock.HEARTBEAT_S`); a lock of another host not refreshed for
    ``stale_after_s`` (:data:`catalog.lock.STALE_AFTER_S`) is taken over."""
    me = RemoteLock(remote, lock_info(command), *timings(heartbeat_s, stale_after_s))
    data = me.data()
    for _attempt in range(3):
        if remote.create_lock(WRITER, data):
            break
        held_data = remote.read_lock(WRITER)
        if held_data is None:
            continue  # released meanwhile
        held = parse_lock(held_data)
        why = stale_reason(held_data, held, datetime.now(UTC), me.stale_after_s)
        if why is None:
            raise Locked(owner=held.owner, pid=held.pid, host=held.host, since=held.since)
        warn_stale(held, held_data, why)
        _delete_if_unchanged(remote, WRITER, held_data)
    else:
        held = parse_lock(remote.read_lock(WRITER) or data)
        raise Locked(owner=held.owner, pid=held.pid, host=held.host, since=held.since)
    me.start()
    try:
        yield me
    finally:
        me.release()


def break_remote_lock(
    remote: Remote, *, force: bool = False, older_than_s: float | None = None, now: datetime | None = None
) -> LockInfo | None:
    """:func:`catalog.lock.break_lock` for an object store: remove a stale writer lock; returns what was removed."""
    data = remote.read_lock(WRITER)
    if data is None:
        return None
    held = breakable(data, force=force, older_than_s=older_than_s, now=now)
    _delete_if_unchanged(remote, WRITER, data)
    return held


class RemoteReader(ReaderAnnouncement):
    """A reader's ``locks/reader-<random>`` in an object store (:class:`catalog.lock.ReaderAnnouncement`)."""

    def __init__(self, remote: Remote, holder: LockInfo) -> None:
        name = f"{READER_PREFIX}{uuid.uuid4().hex}"
        super().__init__(
            name, f"{remote.url}/locks/{name}", holder, READER_HEARTBEAT_S, READER_STALE_S, READER_WITHDRAW_WAIT_S
        )
        self.remote = remote

    def _put(self, data: bytes) -> None:
        self.remote.put_lock(self.name, data)

    def _remove(self) -> None:
        self.remote.delete_lock(self.name)


def announce_reader(remote: Remote, command: str) -> ReaderAnnouncement | None:
    """Announce a reader so a prune elsewhere keeps the packs it may read; None when the store refused it.

    The announcement is refreshed every :data:`READER_HEARTBEAT_S` until its ``withdraw()``.
    A reader whose credentials may only read still works; it is just not announced.
    """
    announcement = RemoteReader(remote, lock_info(command))
    return announcement if announcement.announce() else None


def remote_readers(remote: Remote, *, now: datetime | None = None) -> list[LockInfo]:
    """Readers other than this process; announcements of dead readers are removed.

    A reader is dead when it ran on this host and its process is gone, or (on any host) when its
    announcement was not refreshed for :data:`READER_STALE_S` by the clock of this host.
    """
    return judge_readers(
        [name for name in remote.list_locks() if name.startswith(READER_PREFIX)],
        remote.read_lock,
        remote.delete_lock,
        now=now or datetime.now(UTC),
        stale_after_s=READER_STALE_S,
        any_host=True,
    )


# -- the pack cache -----------------------------------------------------------------------------------------


class PackCache:
    """Whole packs of a remote repository in ``root/packs``, least recently used out first. Thread-safe.

    ``limit_bytes`` bounds what this process keeps (the newest pack always stays); several
    processes sharing a cache each evict by what they know, so the limit is approximate then.
    """

    def __init__(self, root: Path, remote: Remote, limit_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.root = root
        self.remote = remote
        self.limit_bytes = max(0, limit_bytes)
        self.bytes_fetched = 0
        self.ranged_reads = 0
        self.published: set[str] = set()  # packs this process sealed and uploaded
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()  # oldest first
        self._total = 0
        self._fetching: dict[str, threading.Lock] = {}
        self._reads: dict[str, int] = {}  # ranged reads so far of packs not cached
        self._touched: set[str] = set()
        self._no_whole: set[str] = set()  # packs whose stored copy does not hash to its name
        self._ranged_only = 0  # > 0: reads take ranged GETs only (indexing: a manifest here and there)
        self._scan()

    def path(self, pack_id: str) -> Path:
        return pack_path(self.root, pack_id)

    def _scan(self) -> None:
        found: list[tuple[float, str, int]] = []
        stale_before = datetime.now(UTC).timestamp() - STALE_PARTIAL_S
        dirs = [sub for sub in (self.root / "packs").iterdir() if sub.is_dir()]
        for sub in [*dirs, self.root / FETCH_DIR]:
            for p in sub.iterdir() if sub.is_dir() else ():
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                if PACK_NAME.fullmatch(p.name) and sub.name == p.name[:2]:
                    found.append((st.st_mtime, p.name, st.st_size))
                elif (p.name.startswith(".") or sub.name == FETCH_DIR) and st.st_mtime < stale_before:
                    p.unlink(missing_ok=True)  # a download a killed process left
        with self._lock:
            for _mtime, name, size in sorted(found):
                self._sizes[name] = size
                self._total += size
            self._evict()

    def _evict(self) -> None:
        """Drop the least recently used packs until the limit holds (call with the lock held)."""
        while self._total > self.limit_bytes and len(self._sizes) > 1:
            pack_id, size = self._sizes.popitem(last=False)
            self._total -= size
            self.path(pack_id).unlink(missing_ok=True)  # a reader that has it open keeps reading it

    def add(self, pack_id: str, size: int) -> None:
        """Account for a pack that is now in the cache (fetched, or sealed here and uploaded)."""
        with self._lock:
            self._total += size - self._sizes.pop(pack_id, 0)
            self._sizes[pack_id] = size
            self._reads.pop(pack_id, None)
            self._evict()

    def discard(self, pack_id: str) -> None:
        with self._lock:
            self._total -= self._sizes.pop(pack_id, 0)
        self.path(pack_id).unlink(missing_ok=True)

    def published_packs(self) -> set[str]:
        with self._lock:
            return set(self.published)

    def count_fetched(self, size: int) -> None:
        with self._lock:
            self.bytes_fetched += size

    def cached_bytes(self) -> int:
        with self._lock:
            return self._total

    def _touch(self, pack_id: str) -> None:
        with self._lock:
            if pack_id in self._sizes:
                self._sizes.move_to_end(pack_id)
            first = pack_id not in self._touched
            self._touched.add(pack_id)
        if first:  # the order survives this process (the next one sorts the cache by mtime)
            with contextlib.suppress(OSError):
                os.utime(self.path(pack_id))

    def _pread_cached(self, pack_id: str, size: int, offset: int) -> bytes | None:
        try:
            fd = os.open(self.path(pack_id), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            data = os.pread(fd, size, offset)
        finally:
            os.close(fd)
        self._touch(pack_id)
        return data

    def pread(self, pack_id: str, size: int, offset: int) -> bytes:
        """Bytes of a pack: from the cache, else a ranged GET; the second read of a pack fetches it whole."""
        data = self._pread_cached(pack_id, size, offset)
        if data is not None:
            return data
        with self._lock:
            reads = self._reads[pack_id] = self._reads.get(pack_id, 0) + 1
            whole = reads > 1 and pack_id not in self._no_whole and not self._ranged_only
        if whole and self.fetch(pack_id):
            data = self._pread_cached(pack_id, size, offset)
            if data is not None:
                return data
        with self._lock:
            self.ranged_reads += 1
        return self.remote.read_pack(pack_id, offset, size)

    @contextlib.contextmanager
    def ranged_reads_only(self) -> Iterator[None]:
        """Within this block no pack is fetched whole: every read not served by the cache is a ranged GET."""
        with self._lock:
            self._ranged_only += 1
        try:
            yield
        finally:
            with self._lock:
                self._ranged_only -= 1

    def fetch(self, pack_id: str) -> bool:
        """Bring a whole pack into the cache; False when the stored copy does not hash to its name.

        A damaged copy is kept out of the cache; its chunks are then read one by one with ranged
        GETs, each checked against its id, so what is sound in it still serves.
        """
        with self._lock:
            guard = self._fetching.setdefault(pack_id, threading.Lock())
        with guard:
            path = self.path(pack_id)
            if path.exists():
                return True
            path.parent.mkdir(mode=0o700, exist_ok=True)
            staged = path.with_name(f".{pack_id}.fetched")
            self.remote.fetch_pack(pack_id, staged)
            size = staged.stat().st_size
            self.count_fetched(size)
            if file_xxh3(staged) != pack_id:
                staged.unlink(missing_ok=True)
                log.warning(
                    "pack %s in %s does not match its name; reading its chunks one by one", pack_id, self.remote.url
                )
                with self._lock:
                    self._no_whole.add(pack_id)
                return False
            staged.replace(path)
            self.add(pack_id, size)
            return True

    def publish(self, pack_id: PackId, path: Path) -> None:
        """A pack sealed here (already at its cache path): upload it, then keep it as cached."""
        self.remote.upload_pack(pack_id, path)
        with self._lock:
            self.published.add(pack_id)
        self.add(pack_id, path.stat().st_size)

    def open_fresh(self, path: Path) -> FreshPack:
        """The stored copy of a pack (not the cached one), for ``verify --read-data`` (catalog.check.OpenPack).

        Raises FileNotFoundError when the store has no such pack, as opening a missing file does.
        """
        try:
            return FreshPack(self, path.name)
        except RemotePackMissing as exc:
            raise FileNotFoundError(str(exc)) from exc


class FreshPack:
    """A pack downloaded anew from the store into the cache's ``fetch/``; gone again once closed."""

    def __init__(self, cache: PackCache, pack_id: str) -> None:
        where = cache.root / FETCH_DIR
        where.mkdir(mode=0o700, exist_ok=True)
        self._path = where / f"{pack_id}.{uuid.uuid4().hex}"
        cache.remote.fetch_pack(pack_id, self._path)
        cache.count_fetched(self._path.stat().st_size)
        self._fd = os.open(self._path, os.O_RDONLY)
        self._path.unlink()  # the open descriptor keeps it readable; nothing is left behind

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# -- reconciling the catalog with the store -----------------------------------------------------------------


def read_remote_pack_index(remote: Remote, pack_id: str, size: int) -> list[PackEntry]:
    """A stored pack's trailer index, read with one ranged GET (two for packs of very many records)."""
    if size < pack.HEADER_SIZE + pack.FOOTER_SIZE:
        raise PackCorrupt(pack_id=pack_id, detail="truncated")
    tail_start = max(0, size - TAIL_BYTES)
    tail = remote.read_pack(pack_id, tail_start, size - tail_start)
    if len(tail) != size - tail_start:
        raise PackCorrupt(pack_id=pack_id, detail="shorter than the store lists it")
    if tail_start == 0:
        pack.check_header(pack_id, tail[: pack.HEADER_SIZE])
    index_offset, count = pack.parse_footer(pack_id, tail[-pack.FOOTER_SIZE :], size)
    if index_offset >= tail_start:
        raw = tail[index_offset - tail_start : len(tail) - pack.FOOTER_SIZE]
    else:
        raw = remote.read_pack(pack_id, index_offset, count * pack.INDEX_ENTRY.size)
    return pack.parse_index(pack_id, raw, index_offset)


def _indexed_or_none(remote: Remote, pack_id: str, size: int) -> list[PackEntry] | None:
    try:
        return read_remote_pack_index(remote, pack_id, size)
    except PackCorrupt as exc:
        log.warning("%s; its chunks are not used", exc)
        return None


def _packs_listed(remote: Remote) -> dict[str, int]:
    return {o.name: o.size for o in remote.list_packs() if PACK_NAME.fullmatch(o.name)}


def _documents_listed(remote: Remote) -> dict[str, RemoteObject]:
    forgotten = remote.list_forgotten()
    return {o.name: o for o in remote.list_documents() if SNAPSHOT_NAME.fullmatch(o.name) and o.name not in forgotten}


def _remote_of(repo: Repository) -> tuple[Remote, PackCache]:
    if repo.remote is None or repo.cache is None:
        raise ValueError(f"{repo.root} is not a repository kept in an object store")
    return repo.remote, repo.cache


def document_path(root: Path, snapshot_id: str) -> Path:
    return root / "snapshots" / f"{snapshot_id}.json"


def fetch_document(repo: Repository, snapshot_id: str) -> Path:
    """Download a snapshot document into the cache; its path there."""
    remote, _cache = _remote_of(repo)
    data = remote.get_document(snapshot_id)
    path = document_path(repo.root, snapshot_id)
    write_atomic(repo.root, path, data)
    return path


def check_uploaded(repo: Repository) -> None:
    """Refuse to commit while the catalog lists a pack neither listed in the store nor uploaded since.

    Under the writer lock nothing else adds packs to the store, so every pack indexed since the
    reconciliation must be one this process uploaded; a document naming any other could name
    chunks the store does not have.
    """
    remote, cache = _remote_of(repo)
    missing = repo.index.pack_ids() - repo.remote_pack_sizes.keys() - cache.published_packs()
    if missing:
        raise PacksNotUploaded(count=len(missing), url=remote.url, example=min(missing))


def reconcile_remote(repo: Repository) -> tuple[int, int]:
    """Make the cached catalog list what the store holds; returns (packs added, snapshots added).

    What this process had in the catalog before it listed the store, and the store no longer
    holds, was removed by a prune (here or on another host): it is forgotten here too. A pack
    removed otherwise (lost) then shows in ``verify`` as the chunks its versions miss, and
    ``repair --rebuild-catalog`` marks them lost so the next snapshot stores them again.
    """
    (remote, cache), index = _remote_of(repo), repo.index
    known_snapshots, known_packs = index.snapshot_ids(), index.pack_ids()
    documents = _documents_listed(remote)  # before the packs: every document listed has its packs listed
    packs = _packs_listed(remote)
    repo.remote_pack_sizes = packs
    for snapshot_id in sorted(known_snapshots - documents.keys()):
        log.info("snapshot %s is no longer in %s; forgetting it here", snapshot_id[:12], remote.url)
        index.remove_snapshot(snapshot_id)
        document_path(repo.root, snapshot_id).unlink(missing_ok=True)
    for pack_id in sorted(known_packs - packs.keys()):
        log.info("pack %s is no longer in %s; forgetting it here", pack_id[:12], remote.url)
        index.remove_pack(pack_id)
        cache.discard(pack_id)
    new = sorted(packs.keys() - index.pack_ids())
    packs_added = 0
    if new:
        with ThreadPoolExecutor(INDEX_READERS, thread_name_prefix="pack-index") as pool:
            for pack_id, entries in zip(
                new, pool.map(lambda p: _indexed_or_none(remote, p, packs[p]), new), strict=True
            ):
                if entries is not None:
                    index.add_pack(PackId(pack_id), packs[pack_id], entries, _now_iso())
                    packs_added += 1
    snapshots_added = 0
    for snapshot_id in sorted(documents.keys() - index.snapshot_ids()):
        path = fetch_document(repo, snapshot_id)
        try:
            doc = repo.load_snapshot_doc(snapshot_id, path)
        except SnapshotDocumentCorrupt as exc:
            log.warning("%s; it is not indexed", exc)
            continue
        with cache.ranged_reads_only():  # its manifests, one ranged GET each: no pack body is fetched
            repo.index_manifests_of(doc)
        try:
            index.add_snapshot(snapshot_id, doc)
        except sqlite3.IntegrityError:
            continue  # another process of this host indexed it meanwhile
        snapshots_added += 1
    return packs_added, snapshots_added


def _same_content(path: Path, listed: RemoteObject) -> bool:
    """True when a cached document has the listed size and MD5 (the ETag of a single PUT)."""
    try:
        if path.stat().st_size != listed.size:
            return False
        return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest() == listed.etag
    except FileNotFoundError:
        return False


def sync_documents(repo: Repository) -> Iterator[tuple[str, Path]]:
    """(snapshot id, cached path) of every document the store holds, each cached copy equal to the stored one."""
    remote, _cache = _remote_of(repo)
    documents = _documents_listed(remote)
    for cached in (repo.root / "snapshots").glob("*.json"):
        if cached.stem not in documents:
            cached.unlink(missing_ok=True)
    for snapshot_id in sorted(documents):
        path = document_path(repo.root, snapshot_id)
        if not _same_content(path, documents[snapshot_id]):
            path = fetch_document(repo, snapshot_id)
        yield snapshot_id, path


# -- removing (prune) ---------------------------------------------------------------------------------------


def forget_remote_snapshot(repo: Repository, snapshot_id: str) -> str | None:
    """Remove a snapshot the policy dropped: catalog rows, then its document; the retain-until if it stays.

    A crash between the two brings the snapshot back at the next reconciliation (nothing was
    collected yet). A retained document is marked forgotten, so no cache indexes it again,
    and the next prune retries it.
    """
    remote, _cache = _remote_of(repo)
    repo.index.remove_snapshot(snapshot_id)
    document_path(repo.root, snapshot_id).unlink(missing_ok=True)
    try:
        remote.delete_document(snapshot_id)
    except Retained as exc:
        remote.mark_forgotten(snapshot_id)
        return str(exc.fields["until"])
    return None


def retry_forgotten(repo: Repository) -> list[tuple[str, str]]:
    """Delete the documents earlier prunes dropped but could not remove; (snapshot id, retain-until) of those kept."""
    remote, _cache = _remote_of(repo)
    kept = []
    for snapshot_id in sorted(remote.list_forgotten()):
        try:
            remote.delete_document(snapshot_id)
        except Retained as exc:
            kept.append((snapshot_id, str(exc.fields["until"])))
            continue
        remote.unmark_forgotten(snapshot_id)
    return kept


def delete_remote_pack(repo: Repository, pack_id: str) -> str | None:
    """Remove an unreferenced pack: catalog rows, then the object; the retain-until when it stays."""
    remote, cache = _remote_of(repo)
    until = remote.pack_retained_until(pack_id)
    if until is not None:
        return until
    repo.index.remove_pack(pack_id)
    try:
        remote.delete_pack(pack_id)
    except Retained as exc:  # retained since the check: the next reconciliation indexes it again
        return str(exc.fields["until"])
    cache.discard(pack_id)
    repo.remote_pack_sizes.pop(pack_id, None)
    return None
