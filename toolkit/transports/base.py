"""The Transport protocol every datastore access method satisfies.

Contract (every transport passes the same conformance suite):

- Paths are datastore-relative, "/"-separated, and never contain ".." or a
  leading "/" (``toolkit.transports.local.safe_relpath`` checks them).
- ``open_read`` yields ``read_at(offset, size)``; it may be called from several
  threads at once, usually with increasing offsets (a snapshot reads a file
  front to back with a few chunks in flight). It returns fewer bytes only at
  end of file.
- ``open_write`` yields ``write_at(offset, data)``, called from one thread with
  strictly increasing offsets. Gaps between writes are holes (zeros): a
  transport that can seek leaves them sparse, one that streams fills them.
  The file becomes visible under its final name only if the block ends
  without an exception (a temporary name, then a rename); on an exception
  nothing is left behind. The final size is ``size`` and the mtime ``mtime_ns``.
- ``clean_partials`` removes temporary files an interrupted write left beside
  ``path``; ``remove`` deletes a file (a missing one is not an error).
- A transport may also offer ``file_digest(path, chunk_size)``: the file digest
  computed where the file is (an SSH host), so checking what landed does not
  read it back over the network.
"""

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

    def clean_partials(self, path: str) -> None: ...

    def remove(self, path: str) -> None:
        """Delete a file (restore removes one whose landed content does not match); missing is fine."""
        ...

    def remove_dir(self, path: str) -> bool:
        """Delete a folder only if it is empty; True when it is gone (missing is fine), False when it holds files."""
        ...
