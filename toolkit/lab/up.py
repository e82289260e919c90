"""``toolkit lab up``: a simulated site in the foreground, with a ready configuration file."""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from toolkit.avm import AvmClient
from toolkit.lab.avm_sim import AvmSimulator
from toolkit.lab.corpus import make_datastore

Say = Callable[[str], None]

FOLDERS = {
    "2.x": ("cloudvolumes/apps", "cloudvolumes/writable"),
    "4.x": ("appvolumes/packages", "appvolumes/writables"),
}


def _private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_lab_config(
    directory: Path,
    manager_url: str,
    thumbprint: str | None,
    datastores: dict[str, Path],
    *,
    vcenter: Any = None,
    sshd: Any = None,
) -> Path:
    """The lab site: sftp through sshd if it runs, else datastore HTTP through vcsim, else local mounts."""
    password_file = directory / "avm-password"
    if not password_file.exists():
        _private(password_file, secrets.token_urlsafe(16) + "\n")
    pin = f'thumbprint_sha256 = "{thumbprint}"\n' if thumbprint else ""
    stores = ""
    for name, path in datastores.items():
        stores += f"\n[sites.lab.datastores.{name}]\n"
        if sshd is not None:
            stores += (
                f'transport = "sftp"\nhost = "{sshd.host}"\nport = {sshd.port}\nuser = "{sshd.username}"\n'
                f'key_file = "{sshd.client_key_path}"\nknown_hosts = "{sshd.known_hosts_path}"\npath = "{path}"\n'
            )
        elif vcenter is not None:
            stores += 'transport = "http"\n'
        else:
            stores += f'transport = "local"\npath = "{path}"\n'
    if vcenter is not None:
        vc_password = directory / "vcenter-password"
        _private(vc_password, vcenter.password + "\n")
        stores += (
            f'\n[sites.lab.vcenter]\nurl = "{vcenter.url}"\nuser = "{vcenter.user}"\n'
            f'password_file = "{vc_password}"\ndatacenter = "{vcenter.datacenter}"\n'
        )
    config = directory / "toolkit.toml"
    _private(
        config,
        f"""# Written by `toolkit lab up`: a simulated site on this machine.
repository = "{directory / "repo"}"

[sites.lab]
writables = "skip"

[sites.lab.manager]
url = "{manager_url}"
user = "admin"
password_file = "{password_file}"
{pin}{stores}""",
    )
    return config


def lab_up(
    directory: Path,
    say: Say,
    *,
    flavour: Literal["2.x", "4.x"] = "2.x",
    tls: bool = False,
    port: int = 0,
    vcsim: bool = False,
    sshd: bool = False,
    stop: threading.Event | None = None,
    ready: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Start the lab and block until ``stop`` is set (Ctrl-C in the CLI)."""
    directory.mkdir(parents=True, exist_ok=True)
    stores = {"ds1": directory / "ds1", "ds2": directory / "ds2"}
    fresh = not stores["ds1"].exists()
    for p in stores.values():
        p.mkdir(exist_ok=True)
    if fresh:
        say(f"creating sample volumes in {stores['ds1']}")
        make_datastore(stores["ds1"], flavour=flavour, count=3, size_mib=32, seed=1)
    password_file = directory / "avm-password"
    if not password_file.exists():
        _private(password_file, secrets.token_urlsafe(16) + "\n")
    password = password_file.read_text().strip()
    stop = stop or threading.Event()
    with contextlib.ExitStack() as peers:
        vc = ssh = None
        if vcsim:
            from toolkit.lab.vcsim import VcsimServer, build_vcsim

            say("starting vcsim (the first start builds it, which takes a minute)")
            vc = peers.enter_context(VcsimServer(stores, binary=build_vcsim()))
        if sshd:
            from toolkit.lab.sshd import SshdServer

            ssh = peers.enter_context(SshdServer(directory / "sshd", datastores=()))
        _serve(directory, stores, password, password_file, say, flavour, tls, port, stop, ready, vc, ssh)
    say("lab stopped")


def _serve(
    directory: Path,
    stores: dict[str, Path],
    password: str,
    password_file: Path,
    say: Say,
    flavour: Literal["2.x", "4.x"],
    tls: bool,
    port: int,
    stop: threading.Event,
    ready: Callable[[dict[str, Any]], None] | None,
    vc: Any,
    ssh: Any,
) -> None:
    with AvmSimulator(
        stores,
        flavour=flavour,
        tls=tls,
        cert_dir=directory / "tls" if tls else None,
        port=port,
        password=password,
        storage_groups={"sg1": ["ds1", "ds2"]},
        job_delay_s=0.2,
        replication_interval_s=60.0,
    ) as sim:
        client = AvmClient(sim.url, "admin", password, verify=str(sim.cert_path) if tls else True)
        for folder in FOLDERS[flavour]:
            if (stores["ds1"] / folder).is_dir():
                client.import_folder("ds1", folder)
        client.wait_jobs(60)
        sim.replicate_now()
        config = write_lab_config(
            directory, sim.url, sim.thumbprint_sha256 if tls else None, stores, vcenter=vc, sshd=ssh
        )
        facts: dict[str, Any] = {
            "manager_url": sim.url,
            "manager_user": "admin",
            "manager_password_file": str(password_file),
            "flavour": flavour,
            "thumbprint_sha256": sim.thumbprint_sha256 if tls else None,
            "datastores": {k: str(v) for k, v in stores.items()},
            "config": str(config),
        }
        say(f"App Volumes Manager {flavour} simulator: {sim.url}  (user admin, password in {password_file})")
        if tls:
            say(f"  certificate SHA-256 thumbprint: {sim.thumbprint_sha256}")
        for name, path in stores.items():
            say(f"datastore {name}: {path}")
        say("storage group sg1 = ds1, ds2 (replication every 60 s; deletions propagate)")
        if vc is not None:
            facts["vcenter_url"] = vc.url
            say(f"vCenter simulator: {vc.url} (user {vc.user}, datacenter {vc.datacenter})")
        if ssh is not None:
            facts["sshd"] = f"{ssh.username}@{ssh.host}:{ssh.port}"
            say(f"SSH (ESXi stand-in): {ssh.username}@{ssh.host}:{ssh.port}, key {ssh.client_key_path}")
        say(f"configuration: {config}")
        say(f"try:  export TOOLKIT_CONFIG={config}; toolkit init; toolkit snapshot; toolkit volumes")
        say("Ctrl-C stops the lab.")
        if ready is not None:
            ready(facts)
        stop.wait()
