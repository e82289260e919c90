"""Reassemble stored files: the one read path shared by restore and verify."""

from __future__ import annotations

import hashlib
import mmap
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from catalog.chunker import FileDigest, zero_sha256
from catalog.errors import ChunkCorrupt, ChunkMissing
from catalog.index import Index
from catalog.manifest import Manifest, decode_manifest
from catalog.store import PackReader
from catalog.types import HOLE_ID, ChunkId, ChunkLocation

WriteAt = Callable[[int, bytes], None]
WriteBlock = Callable[[int, memoryview], None]  # (offset, bytes): positional, called from any worker thread
Progress = Callable[[int], None]

DEFAULT_WORKERS: Final = 2
BUFFER_SLACK: Final = mmap.PAGESIZE  # room past the chunk: the decoder proves a frame ends where it should


def load_manifest(index: Index, reader: PackReader, manifest_id: bytes) -> Manifest:
    loc = index.locate(ChunkId(manifest_id))
    if loc is None:
        raise ChunkMissing(chunk_id=manifest_id.hex())
    return decode_manifest(manifest_id.hex(), reader.read(loc))


@dataclass(frozen=True, slots=True)
class PlannedChunk:
    offset: int
    size: int
    location: ChunkLocation | None  # None: a hole


def plan(index: Index, manifest: Manifest) -> Iterator[PlannedChunk]:
    """Where each chunk of a file is stored; raises ChunkMissing for an unknown id."""
    where = index.locate_many({c for c in manifest.chunk_ids if c != HOLE_ID})
    for offset, size, cid in manifest.entries():
        if cid == HOLE_ID:
            yield PlannedChunk(offset, size, None)
            continue
        loc = where.get(cid)
        if loc is None:
            raise ChunkMissing(chunk_id=cid.hex())
        yield PlannedChunk(offset, size, loc)


def digest_from_catalog(index: Index, manifest: Manifest) -> str:
    """The file digest as the catalog's per-chunk SHA-256 values put it together (no data read)."""
    digest = FileDigest()
    for chunk in plan(index, manifest):
        digest.add_block_sha256(zero_sha256(chunk.size) if chunk.location is None else chunk.location.sha256)
    return digest.hexdigest()


def restore_file(
    index: Index,
    reader: PackReader,
    manifest: Manifest,
    write_at: WriteAt,
    *,
    pool: ThreadPoolExecutor,
    inflight: int = 6,
    progress: Progress | None = None,
    digest: bool = True,
) -> str:
    """Write every non-hole chunk through ``write_at`` in file order; return the digest of the bytes.

    Holes are not written (the caller sizes the file, so they stay sparse). Each
    chunk is checked against its id when read, and hashed again for the digest
    (with ``digest=False`` it is not, and "" is returned: the caller digests
    what landed instead).
    """
    whole = FileDigest()
    queue: deque[tuple[PlannedChunk, Future[tuple[bytes, bytes]] | None]] = deque()

    def fetch(loc: ChunkLocation) -> tuple[bytes, bytes]:
        raw = reader.read(loc)
        return raw, (hashlib.sha256(raw).digest() if digest else b"")

    def drain_one() -> None:
        chunk, fut = queue.popleft()
        if fut is None:
            whole.add_block_sha256(zero_sha256(chunk.size))
        else:
            raw, sha = fut.result()
            write_at(chunk.offset, raw)
            whole.add_block_sha256(sha)
        if progress is not None:
            progress(chunk.size)

    try:
        for chunk in plan(index, manifest):
            fut = None if chunk.location is None else pool.submit(fetch, chunk.location)
            queue.append((chunk, fut))
            if len(queue) >= inflight * 4 or (fut is not None and sum(1 for _, f in queue if f) >= inflight):
                drain_one()
        while queue:
            drain_one()
    finally:
        for _, pending in queue:
            if pending is not None:
                pending.cancel()
    return whole.hexdigest() if digest else ""


_buffers = threading.local()


def chunk_buffer(chunk_size: int) -> memoryview:
    """This thread's output buffer: page-aligned (direct I/O can write it), reused for every chunk."""
    buf: mmap.mmap | None = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < chunk_size + BUFFER_SLACK:
        buf = mmap.mmap(-1, chunk_size + BUFFER_SLACK)
        _buffers.buf = buf
    return memoryview(buf)


def restore_file_blocks(
    index: Index,
    reader: PackReader,
    manifest: Manifest,
    write_block: WriteBlock,
    *,
    pool: ThreadPoolExecutor,
    inflight: int = 8,
    progress: Progress | None = None,
    digest: bool = True,
    on_block: Callable[[int, bytes], None] | None = None,
) -> str:
    """Like :func:`restore_file`, but each worker writes what it decoded itself; the digest of what was written.

    A worker reads a chunk into its own buffer, checks it against its id, hands it to
    ``write_block(offset, view)`` (called from several threads at once, any order) and then,
    with ``digest``, hashes the very bytes it handed over. The returned file digest is built
    from those hashes in file order (holes as zero blocks): the digest of what was written.
    ``on_block(offset, sha256)`` sees each written chunk's hash, in file order, on the calling
    thread. Memory stays at one buffer per worker whatever the file size.
    """
    whole = FileDigest()
    queue: deque[tuple[PlannedChunk, Future[bytes] | None]] = deque()
    chunk_size = manifest.chunk_size

    def fetch_write(loc: ChunkLocation, offset: int, size: int) -> bytes:
        raw = reader.read_into(loc, chunk_buffer(chunk_size))
        if len(raw) != size:
            raise ChunkCorrupt(chunk_id=loc.chunk_id.hex(), pack_id=loc.pack_id, detail="its size is not the file's")
        write_block(offset, raw)
        return hashlib.sha256(raw).digest() if digest else b""

    def drain_one() -> None:
        chunk, fut = queue.popleft()
        if fut is None:
            whole.add_block_sha256(zero_sha256(chunk.size))
        else:
            sha = fut.result()
            whole.add_block_sha256(sha)
            if on_block is not None:
                on_block(chunk.offset, sha)
        if progress is not None:
            progress(chunk.size)

    pending = 0
    try:
        for chunk in plan(index, manifest):
            fut = None if chunk.location is None else pool.submit(fetch_write, chunk.location, chunk.offset, chunk.size)
            queue.append((chunk, fut))
            pending += fut is not None
            while pending >= inflight or len(queue) >= inflight * 4:
                pending -= queue[0][1] is not None
                drain_one()
        while queue:
            drain_one()
    finally:
        for _, waiting in queue:
            if waiting is not None:
                waiting.cancel()
        for _, waiting in queue:  # nothing may still write once the caller gives up on the file
            if waiting is not None and not waiting.cancelled():
                waiting.exception()
    return whole.hexdigest() if digest else ""
