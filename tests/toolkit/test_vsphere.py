"""toolkit.vsphere against a real vcsim: datastores, browsing, disk copies, file operations, login and TLS."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from toolkit.lab.avm_sim.tls import Certificate, create_certificate
from toolkit.lab.corpus import make_volume
from toolkit.lab.vcsim import VcsimServer
from toolkit.transports.datastore_http import DatastoreHttpTransport, http_session
from toolkit.vsphere import (
    DatastoreFileExists,
    DatastoreFileNotFound,
    HttpEndpoint,
    PyvmomiClient,
    TlsPolicy,
    VsphereBadDatastorePath,
    VsphereCertificateMismatch,
    VsphereConfig,
    VsphereConfigInvalid,
    VsphereDatacenterNotFound,
    VsphereDatastoreNotFound,
    VsphereLoginFailed,
    VsphereTlsFailed,
    VsphereUnreachable,
    connect,
    folder_of_result,
    format_datastore_path,
    mtime_ns_of,
    parse_datastore_path,
)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]


def _config(server: VcsimServer, **overrides: object) -> VsphereConfig:
    fields: dict[str, object] = {"url": server.url, "user": server.user, "password": server.password}
    fields.update(overrides)
    return VsphereConfig(**fields)  # type: ignore[arg-type]


@pytest.fixture
def client(vcsim_server: VcsimServer) -> Iterator[PyvmomiClient]:
    with connect(_config(vcsim_server)) as c:
        yield c


def _us(ns: int) -> int:
    """vCenter reports times to the microsecond."""
    return ns // 1000 * 1000


# -- pure helpers -----------------------------------------------------------------------------------


def test_datastore_paths_are_formatted_and_parsed() -> None:
    assert format_datastore_path("ds1") == "[ds1]"
    assert format_datastore_path("ds1", "/cloudvolumes/apps/") == "[ds1] cloudvolumes/apps"
    assert parse_datastore_path("[ds 1] cloudvolumes/apps/A!20!B.vmdk") == ("ds 1", "cloudvolumes/apps/A!20!B.vmdk")
    assert parse_datastore_path("[ds1]") == ("ds1", "")
    assert folder_of_result("ds1", "[ds1]/a/b") == "a/b"  # vcsim's form
    assert folder_of_result("ds1", "[ds1] a/b/") == "a/b"  # vCenter's form
    with pytest.raises(VsphereBadDatastorePath):
        parse_datastore_path("ds1/cloudvolumes")


def test_mtime_is_exact_to_the_microsecond() -> None:
    from datetime import UTC, datetime

    moment = datetime(2026, 11, 20, 3, 0, 0, 123456, tzinfo=UTC)
    assert mtime_ns_of(moment) == int(moment.timestamp()) * 10**9 + 123456000
    assert mtime_ns_of(None) == 0


def test_the_password_is_not_in_repr() -> None:
    config = VsphereConfig("https://vc.example.com", "backup@vsphere.local", "s3cret-pw")
    assert "s3cret-pw" not in repr(config)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://vc.example.com/sdk", "in clear"),
        ("ftp://vc.example.com", "not an https"),
        ("https://user:pw@vc.example.com", "own settings"),
    ],
)
def test_bad_urls_are_refused_before_any_connection(url: str, words: str) -> None:
    with pytest.raises(VsphereConfigInvalid, match=words) as caught:
        connect(VsphereConfig(url, "u", "p"))
    assert caught.value.exit_code == 2


def test_a_malformed_thumbprint_is_refused() -> None:
    with pytest.raises(VsphereConfigInvalid, match="SHA-256"):
        connect(VsphereConfig("https://127.0.0.1:9", "u", "p", thumbprint_sha256="ab:cd"))


# -- against vcsim ----------------------------------------------------------------------------------


def test_datastores_are_listed_and_the_vsan_one_is_typed_vsan(client: PyvmomiClient, vcsim_server: VcsimServer) -> None:
    found = {d.name: d for d in client.datastores()}
    assert set(found) == {"ds1", "ds2", "vsanDatastore"}
    assert found["vsanDatastore"].type == "vsan"
    assert found["vsanDatastore"].is_vsan
    assert not found["ds1"].is_vsan
    assert found["ds1"].type == "VMFS"
    for name, info in found.items():
        assert info.accessible
        assert 0 < info.free_bytes <= info.capacity_bytes
        assert info.url == str(vcsim_server.datastores[name].resolve())
    assert client.datacenter == "DC0"
    assert client.http.dc_path == "DC0"
    assert client.http.base_url == f"http://127.0.0.1:{vcsim_server.port}"
    assert client.session_cookie().startswith("vmware_soap_session=")


def test_browse_finds_files_with_sizes_and_times(client: PyvmomiClient, vcsim_server: VcsimServer) -> None:
    root = vcsim_server.datastores["ds1"]
    vol = make_volume(root, "cloudvolumes/apps/Office!20!2016.vmdk", size_mib=8, seed=2, real=False)
    (root / "top.txt").write_bytes(b"hello")
    expected = {p.relative_to(root).as_posix(): p.stat() for p in (*vol.files, root / "top.txt")}

    listed = {f.path: f for f in client.browse("ds1")}
    assert set(listed) == set(expected)  # files only: no folder entries
    for path, st in expected.items():
        assert listed[path].size_bytes == st.st_size
        assert listed[path].mtime_ns == _us(st.st_mtime_ns)

    one = client.browse("ds1", "cloudvolumes/apps", "*.vmdk", recursive=False)
    assert {f.path for f in one} == {
        "cloudvolumes/apps/Office!20!2016.vmdk",
        "cloudvolumes/apps/Office!20!2016-flat.vmdk",
    }
    assert client.browse("ds1", "cloudvolumes", recursive=False) == []  # only a folder there
    with pytest.raises(DatastoreFileNotFound) as caught:
        client.browse("ds1", "no/such/folder")
    assert caught.value.exit_code == 1
    with pytest.raises(VsphereDatastoreNotFound):
        client.browse("ds9")


def test_copy_virtual_disk_between_datastores(client: PyvmomiClient, vcsim_server: VcsimServer) -> None:
    src_root, dst_root = vcsim_server.datastores["ds1"], vcsim_server.datastores["ds2"]
    vol = make_volume(src_root, "cloudvolumes/apps/App.vmdk", size_mib=8, seed=1, real=True)
    client.make_directory("[ds2] cloudvolumes/apps")
    client.make_directory("[ds2] cloudvolumes/apps")  # an existing folder is fine

    client.copy_virtual_disk("[ds1] cloudvolumes/apps/App.vmdk", "[ds2] cloudvolumes/apps/App.vmdk")

    copied = dst_root / "cloudvolumes/apps"
    assert (copied / "App-flat.vmdk").read_bytes() == vol.flat.read_bytes()
    assert 'createType="monolithicFlat"' in (copied / "App.vmdk").read_text()
    assert {f.path for f in client.browse("ds2")} == {
        "cloudvolumes/apps/App.vmdk",
        "cloudvolumes/apps/App-flat.vmdk",
    }
    with pytest.raises(DatastoreFileExists):
        client.copy_virtual_disk("[ds1] cloudvolumes/apps/App.vmdk", "[ds2] cloudvolumes/apps/App.vmdk")
    with pytest.raises(DatastoreFileNotFound):
        client.copy_virtual_disk("[ds1] cloudvolumes/apps/Gone.vmdk", "[ds2] Gone.vmdk")


def test_move_and_delete_files(client: PyvmomiClient, vcsim_server: VcsimServer) -> None:
    root = vcsim_server.datastores["ds2"]
    client.make_directory("[ds2] staging/deep")
    (root / "staging/deep/a.bin").write_bytes(b"a")
    (root / "staging/b.bin").write_bytes(b"b")

    with pytest.raises(DatastoreFileExists):
        client.move_file("[ds2] staging/deep/a.bin", "[ds2] staging/b.bin")
    client.move_file("[ds2] staging/deep/a.bin", "[ds2] staging/b.bin", overwrite=True)
    assert (root / "staging/b.bin").read_bytes() == b"a"
    assert not (root / "staging/deep/a.bin").exists()

    client.move_file("[ds2] staging/b.bin", "[ds1] b.bin")  # across datastores
    assert (vcsim_server.datastores["ds1"] / "b.bin").read_bytes() == b"a"

    client.delete_file("[ds1] b.bin")
    assert not (vcsim_server.datastores["ds1"] / "b.bin").exists()
    client.delete_file("[ds1] b.bin", missing_ok=True)
    with pytest.raises(DatastoreFileNotFound):
        client.delete_file("[ds1] b.bin")


def test_a_wrong_password_gives_a_clear_error(vcsim_server: VcsimServer) -> None:
    wrong = vcsim_server.password + "-wrong"
    with pytest.raises(VsphereLoginFailed) as caught:
        connect(_config(vcsim_server, password=wrong))
    err = caught.value
    assert err.exit_code == 2
    assert err.code == "vsphere_login_failed"
    assert vcsim_server.user in str(err)
    assert wrong not in str(err)
    assert "password" in err.hint_text


def test_an_unknown_datacenter_lists_the_known_ones(vcsim_server: VcsimServer) -> None:
    with pytest.raises(VsphereDatacenterNotFound, match="it has: DC0"):
        connect(_config(vcsim_server, datacenter="DC9"))
    with connect(_config(vcsim_server, datacenter="DC0")) as c:
        assert c.datacenter == "DC0"


def test_a_closed_port_is_unreachable(vcsim_server: VcsimServer) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(VsphereUnreachable) as caught:
        connect(_config(vcsim_server, url=f"https://127.0.0.1:{port}/sdk"))
    assert caught.value.exit_code == 2


# -- TLS: a terminating relay in front of vcsim ---------------------------------------------------------


class TlsRelay:
    """Accepts TLS on a loopback port and relays the plain bytes to vcsim."""

    def __init__(self, cert: Certificate, upstream_port: int) -> None:
        self._context = cert.server_context()
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/sdk"

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            tls = self._context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()  # the client refused our certificate: that is what some tests expect
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
        except OSError:
            tls.close()  # vcsim already stopped at teardown
            return
        threading.Thread(target=_pump, args=(upstream, tls), daemon=True).start()
        _pump(tls, upstream)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def tls_relay(vcsim_server: VcsimServer, tmp_path: Path) -> Iterator[tuple[TlsRelay, Certificate]]:
    cert = create_certificate(tmp_path / "tls")
    relay = TlsRelay(cert, vcsim_server.port)
    yield relay, cert
    relay.close()


def test_tls_with_a_ca_bundle_reaches_soap_and_datastore_http(
    vcsim_server: VcsimServer, tls_relay: tuple[TlsRelay, Certificate]
) -> None:
    relay, cert = tls_relay
    (vcsim_server.datastores["ds1"] / "f.bin").write_bytes(b"over tls" * 1000)
    with connect(_config(vcsim_server, url=relay.url, ca_bundle=cert.cert_path)) as c:
        assert c.http.base_url == f"https://127.0.0.1:{relay.port}"
        assert {d.name for d in c.datastores()} == {"ds1", "ds2", "vsanDatastore"}
        transport = DatastoreHttpTransport(c, "ds1")
        assert transport.read_small("f.bin", 8) == b"over tls"


def test_tls_with_a_pinned_thumbprint(vcsim_server: VcsimServer, tls_relay: tuple[TlsRelay, Certificate]) -> None:
    relay, cert = tls_relay
    (vcsim_server.datastores["ds1"] / "f.bin").write_bytes(b"pinned" * 1000)
    colons = ":".join(cert.thumbprint_sha256[i : i + 2] for i in range(0, 64, 2)).upper()
    with connect(_config(vcsim_server, url=relay.url, thumbprint_sha256=colons)) as c:
        transport = DatastoreHttpTransport(c, "ds1")
        with transport.open_read("f.bin") as read_at:
            assert read_at(0, 6) == b"pinned"


def test_tls_with_another_thumbprint_is_refused(
    vcsim_server: VcsimServer, tls_relay: tuple[TlsRelay, Certificate]
) -> None:
    relay, cert = tls_relay
    wrong = "0" * 64
    with pytest.raises(VsphereCertificateMismatch) as caught:
        connect(_config(vcsim_server, url=relay.url, thumbprint_sha256=wrong))
    assert caught.value.fields["actual"] == cert.thumbprint_sha256
    assert caught.value.exit_code == 2


def test_datastore_http_enforces_the_pin_on_its_own_connections(
    vcsim_server: VcsimServer, tls_relay: tuple[TlsRelay, Certificate]
) -> None:
    relay, cert = tls_relay
    (vcsim_server.datastores["ds1"] / "f.bin").write_bytes(b"data")
    with connect(_config(vcsim_server, url=relay.url, ca_bundle=cert.cert_path)) as c:
        wrong = HttpEndpoint(c.http.base_url, c.http.dc_path, TlsPolicy(thumbprint_sha256="0" * 64))
        transport = DatastoreHttpTransport(c, "ds1", session=http_session(wrong))
        with pytest.raises(VsphereTlsFailed, match=r"(?i)fingerprint"):  # at once: a certificate is not retried
            transport.read_small("f.bin", 4)
        with pytest.raises(VsphereTlsFailed), transport.open_read("f.bin"):
            pass


def test_tls_is_verified_by_default(vcsim_server: VcsimServer, tls_relay: tuple[TlsRelay, Certificate]) -> None:
    relay, _ = tls_relay
    with pytest.raises(VsphereTlsFailed) as caught:
        connect(_config(vcsim_server, url=relay.url))  # a self-signed certificate and no CA bundle
    assert "certificate" in str(caught.value)
