"""The loopback sshd: strict host-key checking, key login, SFTP and remote python3, clean stop."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import paramiko
import pytest

from toolkit.lab.sshd import SshdServer, fingerprint

pytestmark = pytest.mark.lab


def _client(server: SshdServer, known_hosts: Path, key: paramiko.PKey | None = None) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        server.host,
        port=server.port,
        username=server.username,
        pkey=key or paramiko.RSAKey.from_private_key_file(str(server.client_key_path)),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    return client


def _run(client: paramiko.SSHClient, command: str) -> tuple[int, str, str]:
    _, stdout, stderr = client.exec_command(command, timeout=30)
    status = stdout.channel.recv_exit_status()
    return status, stdout.read().decode(), stderr.read().decode()


def test_sftp_reads_a_datastore_file_with_strict_host_key_checking(sshd_server: SshdServer) -> None:
    local = sshd_server.volumes_root / "datastore1" / "cloudvolumes/apps/Office!20!2016.vmdk.metadata"
    local.parent.mkdir(parents=True)
    local.write_text(':template_file_name: "[datastore1] x.vmdk"\n')

    client = _client(sshd_server, sshd_server.known_hosts_path)
    try:
        sftp = client.open_sftp()
        remote = sshd_server.remote_path("datastore1", "cloudvolumes/apps/Office!20!2016.vmdk.metadata")
        with sftp.open(remote, "rb") as handle:
            assert handle.read() == local.read_bytes()
        assert "Office!20!2016.vmdk.metadata" in sftp.listdir(str(Path(remote).parent))
        with sftp.open(sshd_server.remote_path("datastore2", "written.bin"), "wb") as handle:
            handle.write(b"\x00" * 4096 + b"tail")
        assert (sshd_server.volumes_root / "datastore2" / "written.bin").stat().st_size == 4100
        server_key = client.get_transport().get_remote_server_key()  # type: ignore[union-attr]
        line = f"{server_key.get_name()} {server_key.get_base64()}"
        assert sshd_server.host_key_fingerprints[server_key.get_name()] == fingerprint(line)
    finally:
        client.close()


def test_known_hosts_pins_every_host_key(sshd_server: SshdServer) -> None:
    entries = sshd_server.known_hosts_path.read_text().splitlines()
    target = f"[{sshd_server.host}]:{sshd_server.port}"
    assert {entry.split()[0] for entry in entries} == {target}
    assert {entry.split()[1] for entry in entries} == set(sshd_server.host_key_fingerprints)
    assert {"ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"} == set(sshd_server.host_key_fingerprints)
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(sshd_server.known_hosts_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    for value in sshd_server.host_key_fingerprints.values():
        assert value in listed.stdout


def test_remote_python3_runs(sshd_server: SshdServer) -> None:
    client = sshd_server.connect()
    try:
        code = "import hashlib, json, sys; "
        code += "print(json.dumps([sys.version_info[0], hashlib.sha256(b'x').hexdigest()]))"
        status, out, err = _run(client, f'python3 -c "{code}"')
        assert status == 0, err
        assert json.loads(out) == [3, "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"]
        status, out, err = _run(client, "python -c 'print(40 + 2)'")
        assert (status, out.strip()) == (0, "42"), err
        status, out, _ = _run(client, f"ls {sshd_server.remote_path('datastore1')}/..")
        assert set(out.split()) == {"datastore1", "datastore2"}
    finally:
        client.close()


def test_client_key_is_rsa_3072(sshd_server: SshdServer) -> None:
    key = paramiko.RSAKey.from_private_key_file(str(sshd_server.client_key_path))
    assert key.get_bits() == 3072


def test_unknown_host_key_is_refused(sshd_server: SshdServer, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        _client(sshd_server, empty)

    other_key = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    public = other_key.with_suffix(".pub").read_text().split()
    wrong = tmp_path / "wrong_known_hosts"
    target = f"[{sshd_server.host}]:{sshd_server.port}"
    wrong.write_text(f"{target} {public[0]} {public[1]}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        _client(sshd_server, wrong)


def test_unknown_client_key_is_refused(sshd_server: SshdServer, tmp_path: Path) -> None:
    stranger = tmp_path / "id_stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(stranger)], check=True)
    with pytest.raises(paramiko.AuthenticationException):
        _client(sshd_server, sshd_server.known_hosts_path, paramiko.ECDSAKey.from_private_key_file(str(stranger)))


def test_ecdsa_client_key_and_clean_stop(tmp_path: Path) -> None:
    with SshdServer(tmp_path / "sshd", client_key_type="ecdsa") as server:
        client = server.connect()
        status, out, _ = _run(client, "echo ok")
        assert (status, out) == (0, "ok\n")
        port = server.port
    assert not server.running
    client.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
