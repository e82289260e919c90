"""Turn a file's bytes into stored chunks and a manifest.

Chunks are read, tested for zero, hashed and compressed by a small thread
pool (xxhash, hashlib and zstandard release the GIL), while the calling thread
appends new chunks to the pack writer in file order. At most ``inflight``
chunks are held in memory at once, whatever the file size.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from catalog.chunker import FileDigest, chunk_id_of, is_zero, iter_offsets, zero_sha256
from catalog.crypto import RepoKeys
from catalog.errors import Error
from catalog.index import Index
from catalog.manifest import encode_manifest
from catalog.store import Compressor, PackWriter, encode_record, identify, sha256_field
from catalog.types import HOLE_ID, TYPE_DATA, TYPE_MANIFEST, ChunkId

ReadAt = Callable[[int, int], bytes]
Progress = Callable[[int], None]

DEFAULT_WORKERS: Final = 2  # this is CPU work; the machines we run on have few cores


class ShortRead(Error):
    template = "{path} changed while it was read (expected {expected} bytes at offset {offset}, got {got})"
    hint = "the file is being written; it is retried at the next snapshot"
    code = "short_read"
    exit_code = 1


@dataclass(slots=True)
class IngestStats:
    files: int = 0
    chunks: int = 0
    holes: int = 0
    new_chunks: int = 0
    new_raw_bytes: int = 0
    new_stored_bytes: int = 0
    read_bytes: int = 0
    wire_bytes: int = 0  # bytes that crossed the network when a host hashed the file for us

    def add(self, other: IngestStats) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(frozen=True, slots=True)
class FileResult:
    manifest_id: ChunkId
    digest: str
    size: int
    stats: IngestStats = field(compare=False)


@dataclass(slots=True)
class _Chunk:
    chunk_id: ChunkId
    sha256: bytes
    raw_size: int
    codec: int = 0
    stored: bytes | None = None  # set only for chunks not yet in the repository


PENDING_TRIM: Final = 16_384  # stored chunks remembered before those already in the catalog are forgotten


class Ingester:
    """Stores files into one repository for the length of a writer session."""

    def __init__(
        self,
        index: Index,
        writer: PackWriter,
        chunk_size: int,
        compressor: Compressor,
        *,
        workers: int = DEFAULT_WORKERS,
        keys: RepoKeys | None = None,
        pending_trim: int | None = None,
    ) -> None:
        self.index = index
        # An encrypted repository's keys: keyed chunk ids, encrypted records, sealed SHA-256 fields.
        self.keys = keys if keys is not None else index.keys
        self.writer = writer
        self.chunk_size = chunk_size
        self.compressor = compressor
        self.workers = workers
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest")
        self.inflight = max(8, workers * 8)  # enough that a stalled writer does not starve the workers
        self._pending: dict[bytes, bytes] = {}  # chunk id -> sha256 of chunks stored in this session
        self._pending_by_sha: dict[bytes, ChunkId] = {}
        self._pending_lock = threading.Lock()
        # Chunks whose pack is sealed are in the catalog: they leave _pending every so many, so memory
        # stays bounded by what is not sealed yet, whatever a session stores.
        self.trim_every = pending_trim or PENDING_TRIM
        self._next_trim = self.trim_every

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _known_sha256(self, chunk_id: ChunkId) -> bytes | None:
        sha = self._pending.get(chunk_id)
        if sha is not None:
            return sha
        # A lost chunk has no row in the catalog (repair removed it with its damaged pack), so it is
        # never taken as stored: it is written again, which heals every version that names it.
        return self.index.chunk_sha256(chunk_id)

    def _trim_pending(self) -> None:
        """Forget the chunks the catalog already holds (their packs are sealed); the caller holds the lock."""
        indexed = self.index.locate_many(ChunkId(c) for c in self._pending)
        for cid in indexed:
            sha = self._pending.pop(cid, None)
            if sha is not None and self._pending_by_sha.get(sha) == cid:
                del self._pending_by_sha[sha]
        self._next_trim = len(self._pending) + self.trim_every

    @property
    def pending_count(self) -> int:
        """How many stored chunks this session still remembers itself (not yet found in the catalog)."""
        return len(self._pending)

    def needs_reading(self, manifest_id: bytes) -> bool:
        """True when a file must be read although its size and mtime are unchanged: its manifest, or a
        chunk it names, is lost, and reading the file stores them again."""
        return self.index.has_lost(manifest_id)

    def _work(self, read_at: ReadAt, path: str, offset: int, size: int) -> _Chunk:
        raw = read_at(offset, size)
        if len(raw) != size:
            raise ShortRead(path=path, expected=size, offset=offset, got=len(raw))
        if is_zero(raw):
            return _Chunk(HOLE_ID, zero_sha256(size), size)
        cid, sha = identify(self.keys, raw)
        known = self._known_sha256(cid)
        if known is not None:
            return _Chunk(cid, known, size)
        sha = sha or hashlib.sha256(raw).digest()
        codec, stored = encode_record(self.compressor, self.keys, cid, TYPE_DATA, raw)
        return _Chunk(cid, sha, size, codec, stored)

    def _store(self, chunk: _Chunk, stats: IngestStats) -> None:
        if chunk.stored is None:
            return
        with self._pending_lock:
            if chunk.chunk_id in self._pending:
                return
            self._pending[chunk.chunk_id] = chunk.sha256
            self._pending_by_sha[chunk.sha256] = chunk.chunk_id
            if len(self._pending) >= self._next_trim:
                self._trim_pending()
        sha = sha256_field(self.keys, chunk.chunk_id, chunk.sha256)
        self.writer.add(chunk.chunk_id, TYPE_DATA, chunk.codec, chunk.raw_size, sha, chunk.stored)
        stats.new_chunks += 1
        stats.new_raw_bytes += chunk.raw_size
        stats.new_stored_bytes += len(chunk.stored)

    def ingest(
        self,
        read_at: ReadAt,
        size: int,
        path: str = "",
        progress: Progress | None = None,
        is_hole: Callable[[int, int], bool] | None = None,
    ) -> FileResult:
        """Store one file of ``size`` bytes read through ``read_at(offset, length)``.

        ``is_hole(offset, length)``, when the source knows where its holes are, lets
        whole-hole chunks be recorded without reading them.
        """
        stats = IngestStats(files=1)
        digest = FileDigest()
        ids: list[bytes] = []
        queue: deque[Future[_Chunk]] = deque()

        def drain_one() -> None:
            chunk = queue.popleft().result()
            ids.append(chunk.chunk_id)
            digest.add_block_sha256(chunk.sha256)
            stats.chunks += 1
            stats.read_bytes += chunk.raw_size
            if chunk.chunk_id == HOLE_ID:
                stats.holes += 1
            else:
                self._store(chunk, stats)
            if progress is not None:
                progress(chunk.raw_size)

        try:
            for offset, length in iter_offsets(size, self.chunk_size):
                if is_hole is not None and is_hole(offset, length):
                    done: Future[_Chunk] = Future()
                    done.set_result(_Chunk(HOLE_ID, zero_sha256(length), length))
                    queue.append(done)
                else:
                    queue.append(self.pool.submit(self._work, read_at, path, offset, length))
                if len(queue) >= self.inflight:
                    drain_one()
            while queue:
                drain_one()
        finally:
            for fut in queue:
                fut.cancel()
        manifest_id = self.put_manifest(size, ids)
        return FileResult(manifest_id, digest.hexdigest(), size, stats)

    def ingest_hashed(
        self,
        size: int,
        sha256s: Sequence[bytes | None],
        fetch: Callable[[Sequence[int]], Iterable[tuple[int, bytes, int]]],
        path: str = "",
    ) -> tuple[FileResult, int]:
        """Store a file known by its per-block SHA-256s (None: all-zero), fetching only unknown blocks.

        Returns the result and the bytes ``fetch`` reported as transferred. Fetched
        blocks are checked against the SHA-256 the host announced.
        """
        stats = IngestStats(files=1, read_bytes=size)  # the host read all of it; wire_bytes says what travelled
        digest = FileDigest()
        ids: list[bytes] = [b""] * len(sha256s)
        by_sha: dict[bytes, bytes] = {}  # sha256 -> chunk id, within this file
        missing: list[tuple[int, bytes]] = []
        for i, sha in enumerate(sha256s):
            length = min(self.chunk_size, size - i * self.chunk_size)
            digest.add_block_sha256(sha if sha is not None else zero_sha256(length))
            stats.chunks += 1
            if sha is None:
                ids[i] = HOLE_ID
                stats.holes += 1
                continue
            known = by_sha.get(sha) or self._pending_by_sha.get(sha) or self.index.chunk_by_sha256(sha, length)
            if known is not None:
                ids[i] = known
                by_sha[sha] = known
            else:
                missing.append((i, sha))
        wire = 0
        first: dict[bytes, int] = {}
        for i, sha in missing:
            first.setdefault(sha, i)
        wanted = sorted(first.values())
        for i, raw, cost in fetch(wanted):
            wire += cost
            sha = sha256s[i]
            if sha is None or hashlib.sha256(raw).digest() != sha:
                raise ShortRead(path=path, expected=len(raw), offset=i * self.chunk_size, got=len(raw))
            cid = chunk_id_of(raw) if self.keys is None else self.keys.chunk_id(sha)
            codec, stored = encode_record(self.compressor, self.keys, cid, TYPE_DATA, raw)
            self._store(_Chunk(cid, sha, len(raw), codec, stored), stats)
            by_sha[sha] = cid
        for i, sha in missing:
            ids[i] = by_sha[sha]
        manifest_id = self.put_manifest(size, ids)
        return FileResult(manifest_id, digest.hexdigest(), size, stats), wire

    def put_manifest(self, size: int, ids: list[bytes]) -> ChunkId:
        blob = encode_manifest(self.chunk_size, size, ids)
        mid, sha = identify(self.keys, blob)
        if self._known_sha256(mid) is None:
            codec, stored = encode_record(self.compressor, self.keys, mid, TYPE_MANIFEST, blob)
            sha = sha or hashlib.sha256(blob).digest()
            with self._pending_lock:
                self._pending[mid] = sha
            self.writer.add(mid, TYPE_MANIFEST, codec, len(blob), sha256_field(self.keys, mid, sha), stored)
        self.index.add_manifest(mid, size, len(ids), sum(1 for c in ids if c == HOLE_ID))
        return mid


def read_at_path(path: Path) -> tuple[ReadAt, Callable[[], None]]:
    """A thread-safe ``read_at`` over a local file, and its closer."""
    import os

    fd = os.open(path, os.O_RDONLY)

    def read_at(offset: int, size: int) -> bytes:
        return os.pread(fd, size, offset)

    return read_at, lambda: os.close(fd)
