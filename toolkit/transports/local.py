"""A datastore reachable as a local directory (an NFS mount, a copy, the lab)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import hashlib
import os
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Final

from catalog.assemble import chunk_buffer
from catalog.chunker import FileDigest, iter_offsets, zero_sha256
from catalog.errors import Error
from catalog.store import fsync_dir
from toolkit.transports.base import FileInfo, ReadAt, WriteAt

PARTIAL_SUFFIX = ".toolkit-partial"  # in-progress restores; never a final name
RESTORED_FILE_MODE = 0o644  # then narrowed by the process umask


class UnsafePath(Error):
    template = "refusing path {path!r}: it leaves the destination"
    hint = "the stored path is damaged or hostile; restore with --volume to pick other volumes"
    code = "unsafe_path"


def safe_relpath(path: str) -> PurePosixPath:
    """A relative path with no '..', no root and no empty parts, or UnsafePath."""
    p = PurePosixPath(path)
    if (
        p.is_absolute()
        or not p.parts
        or any(part in ("..", ".", "") for part in p.parts)
        or "\\" in path
        or "\x00" in path
    ):
        raise UnsafePath(path=path)
    return p


def file_data_ranges(path: Path) -> list[tuple[int, int]]:
    """Data regions of a sparse file via SEEK_DATA/SEEK_HOLE; the whole file where that is unsupported."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return fd_data_ranges(fd)
    finally:
        os.close(fd)


def fd_data_ranges(fd: int) -> list[tuple[int, int]]:
    """:func:`file_data_ranges` of an open file."""
    size = os.fstat(fd).st_size
    ranges: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from here to the end
                break
            return [(0, size)]  # the file system cannot tell: treat everything as data
        end = os.lseek(fd, start, os.SEEK_HOLE)
        ranges.append((start, min(end, size)))
        pos = end
    return ranges


def in_hole(ranges: list[tuple[int, int]], offset: int, length: int) -> bool:
    """True when [offset, offset+length) overlaps no data region (ranges sorted, non-overlapping)."""
    end = offset + length
    lo, hi = 0, len(ranges)
    while lo < hi:  # first region ending after offset
        mid = (lo + hi) // 2
        if ranges[mid][1] <= offset:
            lo = mid + 1
        else:
            hi = mid
    return lo == len(ranges) or ranges[lo][0] >= end


DIRECT_IO_ALIGN: Final = 4096  # offsets and lengths O_DIRECT accepts on 512-byte and 4 KiB sector devices alike
DIGEST_WORKERS: Final = 2  # SHA-256 releases the GIL: one thread per core of the machines we run on


def open_direct(path: Path) -> int:
    """A second descriptor of ``path`` that bypasses the page cache (O_DIRECT); -1 where the file system refuses."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return -1
    try:
        return os.open(path, os.O_RDWR | flag | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return -1
        raise


@functools.cache
def _fallocate() -> Callable[[int, int, int, int], int] | None:
    """libc's fallocate(2) (os has only posix_fallocate, which writes zeros where fallocate is missing)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


class BlockFile:
    """A file being restored: whole chunks written at their offsets, from any thread, then read back on demand.

    A write whose offset and length are multiples of DIRECT_IO_ALIGN (every chunk but a short
    last one; the buffers of ``catalog.assemble.chunk_buffer`` are page-aligned) goes through an
    O_DIRECT descriptor: the bytes are handed to the storage from the caller's buffer, with no
    copy into the page cache (that copy into freshly allocated pages cost more CPU than decoding
    the chunk). Everything else, and every write on a file system without O_DIRECT, goes
    through the page cache. Reading back (:meth:`read_digest`) uses the same descriptor, so
    after :meth:`sync` it returns what the storage holds, not what the page cache kept.
    """

    def __init__(self, fd: int, direct_fd: int = -1) -> None:
        self._fd = fd
        self._direct = direct_fd
        self._lock = threading.Lock()
        self._accepted = 0
        self._direct_writes = direct_fd >= 0  # off after the first write direct I/O refuses

    @property
    def direct(self) -> bool:
        """True when aligned writes (and reads back) bypass the page cache."""
        return self._direct >= 0

    @property
    def bytes_accepted(self) -> int:
        """How many bytes the file system has taken so far, counted from what each write returned."""
        with self._lock:
            return self._accepted

    def write_block(self, offset: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``offset`` completely, or raise (thread-safe; ``data`` is not kept)."""
        view = memoryview(data)
        aligned = offset % DIRECT_IO_ALIGN == 0 and len(view) % DIRECT_IO_ALIGN == 0
        fd = self._direct if self._direct_writes and aligned else self._fd
        while view:
            try:
                n = os.pwrite(fd, view, offset)
            except OSError as exc:
                if fd == self._fd or exc.errno != errno.EINVAL:
                    raise
                fd = self._fd  # direct I/O refused (the file system, or this buffer): through the page cache
                self._direct_writes = False
                continue
            with self._lock:
                self._accepted += n
            view, offset = view[n:], offset + n
            if n % DIRECT_IO_ALIGN:
                fd = self._fd  # the rest of a short write is no longer aligned

    def reserve(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Allocate the (offset, length) ranges about to be written; everything else stays a hole.

        With the blocks allocated beforehand, direct writes into one file no longer wait for each
        other (a write that allocates holds the file's lock while the disk works), so several go
        to the disk at once; a full disk also shows before any byte is written. Skipped where the
        file system cannot allocate without writing (no ``fallocate``).
        """
        allocate = _fallocate()
        if allocate is None:
            return
        for offset, length in ranges:
            if allocate(self._fd, 0, offset, length) != 0:
                err = ctypes.get_errno()
                if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    return
                raise OSError(err, os.strerror(err))

    def sync(self) -> None:
        """Make every write so far durable (fsync)."""
        os.fsync(self._fd)

    def read_digest(self, chunk_size: int, pool: Executor | None = None, inflight: int = 8) -> str:
        """The file digest (sha256-blocks) of what the file holds; after :meth:`sync`, read from the storage.

        Hole ranges (SEEK_DATA/SEEK_HOLE) count as zero blocks without being read. With ``pool``
        the blocks are read and hashed by its workers, ``inflight`` at a time, each into its own buffer.
        """
        size = os.fstat(self._fd).st_size
        ranges = fd_data_ranges(self._fd)
        digest = FileDigest()
        queue: deque[Future[bytes] | bytes] = deque()
        try:
            for offset, length in iter_offsets(size, chunk_size):
                if in_hole(ranges, offset, length):
                    queue.append(zero_sha256(length))
                elif pool is None:
                    queue.append(self.block_sha256(offset, length, chunk_size))
                else:
                    queue.append(pool.submit(self.block_sha256, offset, length, chunk_size))
                while len(queue) > inflight or (queue and not isinstance(queue[0], Future)):
                    head = queue.popleft()
                    digest.add_block_sha256(head.result() if isinstance(head, Future) else head)
            while queue:
                head = queue.popleft()
                digest.add_block_sha256(head.result() if isinstance(head, Future) else head)
        finally:
            for waiting in queue:  # the descriptors close after this: no read may be left running
                if isinstance(waiting, Future) and not waiting.cancel():
                    waiting.exception()
        return digest.hexdigest()

    def block_sha256(self, offset: int, length: int, chunk_size: int) -> bytes:
        """SHA-256 of ``length`` bytes at ``offset`` as the file holds them (thread-safe)."""
        fd = self._direct if self._direct >= 0 else self._fd
        buf = chunk_buffer(chunk_size)
        want = -(-length // DIRECT_IO_ALIGN) * DIRECT_IO_ALIGN  # direct reads take whole sectors; EOF cuts them
        got = 0
        while got < length:
            try:
                n = os.preadv(fd, [buf[got:want]], offset + got)
            except OSError as exc:
                if fd == self._fd or exc.errno != errno.EINVAL:
                    raise
                fd = self._fd  # direct I/O refused this read: through the page cache
                continue
            if n <= 0:
                raise OSError(errno.EIO, f"{length - got} bytes missing at offset {offset + got}")
            got += n
            if n % DIRECT_IO_ALIGN:
                fd = self._fd  # the rest is no longer aligned
        return hashlib.sha256(buf[:length]).digest()


class DatastoreUnavailable(Error):
    template = "{root} is not a directory (is the datastore mounted?)"
    hint = "mount the datastore or fix its path in the configuration"
    code = "datastore_unavailable"
    exit_code = 1


class LocalTransport:
    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    def _abs(self, path: str) -> Path:
        return self.root.joinpath(*safe_relpath(path).parts)

    def _check_inside(self, path: str, final: Path) -> None:
        existing = final.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.resolve().is_relative_to(self.root.resolve()) or final.is_symlink():
            raise UnsafePath(path=path)

    def walk(self) -> Iterator[FileInfo]:
        if not self.root.is_dir():
            raise DatastoreUnavailable(root=self.root)

        def fail(exc: OSError) -> None:
            raise exc

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=fail):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or name.endswith(PARTIAL_SUFFIX):
                    continue
                full = Path(dirpath) / name
                try:
                    st = full.stat()
                except FileNotFoundError:
                    continue
                if not full.is_file():
                    continue
                yield FileInfo(full.relative_to(self.root).as_posix(), st.st_size, st.st_mtime_ns)

    def stat(self, path: str) -> FileInfo | None:
        try:
            st = self._abs(path).stat()
        except FileNotFoundError:
            return None
        return FileInfo(path, st.st_size, st.st_mtime_ns)

    def data_ranges(self, path: str) -> list[tuple[int, int]]:
        """(start, end) of the regions that hold data; the rest of the file is holes (reads as zeros)."""
        return file_data_ranges(self._abs(path))

    def threaded_digest(self, path: str, chunk_size: int) -> str:
        """The file digest (sha256-blocks) of a file here: blocks hashed by a thread per core, holes not read."""
        fd = os.open(self._abs(path), os.O_RDONLY)
        try:
            with ThreadPoolExecutor(DIGEST_WORKERS, thread_name_prefix="digest") as pool:
                return BlockFile(fd).read_digest(chunk_size, pool)
        finally:
            os.close(fd)

    def read_small(self, path: str, limit: int) -> bytes:
        with self._abs(path).open("rb") as f:
            return f.read(limit)

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[ReadAt]:
        fd = os.open(self._abs(path), os.O_RDONLY)
        try:
            yield lambda offset, size: os.pread(fd, size, offset)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def open_write(self, path: str, size: int, mtime_ns: int) -> Iterator[WriteAt]:
        with self._partial(path, size, mtime_ns) as (fd, _tmp):

            def write_at(offset: int, data: bytes) -> None:
                view = memoryview(data)
                while view:
                    n = os.pwrite(fd, view, offset)
                    view, offset = view[n:], offset + n

            yield write_at
            os.fsync(fd)

    @contextlib.contextmanager
    def open_blocks(self, path: str, size: int, mtime_ns: int) -> Iterator[BlockFile]:
        """Like :meth:`open_write`, for a restore that writes whole chunks from several threads (:class:`BlockFile`).

        The body may :meth:`BlockFile.sync` and read the file back before it is published; only if it
        ends without error is the file fsynced and renamed into place.
        """
        with self._partial(path, size, mtime_ns) as (fd, tmp):
            direct_fd = open_direct(tmp)
            try:
                blocks = BlockFile(fd, direct_fd)
                yield blocks
                blocks.sync()
            finally:
                if direct_fd >= 0:
                    os.close(direct_fd)

    @contextlib.contextmanager
    def _partial(self, path: str, size: int, mtime_ns: int) -> Iterator[tuple[int, Path]]:
        """A new file of ``size`` bytes (all holes) under a temporary name; published when the body ends."""
        final = self._abs(path)
        self.root.mkdir(parents=True, exist_ok=True)
        # A symlink inside the destination must not lead the write (or a new directory) elsewhere.
        self._check_inside(path, final)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._check_inside(path, final)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
        # Restored disks are read by hypervisors (often as another user over NFS): not private like the repository.
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, RESTORED_FILE_MODE)
        try:
            os.ftruncate(fd, size)  # holes stay holes: only non-zero chunks are written
            yield fd, tmp
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
        tmp.replace(final)
        fsync_dir(final.parent)

    def remove(self, path: str) -> None:
        self._abs(path).unlink(missing_ok=True)

    def remove_dir(self, path: str) -> bool:
        folder = self._abs(path)
        try:
            folder.rmdir()
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return False
            raise
        fsync_dir(folder.parent)
        return True

    def clean_partials(self, path: str) -> None:
        """Remove leftovers of an interrupted restore of ``path``."""
        final = self._abs(path)
        if final.parent.is_dir():
            for p in final.parent.glob(f".{final.name}.*{PARTIAL_SUFFIX}"):
                p.unlink(missing_ok=True)
