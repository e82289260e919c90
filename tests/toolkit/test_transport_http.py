"""DatastoreHttpTransport against a real vcsim: listing, ranged and streamed reads, uploads, faults, end to end."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from catalog.repo import Repository, now_iso
from toolkit.lab.corpus import make_volume
from toolkit.lab.vcsim import VcsimServer
from toolkit.ops.restore import restore
from toolkit.ops.snapshot import Source, snapshot
from toolkit.transports.base import FileInfo, Transport
from toolkit.transports.datastore_http import (
    PARTIAL_SUFFIX,
    DatastoreHttpMissing,
    DatastoreHttpTransport,
    DatastoreReadFailed,
    DatastoreUploadFailed,
    DatastoreVsanWrite,
    DatastoreWriteOrder,
    parse_content_range,
)
from toolkit.transports.local import UnsafePath
from toolkit.vsphere import PyvmomiClient, VsphereConfig, connect

from .transport_suite import Datastore, TransportFactory, TransportSuite, partials, payload, truncated

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]

MIB = 1 << 20
FAST_BACKOFF = (0.01, 0.02, 0.05)  # the relay drops on purpose; no need to wait as for a real network
READ_MODES = pytest.mark.parametrize("read_ahead", [0, 16 * MIB], ids=["ranged", "streaming"])


@pytest.fixture
def client(vcsim_server: VcsimServer) -> Iterator[PyvmomiClient]:
    with connect(VsphereConfig(vcsim_server.url, vcsim_server.user, vcsim_server.password)) as c:
        yield c


@pytest.fixture
def ds1(vcsim_server: VcsimServer) -> Path:
    return vcsim_server.datastores["ds1"]


def _random_file(path: Path, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def _leftovers(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(f"*{PARTIAL_SUFFIX}"))


def _us(ns: int) -> int:
    return ns // 1000 * 1000


def test_it_is_a_transport(client: PyvmomiClient) -> None:
    transport: Transport = DatastoreHttpTransport(client, "ds1")
    text = transport.describe()
    assert "datastore ds1 via 127.0.0.1:" in text
    assert "vmware_soap_session" not in text and client.session_cookie().split("=", 1)[1] not in text


def test_content_range_is_parsed() -> None:
    assert parse_content_range("bytes 0-99/1000") == (0, 99, 1000)
    assert parse_content_range("bytes 5-9/*") == (5, 9, None)
    with pytest.raises(ValueError):
        parse_content_range("items 0-1/2")


# -- the shared conformance suite ---------------------------------------------------------------------------


class HttpSuite(TransportSuite):
    """The suite, with the one test whose contract datastore HTTP cannot meet replaced by what it does."""

    def test_write_with_holes_gives_bytes_size_and_mtime(self, ds: Datastore) -> None:
        """Holes arrive as zeros (the body of a PUT is a stream) and the mtime is the upload's (nothing sets it)."""
        size = 6 * MIB + 100
        pieces = {0: payload(MIB, 8), 2 * MIB: payload(MIB, 9), 3 * MIB: payload(1000, 10), 5 * MIB: payload(7, 11)}
        expected = bytearray(size)
        for offset, data in pieces.items():
            expected[offset : offset + len(data)] = data
        started_ns = time.time_ns()

        with ds.transport.open_write("cloudvolumes/apps/New-flat.vmdk", size, 1_650_000_000_123_456_789) as write_at:
            for offset, data in pieces.items():
                write_at(offset, data)

        local = ds.path / "cloudvolumes/apps/New-flat.vmdk"
        assert local.read_bytes() == bytes(expected)
        st = local.stat()
        assert st.st_size == size
        assert started_ns - 2 * 10**9 <= st.st_mtime_ns <= time.time_ns() + 2 * 10**9
        assert ds.transport.stat("cloudvolumes/apps/New-flat.vmdk") == FileInfo(
            "cloudvolumes/apps/New-flat.vmdk", size, truncated(st.st_mtime_ns, ds.mtime_resolution_ns)
        )
        assert partials(local.parent) == []


class TestDatastoreHttpTransport(HttpSuite):
    @pytest.fixture
    def transport_factory(self, client: PyvmomiClient, ds1: Path) -> TransportFactory:
        return lambda: Datastore(DatastoreHttpTransport(client, "ds1"), ds1, 1000)


class TestRangedReads(HttpSuite):
    """The suite again with one ranged GET per read_at and no stream."""

    @pytest.fixture
    def transport_factory(self, client: PyvmomiClient, ds1: Path) -> TransportFactory:
        return lambda: Datastore(DatastoreHttpTransport(client, "ds1", read_ahead_bytes=0), ds1, 1000)


# -- listing ------------------------------------------------------------------------------------------


def test_walk_and_stat_agree_with_the_backing_directory(client: PyvmomiClient, ds1: Path) -> None:
    vol = make_volume(ds1, "cloudvolumes/apps/Visio.vmdk", size_mib=8, seed=5, real=False)
    (ds1 / "cloudvolumes/apps/.Visio.vmdk.0badc0de.toolkit-partial").write_bytes(b"x")
    (ds1 / ".hidden").mkdir()
    (ds1 / ".hidden/file").write_bytes(b"x")
    transport = DatastoreHttpTransport(client, "ds1")

    walked = {f.path: f for f in transport.walk()}
    assert set(walked) == {p.relative_to(ds1).as_posix() for p in vol.files}
    for path, info in walked.items():
        st = (ds1 / path).stat()
        assert (info.size, info.mtime_ns) == (st.st_size, _us(st.st_mtime_ns))
        assert transport.stat(path) == info  # the same numbers from walk and stat: unchanged files stay unchanged

    assert transport.stat("cloudvolumes/apps/Nope.vmdk") is None
    assert transport.stat("no/such/folder/file") is None
    assert transport.stat("cloudvolumes") is None  # a folder is not a file
    with pytest.raises(UnsafePath):
        transport.stat("../etc/passwd")


# -- reading ------------------------------------------------------------------------------------------


@READ_MODES
def test_reads_return_the_bytes_and_short_only_at_the_end(client: PyvmomiClient, ds1: Path, read_ahead: int) -> None:
    size = 3 * MIB + 123
    data = _random_file(ds1 / "dir/f.bin", size, seed=1)
    transport = DatastoreHttpTransport(client, "ds1", read_ahead_bytes=read_ahead)

    assert transport.read_small("dir/f.bin", 100) == data[:100]
    assert transport.read_small("dir/f.bin", 10 * MIB) == data
    with transport.open_read("dir/f.bin") as read_at:
        assert read_at(0, MIB) == data[:MIB]
        assert read_at(MIB, MIB) == data[MIB : 2 * MIB]
        assert read_at(3 * MIB, MIB) == data[3 * MIB :]  # the short tail
        assert read_at(size, MIB) == b""
        assert read_at(size + 5 * MIB, MIB) == b""
        assert read_at(17, 1000) == data[17:1017]  # behind the stream
        assert read_at(0, 0) == b""


@READ_MODES
def test_a_missing_file_is_file_not_found(client: PyvmomiClient, read_ahead: int) -> None:
    transport = DatastoreHttpTransport(client, "ds1", read_ahead_bytes=read_ahead)
    with pytest.raises(DatastoreHttpMissing) as caught, transport.open_read("gone.bin"):
        pass
    assert isinstance(caught.value, FileNotFoundError)
    assert caught.value.exit_code == 1
    with pytest.raises(FileNotFoundError):
        transport.read_small("gone.bin", 10)


@READ_MODES
@pytest.mark.parametrize("order", ["forward", "shuffled"])
def test_concurrent_reads(client: PyvmomiClient, ds1: Path, read_ahead: int, order: str) -> None:
    size = 24 * MIB + 4567
    data = _random_file(ds1 / "big.bin", size, seed=2)
    transport = DatastoreHttpTransport(client, "ds1", read_ahead_bytes=read_ahead)
    offsets = list(range(0, size, MIB))
    if order == "shuffled":
        random.Random(3).shuffle(offsets)
    with transport.open_read("big.bin") as read_at, ThreadPoolExecutor(4) as pool:
        pieces = dict(zip(offsets, pool.map(lambda off: read_at(off, MIB), offsets), strict=True))
    assert b"".join(pieces[off] for off in sorted(pieces)) == data


# -- writing ------------------------------------------------------------------------------------------


def test_write_fills_holes_and_publishes_only_at_the_end(client: PyvmomiClient, vcsim_server: VcsimServer) -> None:
    root = vcsim_server.datastores["ds2"]
    transport = DatastoreHttpTransport(client, "ds2")
    size = 5 * MIB + 10
    a, b = os.urandom(MIB), os.urandom(MIB // 2)
    expected = bytearray(size)
    with transport.open_write("cloudvolumes/apps/New.vmdk", size, 1_700_000_000 * 10**9) as write_at:
        write_at(MIB, a)  # a hole before
        write_at(3 * MIB, b)  # a hole between; the tail is a hole too
        assert not (root / "cloudvolumes/apps/New.vmdk").exists()
    expected[MIB : 2 * MIB] = a
    expected[3 * MIB : 3 * MIB + len(b)] = b
    assert (root / "cloudvolumes/apps/New.vmdk").read_bytes() == expected
    assert _leftovers(root) == []
    info = transport.stat("cloudvolumes/apps/New.vmdk")
    assert info is not None and info.size == size

    with transport.open_write("cloudvolumes/apps/New.vmdk", 3, 0) as write_at:  # replaces
        write_at(0, b"abc")
    assert (root / "cloudvolumes/apps/New.vmdk").read_bytes() == b"abc"
    with transport.open_write("empty.bin", 0, 0):
        pass
    assert (root / "empty.bin").read_bytes() == b""
    with transport.open_write("all-holes.bin", 2 * MIB + 1, 0):
        pass
    assert (root / "all-holes.bin").read_bytes() == bytes(2 * MIB + 1)


class Boom(Exception):
    """The caller's own failure in the middle of a restore."""


def _write(
    transport: DatastoreHttpTransport,
    path: str,
    size: int,
    writes: list[tuple[int, bytes]],
    then: Exception | None = None,
) -> None:
    with transport.open_write(path, size, 0) as write_at:
        for offset, data in writes:
            write_at(offset, data)
        if then is not None:
            raise then


def test_a_failed_write_leaves_nothing(client: PyvmomiClient, vcsim_server: VcsimServer) -> None:
    root = vcsim_server.datastores["ds2"]
    (root / "apps").mkdir()
    (root / "apps/Old.vmdk").write_bytes(b"old content")
    transport = DatastoreHttpTransport(client, "ds2")

    for name in ("apps/New.vmdk", "apps/Old.vmdk"):
        with pytest.raises(Boom):
            _write(transport, name, 8 * MIB, [(0, os.urandom(3 * MIB))], then=Boom())
    assert sorted(p.name for p in (root / "apps").iterdir()) == ["Old.vmdk"]
    assert (root / "apps/Old.vmdk").read_bytes() == b"old content"

    with pytest.raises(DatastoreWriteOrder):
        _write(transport, "apps/Order.vmdk", 4 * MIB, [(MIB, b"x" * 10), (0, b"y")])
    with pytest.raises(DatastoreWriteOrder):
        _write(transport, "apps/Long.vmdk", 10, [(5, b"0123456789")])
    assert sorted(p.name for p in (root / "apps").iterdir()) == ["Old.vmdk"]


def test_clean_partials_removes_only_the_files_own_leftovers(client: PyvmomiClient, ds1: Path) -> None:
    folder = ds1 / "cloudvolumes/apps"
    folder.mkdir(parents=True)
    for name in (
        ".App.vmdk.0123abcd.toolkit-partial",
        ".App.vmdk.89abcdef.toolkit-partial",
        ".Other.vmdk.0123abcd.toolkit-partial",
        "App.vmdk",
    ):
        (folder / name).write_bytes(b"x")
    transport = DatastoreHttpTransport(client, "ds1")
    transport.clean_partials("cloudvolumes/apps/App.vmdk")
    assert sorted(p.name for p in folder.iterdir()) == [".Other.vmdk.0123abcd.toolkit-partial", "App.vmdk"]
    transport.clean_partials("no/such/folder/App.vmdk")  # nothing to do is fine


def test_writes_to_vsan_are_refused(client: PyvmomiClient, vcsim_server: VcsimServer) -> None:
    transport = DatastoreHttpTransport(client, "vsanDatastore")
    with pytest.raises(DatastoreVsanWrite) as caught, transport.open_write("apps/A-flat.vmdk", 1, 0):
        pass
    assert caught.value.exit_code == 2
    assert list(vcsim_server.datastores["vsanDatastore"].iterdir()) == []


# -- faults: a relay that cuts connections ---------------------------------------------------------------

CutPlan = Callable[[int], tuple[int | None, int | None]]  # connection index -> (cut after bytes up, down)


class CuttingRelay:
    """A loopback TCP relay to vcsim that cuts chosen connections after a number of bytes."""

    def __init__(self, upstream_port: int, plan: CutPlan) -> None:
        self._upstream = upstream_port
        self._plan = plan
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.connections = 0
        self.cuts = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                index = self.connections
                self.connections += 1
            threading.Thread(target=self._handle, args=(conn, index), daemon=True).start()

    def _handle(self, client: socket.socket, index: int) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
        except OSError:
            client.close()
            return
        up_limit, down_limit = self._plan(index)
        threading.Thread(target=self._pump, args=(client, upstream, up_limit), daemon=True).start()
        self._pump(upstream, client, down_limit)

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := src.recv(1 << 16):
                if limit is not None and sent + len(data) > limit:
                    dst.sendall(data[: limit - sent])
                    with self._lock:
                        self.cuts += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def relay(vcsim_server: VcsimServer) -> Iterator[Callable[[CutPlan], CuttingRelay]]:
    made: list[CuttingRelay] = []

    def make(plan: CutPlan) -> CuttingRelay:
        made.append(CuttingRelay(vcsim_server.port, plan))
        return made[-1]

    yield make
    for r in made:
        r.close()


@READ_MODES
def test_a_dropped_read_resumes_from_the_last_good_byte(
    client: PyvmomiClient, ds1: Path, relay: Callable[[CutPlan], CuttingRelay], read_ahead: int
) -> None:
    size = 6 * MIB + 77
    data = _random_file(ds1 / "f.bin", size, seed=4)
    cut = relay(lambda index: (None, 1_500_000 + index * 100_000) if index < 3 else (None, None))
    transport = DatastoreHttpTransport(
        client, "ds1", base_url=cut.base_url, read_ahead_bytes=read_ahead, backoff_s=FAST_BACKOFF
    )
    with transport.open_read("f.bin") as read_at, ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda off: read_at(off, MIB), range(0, size, MIB)))
    assert b"".join(got) == data
    if read_ahead:
        assert cut.cuts == 3  # one stream, cut three times, resumed each time
    else:
        assert cut.cuts >= 1  # pooled connections: how many carry 1.5 MB before the end varies
    assert cut.connections > cut.cuts


def test_a_read_that_keeps_dropping_fails_clearly(
    client: PyvmomiClient, ds1: Path, relay: Callable[[CutPlan], CuttingRelay]
) -> None:
    _random_file(ds1 / "f.bin", 4 * MIB, seed=5)
    cut = relay(lambda index: (None, 200_000))
    transport = DatastoreHttpTransport(client, "ds1", base_url=cut.base_url, backoff_s=FAST_BACKOFF)
    with pytest.raises(DatastoreReadFailed) as caught, transport.open_read("f.bin") as read_at:
        read_at(0, 4 * MIB)
    assert caught.value.exit_code == 1
    assert "[ds1] f.bin" in str(caught.value)


def test_a_failed_put_is_sent_again_from_the_spool(
    client: PyvmomiClient, vcsim_server: VcsimServer, relay: Callable[[CutPlan], CuttingRelay], tmp_path: Path
) -> None:
    root = vcsim_server.datastores["ds2"]
    cut = relay(lambda index: (2 * MIB, None) if index == 0 else (None, None))
    spool = tmp_path / "spool"
    transport = DatastoreHttpTransport(client, "ds2", base_url=cut.base_url, spool_dir=spool, backoff_s=FAST_BACKOFF)
    body = os.urandom(5 * MIB)
    with transport.open_write("apps/Big-flat.vmdk", 6 * MIB, 0) as write_at:
        write_at(0, body[: 3 * MIB])
        write_at(4 * MIB, body[3 * MIB : 4 * MIB])
    assert (root / "apps/Big-flat.vmdk").read_bytes() == body[: 3 * MIB] + bytes(MIB) + body[3 * MIB : 4 * MIB] + bytes(
        MIB
    )
    assert cut.cuts == 1
    assert _leftovers(root) == []
    assert list(spool.iterdir()) == []  # the spool file was never linked past its creation


def test_a_failed_put_without_a_spool_fails_and_leaves_nothing(
    client: PyvmomiClient, vcsim_server: VcsimServer, relay: Callable[[CutPlan], CuttingRelay]
) -> None:
    root = vcsim_server.datastores["ds2"]
    cut = relay(lambda index: (2 * MIB, None) if index == 0 else (None, None))
    transport = DatastoreHttpTransport(client, "ds2", base_url=cut.base_url, backoff_s=FAST_BACKOFF)
    writes = [(offset, os.urandom(MIB)) for offset in range(0, 6 * MIB, MIB)]
    with pytest.raises(DatastoreUploadFailed) as caught:
        _write(transport, "apps/Big-flat.vmdk", 6 * MIB, writes)
    assert caught.value.exit_code == 1
    assert not (root / "apps/Big-flat.vmdk").exists()
    assert _leftovers(root) == []


@READ_MODES
def test_an_ended_session_is_renewed(
    client: PyvmomiClient, vcsim_server: VcsimServer, ds1: Path, read_ahead: int
) -> None:
    data = _random_file(ds1 / "f.bin", 2 * MIB, seed=6)
    transport = DatastoreHttpTransport(client, "ds1", read_ahead_bytes=read_ahead)
    assert transport.read_small("f.bin", 10) == data[:10]
    key = client.session_cookie().split("=", 1)[1]  # vcsim's cookie is the session key
    admin = vcsim_server.connect()
    try:
        admin.content.sessionManager.TerminateSession(sessionId=[key])
    finally:
        from pyVim.connect import Disconnect

        Disconnect(admin)
    with transport.open_read("f.bin") as read_at:
        assert read_at(MIB, MIB) == data[MIB:]
    assert client.session_cookie() != f"vmware_soap_session={key}"


# -- end to end ---------------------------------------------------------------------------------------


def test_snapshot_and_restore_through_datastore_http(
    client: PyvmomiClient, vcsim_server: VcsimServer, tmp_path: Path
) -> None:
    ds1, ds2 = vcsim_server.datastores["ds1"], vcsim_server.datastores["ds2"]
    volumes = [
        make_volume(ds1, "cloudvolumes/apps/Office!20!2016.vmdk", size_mib=8, seed=1, real=True),
        make_volume(ds1, "appvolumes/packages/Chrome-v1.vmdk", size_mib=8, seed=2, kind="package", real=True),
    ]
    source = Source("ds1", DatastoreHttpTransport(client, "ds1"))
    repo = Repository.init(tmp_path / "repo")
    try:
        with repo.writing("snapshot"):
            first = snapshot(repo, [source])
        assert first.ok, first.volumes
        assert sorted(v["state"] for v in first.volumes) == ["new", "new"]
        with repo.writing("snapshot"):
            second = snapshot(repo, [source])
        assert sorted(v["state"] for v in second.volumes) == ["unchanged", "unchanged"]
        assert second.stats.read_bytes == 0  # walk and stat agree, so nothing is read again

        destination = DatastoreHttpTransport(client, "ds2")
        result = restore(repo, now_iso(), destination, datastores=["ds1"])
        assert result.ok, result.volumes
        assert sorted(v["status"] for v in result.volumes) == ["restored", "restored"]
        for vol in volumes:
            for path in vol.files:
                rel = path.relative_to(ds1)
                assert (ds2 / rel).read_bytes() == path.read_bytes(), rel
        assert _leftovers(ds2) == []

        again = restore(repo, now_iso(), destination, datastores=["ds1"])
        assert sorted(v["status"] for v in again.volumes) == ["in place", "in place"]
    finally:
        repo.close()
