"""Manifests: the ordered chunk ids of one stored file.

Layout (little-endian): magic "ASTKMFST" 8 B, version u16, reserved u16,
chunk_size u32, file_size u64, count u32, reserved u32, then ``count`` chunk
ids of 16 bytes. An id of 16 zero bytes is a hole (an all-zero chunk).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from catalog.errors import Error
from catalog.types import CHUNK_ID_BYTES, HOLE_ID, ChunkId

MAGIC: Final = b"ASTKMFST"
VERSION: Final = 1
HEAD: Final = struct.Struct("<8sHHIQII")


class ManifestCorrupt(Error):
    template = "manifest {manifest_id} is damaged: {detail}"
    hint = "run: toolkit verify --read-data"
    code = "manifest_corrupt"
    exit_code = 1


@dataclass(frozen=True, slots=True)
class Manifest:
    chunk_size: int
    file_size: int
    chunk_ids: tuple[ChunkId, ...]

    def entries(self) -> Iterator[tuple[int, int, ChunkId]]:
        """(offset, length, chunk_id) for each chunk, holes included."""
        for i, cid in enumerate(self.chunk_ids):
            offset = i * self.chunk_size
            yield offset, min(self.chunk_size, self.file_size - offset), cid

    @property
    def hole_count(self) -> int:
        return sum(1 for c in self.chunk_ids if c == HOLE_ID)


def encode_manifest(chunk_size: int, file_size: int, chunk_ids: Sequence[bytes]) -> bytes:
    return HEAD.pack(MAGIC, VERSION, 0, chunk_size, file_size, len(chunk_ids), 0) + b"".join(chunk_ids)


def decode_manifest(manifest_id: str, blob: bytes) -> Manifest:
    if len(blob) < HEAD.size:
        raise ManifestCorrupt(manifest_id=manifest_id, detail="too short")
    magic, version, _r, chunk_size, file_size, count, _r2 = HEAD.unpack_from(blob)
    if magic != MAGIC or version != VERSION:
        raise ManifestCorrupt(manifest_id=manifest_id, detail="bad magic or version")
    if len(blob) != HEAD.size + count * CHUNK_ID_BYTES or chunk_size <= 0:
        raise ManifestCorrupt(manifest_id=manifest_id, detail="length does not match its chunk count")
    if count != -(-file_size // chunk_size):
        raise ManifestCorrupt(manifest_id=manifest_id, detail="chunk count does not match the file size")
    ids = tuple(
        ChunkId(blob[HEAD.size + i * CHUNK_ID_BYTES : HEAD.size + (i + 1) * CHUNK_ID_BYTES]) for i in range(count)
    )
    return Manifest(chunk_size, file_size, ids)
