"""Pack file codec: pure functions, no I/O.

A pack is a header, a run of self-describing records and a trailer index::

    header   16 B   magic "ASTKPACK", version u16, flags u16, reserved u32
    record   64 B   magic "CHNK", type u8, codec u8, reserved u16, raw_size u32,
                    stored_size u32, chunk_id 16 B, sha256 32 B
             N B    stored bytes
    ...
    index    68 B per record: type u8, codec u8, reserved u16, raw_size u32,
                    stored_size u32, offset u64, chunk_id 16 B, sha256 32 B
    footer   24 B   index_offset u64, count u32, reserved u32, magic "ASTKEND1"

All integers are little-endian. ``offset`` is where the record's stored bytes
begin. The pack's name is the xxh3-128 (hex) of the whole file. See docs/format.md.

The codec is the same in an encrypted repository: there the stored bytes are
ciphertext, the chunk id is keyed and the sha256 field sealed (docs/format.md §11,
:mod:`catalog.crypto`); nothing here needs the key.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Final

from catalog.errors import PackCorrupt
from catalog.types import ChunkId, PackEntry

PACK_MAGIC: Final = b"ASTKPACK"
PACK_VERSION: Final = 1
FOOTER_MAGIC: Final = b"ASTKEND1"
RECORD_MAGIC: Final = b"CHNK"

HEADER: Final = struct.Struct("<8sHHI")
RECORD: Final = struct.Struct("<4sBBHII16s32s")
INDEX_ENTRY: Final = struct.Struct("<BBHIIQ16s32s")
FOOTER: Final = struct.Struct("<QII8s")

HEADER_SIZE: Final = HEADER.size
RECORD_HEADER_SIZE: Final = RECORD.size
FOOTER_SIZE: Final = FOOTER.size


def encode_header() -> bytes:
    return HEADER.pack(PACK_MAGIC, PACK_VERSION, 0, 0)


def encode_record_header(entry: PackEntry) -> bytes:
    return RECORD.pack(
        RECORD_MAGIC,
        entry.type,
        entry.codec,
        0,
        entry.raw_size,
        entry.stored_size,
        entry.chunk_id,
        entry.sha256,
    )


def encode_trailer(entries: Iterable[PackEntry], index_offset: int) -> bytes:
    parts = [
        INDEX_ENTRY.pack(e.type, e.codec, 0, e.raw_size, e.stored_size, e.offset, e.chunk_id, e.sha256) for e in entries
    ]
    return b"".join(parts) + FOOTER.pack(index_offset, len(parts), 0, FOOTER_MAGIC)


def encode_pack(records: Iterable[tuple[PackEntry, bytes]]) -> bytes:
    """A whole pack in memory (tests and small tools; the store streams instead)."""
    out = bytearray(encode_header())
    entries = []
    for entry, stored in records:
        placed = PackEntry(
            entry.chunk_id,
            entry.type,
            entry.codec,
            entry.raw_size,
            len(stored),
            len(out) + RECORD_HEADER_SIZE,
            entry.sha256,
        )
        out += encode_record_header(placed)
        out += stored
        entries.append(placed)
    out += encode_trailer(entries, len(out))
    return bytes(out)


def check_header(pack_id: str, head: bytes) -> None:
    if len(head) < HEADER_SIZE:
        raise PackCorrupt(pack_id=pack_id, detail="shorter than its header")
    magic, version, _flags, _reserved = HEADER.unpack_from(head)
    if magic != PACK_MAGIC:
        raise PackCorrupt(pack_id=pack_id, detail="bad magic (not a pack)")
    if version != PACK_VERSION:
        raise PackCorrupt(pack_id=pack_id, detail=f"unknown pack version {version}")


def parse_footer(pack_id: str, footer: bytes, file_size: int) -> tuple[int, int]:
    """(index_offset, count) from the last FOOTER_SIZE bytes of a pack."""
    if len(footer) != FOOTER_SIZE:
        raise PackCorrupt(pack_id=pack_id, detail="truncated (no footer)")
    index_offset, count, _reserved, magic = FOOTER.unpack(footer)
    if magic != FOOTER_MAGIC:
        raise PackCorrupt(pack_id=pack_id, detail="truncated or torn (footer magic missing)")
    if index_offset + count * INDEX_ENTRY.size + FOOTER_SIZE != file_size or index_offset < HEADER_SIZE:
        raise PackCorrupt(pack_id=pack_id, detail="footer does not match the file size")
    return index_offset, count


def parse_index(pack_id: str, index: bytes, index_offset: int) -> list[PackEntry]:
    entries = []
    for fields in INDEX_ENTRY.iter_unpack(index):
        type_, codec, _res, raw_size, stored_size, offset, chunk_id, sha = fields
        if offset + stored_size > index_offset:
            raise PackCorrupt(pack_id=pack_id, detail="index points past the records")
        entries.append(PackEntry(ChunkId(chunk_id), type_, codec, raw_size, stored_size, offset, sha))
    return entries


def parse_pack(pack_id: str, buf: bytes) -> list[PackEntry]:
    """Entries of a whole pack held in memory, from its trailer index."""
    check_header(pack_id, buf[:HEADER_SIZE])
    index_offset, _count = parse_footer(pack_id, buf[-FOOTER_SIZE:], len(buf))
    return parse_index(pack_id, buf[index_offset : len(buf) - FOOTER_SIZE], index_offset)


def scan_records(pack_id: str, buf: bytes) -> Iterator[PackEntry]:
    """Walk the records from the front without the trailer (salvage of a torn pack).

    Stops at the first record header that does not parse.
    """
    pos = HEADER_SIZE
    while pos + RECORD_HEADER_SIZE <= len(buf):
        magic, type_, codec, _res, raw_size, stored_size, chunk_id, sha = RECORD.unpack_from(buf, pos)
        if magic != RECORD_MAGIC:
            return
        data_at = pos + RECORD_HEADER_SIZE
        if data_at + stored_size > len(buf):
            return
        yield PackEntry(ChunkId(chunk_id), type_, codec, raw_size, stored_size, data_at, sha)
        pos = data_at + stored_size
