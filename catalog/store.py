"""ChunkStore pieces: compression, pack writing and chunk reading. No SQL here.

Packs are written to ``tmp/`` under a temporary name, fsynced, then renamed to
``packs/<ab>/<xxh3-128 of the pack>``; a sealed pack is never modified.

In an encrypted repository a record's stored bytes are the encoded chunk
encrypted (:mod:`catalog.crypto`) and its SHA-256 field is sealed;
:func:`encode_record` makes such records, :class:`PackReader` and
:func:`check_chunk` open and check them. The pack writer never sees plaintext
then: it writes what it is handed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Final

import xxhash
import zstandard

from catalog import pack
from catalog.chunker import chunk_id_of
from catalog.errors import ChunkCorrupt, PackCorrupt, StoreFull
from catalog.types import CODEC_RAW, CODEC_ZSTD, TYPE_DATA, ChunkId, ChunkLocation, PackEntry, PackId

if TYPE_CHECKING:
    from catalog.crypto import RepoKeys

DEFAULT_ZSTD_LEVEL: Final = 2  # chosen by benchmarks/chunk_size.py (docs/benchmarks.md): 18 % less CPU than 3
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


def decode_into(codec: int, stored: memoryview, raw_size: int, out: memoryview) -> memoryview:
    """Decode into ``out`` (at least ``raw_size + 1`` bytes); the decoded view, or ValueError/ZstdError.

    Reusing ``out`` spares a new 1 MiB object per chunk, whose first touch (page faults) costs more
    than the decoding itself. The extra byte proves the frame holds exactly ``raw_size`` bytes.
    """
    if codec == CODEC_RAW:
        if len(stored) != raw_size:
            raise ValueError("raw record size differs from the chunk size")
        out[:raw_size] = stored
        return out[:raw_size]
    if codec != CODEC_ZSTD:
        raise ValueError(f"unknown codec {codec}")
    d: zstandard.ZstdDecompressor | None = getattr(_decompressors, "d", None)
    if d is None:
        d = zstandard.ZstdDecompressor()
        _decompressors.d = d
    room = out[: raw_size + 1]
    got = 0
    with d.stream_reader(stored, closefd=False) as reader:
        while got < len(room):
            n = reader.readinto(room[got:])
            if not n:
                break
            got += n
    if got != raw_size:
        raise ValueError(f"decodes to {got} bytes, {raw_size} expected")
    return out[:raw_size]


_read_buffers = threading.local()  # one growing read buffer per thread (PackReader.read_into)


def _read_buffer(size: int) -> memoryview:
    buf: bytearray | None = getattr(_read_buffers, "b", None)
    if buf is None or len(buf) < size:
        buf = bytearray(max(size, 1 << 20))
        _read_buffers.b = buf
    return memoryview(buf)[:size]


def identify(keys: RepoKeys | None, raw: bytes | memoryview) -> tuple[ChunkId, bytes | None]:
    """(chunk id, SHA-256 when computing the id needed it) of raw bytes: xxh3-128, or keyed when encrypted."""
    if keys is None:
        return chunk_id_of(raw), None
    return keys.identify(raw)


def encode_record(
    compressor: Compressor, keys: RepoKeys | None, chunk_id: ChunkId, type_: int, raw: bytes
) -> tuple[int, bytes]:
    """(codec, stored bytes) of a new record: compressed, then encrypted in an encrypted repository."""
    codec, stored = compressor.compress(raw)
    if keys is None:
        return codec, stored
    return codec, keys.encrypt_record(chunk_id, type_, codec, len(raw), stored)


def sha256_field(keys: RepoKeys | None, chunk_id: bytes, sha256: bytes) -> bytes:
    """A record's SHA-256 as packs and the catalog store it (sealed in an encrypted repository)."""
    return sha256 if keys is None else keys.seal_sha256(chunk_id, sha256)


def pack_path(root: Path, pack_id: str) -> Path:
    return root / "packs" / pack_id[:2] / pack_id


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def forget_cached_pages(fd: int) -> None:
    """Let the kernel drop a durable file's pages from the page cache (advice; ignored where unsupported).

    A sealed pack is not read again soon (verify is weekly, a restore is rare), so keeping its pages
    only pushes out other files; and once memory is full, each new page a snapshot writes would cost
    a reclaim charged to it. Dropping the pages of each pack as it is sealed lets the next pack reuse
    them. The pages are clean after fsync, so nothing is written twice.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


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
        if _is_disk_full(exc):
            raise StoreFull(path=final) from exc
        raise
    fsync_dir(final.parent)


class PackWriter:
    """Appends records to one open pack at a time; seals it when it is big enough.

    ``on_seal(pack_id, size, entries)`` is called after the pack is durable
    under its final name (the caller records it in the catalog). Sealing (fsync,
    rename, directory fsync, ``on_seal``) runs on a background thread so writing
    goes on meanwhile; at most ``MAX_SEALING`` packs wait for it. :meth:`seal`
    returns only when every pack written so far is sealed.

    A repository kept in an object store passes ``publish(pack_id, path)``: it
    uploads each pack once it is durable here and before ``on_seal`` indexes it,
    ``sealers`` packs at a time (each waiting pack is a file, never memory).
    """

    MAX_SEALING: Final = 2

    def __init__(
        self,
        root: Path,
        on_seal: Callable[[PackId, int, list[PackEntry]], None],
        target_bytes: int = DEFAULT_PACK_TARGET_BYTES,
        *,
        background: bool = True,
        publish: Callable[[PackId, Path], None] | None = None,
        sealers: int = 1,
    ) -> None:
        self.root = root
        self.target_bytes = target_bytes
        self.on_seal = on_seal
        self.publish = publish
        self._max_sealing = self.MAX_SEALING + max(1, sealers) - 1
        self._sealed_lock = threading.Lock()
        self._fd = -1
        self._tmp: Path | None = None
        self._hash = xxhash.xxh3_128()
        self._entries: list[PackEntry] = []
        self._size = 0
        self.sealed_bytes = 0
        self._sealer = ThreadPoolExecutor(max(1, sealers), thread_name_prefix="seal") if background else None
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
            self._wait(self._max_sealing)  # also surfaces a failed background seal
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
            try:
                os.fsync(fd)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                if _is_disk_full(exc):
                    raise StoreFull(path=str(tmp)) from exc
                raise
            final = pack_path(self.root, pack_id)
            final.parent.mkdir(mode=0o700, exist_ok=True)
            tmp.replace(final)
            fsync_dir(final.parent)
            if self.publish is not None:
                self.publish(pack_id, final)
            forget_cached_pages(fd)
        finally:
            os.close(fd)
        with self._sealed_lock:
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
    """Reads and checks single chunks from sealed packs (thread-safe, bounded fds).

    With ``keys`` (an encrypted repository) each read takes the record header
    too: its type is part of what the ciphertext authenticates. With ``source``
    (a repository kept in an object store) every read goes through it:
    ``source(pack_id, size, offset)`` answers from the local cache or the store.
    """

    def __init__(
        self, root: Path, keys: RepoKeys | None = None, source: Callable[[str, int, int], bytes] | None = None
    ) -> None:
        self.root = root
        self.keys = keys
        self.source = source
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

    def _pread(self, pack_id: str, size: int, offset: int) -> bytes:
        if self.source is not None:
            return self.source(pack_id, size, offset)
        return os.pread(self._fd(pack_id), size, offset)

    def read_stored(self, loc: ChunkLocation) -> bytes:
        data = self._pread(loc.pack_id, loc.stored_size, loc.offset)
        if len(data) != loc.stored_size:
            raise ChunkCorrupt(chunk_id=loc.chunk_id.hex(), pack_id=loc.pack_id, detail="pack is truncated")
        return data

    def read_into(self, loc: ChunkLocation, out: memoryview) -> memoryview:
        """The raw bytes of a chunk decoded into ``out`` (``raw_size + 1`` bytes or more), checked as by :meth:`read`.

        For a restore: no new objects per chunk (a per-thread read buffer, the caller's output buffer).
        """
        if self.keys is not None or self.source is not None:
            plain = self.read(loc)
            out[: len(plain)] = plain
            return out[: len(plain)]
        direct = loc.codec == CODEC_RAW and loc.stored_size == loc.raw_size  # read straight into ``out``
        stored = out[: loc.raw_size] if direct else _read_buffer(loc.stored_size)
        cid, pid = loc.chunk_id.hex(), loc.pack_id
        if os.preadv(self._fd(pid), [stored], loc.offset) != loc.stored_size:
            raise ChunkCorrupt(chunk_id=cid, pack_id=pid, detail="pack is truncated")
        try:
            raw = stored if direct else decode_into(loc.codec, stored, loc.raw_size, out)
        except (zstandard.ZstdError, ValueError) as exc:
            raise ChunkCorrupt(chunk_id=cid, pack_id=pid, detail=f"does not decode: {exc}") from exc
        if chunk_id_of(raw) != loc.chunk_id:
            raise ChunkCorrupt(chunk_id=cid, pack_id=pid, detail="content does not match its id")
        return raw

    def read(self, loc: ChunkLocation) -> bytes:
        """The raw bytes of a chunk, checked against its id."""
        if self.keys is None:
            stored = self.read_stored(loc)
            return check_chunk(loc.chunk_id, loc.pack_id, loc.codec, stored, loc.raw_size)
        start = loc.offset - pack.RECORD_HEADER_SIZE
        data = self._pread(loc.pack_id, pack.RECORD_HEADER_SIZE + loc.stored_size, start)
        if start < pack.HEADER_SIZE or len(data) != pack.RECORD_HEADER_SIZE + loc.stored_size:
            raise ChunkCorrupt(chunk_id=loc.chunk_id.hex(), pack_id=loc.pack_id, detail="pack is truncated")
        magic, type_, codec, _res, raw_size, stored_size, chunk_id, sha_field = pack.RECORD.unpack_from(data)
        expected = (
            loc.chunk_id,
            loc.codec,
            loc.raw_size,
            loc.stored_size,
            self.keys.seal_sha256(loc.chunk_id, loc.sha256),
        )
        if magic != pack.RECORD_MAGIC or (chunk_id, codec, raw_size, stored_size, sha_field) != expected:
            raise ChunkCorrupt(
                chunk_id=loc.chunk_id.hex(), pack_id=loc.pack_id, detail="record header does not match the catalog"
            )
        record = memoryview(data)[pack.RECORD_HEADER_SIZE :]
        # The tag proves the record is the one stored under this id with this key; the restore checks the
        # content end to end by the file digest, so the id is not recomputed here (verify --read-data does).
        return check_chunk(
            loc.chunk_id, loc.pack_id, codec, record, raw_size, keys=self.keys, type_=type_, prove_id=False
        )

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def check_chunk(
    chunk_id: ChunkId,
    pack_id: str,
    codec: int,
    stored: bytes | memoryview,
    raw_size: int,
    *,
    keys: RepoKeys | None = None,
    type_: int = TYPE_DATA,
    sha_field: bytes | None = None,
    prove_id: bool = True,
) -> bytes:
    """Decode stored bytes and prove they are the chunk they claim to be.

    In an encrypted repository (``keys``) the record is first authenticated and
    decrypted with its ``type_``: the tag proves it is what a holder of the key
    stored under this chunk id. With ``prove_id`` the id is also recomputed from
    the content, and ``sha_field`` (the record's sealed SHA-256, when given) must
    match it too.
    """
    from catalog.crypto import Unauthentic

    if keys is not None:
        try:
            stored = keys.decrypt_record(chunk_id, type_, codec, raw_size, stored)
        except Unauthentic as exc:
            raise ChunkCorrupt(chunk_id=chunk_id.hex(), pack_id=pack_id, detail=f"does not decrypt: {exc}") from None
    elif isinstance(stored, memoryview):
        stored = stored.tobytes()
    try:
        raw = decode(codec, stored, raw_size)
    except (zstandard.ZstdError, ValueError) as exc:
        raise ChunkCorrupt(chunk_id=chunk_id.hex(), pack_id=pack_id, detail=f"does not decode: {exc}") from exc
    if len(raw) != raw_size:
        raise ChunkCorrupt(chunk_id=chunk_id.hex(), pack_id=pack_id, detail="content does not match its id")
    if keys is None:
        if chunk_id_of(raw) != chunk_id:
            raise ChunkCorrupt(chunk_id=chunk_id.hex(), pack_id=pack_id, detail="content does not match its id")
        return raw
    if not prove_id:
        return raw
    sha = hashlib.sha256(raw).digest()
    if keys.chunk_id(sha) != chunk_id:
        raise ChunkCorrupt(chunk_id=chunk_id.hex(), pack_id=pack_id, detail="content does not match its id")
    if sha_field is not None and keys.seal_sha256(chunk_id, sha) != sha_field:
        raise ChunkCorrupt(chunk_id=chunk_id.hex(), pack_id=pack_id, detail="SHA-256 field does not match the content")
    return raw
