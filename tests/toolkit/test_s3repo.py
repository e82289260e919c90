"""Repositories in object storage (catalog/remote.py, toolkit/s3repo.py) against moto's real S3 server.

Everything goes through botocore and a loopback socket to ``python -m moto.server``
(tests/lab/fixtures_s3.py); nothing is mocked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from catalog import pack
from catalog.check import VerifyReport, verify
from catalog.errors import Locked, LockLost, PackCorrupt
from catalog.prune import Policy, ReadersActive, prune
from catalog.remote import (
    READER_STALE_S,
    PackCache,
    PacksNotUploaded,
    RemotePackMissing,
    Retained,
    announce_reader,
    break_remote_lock,
    read_remote_pack_index,
    remote_readers,
    remote_writer_lock,
)
from catalog.repo import Repository
from catalog.store import PackWriter
from catalog.types import PackEntry
from toolkit.lab.corpus import make_volume
from toolkit.lab.s3 import FaultProxy, MotoS3Server, ProxiedRequest
from toolkit.objstore import LockMode, ObjectLockNotEnabled, ObjectStore, RetryPolicy, make_client
from toolkit.ops.restore import parse_as_of, restore
from toolkit.ops.snapshot import Source, snapshot
from toolkit.s3repo import (
    ObjectLockPolicy,
    S3Access,
    S3Remote,
    attach,
    init_repository,
    open_repository,
    remote_url,
)
from toolkit.transports.local import LocalTransport

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

APPS = "cloudvolumes/apps"
MIB = 1 << 20


def tree_sha256(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def make_pack(records: list[bytes], tmp: Path) -> tuple[str, Path, list[PackEntry]]:
    """A real sealed pack (raw records) written to a file named by its id."""
    entries, offset, body = [], pack.HEADER_SIZE, []
    for i, raw in enumerate(records):
        chunk_id = hashlib.sha256(raw + bytes([i % 256])).digest()[:16]
        entry = PackEntry(chunk_id, 0, 0, len(raw), len(raw), offset + pack.RECORD_HEADER_SIZE, bytes(32))  # type: ignore[arg-type]
        body.append(pack.encode_record_header(entry) + raw)
        entries.append(entry)
        offset += pack.RECORD_HEADER_SIZE + len(raw)
    data = pack.encode_header() + b"".join(body) + pack.encode_trailer(entries, offset)
    import xxhash

    pack_id = xxhash.xxh3_128_hexdigest(data)
    path = tmp / pack_id
    path.write_bytes(data)
    return pack_id, path, entries


@pytest.fixture
def store(s3_env: dict[str, str], s3_bucket: str) -> ObjectStore:
    return ObjectStore(
        make_client(), s3_bucket, "repo", retry=RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.02)
    )


@pytest.fixture
def remote(store: ObjectStore) -> S3Remote:
    return S3Remote(store)


@pytest.fixture
def datastore(tmp_path: Path) -> Path:
    root = tmp_path / "ds1"
    for i, name in enumerate(("Visio", "Project")):
        make_volume(root, f"{APPS}/{name}.vmdk", size_mib=4, seed=i, real=False)
    return root


@pytest.fixture
def s3_repo(s3_env: dict[str, str], s3_bucket: str, tmp_path: Path) -> S3Access:
    _config, access = init_repository(f"s3://{s3_bucket}/dc1", tmp_path / "cache", chunk_size=64 << 10)
    return access


def take_snapshot(access: S3Access, datastore: Path) -> str:
    repo = open_repository(access)
    try:
        with repo.writing("snapshot"):
            report = snapshot(repo, [Source("ds1", LocalTransport(datastore))])
        assert report.ok, report.to_json()
        return report.snapshot_id
    finally:
        repo.close()


def mutate(datastore: Path, seed: int) -> None:
    """Visio's extent rewritten whole (new bytes at every offset): every chunk of its last version turns dead."""
    flat = datastore / APPS / "Visio-flat.vmdk"
    before = flat.stat().st_mtime_ns
    flat.write_bytes(random.Random(seed).randbytes(flat.stat().st_size))
    os.utime(flat, ns=(before + 10**9, before + 10**9))


# -- the URL and the S3 remote ----------------------------------------------------------------------------------


def test_repository_arguments_name_s3_urls_also_after_a_path_option_normalised_them() -> None:
    assert remote_url("s3://bucket/dc1") == "s3://bucket/dc1"
    assert remote_url(Path("s3://bucket/dc1")) == "s3://bucket/dc1"  # click.Path gives s3:/bucket/dc1
    assert remote_url(Path("/backup/appstacks")) is None
    assert remote_url("s3-archive/repo") is None


def test_packs_are_uploaded_once_listed_read_by_range_and_fetched_whole(remote: S3Remote, tmp_path: Path) -> None:
    pack_id, path, entries = make_pack([os.urandom(1000), os.urandom(3000)], tmp_path)
    remote.upload_pack(pack_id, path)
    remote.upload_pack(pack_id, path)  # a retry after a lost answer: the same content, not an error
    assert [(o.name, o.size) for o in remote.list_packs()] == [(pack_id, path.stat().st_size)]
    e = entries[1]
    assert remote.read_pack(pack_id, e.offset, e.stored_size) == path.read_bytes()[e.offset : e.offset + e.stored_size]
    remote.fetch_pack(pack_id, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == path.read_bytes()
    assert read_remote_pack_index(remote, pack_id, path.stat().st_size) == entries
    with pytest.raises(RemotePackMissing):
        remote.read_pack("0" * 32, 0, 10)
    with pytest.raises(RemotePackMissing):
        remote.fetch_pack("0" * 32, tmp_path / "none")
    remote.delete_pack(pack_id)
    assert list(remote.list_packs()) == []


def test_a_pack_index_too_large_for_one_ranged_get_takes_a_second(remote: S3Remote, tmp_path: Path) -> None:
    records = [bytes([i % 251]) * 8 for i in range(1200)]  # 1200 x 68-byte index entries > 64 KiB tail
    pack_id, path, entries = make_pack(records, tmp_path)
    remote.upload_pack(pack_id, path)
    size = path.stat().st_size
    assert size - (len(entries) * pack.INDEX_ENTRY.size + pack.FOOTER_SIZE) < size - (64 << 10)
    assert read_remote_pack_index(remote, pack_id, size) == entries


def test_a_torn_pack_in_the_bucket_is_reported_not_indexed(remote: S3Remote, tmp_path: Path) -> None:
    pack_id, path, _entries = make_pack([os.urandom(2000)], tmp_path)
    torn = tmp_path / "torn"
    torn.write_bytes(path.read_bytes()[:-10])
    remote.upload_pack(pack_id, torn)
    with pytest.raises(PackCorrupt):
        read_remote_pack_index(remote, pack_id, torn.stat().st_size)


def test_the_writer_lock_is_exclusive_and_released(remote: S3Remote) -> None:
    assert remote.conditional_writes()  # moto honours If-None-Match, as AWS S3 does
    with remote_writer_lock(remote, "snapshot") as me:
        held = json.loads(remote.read_lock("writer") or b"{}")
        assert (held["pid"], held["host"], held["command"]) == (os.getpid(), socket.gethostname(), "snapshot")
        assert held["token"]
        with pytest.raises(Locked) as exc, remote_writer_lock(remote, "prune"):
            pass
        assert str(me.pid) in str(exc.value)
    assert remote.read_lock("writer") is None


def test_a_lock_of_a_dead_process_of_this_host_is_stale_one_of_another_host_is_not(remote: S3Remote) -> None:
    dead = {"owner": "x", "pid": 2**22 + 12345, "host": socket.gethostname(), "command": "snapshot", "since": "t"}
    remote.put_lock("writer", json.dumps(dead).encode())
    with remote_writer_lock(remote, "snapshot"):
        assert json.loads(remote.read_lock("writer") or b"{}")["pid"] == os.getpid()
    since, refreshed = (datetime.now(UTC) - timedelta(hours=30)).isoformat(), datetime.now(UTC).isoformat()
    other = {"owner": "x", "pid": 1, "host": "backup02", "command": "snapshot", "since": since, "refreshed": refreshed}
    remote.put_lock("writer", json.dumps(other).encode())
    with pytest.raises(Locked, match="backup02"), remote_writer_lock(remote, "snapshot"):
        pass
    with pytest.raises(Locked):
        break_remote_lock(remote)
    with pytest.raises(Locked):
        break_remote_lock(remote, older_than_s=40 * 3600)
    removed = break_remote_lock(remote, older_than_s=24 * 3600)
    assert removed is not None and removed.host == "backup02"
    assert remote.read_lock("writer") is None


def test_without_conditional_writes_two_racing_writers_still_get_one_lock(store: ObjectStore) -> None:
    """A store that ignores If-None-Match: write, settle, read back; of two racers exactly one proceeds."""
    results: list[bool] = []
    barrier = threading.Barrier(2)

    def take(n: int) -> None:
        racer = S3Remote(store, conditional_writes=False, settle_s=0.5)
        barrier.wait()
        results.append(racer.create_lock("writer", f"racer {n}\n".encode()))

    threads = [threading.Thread(target=take, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, True]
    assert not S3Remote(store, conditional_writes=False, settle_s=0.0).create_lock("writer", b"late\n")


def other_host_writer_lock(since: timedelta, refreshed: timedelta) -> bytes:
    """The writer lock of pid 4242 on backup02, taken ``since`` ago and last written ``refreshed`` ago."""
    now = datetime.now(UTC)
    lock = {"owner": "backup", "pid": 4242, "host": "backup02", "command": "prune", "token": "7e" * 16}
    lock |= {"since": (now - since).isoformat(), "refreshed": (now - refreshed).isoformat()}
    return json.dumps(lock, sort_keys=True).encode() + b"\n"


def test_the_writer_lock_in_the_store_is_refreshed_and_keeps_its_token(remote: S3Remote) -> None:
    def held_now() -> dict:
        return json.loads(remote.read_lock("writer") or b"{}")

    with remote_writer_lock(remote, "snapshot", heartbeat_s=0.05) as held:
        first = held_now()
        assert first["token"] == held.token and first["refreshed"] == first["since"]
        seen = {first["refreshed"]}
        while len(seen) < 3:  # two refreshes
            wait_for(lambda: held_now()["refreshed"] not in seen, "a refresh")
            current = held_now()
            assert (current["token"], current["since"], current["pid"]) == (held.token, first["since"], os.getpid())
            assert datetime.fromisoformat(current["refreshed"]) > max(datetime.fromisoformat(t) for t in seen)
            seen.add(current["refreshed"])
    assert remote.read_lock("writer") is None


def test_a_writer_lock_another_host_stopped_refreshing_is_taken_over_and_a_fresh_one_is_not(
    remote: S3Remote, caplog: pytest.LogCaptureFixture
) -> None:
    fresh = other_host_writer_lock(timedelta(days=1), timedelta(minutes=40))
    remote.put_lock("writer", fresh)
    with pytest.raises(Locked, match="pid 4242 on backup02"), remote_writer_lock(remote, "snapshot"):
        pass
    with pytest.raises(Locked):
        break_remote_lock(remote)  # toolkit unlock without options
    assert remote.read_lock("writer") == fresh
    stale = other_host_writer_lock(timedelta(days=1), timedelta(minutes=46))
    remote.put_lock("writer", stale)
    caplog.set_level(logging.WARNING, logger="catalog.lock")
    with remote_writer_lock(remote, "snapshot") as held:
        assert json.loads(remote.read_lock("writer") or b"{}")["token"] == held.token
    assert "removing the stale writer lock of pid 4242 on backup02 (prune, since" in caplog.text
    assert "more than 45 minutes ago" in caplog.text
    assert remote.read_lock("writer") is None
    remote.put_lock("writer", stale)
    removed = break_remote_lock(remote)
    assert removed is not None and removed.host == "backup02" and remote.read_lock("writer") is None


def test_a_refresh_never_overwrites_a_lock_another_writer_took_in_the_store(remote: S3Remote) -> None:
    other = other_host_writer_lock(timedelta(0), timedelta(0))
    with remote_writer_lock(remote, "snapshot", heartbeat_s=3600) as held:
        remote.put_lock("writer", other)  # a writer on backup02 took it over
        held.refresh()
        assert remote.read_lock("writer") == other
        with pytest.raises(LockLost, match="pid 4242 on backup02"):
            held.check()
    assert remote.read_lock("writer") == other, "releasing leaves the other writer's lock alone"


def test_a_snapshot_whose_lock_in_the_store_was_taken_over_commits_nothing(s3_repo: S3Access, datastore: Path) -> None:
    other = other_host_writer_lock(timedelta(0), timedelta(0))
    taken: list[bool] = []

    def event(kind: str, _data: dict) -> None:
        if kind == "volume" and not taken:  # a volume done: the snapshot is well under way
            s3_repo.remote.put_lock("writer", other)
            taken.append(True)

    repo = open_repository(s3_repo)
    try:
        with pytest.raises(LockLost, match="pid 4242 on backup02") as err, repo.writing("snapshot"):
            snapshot(repo, [Source("ds1", LocalTransport(datastore))], event=event)
        assert not repo.index.snapshot_ids()
    finally:
        repo.close()
    assert taken and err.value.exit_code == 3
    assert list(s3_repo.remote.list_documents()) == [], "no document was put"
    assert s3_repo.remote.read_lock("writer") == other, "the other writer keeps its lock"
    assert not (s3_repo.root / "locks" / "writer").exists(), "this host's cache lock is released"


# -- the pack cache ----------------------------------------------------------------------------------------------


def test_the_cache_reads_one_chunk_by_range_fetches_a_pack_read_again_and_evicts_the_oldest(
    remote: S3Remote, tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    for d in ("packs", "tmp"):
        (root / d).mkdir(parents=True)
    packs = [make_pack([os.urandom(40_000), os.urandom(40_000)], tmp_path) for _ in range(3)]
    for pack_id, path, _entries in packs:
        remote.upload_pack(pack_id, path)
    cache = PackCache(root, remote, limit_bytes=2 * 90_000)
    first_id, first_path, first_entries = packs[0]
    e = first_entries[0]
    assert (
        cache.pread(first_id, e.stored_size, e.offset) == first_path.read_bytes()[e.offset : e.offset + e.stored_size]
    )
    assert (cache.ranged_reads, cache.bytes_fetched) == (1, 0)
    assert not cache.path(first_id).exists()
    cache.pread(first_id, e.stored_size, e.offset)  # the second read of that pack brings it whole
    assert cache.path(first_id).read_bytes() == first_path.read_bytes()
    for pack_id, _path, entries in packs[1:]:
        for _ in range(2):
            cache.pread(pack_id, entries[1].stored_size, entries[1].offset)
    assert not cache.path(first_id).exists(), "the least recently used pack stays beyond the limit"
    assert all(cache.path(p).exists() for p, _, _ in packs[1:])
    assert cache.cached_bytes() <= 2 * 90_000
    assert PackCache(root, remote, limit_bytes=0).cached_bytes() == packs[2][1].stat().st_size  # the newest stays


def test_a_stored_pack_that_does_not_match_its_name_is_kept_out_of_the_cache(remote: S3Remote, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    (root / "packs").mkdir(parents=True)
    pack_id, path, entries = make_pack([os.urandom(5000), os.urandom(5000)], tmp_path)
    damaged = bytearray(path.read_bytes())
    damaged[entries[0].offset] ^= 0xFF  # the first record's bytes; the second is sound
    path.write_bytes(bytes(damaged))
    remote.upload_pack(pack_id, path)
    cache = PackCache(root, remote)
    e = entries[1]
    for _ in range(3):
        assert cache.pread(pack_id, e.stored_size, e.offset) == bytes(damaged[e.offset : e.offset + e.stored_size])
    assert not cache.path(pack_id).exists()
    assert cache.ranged_reads == 3


# -- repositories --------------------------------------------------------------------------------------------------


def test_a_snapshot_uploads_its_packs_before_its_document_and_restores_bit_for_bit(
    s3_repo: S3Access, datastore: Path, tmp_path: Path, store: ObjectStore
) -> None:
    snap_id = take_snapshot(s3_repo, datastore)
    keys = [o.key for o in ObjectStore(make_client(), store.bucket, "dc1").list("")]
    assert "config" in keys and f"snapshots/{snap_id}.json" in keys
    assert not any(k.startswith("locks/") for k in keys), "locks and reader announcements are removed when done"
    assert sum(k.startswith("packs/") for k in keys) > 3
    assert not any(k == "catalog.db" or k.startswith("tmp/") for k in keys)
    repo = open_repository(s3_repo)
    try:
        assert repo.index.snapshot_ids() == {snap_id}
        report = restore(repo, parse_as_of(snap_id, repo), LocalTransport(tmp_path / "out"))
    finally:
        repo.close()
    assert report.ok, report.to_json()
    assert tree_sha256(tmp_path / "out") == tree_sha256(datastore)


def test_a_document_is_never_committed_with_a_pack_that_was_not_uploaded(s3_repo: S3Access, datastore: Path) -> None:
    take_snapshot(s3_repo, datastore)
    repo = open_repository(s3_repo)
    try:
        with repo.writing("snapshot"):
            writer = PackWriter(repo.root, lambda pid, size, entries: repo.index.add_pack(pid, size, entries, "t"))
            writer.add(b"\x01" * 16, 0, 0, 3, bytes(32), b"abc")  # type: ignore[arg-type]
            writer.seal()
            writer.close()
            doc = {"created_at": "t", "hostname": "h", "sources": [], "stats": {}, "volumes": []}
            with pytest.raises(PacksNotUploaded):
                repo.write_snapshot(doc)
        assert len(list(s3_repo.remote.list_documents())) == 1
    finally:
        repo.close()


def test_a_second_cache_sees_the_first_ones_snapshots_and_forgets_what_a_prune_removed(
    s3_repo: S3Access, datastore: Path, tmp_path: Path
) -> None:
    first = take_snapshot(s3_repo, datastore)
    other = attach(s3_repo.url, tmp_path / "cache-2")
    assert other.root != s3_repo.root
    mutate(datastore, 1)
    second = take_snapshot(other, datastore)
    repo = open_repository(s3_repo)
    try:
        assert repo.index.snapshot_ids() == {first, second}
        with repo.writing("prune"):
            report = prune(repo, Policy(last=1), now=datetime.now(UTC))
        assert report.removed == [first] and (report.packs_deleted or report.packs_repacked)
    finally:
        repo.close()
    repo = open_repository(other)
    try:
        assert repo.index.snapshot_ids() == {second}
        assert repo.index.pack_ids() == set(repo.remote_pack_sizes)
        out = tmp_path / "out"
        assert restore(repo, parse_as_of(second, repo), LocalTransport(out)).ok
    finally:
        repo.close()
    assert tree_sha256(out) == tree_sha256(datastore)


def test_prune_refuses_while_a_reader_elsewhere_is_announced(s3_repo: S3Access, datastore: Path) -> None:
    take_snapshot(s3_repo, datastore)
    reader = {"owner": "x", "pid": 1, "host": "restore-host", "command": "restore", "since": "t"}
    s3_repo.remote.put_lock("reader-elsewhere", json.dumps(reader).encode())
    repo = open_repository(s3_repo)
    try:
        assert [r.host for r in repo.readers()] == ["restore-host"]
        with repo.writing("prune"), pytest.raises(ReadersActive, match="restore pid 1 on restore-host"):
            prune(repo, Policy(last=1), now=datetime.now(UTC))
    finally:
        repo.close()


def test_object_lock_needs_a_bucket_with_object_lock(s3_env: dict[str, str], s3_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(ObjectLockNotEnabled):
        init_repository(
            f"s3://{s3_bucket}/dc1",
            tmp_path / "cache",
            chunk_size=64 << 10,
            lock_policy=ObjectLockPolicy(LockMode.COMPLIANCE, 1),
        )
    assert list(ObjectStore(make_client(), s3_bucket, "").list("")) == [], "nothing was written"


def test_governance_retention_reaches_every_pack_and_document(
    s3_env: dict[str, str], s3_locked_bucket: str, s3_server: MotoS3Server, datastore: Path, tmp_path: Path
) -> None:
    policy = ObjectLockPolicy(LockMode.GOVERNANCE, 3)
    _config, access = init_repository(
        f"s3://{s3_locked_bucket}/dc1", tmp_path / "cache", chunk_size=64 << 10, lock_policy=policy
    )
    snap_id = take_snapshot(access, datastore)
    store = ObjectStore(make_client(), s3_locked_bucket, "dc1")
    retained = [o.key for o in store.list("") if o.key.startswith(("packs/", "snapshots/"))]
    assert f"snapshots/{snap_id}.json" in retained
    for key in retained:
        retention = store.retention(key)
        assert retention is not None and retention.mode is LockMode.GOVERNANCE, key
        assert retention.retain_until > datetime.now(UTC) + timedelta(days=2, hours=23)
    assert store.retention("config") is None and store.head("locks/writer") is None
    with pytest.raises(Retained):
        access.remote.delete_document(snap_id)
    assert attach(access.url, tmp_path / "cache-2").remote.lock_policy == policy


def test_a_cache_from_a_removed_copy_does_not_mix_with_a_new_repository(
    s3_env: dict[str, str], s3_bucket: str, tmp_path: Path
) -> None:
    _c1, a = init_repository(f"s3://{s3_bucket}/one", tmp_path / "cache", chunk_size=64 << 10)
    _c2, b = init_repository(f"s3://{s3_bucket}/two", tmp_path / "cache", chunk_size=64 << 10)
    assert a.root != b.root and a.root.parent == b.root.parent
    shutil.rmtree(a.root)
    assert attach(a.url, tmp_path / "cache").root == a.root  # made again from the bucket
    assert (a.root / "config").read_bytes() == ObjectStore(make_client(), s3_bucket, "one").get_bytes("config")


def test_a_repository_reopened_after_its_cache_was_removed_is_whole(
    s3_repo: S3Access, datastore: Path, tmp_path: Path
) -> None:
    snap_id = take_snapshot(s3_repo, datastore)
    shutil.rmtree(s3_repo.root)
    access = attach(s3_repo.url, tmp_path / "cache")
    repo = open_repository(access)
    try:
        assert repo.index.snapshot_ids() == {snap_id}
        assert repo.cache is not None and repo.cache.bytes_fetched == 0, "a rebuild reads indexes, not packs"
        assert repo.cache.ranged_reads > 0  # the manifests
        assert restore(repo, parse_as_of(snap_id, repo), LocalTransport(tmp_path / "out")).ok
    finally:
        repo.close()
    assert tree_sha256(tmp_path / "out") == tree_sha256(datastore)


def test_a_damaged_catalog_in_the_cache_is_rebuilt(s3_repo: S3Access, datastore: Path) -> None:
    snap_id = take_snapshot(s3_repo, datastore)
    (s3_repo.root / "catalog.db").write_bytes(b"not a database at all" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{s3_repo.root / 'catalog.db'}{suffix}").unlink(missing_ok=True)
    repo = open_repository(s3_repo)
    try:
        assert repo.index.snapshot_ids() == {snap_id}
    finally:
        repo.close()
    assert (s3_repo.root / "catalog.db.damaged").exists()


def test_open_refuses_a_prefix_that_holds_no_repository(s3_env: dict[str, str], s3_bucket: str, tmp_path: Path) -> None:
    from catalog.errors import StoreNotFound

    with pytest.raises(StoreNotFound, match=f"s3://{s3_bucket}/nothing"):
        attach(f"s3://{s3_bucket}/nothing", tmp_path / "cache")


def test_a_repository_object_is_never_replaced(s3_repo: S3Access, datastore: Path) -> None:
    from toolkit.objstore import ObjectExists

    snap_id = take_snapshot(s3_repo, datastore)
    with pytest.raises(ObjectExists):
        s3_repo.remote.put_document(snap_id, b"{}\n")
    repo: Repository = open_repository(s3_repo)
    repo.close()
    assert repo.location == s3_repo.url


def test_a_verify_in_the_process_that_wrote_the_snapshot_sees_its_packs(s3_repo: S3Access, datastore: Path) -> None:
    from catalog.check import verify

    repo = open_repository(s3_repo)
    try:
        with repo.writing("snapshot"):
            assert snapshot(repo, [Source("ds1", LocalTransport(datastore))]).ok
        for read_data in (False, True):
            report = verify(repo, read_data=read_data, open_pack=repo.pack_opener())
            assert report.ok, report.to_json()
    finally:
        repo.close()


# -- reader announcements refresh themselves ----------------------------------------------------------------------

FAST_RETRY = RetryPolicy(attempts=2, base_delay_s=0.01, max_delay_s=0.02)
DEADLINE_S = 60.0  # waits for a condition, polled; only a broken heartbeat ever takes this long


def proxied(access: S3Access, proxy: FaultProxy) -> S3Access:
    """The same repository and cache, reached through ``proxy``."""
    store = ObjectStore(make_client(endpoint_url=proxy.url), access.remote.store.bucket, "dc1", retry=FAST_RETRY)
    return S3Access(S3Remote(store), access.root)


def reader_announcements(access: S3Access) -> dict[str, dict]:
    """The reader announcements in the bucket (read directly, not through a proxy), by name."""
    out = {}
    for name in access.remote.list_locks():
        data = access.remote.read_lock(name)
        if name.startswith("reader-") and data is not None:
            out[name] = json.loads(data)
    return out


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def is_pack_get(request: ProxiedRequest) -> bool:
    return request.method == "GET" and "/packs/" in request.target


def is_reader_put(request: ProxiedRequest) -> bool:
    return request.method == "PUT" and "/locks/reader-" in request.target


class ReaderThread(threading.Thread):
    """``verify --read-data`` through the Python API, from opening the repository to closing it."""

    def __init__(self, access: S3Access) -> None:
        super().__init__(name="reader", daemon=True)
        self.access = access
        self.report: VerifyReport | None = None

    def run(self) -> None:
        repo = open_repository(self.access, command="verify")
        try:
            self.report = verify(repo, read_data=True, open_pack=repo.pack_opener())
        finally:
            repo.close()


@pytest.fixture
def proxy(s3_server: MotoS3Server, s3_env: dict[str, str]) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.url) as p:
        yield p


def test_a_long_running_reader_keeps_its_announcement_fresh_and_removes_it_when_done(
    s3_repo: S3Access, datastore: Path, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verify held up at its first pack download refreshes its announcement until it ends."""
    take_snapshot(s3_repo, datastore)
    monkeypatch.setattr("catalog.remote.READER_HEARTBEAT_S", 0.05)
    downloading, proceed = threading.Event(), threading.Event()

    def decide(request: ProxiedRequest) -> str:
        if is_pack_get(request):
            downloading.set()
            proceed.wait(DEADLINE_S)
        return "pass"

    proxy.decide = decide
    reader = ReaderThread(proxied(s3_repo, proxy))
    reader.start()
    try:
        assert downloading.wait(DEADLINE_S), "the verify never downloaded a pack"
        (name, first), *others = reader_announcements(s3_repo).items()
        assert not others
        assert (first["host"], first["pid"], first["command"]) == (socket.gethostname(), os.getpid(), "verify")
        assert first["refreshed"] >= first["since"]
        seen = {first["refreshed"]}
        while len(seen) < 3:  # two refreshes while the verify waits for its pack
            wait_for(lambda: reader_announcements(s3_repo)[name]["refreshed"] not in seen, "a refresh")
            current = reader_announcements(s3_repo)[name]
            assert current["refreshed"] > max(seen) and current["since"] == first["since"]
            seen.add(current["refreshed"])
    finally:
        proceed.set()
        reader.join(DEADLINE_S)
    assert reader.report is not None and reader.report.ok, reader.report
    assert not reader_announcements(s3_repo), "withdrawn when the reader closed the repository"
    assert f"heartbeat-{name}" not in {t.name for t in threading.enumerate()}, "the heartbeat thread ended"


def test_a_refresh_the_store_refuses_is_a_warning_and_the_reader_still_succeeds(
    s3_repo: S3Access,
    datastore: Path,
    proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    take_snapshot(s3_repo, datastore)
    monkeypatch.setattr("catalog.remote.READER_HEARTBEAT_S", 0.05)
    refused = threading.Event()
    reader_puts: list[ProxiedRequest] = []

    def decide(request: ProxiedRequest) -> str:
        if is_reader_put(request):
            reader_puts.append(request)
            return "pass" if len(reader_puts) == 1 else "503"  # the announcement lands, every refresh fails
        if is_pack_get(request):
            refused.wait(DEADLINE_S)
        return "pass"

    proxy.decide = decide
    caplog.set_level(logging.WARNING, logger="catalog.remote")
    reader = ReaderThread(proxied(s3_repo, proxy))
    reader.start()
    try:
        wait_for(lambda: "could not refresh the reader announcement" in caplog.text, "a failed refresh")
    finally:
        refused.set()
        reader.join(DEADLINE_S)
    assert not reader.is_alive()
    assert reader.report is not None and reader.report.ok, reader.report
    assert "SlowDown" in caplog.text or "503" in caplog.text
    assert not reader_announcements(s3_repo), "a failing refresh does not keep the announcement from being withdrawn"


def test_an_announcement_a_refresh_puts_back_after_the_withdrawal_is_removed_again(
    s3_repo: S3Access, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh still in flight when the reader withdraws (and gives up waiting) removes what it wrote."""
    monkeypatch.setattr("catalog.remote.READER_HEARTBEAT_S", 0.05)
    monkeypatch.setattr("catalog.remote.READER_WITHDRAW_WAIT_S", 0.1)
    held, release = threading.Event(), threading.Event()
    reader_puts: list[ProxiedRequest] = []

    def decide(request: ProxiedRequest) -> str:
        if is_reader_put(request):
            reader_puts.append(request)
            if len(reader_puts) == 2:  # the first refresh: hold it until the reader has withdrawn
                held.set()
                release.wait(DEADLINE_S)
        return "pass"

    proxy.decide = decide
    access = proxied(s3_repo, proxy)
    announcement = announce_reader(access.remote, "restore")
    assert announcement is not None
    try:
        assert held.wait(DEADLINE_S)
        announcement.withdraw()  # waits 0.1 s for the refresh, then removes the object
        assert not reader_announcements(s3_repo)
    finally:
        release.set()
    wait_for(lambda: not any(t.name == f"heartbeat-{announcement.name}" for t in threading.enumerate()), "the thread")
    assert len(reader_puts) == 2, "no refresh after the withdrawal"
    assert not reader_announcements(s3_repo), "the refresh that landed late was removed"


def test_remote_readers_judge_age_by_the_last_refresh_and_old_announcements_by_since(remote: S3Remote) -> None:
    now = datetime.now(UTC)

    def announcement(since: timedelta, refreshed: timedelta | None, pid: int) -> bytes:
        info = {"owner": "x", "pid": pid, "host": "restore-host", "command": "restore", "token": ""}
        info["since"] = (now - since).isoformat()
        if refreshed is not None:
            info["refreshed"] = (now - refreshed).isoformat()
        return json.dumps(info).encode()

    limit = timedelta(seconds=READER_STALE_S)
    assert limit >= timedelta(minutes=45), "above the 2 x 15 minutes two hosts' clocks may differ"
    remote.put_lock("reader-fresh", announcement(timedelta(days=2), timedelta(minutes=3), 1))
    remote.put_lock("reader-dead", announcement(timedelta(days=2), limit + timedelta(minutes=1), 2))
    remote.put_lock("reader-old-format-young", announcement(limit - timedelta(minutes=1), None, 3))
    remote.put_lock("reader-old-format-dead", announcement(limit + timedelta(minutes=1), None, 4))
    remote.put_lock(
        "reader-no-time", json.dumps({"owner": "x", "pid": 5, "host": "h", "command": "c", "since": "t"}).encode()
    )
    assert sorted(r.pid for r in remote_readers(remote, now=now)) == [1, 3, 5]
    assert sorted(remote.list_locks()) == ["reader-fresh", "reader-no-time", "reader-old-format-young"]
