"""Fault injection around any Transport, after borg's ``ChunkerFailing``.

``Scripted(inner, script)`` satisfies the same :class:`~toolkit.transports.base.Transport`
protocol as ``inner`` and passes every call through, except that each ``read_at`` and each
``write_at`` call consumes one character of ``script``, which decides what that call does.
Calls beyond the end of the script behave like its last character (as in borg), so
``"rrE"`` fails every call from the third on while ``"rrEr"`` fails only the third.

Alphabet (one character per ``read_at``/``write_at`` call)::

    r w .   pass the call through unchanged (the three are synonyms, for readable scripts)
    E       transient I/O error: raise OSError(EIO) without touching the file
    T       timeout: raise TimeoutError("timed out"), as a socket does; the file is not touched
    F       bit flip: a read returns the bytes with one bit inverted; a write stores them so
            (silent corruption in flight)
    S       short: a read returns only the first half of what it asked for although the file
            has more (a truncated reply); a write stores only the first half and returns
            normally (silent loss of bytes)
    D       disk full: a write stores the first half, then raises OSError(ENOSPC), as a
            file system that fills up mid-write does; a read raises OSError(ENOSPC)

Only ``read_at`` and ``write_at`` consume the script; ``walk``, ``stat``, ``read_small``,
``open_read``, ``open_write`` (the opening itself), ``clean_partials`` and ``remove`` always pass
through, and so does any optional capability of ``inner`` (``file_digest``) that it has.
``only`` restricts the script to paths matching a glob (``fnmatch``), so a test can fail
one file of a volume and leave every other file alone. One script is shared by all files
and threads, consumed in the order the calls arrive (a lock serialises the counter).
Every call is recorded in :attr:`Scripted.calls`, so a test can assert that its fault fired.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from toolkit.transports.base import FileInfo, ReadAt, Transport, WriteAt

PASS: Final = frozenset("rw.")
FAULTS: Final = frozenset("ETFSD")
ALPHABET: Final = PASS | FAULTS
INJECTED: Final = "(injected fault)"  # in every injected error's text, so reports can be matched to it


@dataclass(frozen=True, slots=True)
class Call:
    """One scripted call: which verb, which file and range, and the character that decided it."""

    verb: str  # "read" | "write"
    path: str
    offset: int
    size: int
    action: str


def flip_bit(data: bytes) -> bytes:
    """``data`` with the lowest bit of its middle byte inverted (unchanged when empty)."""
    if not data:
        return data
    out = bytearray(data)
    out[len(out) // 2] ^= 0x01
    return bytes(out)


def injected_error(action: str) -> OSError:
    """The exception a fault character raises."""
    if action == "T":
        return TimeoutError("timed out")
    if action == "D":
        return OSError(errno.ENOSPC, f"No space left on device {INJECTED}")
    return OSError(errno.EIO, f"Input/output error {INJECTED}")


class Scripted:
    """A Transport whose ``read_at``/``write_at`` calls follow a fault script (see the module doc)."""

    def __init__(self, inner: Transport, script: str, *, only: str | None = None) -> None:
        if not script:
            raise ValueError("a fault script needs at least one character")
        unknown = set(script) - ALPHABET
        if unknown:
            raise ValueError(f"unsupported fault script character(s): {''.join(sorted(unknown))}")
        self.inner = inner
        self.script = script
        self.only = only
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    # -- the script -------------------------------------------------------

    def _applies(self, path: str) -> bool:
        return self.only is None or fnmatch.fnmatchcase(path, self.only)

    def _next(self, verb: str, path: str, offset: int, size: int) -> str:
        with self._lock:
            n = len(self.calls)
            action = self.script[min(n, len(self.script) - 1)]
            self.calls.append(Call(verb, path, offset, size, action))
        return action

    @property
    def faults_fired(self) -> list[Call]:
        """The calls a fault character decided."""
        with self._lock:
            return [c for c in self.calls if c.action in FAULTS]

    # -- Transport --------------------------------------------------------

    def describe(self) -> str:
        return self.inner.describe()

    def walk(self) -> Iterator[FileInfo]:
        return self.inner.walk()

    def stat(self, path: str) -> FileInfo | None:
        return self.inner.stat(path)

    def read_small(self, path: str, limit: int) -> bytes:
        return self.inner.read_small(path, limit)

    def clean_partials(self, path: str) -> None:
        self.inner.clean_partials(path)

    def remove(self, path: str) -> None:
        self.inner.remove(path)

    def remove_dir(self, path: str) -> bool:
        return self.inner.remove_dir(path)

    def __getattr__(self, name: str) -> Any:
        # Optional capabilities (``file_digest``) exist on the wrapper exactly when ``inner`` has them.
        if name.startswith("_") or name in ("inner", "script", "only", "calls"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[ReadAt]:
        with self.inner.open_read(path) as read_at:
            if not self._applies(path):
                yield read_at
                return

            def scripted_read(offset: int, size: int) -> bytes:
                action = self._next("read", path, offset, size)
                if action in PASS:
                    return read_at(offset, size)
                if action in "ETD":
                    raise injected_error(action)
                data = read_at(offset, size)
                if action == "F":
                    return flip_bit(data)
                return data[: len(data) // 2]  # "S"

            yield scripted_read

    @contextlib.contextmanager
    def open_write(self, path: str, size: int, mtime_ns: int) -> Iterator[WriteAt]:
        with self.inner.open_write(path, size, mtime_ns) as write_at:
            if not self._applies(path):
                yield write_at
                return

            def scripted_write(offset: int, data: bytes) -> None:
                action = self._next("write", path, offset, len(data))
                if action in PASS:
                    write_at(offset, data)
                elif action in "ET":
                    raise injected_error(action)
                elif action == "F":
                    write_at(offset, flip_bit(data))
                elif action == "S":
                    write_at(offset, bytes(data[: len(data) // 2]))
                else:  # "D": the file system fills up part way through this write
                    write_at(offset, bytes(data[: len(data) // 2]))
                    raise injected_error(action)

            yield scripted_write


__all__ = ["ALPHABET", "FAULTS", "INJECTED", "PASS", "Call", "Scripted", "flip_bit", "injected_error"]
