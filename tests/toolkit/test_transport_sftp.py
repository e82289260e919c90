"""SftpTransport against a real OpenSSH sshd on loopback: the conformance suite, trust, login, resume, end to end."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import paramiko
import pytest
from paramiko.common import AUTH_FAILED, AUTH_SUCCESSFUL, OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED, OPEN_SUCCEEDED
from paramiko.server import InteractiveQuery

from catalog.chunker import file_digest_of
from catalog.repo import Repository, now_iso
from toolkit.errors import SourceNotFound
from toolkit.lab.corpus import make_volume
from toolkit.lab.sshd import SshdServer
from toolkit.ops.restore import restore
from toolkit.ops.snapshot import Source, snapshot
from toolkit.transports.local import PARTIAL_SUFFIX
from toolkit.transports.sftp import (
    READ_AHEAD_BYTES,
    ConnectionLost,
    HostKeyChanged,
    HostKeyUnknown,
    HostTrustInvalid,
    HostUnreachable,
    LoginConfigInvalid,
    LoginFailed,
    RemoteRootInvalid,
    SftpAuth,
    SftpTransport,
    key_fingerprint,
    parse_public_key,
    piece_bytes_for,
)

from .transport_suite import MIB, Datastore, TransportFactory, TransportSuite, payload

pytestmark = pytest.mark.lab

SECRET = "correct-horse-battery-staple"  # noqa: S105 - a password that must never show up anywhere


def auth_for(server: SshdServer, **changes: Any) -> SftpAuth:
    """Trust the lab's known_hosts and log in with its client key, unless ``changes`` says otherwise."""
    return replace(SftpAuth(known_hosts_path=server.known_hosts_path, key_path=server.client_key_path), **changes)


def sftp_to(
    server: SshdServer,
    datastore: str = "datastore1",
    *,
    auth: SftpAuth | None = None,
    read_piece_bytes: int | None = None,
    read_ahead_bytes: int = READ_AHEAD_BYTES,
) -> SftpTransport:
    return SftpTransport(
        server.host,
        server.port,
        server.username,
        server.remote_path(datastore),
        auth or auth_for(server),
        read_piece_bytes=read_piece_bytes,
        read_ahead_bytes=read_ahead_bytes,
    )


@pytest.fixture
def opened(sshd_server: SshdServer) -> Iterator[list[SftpTransport]]:
    """Transports a test opens; all are closed at teardown."""
    made: list[SftpTransport] = []
    yield made
    for transport in made:
        transport.close()


class TestSftpTransport(TransportSuite):
    @pytest.fixture
    def transport_factory(self, sshd_server: SshdServer, opened: list[SftpTransport]) -> TransportFactory:
        def make() -> Datastore:
            transport = sftp_to(sshd_server)
            opened.append(transport)
            return Datastore(transport, Path(sshd_server.remote_path("datastore1")), 1_000_000_000)

        return make


class TestSmallPieces(TransportSuite):
    """The suite again with tiny READ requests and read-ahead: many pieces, eviction, gap filling."""

    @pytest.fixture
    def transport_factory(self, sshd_server: SshdServer, opened: list[SftpTransport]) -> TransportFactory:
        def make() -> Datastore:
            transport = sftp_to(sshd_server, read_piece_bytes=4096, read_ahead_bytes=64 * 1024)
            opened.append(transport)
            return Datastore(transport, Path(sshd_server.remote_path("datastore1")), 1_000_000_000)

        return make


# --- trust -----------------------------------------------------------------------------------------


def _server_key(server: SshdServer, key_type: str) -> str:
    return (server.workdir / "etc" / f"ssh_host_{key_type}_key.pub").read_text()


def test_an_unknown_host_key_is_refused_with_its_fingerprint(sshd_server: SshdServer, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    transport = sftp_to(sshd_server, auth=auth_for(sshd_server, known_hosts_path=empty))

    with pytest.raises(HostKeyUnknown) as caught:
        transport.connect()

    error = caught.value
    assert error.exit_code == 2
    assert error.code == "sftp_host_key_unknown"
    assert f"[{sshd_server.host}]:{sshd_server.port}" in str(error)
    assert any(fp in str(error) for fp in sshd_server.host_key_fingerprints.values())
    assert str(empty) in error.hint_text


def test_a_changed_host_key_is_refused(sshd_server: SshdServer, tmp_path: Path) -> None:
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(other)], check=True)
    public = other.with_name("other_host_key.pub").read_text().split()
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[{sshd_server.host}]:{sshd_server.port} {public[0]} {public[1]}\n")
    transport = sftp_to(sshd_server, auth=auth_for(sshd_server, known_hosts_path=wrong))

    with pytest.raises(HostKeyChanged) as caught:
        transport.connect()

    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert sshd_server.host_key_fingerprints["ecdsa-sha2-nistp256"] in message
    assert key_fingerprint(parse_public_key(" ".join(public))) in message


def test_a_pinned_host_key_is_enough(sshd_server: SshdServer, opened: list[SftpTransport]) -> None:
    for key_type in ("rsa", "ecdsa"):
        pinned = auth_for(sshd_server, known_hosts_path=None, host_key=_server_key(sshd_server, key_type))
        transport = sftp_to(sshd_server, auth=pinned)
        opened.append(transport)
        transport.connect()
        assert transport.stat("nothing") is None


def test_a_wrong_pinned_host_key_is_refused(sshd_server: SshdServer, tmp_path: Path) -> None:
    other = tmp_path / "pinned"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(other)], check=True)
    pinned = auth_for(sshd_server, known_hosts_path=None, host_key=other.with_name("pinned.pub").read_text())

    with pytest.raises(HostKeyChanged, match="the pinned host key"):
        sftp_to(sshd_server, auth=pinned).connect()


def test_trust_and_login_must_be_configured(sshd_server: SshdServer, tmp_path: Path) -> None:
    with pytest.raises(HostTrustInvalid):
        sftp_to(sshd_server, auth=SftpAuth(key_path=sshd_server.client_key_path))
    with pytest.raises(HostTrustInvalid, match="pinned host key is unusable"):
        sftp_to(sshd_server, auth=auth_for(sshd_server, host_key="ssh-rsa not-base64!"))
    with pytest.raises(LoginConfigInvalid):
        sftp_to(sshd_server, auth=SftpAuth(known_hosts_path=sshd_server.known_hosts_path))
    with pytest.raises(LoginConfigInvalid, match="no key file"):
        sftp_to(sshd_server, auth=auth_for(sshd_server, key_path=tmp_path / "absent"))
    with pytest.raises(HostTrustInvalid, match="cannot read"):
        sftp_to(sshd_server, auth=auth_for(sshd_server, known_hosts_path=tmp_path / "absent")).connect()
    with pytest.raises(RemoteRootInvalid):
        SftpTransport(sshd_server.host, sshd_server.port, "root", "vmfs/volumes/x", auth_for(sshd_server))


# --- login -----------------------------------------------------------------------------------------


def test_a_wrong_client_key_is_refused(sshd_server: SshdServer, tmp_path: Path) -> None:
    stranger = tmp_path / "id_stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(stranger)], check=True)
    transport = sftp_to(sshd_server, auth=auth_for(sshd_server, key_path=stranger))

    with pytest.raises(LoginFailed) as caught:
        transport.connect()

    assert f"{sshd_server.username}@{sshd_server.host}:{sshd_server.port}" in str(caught.value)
    assert "ecdsa-sha2-nistp256" in str(caught.value)


def test_an_ecdsa_key_with_a_passphrase_logs_in(sshd_server: SshdServer, tmp_path: Path) -> None:
    key = tmp_path / "id_ecdsa_pw"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", SECRET, "-C", "lab", "-f", str(key)], check=True)
    authorized = sshd_server.workdir / "etc" / "authorized_keys"
    authorized.write_text(authorized.read_text() + key.with_name("id_ecdsa_pw.pub").read_text())

    with pytest.raises(LoginConfigInvalid, match="encrypted") as caught:
        sftp_to(sshd_server, auth=auth_for(sshd_server, key_path=key))
    assert SECRET not in str(caught.value)

    with sftp_to(sshd_server, auth=auth_for(sshd_server, key_path=key, key_passphrase=SECRET)) as transport:
        assert transport.stat("x") is None


def test_secrets_stay_out_of_repr_logs_and_errors(
    sshd_server: SshdServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stranger = tmp_path / "id_stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(stranger)], check=True)
    auth = auth_for(sshd_server, key_path=stranger, password=SECRET, key_passphrase=SECRET)
    transport = sftp_to(sshd_server, auth=auth)

    with pytest.raises(LoginFailed) as caught:
        transport.connect()  # the server offers neither password nor keyboard-interactive

    shown = [repr(auth), repr(transport), transport.describe(), str(caught.value), caught.value.hint_text]
    shown += [record.getMessage() for record in caplog.records]
    assert all(SECRET not in text for text in shown)
    assert "password" in str(caught.value)  # it says which methods were tried, not with what


def test_an_unreachable_host_is_a_clear_error(sshd_server: SshdServer) -> None:
    port = sshd_server.port
    sshd_server.stop()
    with pytest.raises(HostUnreachable, match=str(port)):
        sftp_to(sshd_server).connect()


def test_the_fast_cipher_is_negotiated(sshd_server: SshdServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="toolkit.transports.sftp")
    with sftp_to(sshd_server):
        pass
    assert any("aes128-gcm@openssh.com" in r.getMessage() for r in caplog.records)


class _KeyboardInteractiveHost(paramiko.ServerInterface):
    """Logs in as ESXi does with PasswordAuthentication off: keyboard-interactive, one password prompt."""

    def __init__(self, password: str, answers: list[list[str]]) -> None:
        self.password = password
        self.answers = answers

    def get_allowed_auths(self, username: str) -> str:
        return "keyboard-interactive"

    def check_auth_interactive(self, username: str, submethods: str) -> InteractiveQuery:
        return InteractiveQuery("", "", ("Password: ", False))

    def check_auth_interactive_response(self, responses: list[str]) -> int:
        self.answers.append(list(responses))
        return AUTH_SUCCESSFUL if responses == [self.password] else AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return OPEN_SUCCEEDED if kind == "session" else OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


@pytest.fixture
def kbd_host() -> Iterator[tuple[int, str, list[list[str]]]]:
    """A paramiko SSH server on loopback that takes only keyboard-interactive logins and offers SFTP.

    Yields (port, pinned host key line, the responses it received).
    """
    host_key = paramiko.ECDSAKey.generate()
    answers: list[list[str]] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    served: list[paramiko.Transport] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            server = paramiko.Transport(conn)
            server.add_server_key(host_key)
            server.set_subsystem_handler("sftp", paramiko.SFTPServer, paramiko.SFTPServerInterface)
            server.start_server(server=_KeyboardInteractiveHost(SECRET, answers))
            served.append(server)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], f"{host_key.get_name()} {host_key.get_base64()}", answers
    finally:
        stop.set()
        thread.join(5)
        for server in served:
            server.close()
        listener.close()


def test_a_password_login_falls_back_to_keyboard_interactive(
    kbd_host: tuple[int, str, list[list[str]]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port, host_key, answers = kbd_host

    with SftpTransport("127.0.0.1", port, "root", "/vmfs/volumes/ds1", SftpAuth(host_key=host_key, password=SECRET)):
        pass
    assert answers == [[SECRET]]

    wrong = SftpTransport("127.0.0.1", port, "root", "/", SftpAuth(host_key=host_key, password="not-" + SECRET))
    with pytest.raises(LoginFailed) as caught:
        wrong.connect()
    assert "keyboard-interactive" in str(caught.value)
    assert all(SECRET not in record.getMessage() for record in caplog.records)


# --- reads: pieces, short server replies, dropped links ---------------------------------------------


def test_piece_size_follows_the_server_limits() -> None:
    assert piece_bytes_for(None) == 32 * 1024
    assert piece_bytes_for(261_120) == 128 * 1024  # OpenSSH ≥ 8.6 says 255 KiB
    assert piece_bytes_for(65_536) == 65_536
    assert piece_bytes_for(100_000) == 65_536


def test_reads_larger_than_the_server_allows_are_completed(
    sshd_server: SshdServer, opened: list[SftpTransport]
) -> None:
    data = payload(8 * MIB + 99, 21)
    (Path(sshd_server.remote_path("datastore1")) / "f.bin").write_bytes(data)
    transport = sftp_to(sshd_server, read_piece_bytes=MIB)  # OpenSSH answers at most 255 KiB per READ
    opened.append(transport)

    with transport.open_read("f.bin") as read_at:
        got = b"".join(read_at(offset, MIB) for offset in range(0, len(data), MIB))

    assert got == data


def test_read_ahead_memory_stays_bounded(sshd_server: SshdServer, opened: list[SftpTransport]) -> None:
    size = 48 * MIB
    local = Path(sshd_server.remote_path("datastore1")) / "big-flat.vmdk"
    with local.open("wb") as f:
        for i in range(size // MIB):
            f.write(payload(MIB, 100 + i))
    transport = sftp_to(sshd_server)
    opened.append(transport)
    transport.connect()

    tracemalloc.start()
    try:
        with transport.open_read("big-flat.vmdk") as read_at:
            for offset in range(0, size, MIB):
                assert len(read_at(offset, MIB)) == MIB
                if offset == 8 * MIB:
                    time.sleep(0.5)  # a slow reader: the server has time to send all it was asked for
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < 16 * MIB  # read-ahead (4 MiB) and the pieces in flight, not the 48 MiB file


def test_a_missing_root_is_an_error_not_an_empty_datastore(
    sshd_server: SshdServer, opened: list[SftpTransport]
) -> None:
    transport = sftp_to(sshd_server, "datastore9")
    opened.append(transport)
    with pytest.raises(SourceNotFound, match="datastore9"):
        list(transport.walk())


def _connection_processes(server: SshdServer) -> list[int]:
    """The sshd processes serving connections (children of the listener), found through /proc."""
    listener = int((server.workdir / "sshd.pid").read_text())
    children = Path(f"/proc/{listener}/task/{listener}/children").read_text().split()
    return [int(pid) for pid in children]


def _drop_connections(server: SshdServer) -> None:
    for pid in _connection_processes(server):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _connection_processes(server) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_read_resumes_after_the_connection_drops(
    sshd_server: SshdServer, opened: list[SftpTransport], caplog: pytest.LogCaptureFixture
) -> None:
    size = 12 * MIB + 5
    data = payload(size, 22)
    (Path(sshd_server.remote_path("datastore1")) / "flat.vmdk").write_bytes(data)
    transport = sftp_to(sshd_server)
    opened.append(transport)
    got = hashlib.sha256()

    with transport.open_read("flat.vmdk") as read_at:
        for offset in range(0, size, MIB):
            if offset == 4 * MIB:
                _drop_connections(sshd_server)  # the server side goes away in the middle of the file
            got.update(read_at(offset, MIB))

    assert got.hexdigest() == hashlib.sha256(data).hexdigest()
    assert transport.reconnects == 1
    assert any("reconnecting" in r.getMessage() for r in caplog.records)
    assert transport.stat("flat.vmdk") is not None  # the names connection came back too


def test_a_client_side_disconnect_is_resumed_too(sshd_server: SshdServer, opened: list[SftpTransport]) -> None:
    data = payload(6 * MIB, 23)
    (Path(sshd_server.remote_path("datastore1")) / "flat.vmdk").write_bytes(data)
    transport = sftp_to(sshd_server)
    opened.append(transport)

    with transport.open_read("flat.vmdk") as read_at:
        first = read_at(0, MIB)
        transport._connection().transport.close()  # the paramiko Transport under everything
        rest = read_at(MIB, 5 * MIB)

    assert first + rest == data


def test_metadata_calls_reconnect_after_a_drop(sshd_server: SshdServer, opened: list[SftpTransport]) -> None:
    (Path(sshd_server.remote_path("datastore1")) / "a.vmdk").write_bytes(b"abc")
    transport = sftp_to(sshd_server)
    opened.append(transport)
    assert transport.stat("a.vmdk") is not None

    _drop_connections(sshd_server)

    assert [info.path for info in transport.walk()] == ["a.vmdk"]
    assert transport.read_small("a.vmdk", 10) == b"abc"


def test_a_host_that_stays_down_fails_the_read_clearly(sshd_server: SshdServer, opened: list[SftpTransport]) -> None:
    data = payload(4 * MIB, 24)
    (Path(sshd_server.remote_path("datastore1")) / "flat.vmdk").write_bytes(data)
    transport = sftp_to(sshd_server, read_ahead_bytes=MIB)
    opened.append(transport)

    with transport.open_read("flat.vmdk") as read_at:
        assert read_at(0, MIB) == data[:MIB]
        sshd_server.stop()
        with pytest.raises(ConnectionLost) as caught:
            read_at(3 * MIB, MIB)

    assert caught.value.exit_code == 1
    assert sshd_server.host in str(caught.value)
    assert "flat.vmdk" in str(caught.value)


def test_a_write_cut_by_a_dropped_link_leaves_nothing_behind(
    sshd_server: SshdServer, opened: list[SftpTransport]
) -> None:
    transport = sftp_to(sshd_server)
    opened.append(transport)
    apps = Path(sshd_server.remote_path("datastore1")) / "apps"

    def write_across_a_drop() -> None:
        with transport.open_write("apps/Cut.vmdk", 8 * MIB, 0) as write_at:
            write_at(0, payload(MIB, 25))
            _drop_connections(sshd_server)
            for offset in range(MIB, 8 * MIB, MIB):
                write_at(offset, payload(MIB, 26))

    with pytest.raises(ConnectionLost):
        write_across_a_drop()

    assert not (apps / "Cut.vmdk").exists()
    assert [p.name for p in apps.iterdir() if p.name.endswith(PARTIAL_SUFFIX)] == []


# --- on-host digest --------------------------------------------------------------------------------


def test_the_host_computes_the_file_digest(sshd_server: SshdServer, opened: list[SftpTransport]) -> None:
    local = Path(sshd_server.remote_path("datastore1")) / "apps" / "App-flat.vmdk"
    local.parent.mkdir()
    local.write_bytes(payload(3 * MIB + 17, 27))
    transport = sftp_to(sshd_server)
    opened.append(transport)

    with local.open("rb") as f:
        expected = file_digest_of(f, 1 << 20)

    assert transport.remote_file_digest("apps/App-flat.vmdk", 1 << 20) == expected


# --- end to end ------------------------------------------------------------------------------------


def test_snapshot_and_restore_through_sftp(sshd_server: SshdServer, tmp_path: Path) -> None:
    source_dir = Path(sshd_server.remote_path("datastore1"))
    target_dir = Path(sshd_server.remote_path("datastore2"))
    make_volume(source_dir, "cloudvolumes/apps/App.vmdk", size_mib=16, seed=1, real=True)
    repo = Repository.init(tmp_path / "repo")
    try:
        with sftp_to(sshd_server) as source:
            with repo.writing("snapshot"):
                first = snapshot(repo, [Source("datastore1", source)])
            with repo.writing("snapshot"):
                second = snapshot(repo, [Source("datastore1", source)])

        assert first.ok and [v["state"] for v in first.volumes] == ["new"]
        assert first.stats.read_bytes > 16 * MIB
        assert second.ok and [v["state"] for v in second.volumes] == ["unchanged"]
        assert second.stats.read_bytes == 0  # whole-second mtimes compare equal: nothing read again

        with sftp_to(sshd_server, "datastore2") as target:
            restored = restore(repo, now_iso(), target)
            again = restore(repo, now_iso(), target)
            digest_on_host = target.remote_file_digest("cloudvolumes/apps/App-flat.vmdk", repo.config.chunk_size)
    finally:
        repo.close()

    assert restored.ok and [v["status"] for v in restored.volumes] == ["restored"]
    assert again.ok and [v["status"] for v in again.volumes] == ["in place"]
    originals = sorted(p.relative_to(source_dir) for p in source_dir.rglob("*") if p.is_file())
    copies = sorted(p.relative_to(target_dir) for p in target_dir.rglob("*") if p.is_file())
    assert copies == originals
    assert len(originals) >= 3  # descriptor, flat extent, sidecar(s)
    for rel in originals:
        a, b = source_dir / rel, target_dir / rel
        assert a.read_bytes() == b.read_bytes(), rel
        assert b.stat().st_mtime_ns == a.stat().st_mtime_ns // 10**9 * 10**9, rel
    flat = next(f for f in first.volumes[0]["files"] if f["path"].endswith("-flat.vmdk"))
    assert digest_on_host == flat["digest"]
