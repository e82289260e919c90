"""``toolkit check``: every endpoint of the configuration tested, each answer a row with its fix.

What is tested, per site: the App Volumes Manager (version, then a login), vCenter
(a login and its datastores), every datastore through its transport (opened and
listed; the App Volumes folders counted), the SSH host key of every SFTP
datastore (known, unknown or changed, against its known_hosts), and the staging
datastore of every vSAN datastore (a dot file written and removed at its root),
and the copy host of vSAN datastores that have one (a login, and both the vSAN and
the staging datastore mounted there); then the repository (a file created and removed in its ``tmp/``, and who holds
its lock). Nothing else is written anywhere.

Each endpoint runs in its own thread with short timeouts, so one host that does
not answer costs its budget, not the whole run. A failure becomes a row with a
fix, never an exception; secrets are read to log in and never appear in a row.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

from catalog.errors import Error
from catalog.lock import STALE_AFTER_S, parse_lock, read_lock
from catalog.remote import WRITER
from catalog.repo import read_config
from toolkit.config import (
    CHECK_TIMEOUT_S,
    Config,
    CopyHostConfig,
    DatastoreConfig,
    ManagerConfig,
    Secret,
    SecretUnavailable,
    SiteConfig,
    TlsConfig,
)
from toolkit.location import remote_url
from toolkit.progress import human_bytes
from toolkit.transports.base import Transport
from toolkit.vmdk import is_descriptor_name, volume_kind

if TYPE_CHECKING:
    import paramiko

    from toolkit.avm import AvmClient
    from toolkit.vsphere import DatastoreInfo

DEFAULT_TIMEOUT_S: Final = CHECK_TIMEOUT_S
BUDGET_TIMEOUTS: Final = 3  # an endpoint gets at most three timeouts in all (connect, log in, list)
LIST_LIMIT_FILES: Final = 20_000  # a datastore's listing stops here: enough to prove it, bounded on a large one
KEYSCAN_TYPES: Final = {"ssh-rsa": "rsa", "ssh-ed25519": "ed25519", "ssh-dss": "dsa"}  # else ecdsa

Status = Literal["ok", "warn", "fail"]

LOCK_HINT: Final = (
    "a job is running; a lock left by a job that died is taken over by the next job (at once on the same host, "
    f"{STALE_AFTER_S / 60:.0f} minutes after its last refresh from another); once sure it is gone: "
    "toolkit unlock --force"
)


@dataclass(frozen=True, slots=True)
class CheckRow:
    component: str  # manager | vcenter | datastore | ssh host key | staging | copy host | repository
    target: str
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "component": self.component,
            "target": self.target,
            "status": self.status,
            "detail": self.detail,
            "fix": self.fix,
        }


@dataclass(slots=True)
class CheckReport:
    rows: list[CheckRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(r.status == "fail" for r in self.rows)

    def count(self, status: Status) -> int:
        return sum(1 for r in self.rows if r.status == status)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "summary": {s: self.count(s) for s in ("ok", "warn", "fail")},
            "checks": [r.to_json() for r in self.rows],
        }


def check_endpoints(
    config: Config | None,
    repository: Path | None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    allow_other_owner: bool = False,
) -> CheckReport:
    """Test every endpoint of ``config`` and the repository; the rows come in configuration order."""
    groups: list[_Group] = []
    for site in config.sites if config is not None else ():
        groups += _site_groups(site, timeout_s)
    report = CheckReport(_run(groups, timeout_s * BUDGET_TIMEOUTS))
    report.rows += check_repository(repository, allow_other_owner=allow_other_owner)
    return report


# -- running the endpoint groups --------------------------------------------------------------------------------


class _Group:
    """The rows of one endpoint (and of what depends on it), filled by ``work`` in a thread of its own."""

    def __init__(self, expected: list[tuple[str, str]], work: Callable[[_Group], None]) -> None:
        self.expected = expected
        self.work = work
        self.rows: list[CheckRow] = []
        self.failure: BaseException | None = None
        self._lock = threading.Lock()

    def add(self, component: str, target: str, status: Status, detail: str, fix: str = "") -> None:
        with self._lock:
            self.rows.append(CheckRow(component, target, status, detail, fix))

    def collected(self) -> list[CheckRow]:
        with self._lock:
            return list(self.rows)

    def missing(self) -> list[tuple[str, str]]:
        with self._lock:
            have = {(r.component, r.target) for r in self.rows}
        return [e for e in self.expected if e not in have]

    def fail_rest(self, detail: str, fix: str = "") -> None:
        """Rows that depend on a step that failed: not checked."""
        for component, target in self.missing():
            self.add(component, target, "fail", detail, fix)

    def run(self) -> None:
        try:
            self.work(self)
        except Error as exc:  # an adapter error no step expected: still a row, never a lost endpoint
            self.fail_rest(str(exc), exc.hint_text)
        except BaseException as exc:  # noqa: BLE001 (a bug: kept, and re-raised in the caller's thread)
            self.failure = exc


def _run(groups: list[_Group], budget_s: float) -> list[CheckRow]:
    threads = [threading.Thread(target=g.run, name="check", daemon=True) for g in groups]
    for t in threads:
        t.start()
    deadline = time.monotonic() + budget_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    rows: list[CheckRow] = []
    for g, t in zip(groups, threads, strict=True):
        if g.failure is not None:
            raise g.failure
        if t.is_alive():  # still waiting for an answer: left behind (a daemon thread), reported as such
            g.fail_rest(
                f"no answer within {budget_s:.0f} s",
                "check the network path to this endpoint and that its service runs; or give more --timeout",
            )
        order = {e: i for i, e in enumerate(g.expected)}
        rows += sorted(g.collected(), key=lambda r: order.get((r.component, r.target), len(order)))
    return rows


def _site_groups(site: SiteConfig, timeout_s: float) -> list[_Group]:
    groups: list[_Group] = []
    if site.manager is not None:
        m = site.manager
        target = f"{site.name}: {redact_url(m.url)}"
        groups.append(_Group([("manager", target)], lambda g: _check_manager(g, site.name, m, target, timeout_s)))
    vsan = [d for d in site.datastores if d.vsan]
    http = [d for d in site.datastores if d.transport == "http"]
    if site.vcenter is not None:  # the configuration refuses vSAN datastores in a site without one
        expected = [("vcenter", f"{site.name}: {redact_url(site.vcenter.url)}")]
        expected += [("datastore", _ds_target(site, d)) for d in http]
        expected += [("staging", _staging_target(site, d)) for d in vsan]
        groups.append(_Group(expected, lambda g: _check_vcenter(g, site, http, vsan, timeout_s)))
    served: dict[str, tuple[CopyHostConfig, list[DatastoreConfig]]] = {}
    for ds in vsan:
        host = site.copy_host_of(ds)
        if host is not None:
            served.setdefault(host.where, (host, []))[1].append(ds)
    for host, stores in served.values():
        expected = [("copy host", _copy_host_target(site, d, host)) for d in stores]
        groups.append(
            _Group(expected, partial(_check_copy_host, site=site, host=host, stores=stores, timeout_s=timeout_s))
        )
    for ds in site.datastores:
        if ds.transport == "sftp":
            expected = [("ssh host key", _ssh_target(site, ds)), ("datastore", _ds_target(site, ds))]
            groups.append(_Group(expected, partial(_check_sftp, site=site, ds=ds, timeout_s=timeout_s)))
        elif ds.transport == "local":
            work = partial(_check_local, site=site, ds=ds, timeout_s=timeout_s)
            groups.append(_Group([("datastore", _ds_target(site, ds))], work))
    return [g for g in groups if g.expected]


def _ds_target(site: SiteConfig, ds: DatastoreConfig) -> str:
    return f"{site.name}/{ds.name} ({ds.transport})"


def _ssh_target(site: SiteConfig, ds: DatastoreConfig) -> str:
    return f"{site.name}/{ds.name}: {ds.host}:{ds.port}"


def _staging_target(site: SiteConfig, ds: DatastoreConfig) -> str:
    return f"{site.name}/{ds.name} -> {ds.staging or '(none)'}"


def _copy_host_target(site: SiteConfig, ds: DatastoreConfig, host: CopyHostConfig) -> str:
    return f"{site.name}/{ds.name}: {redact_url(host.url)}"


# -- text helpers ------------------------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """The URL without any user or password written into it."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def secret_source(secret: Secret) -> str:
    """Where a password comes from, in words; never the password."""
    if secret.env is not None:
        return f"the environment variable {secret.env}"
    if secret.file is not None:
        return f"the file {secret.file}"
    if secret.command is not None:
        return "the output of password_command"
    return "the inline password"


def secret_fix(secret: Secret, where: str) -> str:
    if secret.env is not None:
        return (
            f"set {secret.env} in the environment of the jobs (the timers read /etc/appstack-toolkit/env, those of "
            "schedule --name NAME then /etc/appstack-toolkit/NAME.env), "
            f"or use password_file in {where}"
        )
    if secret.file is not None:
        return f"write the password into {secret.file}, then: chmod 600 {secret.file}"
    if secret.command is not None:
        return f"make password_command in {where} print the password: run it by hand to see why it fails"
    return f"give the password with password_env or password_file in {where}"


def _get_secret(g: _Group, secret: Secret, where: str, component: str, target: str) -> str | None:
    try:
        return secret.get()
    except SecretUnavailable as exc:
        g.add(component, target, "fail", str(exc), secret_fix(secret, where))
        g.fail_rest(f"not checked: the {component} password is unavailable")
        return None


def _network_reason(exc: BaseException, timeout_s: float) -> str:
    """What a failed connection met, in a few words, from the exception chain."""
    texts: list[str] = []
    cause: BaseException | None = exc
    while cause is not None and len(texts) < 6:
        texts.append(f"{type(cause).__name__} {cause}".lower())
        cause = cause.__cause__ or cause.__context__
    text = " ".join(texts)
    if "refused" in text:
        return "connection refused"
    if "timeout" in text or "timed out" in text:
        return f"no answer within {timeout_s:g} s"
    if "name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text:
        return "the host name does not resolve"
    if "unreachable" in text:
        return "no route to the host"
    return type(exc.__cause__ or exc).__name__


def certificate_thumbprint(url: str, timeout_s: float) -> str | None:
    """SHA-256 of the certificate the server at ``url`` presents (not verified: only to show it), or None."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return None
    try:
        pem = ssl.get_server_certificate((parts.hostname, parts.port or 443), timeout=timeout_s)
    except (OSError, ssl.SSLError, ValueError):
        return None
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _tls_fix(url: str, what: str, where: str, timeout_s: float, *, pinned: bool) -> str:
    thumb = certificate_thumbprint(url, timeout_s)
    if thumb is None:
        return f"give the CA that signed the {what}'s certificate (ca_bundle) or pin it (thumbprint_sha256) in {where}"
    if pinned:
        return (
            f"the {what} now presents SHA-256 {thumb}; only if its certificate was replaced on purpose "
            f'(check on the {what} itself), pin it in {where}: thumbprint_sha256 = "{thumb}"'
        )
    return (
        f"check that the {what} itself shows SHA-256 {thumb}, then pin the certificate in {where}: "
        f'thumbprint_sha256 = "{thumb}" (or give the CA that signed it: ca_bundle = "PEM file")'
    )


# -- App Volumes Manager -----------------------------------------------------------------------------------------


def _check_manager(g: _Group, site: str, m: ManagerConfig, target: str, timeout_s: float) -> None:
    from toolkit.avm import AvmClient
    from toolkit.sites import tls_verify

    where = f"[sites.{site}.manager]"
    password = _get_secret(g, m.password, where, "manager", target)
    if password is None:
        return
    client = AvmClient(
        m.url,
        m.user,
        password,
        verify=tls_verify(m.tls),
        thumbprint_sha256=m.tls.thumbprint_sha256,
        timeout_s=timeout_s,
    )
    try:
        status, detail, fix = _manager_login(client, m, where, timeout_s)
    finally:
        client.session.close()
    g.add("manager", target, status, detail, fix)


def _manager_login(client: AvmClient, m: ManagerConfig, where: str, timeout_s: float) -> tuple[Status, str, str]:
    from toolkit.avm import AvmBadResponse, AvmLoginFailed, AvmTlsRefused, AvmUnreachable

    try:
        version = client.version()
        client.login()
    except AvmTlsRefused as exc:
        pinned = m.tls.thumbprint_sha256 is not None
        return "fail", str(exc), _tls_fix(m.url, "manager", where, timeout_s, pinned=pinned)
    except AvmUnreachable as exc:
        return (
            "fail",
            f"cannot be reached: {_network_reason(exc, timeout_s)}",
            f"check url in {where} (scheme, host, port), the network path, and that the manager's service runs",
        )
    except AvmLoginFailed as exc:
        return (
            "fail",
            str(exc),
            f"check user = {m.user!r} and the password in {secret_source(m.password)}; "
            "the user must be an App Volumes administrator",
        )
    except AvmBadResponse as exc:
        return "fail", str(exc), f"is url in {where} the App Volumes Manager? {exc.hint_text}"
    with contextlib.suppress(Error):
        client.logout()
    detail = f"App Volumes Manager {version.text} ({version.flavour} API); logged in as {m.user}"
    if urlsplit(m.url).scheme == "https" and not _tls_checked(m.tls):
        return "warn", detail + "; TLS verification is off", _tls_fix(m.url, "manager", where, timeout_s, pinned=False)
    return "ok", detail, ""


def _tls_checked(tls: TlsConfig) -> bool:
    return tls.verify or tls.ca_bundle is not None or tls.thumbprint_sha256 is not None


# -- vCenter, its datastores, and the staging datastores of vSAN ------------------------------------------------------


def _check_vcenter(
    g: _Group,
    site: SiteConfig,
    http: list[DatastoreConfig],
    vsan: list[DatastoreConfig],
    timeout_s: float,
) -> None:
    from toolkit.vsphere import (
        VsphereCertificateMismatch,
        VsphereConfig,
        VsphereDatacenterNotFound,
        VsphereLoginFailed,
        VsphereTlsFailed,
        VsphereUnreachable,
        connect,
    )

    vc = site.vcenter
    if vc is None:
        return
    target = f"{site.name}: {redact_url(vc.url)}"
    where = f"[sites.{site.name}.vcenter]"
    password = _get_secret(g, vc.password, where, "vcenter", target)
    if password is None:
        return
    settings = VsphereConfig(
        vc.url, vc.user, password, vc.datacenter, vc.tls.ca_bundle, vc.tls.thumbprint_sha256, timeout_s=timeout_s
    )
    fix = ""
    try:
        client = connect(settings)
    except VsphereLoginFailed as exc:
        fix = f"check user = {vc.user!r} (user@domain) and the password in {secret_source(vc.password)}"
        failure: Error = exc
    except (VsphereTlsFailed, VsphereCertificateMismatch) as exc:
        pinned = vc.tls.thumbprint_sha256 is not None
        fix = _tls_fix(vc.url, "vCenter", where, timeout_s, pinned=pinned)
        failure = exc
    except VsphereUnreachable as exc:
        g.add(
            "vcenter",
            target,
            "fail",
            f"cannot be reached: {_network_reason(exc, timeout_s)}",
            f"check url in {where}, the network path, and that the vCenter services run",
        )
        g.fail_rest("not checked: vCenter cannot be reached")
        return
    except VsphereDatacenterNotFound as exc:
        fix = f"set datacenter in {where} to one of: {exc.fields['known']}"
        failure = exc
    except Error as exc:
        fix = exc.hint_text
        failure = exc
    else:
        with client:
            stores = {d.name: d for d in client.datastores()}
            g.add(
                "vcenter",
                target,
                "ok",
                f"logged in as {vc.user}; datacenter {client.datacenter} with {len(stores)} datastore(s)",
            )
            for ds in http:
                _check_http_datastore(g, site, ds, client, stores, timeout_s)
            for ds in vsan:
                _check_staging(g, site, ds, client, stores, timeout_s)
        return
    g.add("vcenter", target, "fail", str(failure), fix)
    g.fail_rest("not checked: the vCenter login failed")


def _check_http_datastore(
    g: _Group,
    site: SiteConfig,
    ds: DatastoreConfig,
    client: Any,
    stores: dict[str, DatastoreInfo],
    timeout_s: float,
) -> None:
    from toolkit.transports.datastore_http import DatastoreHttpTransport

    target = _ds_target(site, ds)
    info = stores.get(ds.name)
    if info is None:
        g.add(
            "datastore",
            target,
            "fail",
            f"vCenter's datacenter {client.datacenter} has no datastore {ds.name!r}",
            f"rename [sites.{site.name}.datastores.{ds.name}] to one of: {', '.join(sorted(stores)) or 'none'}",
        )
        return
    if not info.accessible:
        g.add("datastore", target, "fail", "vCenter reports it inaccessible", "check its mount on the hosts in vCenter")
        return
    transport = DatastoreHttpTransport(client, ds.name, timeout_s=(timeout_s, timeout_s))
    status, detail, fix = _listing(transport, time.monotonic() + timeout_s, http=True)
    if status != "fail" and info.is_vsan != ds.vsan:
        status, detail = "warn", detail + f"; vCenter reports it as {info.type}, the configuration says otherwise"
        fix = f"set vsan = {str(info.is_vsan).lower()} in [sites.{site.name}.datastores.{ds.name}]"
    g.add("datastore", target, status, f"{info.type}: {detail}", fix)


def _check_staging(
    g: _Group,
    site: SiteConfig,
    ds: DatastoreConfig,
    client: Any,
    stores: dict[str, DatastoreInfo],
    timeout_s: float,
) -> None:
    """The staging datastore of a vSAN datastore: known to vCenter, not vSAN, reachable, takes a file."""
    target = _staging_target(site, ds)
    where = f"[sites.{site.name}.datastores.{ds.name}]"
    staging = next((d for d in site.datastores if d.name == ds.staging), None)
    if staging is None:
        g.add(
            "staging",
            target,
            "fail",
            "a vSAN datastore needs a staging datastore: its disks are copied there to be read and written",
            f'set staging = "DATASTORE" (a VMFS or NFS datastore of this site, with room for the largest disk) '
            f"in {where}",
        )
        return
    info = stores.get(staging.name)
    if info is None:
        names = ", ".join(n for n, i in sorted(stores.items()) if not i.is_vsan) or "none"
        g.add(
            "staging",
            target,
            "fail",
            f"vCenter's datacenter {client.datacenter} has no datastore {staging.name!r}",
            f"set staging in {where} to one of vCenter's VMFS or NFS datastores ({names}), "
            "configured as a datastore of this site",
        )
        return
    if info.is_vsan:
        g.add(
            "staging",
            target,
            "fail",
            f"vCenter reports {staging.name} as vSAN itself",
            "stage on a VMFS or NFS datastore",
        )
        return
    if not info.accessible:
        g.add("staging", target, "fail", f"vCenter reports {staging.name} inaccessible", "check its mount in vCenter")
        return
    space = f"{human_bytes(info.free_bytes)} free of {human_bytes(info.capacity_bytes)}"
    with contextlib.ExitStack() as stack:
        problem = _write_probe(_open_transport(site, staging, client, stack, timeout_s))
    if problem is not None:
        g.add(
            "staging",
            target,
            "fail",
            f"{info.type} datastore, {space}; a file cannot be written there: {problem}",
            f"the staging copies are written through the transport of [sites.{site.name}.datastores.{staging.name}]: "
            "give its user write access",
        )
        return
    detail = f"{info.type} datastore, {space}; a file was written and removed"
    if site.copy_host_of(ds) is None:
        detail += "; vCenter makes the copies, thick (the largest vSAN disk's full size must be free there)"
    g.add("staging", target, "ok", detail)


# -- the copy host of vSAN datastores --------------------------------------------------------------------------


def _check_copy_host(
    g: _Group, site: SiteConfig, host: CopyHostConfig, stores: list[DatastoreConfig], timeout_s: float
) -> None:
    """An ESXi host logged into directly: it takes the login, and mounts each vSAN datastore and its staging."""
    from toolkit.ops.vsan import CopyHostUnsuitable, check_copy_host
    from toolkit.vsphere import (
        VsphereCertificateMismatch,
        VsphereConfig,
        VsphereLoginFailed,
        VsphereTlsFailed,
        VsphereUnreachable,
        connect,
    )

    first = _copy_host_target(site, stores[0], host)
    password = _get_secret(g, host.password, host.where, "copy host", first)
    if password is None:
        return
    settings = VsphereConfig(
        host.url,
        host.user,
        password,
        None,
        host.tls.ca_bundle,
        host.tls.thumbprint_sha256,
        timeout_s=timeout_s,
        server="ESXi host",
    )
    try:
        client = connect(settings)
    except VsphereLoginFailed as exc:
        g.add(
            "copy host",
            first,
            "fail",
            str(exc),
            f"check user = {host.user!r} in {host.where} and the password in {secret_source(host.password)}",
        )
    except (VsphereTlsFailed, VsphereCertificateMismatch) as exc:
        pinned = host.tls.thumbprint_sha256 is not None
        g.add(
            "copy host", first, "fail", str(exc), _tls_fix(host.url, "ESXi host", host.where, timeout_s, pinned=pinned)
        )
    except VsphereUnreachable as exc:
        g.add(
            "copy host",
            first,
            "fail",
            f"cannot be reached: {_network_reason(exc, timeout_s)}",
            f"check url in {host.where}, the network path, and that the host's management service (hostd) runs",
        )
    else:
        with client:
            for ds in stores:
                target = _copy_host_target(site, ds, host)
                try:
                    check_copy_host(client, ds.name, ds.staging)
                except CopyHostUnsuitable as exc:
                    g.add("copy host", target, "fail", str(exc), exc.hint_text)
                    continue
                g.add(
                    "copy host",
                    target,
                    "ok",
                    f"logged in as {host.user}; mounts {ds.name} and {ds.staging or '(no staging)'}: "
                    "the staging copies are thin",
                )
        return
    g.fail_rest("not checked: the copy host login failed")


def _open_transport(
    site: SiteConfig, ds: DatastoreConfig, client: Any, stack: contextlib.ExitStack, timeout_s: float
) -> Transport:
    """The transport of a configured datastore, with this check's timeouts; closed with ``stack``."""
    if ds.transport == "http":
        from toolkit.transports.datastore_http import DatastoreHttpTransport

        return DatastoreHttpTransport(client, ds.name, timeout_s=(timeout_s, timeout_s))
    if ds.transport == "sftp":
        from toolkit.transports.sftp import SftpAuth, SftpTransport

        password = ds.password.get() if ds.password is not None else None
        auth = SftpAuth(known_hosts_path=ds.known_hosts, key_path=ds.key_file, password=password)
        transport = SftpTransport(ds.host, ds.port, ds.user, ds.path, auth, timeout_s=timeout_s)
        stack.callback(transport.close)
        return transport
    from toolkit.transports.local import LocalTransport

    return LocalTransport(Path(ds.path))


def _write_probe(transport: Transport) -> str | None:
    """Write a small dot file at the datastore's root and remove it; why that failed, or None."""
    name = f".toolkit-check-{uuid.uuid4().hex}"
    data = b"toolkit check\n"
    try:
        with transport.open_write(name, len(data), time.time_ns()) as write_at:
            write_at(0, data)
        transport.remove(name)
    except Error as exc:
        return str(exc)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


# -- datastores over SFTP and local mounts -------------------------------------------------------------------------


def _check_local(g: _Group, site: SiteConfig, ds: DatastoreConfig, timeout_s: float) -> None:
    from toolkit.transports.local import LocalTransport

    target = _ds_target(site, ds)
    root = Path(ds.path)
    if not root.is_dir():
        g.add(
            "datastore",
            target,
            "fail",
            f"{root} is not a directory",
            f"mount the datastore at {root}, or fix path in [sites.{site.name}.datastores.{ds.name}]",
        )
        return
    status, detail, fix = _listing(LocalTransport(root), time.monotonic() + timeout_s, http=False)
    g.add("datastore", target, status, f"{root}: {detail}", fix)


def _check_sftp(g: _Group, site: SiteConfig, ds: DatastoreConfig, timeout_s: float) -> None:
    from toolkit.transports.sftp import SftpAuth, SftpTransport

    key_target, target = _ssh_target(site, ds), _ds_target(site, ds)
    where = f"[sites.{site.name}.datastores.{ds.name}]"
    try:
        sock = socket.create_connection((ds.host, ds.port), timeout=timeout_s)
    except OSError as exc:
        g.add(
            "ssh host key",
            key_target,
            "fail",
            f"cannot connect to {ds.host}:{ds.port}: {_network_reason(exc, timeout_s)}",
            f"check host and port in {where}, the network path, and that SSH runs on the host "
            "(ESXi: start the TSM-SSH service)",
        )
        g.fail_rest("not checked: the SSH host cannot be reached")
        return
    status, detail, fix = host_key_status(sock, ds.host, ds.port, ds.known_hosts, timeout_s)
    g.add("ssh host key", key_target, status, detail, fix)
    if status != "ok":
        g.fail_rest("not checked: the host key is not trusted")
        return
    password = None
    if ds.password is not None:
        password = _get_secret(g, ds.password, where, "datastore", target)
        if password is None:
            return
    auth = SftpAuth(known_hosts_path=ds.known_hosts, key_path=ds.key_file, password=password)
    transport = SftpTransport(ds.host, ds.port, ds.user, ds.path, auth, timeout_s=timeout_s)
    try:
        transport.connect()
        status, detail, fix = _listing(transport, time.monotonic() + timeout_s, http=False)
    finally:
        transport.close()
    g.add("datastore", target, status, f"{ds.user}@{ds.host}:{ds.path}: {detail}", fix)


def host_key_status(
    sock: socket.socket, host: str, port: int, known_hosts: Path | None, timeout_s: float
) -> tuple[Status, str, str]:
    """Whether the key the SSH server on ``sock`` offers is the one known_hosts lists: ok, or fail with a fix."""
    import paramiko

    from toolkit.transports.sftp import key_fingerprint, known_hosts_name

    name = known_hosts_name(host, port)
    known = paramiko.HostKeys()
    source = str(known_hosts) if known_hosts is not None else "no known_hosts file"
    present = known_hosts is not None and known_hosts.is_file()
    if present and known_hosts is not None:
        try:
            known.load(str(known_hosts))
        except OSError as exc:
            sock.close()
            return "fail", f"cannot read {known_hosts}: {exc.strerror or exc}", f"make {known_hosts} readable"
    entries = known.lookup(name)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout_s
        if entries:  # ask for the type known_hosts lists first, as the SFTP transport's login does
            first = entries.keys()[0]
            options = transport.get_security_options()
            options.key_types = [first, *(t for t in options.key_types if t != first)]
        transport.start_client(timeout=timeout_s)
        offered: paramiko.PKey = transport.get_remote_server_key()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        reason = _network_reason(exc, timeout_s) if isinstance(exc, OSError) else str(exc) or type(exc).__name__
        return "fail", f"no SSH handshake with {host}:{port}: {reason}", "check that the port is SSH (ESXi: TSM-SSH)"
    finally:
        transport.close()
    key_type, fingerprint = offered.get_name(), key_fingerprint(offered)
    scan = _keyscan(host, port, key_type, known_hosts)
    expected = entries.get(key_type) if entries else None
    if expected is None:
        detail = f"{name} offered host key {key_type} {fingerprint}, which {source} does not list"
        if not present:
            detail = f"{source} does not exist; {name} offered host key {key_type} {fingerprint}"
        fix = f"check that fingerprint on the host console (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then: {scan}"
        return "fail", detail, fix
    if expected != offered:
        detail = (
            f"{name} offered host key {key_type} {fingerprint}, but {source} has {key_type} {key_fingerprint(expected)}"
        )
        fix = (
            "if the host was reinstalled, check the new fingerprint on its console, then replace the entry: "
            f"ssh-keygen -R '{name}' -f {known_hosts} && {scan}; otherwise something may be intercepting the connection"
        )
        return "fail", detail, fix
    return "ok", f"{key_type} {fingerprint}, listed in {source}", ""


def _keyscan(host: str, port: int, key_type: str, known_hosts: Path | None) -> str:
    kind = KEYSCAN_TYPES.get(key_type, "ecdsa")
    where = known_hosts or Path("~/.ssh/known_hosts")
    return f"ssh-keyscan {'' if port == 22 else f'-p {port} '}-t {kind} {host} >> {where}"


def _listing(transport: Transport, deadline: float, *, http: bool) -> tuple[Status, str, str]:
    """List a datastore (bounded in files and time) and count the App Volumes volumes on it."""
    files = 0
    kinds: Counter[str] = Counter()
    stopped = False
    try:
        for info in transport.walk():
            files += 1
            if is_descriptor_name(info.path.rsplit("/", 1)[-1]):
                kinds[volume_kind(info.path)] += 1
            if files >= LIST_LIMIT_FILES or time.monotonic() > deadline:
                stopped = True
                break
    except Error as exc:
        return "fail", str(exc), exc.hint_text
    except OSError as exc:
        return "fail", f"cannot list it: {exc.strerror or exc}", "check the permissions of the user on the datastore"
    names = {"appstack": "AppStack(s)", "package": "package(s)", "writable": "writable volume(s)"}
    found = [f"{kinds[k]} {label}" for k, label in names.items() if kinds[k]]
    if kinds["unmanaged"]:
        found.append(f"{kinds['unmanaged']} other VMDK(s)")
    detail = f"listed {files} file(s)" + (f": {', '.join(found)}" if found else "")
    if stopped:
        detail += f" (listing stopped after {files} files)"
    if not any(kinds[k] for k in names):
        fix = (
            "check that the datastore name is the one App Volumes uses"
            if http
            else "check path: it must be the datastore's root, the folder that holds cloudvolumes/ or appvolumes/"
        )
        return "warn", detail + "; no App Volumes volume found (cloudvolumes/… or appvolumes/…)", fix
    return "ok", detail, ""


# -- the repository ----------------------------------------------------------------------------------------------


def check_repository(path: Path | None, *, allow_other_owner: bool = False) -> list[CheckRow]:
    """The repository exists, belongs to us, takes a new file in tmp/, and whether its writer lock is held."""
    if path is None:
        return [
            CheckRow(
                "repository",
                "(none)",
                "fail",
                "no repository is configured",
                'set repository = "PATH" in the configuration file, or pass --repo PATH (or TOOLKIT_REPO)',
            )
        ]
    url = remote_url(path)
    if url is not None:
        return [check_remote_repository(url)]
    target = str(path)
    try:
        read_config(path)
    except Error as exc:
        return [CheckRow("repository", target, "fail", str(exc), exc.hint_text)]
    owner = path.stat().st_uid
    if owner != os.getuid() and not allow_other_owner:
        return [
            CheckRow(
                "repository",
                target,
                "fail",
                f"it belongs to user id {owner}, not to the user running this check",
                "run the check (and the jobs) as the repository's owner",
            )
        ]
    probe = path / "tmp" / f".check-{uuid.uuid4().hex}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"check\n")
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink()
        return [
            CheckRow(
                "repository",
                target,
                "fail",
                f"cannot create a file in {path / 'tmp'}: {exc.strerror or exc}",
                f"give the user running the jobs write access to {path}; check that its file system "
                "is mounted read-write and has space",
            )
        ]
    free = human_bytes(shutil.disk_usage(path).free)
    held = read_lock(path)
    if held is None:
        return [CheckRow("repository", target, "ok", f"writable, not locked; {free} free")]
    who = f"{held.command} of {held.owner} (pid {held.pid} on {held.host}, since {held.since})"
    if held.is_stale_here:
        return [
            CheckRow(
                "repository",
                target,
                "warn",
                f"writable; locked by {who}, which is no longer running; {free} free",
                f"the next writer removes the stale lock, or now: toolkit --repo {path} unlock",
            )
        ]
    return [
        CheckRow(
            "repository",
            target,
            "warn",
            f"writable; locked by {who}; {free} free",
            LOCK_HINT,
        )
    ]


def check_remote_repository(url: str) -> CheckRow:
    """An ``s3://`` repository: its config readable, a probe object written and deleted, who holds its lock."""
    from toolkit.s3repo import open_store  # the object-storage client loads only when a bucket is checked

    try:
        store = open_store(url)
        store.get_bytes("config")
        probe = f"locks/.check-{uuid.uuid4().hex}"
        store.put_bytes(probe, b"check\n")
        store.delete(probe)
        held = store.get_bytes(f"locks/{WRITER}") if store.head(f"locks/{WRITER}") is not None else None
    except Error as exc:
        if exc.code == "s3_object_not_found":  # the bucket answers, and holds no repository config
            return CheckRow(
                "repository", url, "fail", "no repository in the bucket", f"create one with: toolkit --repo {url} init"
            )
        return CheckRow("repository", url, "fail", str(exc), exc.hint_text)
    if held is None:
        return CheckRow("repository", url, "ok", "readable and writable, not locked")
    info = parse_lock(held)
    who = f"{info.command} of {info.owner} (pid {info.pid} on {info.host}, since {info.since})"
    return CheckRow(
        "repository",
        url,
        "warn",
        f"readable and writable; locked by {who}",
        LOCK_HINT,
    )


def rows_text(rows: Iterable[CheckRow]) -> list[list[str]]:
    """The table's cells: component, target, status (FAIL in capitals, to stand out), detail."""
    return [[r.component, r.target, "FAIL" if r.status == "fail" else r.status, r.detail] for r in rows]
