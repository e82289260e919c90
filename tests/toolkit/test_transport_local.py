"""LocalTransport passes the transport conformance suite."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from catalog.chunker import file_digest_of
from toolkit.transports.local import LocalTransport

from .transport_suite import Datastore, TransportFactory, TransportSuite


class TestLocalTransport(TransportSuite):
    @pytest.fixture
    def transport_factory(self, tmp_path: Path) -> TransportFactory:
        root = tmp_path / "datastore1"
        root.mkdir()
        return lambda: Datastore(LocalTransport(root), root)


@pytest.mark.parametrize("size", [0, 5 * 4096, 3 * 65536, 7 * 65536 + 123])
def test_threaded_digest_is_the_file_digest_holes_and_short_tail_included(tmp_path: Path, size: int) -> None:
    chunk = 65536
    path = tmp_path / "v-flat.vmdk"
    with path.open("wb") as f:
        f.truncate(size)
        for offset in range(0, size, 2 * chunk):  # data in every other chunk, holes between
            f.seek(offset)
            f.write(os.urandom(min(1000, size - offset)))
    expected = file_digest_of(io.BytesIO(path.read_bytes()), chunk)
    assert LocalTransport(tmp_path).threaded_digest("v-flat.vmdk", chunk) == expected
    if size:
        with path.open("r+b") as f:
            f.seek(size - 1)
            f.write(b"\x01")
        assert LocalTransport(tmp_path).threaded_digest("v-flat.vmdk", chunk) != expected
