"""Ids and small values shared by the catalog modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NewType

ChunkId = NewType("ChunkId", bytes)  # 16 bytes: xxh3-128 of the raw chunk bytes
PackId = NewType("PackId", str)  # 32 lowercase hex digits: xxh3-128 of the whole pack file

CHUNK_ID_BYTES: Final = 16
HOLE_ID: Final = ChunkId(bytes(CHUNK_ID_BYTES))  # manifest entry of an all-zero chunk; never stored

# Record types inside packs.
TYPE_DATA: Final = 0  # a chunk of a stored file
TYPE_MANIFEST: Final = 1  # a manifest: the ordered chunk ids of one stored file

# Codecs of stored record bytes.
CODEC_RAW: Final = 0
CODEC_ZSTD: Final = 1


@dataclass(frozen=True, slots=True)
class PackEntry:
    """One record of a pack, as its trailer index describes it."""

    chunk_id: ChunkId
    type: int
    codec: int
    raw_size: int
    stored_size: int
    offset: int  # offset of the record's stored bytes inside the pack file
    sha256: bytes  # SHA-256 of the raw bytes (the building block of the file digest)


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    """Where the catalog says a chunk is stored."""

    chunk_id: ChunkId
    pack_id: PackId
    offset: int
    stored_size: int
    raw_size: int
    codec: int
    sha256: bytes


def chunk_hex(chunk_id: bytes) -> str:
    return chunk_id.hex()
