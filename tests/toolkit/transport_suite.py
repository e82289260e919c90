"""The conformance suite every transport passes (the contract in toolkit/transports/base.py).

A test module subclasses :class:`TransportSuite` and provides the fixture ``transport_factory``: a
callable that returns a :class:`Datastore`, a transport rooted at a directory that the test can also
reach on the local file system (a local directory, or the lab sshd's datastore directory), so files
are arranged and inspected directly and only the transport under test goes through the transport.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from toolkit.transports.base import FileInfo, Transport
from toolkit.transports.local import PARTIAL_SUFFIX, UnsafePath

MIB = 1 << 20
UNSAFE_PATHS = ("../x", "/abs", "a/../../b", "..", "", "..\\x")


@dataclass(frozen=True)
class Datastore:
    transport: Transport
    path: Path  # the same directory, as the local file system sees it
    mtime_resolution_ns: int = 1  # SFTP version 3 carries whole seconds


TransportFactory = Callable[[], Datastore]


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def truncated(mtime_ns: int, resolution_ns: int) -> int:
    return mtime_ns - mtime_ns % resolution_ns


def put(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def partials(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(PARTIAL_SUFFIX)) if directory.is_dir() else []


def holes_supported(directory: Path) -> bool:
    """Whether the file system under ``directory`` keeps a truncated-up file sparse."""
    probe = directory / ".sparse-probe"
    with probe.open("wb") as f:
        f.truncate(8 * MIB)
    try:
        return probe.stat().st_blocks * 512 < MIB
    finally:
        probe.unlink()


class TransportSuite:
    """Tests every transport passes; subclasses provide the ``transport_factory`` fixture."""

    @pytest.fixture
    def ds(self, transport_factory: TransportFactory) -> Datastore:
        return transport_factory()

    # --- listing ------------------------------------------------------------------------------------

    def test_walk_lists_files_with_size_and_mtime(self, ds: Datastore) -> None:
        put(ds.path, "cloudvolumes/apps/App.vmdk", b"descriptor")
        put(ds.path, "cloudvolumes/apps/App-flat.vmdk", payload(70_000, 1))
        put(ds.path, "top.txt", b"")
        put(ds.path, ".hidden", b"x")
        put(ds.path, ".snapshot/inside.vmdk", b"x")
        put(ds.path, "cloudvolumes/apps/.App.vmdk.0123abcd" + PARTIAL_SUFFIX, b"x")
        put(ds.path, "cloudvolumes/apps/stray" + PARTIAL_SUFFIX, b"x")
        (ds.path / "empty-dir").mkdir()

        found = {info.path: info for info in ds.transport.walk()}

        assert sorted(found) == ["cloudvolumes/apps/App-flat.vmdk", "cloudvolumes/apps/App.vmdk", "top.txt"]
        for rel, info in found.items():
            st = (ds.path / rel).stat()
            assert info == FileInfo(rel, st.st_size, truncated(st.st_mtime_ns, ds.mtime_resolution_ns))

    def test_stat_gives_size_and_mtime_or_none(self, ds: Datastore) -> None:
        local = put(ds.path, "a/b.vmdk", payload(1234, 2))
        os.utime(local, ns=(1_700_000_000_987_654_321, 1_700_000_000_987_654_321))

        info = ds.transport.stat("a/b.vmdk")

        assert info == FileInfo("a/b.vmdk", 1234, truncated(1_700_000_000_987_654_321, ds.mtime_resolution_ns))
        assert ds.transport.stat("a/missing.vmdk") is None
        assert ds.transport.stat("missing-dir/x") is None

    def test_read_small_reads_at_most_the_limit(self, ds: Datastore) -> None:
        data = payload(100_000, 3)
        put(ds.path, "d.vmdk", data)

        assert ds.transport.read_small("d.vmdk", 1024) == data[:1024]
        assert ds.transport.read_small("d.vmdk", 1 << 20) == data
        with pytest.raises(FileNotFoundError):
            ds.transport.read_small("nope.vmdk", 10)

    def test_describe_names_the_root(self, ds: Datastore) -> None:
        assert str(ds.path) in ds.transport.describe()

    # --- reading ------------------------------------------------------------------------------------

    def test_read_at_reads_any_range_and_returns_short_only_at_eof(self, ds: Datastore) -> None:
        size = 3 * MIB + 12_345
        data = payload(size, 4)
        put(ds.path, "f.bin", data)
        ranges = [(0, 1), (0, MIB), (MIB, MIB), (5, 70_000), (MIB - 3, 10), (2 * MIB + 1, MIB + 5000)]
        ranges += [(0, size), (size - 10, 10), (size - 10, 100), (size, 10), (size + MIB, 10), (7, 0)]

        with ds.transport.open_read("f.bin") as read_at:
            for offset, length in ranges:
                assert read_at(offset, length) == data[offset : offset + length], (offset, length)
            for offset, length in reversed(ranges):  # backwards, and everything twice
                assert read_at(offset, length) == data[offset : offset + length], (offset, length)

    def test_read_at_from_two_threads_like_a_snapshot(self, ds: Datastore) -> None:
        size = 24 * MIB + 777
        data = payload(size, 5)
        put(ds.path, "big-flat.vmdk", data)
        chunk = MIB

        with ds.transport.open_read("big-flat.vmdk") as read_at, ThreadPoolExecutor(2) as pool:
            queue: deque[Future[bytes]] = deque()
            got = hashlib.sha256()
            for offset in range(0, size, chunk):
                queue.append(pool.submit(read_at, offset, min(chunk, size - offset)))
                if len(queue) >= 6:  # catalog.ingest keeps this many chunks in flight
                    got.update(queue.popleft().result())
            while queue:
                got.update(queue.popleft().result())

        assert got.hexdigest() == hashlib.sha256(data).hexdigest()

    def test_read_at_from_threads_in_any_order(self, ds: Datastore) -> None:
        size = 6 * MIB + 1
        data = payload(size, 6)
        put(ds.path, "g.bin", data)
        offsets = list(range(0, size, 256 * 1024))
        random.Random(7).shuffle(offsets)

        with ds.transport.open_read("g.bin") as read_at, ThreadPoolExecutor(4) as pool:
            parts = dict(zip(offsets, pool.map(lambda o: read_at(o, 256 * 1024), offsets), strict=True))

        assert b"".join(parts[o] for o in sorted(parts)) == data

    def test_open_read_of_a_missing_file_raises_file_not_found(self, ds: Datastore) -> None:
        with pytest.raises(FileNotFoundError), ds.transport.open_read("missing.bin"):
            pass

    # --- writing ------------------------------------------------------------------------------------

    def test_write_with_holes_gives_bytes_size_and_mtime(self, ds: Datastore) -> None:
        size = 6 * MIB + 100
        mtime_ns = 1_650_000_000_123_456_789
        pieces = {0: payload(MIB, 8), 2 * MIB: payload(MIB, 9), 3 * MIB: payload(1000, 10), 5 * MIB: payload(7, 11)}
        expected = bytearray(size)
        for offset, data in pieces.items():
            expected[offset : offset + len(data)] = data

        with ds.transport.open_write("cloudvolumes/apps/New-flat.vmdk", size, mtime_ns) as write_at:
            for offset, data in pieces.items():
                write_at(offset, data)

        local = ds.path / "cloudvolumes/apps/New-flat.vmdk"
        assert local.read_bytes() == bytes(expected)
        st = local.stat()
        assert st.st_size == size
        assert st.st_mtime_ns == truncated(mtime_ns, ds.mtime_resolution_ns)
        assert ds.transport.stat("cloudvolumes/apps/New-flat.vmdk") == FileInfo(
            "cloudvolumes/apps/New-flat.vmdk", size, truncated(mtime_ns, ds.mtime_resolution_ns)
        )
        if holes_supported(local.parent):
            assert st.st_blocks * 512 <= size - 2 * MIB  # at least the two big gaps stayed holes
        assert partials(local.parent) == []

    def test_write_of_an_empty_and_an_all_hole_file(self, ds: Datastore) -> None:
        with ds.transport.open_write("empty.bin", 0, 1_600_000_000_000_000_000):
            pass
        with ds.transport.open_write("zeros.bin", 3 * MIB, 1_600_000_000_000_000_000):
            pass

        assert (ds.path / "empty.bin").read_bytes() == b""
        assert (ds.path / "zeros.bin").read_bytes() == bytes(3 * MIB)

    def test_the_file_appears_only_when_the_block_ends(self, ds: Datastore) -> None:
        target = ds.path / "apps/Late.vmdk"

        with ds.transport.open_write("apps/Late.vmdk", 10, 1_600_000_000_000_000_000) as write_at:
            write_at(0, b"0123456789")
            assert not target.exists()
            assert len(partials(target.parent)) == 1
            assert partials(target.parent)[0].startswith(".Late.vmdk.")

        assert target.read_bytes() == b"0123456789"
        assert partials(target.parent) == []

    def test_a_failed_write_leaves_nothing_behind(self, ds: Datastore) -> None:
        class Boom(Exception):
            pass

        def write_then_fail() -> None:
            with ds.transport.open_write("apps/Broken.vmdk", 4 * MIB, 0) as write_at:
                write_at(0, payload(MIB, 12))
                write_at(2 * MIB, payload(MIB, 13))
                raise Boom

        with pytest.raises(Boom):
            write_then_fail()

        assert not (ds.path / "apps/Broken.vmdk").exists()
        assert partials(ds.path / "apps") == []
        assert [info.path for info in ds.transport.walk()] == []

    def test_a_failed_write_keeps_the_previous_file(self, ds: Datastore) -> None:
        put(ds.path, "apps/Keep.vmdk", b"old contents")

        def write_then_fail() -> None:
            with ds.transport.open_write("apps/Keep.vmdk", 3, 0) as write_at:
                write_at(0, b"new")
                raise KeyError("stop")

        with pytest.raises(KeyError):
            write_then_fail()

        assert (ds.path / "apps/Keep.vmdk").read_bytes() == b"old contents"
        assert partials(ds.path / "apps") == []

    def test_a_write_replaces_an_existing_file(self, ds: Datastore) -> None:
        put(ds.path, "apps/Over.vmdk", payload(5000, 14))

        with ds.transport.open_write("apps/Over.vmdk", 3, 1_600_000_000_000_000_000) as write_at:
            write_at(0, b"new")

        assert (ds.path / "apps/Over.vmdk").read_bytes() == b"new"

    def test_written_bytes_read_back_through_the_transport(self, ds: Datastore) -> None:
        data = payload(2 * MIB + 3, 15)
        with ds.transport.open_write("rt.bin", len(data), 1_600_000_000_000_000_000) as write_at:
            for offset in range(0, len(data), MIB):
                write_at(offset, data[offset : offset + MIB])

        with ds.transport.open_read("rt.bin") as read_at:
            assert read_at(0, len(data) + 10) == data

    def test_clean_partials_removes_only_leftovers_of_that_file(self, ds: Datastore) -> None:
        apps = ds.path / "apps"
        put(ds.path, "apps/.App.vmdk.0badc0de" + PARTIAL_SUFFIX, b"x")
        put(ds.path, "apps/.App.vmdk.12345678" + PARTIAL_SUFFIX, b"x")
        put(ds.path, "apps/.Other.vmdk.12345678" + PARTIAL_SUFFIX, b"x")
        put(ds.path, "apps/App.vmdk", b"keep")

        ds.transport.clean_partials("apps/App.vmdk")

        assert sorted(p.name for p in apps.iterdir()) == [".Other.vmdk.12345678" + PARTIAL_SUFFIX, "App.vmdk"]
        ds.transport.clean_partials("no-such-dir/App.vmdk")  # nothing to do is fine

    def test_remove_dir_removes_only_an_empty_folder(self, ds: Datastore) -> None:
        put(ds.path, "drill/full/App.vmdk", b"keep")
        (ds.path / "drill" / "empty").mkdir()

        assert ds.transport.remove_dir("drill/empty") is True
        assert ds.transport.remove_dir("drill/full") is False
        assert ds.transport.remove_dir("drill/never-made") is True

        assert sorted(p.name for p in (ds.path / "drill").iterdir()) == ["full"]
        assert (ds.path / "drill/full/App.vmdk").read_bytes() == b"keep"

    # --- paths --------------------------------------------------------------------------------------

    @pytest.mark.parametrize("bad", UNSAFE_PATHS)
    def test_unsafe_paths_are_refused(self, ds: Datastore, bad: str) -> None:
        outside = ds.path.parent / "outside.bin"
        t = ds.transport
        calls: list[Callable[[], object]] = [
            lambda: t.stat(bad),
            lambda: t.read_small(bad, 10),
            lambda: t.clean_partials(bad),
            lambda: t.remove_dir(bad),
        ]
        for call in calls:
            with pytest.raises(UnsafePath):
                call()
        with pytest.raises(UnsafePath), t.open_read(bad):
            pass
        with pytest.raises(UnsafePath), t.open_write(bad, 1, 0) as write_at:
            write_at(0, b"x")
        assert not outside.exists()
