"""The restore read path that writes from the workers: restore_file_blocks, PackReader.read_into, decode_into."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog.assemble import chunk_buffer, load_manifest, restore_file, restore_file_blocks
from catalog.chunker import file_digest_of
from catalog.errors import ChunkCorrupt
from catalog.ingest import Ingester
from catalog.repo import Repository
from catalog.store import Compressor, PackWriter, decode_into
from catalog.types import CODEC_RAW, CODEC_ZSTD

CHUNK = 64 << 10


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    r = Repository.init(tmp_path / "r", chunk_size=CHUNK, pack_target_bytes=200_000)
    yield r
    r.close()


def _ingest(repo: Repository, data: bytes) -> bytes:
    writer = PackWriter(repo.root, lambda p, s, e: repo.index.add_pack(p, s, e, "t"), repo.config.pack_target_bytes)
    ing = Ingester(repo.index, writer, repo.config.chunk_size, Compressor())
    try:
        result = ing.ingest(lambda off, n: data[off : off + n], len(data))
        writer.seal()
    finally:
        ing.close()
    return result.manifest_id


def _mixed(pattern: list[bytes], tail: int) -> bytes:
    """Whole chunks of zeros, text and random bytes in the given order, then a short tail."""
    kinds = {b"z": bytes(CHUNK), b"t": b"AppStack text " * (CHUNK // 14 + 1), b"r": os.urandom(CHUNK)}
    return b"".join(kinds[p][:CHUNK] for p in pattern) + os.urandom(tail)


def _blocks(repo: Repository, manifest_id: bytes, workers: int = 3) -> tuple[bytes, str, list[int]]:
    manifest = load_manifest(repo.index, repo.reader, manifest_id)
    out = bytearray(manifest.file_size)
    lock = threading.Lock()
    offsets: list[int] = []

    def write_block(offset: int, data: memoryview) -> None:
        with lock:
            out[offset : offset + len(data)] = data
            offsets.append(offset)

    with ThreadPoolExecutor(workers) as pool:
        digest = restore_file_blocks(repo.index, repo.reader, manifest, write_block, pool=pool, inflight=4)
    return bytes(out), digest, offsets


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=st.lists(st.sampled_from([b"z", b"t", b"r"]), max_size=12), tail=st.integers(0, CHUNK - 1))
def test_written_blocks_are_the_file_and_the_digest_is_the_recorded_one(
    repo: Repository, pattern: list[bytes], tail: int
) -> None:
    data = _mixed(pattern, tail)
    got, digest, offsets = _blocks(repo, _ingest(repo, data))
    assert got == data
    assert digest == file_digest_of(io.BytesIO(data), CHUNK)
    zero_chunks = {i * CHUNK for i, p in enumerate(pattern) if p == b"z"}
    assert not zero_chunks & set(offsets), "a hole was written"


def test_blocks_and_the_buffered_path_agree(repo: Repository) -> None:
    data = _mixed([b"t", b"r", b"z", b"t", b"r"], 1000)
    manifest_id = _ingest(repo, data)
    out = bytearray(len(data))

    def write_at(offset: int, chunk: bytes) -> None:
        out[offset : offset + len(chunk)] = chunk

    with ThreadPoolExecutor(2) as pool:
        old = restore_file(
            repo.index, repo.reader, load_manifest(repo.index, repo.reader, manifest_id), write_at, pool=pool
        )
    got, new, _ = _blocks(repo, manifest_id)
    assert (bytes(out), old) == (got, new)


def test_on_block_sees_each_written_chunk_in_file_order(repo: Repository) -> None:
    data = _mixed([b"r", b"z", b"t", b"r"], 0)
    manifest = load_manifest(repo.index, repo.reader, _ingest(repo, data))
    seen: list[int] = []
    with ThreadPoolExecutor(3) as pool:
        restore_file_blocks(
            repo.index, repo.reader, manifest, lambda _o, _d: None, pool=pool, on_block=lambda o, _s: seen.append(o)
        )
    assert seen == [0, 2 * CHUNK, 3 * CHUNK]


@pytest.mark.parametrize("kind", [b"t", b"r"])
def test_a_flipped_byte_in_a_record_fails_read_into(repo: Repository, kind: bytes) -> None:
    data = _mixed([kind], 0)
    loc = repo.index.locate(load_manifest(repo.index, repo.reader, _ingest(repo, data)).chunk_ids[0])
    assert loc is not None
    assert loc.codec == (CODEC_ZSTD if kind == b"t" else CODEC_RAW)
    path = repo.pack_file(loc.pack_id)
    raw = bytearray(path.read_bytes())
    raw[loc.offset + loc.stored_size // 2] ^= 0x01
    path.chmod(0o600)
    path.write_bytes(bytes(raw))
    repo.reader.close()
    with pytest.raises(ChunkCorrupt):
        repo.reader.read_into(loc, chunk_buffer(CHUNK))


def test_a_failed_chunk_stops_the_file_and_no_write_runs_after(repo: Repository) -> None:
    data = _mixed([b"r"] * 12, 0)
    manifest = load_manifest(repo.index, repo.reader, _ingest(repo, data))
    loc = repo.index.locate(manifest.chunk_ids[5])
    assert loc is not None
    path = repo.pack_file(loc.pack_id)
    raw = bytearray(path.read_bytes())
    raw[loc.offset] ^= 0x01
    path.chmod(0o600)
    path.write_bytes(bytes(raw))
    repo.reader.close()
    returned = threading.Event()
    late: list[int] = []

    def write_block(offset: int, _data: memoryview) -> None:
        if returned.is_set():
            late.append(offset)

    with ThreadPoolExecutor(3) as pool:
        with pytest.raises(ChunkCorrupt):
            restore_file_blocks(repo.index, repo.reader, manifest, write_block, pool=pool, inflight=6)
        returned.set()
    assert late == []


def test_decode_into_wants_exactly_the_recorded_size() -> None:
    raw = b"AppStack " * 5000
    frame = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(raw)
    out = memoryview(bytearray(len(raw) + 4096))
    assert bytes(decode_into(CODEC_ZSTD, memoryview(frame), len(raw), out)) == raw
    for wrong in (len(raw) - 1, len(raw) + 1):
        with pytest.raises((ValueError, zstandard.ZstdError)):
            decode_into(CODEC_ZSTD, memoryview(frame), wrong, out)
    with pytest.raises((ValueError, zstandard.ZstdError)):
        decode_into(CODEC_ZSTD, memoryview(frame[:-10]), len(raw), out)
    with pytest.raises(ValueError):
        decode_into(CODEC_RAW, memoryview(raw), len(raw) + 1, out)


def test_chunk_buffer_is_page_aligned_and_reused_per_thread() -> None:
    a, b = chunk_buffer(CHUNK), chunk_buffer(CHUNK)
    assert a.obj is b.obj
    other: list[object] = []
    t = threading.Thread(target=lambda: other.append(chunk_buffer(CHUNK).obj))
    t.start()
    t.join()
    assert other[0] is not a.obj
    assert len(a) > CHUNK  # room for the decoder's end-of-frame check
