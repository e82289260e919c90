import json
import os
import socket
from pathlib import Path

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog.assemble import load_manifest, restore_file
from catalog.chunker import file_digest_of
from catalog.errors import ChunkCorrupt, Locked, StoreExists, StoreNotFound
from catalog.ingest import Ingester
from catalog.lock import break_lock, read_lock, writer_lock
from catalog.repo import Repository
from catalog.store import Compressor, PackWriter
from catalog.types import CODEC_RAW, CODEC_ZSTD


def _ingest(repo: Repository, data: bytes):
    writer = PackWriter(repo.root, lambda p, s, e: repo.index.add_pack(p, s, e, "t"), repo.config.pack_target_bytes)
    ing = Ingester(repo.index, writer, repo.config.chunk_size, Compressor())
    try:
        result = ing.ingest(lambda off, n: data[off : off + n], len(data))
        writer.seal()
    finally:
        ing.close()
    return result, ing


def _restore(repo: Repository, manifest_id: bytes) -> bytes:
    from concurrent.futures import ThreadPoolExecutor

    out = bytearray(load_manifest(repo.index, repo.reader, manifest_id).file_size)

    def write_at(off: int, b: bytes) -> None:
        out[off : off + len(b)] = b

    with ThreadPoolExecutor(2) as pool:
        restore_file(repo.index, repo.reader, load_manifest(repo.index, repo.reader, manifest_id), write_at, pool=pool)
    return bytes(out)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    r = Repository.init(tmp_path / "r", chunk_size=64 << 10, pack_target_bytes=200_000)
    yield r
    r.close()


def test_init_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("hi")
    with pytest.raises(StoreExists):
        Repository.init(tmp_path / "x")
    with pytest.raises(StoreNotFound):
        Repository.open(tmp_path / "x")


def test_repository_permissions(repo: Repository) -> None:
    assert (repo.root.stat().st_mode & 0o777) == 0o700
    assert (repo.root / "config").stat().st_mode & 0o077 == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.sampled_from([b"\0", b"A", b"r"]), min_size=0, max_size=12),
    st.integers(min_value=0, max_value=65535),
)
def test_bytes_to_chunks_to_packs_and_back(repo: Repository, pattern: list[bytes], tail: int) -> None:
    rnd = os.urandom(64 << 10)
    blocks = [bytes(64 << 10) if p == b"\0" else (p * (64 << 10) if p == b"A" else rnd) for p in pattern]
    data = b"".join(blocks) + os.urandom(tail)
    result, _ = _ingest(repo, data)
    assert _restore(repo, result.manifest_id) == data
    import io

    assert result.digest == file_digest_of(io.BytesIO(data), 64 << 10)


def test_dedup_and_holes(repo: Repository) -> None:
    block = os.urandom(64 << 10)
    data = block + bytes(64 << 10) * 3 + block + b"x" * (64 << 10)
    result, _ = _ingest(repo, data)
    assert result.stats.holes == 3
    assert result.stats.new_chunks == 2  # the repeated block and the holes cost nothing
    again, _ = _ingest(repo, data)
    assert again.stats.new_chunks == 0
    assert again.manifest_id == result.manifest_id


def test_incompressible_chunks_are_stored_raw(repo: Repository) -> None:
    _ingest(repo, os.urandom(64 << 10) + b"text " * (64 << 10 // 5 + 1))
    codecs = {row[0] for row in repo.index.conn.execute("SELECT codec FROM chunks WHERE type = 0")}
    assert codecs == {CODEC_RAW, CODEC_ZSTD}


def test_packs_are_named_by_their_hash_and_sealed(repo: Repository) -> None:
    _ingest(repo, os.urandom(600_000))
    packs = list(repo.iter_pack_files())
    assert len(packs) >= 2
    for pack_id, path in packs:
        assert xxhash.xxh3_128_hexdigest(path.read_bytes()) == pack_id
        assert path.parent.name == pack_id[:2]
    assert not list((repo.root / "tmp").iterdir())


@pytest.mark.parametrize("published", [False, True])
def test_a_sealed_pack_leaves_the_page_cache_after_it_is_durable_and_published(
    repo: Repository, monkeypatch: pytest.MonkeyPatch, published: bool
) -> None:
    events: list[tuple[str, int]] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", fd)), real_fsync(fd))[1])
    monkeypatch.setattr(
        os,
        "posix_fadvise",
        lambda fd, off, n, advice: events.append(("drop", fd)) if advice == os.POSIX_FADV_DONTNEED else None,
    )
    uploads: list[str] = []
    writer = PackWriter(
        repo.root,
        lambda p, s, e: events.append(("sealed", len(uploads))),
        200_000,
        background=False,
        publish=(lambda pack_id, path: (uploads.append(pack_id), events.append(("publish", 0)))) if published else None,
    )
    writer.add(b"\x01" * 16, 0, CODEC_RAW, 300_000, b"\x02" * 32, os.urandom(300_000))
    writer.seal()
    kinds = [kind for kind, _ in events]
    drop = kinds.index("drop")
    assert kinds.index("fsync") < drop < kinds.index("sealed")
    if published:
        assert kinds.index("publish") < drop and uploads
    dropped_fd = events[drop][1]
    assert ("fsync", dropped_fd) in events  # the pack's own descriptor, after its own fsync


def test_a_flipped_byte_is_caught_on_read(repo: Repository) -> None:
    result, _ = _ingest(repo, os.urandom(100_000))
    loc = repo.index.locate(load_manifest(repo.index, repo.reader, result.manifest_id).chunk_ids[0])
    path = repo.pack_file(loc.pack_id)
    raw = bytearray(path.read_bytes())
    raw[loc.offset + 10] ^= 0xFF
    path.chmod(0o600)
    path.write_bytes(bytes(raw))
    repo.reader.close()
    with pytest.raises(ChunkCorrupt):
        repo.reader.read(loc)


def test_writer_lock_excludes_a_second_writer_and_breaks_stale_ones(tmp_path: Path) -> None:
    root = tmp_path / "r"
    Repository.init(root).close()
    with writer_lock(root, "snapshot"):
        assert read_lock(root).command == "snapshot"
        with pytest.raises(Locked) as err, writer_lock(root, "prune"):
            pass
        assert err.value.exit_code == 3
        with pytest.raises(Locked):
            break_lock(root)  # holder is alive
    # A lock left by a dead process on this host is stale and is taken over.
    (root / "locks" / "writer").write_text(
        json.dumps({"owner": "x", "pid": 999999999, "host": socket.gethostname(), "command": "snapshot", "since": "t"})
    )
    with writer_lock(root, "snapshot"):
        pass
    assert read_lock(root) is None


def test_a_lock_from_another_host_is_stale_only_when_old(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    root = tmp_path / "r"
    Repository.init(root).close()
    since, refreshed = (datetime.now(UTC) - timedelta(hours=30)).isoformat(), datetime.now(UTC).isoformat()
    holder = {"owner": "x", "pid": 1, "host": "elsewhere", "command": "snapshot", "since": since}
    (root / "locks" / "writer").write_text(json.dumps(holder | {"refreshed": refreshed}))  # a long job, still running
    with pytest.raises(Locked):
        break_lock(root)
    with pytest.raises(Locked):
        break_lock(root, older_than_s=48 * 3600)
    assert break_lock(root, older_than_s=24 * 3600) is not None
    assert read_lock(root) is None
