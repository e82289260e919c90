"""The SQLite catalog (``catalog.db``), through sqlite-utils.

The catalog is an index: everything in it can be rebuilt from the packs and
the snapshot documents (see :mod:`catalog.rebuild`). It runs in WAL mode so
readers (verify, restore) see committed state while a snapshot writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from catalog.errors import CatalogCorrupt, StoreFull
from catalog.types import ChunkId, ChunkLocation, PackEntry, PackId

if TYPE_CHECKING:
    from catalog.crypto import RepoKeys

SCHEMA_VERSION: Final = 1

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS packs (
    id TEXT PRIMARY KEY, size INTEGER NOT NULL, chunk_count INTEGER NOT NULL,
    added_at TEXT NOT NULL, verified_at TEXT
);
CREATE TABLE IF NOT EXISTS chunks (
    id BLOB PRIMARY KEY, type INTEGER NOT NULL, pack_id TEXT NOT NULL, offset INTEGER NOT NULL,
    stored_size INTEGER NOT NULL, raw_size INTEGER NOT NULL, codec INTEGER NOT NULL, sha256 BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_pack ON chunks(pack_id);
CREATE INDEX IF NOT EXISTS chunks_sha256 ON chunks(sha256);
CREATE TABLE IF NOT EXISTS manifests (
    id BLOB PRIMARY KEY, file_size INTEGER NOT NULL, chunk_count INTEGER NOT NULL, hole_count INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY, created_at TEXT NOT NULL, hostname TEXT NOT NULL, sources TEXT NOT NULL,
    stats TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_time ON snapshots(created_at);
CREATE TABLE IF NOT EXISTS volumes (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, datastore TEXT NOT NULL, path TEXT NOT NULL,
    name TEXT NOT NULL, kind TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY, snapshot_id TEXT NOT NULL REFERENCES snapshots(id),
    volume_id INTEGER NOT NULL REFERENCES volumes(id), state TEXT NOT NULL, reason TEXT,
    size INTEGER NOT NULL, avm TEXT, UNIQUE (snapshot_id, volume_id)
);
CREATE INDEX IF NOT EXISTS versions_volume ON versions(volume_id, snapshot_id);
CREATE TABLE IF NOT EXISTS verify_runs (
    id INTEGER PRIMARY KEY, started_at TEXT NOT NULL, duration_s REAL NOT NULL, level TEXT NOT NULL,
    scope TEXT NOT NULL, ok INTEGER NOT NULL, problems INTEGER NOT NULL, bytes_read INTEGER NOT NULL,
    packs_read INTEGER NOT NULL, detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    version_id INTEGER NOT NULL REFERENCES versions(id), path TEXT NOT NULL, role TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, manifest_id BLOB NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY (version_id, path)
);
CREATE TABLE IF NOT EXISTS lost_chunks (
    id BLOB PRIMARY KEY, type INTEGER NOT NULL, pack_id TEXT, lost_at TEXT NOT NULL, reason TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lost_uses (
    manifest_id BLOB NOT NULL, chunk_id BLOB NOT NULL, PRIMARY KEY (manifest_id, chunk_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lost_uses_chunk ON lost_uses(chunk_id);
CREATE TABLE IF NOT EXISTS quarantine (
    pack_id TEXT PRIMARY KEY, quarantined_at TEXT NOT NULL, reason TEXT NOT NULL,
    chunks_recovered INTEGER NOT NULL, chunks_lost INTEGER NOT NULL, moved_at TEXT
);
"""


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection. When the database is complete in its file (no -wal), and SQLite cannot
    create the shared-memory file it wants for WAL (a full or read-only file system), open it immutable."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        conn.close()
        if Path(f"{path}-wal").exists() and Path(f"{path}-wal").stat().st_size > 0:
            raise
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    return conn


SQLITE_FULL: Final = 13
SQLITE_IOERR: Final = 10


def _is_full(exc: sqlite3.Error) -> bool:
    """SQLite's "database or disk is full", or an I/O error (what a full file system gives while writing)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (SQLITE_FULL, SQLITE_IOERR):
        return True
    return "disk is full" in str(exc) or "disk I/O error" in str(exc)


@dataclass(frozen=True, slots=True)
class FileRow:
    path: str
    role: str
    size: int
    mtime_ns: int
    manifest_id: ChunkId
    digest: str


@dataclass(frozen=True, slots=True)
class VersionRow:
    version_id: int
    snapshot_id: str
    created_at: str
    volume_key: str
    datastore: str
    path: str
    name: str
    kind: str
    state: str
    reason: str | None
    size: int
    avm: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class LostChunk:
    """A chunk a file version references that no pack holds any more (see catalog.salvage)."""

    chunk_id: ChunkId
    type: int
    pack_id: str | None  # the pack it was last stored in, when known
    lost_at: str
    reason: str


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    """A damaged pack that repair took out of use, to be kept in ``quarantine/``."""

    pack_id: str
    quarantined_at: str
    reason: str
    chunks_recovered: int
    chunks_lost: int
    moved_at: str | None  # None: still to be moved (repair was interrupted)


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    id: str
    created_at: str
    hostname: str
    sources: list[str]
    stats: dict[str, Any]


class Index:
    """Queries and writes of ``catalog.db``; every query returns dataclasses."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        # An encrypted repository's keys (set by its Repository): chunks.sha256 then holds the sealed SHA-256
        # as packs do, which the queries below unseal, and a SHA-256 names a chunk only through the id key.
        self.keys: RepoKeys | None = None
        self._lock = threading.RLock()
        self.readonly = readonly
        self._local = threading.local()  # each ingest worker's own connection for chunk look-ups
        self._lookups: list[sqlite3.Connection] = []
        try:
            if readonly:
                conn = _connect_readonly(path)
            else:
                if not path.exists():
                    # SQLite gives the -wal and -shm files the database's mode: create it private.
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                conn = sqlite3.connect(path, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            if not readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if not readonly and version in (0, SCHEMA_VERSION):
                conn.executescript(SCHEMA)  # idempotent: also adds tables a newer minor release introduced
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.commit()
            elif version not in (0, SCHEMA_VERSION):
                raise CatalogCorrupt(path=path, detail=f"unknown schema version {version}")
            conn.execute("SELECT count(*) FROM snapshots").fetchone()
        except sqlite3.DatabaseError as exc:
            if _is_full(exc):
                raise StoreFull(path=path) from exc
            raise CatalogCorrupt(path=path, detail=str(exc)) from exc
        self.conn = conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One committed transaction; a full disk is StoreFull (the transaction is rolled back)."""
        try:
            with self.conn:
                yield
        except sqlite3.OperationalError as exc:
            if _is_full(exc):
                raise StoreFull(path=self.path) from exc
            raise

    @property
    def db(self) -> Any:
        """The catalog as a ``sqlite_utils.Database`` (imported on demand: it is slow to import)."""
        import sqlite_utils

        return sqlite_utils.Database(self.conn)

    def close(self) -> None:
        with self._lock:
            for conn in self._lookups:
                conn.close()
            self._lookups.clear()
        self.conn.close()

    def _lookup_conn(self) -> sqlite3.Connection | None:
        """This thread's own connection for chunk look-ups (None: use the shared one, under the lock).

        In WAL mode it reads the last committed state while another thread commits a pack's
        rows, so the ingest workers never wait for the pack writer's transactions.
        """
        if self.readonly:
            return None
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            self._local.conn = conn
            with self._lock:
                self._lookups.append(conn)
        return conn

    # -- chunks and packs -------------------------------------------------

    def _sha256(self, chunk_id: bytes, stored: bytes) -> bytes:
        """The plain SHA-256 of a chunk from the value in ``chunks.sha256``."""
        return stored if self.keys is None else self.keys.unseal_sha256(chunk_id, stored)

    def chunk_sha256(self, chunk_id: ChunkId) -> bytes | None:
        """The SHA-256 of a chunk the catalog holds (committed rows only, when called from a worker)."""
        sql = "SELECT sha256 FROM chunks WHERE id = ?"
        conn = self._lookup_conn()
        if conn is not None:
            row = conn.execute(sql, (chunk_id,)).fetchone()
        else:
            with self._lock:
                row = self.conn.execute(sql, (chunk_id,)).fetchone()
        return None if row is None else self._sha256(chunk_id, bytes(row[0]))

    def chunk_by_sha256(self, sha256: bytes, raw_size: int) -> ChunkId | None:
        """The id of a stored data chunk with this SHA-256 (what a host that only has hashlib computes)."""
        if self.keys is not None:  # encrypted: the id is a keyed hash of the SHA-256
            sql = "SELECT id FROM chunks WHERE id = ? AND raw_size = ? AND type = 0"
            key = bytes(self.keys.chunk_id(sha256))
        else:
            sql, key = "SELECT id FROM chunks WHERE sha256 = ? AND raw_size = ? AND type = 0 LIMIT 1", sha256
        with self._lock:
            row = self.conn.execute(sql, (key, raw_size)).fetchone()
        return None if row is None else ChunkId(bytes(row[0]))

    def locate(self, chunk_id: ChunkId) -> ChunkLocation | None:
        with self._lock:
            row = self.conn.execute(
                "SELECT pack_id, offset, stored_size, raw_size, codec, sha256 FROM chunks WHERE id = ?",
                (chunk_id,),
            ).fetchone()
        if row is None:
            return None
        return ChunkLocation(
            chunk_id, PackId(row[0]), row[1], row[2], row[3], row[4], self._sha256(chunk_id, bytes(row[5]))
        )

    def locate_many(self, chunk_ids: Iterable[ChunkId]) -> dict[bytes, ChunkLocation]:
        """Where each of these chunks is stored (ids the catalog lacks are absent)."""
        ids = list(chunk_ids)
        out: dict[bytes, ChunkLocation] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            sql = (  # the only interpolation is a run of "?" marks
                "SELECT id, pack_id, offset, stored_size, raw_size, codec, sha256 FROM chunks "  # noqa: S608
                f"WHERE id IN ({marks})"
            )
            with self._lock:
                rows = self.conn.execute(sql, part).fetchall()
            for r in rows:
                cid = ChunkId(bytes(r[0]))
                out[cid] = ChunkLocation(cid, PackId(r[1]), r[2], r[3], r[4], r[5], self._sha256(cid, bytes(r[6])))
        return out

    def add_pack(
        self, pack_id: PackId, size: int, entries: Iterable[PackEntry], added_at: str, *, replace: bool = False
    ) -> None:
        """Index a sealed pack; ``replace`` points chunks already indexed elsewhere at this pack (repacking)."""
        rows = [(e.chunk_id, e.type, pack_id, e.offset, e.stored_size, e.raw_size, e.codec, e.sha256) for e in entries]
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        with self._lock, self._transaction():
            if self.conn.execute(
                "SELECT 1 FROM quarantine WHERE pack_id = ? AND moved_at IS NULL", (pack_id,)
            ).fetchone():
                return  # damaged, taken out of use by repair and not yet moved to quarantine/: never again
            self.conn.execute(
                "INSERT OR IGNORE INTO packs (id, size, chunk_count, added_at) VALUES (?, ?, ?, ?)",
                (pack_id, size, len(rows), added_at),
            )
            self.conn.executemany(f"{verb} INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            # A lost chunk stored again (a snapshot read it from its datastore) is no longer lost.
            self.conn.executemany("DELETE FROM lost_chunks WHERE id = ?", [(r[0],) for r in rows])
            self.conn.executemany("DELETE FROM lost_uses WHERE chunk_id = ?", [(r[0],) for r in rows])

    def remove_pack(self, pack_id: str) -> None:
        with self._lock, self._transaction():
            self.conn.execute("DELETE FROM chunks WHERE pack_id = ?", (pack_id,))
            self.conn.execute("DELETE FROM packs WHERE id = ?", (pack_id,))

    def remove_snapshot(self, snapshot_id: str) -> None:
        """Forget a snapshot and its versions; volumes left with no version are forgotten too."""
        with self._lock, self._transaction():
            self.conn.execute(
                "DELETE FROM files WHERE version_id IN (SELECT id FROM versions WHERE snapshot_id = ?)", (snapshot_id,)
            )
            self.conn.execute("DELETE FROM versions WHERE snapshot_id = ?", (snapshot_id,))
            self.conn.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))
            self.conn.execute("DELETE FROM volumes WHERE id NOT IN (SELECT DISTINCT volume_id FROM versions)")
            self.conn.execute("DELETE FROM manifests WHERE id NOT IN (SELECT DISTINCT manifest_id FROM files)")

    def manifests_in_use(self, without: set[str]) -> list[bytes]:
        """Manifest ids of every file version, except those of snapshots in ``without``."""
        rows = self.conn.execute(
            "SELECT DISTINCT f.manifest_id, v.snapshot_id FROM files f JOIN versions v ON v.id = f.version_id"
        )
        return sorted({bytes(r[0]) for r in rows if r[1] not in without})

    def add_manifest(self, manifest_id: ChunkId, file_size: int, chunk_count: int, hole_count: int) -> None:
        with self._lock, self._transaction():
            self.conn.execute(
                "INSERT OR IGNORE INTO manifests VALUES (?, ?, ?, ?)",
                (manifest_id, file_size, chunk_count, hole_count),
            )

    def pack_ids(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT id FROM packs")}

    def packs(self) -> list[tuple[str, int, int, str | None]]:
        """(pack_id, size, chunk_count, verified_at), least recently verified first."""
        return list(
            self.conn.execute(
                "SELECT id, size, chunk_count, verified_at FROM packs ORDER BY verified_at IS NOT NULL, verified_at, id"
            )
        )

    def mark_packs_verified(self, pack_ids: Iterable[str], when: str) -> None:
        with self._lock, self._transaction():
            self.conn.executemany("UPDATE packs SET verified_at = ? WHERE id = ?", [(when, p) for p in pack_ids])

    def chunks_in_pack(self, pack_id: str) -> dict[bytes, tuple[int, int, int, int, int, bytes]]:
        """chunk_id -> (type, offset, stored_size, raw_size, codec, sha256 field as the pack stores it) of one pack."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT id, type, offset, stored_size, raw_size, codec, sha256 FROM chunks WHERE pack_id = ?",
                (pack_id,),
            ).fetchall()
        return {bytes(r[0]): (r[1], r[2], r[3], r[4], r[5], bytes(r[6])) for r in rows}

    # -- lost chunks and quarantined packs (written by catalog.salvage) ----

    def _has_table(self, name: str) -> bool:
        """False for a catalog from before the table existed, opened read-only (nothing could add it)."""
        row = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
        return row is not None

    def retire_packs(
        self, retired: Iterable[QuarantineRow], lost: Iterable[LostChunk], uses: Iterable[tuple[bytes, bytes]]
    ) -> None:
        """In one transaction: forget damaged packs (their rows), note them for quarantine, and set the lost state."""
        with self._lock, self._transaction():
            for q in retired:
                self.conn.execute("DELETE FROM chunks WHERE pack_id = ?", (q.pack_id,))
                self.conn.execute("DELETE FROM packs WHERE id = ?", (q.pack_id,))
                self.conn.execute(
                    "INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?, ?, ?)",
                    (q.pack_id, q.quarantined_at, q.reason, q.chunks_recovered, q.chunks_lost, q.moved_at),
                )
            self._replace_lost(lost, uses)

    def set_lost(self, lost: Iterable[LostChunk], uses: Iterable[tuple[bytes, bytes]]) -> None:
        """Replace the lost state: ``lost`` is every lost chunk now, ``uses`` (manifest id, chunk id) pairs."""
        with self._lock, self._transaction():
            self._replace_lost(lost, uses)

    def _replace_lost(self, lost: Iterable[LostChunk], uses: Iterable[tuple[bytes, bytes]]) -> None:
        rows = {c.chunk_id: c for c in lost}
        known = {bytes(r[0]) for r in self.conn.execute("SELECT id FROM lost_chunks")}
        self.conn.executemany("DELETE FROM lost_chunks WHERE id = ?", [(cid,) for cid in known - set(rows)])
        self.conn.executemany(  # a chunk lost before keeps when and how it was lost
            "INSERT OR IGNORE INTO lost_chunks VALUES (?, ?, ?, ?, ?)",
            [(c.chunk_id, c.type, c.pack_id, c.lost_at, c.reason) for c in rows.values()],
        )
        self.conn.execute("DELETE FROM lost_uses")
        self.conn.executemany("INSERT OR IGNORE INTO lost_uses VALUES (?, ?)", list(uses))

    def add_quarantine(self, row: QuarantineRow) -> None:
        """Record a quarantined pack found on disk (a catalog rebuild reads ``quarantine/``)."""
        with self._lock, self._transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?, ?, ?)",
                (row.pack_id, row.quarantined_at, row.reason, row.chunks_recovered, row.chunks_lost, row.moved_at),
            )

    def quarantine_moved(self, pack_id: str, when: str) -> None:
        with self._lock, self._transaction():
            self.conn.execute("UPDATE quarantine SET moved_at = ? WHERE pack_id = ?", (when, pack_id))

    def forget_quarantine(self, pack_id: str) -> None:
        """A sound copy of the pack is back in ``packs/``: it may be indexed again."""
        with self._lock, self._transaction():
            self.conn.execute("DELETE FROM quarantine WHERE pack_id = ?", (pack_id,))

    def quarantined(self) -> list[QuarantineRow]:
        if not self._has_table("quarantine"):
            return []
        with self._lock:
            rows = self.conn.execute("SELECT * FROM quarantine ORDER BY quarantined_at, pack_id").fetchall()
        return [QuarantineRow(*r) for r in rows]

    def lost_chunks(self) -> dict[bytes, LostChunk]:
        """Every chunk marked lost that no pack holds (a chunk indexed again is not lost, whatever the row says)."""
        if not self._has_table("lost_chunks"):
            return {}
        with self._lock:
            rows = self.conn.execute(
                "SELECT l.id, l.type, l.pack_id, l.lost_at, l.reason FROM lost_chunks l "
                "WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = l.id)"
            ).fetchall()
        return {bytes(r[0]): LostChunk(ChunkId(bytes(r[0])), r[1], r[2], r[3], r[4]) for r in rows}

    def lost_uses(self) -> dict[bytes, set[bytes]]:
        """manifest id -> the lost chunks it names (its own id when the manifest itself is lost)."""
        if not self._has_table("lost_uses"):
            return {}
        out: dict[bytes, set[bytes]] = {}
        with self._lock:
            rows = self.conn.execute(
                "SELECT u.manifest_id, u.chunk_id FROM lost_uses u "
                "WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = u.chunk_id)"
            ).fetchall()
        for m, c in rows:
            out.setdefault(bytes(m), set()).add(bytes(c))
        return out

    def has_lost(self, manifest_id: bytes) -> bool:
        """True when this manifest, or a chunk it names, is lost: its file must be read again to heal it."""
        if not self._has_table("lost_uses"):
            return False
        with self._lock:
            row = self.conn.execute(
                "SELECT 1 FROM lost_uses u WHERE u.manifest_id = ? "
                "AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = u.chunk_id) LIMIT 1",
                (manifest_id,),
            ).fetchone()
        return row is not None

    def manifest_info(self, manifest_id: bytes) -> tuple[int, int, int] | None:
        """(file_size, chunk_count, hole_count) of a manifest the catalog decoded once, else None."""
        with self._lock:
            row = self.conn.execute(
                "SELECT file_size, chunk_count, hole_count FROM manifests WHERE id = ?", (manifest_id,)
            ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), int(row[2]))

    def file_size_of(self, manifest_id: bytes) -> int | None:
        """The size of a stored file version that has this manifest (what the snapshot document recorded)."""
        with self._lock:
            row = self.conn.execute("SELECT size FROM files WHERE manifest_id = ? LIMIT 1", (manifest_id,)).fetchone()
        return None if row is None else int(row[0])

    def stored_totals(self) -> tuple[int, int, int]:
        """(pack bytes, stored chunk bytes, raw chunk bytes) of data chunks."""
        packs = self.conn.execute("SELECT coalesce(sum(size), 0) FROM packs").fetchone()[0]
        stored, raw = self.conn.execute(
            "SELECT coalesce(sum(stored_size), 0), coalesce(sum(raw_size), 0) FROM chunks WHERE type = 0"
        ).fetchone()
        return int(packs), int(stored), int(raw)

    # -- snapshots --------------------------------------------------------

    def snapshot_ids(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT id FROM snapshots")}

    def add_snapshot(self, snapshot_id: str, doc: dict[str, Any]) -> None:
        """Record a committed snapshot document and its volume versions in one transaction."""
        with self._lock, self._transaction():
            self.conn.execute(
                "INSERT INTO snapshots VALUES (?, ?, ?, ?, ?)",
                (
                    snapshot_id,
                    doc["created_at"],
                    doc["hostname"],
                    json.dumps(doc["sources"]),
                    json.dumps(doc["stats"], sort_keys=True),
                ),
            )
            for vol in doc["volumes"]:
                self.conn.execute(
                    "INSERT INTO volumes (key, datastore, path, name, kind) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET name = excluded.name, kind = excluded.kind",
                    (vol["key"], vol["datastore"], vol["path"], vol["name"], vol["kind"]),
                )
                volume_id = self.conn.execute("SELECT id FROM volumes WHERE key = ?", (vol["key"],)).fetchone()[0]
                size = sum(f["size"] for f in vol["files"])
                avm = json.dumps(vol["avm"], sort_keys=True) if vol.get("avm") is not None else None
                cur = self.conn.execute(
                    "INSERT INTO versions (snapshot_id, volume_id, state, reason, size, avm) VALUES (?, ?, ?, ?, ?, ?)",
                    (snapshot_id, volume_id, vol["state"], vol.get("reason"), size, avm),
                )
                self.conn.executemany(
                    "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            cur.lastrowid,
                            f["path"],
                            f["role"],
                            f["size"],
                            f["mtime_ns"],
                            bytes.fromhex(f["manifest"]),
                            f["digest"],
                        )
                        for f in vol["files"]
                    ],
                )

    def snapshots(self) -> list[SnapshotRow]:
        return [
            SnapshotRow(r[0], r[1], r[2], json.loads(r[3]), json.loads(r[4]))
            for r in self.conn.execute(
                "SELECT id, created_at, hostname, sources, stats FROM snapshots ORDER BY created_at, id"
            )
        ]

    _VERSION_SELECT: Final = (
        "SELECT v.id, s.id, s.created_at, vol.key, vol.datastore, vol.path, vol.name, vol.kind, "
        "v.state, v.reason, v.size, v.avm FROM versions v JOIN snapshots s ON s.id = v.snapshot_id "
        "JOIN volumes vol ON vol.id = v.volume_id "
    )

    def _versions(self, where: str, params: tuple[object, ...]) -> list[VersionRow]:
        return [
            VersionRow(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                r[7],
                r[8],
                r[9],
                r[10],
                json.loads(r[11]) if r[11] else None,
            )
            for r in self.conn.execute(self._VERSION_SELECT + where, params)
        ]

    def versions_of_snapshot(self, snapshot_id: str) -> list[VersionRow]:
        return self._versions("WHERE s.id = ? ORDER BY vol.key", (snapshot_id,))

    def all_versions(self) -> list[VersionRow]:
        return self._versions("ORDER BY vol.key, s.created_at", ())

    def latest_versions(self, datastore: str) -> dict[str, VersionRow]:
        """The newest version of each volume of a datastore (deleted ones included)."""
        rows = self._versions(
            "WHERE vol.datastore = ? AND s.created_at = (SELECT max(s2.created_at) FROM versions v2 "
            "JOIN snapshots s2 ON s2.id = v2.snapshot_id WHERE v2.volume_id = v.volume_id)",
            (datastore,),
        )
        return {r.volume_key: r for r in rows}

    def versions_as_of(self, as_of: str) -> list[VersionRow]:
        """Per volume, the newest version captured at or before ``as_of`` that holds files."""
        return self._versions(
            "WHERE v.id = (SELECT v2.id FROM versions v2 JOIN snapshots s2 ON s2.id = v2.snapshot_id "
            "WHERE v2.volume_id = v.volume_id AND s2.created_at <= ? "
            "ORDER BY s2.created_at DESC, s2.id DESC LIMIT 1) ORDER BY vol.key",
            (as_of,),
        )

    def newest_with_files(self, volume_key: str, as_of: str) -> VersionRow | None:
        rows = self._versions(
            "WHERE vol.key = ? AND s.created_at <= ? AND EXISTS (SELECT 1 FROM files f WHERE f.version_id = v.id) "
            "ORDER BY s.created_at DESC, s.id DESC LIMIT 1",
            (volume_key, as_of),
        )
        return rows[0] if rows else None

    def history(self, pattern: str) -> list[VersionRow]:
        return self._versions(
            "WHERE vol.key GLOB ? OR vol.name GLOB ? OR vol.path GLOB ? ORDER BY vol.key, s.created_at",
            (pattern, pattern, pattern),
        )

    def files(self, version_id: int) -> list[FileRow]:
        return [
            FileRow(r[0], r[1], r[2], r[3], ChunkId(bytes(r[4])), r[5])
            for r in self.conn.execute(
                "SELECT path, role, size, mtime_ns, manifest_id, digest FROM files WHERE version_id = ? ORDER BY path",
                (version_id,),
            )
        ]

    def distinct_manifests(self) -> Iterator[tuple[bytes, str]]:
        """(manifest_id, digest) of every stored file version, once each."""
        for r in self.conn.execute("SELECT DISTINCT manifest_id, digest FROM files"):
            yield bytes(r[0]), r[1]

    def versions_using_manifests(self, manifest_ids: Iterable[bytes]) -> list[tuple[str, str, str, str]]:
        """(volume key, snapshot id, created_at, file path) of every version that uses a manifest."""
        ids = list(manifest_ids)
        out: list[tuple[str, str, str, str]] = []
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            # The only interpolation is a run of "?" marks.
            sql = (
                "SELECT vol.key, s.id, s.created_at, f.path FROM files f JOIN versions v ON v.id = f.version_id "  # noqa: S608
                "JOIN volumes vol ON vol.id = v.volume_id JOIN snapshots s ON s.id = v.snapshot_id "
                f"WHERE f.manifest_id IN ({marks}) ORDER BY vol.key, s.created_at"
            )
            out += [(r[0], r[1], r[2], r[3]) for r in self.conn.execute(sql, part)]
        return out

    def add_verify_run(self, run: dict[str, Any]) -> None:
        with self._lock, self._transaction():
            self.conn.execute(
                "INSERT INTO verify_runs (started_at, duration_s, level, scope, ok, problems, bytes_read, packs_read, "
                "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run["started_at"],
                    run["duration_s"],
                    run["level"],
                    run["scope"],
                    int(run["ok"]),
                    run["problems"],
                    run["bytes_read"],
                    run["packs_read"],
                    json.dumps(run.get("detail", {}), sort_keys=True),
                ),
            )

    def verify_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT started_at, duration_s, level, scope, ok, problems, bytes_read, packs_read, detail "
            "FROM verify_runs ORDER BY started_at DESC LIMIT ?",
            (limit,),
        )
        keys = ("started_at", "duration_s", "level", "scope", "ok", "problems", "bytes_read", "packs_read", "detail")
        return [dict(zip(keys, (*r[:4], bool(r[4]), *r[5:8], json.loads(r[8])), strict=True)) for r in rows]

    def coverage(self, since: str) -> tuple[int, int]:
        """(pack bytes read and found sound since ``since``, all pack bytes)."""
        done, total = self.conn.execute(
            "SELECT coalesce(sum(CASE WHEN verified_at >= ? THEN size ELSE 0 END), 0), coalesce(sum(size), 0) "
            "FROM packs",
            (since,),
        ).fetchone()
        return int(done), int(total)

    def logical_bytes(self) -> int:
        return int(self.conn.execute("SELECT coalesce(sum(size), 0) FROM versions").fetchone()[0])
