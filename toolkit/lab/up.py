"""``toolkit lab up``: a simulated site in the foreground, with a ready configuration file."""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import requests

from toolkit.avm import AvmClient
from toolkit.lab.avm_sim import AvmSimulator, VolumeInfo
from toolkit.lab.avm_sim.errors import SimulatorError
from toolkit.lab.corpus import make_datastore

Say = Callable[[str], None]

FOLDERS = {
    "2.x": ("cloudvolumes/apps", "cloudvolumes/writable"),
    "4.x": ("appvolumes/packages", "appvolumes/writables"),
}
SEED_TIMEOUT_S: Final = 30.0  # a loopback call to the simulator; longer means it hangs


@dataclass(frozen=True, slots=True)
class SampleAssignment:
    """One assignment the lab's manager holds, as an admin made it."""

    volume: str  # the AppStack's or package's name in the manager
    entity_type: str  # User | Group
    path: str  # the entity's directory path (distinguished name)
    pinned: bool = False  # 4.x: to the package itself; else through its application's CURRENT marker
    computer_prefix: str = ""  # only on computers whose name starts so (2.x mount prefix, 4.x filter)


# Office 2016 is the runbook's corrupted AppStack: the switch drill moves a user and a group
# (4.x: a pin and a CURRENT-marker assignment). Adobe Reader DC is its deleted one.
SAMPLE_ASSIGNMENTS: Final = (
    SampleAssignment("Office 2016", "User", "CN=jdoe,OU=Users,DC=lab,DC=example", pinned=True, computer_prefix="VDI"),
    SampleAssignment("Office 2016", "Group", "CN=Designers,OU=Groups,DC=lab,DC=example"),
    SampleAssignment("Adobe Reader DC", "Group", "CN=Domain Users,CN=Users,DC=lab,DC=example"),
)


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


def fill_manager(sim: AvmSimulator) -> list[str]:
    """Give the lab's manager what a site's holds: the volumes on ds1 imported and replicated, some assigned.

    ``toolkit lab up`` and the test of the guides' commands both build the site with this.
    Returns one line per assignment made (see :func:`assign_samples`).
    """
    verify: bool | str = str(sim.cert_path) if sim.cert_path else True
    client = AvmClient(sim.url, sim.settings.username, sim.settings.password, verify=verify)
    root = sim.datastore_root("ds1")
    for folder in FOLDERS[sim.flavour]:
        if (root / folder).is_dir():
            client.import_folder("ds1", folder)
    client.wait_jobs(60)
    client.logout()
    sim.replicate_now()
    return assign_samples(sim)


def assign_samples(sim: AvmSimulator) -> list[str]:
    """Make :data:`SAMPLE_ASSIGNMENTS` through the manager's own API, as an admin's console does; one line each.

    A sample volume the manager does not list (deleted in an earlier run of the lab) is left out.
    """
    listed = {v.name: v for v in sim.volumes() if v.kind in ("appstack", "package")}
    sessions = "/app_volumes/sessions" if sim.flavour == "4.x" else "/cv_api/sessions"
    lines = []
    with requests.Session() as session:
        login = {"username": sim.settings.username, "password": sim.settings.password}
        _seed_call(sim, session, "POST", sessions, json=login)
        for a in SAMPLE_ASSIGNMENTS:
            volume = listed.get(a.volume)
            if volume is None:
                continue
            assign = _assign_appstack if sim.flavour == "2.x" else _assign_package
            how = assign(sim, session, volume, a)
            name = a.path.split(",", 1)[0].split("=", 1)[-1]
            lines.append(f"{a.volume!r} assigned to {a.entity_type.lower()} {name}{how}")
        _seed_call(sim, session, "DELETE", sessions)
    return lines


def _assign_appstack(sim: AvmSimulator, session: requests.Session, volume: VolumeInfo, a: SampleAssignment) -> str:
    """2.x: ``POST /cv_api/assignments``; how the assignment reads."""
    entity = {"entity_type": a.entity_type, "path": a.path}
    body = {"action_type": "assign", "id": volume.id, "assignments": [entity], "mount_prefix": a.computer_prefix}
    _seed_call(sim, session, "POST", "/cv_api/assignments", json=body)
    return f" on computers named {a.computer_prefix}*" if a.computer_prefix else ""


def _assign_package(sim: AvmSimulator, session: requests.Session, volume: VolumeInfo, a: SampleAssignment) -> str:
    """4.x: the package pinned, or made its application's CURRENT and assigned through the marker; how it reads."""
    entity = {"entity_type": a.entity_type, "path": a.path}
    item: dict[str, Any] = {"app_product_id": volume.product_id, "entities": [entity]}
    if a.pinned:
        item |= {"app_package_id": volume.id, "app_marker_id": None}
        how = ", pinned to the package"
    else:
        path = f"/app_volumes/app_products/{volume.product_id}/app_markers/CURRENT"
        marker = _seed_call(sim, session, "PUT", path, params={"data[app_package_id]": volume.id})
        item |= {"app_package_id": None, "app_marker_id": marker["data"]["id"]}
        how = ", through the CURRENT marker"
    if a.computer_prefix:
        item["filters"] = [{"type": "ComputerPrefixFilter", "value": a.computer_prefix}]
        how = f" on computers named {a.computer_prefix}*{how}"
    _seed_call(sim, session, "POST", "/app_volumes/app_assignments", json={"data": [item]})
    return how


def _seed_call(sim: AvmSimulator, session: requests.Session, method: str, path: str, **kw: Any) -> Any:
    """One call to the simulator's manager API; its JSON answer. Anything but a 2xx is a bug of the lab."""
    verify: bool | str = str(sim.cert_path) if sim.cert_path else True
    r = session.request(method, sim.url + path, timeout=SEED_TIMEOUT_S, verify=verify, **kw)
    if not r.ok:
        raise SimulatorError(detail=f"{method} {path} answered HTTP {r.status_code}: {r.text[:300]}")
    return r.json() if r.content else None


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
        assigned = fill_manager(sim)
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
        for line in assigned:
            say(f"manager: {line}")
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
