"""A repository directory: config, packs, snapshot documents, locks and the catalog.

Layout (see docs/format.md)::

    config                    JSON, written once at init
    packs/<ab>/<pack_id>      immutable packs named by their xxh3-128
    snapshots/<id>.json       one immutable document per committed snapshot (id = its SHA-256)
    keys                      key slots (encrypted repositories only, see catalog.keys)
    locks/writer              the writer lock
    tmp/                      packs and documents being written
    catalog.db                the SQLite catalog (an index, rebuildable)

An encrypted repository (config version 2) encrypts every record and every
snapshot document; the repository holds its keys (:class:`catalog.crypto.RepoKeys`)
once a passphrase unlocked them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from catalog import pack
from catalog.chunker import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from catalog.crypto import CHUNK_ID_SCHEME, CIPHERS, RepoKeys, Unauthentic
from catalog.errors import (
    CatalogCorrupt,
    ConfigInvalid,
    Error,
    PackCorrupt,
    SnapshotDocumentCorrupt,
    StoreExists,
    StoreNotFound,
    StoreVersionUnsupported,
)
from catalog.index import Index
from catalog.keys import (
    DEFAULT_KDF,
    EncryptionConfig,
    KdfParams,
    KeyMismatch,
    PassphraseEmpty,
    PassphraseRequired,
    create_keys,
    keys_path,
    unlocked_keys,
)
from catalog.lock import HeldLock, LockInfo, ReaderAnnouncement, live_readers, register_reader, writer_lock
from catalog.remote import (
    DEFAULT_CACHE_BYTES,
    UPLOADS_IN_FLIGHT,
    PackCache,
    Remote,
    announce_reader,
    check_uploaded,
    delete_remote_pack,
    document_path,
    fetch_document,
    forget_remote_snapshot,
    reconcile_remote,
    remote_readers,
    remote_writer_lock,
    retry_forgotten,
    sync_documents,
)
from catalog.store import DEFAULT_PACK_TARGET_BYTES, DEFAULT_ZSTD_LEVEL, PackReader, PackWriter, pack_path
from catalog.store import write_atomic as write_atomic  # it lived here first; callers still import it from here
from catalog.types import PackEntry, PackId

log = logging.getLogger(__name__)

FORMAT_NAME: Final = "appstack-toolkit-repository"
FORMAT_VERSION: Final = 1
# Version 2 is version 1 with encryption. A toolkit that only knows version 1 refuses it, so it can
# never add plaintext records to an encrypted repository.
ENCRYPTED_FORMAT_VERSION: Final = 2
SNAPSHOT_FORMAT: Final = "appstack-toolkit-snapshot"
ENCRYPTED_SNAPSHOT_FORMAT: Final = "appstack-toolkit-snapshot-encrypted"
DIRS: Final = ("packs", "snapshots", "locks", "tmp")


class OwnedByOther(Error):
    template = "{path} belongs to user id {uid}, not to the user running this command"
    hint = "run as the repository's owner, or pass --allow-other-owner if that is intended"
    code = "owned_by_other"


class BadChunkSize(Error):
    template = "chunk size {size} is not a power of two between 64 KiB and 4 MiB"
    code = "bad_chunk_size"


class UnknownCipher(Error):
    template = "unknown encryption {cipher!r}; choose one of {choices}"
    hint = "aes-256-gcm on CPUs with AES instructions, chacha20-poly1305 on others"
    code = "unknown_cipher"


@dataclass(frozen=True, slots=True)
class RepoConfig:
    id: str
    chunk_size: int
    zstd_level: int
    pack_target_bytes: int
    created_at: str
    encryption: EncryptionConfig | None = None  # None: an unencrypted repository

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION if self.encryption is None else ENCRYPTED_FORMAT_VERSION,
            "id": self.id,
            "chunk_size": self.chunk_size,
            "chunk_id": "xxh3-128" if self.encryption is None else CHUNK_ID_SCHEME,
            "file_digest": "sha256-blocks",
            "compression": {"codec": "zstd", "level": self.zstd_level},
            "pack_target_bytes": self.pack_target_bytes,
            "created_at": self.created_at,
        }
        if self.encryption is not None:
            data["encryption"] = self.encryption.to_json()
        return data


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def encode_snapshot_doc(doc: dict[str, Any], keys: RepoKeys | None = None) -> tuple[str, bytes]:
    """(snapshot id, bytes) of a snapshot document: canonical JSON, named by its SHA-256.

    With ``keys`` the canonical JSON is encrypted and wrapped in a small JSON
    envelope; the name is still the SHA-256 of the file as written.
    """
    data = _canonical(doc)
    if keys is not None:
        sealed = keys.encrypt_document("snapshot", data)
        data = _canonical(
            {
                "format": ENCRYPTED_SNAPSHOT_FORMAT,
                "version": 1,
                "cipher": keys.cipher,
                "data": base64.b64encode(sealed).decode(),
            }
        )
    return hashlib.sha256(data).hexdigest(), data


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def _resolve_keys(root: Path, config: RepoConfig, keys: RepoKeys | None) -> RepoKeys | None:
    """The keys an open repository uses: None when unencrypted; refuses a missing or foreign key."""
    if config.encryption is None:
        return None
    keys = keys if keys is not None else unlocked_keys(config.id)
    if keys is None:
        raise PassphraseRequired(path=root)
    if keys.repo_id != config.id or not keys.matches(config.encryption.key_check):
        raise KeyMismatch(slot="given", path=keys_path(root))
    return keys


class Repository:
    """An open repository. Readers use it freely; writers go through :meth:`writing`.

    With ``remote`` the repository is kept in an object store (:mod:`catalog.remote`) and
    ``root`` is this host's cache of it: a copy of its config, ``catalog.db`` and a bounded
    pack cache (``cache_bytes``); everything else behaves as for a directory.
    """

    def __init__(
        self,
        root: Path,
        config: RepoConfig,
        index: Index,
        *,
        command: str = "read",
        keys: RepoKeys | None = None,
        remote: Remote | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.root = root
        self.config = config
        # Encrypted: the keys handed over, else those unlocked around this call (catalog.keys.unlocked).
        self.keys = _resolve_keys(root, config, keys)
        self.index = index
        index.keys = self.keys  # the catalog seals and unseals the SHA-256 field, and names hashed chunks
        self.remote = remote
        self.cache = PackCache(root, remote, cache_bytes) if remote is not None else None
        self.remote_pack_sizes: dict[str, int] = {}  # a remote repository's packs as last listed
        self.reader = PackReader(root, self.keys, self.cache.pread if self.cache is not None else None)
        self._writer_locks: list[HeldLock] = []  # held within writing()
        # Announced before the catalog is read, so a prune running meanwhile keeps the packs it may read.
        self._announcement: ReaderAnnouncement | None = (
            register_reader(root, command) if remote is None else announce_reader(remote, command)
        )

    # -- opening ----------------------------------------------------------

    @classmethod
    def init(
        cls,
        root: Path,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        zstd_level: int = DEFAULT_ZSTD_LEVEL,
        pack_target_bytes: int | None = None,
        encryption: str | None = None,
        passphrase: str | None = None,
        kdf: KdfParams = DEFAULT_KDF,
    ) -> Repository:
        """Create a repository; with ``encryption`` (a cipher of catalog.crypto.CIPHERS) an encrypted one whose
        first key slot opens with ``passphrase``."""
        if chunk_size & (chunk_size - 1) or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise BadChunkSize(size=chunk_size)
        if encryption is not None and encryption not in CIPHERS:
            raise UnknownCipher(cipher=encryption, choices=", ".join(CIPHERS))
        if encryption is not None and not passphrase:
            raise PassphraseEmpty(what="passphrase")
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise StoreExists(path=root)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in DIRS:
            (root / d).mkdir(mode=0o700)
        env_target = os.environ.get("TOOLKIT_PACK_MAX_BYTES")
        target = pack_target_bytes or (int(env_target) if env_target else DEFAULT_PACK_TARGET_BYTES)
        repo_id = uuid.uuid4().hex
        keys, enc = None, None
        if encryption is not None:
            # The keys file first: a config naming encryption always has its slots beside it.
            keys, enc = create_keys(root, repo_id, encryption, passphrase or "", kdf)
        config = RepoConfig(repo_id, chunk_size, zstd_level, target, now_iso(), enc)
        write_atomic(root, root / "config", json.dumps(config.to_json(), indent=2).encode() + b"\n")
        return cls(root, config, Index(root / "catalog.db"), keys=keys)

    @classmethod
    def open(
        cls, root: Path, *, readonly: bool = False, allow_other_owner: bool = False, keys: RepoKeys | None = None
    ) -> Repository:
        """Open a repository; an encrypted one needs its ``keys`` (catalog.keys.unlock)."""
        config = read_config(root)
        owner = root.stat().st_uid
        if owner != os.getuid() and not allow_other_owner:
            raise OwnedByOther(path=root, uid=owner)
        keys = _resolve_keys(root, config, keys)
        db = root / "catalog.db"
        if readonly and not db.exists():
            readonly = False  # a missing catalog is rebuilt below
        index = Index(db, readonly=readonly)
        repo = cls(root, config, index, keys=keys)
        if not readonly and not index.snapshot_ids() and not index.pack_ids():
            # A fresh or lost catalog: pick up whatever packs and documents exist.
            repo.reconcile()
        return repo

    @classmethod
    def open_remote(
        cls,
        root: Path,
        remote: Remote,
        *,
        keys: RepoKeys | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        command: str = "read",
    ) -> Repository:
        """Open a repository kept in an object store through its cache ``root`` (holding a copy of its config).

        The catalog is brought up to date with the store first; a missing or unreadable one is
        rebuilt from it.
        """
        config = read_config(root)
        keys = _resolve_keys(root, config, keys)
        db = root / "catalog.db"
        try:
            index = Index(db)
        except CatalogCorrupt as exc:
            log.warning("%s; rebuilding it from %s", exc, remote.url)
            db.replace(root / "catalog.db.damaged")
            for suffix in ("-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            index = Index(db)
        repo = cls(root, config, index, keys=keys, remote=remote, cache_bytes=cache_bytes, command=command)
        try:
            repo.reconcile()
        except BaseException:
            repo.close()
            raise
        return repo

    def close(self) -> None:
        self.reader.close()
        self.index.close()
        if self._announcement is not None:
            self._announcement.withdraw()  # stops its refreshes, then removes it
            self._announcement = None

    @property
    def location(self) -> str:
        """Where the repository is: its directory, or its object store URL."""
        return self.remote.url if self.remote is not None else str(self.root)

    # -- writing ----------------------------------------------------------

    @contextlib.contextmanager
    def writing(self, command: str) -> Iterator[None]:
        """Hold the writer lock; bring the catalog up to date with the files first.

        A repository in an object store takes the lock there, and this host's cache lock first.
        Every commit inside the block first calls :meth:`check_writer_lock`.
        """
        with writer_lock(self.root, command) as local, self._remote_lock(command) as remote:
            self._writer_locks = [local] if remote is None else [local, remote]
            try:
                self.clean_tmp()
                self.reconcile()
                yield
            finally:
                self._writer_locks = []

    def _remote_lock(self, command: str) -> contextlib.AbstractContextManager[HeldLock | None]:
        return remote_writer_lock(self.remote, command) if self.remote is not None else contextlib.nullcontext()

    def check_writer_lock(self) -> None:
        """Raise :class:`catalog.errors.LockLost` when a writer lock taken in :meth:`writing` is no longer ours
        (another writer took it over); the step before every commit. Outside :meth:`writing` there is none."""
        for held in self._writer_locks:
            held.check()

    def readers(self) -> list[LockInfo]:
        """Readers announced by other processes (announcements of readers that are gone are removed)."""
        return remote_readers(self.remote) if self.remote is not None else live_readers(self.root)

    def pack_writer(
        self, on_seal: Callable[[PackId, int, list[PackEntry]], None], *, background: bool = True
    ) -> PackWriter:
        """A pack writer into this repository; a remote one uploads each pack before ``on_seal`` indexes it."""
        if self.cache is None:
            return PackWriter(self.root, on_seal, self.config.pack_target_bytes, background=background)
        return PackWriter(
            self.root,
            on_seal,
            self.config.pack_target_bytes,
            background=background,
            publish=self._publish,
            sealers=UPLOADS_IN_FLIGHT,
        )

    def _publish(self, pack_id: PackId, path: Path) -> None:
        if self.cache is None:
            raise ValueError(f"{self.root} is not a repository kept in an object store")
        size = path.stat().st_size
        self.cache.publish(pack_id, path)
        self.remote_pack_sizes[pack_id] = size  # stored now, as a listing would show it

    def clean_tmp(self) -> None:
        for leftover in (self.root / "tmp").iterdir():
            log.info("removing %s left by an interrupted run", leftover.name)
            leftover.unlink(missing_ok=True)

    def reconcile(self) -> tuple[int, int]:
        """Index packs and snapshot documents that exist but are not in the catalog.

        A crash between renaming a pack (or a document) into place and committing
        its catalog rows leaves exactly this; nothing is lost, it is picked up here.
        Returns (packs added, snapshots added). A repository in an object store follows the
        store both ways (:func:`catalog.remote.reconcile_remote`).
        """
        if self.remote is not None:
            return reconcile_remote(self)
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
        snap_id, data = encode_snapshot_doc(doc, self.keys)
        self.check_writer_lock()
        if self.remote is not None:
            check_uploaded(self)
            self.remote.put_document(snap_id, data)  # the commit point; every pack it names is uploaded
        write_atomic(self.root, self.root / "snapshots" / f"{snap_id}.json", data)
        if self.remote is None or snap_id not in self.index.snapshot_ids():  # a reader here may have indexed it
            self.index.add_snapshot(snap_id, doc)
        return snap_id

    # -- removing (prune) -------------------------------------------------

    def forget_snapshot(self, snap_id: str) -> str | None:
        """Remove a snapshot: catalog rows first, then its document. Returns when the document's
        retention ends if the object store keeps it (the snapshot stays forgotten; a later prune removes it)."""
        self.check_writer_lock()
        if self.remote is not None:
            return forget_remote_snapshot(self, snap_id)
        # A crash before the document is gone brings the snapshot back (reconcile indexes it again).
        self.index.remove_snapshot(snap_id)
        (self.root / "snapshots" / f"{snap_id}.json").unlink(missing_ok=True)
        return None

    def retry_forgotten(self) -> list[tuple[str, str]]:
        """Remove documents of snapshots earlier prunes forgot; (snapshot id, retain-until) of those still kept."""
        if self.remote is None:
            return []
        self.check_writer_lock()
        return retry_forgotten(self)

    def pack_retained_until(self, pack_id: str) -> str | None:
        """When the object store lets a pack be deleted (ISO 8601), or None: now (always so in a directory)."""
        return self.remote.pack_retained_until(pack_id) if self.remote is not None else None

    def delete_pack(self, pack_id: str) -> str | None:
        """Remove an unreferenced pack: catalog rows, then the file; the retain-until if the store keeps it."""
        self.check_writer_lock()
        if self.remote is not None:
            return delete_remote_pack(self, pack_id)
        self.index.remove_pack(pack_id)  # only rows still naming this pack: the dead chunks
        self.pack_file(pack_id).unlink(missing_ok=True)
        return None

    # -- files ------------------------------------------------------------

    def iter_pack_files(self) -> Iterator[tuple[str, Path]]:
        for sub in sorted((self.root / "packs").iterdir()):
            if sub.is_dir():
                for p in sorted(sub.iterdir()):
                    yield p.name, p

    def iter_snapshot_files(self) -> Iterator[tuple[str, Path]]:
        if self.remote is not None:  # the store's documents, each cached copy checked against the stored one
            yield from sync_documents(self)
            return
        for p in sorted((self.root / "snapshots").glob("*.json")):
            yield p.stem, p

    def pack_file(self, pack_id: str) -> Path:
        return pack_path(self.root, pack_id)

    def pack_size(self, pack_id: str) -> int:
        """A pack's size as stored, -1 when it is missing (in an object store: as last listed)."""
        if self.remote is not None:
            return self.remote_pack_sizes.get(pack_id, -1)
        try:
            return self.pack_file(pack_id).stat().st_size
        except FileNotFoundError:
            return -1

    def pack_opener(self) -> Callable[[Path], Any] | None:
        """How ``verify --read-data`` opens a pack (catalog.check.OpenPack); None: the file itself.

        In an object store every pack is downloaded anew, never read from the cache, so it is
        the stored copy that is verified.
        """
        return self.cache.open_fresh if self.cache is not None else None

    def load_snapshot_doc(self, snap_id: str, path: Path | None = None) -> dict[str, Any]:
        if path is None and self.remote is not None and not document_path(self.root, snap_id).exists():
            path = fetch_document(self, snap_id)
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
        if self.keys is not None:
            doc = decrypt_snapshot_doc(self.keys, path, doc)
        if not isinstance(doc, dict) or doc.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotDocumentCorrupt(path=path, detail="not a snapshot document")
        check_snapshot_doc(path, doc)
        return doc


def decrypt_snapshot_doc(keys: RepoKeys, path: Path, envelope: object) -> Any:
    """The document inside an encrypted envelope; a plaintext document is refused in an encrypted repository."""
    if not isinstance(envelope, dict) or envelope.get("format") != ENCRYPTED_SNAPSHOT_FORMAT:
        raise SnapshotDocumentCorrupt(path=path, detail="not encrypted, in an encrypted repository")
    try:
        sealed = base64.b64decode(str(envelope.get("data")), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SnapshotDocumentCorrupt(path=path, detail="encrypted data is not base64") from exc
    try:
        data = keys.decrypt_document("snapshot", sealed)
    except Unauthentic as exc:
        raise SnapshotDocumentCorrupt(path=path, detail=f"does not decrypt: {exc}") from None
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise SnapshotDocumentCorrupt(path=path, detail="not JSON") from exc


_VOLUME_FIELDS: Final[dict[str, type]] = {
    "key": str,
    "datastore": str,
    "path": str,
    "name": str,
    "kind": str,
    "state": str,
}
_OPTIONAL_VOLUME_FIELDS: Final[dict[str, type]] = {"reason": str}  # absent or null is fine
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
        for key, kind in _OPTIONAL_VOLUME_FIELDS.items():
            if vol.get(key) is not None and not isinstance(vol[key], kind):
                raise bad(f"volume field {key} is not a {kind.__name__}")
        for f in vol["files"]:
            if not isinstance(f, dict):
                raise bad("a file entry is malformed")
            for key, kind in _FILE_FIELDS.items():
                if not isinstance(f.get(key), kind) or isinstance(f.get(key), bool):
                    raise bad(f"file field {key} is missing or not a {kind.__name__}")
                if kind is int and not 0 <= f[key] < 1 << 63:  # what the catalog (SQLite) can hold
                    raise bad(f"file field {key} is out of range")
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
    version = data.get("version")
    if version not in (FORMAT_VERSION, ENCRYPTED_FORMAT_VERSION):
        raise StoreVersionUnsupported(path=root, version=version, supported=ENCRYPTED_FORMAT_VERSION)
    try:
        enc = None
        if version == ENCRYPTED_FORMAT_VERSION:
            raw = data["encryption"]
            enc = EncryptionConfig(str(raw["cipher"]), str(raw["key_check"]))
            if enc.cipher not in CIPHERS or data.get("chunk_id") != CHUNK_ID_SCHEME:
                raise ConfigInvalid(path=path, detail=f"unknown encryption {enc.cipher!r} or chunk id scheme")
        elif "encryption" in data:
            raise ConfigInvalid(path=path, detail="encryption settings in a version 1 (unencrypted) config")
        return RepoConfig(
            str(data["id"]),
            int(data["chunk_size"]),
            int(data["compression"]["level"]),
            int(data["pack_target_bytes"]),
            str(data["created_at"]),
            enc,
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
