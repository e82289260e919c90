"""A repository directory: config, packs, snapshot documents, locks and the catalog.

Layout (see docs/format.md)::

    config                    JSON, written once at init
    packs/<ab>/<pack_id>      immutable packs named by their xxh3-128
    snapshots/<id>.json       one immutable document per committed snapshot (id = its SHA-256)
    locks/writer              the writer lock
    tmp/                      packs and documents being written
    catalog.db                the SQLite catalog (an index, rebuildable)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from catalog import pack
from catalog.chunker import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from catalog.errors import (
    ConfigInvalid,
    Error,
    PackCorrupt,
    SnapshotDocumentCorrupt,
    StoreExists,
    StoreFull,
    StoreNotFound,
    StoreVersionUnsupported,
)
from catalog.index import Index
from catalog.lock import register_reader, writer_lock
from catalog.store import DEFAULT_PACK_TARGET_BYTES, DEFAULT_ZSTD_LEVEL, PackReader, fsync_dir, pack_path
from catalog.types import PackEntry, PackId

log = logging.getLogger(__name__)

FORMAT_NAME: Final = "appstack-toolkit-repository"
FORMAT_VERSION: Final = 1
SNAPSHOT_FORMAT: Final = "appstack-toolkit-snapshot"
DIRS: Final = ("packs", "snapshots", "locks", "tmp")


class OwnedByOther(Error):
    template = "{path} belongs to user id {uid}, not to the user running this command"
    hint = "run as the repository's owner, or pass --allow-other-owner if that is intended"
    code = "owned_by_other"


class BadChunkSize(Error):
    template = "chunk size {size} is not a power of two between 64 KiB and 4 MiB"
    code = "bad_chunk_size"


@dataclass(frozen=True, slots=True)
class RepoConfig:
    id: str
    chunk_size: int
    zstd_level: int
    pack_target_bytes: int
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "id": self.id,
            "chunk_size": self.chunk_size,
            "chunk_id": "xxh3-128",
            "file_digest": "sha256-blocks",
            "compression": {"codec": "zstd", "level": self.zstd_level},
            "pack_target_bytes": self.pack_target_bytes,
            "created_at": self.created_at,
        }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def write_atomic(root: Path, final: Path, data: bytes) -> None:
    """Write to tmp/, fsync, rename into place, fsync the directory."""
    tmp = root / "tmp" / f"{final.name}.{uuid.uuid4().hex}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (28, 122):  # ENOSPC, EDQUOT
            raise StoreFull(path=final) from exc
        raise
    fsync_dir(final.parent)


def encode_snapshot_doc(doc: dict[str, Any]) -> tuple[str, bytes]:
    """(snapshot id, bytes) of a snapshot document: canonical JSON, named by its SHA-256."""
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    return hashlib.sha256(data).hexdigest(), data


class Repository:
    """An open repository. Readers use it freely; writers go through :meth:`writing`."""

    def __init__(self, root: Path, config: RepoConfig, index: Index, *, command: str = "read") -> None:
        self.root = root
        self.config = config
        self.index = index
        self.reader = PackReader(root)
        # Announced before the catalog is read, so a prune running meanwhile keeps the packs it may read.
        self._reader_file = register_reader(root, command)

    # -- opening ----------------------------------------------------------

    @classmethod
    def init(
        cls,
        root: Path,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        zstd_level: int = DEFAULT_ZSTD_LEVEL,
        pack_target_bytes: int | None = None,
    ) -> Repository:
        if chunk_size & (chunk_size - 1) or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise BadChunkSize(size=chunk_size)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise StoreExists(path=root)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in DIRS:
            (root / d).mkdir(mode=0o700)
        env_target = os.environ.get("TOOLKIT_PACK_MAX_BYTES")
        target = pack_target_bytes or (int(env_target) if env_target else DEFAULT_PACK_TARGET_BYTES)
        config = RepoConfig(uuid.uuid4().hex, chunk_size, zstd_level, target, now_iso())
        write_atomic(root, root / "config", json.dumps(config.to_json(), indent=2).encode() + b"\n")
        return cls(root, config, Index(root / "catalog.db"))

    @classmethod
    def open(cls, root: Path, *, readonly: bool = False, allow_other_owner: bool = False) -> Repository:
        config = read_config(root)
        owner = root.stat().st_uid
        if owner != os.getuid() and not allow_other_owner:
            raise OwnedByOther(path=root, uid=owner)
        db = root / "catalog.db"
        if readonly and not db.exists():
            readonly = False  # a missing catalog is rebuilt below
        index = Index(db, readonly=readonly)
        repo = cls(root, config, index)
        if not readonly and not index.snapshot_ids() and not index.pack_ids():
            # A fresh or lost catalog: pick up whatever packs and documents exist.
            repo.reconcile()
        return repo

    def close(self) -> None:
        self.reader.close()
        self.index.close()
        if self._reader_file is not None:
            self._reader_file.unlink(missing_ok=True)
            self._reader_file = None

    # -- writing ----------------------------------------------------------

    @contextlib.contextmanager
    def writing(self, command: str) -> Iterator[None]:
        """Hold the writer lock; bring the catalog up to date with the files first."""
        with writer_lock(self.root, command):
            self.clean_tmp()
            self.reconcile()
            yield

    def clean_tmp(self) -> None:
        for leftover in (self.root / "tmp").iterdir():
            log.info("removing %s left by an interrupted run", leftover.name)
            leftover.unlink(missing_ok=True)

    def reconcile(self) -> tuple[int, int]:
        """Index packs and snapshot documents that exist but are not in the catalog.

        A crash between renaming a pack (or a document) into place and committing
        its catalog rows leaves exactly this; nothing is lost, it is picked up here.
        Returns (packs added, snapshots added).
        """
        known = self.index.pack_ids()
        packs_added = 0
        for pack_id, path in self.iter_pack_files():
            if pack_id in known:
                continue
            try:
                entries = read_pack_index(path, pack_id)
            except PackCorrupt as exc:
                log.warning("%s; its chunks are not used", exc)
                continue
            self.index.add_pack(PackId(pack_id), path.stat().st_size, entries, now_iso())
            packs_added += 1
        snaps_added = 0
        have = self.index.snapshot_ids()
        for snap_id, path in self.iter_snapshot_files():
            if snap_id in have:
                continue
            doc = self.load_snapshot_doc(snap_id, path)
            self.index_manifests_of(doc)
            self.index.add_snapshot(snap_id, doc)
            snaps_added += 1
        return packs_added, snaps_added

    def index_manifests_of(self, doc: dict[str, Any]) -> None:
        from catalog.manifest import decode_manifest

        for vol in doc["volumes"]:
            for f in vol["files"]:
                mid = bytes.fromhex(f["manifest"])
                loc = self.index.locate(mid)  # type: ignore[arg-type]
                if loc is None:
                    continue
                try:
                    m = decode_manifest(f["manifest"], self.reader.read(loc))
                except Error as exc:
                    log.warning("%s", exc)
                    continue
                self.index.add_manifest(mid, m.file_size, len(m.chunk_ids), m.hole_count)  # type: ignore[arg-type]

    def write_snapshot(self, doc: dict[str, Any]) -> str:
        """Commit a snapshot: the document becomes durable, then the catalog rows."""
        doc = {"format": SNAPSHOT_FORMAT, "version": 1, **doc}
        snap_id, data = encode_snapshot_doc(doc)
        write_atomic(self.root, self.root / "snapshots" / f"{snap_id}.json", data)
        self.index.add_snapshot(snap_id, doc)
        return snap_id

    # -- files ------------------------------------------------------------

    def iter_pack_files(self) -> Iterator[tuple[str, Path]]:
        for sub in sorted((self.root / "packs").iterdir()):
            if sub.is_dir():
                for p in sorted(sub.iterdir()):
                    yield p.name, p

    def iter_snapshot_files(self) -> Iterator[tuple[str, Path]]:
        for p in sorted((self.root / "snapshots").glob("*.json")):
            yield p.stem, p

    def pack_file(self, pack_id: str) -> Path:
        return pack_path(self.root, pack_id)

    def load_snapshot_doc(self, snap_id: str, path: Path | None = None) -> dict[str, Any]:
        path = path or self.root / "snapshots" / f"{snap_id}.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise SnapshotDocumentCorrupt(path=path, detail="missing") from exc
        if hashlib.sha256(data).hexdigest() != snap_id:
            raise SnapshotDocumentCorrupt(path=path, detail="content does not match its name")
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise SnapshotDocumentCorrupt(path=path, detail="not JSON") from exc
        if not isinstance(doc, dict) or doc.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotDocumentCorrupt(path=path, detail="not a snapshot document")
        check_snapshot_doc(path, doc)
        return doc


_VOLUME_FIELDS: Final[dict[str, type]] = {
    "key": str,
    "datastore": str,
    "path": str,
    "name": str,
    "kind": str,
    "state": str,
}
_FILE_FIELDS: Final[dict[str, type]] = {
    "path": str,
    "role": str,
    "size": int,
    "mtime_ns": int,
    "manifest": str,
    "digest": str,
}


def check_snapshot_doc(path: Path, doc: dict[str, Any]) -> None:
    """Refuse a document whose fields do not have the documented types (docs/format.md §5)."""

    def bad(detail: str) -> SnapshotDocumentCorrupt:
        return SnapshotDocumentCorrupt(path=path, detail=detail)

    if not isinstance(doc.get("created_at"), str) or not isinstance(doc.get("volumes"), list):
        raise bad("created_at or volumes missing")
    if not isinstance(doc.get("hostname"), str) or not isinstance(doc.get("sources"), list):
        raise bad("hostname or sources missing")
    if not isinstance(doc.get("stats"), dict):
        raise bad("stats is not an object")
    for vol in doc["volumes"]:
        if not isinstance(vol, dict) or not isinstance(vol.get("files"), list):
            raise bad("a volume entry is malformed")
        for key, kind in _VOLUME_FIELDS.items():
            if not isinstance(vol.get(key), kind):
                raise bad(f"volume field {key} is missing or not a {kind.__name__}")
        for f in vol["files"]:
            if not isinstance(f, dict):
                raise bad("a file entry is malformed")
            for key, kind in _FILE_FIELDS.items():
                if not isinstance(f.get(key), kind) or isinstance(f.get(key), bool):
                    raise bad(f"file field {key} is missing or not a {kind.__name__}")
            try:
                bytes.fromhex(f["manifest"])
            except ValueError:
                raise bad("a manifest id is not hex") from None


def read_config(root: Path) -> RepoConfig:
    path = root / "config"
    if not root.is_dir() or not path.is_file():
        raise StoreNotFound(path=root)
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigInvalid(path=path, detail="not JSON") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise StoreNotFound(path=root)
    if data.get("version") != FORMAT_VERSION:
        raise StoreVersionUnsupported(path=root, version=data.get("version"), supported=FORMAT_VERSION)
    try:
        return RepoConfig(
            str(data["id"]),
            int(data["chunk_size"]),
            int(data["compression"]["level"]),
            int(data["pack_target_bytes"]),
            str(data["created_at"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigInvalid(path=path, detail=f"missing or bad field {exc}") from exc


def read_pack_index(path: Path, pack_id: str) -> list[PackEntry]:
    """The trailer index of a pack file, read without loading the whole pack."""
    size = path.stat().st_size
    with path.open("rb") as f:
        pack.check_header(pack_id, f.read(pack.HEADER_SIZE))
        if size < pack.HEADER_SIZE + pack.FOOTER_SIZE:
            raise PackCorrupt(pack_id=pack_id, detail="truncated")
        f.seek(size - pack.FOOTER_SIZE)
        index_offset, count = pack.parse_footer(pack_id, f.read(pack.FOOTER_SIZE), size)
        f.seek(index_offset)
        return pack.parse_index(pack_id, f.read(count * pack.INDEX_ENTRY.size), index_offset)
