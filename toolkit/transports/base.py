"""The Transport protocol every datastore access method satisfies."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

ReadAt = Callable[[int, int], bytes]
WriteAt = Callable[[int, bytes], None]


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str  # relative to the datastore root, "/"-separated
    size: int
    mtime_ns: int


class Transport(Protocol):
    """Reads (snapshot) and writes (restore) files below one datastore root."""

    def describe(self) -> str: ...

    def walk(self) -> Iterator[FileInfo]: ...

    def stat(self, path: str) -> FileInfo | None: ...

    def read_small(self, path: str, limit: int) -> bytes: ...

    def open_read(self, path: str) -> contextlib.AbstractContextManager[ReadAt]: ...

    def open_write(self, path: str, size: int, mtime_ns: int) -> contextlib.AbstractContextManager[WriteAt]:
        """Write a file that becomes visible under ``path`` only when the block ends without error."""
        ...
