"""A datastore reachable as a local directory (an NFS mount, a copy, the lab)."""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

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
    finally:
        os.close(fd)


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
        final = self._abs(path)
        self.root.mkdir(parents=True, exist_ok=True)
        # A symlink inside the destination must not lead the write (or a new directory) elsewhere.
        self._check_inside(path, final)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._check_inside(path, final)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
        # Restored disks are read by hypervisors (often as another user over NFS): not private like the repository.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, RESTORED_FILE_MODE)
        try:
            os.ftruncate(fd, size)  # holes stay holes: only non-zero chunks are written

            def write_at(offset: int, data: bytes) -> None:
                view = memoryview(data)
                while view:
                    n = os.pwrite(fd, view, offset)
                    view, offset = view[n:], offset + n

            yield write_at
            os.fsync(fd)
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

    def clean_partials(self, path: str) -> None:
        """Remove leftovers of an interrupted restore of ``path``."""
        final = self._abs(path)
        if final.parent.is_dir():
            for p in final.parent.glob(f".{final.name}.*{PARTIAL_SUFFIX}"):
                p.unlink(missing_ok=True)
