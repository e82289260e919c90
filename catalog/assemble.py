"""Reassemble stored files: the one read path shared by restore and verify."""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from catalog.chunker import FileDigest, zero_sha256
from catalog.errors import ChunkMissing
from catalog.index import Index
from catalog.manifest import Manifest, decode_manifest
from catalog.store import PackReader
from catalog.types import HOLE_ID, ChunkId, ChunkLocation

WriteAt = Callable[[int, bytes], None]
Progress = Callable[[int], None]

DEFAULT_WORKERS: Final = 2


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
