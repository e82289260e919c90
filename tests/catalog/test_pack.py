import hashlib

import pytest

from catalog import pack
from catalog.chunker import chunk_id_of
from catalog.errors import PackCorrupt
from catalog.types import CODEC_RAW, TYPE_DATA, PackEntry


def _entry(data: bytes) -> tuple[PackEntry, bytes]:
    return PackEntry(
        chunk_id_of(data), TYPE_DATA, CODEC_RAW, len(data), len(data), 0, hashlib.sha256(data).digest()
    ), data


def test_round_trip_through_the_trailer_index() -> None:
    chunks = [b"alpha" * 10, b"beta" * 100, b"x"]
    buf = pack.encode_pack(_entry(c) for c in chunks)
    entries = pack.parse_pack("p", buf)
    assert [buf[e.offset : e.offset + e.stored_size] for e in entries] == chunks
    assert [e.chunk_id for e in entries] == [chunk_id_of(c) for c in chunks]


def test_records_are_self_describing_without_the_trailer() -> None:
    chunks = [b"one" * 7, b"two" * 9]
    buf = pack.encode_pack(_entry(c) for c in chunks)
    assert list(pack.scan_records("p", buf)) == pack.parse_pack("p", buf)
    torn = buf[: pack.HEADER_SIZE + pack.RECORD_HEADER_SIZE + 21 + 5]
    salvaged = list(pack.scan_records("p", torn))
    assert [e.chunk_id for e in salvaged] == [chunk_id_of(chunks[0])]


@pytest.mark.parametrize(
    ("mangle", "why"),
    [
        (lambda b: b[:-1], "footer"),
        (lambda b: b"XXXXXXXX" + b[8:], "magic"),
        (lambda b: b[: len(b) // 2], "footer"),
        (lambda b: b[:-24] + b"\0" * 24, "footer"),
    ],
)
def test_damage_is_detected(mangle, why: str) -> None:
    buf = pack.encode_pack(_entry(c) for c in [b"a" * 100, b"b" * 100])
    with pytest.raises(PackCorrupt, match=why):
        pack.parse_pack("p", mangle(buf))


def test_layout_sizes_are_the_documented_ones() -> None:
    assert (pack.HEADER_SIZE, pack.RECORD_HEADER_SIZE, pack.INDEX_ENTRY.size, pack.FOOTER_SIZE) == (
        16,
        64,
        68,
        24,
    )
