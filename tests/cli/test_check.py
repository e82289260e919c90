"""`toolkit check` against real peers: the manager simulator, vcsim, a loopback sshd, a repository.

Every endpoint the configuration names is contacted; a failure is a row with a fix and exit 1,
and no password ever appears in stdout, stderr or the log file.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from catalog.errors import Locked
from toolkit.config import ConfigNotFound
from toolkit.lab.avm_sim import AvmSimulator
from toolkit.lab.corpus import make_volume
from toolkit.ops.endpoints import CheckReport, CheckRow, redact_url

from ..conftest import run_toolkit

SECRET = "s3cret-" + secrets.token_hex(12)  # the manager's password: must never be shown


@contextmanager
def manager(stores: dict[str, Path], password: str = SECRET, **kwargs: object) -> Iterator[AvmSimulator]:
    with AvmSimulator(stores, flavour="2.x", password=password, job_delay_s=0.05, **kwargs) as sim:  # type: ignore[arg-type]
        yield sim


def write_config(tmp_path: Path, body: str, *, repo: Path | None = None) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'repository = "{repo or tmp_path / "repo"}"\n{body}')
    cfg.chmod(0o600)
    return cfg


def manager_section(url: str, **extra: str) -> str:
    lines = [f'url = "{url}"', 'user = "admin"', 'password_env = "AVM_PW"']
    lines += [f'{k} = "{v}"' for k, v in extra.items()]
    return "[sites.dc1.manager]\n" + "\n".join(lines) + "\n"


def local_datastore(name: str, path: Path) -> str:
    return f'[sites.dc1.datastores.{name}]\ntransport = "local"\npath = "{path}"\n'


def sftp_datastore(name: str, sshd_server, known_hosts: Path | None = None) -> str:
    return (
        f'[sites.dc1.datastores.{name}]\ntransport = "sftp"\nhost = "{sshd_server.host}"\nport = {sshd_server.port}\n'
        f'user = "{sshd_server.username}"\nkey_file = "{sshd_server.client_key_path}"\n'
        f'known_hosts = "{known_hosts or sshd_server.known_hosts_path}"\npath = "{sshd_server.remote_path(name)}"\n'
    )


def check(cfg: Path, *args: str, env: dict[str, str] | None = None, log: Path | None = None) -> tuple[int, dict, str]:
    """Run `toolkit check` twice (JSON and text, both with -vv and a log file); return (rc, JSON, all output)."""
    logs = ["--log-file", str(log)] if log else []
    as_json = run_toolkit("--config", str(cfg), "-vv", *logs, "--json", "check", *args, env=env)
    as_text = run_toolkit("--config", str(cfg), "-vv", *logs, "check", *args, env=env)
    assert as_json.returncode == as_text.returncode, as_text.stderr
    assert "Traceback" not in as_json.stderr + as_text.stderr
    everything = as_json.stdout + as_json.stderr + as_text.stdout + as_text.stderr
    if log is not None:
        everything += log.read_text()
    return as_json.returncode, json.loads(as_json.stdout), everything


def rows(report: dict, component: str) -> list[dict]:
    return [r for r in report["checks"] if r["component"] == component]


def one(report: dict, component: str) -> dict:
    found = rows(report, component)
    assert len(found) == 1, report["checks"]
    return found[0]


def make_store(root: Path, name: str = "Office!20!2016", seed: int = 1) -> None:
    make_volume(root, f"cloudvolumes/apps/{name}.vmdk", size_mib=4, seed=seed, real=False)


def init_repo(cfg: Path) -> None:
    r = run_toolkit("--config", str(cfg), "init")
    assert r.returncode == 0, r.stderr


# -- everything reachable -------------------------------------------------------------------------------------


@pytest.mark.lab
def test_every_endpoint_of_a_site_checks_ok(vcsim_server, sshd_server, tmp_path: Path) -> None:
    stores = vcsim_server.datastores
    for name in ("ds1", "ds2", "vsanDatastore"):
        make_store(stores[name])
    make_store(Path(sshd_server.remote_path("datastore1")))
    with manager({"ds1": stores["ds1"], "ds2": stores["ds2"]}) as sim:
        cfg = write_config(
            tmp_path,
            manager_section(sim.url)
            + f'[sites.dc1.vcenter]\nurl = "{vcsim_server.url}"\nuser = "{vcsim_server.user}"\n'
            f'password_env = "VC_PW"\ndatacenter = "{vcsim_server.datacenter}"\n'
            '[sites.dc1.datastores.ds1]\ntransport = "http"\n'
            + local_datastore("ds2", stores["ds2"])
            + '[sites.dc1.datastores.vsanDatastore]\ntransport = "http"\nvsan = true\nstaging = "ds2"\n'
            + sftp_datastore("datastore1", sshd_server),
        )
        init_repo(cfg)
        log = tmp_path / "check.log"
        rc, report, everything = check(cfg, env={"AVM_PW": SECRET, "VC_PW": vcsim_server.password}, log=log)
    assert rc == 0, report
    assert report["ok"] is True
    assert report["summary"] == {"ok": len(report["checks"]), "warn": 0, "fail": 0}, report["checks"]
    assert "App Volumes Manager 2." in one(report, "manager")["detail"]
    assert "logged in as admin" in one(report, "manager")["detail"]
    assert "datacenter" in one(report, "vcenter")["detail"]
    datastores = {r["target"]: r for r in rows(report, "datastore")}
    assert set(datastores) == {
        "dc1/ds1 (http)",
        "dc1/ds2 (local)",
        "dc1/vsanDatastore (http)",
        "dc1/datastore1 (sftp)",
    }
    assert all("1 AppStack(s)" in r["detail"] for r in datastores.values()), datastores
    assert one(report, "ssh host key")["detail"].startswith("ssh-ed25519 SHA256:")
    staging = one(report, "staging")
    assert staging["target"] == "dc1/vsanDatastore -> ds2"
    assert "free of" in staging["detail"]
    assert "writable, not locked" in one(report, "repository")["detail"]
    assert "COMPONENT" in everything and "0 failed, 0 warning(s)" in everything
    assert SECRET not in everything
    assert vcsim_server.password not in everything
    assert log.read_text().count(" INFO ") + log.read_text().count(" DEBUG ") > 0  # -vv reached the log file


# -- failures, each with its fix ------------------------------------------------------------------------------


@pytest.mark.lab
def test_a_wrong_manager_password_fails_with_a_fix_and_never_shows_the_password(tmp_path: Path) -> None:
    ds1 = tmp_path / "ds1"
    make_store(ds1)
    with manager({"ds1": ds1}) as sim:
        cfg = write_config(tmp_path, manager_section(sim.url) + local_datastore("ds1", ds1))
        init_repo(cfg)
        wrong = "wr0ng-" + secrets.token_hex(12)
        rc, report, everything = check(cfg, env={"AVM_PW": wrong}, log=tmp_path / "check.log")
    assert rc == 1
    assert report["ok"] is False
    row = one(report, "manager")
    assert row["status"] == "fail"
    assert "refused the login of 'admin'" in row["detail"]
    assert "the environment variable AVM_PW" in row["fix"]
    assert one(report, "datastore")["status"] == "ok"  # the other endpoints are still checked
    assert one(report, "repository")["status"] == "ok"
    assert "FAIL" in everything and "to fix:" in everything
    assert wrong not in everything
    assert SECRET not in everything


def test_a_missing_password_names_the_variable_to_set(tmp_path: Path) -> None:
    ds1 = tmp_path / "ds1"
    make_store(ds1)
    cfg = write_config(tmp_path, manager_section("http://127.0.0.1:9") + local_datastore("ds1", ds1))
    init_repo(cfg)
    rc, report, _ = check(cfg)
    assert rc == 1
    row = one(report, "manager")
    assert row["status"] == "fail"
    assert "AVM_PW is not set" in row["detail"]
    assert row["fix"].startswith("set AVM_PW in the environment of the jobs")


def _ed25519_line() -> str:
    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.mark.lab
@pytest.mark.parametrize("case", ["unknown", "changed", "no file"])
def test_an_untrusted_ssh_host_key_fails_with_the_line_that_fixes_it(sshd_server, tmp_path: Path, case: str) -> None:
    make_store(Path(sshd_server.remote_path("datastore1")))
    known = tmp_path / "known_hosts"
    name = f"[{sshd_server.host}]:{sshd_server.port}"
    if case == "unknown":
        known.write_text(f"[{sshd_server.host}]:1 {_ed25519_line()}\n")  # another host's key only
    elif case == "changed":
        known.write_text(f"{name} {_ed25519_line()}\n")
    cfg = write_config(tmp_path, sftp_datastore("datastore1", sshd_server, known))
    init_repo(cfg)
    rc, report, _ = check(cfg)
    assert rc == 1
    key = one(report, "ssh host key")
    assert key["status"] == "fail"
    assert key["target"] == f"dc1/datastore1: {sshd_server.host}:{sshd_server.port}"
    assert "ssh-ed25519 SHA256:" in key["detail"]
    scan = f"ssh-keyscan -p {sshd_server.port} -t ed25519 {sshd_server.host} >> {known}"
    assert scan in key["fix"]
    if case == "changed":
        assert "but" in key["detail"] and str(known) in key["detail"]
        assert f"ssh-keygen -R '{name}' -f {known}" in key["fix"]
    elif case == "no file":
        assert "does not exist" in key["detail"]
    else:
        assert "does not list" in key["detail"]
    store = one(report, "datastore")
    assert store["status"] == "fail" and store["detail"] == "not checked: the host key is not trusted"
    if shutil.which("ssh-keyscan"):  # the fix really fixes it
        fix = key["fix"].split("then: ", 1)[-1] if case != "changed" else key["fix"].split("entry: ", 1)[1]
        fix = fix.split("; otherwise")[0]
        subprocess.run(["bash", "-c", fix], check=True, capture_output=True, timeout=60)
        rc, report, _ = check(cfg)
        assert rc == 0, report["checks"]
        assert one(report, "ssh host key")["status"] == "ok"


def test_unreachable_endpoints_fail_fast_with_what_they_met(tmp_path: Path) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections (backlog) and never answers
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    try:
        key = tmp_path / "id_rsa"
        key.write_text("not used: the connection fails first\n")
        cfg = write_config(
            tmp_path,
            manager_section(f"http://127.0.0.1:{silent.getsockname()[1]}")
            + f'[sites.dc1.vcenter]\nurl = "http://127.0.0.1:{closed_port}/sdk"\nuser = "u"\npassword_env = "AVM_PW"\n'
            '[sites.dc1.datastores.ds1]\ntransport = "http"\n'
            f'[sites.dc1.datastores.esx]\ntransport = "sftp"\nhost = "127.0.0.1"\nport = {closed_port}\n'
            f'key_file = "{key}"\nknown_hosts = "{tmp_path / "known_hosts"}"\n',
        )
        started = time.monotonic()
        proc = run_toolkit("--config", str(cfg), "--json", "check", "--timeout", "1", env={"AVM_PW": SECRET})
        took = time.monotonic() - started
    finally:
        silent.close()
    assert proc.returncode == 1, proc.stderr
    assert took < 20, took
    report = json.loads(proc.stdout)
    m = one(report, "manager")
    assert m["status"] == "fail" and m["detail"] == "cannot be reached: no answer within 1 s", m
    assert "check url in [sites.dc1.manager]" in m["fix"]
    vc = one(report, "vcenter")
    assert vc["status"] == "fail" and "connection refused" in vc["detail"], vc
    http = [r for r in rows(report, "datastore") if r["target"] == "dc1/ds1 (http)"]
    assert http and http[0]["detail"] == "not checked: vCenter cannot be reached"
    ssh = one(report, "ssh host key")
    assert ssh["status"] == "fail" and "connection refused" in ssh["detail"], ssh
    assert "TSM-SSH" in ssh["fix"]
    assert one(report, "repository")["status"] == "fail"  # never created
    assert SECRET not in proc.stdout + proc.stderr


def _make_unwritable(path: Path) -> Iterator[None]:
    """No new file in ``path``, even for root: the immutable flag, or for another user a plain chmod."""
    if os.geteuid() != 0:
        path.chmod(0o500)
        try:
            yield
        finally:
            path.chmod(0o700)
        return
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed, and root can write anywhere")
    flagged = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if flagged.returncode != 0:
        pytest.skip(f"this file system has no immutable flag: {flagged.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_repository_that_is_not_writable_fails(tmp_path: Path) -> None:
    ds1 = tmp_path / "ds1"
    make_store(ds1)
    cfg = write_config(tmp_path, local_datastore("ds1", ds1))
    init_repo(cfg)
    with contextmanager(_make_unwritable)(tmp_path / "repo" / "tmp"):
        rc, report, _ = check(cfg)
    assert rc == 1
    row = one(report, "repository")
    assert row["status"] == "fail"
    assert f"cannot create a file in {tmp_path / 'repo' / 'tmp'}" in row["detail"]
    assert "write access" in row["fix"]
    assert not list((tmp_path / "repo" / "tmp").iterdir())  # the probe left nothing behind
    rc, report, _ = check(cfg)
    assert rc == 0 and one(report, "repository")["status"] == "ok"


@pytest.mark.parametrize("holder", ["running elsewhere", "dead here"])
def test_a_held_lock_is_reported_with_its_owner(tmp_path: Path, holder: str) -> None:
    ds1 = tmp_path / "ds1"
    make_store(ds1)
    cfg = write_config(tmp_path, local_datastore("ds1", ds1))
    init_repo(cfg)
    host = "backup2.example.com" if holder == "running elsewhere" else socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = {"owner": "appstack", "pid": dead.pid, "host": host, "command": "snapshot", "since": "2026-11-20T02:30:00"}
    (tmp_path / "repo" / "locks" / "writer").write_text(json.dumps(lock))
    rc, report, _text = check(cfg)
    assert rc == 0  # a warning
    row = one(report, "repository")
    assert row["status"] == "warn"
    assert f"locked by snapshot of appstack (pid {dead.pid} on {host}" in row["detail"]
    if holder == "dead here":
        assert "no longer running" in row["detail"] and "unlock" in row["fix"]
    snapshot = run_toolkit("--config", str(cfg), "snapshot")
    assert snapshot.returncode == (Locked.exit_code if holder == "running elsewhere" else 0)


@pytest.mark.lab
def test_the_staging_datastore_of_vsan_is_known_not_vsan_and_takes_a_file(vcsim_server, tmp_path: Path) -> None:
    stores = vcsim_server.datastores
    for name in ("ds1", "ds2", "vsanDatastore"):
        make_store(stores[name])

    def config(staging: str, *, ds2_vsan: str = "false", ds2_name: str = "ds2") -> Path:
        return write_config(
            tmp_path,
            f'[sites.dc1.vcenter]\nurl = "{vcsim_server.url}"\nuser = "{vcsim_server.user}"\npassword_env = "VC_PW"\n'
            f'[sites.dc1.datastores.vsanDatastore]\ntransport = "http"\nvsan = true\n{staging}'
            f'[sites.dc1.datastores.{ds2_name}]\ntransport = "http"\nvsan = {ds2_vsan}\n'
            + local_datastore("ds1", stores["ds1"]),
        )

    env = {"VC_PW": vcsim_server.password}
    init_repo(config(""))
    rc, report, _ = check(config(""), env=env)
    assert rc == 1
    row = one(report, "staging")
    assert row["target"] == "dc1/vsanDatastore -> (none)" and row["status"] == "fail"
    assert 'set staging = "DATASTORE"' in row["fix"]

    for staging in ("ds1", "ds2"):  # a local mount and a datastore reached over HTTP through vCenter
        rc, report, _ = check(config(f'staging = "{staging}"\n'), env=env)
        assert rc == 0, report["checks"]
        row = one(report, "staging")
        assert row["status"] == "ok" and "a file was written and removed" in row["detail"], row
        assert "VMFS datastore" in row["detail"] and "free of" in row["detail"]
    assert not [p for p in stores["ds2"].iterdir() if p.name.startswith(".toolkit-check")]
    assert not [p for p in stores["ds1"].iterdir() if p.name.startswith(".toolkit-check")]

    rc, report, _ = check(config('staging = "ds9"\n', ds2_name="ds9"), env=env)  # configured, unknown to vCenter
    row = one(report, "staging")
    assert rc == 1 and "has no datastore 'ds9'" in row["detail"]
    assert row["fix"].endswith("VMFS or NFS datastores (ds1, ds2), configured as a datastore of this site")

    # a datastore configured as vSAN that vCenter reports as VMFS: a warning on its row
    rc, report, _ = check(config('staging = "ds1"\n', ds2_vsan="true"), env=env)
    ds2 = next(r for r in rows(report, "datastore") if r["target"] == "dc1/ds2 (http)")
    assert ds2["status"] == "warn" and "vCenter reports it as VMFS" in ds2["detail"]
    assert ds2["fix"] == "set vsan = false in [sites.dc1.datastores.ds2]"


@pytest.mark.lab
def test_a_self_signed_manager_gets_the_thumbprint_to_pin(tmp_path: Path) -> None:
    ds1 = tmp_path / "ds1"
    make_store(ds1)
    with manager({"ds1": ds1}, tls=True, cert_dir=tmp_path / "tls") as sim:
        cfg = write_config(tmp_path, manager_section(sim.url) + local_datastore("ds1", ds1))
        init_repo(cfg)
        rc, report, _ = check(cfg, env={"AVM_PW": SECRET})
        assert rc == 1
        row = one(report, "manager")
        assert row["status"] == "fail" and "not trusted" in row["detail"]
        thumb = sim.thumbprint_sha256
        assert thumb is not None
        pin = ":".join(thumb[i : i + 2] for i in range(0, 64, 2)).upper()
        assert f'thumbprint_sha256 = "{pin}"' in row["fix"]
        cfg = write_config(tmp_path, manager_section(sim.url, thumbprint_sha256=pin) + local_datastore("ds1", ds1))
        rc, report, _ = check(cfg, env={"AVM_PW": SECRET})
        assert rc == 0, report["checks"]
        assert one(report, "manager")["status"] == "ok"
        # the pinned certificate changes: the fix names the new one and warns
        cfg.write_text(cfg.read_text().replace(pin, "AB:" * 31 + "AB"))
        rc, report, _ = check(cfg, env={"AVM_PW": SECRET})
        row = one(report, "manager")
        assert rc == 1 and "now presents SHA-256" in row["fix"] and pin in row["fix"]


def test_check_without_any_configuration_is_bad_input(tmp_path: Path) -> None:
    proc = run_toolkit("--config", str(tmp_path / "none.toml"), "check")
    assert proc.returncode == ConfigNotFound.exit_code
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    only_repo = run_toolkit("--repo", str(tmp_path / "repo"), "--json", "check")  # no configuration file at all
    assert only_repo.returncode == 1
    assert [r["component"] for r in json.loads(only_repo.stdout)["checks"]] == ["repository"]


def test_report_and_urls_stay_free_of_credentials() -> None:
    assert redact_url("https://admin:hunter2@avm.example.com:8443/x") == "https://avm.example.com:8443/x"
    assert redact_url("https://avm.example.com") == "https://avm.example.com"
    report = CheckReport([CheckRow("a", "t", "ok", "d"), CheckRow("b", "t", "warn", "d", "f")])
    assert report.ok and report.to_json()["summary"] == {"ok": 1, "warn": 1, "fail": 0}
    report.rows.append(CheckRow("c", "t", "fail", "d", "f"))
    assert not report.ok


@pytest.mark.lab
def test_an_object_storage_repository_is_read_written_and_its_lock_reported(s3_env, s3_bucket: str) -> None:
    from toolkit.objstore import ObjectStore

    url = f"s3://{s3_bucket}/appstacks"
    before = run_toolkit("--repo", url, "--json", "check")
    assert before.returncode == 1, before.stderr
    row = one(json.loads(before.stdout), "repository")
    assert (row["target"], row["status"]) == (url, "fail")
    assert "no repository in the bucket" in row["detail"] and f"toolkit --repo {url} init" in row["fix"]

    assert run_toolkit("--repo", url, "init").returncode == 0
    ok = run_toolkit("--repo", url, "--json", "check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert one(json.loads(ok.stdout), "repository")["status"] == "ok"
    store = ObjectStore.from_url(url)
    assert list(store.list("locks/")) == []  # the probe object is gone

    lock = {"owner": "appstack", "pid": 4242, "host": "backup2.example.com", "command": "snapshot", "since": "x"}
    store.put_bytes("locks/writer", json.dumps(lock).encode())
    held = run_toolkit("--repo", url, "--json", "check")
    assert held.returncode == 0
    row = one(json.loads(held.stdout), "repository")
    assert (
        row["status"] == "warn" and "locked by snapshot of appstack (pid 4242 on backup2.example.com" in row["detail"]
    )


def test_an_encrypted_repository_opens_with_the_passphrase_the_jobs_get(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds1 = tmp_path / "ds1"
    make_store(ds1)
    monkeypatch.setenv("TOOLKIT_TESTONLY_WEAKEN_KDF", "1")
    monkeypatch.delenv("TOOLKIT_PASSPHRASE", raising=False)
    secret = "pass-" + secrets.token_hex(8)
    pfile = tmp_path / "passphrase"
    pfile.write_text(secret + "\n")
    pfile.chmod(0o600)
    cfg = write_config(tmp_path, local_datastore("ds1", ds1))
    r = run_toolkit("--config", str(cfg), "--passphrase-file", str(pfile), "init", "--encryption", "aes-256-gcm")
    assert r.returncode == 0, r.stderr

    rc, report, text = check(cfg)  # no source: the nightly job could not open it
    assert rc == 1 and secret not in text
    row = one(report, "passphrase")
    assert row["status"] == "fail" and "passphrase_file" in row["fix"]

    wrong = tmp_path / "wrong"
    wrong.write_text("not it\n")
    wrong.chmod(0o600)
    cfg.write_text(f'passphrase_file = "{wrong}"\n' + cfg.read_text())  # top level, before any table
    rc, report, text = check(cfg)
    assert rc == 1
    row = one(report, "passphrase")
    assert row["status"] == "fail" and "opens none of the 1 key slot(s)" in row["detail"], row
    cfg.write_text(cfg.read_text().replace(str(wrong), str(pfile)))
    rc, report, text = check(cfg)
    assert rc == 0, report
    assert one(report, "passphrase")["status"] == "ok" and secret not in text
