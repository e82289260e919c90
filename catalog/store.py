"""ChunkStore pieces: compression, pack writing and chunk reading. No SQL here.

Packs are written to ``tmp/`` under a temporary name, fsynced, then renamed to
``packs/<ab>/<xxh3-128 of the pack>``; a sealed pack is never modified.
"""

from __future__ import annotations

import errno
import os
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Final

import xxhash
import zstandard

from catalog import pack
from catalog.chunker import chunk_id_of
from catalog.errors import ChunkCorrupt, PackCorrupt, StoreFull
from catalog.types import CODEC_RAW, CODEC_ZSTD, ChunkId, ChunkLocation, PackEntry, PackId

DEFAULT_ZSTD_LEVEL: Final = 3  # chosen by benchmarks/chunk_size.py: best size per CPU second on AppStack data
PROBE_BYTES: Final = 32 << 10  # compress this much first; skip chunks that will not shrink
PROBE_MIN_SAVING: Final = 0.03  # a probe that saves less than 3 % means "store raw"
DEFAULT_PACK_TARGET_BYTES: Final = 32 << 20  # tens of MiB: few files, cheap fsyncs, small loss on damage
OPEN_PACKS: Final = 64  # file descriptors kept open by a reader


class Compressor:
    """zstd per chunk, raw when compression would not help. Thread-safe."""

    def __init__(self, level: int = DEFAULT_ZSTD_LEVEL) -> None:
        self.level = level
        self._local = threading.local()

    def _zstd(self) -> zstandard.ZstdCompressor:
        c: zstandard.ZstdCompressor | None = getattr(self._local, "c", None)
        if c is None:
            c = zstandard.ZstdCompressor(level=self.level, write_content_size=True)
            self._local.c = c
        return c

    def compress(self, raw: bytes) -> tuple[int, bytes]:
        c = self._zstd()
        if len(raw) > 4 * PROBE_BYTES:
            probe = c.compress(raw[:PROBE_BYTES])
            if len(probe) > PROBE_BYTES * (1 - PROBE_MIN_SAVING):
                # The head does not shrink: check the tail too before giving up.
                tail = c.compress(raw[-PROBE_BYTES:])
                if len(tail) > PROBE_BYTES * (1 - PROBE_MIN_SAVING):
                    return CODEC_RAW, raw
        stored = c.compress(raw)
        if len(stored) >= len(raw):
            return CODEC_RAW, raw
        return CODEC_ZSTD, stored


_decompressors = threading.local()


def decode(codec: int, stored: bytes, raw_size: int) -> bytes:
    if codec == CODEC_RAW:
        return stored
    if codec == CODEC_ZSTD:
        d: zstandard.ZstdDecompressor | None = getattr(_decompressors, "d", None)
        if d is None:
            d = zstandard.ZstdDecompressor()
            _decompressors.d = d
        return d.decompress(stored, max_output_size=raw_size)
    raise ValueError(f"unknown codec {codec}")


def pack_path(root: Path, pack_id: str) -> Path:
    return root / "packs" / pack_id[:2] / pack_id


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class PackWriter:
    """Appends records to one open pack at a time; seals it when it is big enough.

    ``on_seal(pack_id, size, entries)`` is called after the pack is durable
    under its final name (the caller records it in the catalog). Sealing (fsync,
    rename, directory fsync, ``on_seal``) runs on a background thread so writing
    goes on meanwhile; at most ``MAX_SEALING`` packs wait for it. :meth:`seal`
    returns only when every pack written so far is sealed.
    """

    MAX_SEALING: Final = 2

    def __init__(
        self,
        root: Path,
        on_seal: Callable[[PackId, int, list[PackEntry]], None],
        target_bytes: int = DEFAULT_PACK_TARGET_BYTES,
        *,
        background: bool = True,
    ) -> None:
        self.root = root
        self.target_bytes = target_bytes
        self.on_seal = on_seal
        self._fd = -1
        self._tmp: Path | None = None
        self._hash = xxhash.xxh3_128()
        self._entries: list[PackEntry] = []
        self._size = 0
        self.sealed_bytes = 0
        self._sealer = ThreadPoolExecutor(1, thread_name_prefix="seal") if background else None
        self._sealing: deque[Future[None]] = deque()

    def _open(self) -> None:
        tmp_dir = self.root / "tmp"
        self._tmp = tmp_dir / f"pack-{uuid.uuid4().hex}.tmp"
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._hash = xxhash.xxh3_128()
        self._entries = []
        self._size = 0
        self._write(pack.encode_header())

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            path = str(self._tmp)
            self.abort()
            if _is_disk_full(exc):
                raise StoreFull(path=path) from exc
            raise
        self._hash.update(data)
        self._size += len(data)

    @property
    def pending_bytes(self) -> int:
        return self._size

    def add(self, chunk_id: ChunkId, type_: int, codec: int, raw_size: int, sha256: bytes, stored: bytes) -> None:
        if self._fd < 0:
            self._wait(self.MAX_SEALING)  # also surfaces a failed background seal
            self._open()
        entry = PackEntry(chunk_id, type_, codec, raw_size, len(stored), self._size + pack.RECORD_HEADER_SIZE, sha256)
        self._write(pack.encode_record_header(entry))
        self._write(stored)
        self._entries.append(entry)
        if self._size >= self.target_bytes:
            self._finish()

    def _finish(self) -> None:
        """Write the trailer and hand the pack to the sealer."""
        if self._fd < 0 or self._tmp is None:
            return
        self._write(pack.encode_trailer(self._entries, self._size))
        job = (self._fd, self._tmp, PackId(self._hash.hexdigest()), self._entries, self._size)
        self._fd, self._tmp, self._entries, self._size = -1, None, [], 0
        if self._sealer is None:
            self._make_durable(*job)
        else:
            self._sealing.append(self._sealer.submit(self._make_durable, *job))

    def _make_durable(self, fd: int, tmp: Path, pack_id: PackId, entries: list[PackEntry], size: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            if _is_disk_full(exc):
                raise StoreFull(path=str(tmp)) from exc
            raise
        os.close(fd)
        final = pack_path(self.root, pack_id)
        final.parent.mkdir(mode=0o700, exist_ok=True)
        tmp.replace(final)
        fsync_dir(final.parent)
        self.sealed_bytes += size
        self.on_seal(pack_id, size, entries)

    def _wait(self, keep: int = 0) -> None:
        """Wait until at most ``keep`` packs are still being sealed; re-raise a seal's error."""
        while len(self._sealing) > keep:
            self._sealing.popleft().result()

    def seal(self) -> None:
        """Finish the open pack and wait until every pack written so far is durable and recorded."""
        self._finish()
        self._wait()

    def abort(self) -> None:
        """Drop the open pack (nothing in it was recorded anywhere); packs already handed over complete."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
        self._entries, self._size = [], 0
        while self._sealing:
            fut = self._sealing.popleft()
            if fut.exception() is not None:
                continue  # that pack never became visible; nothing to undo

    def close(self) -> None:
        if self._sealer is not None:
            self._sealer.shutdown(wait=True)


class PackReader:
    """Reads and checks single chunks from sealed packs (thread-safe, bounded fds)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def _fd(self, pack_id: str) -> int:
        with self._lock:
            fd = self._fds.get(pack_id)
            if fd is not None:
                self._fds.move_to_end(pack_id)
                return fd
            try:
                fd = os.open(pack_path(self.root, pack_id), os.O_RDONLY)
            except FileNotFoundError as exc:
                raise PackCorrupt(pack_id=pack_id, detail="pack file is missing") from exc
            self._fds[pack_id] = fd
            while len(self._fds) > OPEN_PACKS:
                _, old = self._fds.popitem(last=False)
                os.close(old)
            return fd

    def read_stored(self, loc: ChunkLocation) -> bytes:
        data = os.pread(self._fd(loc.pack_id), loc.stored_size, loc.offset)
        if len(data) != loc.stored_size:
            raise ChunkCorrupt(chunk_id=loc.chunk_id.hex(), pack_id=loc.pack_id, detail="pack is truncated")
        return data

    def read(self, loc: ChunkLocation) -> bytes:
        """The raw bytes of a chunk, checked against its id."""
        stored = self.read_stored(loc)
        return check_chunk(loc.chunk_id, loc.pack_id, loc.codec, stored, loc.raw_size)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def check_chunk(chunk_id: ChunkId, pack_id: str, codec: int, stored: bytes, raw_size: int) -> bytes:
    """Decode stored bytes and prove they are the chunk they claim to be."""
    try:
        raw = decode(codec, stored, raw_size)
    except (zstandard.ZstdError, ValueError) as exc:
        raise ChunkCorrupt(chunk_id=chunk_id.hex(), pack_id=pack_id, detail=f"does not decode: {exc}") from exc
    if len(raw) != raw_size or chunk_id_of(raw) != chunk_id:
        raise ChunkCorrupt(chunk_id=chunk_id.hex(), pack_id=pack_id, detail="content does not match its id")
    return raw
