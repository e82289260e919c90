"""Fixed-size chunking, chunk ids and the whole-file digest.

VMDK flat extents are written in aligned blocks, so fixed-size chunks aligned to
file offsets find every unchanged block again (no content-defined chunking).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from functools import lru_cache
from typing import BinaryIO, Final

import xxhash

from catalog.types import ChunkId

DEFAULT_CHUNK_SIZE: Final = 1 << 20  # 1 MiB: chosen by benchmarks/chunk_size.py (table in docs/format.md)
MIN_CHUNK_SIZE: Final = 64 << 10
MAX_CHUNK_SIZE: Final = 4 << 20


def chunk_id_of(data: bytes | memoryview) -> ChunkId:
    """xxh3-128 of the raw bytes, as 16 big-endian bytes."""
    return ChunkId(xxhash.xxh3_128_digest(data))


@lru_cache(maxsize=8)
def zero_block(size: int) -> bytes:
    return bytes(size)


def is_zero(data: bytes) -> bool:
    """True when every byte is zero (a hole: never stored, restored sparse)."""
    return data == zero_block(len(data))


@lru_cache(maxsize=8)
def zero_sha256(size: int) -> bytes:
    return hashlib.sha256(zero_block(size)).digest()


class FileDigest:
    """The whole-file digest: SHA-256 over the SHA-256 of each chunk-size block.

    Equal to hashing the file in blocks of the repository's chunk size, so a
    host with only Python's hashlib (an ESXi shell) computes the same value.
    """

    name: Final = "sha256-blocks"

    def __init__(self) -> None:
        self._outer = hashlib.sha256()

    def add_block_sha256(self, block_sha256: bytes) -> None:
        self._outer.update(block_sha256)

    def hexdigest(self) -> str:
        return self._outer.hexdigest()


def file_digest_of(stream: BinaryIO, chunk_size: int) -> str:
    """Digest a readable stream the way snapshots do (used by checks and docs)."""
    digest = FileDigest()
    while block := stream.read(chunk_size):
        digest.add_block_sha256(hashlib.sha256(block).digest())
    return digest.hexdigest()


def iter_offsets(size: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each chunk of a file of ``size`` bytes."""
    for offset in range(0, size, chunk_size):
        yield offset, min(chunk_size, size - offset)
