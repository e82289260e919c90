"""Commands run on an ESXi host over SSH: pure command builders plus a small protocol client.

The host helper (``esxi_helper.py``) hashes a flat file on the host, so only
blocks the repository lacks cross the network, and all-zero blocks never do.
ESXi hosts carry Python 3.5-3.8 with the standard library only, and 8.x runs
only installed binaries: the helper is passed to the host's own Python with
``-I -c``, nothing is copied or installed.
"""

from __future__ import annotations

import shlex
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Final, Protocol

from catalog.errors import Error

PYTHONS: Final = ("/bin/python", "/usr/bin/python3", "/usr/bin/python", "python3")  # ESXi first
HEADER: Final = struct.Struct(">8sQII")
BLOCK: Final = struct.Struct(">B32s")
REPLY: Final = struct.Struct(">IBI")


class HelperFailed(Error):
    template = "the hashing helper on {host} failed: {detail}"
    hint = "check that the host has Python (/bin/python on ESXi) and that the file is readable"
    code = "helper_failed"
    exit_code = 1


def helper_source() -> str:
    return resources.files("toolkit").joinpath("esxi_helper.py").read_text()


def helper_command(python: str, path: str, chunk_size: int) -> str:
    """The shell command that runs the helper on the host (POSIX quoting; busybox ash accepts it)."""
    return f"{shlex.quote(python)} -I -c {shlex.quote(helper_source())} {shlex.quote(path)} {int(chunk_size)}"


def probe_command(python: str) -> str:
    return f"{shlex.quote(python)} -I -c 'import hashlib, zlib, struct, sys; print(sys.version_info[0])'"


class Channel(Protocol):
    """What the protocol needs from an SSH exec channel (paramiko's Channel has it)."""

    def sendall(self, data: bytes) -> None: ...

    def recv(self, nbytes: int) -> bytes: ...

    def recv_exit_status(self) -> int: ...


@dataclass(frozen=True, slots=True)
class HostBlocks:
    size: int
    chunk_size: int
    sha256s: tuple[bytes | None, ...]  # None: an all-zero block


def _read_exact(chan: Channel, n: int, host: str) -> bytes:
    parts, got = [], 0
    while got < n:
        part = chan.recv(min(n - got, 1 << 20))
        if not part:
            raise HelperFailed(host=host, detail=f"the stream ended early ({got} of {n} bytes)")
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def read_block_hashes(chan: Channel, host: str) -> HostBlocks:
    magic, size, chunk_size, count = HEADER.unpack(_read_exact(chan, HEADER.size, host))
    if magic != b"ASTKHLP1":
        raise HelperFailed(host=host, detail="it did not answer with the expected header (no usable Python?)")
    raw = _read_exact(chan, BLOCK.size * count, host)
    shas = tuple(None if flag == 0 else sha for flag, sha in BLOCK.iter_unpack(raw))
    return HostBlocks(size, chunk_size, shas)


def request_blocks(chan: Channel, indexes: Sequence[int], host: str) -> Iterator[tuple[int, bytes, int]]:
    """Ask for blocks; yields (index, raw bytes, bytes that crossed the wire for it)."""
    import zlib

    chan.sendall(struct.pack(f">I{len(indexes)}I", len(indexes), *indexes))
    for expected in indexes:
        index, codec, length = REPLY.unpack(_read_exact(chan, REPLY.size, host))
        if index != expected:
            raise HelperFailed(host=host, detail=f"block {index} arrived where {expected} was expected")
        payload = _read_exact(chan, length, host)
        yield index, (zlib.decompress(payload) if codec == 1 else payload), REPLY.size + length
    if _read_exact(chan, 8, host) != b"ASTKDONE":
        raise HelperFailed(host=host, detail="no end marker")


HashedFetch = Callable[[Sequence[int]], Iterator[tuple[int, bytes, int]]]
