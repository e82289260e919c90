import hashlib
import io

import xxhash
from hypothesis import given
from hypothesis import strategies as st

from catalog.chunker import FileDigest, chunk_id_of, file_digest_of, is_zero, iter_offsets, zero_sha256


def test_chunk_id_is_xxh3_128_big_endian() -> None:
    assert chunk_id_of(b"abc") == xxhash.xxh3_128(b"abc").digest()
    assert len(chunk_id_of(b"")) == 16


def test_zero_detection() -> None:
    assert is_zero(bytes(4096))
    assert not is_zero(bytes(4095) + b"\x01")
    assert is_zero(b"")


def test_offsets_cover_the_file_once() -> None:
    assert list(iter_offsets(10, 4)) == [(0, 4), (4, 4), (8, 2)]
    assert list(iter_offsets(0, 4)) == []
    assert list(iter_offsets(8, 4)) == [(0, 4), (4, 4)]


@given(st.binary(max_size=5000), st.sampled_from([64, 1000, 4096]))
def test_file_digest_is_sha256_of_block_sha256s(data: bytes, block: int) -> None:
    expected = hashlib.sha256(
        b"".join(hashlib.sha256(data[i : i + block]).digest() for i in range(0, len(data), block))
    ).hexdigest()
    assert file_digest_of(io.BytesIO(data), block) == expected


def test_zero_sha256_matches_hashlib() -> None:
    assert zero_sha256(1000) == hashlib.sha256(bytes(1000)).digest()
    d = FileDigest()
    assert d.hexdigest() == hashlib.sha256(b"").hexdigest()
