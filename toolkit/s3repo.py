"""Repositories in S3-compatible object storage: ``--repo s3://bucket/prefix``.

:class:`S3Remote` is :class:`catalog.remote.Remote` over :class:`toolkit.objstore.ObjectStore`:
the repository's objects carry the directory layout's names under the prefix
(``config``, ``keys``, ``object-lock``, ``packs/<ab>/<pack_id>``, ``snapshots/<id>.json``,
``forgotten/<id>``, ``locks/writer``, ``locks/reader-<random>``). Packs and documents are
always written with ``If-None-Match: *``, and carry the repository's Object Lock retention
when ``init`` gave it one; locks never do.

:func:`attach` finds (or makes) this host's cache of a repository,
``<cache dir>/s3/<repository id>-<tag of the endpoint and URL>/``, with a copy of its
``config`` (and ``keys``): the catalog and the pack cache live there (docs/architecture.md,
"Object storage"). The cache directory is ``--cache-dir``/``TOOLKIT_CACHE_DIR``, else
``$XDG_CACHE_HOME/appstack-toolkit`` or ``~/.cache/appstack-toolkit``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from catalog.crypto import RepoKeys
from catalog.errors import ConfigInvalid, Error, SnapshotDocumentCorrupt, StoreExists, StoreNotFound
from catalog.keys import DEFAULT_KDF, KdfParams
from catalog.remote import (
    DEFAULT_CACHE_BYTES,
    UPLOADS_IN_FLIGHT,
    RemoteObject,
    RemotePackMissing,
    Retained,
)
from catalog.repo import DIRS, RepoConfig, Repository, write_atomic
from toolkit.location import SCHEME, remote_url  # noqa: F401 (remote_url: part of this module's interface)
from toolkit.objstore import (
    LockMode,
    ObjectExists,
    ObjectLocked,
    ObjectLockNotEnabled,
    ObjectNotFound,
    ObjectStore,
    Retention,
    make_client,
    parse_url,
)

log = logging.getLogger(__name__)

CACHE_DIR_NAME: Final = "appstack-toolkit"
PART_UPLOADS: Final = 2  # parts of one pack in flight; UPLOADS_IN_FLIGHT packs at once: 8 requests in all
MAX_CONNECTIONS: Final = UPLOADS_IN_FLIGHT * PART_UPLOADS + 4  # uploads, plus reads and lock requests beside them
SETTLE_S: Final = 2.0  # a store that ignores If-None-Match: how long a lock PUT gets to become the one readers see
UPLOAD_LOG_INTERVAL_S: Final = 30.0  # a line on the upload's progress this often (-v, and the --log-file)
LOCK_POLICY_KEY: Final = "object-lock"
LOCK_POLICY_FORMAT: Final = "appstack-toolkit-object-lock"
REPO_ID: Final = re.compile(r"[0-9a-f]{32}")


class RemoteUnsupported(Error):
    template = "{command} does not work on a repository in object storage ({url})"
    hint = "run it on a directory repository; copy one into the other with: toolkit copy"
    code = "remote_unsupported"


class DefaultRetentionRefused(Error):
    template = "bucket {bucket} gives new objects a default retention, so the repository's locks could never be removed"
    hint = (
        "remove the bucket's default retention rule; give packs and documents a retention with "
        "toolkit init --object-lock-days instead"
    )
    code = "s3_default_retention"


@dataclass(frozen=True, slots=True)
class ObjectLockPolicy:
    """The retention every pack and snapshot document gets when it is uploaded: ``days`` in ``mode``."""

    mode: LockMode
    days: int

    def retention(self, now: datetime | None = None) -> Retention:
        return Retention(self.mode, (now or datetime.now(UTC)) + timedelta(days=self.days))

    def to_bytes(self) -> bytes:
        data = {"format": LOCK_POLICY_FORMAT, "version": 1, "mode": self.mode.value, "days": self.days}
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def parse(cls, url: str, data: bytes) -> ObjectLockPolicy:
        try:
            raw = json.loads(data)
            fits = raw.get("format") == LOCK_POLICY_FORMAT and raw.get("version") == 1
            policy = cls(LockMode(str(raw["mode"])), int(raw["days"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigInvalid(path=url, detail=f"not an object lock policy: {exc}") from exc
        if not fits or policy.days < 1:
            raise ConfigInvalid(path=url, detail="not an object lock policy of version 1 with days ≥ 1")
        return policy


@dataclass(slots=True)
class UploadStats:
    packs: int = 0
    bytes: int = 0
    seconds: float = 0.0  # wall time from the first upload's start to the last one's end
    started: float = 0.0
    logged: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"packs": self.packs, "bytes": self.bytes, "seconds": round(self.seconds, 3)}


class S3Remote:
    """:class:`catalog.remote.Remote` on an :class:`ObjectStore` (one bucket and prefix). Thread-safe.

    ``conditional_writes`` says whether the store honours ``If-None-Match: *``; None: find out
    with a probe the first time a lock is taken. A store that ignores it gets the writer lock
    by write, settle (``settle_s``), read back.
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        lock_policy: ObjectLockPolicy | None = None,
        conditional_writes: bool | None = None,
        settle_s: float = SETTLE_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.lock_policy = lock_policy
        self.settle_s = settle_s
        self._sleep = sleep
        self._conditional = conditional_writes
        self._lock = threading.Lock()
        self.uploads = UploadStats()

    def __repr__(self) -> str:
        return f"S3Remote({self.url!r})"

    @property
    def url(self) -> str:
        return self.store.url().rstrip("/")

    def _retention(self) -> Retention | None:
        return self.lock_policy.retention() if self.lock_policy is not None else None

    # -- packs ----------------------------------------------------------------------------------------

    @staticmethod
    def pack_key(pack_id: str) -> str:
        return f"packs/{pack_id[:2]}/{pack_id}"

    def list_packs(self) -> Iterator[RemoteObject]:
        for info in self.store.list("packs/"):
            parts = info.key.split("/")
            if len(parts) == 3 and parts[1] == parts[2][:2]:
                yield RemoteObject(parts[2], info.size, info.etag)

    def upload_pack(self, pack_id: str, path: Path) -> None:
        started = time.monotonic()
        with self._lock:
            if not self.uploads.packs:
                self.uploads.started = self.uploads.logged = started
        result = self.store.put_file(self.pack_key(pack_id), path, retention=self._retention(), if_absent=True)
        ended = time.monotonic()
        with self._lock:
            up = self.uploads
            up.packs += 1
            up.bytes += result.size
            up.seconds = ended - up.started
            report = ended - up.logged >= UPLOAD_LOG_INTERVAL_S
            if report:
                up.logged = ended
        log.debug("uploaded pack %s (%d bytes) in %.2f s", pack_id, result.size, ended - started)
        if report:
            log.info("uploaded %d pack(s), %s, to %s so far", up.packs, _mib_per_s(up.bytes, up.seconds), self.url)

    def fetch_pack(self, pack_id: str, path: Path) -> None:
        try:
            self.store.get_to_file(self.pack_key(pack_id), path)
        except ObjectNotFound as exc:
            raise RemotePackMissing(pack_id=pack_id, url=self.url) from exc

    def read_pack(self, pack_id: str, offset: int, length: int) -> bytes:
        try:
            return self.store.get_range(self.pack_key(pack_id), offset, length)
        except ObjectNotFound as exc:
            raise RemotePackMissing(pack_id=pack_id, url=self.url) from exc

    def delete_pack(self, pack_id: str) -> None:
        self._delete(self.pack_key(pack_id), f"pack {pack_id}")

    def pack_retained_until(self, pack_id: str) -> str | None:
        return self._retained_until(self.pack_key(pack_id))

    # -- snapshot documents ---------------------------------------------------------------------------

    @staticmethod
    def document_key(snapshot_id: str) -> str:
        return f"snapshots/{snapshot_id}.json"

    def list_documents(self) -> Iterator[RemoteObject]:
        for info in self.store.list("snapshots/"):
            name = info.key.removeprefix("snapshots/")
            if name.endswith(".json") and "/" not in name:
                yield RemoteObject(name.removesuffix(".json"), info.size, info.etag)

    def get_document(self, snapshot_id: str) -> bytes:
        try:
            return self.store.get_bytes(self.document_key(snapshot_id))
        except ObjectNotFound as exc:
            where = self.store.url(self.document_key(snapshot_id))
            raise SnapshotDocumentCorrupt(path=where, detail="missing") from exc

    def put_document(self, snapshot_id: str, data: bytes) -> None:
        self.store.put_bytes(self.document_key(snapshot_id), data, retention=self._retention(), if_absent=True)

    def delete_document(self, snapshot_id: str) -> None:
        self._delete(self.document_key(snapshot_id), f"snapshot document {snapshot_id}")

    def list_forgotten(self) -> set[str]:
        return {info.key.removeprefix("forgotten/") for info in self.store.list("forgotten/")}

    def mark_forgotten(self, snapshot_id: str) -> None:
        self.store.put_bytes(f"forgotten/{snapshot_id}", b"")

    def unmark_forgotten(self, snapshot_id: str) -> None:
        self.store.delete(f"forgotten/{snapshot_id}")

    # -- locks ------------------------------------------------------------------------------------------

    def create_lock(self, name: str, data: bytes) -> bool:
        key = f"locks/{name}"
        if self.conditional_writes():
            try:
                self.store.put_bytes(key, data, if_absent=True)
            except ObjectExists:
                return False
            return True
        # The store ignores If-None-Match: write, let the store settle, and hold the lock only if the
        # object still has our token (of two writers that both wrote, both read the later one's).
        if self.store.head(key) is not None:
            return False
        self.store.put_bytes(key, data)
        self._sleep(self.settle_s)
        return self.read_lock(name) == data

    def put_lock(self, name: str, data: bytes) -> None:
        self.store.put_bytes(f"locks/{name}", data)

    def read_lock(self, name: str) -> bytes | None:
        try:
            return self.store.get_bytes(f"locks/{name}")
        except ObjectNotFound:
            return None

    def delete_lock(self, name: str) -> None:
        self.store.delete(f"locks/{name}")

    def list_locks(self) -> list[str]:
        return [info.key.removeprefix("locks/") for info in self.store.list("locks/")]

    def conditional_writes(self) -> bool:
        """Whether the store refuses a second ``If-None-Match: *`` PUT of one key (probed once)."""
        with self._lock:
            if self._conditional is None:
                self._conditional = self._probe()
            return self._conditional

    def _probe(self) -> bool:
        key = f"locks/probe-{uuid.uuid4().hex}"
        self.store.put_bytes(key, b"probe 1\n", if_absent=True)
        try:
            info = self.store.head(key)
            if info is not None and info.retention is not None:
                raise DefaultRetentionRefused(bucket=self.store.bucket)
            try:
                self.store.put_bytes(key, b"probe 2\n", if_absent=True)
            except ObjectExists:
                return True
            log.warning(
                "%s ignores conditional writes (If-None-Match); the writer lock is taken by write, wait %.0f s, "
                "read back instead (two writers starting within that time of each other could both proceed)",
                self.url,
                self.settle_s,
            )
            return False
        finally:
            try:
                self.store.delete(key)
            except ObjectLocked as exc:
                raise DefaultRetentionRefused(bucket=self.store.bucket) from exc

    # -- retention ----------------------------------------------------------------------------------------

    def _retained_until(self, key: str) -> str | None:
        info = self.store.head(key)
        if info is None or not info.is_locked():
            return None
        if info.retention is not None and info.retention.is_active():
            return info.retention.retain_until.astimezone(UTC).isoformat(timespec="seconds")
        return "its legal hold is lifted"

    def _delete(self, key: str, what: str) -> None:
        try:
            self.store.delete(key)
        except ObjectLocked as exc:
            raise Retained(what=what, until=self._retained_until(key) or exc.fields["lock"]) from exc


def _mib_per_s(nbytes: int, seconds: float) -> str:
    rate = f", {nbytes / (1 << 20) / seconds:.1f} MiB/s" if seconds > 0 else ""
    return f"{nbytes / (1 << 20):.1f} MiB{rate}"


def upload_summary(remote: S3Remote) -> str:
    """One line on what a run uploaded; empty when it uploaded nothing."""
    up = remote.uploads
    if not up.packs:
        return ""
    return f"uploaded {up.packs} pack(s), {_mib_per_s(up.bytes, up.seconds)}, to {remote.url}"


# -- the store and this host's cache of it ------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/appstack-toolkit``, else ``~/.cache/appstack-toolkit``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / CACHE_DIR_NAME


def open_store(url: str) -> ObjectStore:
    """The bucket and prefix of ``url``, with connections for a snapshot's parallel uploads."""
    bucket, prefix = parse_url(url)
    return ObjectStore(make_client(max_connections=MAX_CONNECTIONS), bucket, prefix, concurrency=PART_UPLOADS)


def cache_root(base: Path, store: ObjectStore, repo_id: str) -> Path:
    """This host's cache of a repository: by its id, and a tag of where it is (two copies never share one)."""
    tag = hashlib.sha256(f"{store.endpoint}\n{store.url()}".encode()).hexdigest()[:12]
    return base / "s3" / f"{repo_id}-{tag}"


@dataclass(frozen=True, slots=True)
class S3Access:
    """A repository in object storage and this host's cache of it (holding copies of config and keys)."""

    remote: S3Remote
    root: Path

    @property
    def url(self) -> str:
        return self.remote.url


def _parse_config(url: str, config: bytes) -> dict[str, Any]:
    """The stored config, as far as the cache needs it (the repository reads it fully from the copy)."""
    try:
        data = json.loads(config)
    except ValueError as exc:
        raise ConfigInvalid(path=url, detail="not JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not REPO_ID.fullmatch(data["id"]):
        raise ConfigInvalid(path=url, detail="no repository id")
    return data


def _keep(root: Path, name: str, data: bytes) -> None:
    path = root / name
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    write_atomic(root, path, data)


def attach(url: str, cache_dir: Path | None = None) -> S3Access:
    """The repository at ``url`` and this host's cache of it, made or refreshed (config, keys)."""
    store = open_store(url)
    try:
        config = store.get_bytes("config")
    except ObjectNotFound:
        raise StoreNotFound(path=store.url().rstrip("/")) from None
    parsed = _parse_config(store.url("config"), config)
    try:
        policy = ObjectLockPolicy.parse(store.url(LOCK_POLICY_KEY), store.get_bytes(LOCK_POLICY_KEY))
    except ObjectNotFound:
        policy = None
    root = cache_root(cache_dir or default_cache_dir(), store, parsed["id"])
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for d in DIRS:
        (root / d).mkdir(mode=0o700, exist_ok=True)
    _keep(root, "config", config)
    if "encryption" in parsed:
        try:
            _keep(root, "keys", store.get_bytes("keys"))
        except ObjectNotFound:
            raise ConfigInvalid(path=store.url("config"), detail="encrypted, but the keys object is missing") from None
    return S3Access(S3Remote(store, lock_policy=policy), root)


def open_repository(
    access: S3Access, *, keys: RepoKeys | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES, command: str = "read"
) -> Repository:
    """Open the repository through its cache; the catalog is brought up to date with the store first."""
    return Repository.open_remote(access.root, access.remote, keys=keys, cache_bytes=cache_bytes, command=command)


def init_repository(
    url: str,
    cache_dir: Path | None = None,
    *,
    chunk_size: int,
    encryption: str | None = None,
    passphrase: str | None = None,
    kdf: KdfParams = DEFAULT_KDF,
    lock_policy: ObjectLockPolicy | None = None,
) -> tuple[RepoConfig, S3Access]:
    """Create a repository at ``url`` (an empty bucket or prefix); its ``config`` is uploaded last.

    Refuses a bucket without Object Lock when ``lock_policy`` asks for retention, and one
    that gives objects a default retention (the locks could not be removed).
    """
    store = open_store(url)
    store.check()
    if next(iter(store.list("", page_size=1)), None) is not None:
        raise StoreExists(path=store.url().rstrip("/"))
    if lock_policy is not None and not store.object_lock_enabled():
        raise ObjectLockNotEnabled(bucket=store.bucket, url=store.url().rstrip("/"))
    remote = S3Remote(store, lock_policy=lock_policy)
    remote.conditional_writes()  # probes the store, refusing a default retention
    base = cache_dir or default_cache_dir()
    (base / "s3").mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".init-", dir=base / "s3"))
    try:
        made = staging / "repo"
        repo = Repository.init(made, chunk_size=chunk_size, encryption=encryption, passphrase=passphrase, kdf=kdf)
        config = repo.config
        repo.close()
        if config.encryption is not None:
            store.put_bytes("keys", (made / "keys").read_bytes(), if_absent=True)
        if lock_policy is not None:
            store.put_bytes(LOCK_POLICY_KEY, lock_policy.to_bytes(), if_absent=True)
        store.put_bytes("config", (made / "config").read_bytes(), if_absent=True)  # the repository exists now
        root = cache_root(base, store, config.id)
        shutil.rmtree(root, ignore_errors=True)
        made.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return config, S3Access(remote, root)
