"""vCenter (or one ESXi host) through pyvmomi, behind the narrow :class:`VsphereClient` Protocol.

Callers get dataclasses and :class:`catalog.errors.Error` subclasses; pyvmomi,
``ssl`` and socket exceptions are translated once, here, and nothing above this
module sees a vim type.

- :func:`connect` logs in with a :class:`VsphereConfig`. TLS is verified by
  default (system CAs, or ``ca_bundle``); ``thumbprint_sha256`` pins the
  server's certificate instead, checked on every TLS connection (SOAP and
  datastore HTTP). Plain ``http://`` URLs are accepted only for a loopback
  host, which is what the lab's vcsim serves; anything else would send the
  password in clear.
- Tasks are waited for through the PropertyCollector (``info.state``,
  ``info.error``, ``info.result``), never by reading ``task.info``: pyvmomi
  fails to read that property from some tasks under vcsim.
- Datastore paths are written ``[datastore] folder/file``; the root of a
  datastore is ``[datastore]``. Files are named relative to the datastore
  root, "/"-separated, as the transports name them.
- The same client logs into an ESXi host directly (``VsphereConfig.server =
  "ESXi host"``, no datacenter: a host has one, ``ha-datacenter``). That is
  what makes a disk copy thin: :meth:`PyvmomiClient.copy_virtual_disk` always
  asks for a thin destination (``destSpec`` with ``diskType="thin"``); a host
  honours it, vCenter refuses any ``destSpec`` (``NotImplemented``), and the
  copy is then made without one, which vCenter preallocates (thick).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, Self
from urllib.parse import urlsplit

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from catalog.errors import Error

log = logging.getLogger(__name__)

SOAP_TIMEOUT_S: Final = 120.0  # one SOAP call; a dead vCenter becomes an error, not a hang
TASK_TIMEOUT_S: Final = 6 * 3600.0  # CopyVirtualDisk of a large thick disk can run for hours
TASK_POLL_FIRST_S: Final = 0.01  # vcsim and small tasks finish in milliseconds
TASK_POLL_MAX_S: Final = 1.0  # long tasks: one PropertyCollector call a second is cheap for vCenter
SESSION_COOKIE: Final = "vmware_soap_session"  # the SOAP session cookie datastore HTTP accepts
GLOB_CHARS: Final = frozenset("*?[]\\")  # a file name with these cannot be a literal matchPattern
ADAPTER_TYPES: Final = ("ide", "busLogic", "lsiLogic")  # what a VirtualDiskSpec's adapterType accepts
DEFAULT_ADAPTER_TYPE: Final = "lsiLogic"  # for a descriptor that names none: the usual SCSI controller
VCENTER: Final = "vCenter"  # how messages name the server a VsphereConfig logs into, unless told otherwise
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_COLLECTOR: Any = vmodl.query.PropertyCollector  # pyvmomi's data-object constructors carry no annotations
_BROWSER: Any = vim.host.DatastoreBrowser
_DISK_MANAGER: Any = vim.VirtualDiskManager
_DATASTORE_PATH = re.compile(r"^\[(?P<ds>[^\]]+)\]\s*(?P<path>.*)$")


# -- errors ---------------------------------------------------------------------------------------


class VsphereConfigInvalid(Error):
    template = "vSphere connection settings are invalid: {detail}"
    hint = "give an https:// URL of the vCenter (http:// only for a lab on 127.0.0.1), a user and a password"
    code = "vsphere_config_invalid"


class VsphereUnreachable(Error):
    template = "{server} at {url} cannot be reached: {detail}"
    hint = "check the URL, DNS, the network path and that the vCenter services (on a host: hostd) run"
    code = "vsphere_unreachable"


class VsphereTlsFailed(Error):
    template = "TLS with {url} failed: {detail}"
    hint = (
        "give the CA that signed the server's certificate as the CA bundle, "
        "or pin its SHA-256 thumbprint (openssl x509 -noout -fingerprint -sha256)"
    )
    code = "vsphere_tls_failed"


class VsphereCertificateMismatch(Error):
    template = "{server} at {url} presented a certificate with SHA-256 {actual}, not the pinned {expected}"
    hint = "if the certificate was replaced on purpose, pin the new thumbprint; otherwise treat this as an attack"
    code = "vsphere_certificate_mismatch"


class VsphereLoginFailed(Error):
    template = "{server} at {url} refused the login of {user!r}"
    hint = "check the user name (user@domain) and the password"
    code = "vsphere_login_failed"


class VsphereNotAuthenticated(Error):
    template = "{server} at {url} no longer knows this session ({action})"
    hint = "the session timed out or was ended by an administrator; run the command again"
    code = "vsphere_not_authenticated"


class VsphereNoPermission(Error):
    template = "{server} refused {action}: {user!r} lacks a privilege ({detail})"
    hint = "grant the role Datastore.Browse, Datastore.FileManagement and VirtualMachine.Provisioning privileges"
    code = "vsphere_no_permission"


class VsphereDatacenterNotFound(Error):
    template = "{server} at {url} has no datacenter {name!r} (it has: {known})"
    hint = "name one of the listed datacenters in the vSphere settings"
    code = "vsphere_datacenter_not_found"


class VsphereDatastoreNotFound(Error):
    template = "datacenter {datacenter!r} has no datastore {name!r}"
    hint = "list the datastores with their names as vCenter shows them; names are case-sensitive"
    code = "vsphere_datastore_not_found"


class VsphereBadDatastorePath(Error):
    template = "{path!r} is not a datastore path like '[datastore] folder/file.vmdk'"
    hint = "write the datastore name in square brackets, a space, then the path inside the datastore"
    code = "vsphere_bad_datastore_path"


class DatastoreFileNotFound(Error):
    template = "{path} does not exist ({action})"
    hint = "check the datastore path; list the folder with a datastore browser"
    code = "vsphere_file_not_found"
    exit_code = 1


class DatastoreFileExists(Error):
    template = "{path} already exists ({action})"
    hint = "remove it first or choose another name"
    code = "vsphere_file_exists"
    exit_code = 1


class DatastoreNoSpace(Error):
    template = "datastore {datastore} has no space to {action}"
    hint = "free space on the datastore, or name one with more room (a thick staging copy needs the disk's full size)"
    code = "vsphere_datastore_no_space"
    exit_code = 1


class VsphereNotImplemented(Error):
    template = "{server} does not implement {action}"
    hint = "this needs an ESXi host or vCenter version that offers it"
    code = "vsphere_not_implemented"
    exit_code = 1


class VsphereTaskFailed(Error):
    template = "{server} could not {action}: {detail}"
    hint = "see the task in the vSphere Client (Monitor > Tasks) for the full error"
    code = "vsphere_task_failed"
    exit_code = 1


class VsphereTaskTimeout(Error):
    template = "{server} did not finish {action} within {timeout_s:.0f} s"
    hint = "the task may still be running; see Monitor > Tasks in the vSphere Client"
    code = "vsphere_task_timeout"
    exit_code = 1


# -- values -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """How TLS peers are trusted: the system CAs, a CA bundle, or one pinned certificate."""

    ca_bundle: Path | None = None
    thumbprint_sha256: str | None = None  # lower-case hex, no separators

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that enforces this policy on every handshake."""
        if self.thumbprint_sha256:
            return PinnedContext.for_thumbprint(self.thumbprint_sha256)
        return ssl.create_default_context(cafile=str(self.ca_bundle) if self.ca_bundle else None)


@dataclass(frozen=True, slots=True)
class VsphereConfig:
    url: str  # https://vcenter.example.com (the /sdk path is implied)
    user: str
    password: str = field(repr=False)
    datacenter: str | None = None  # None: the only datacenter there is
    ca_bundle: Path | None = None
    thumbprint_sha256: str | None = None  # pins the certificate; "AB:CD:…" or plain hex
    timeout_s: float = SOAP_TIMEOUT_S
    server: str = VCENTER  # how messages name it: "vCenter", or "ESXi host" for a host logged into directly


@dataclass(frozen=True, slots=True)
class HttpEndpoint:
    """Where datastore HTTP (``/folder``) is served, and how to trust it."""

    base_url: str  # scheme://host:port, no path, no credentials
    dc_path: str  # the datacenter's inventory path, the dcPath query parameter
    tls: TlsPolicy | None  # None: plain http (the lab only)


@dataclass(frozen=True, slots=True)
class DatastoreInfo:
    name: str
    type: str  # "VMFS", "NFS", "NFS41", "vsan", "vvol", …
    capacity_bytes: int
    free_bytes: int
    url: str  # the backing URL vCenter reports (ds:///vmfs/volumes/…, a directory under vcsim)
    accessible: bool

    @property
    def is_vsan(self) -> bool:
        return self.type.lower() == "vsan"


@dataclass(frozen=True, slots=True)
class DatastoreFile:
    path: str  # relative to the datastore root, "/"-separated
    size_bytes: int
    mtime_ns: int  # as precise as vCenter reports it (microseconds under vcsim)


class StagingClient(Protocol):
    """The datastore and disk operations of vCenter or an ESXi host (what vSAN staging copies use)."""

    def datastores(self) -> list[DatastoreInfo]: ...

    def browse(
        self, datastore: str, folder: str = "", pattern: str = "*", *, recursive: bool = True
    ) -> list[DatastoreFile]: ...

    def copy_virtual_disk(self, source: str, dest: str, *, adapter_type: str = DEFAULT_ADAPTER_TYPE) -> None: ...

    def delete_virtual_disk(self, path: str, *, missing_ok: bool = False) -> None: ...

    def move_file(self, source: str, dest: str, *, overwrite: bool = False) -> None: ...

    def make_directory(self, path: str) -> None: ...

    def delete_file(self, path: str, *, missing_ok: bool = False) -> None: ...


class VsphereClient(StagingClient, Protocol):
    """What the toolkit asks of vCenter."""

    @property
    def http(self) -> HttpEndpoint: ...

    def session_cookie(self, *, renew: bool = False) -> str: ...

    def close(self) -> None: ...


# -- pure helpers ---------------------------------------------------------------------------------------


def format_datastore_path(datastore: str, path: str = "") -> str:
    """``[datastore] path``; the root of the datastore is ``[datastore]``."""
    path = path.strip("/")
    return f"[{datastore}] {path}" if path else f"[{datastore}]"


def parse_datastore_path(value: str) -> tuple[str, str]:
    """(datastore, path inside it) of ``[datastore] path``."""
    match = _DATASTORE_PATH.match(value.strip())
    if match is None:
        raise VsphereBadDatastorePath(path=value)
    return match["ds"], match["path"].strip().strip("/")


def normalize_thumbprint(value: str) -> str:
    """Lower-case hex without separators; SHA-256 only (64 hex digits)."""
    text = value.strip().replace(":", "").replace(" ", "").lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise VsphereConfigInvalid(detail=f"{value!r} is not a SHA-256 thumbprint (64 hex digits)")
    return text


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def mtime_ns_of(moment: datetime | None) -> int:
    """Nanoseconds since the epoch, exact to the microsecond (no float rounding)."""
    if moment is None:
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return ((moment - _EPOCH) // timedelta(microseconds=1)) * 1000


def folder_of_result(datastore: str, folder_path: str, *, server: str = VCENTER) -> str:
    """The folder, relative to the root, of a search result's ``folderPath``.

    vCenter writes ``[ds] a/b/``; vcsim writes ``[ds]/a/b``.
    """
    name, rest = parse_datastore_path(folder_path)
    if name != datastore:
        raise VsphereTaskFailed(
            server=server, action=f"browse [{datastore}]", detail=f"a result for another datastore: {folder_path}"
        )
    return rest


def thin_disk_spec(adapter_type: str) -> Any:
    """The ``destSpec`` of a thin copy: diskType "thin" and the source's adapter type."""
    if adapter_type not in ADAPTER_TYPES:  # callers map a descriptor's value first: this is a bug
        raise ValueError(adapter_type)
    return _DISK_MANAGER.VirtualDiskSpec(diskType="thin", adapterType=adapter_type)


@dataclass(frozen=True, slots=True)
class _Target:
    url: str  # as configured, for messages
    scheme: str
    host: str
    port: int
    path: str


def _parse_url(url: str) -> _Target:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise VsphereConfigInvalid(detail=f"{url!r} is not an https:// URL")
    if parts.username or parts.password:
        raise VsphereConfigInvalid(detail="put the user and password in their own settings, not in the URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise VsphereConfigInvalid(detail=f"{url!r} is plain http to a remote host; the password would travel in clear")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise VsphereConfigInvalid(detail=f"{url!r} has a bad port") from exc
    path = parts.path.rstrip("/") or "/sdk"
    return _Target(url.strip(), parts.scheme, parts.hostname, port, path)


# -- TLS pinning ----------------------------------------------------------------------------------------


class CertificatePinMismatch(ssl.SSLCertVerificationError):
    """Raised during a handshake whose peer certificate is not the pinned one."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"certificate SHA-256 {actual} is not the pinned {expected}")
        self.expected = expected
        self.actual = actual


class PinnedContext(ssl.SSLContext):
    """A client context that trusts exactly one certificate, by its SHA-256 thumbprint.

    CA checks are off (a pinned certificate is usually self-signed); instead every
    socket it wraps is checked right after its handshake, so no connection is used
    before the peer has proved it holds the pinned certificate.
    """

    expected_sha256: str

    @classmethod
    def for_thumbprint(cls, thumbprint_sha256: str) -> PinnedContext:
        ctx = cls(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.expected_sha256 = normalize_thumbprint(thumbprint_sha256)
        return ctx

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        wrapped = super().wrap_socket(sock, *args, **kwargs)
        if kwargs.get("do_handshake_on_connect", True) is False:
            wrapped.do_handshake()
        der = wrapped.getpeercert(binary_form=True)
        actual = hashlib.sha256(der or b"").hexdigest()
        if actual != self.expected_sha256:
            wrapped.close()
            raise CertificatePinMismatch(self.expected_sha256, actual)
        return wrapped


# -- the adapter ----------------------------------------------------------------------------------------


class PyvmomiClient:
    """A logged-in vCenter session bound to one datacenter. Use :func:`connect` to make one."""

    def __init__(self, si: Any, config: VsphereConfig, target: _Target, tls: TlsPolicy | None) -> None:
        self._si = si
        self._config = config
        self._server = config.server
        self._target = target
        self._tls = tls
        self._lock = threading.Lock()
        self._datastore_refs: dict[str, Any] = {}
        self._dest_spec_refused = False  # vCenter answered NotImplemented to a destSpec: copies go without one
        self._dc, self._dc_path = self._find_datacenter(config.datacenter)

    def __repr__(self) -> str:
        return (
            f"PyvmomiClient(server={self._server!r}, url={self._target.url!r}, user={self._config.user!r}, "
            f"datacenter={self._dc_path!r})"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    @property
    def datacenter(self) -> str:
        return str(self._dc.name)

    @property
    def url(self) -> str:
        """The URL as configured (no credentials), for messages."""
        return self._target.url

    @property
    def server(self) -> str:
        """What this client logged into, for messages: "vCenter" or "ESXi host"."""
        return self._server

    @property
    def http(self) -> HttpEndpoint:
        t = self._target
        default_port = 443 if t.scheme == "https" else 80
        host = f"[{t.host}]" if ":" in t.host else t.host
        netloc = host if t.port == default_port else f"{host}:{t.port}"
        return HttpEndpoint(f"{t.scheme}://{netloc}", self._dc_path, self._tls)

    def close(self) -> None:
        """Log out; safe to call twice."""
        si, self._si = self._si, None
        if si is not None:
            with contextlib.suppress(Exception):  # logging out of a dead session must not mask the real error
                Disconnect(si)  # type: ignore[no-untyped-call]

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def _content(self) -> Any:
        if self._si is None:
            raise VsphereNotAuthenticated(server=self._server, url=self._target.url, action="the client was closed")
        return self._si.content

    @contextlib.contextmanager
    def _faults(self, action: str) -> Iterator[None]:
        """Translate what pyvmomi and the network raise into this module's errors."""
        try:
            yield
        except Error:
            raise
        except vmodl.MethodFault as fault:
            raise self._fault_error(action, fault) from fault
        except (OSError, http.client.HTTPException) as exc:
            raise _network_error(self._server, self._target.url, exc) from exc

    def _fault_error(self, action: str, fault: Any) -> Error:
        detail = _fault_text(fault)
        server = self._server
        if isinstance(fault, vim.fault.InvalidLogin):
            return VsphereLoginFailed(server=server, url=self._target.url, user=self._config.user)
        if isinstance(fault, vim.fault.NotAuthenticated):
            return VsphereNotAuthenticated(server=server, url=self._target.url, action=action)
        if isinstance(fault, vim.fault.NoPermission):
            return VsphereNoPermission(server=server, action=action, user=self._config.user, detail=detail)
        if isinstance(fault, vmodl.fault.NotImplemented):
            return VsphereNotImplemented(server=server, action=action)
        if isinstance(fault, vim.fault.NoDiskSpace):
            return DatastoreNoSpace(datastore=getattr(fault, "datastore", "") or "?", action=action)
        if isinstance(fault, vim.fault.FileNotFound):
            return DatastoreFileNotFound(path=getattr(fault, "file", "") or "?", action=action)
        if isinstance(fault, vim.fault.FileAlreadyExists):
            return DatastoreFileExists(path=getattr(fault, "file", "") or "?", action=action)
        if isinstance(fault, vim.fault.InvalidDatastorePath):
            return VsphereBadDatastorePath(path=getattr(fault, "datastorePath", None) or detail)
        if isinstance(fault, vim.fault.InvalidDatastore):
            return VsphereDatastoreNotFound(datacenter=self._dc_path, name=getattr(fault, "name", None) or detail)
        return VsphereTaskFailed(server=server, action=action, detail=detail)

    def _wait(self, task: Any, action: str, timeout_s: float = TASK_TIMEOUT_S) -> Any:
        """The result of ``task``, read through the PropertyCollector; an Error if it failed."""
        spec = _COLLECTOR.FilterSpec(
            objectSet=[_COLLECTOR.ObjectSpec(obj=task)],
            propSet=[_COLLECTOR.PropertySpec(type=vim.Task, pathSet=["info.state", "info.error", "info.result"])],
        )
        collector = self._content.propertyCollector
        deadline = time.monotonic() + timeout_s
        delay = TASK_POLL_FIRST_S
        while True:
            with self._faults(action):
                contents = collector.RetrieveContents([spec])
            values = {prop.name: prop.val for item in contents or [] for prop in item.propSet}
            state = values.get("info.state")
            if state == vim.TaskInfo.State.success:
                return values.get("info.result")
            if state == vim.TaskInfo.State.error:
                raise self._fault_error(action, values.get("info.error"))
            if time.monotonic() > deadline:
                raise VsphereTaskTimeout(server=self._server, action=action, timeout_s=timeout_s)
            time.sleep(delay)
            delay = min(delay * 2, TASK_POLL_MAX_S)

    def _find_datacenter(self, wanted: str | None) -> tuple[Any, str]:
        content = self._content
        with self._faults("list datacenters"):
            view = content.viewManager.CreateContainerView(content.rootFolder, [vim.Datacenter], True)
            try:
                found = [(dc, _inventory_path(dc, content.rootFolder)) for dc in view.view]
            finally:
                view.Destroy()
        for dc, path in found:
            if wanted in (None, dc.name, path) and (wanted is not None or len(found) == 1):
                return dc, path
        known = ", ".join(sorted(path for _, path in found)) or "none"
        name = wanted if wanted is not None else "(not given, and there is not exactly one)"
        raise VsphereDatacenterNotFound(server=self._server, url=self._target.url, name=name, known=known)

    def _datastore_ref(self, name: str) -> Any:
        ref = self._datastore_refs.get(name)
        if ref is None:
            with self._faults(f"find datastore {name}"):
                refs = {ds.name: ds for ds in self._dc.datastore}
            self._datastore_refs = refs
            ref = refs.get(name)
            if ref is None:
                raise VsphereDatastoreNotFound(datacenter=self._dc_path, name=name)
        return ref

    # -- the Protocol -----------------------------------------------------------------------

    def session_cookie(self, *, renew: bool = False) -> str:
        """``vmware_soap_session=…`` for datastore HTTP. With ``renew``, log in again if the session ended."""
        with self._lock:
            if renew:
                with self._faults("check the session"):
                    try:
                        alive = self._content.sessionManager.currentSession is not None
                    except vim.fault.NotAuthenticated:
                        alive = False
                    if not alive:
                        log.info("%s session at %s ended; logging in again", self._server, self._target.url)
                        self._content.sessionManager.Login(self._config.user, self._config.password)
            raw = str(self._si._stub.cookie if self._si is not None else "")
        for part in raw.split(";"):
            name, _, value = part.strip().partition("=")
            if name == SESSION_COOKIE and value:
                return f"{SESSION_COOKIE}={value}"
        raise VsphereNotAuthenticated(server=self._server, url=self._target.url, action="read the session cookie")

    def datastores(self) -> list[DatastoreInfo]:
        """Every datastore of the datacenter, by name."""
        out = []
        with self._faults("list datastores"):
            for ds in self._dc.datastore:
                s = ds.summary
                out.append(
                    DatastoreInfo(
                        name=str(s.name),
                        type=str(s.type or ""),
                        capacity_bytes=int(s.capacity or 0),
                        free_bytes=int(s.freeSpace or 0),
                        url=str(s.url or ""),
                        accessible=bool(s.accessible),
                    )
                )
        return sorted(out, key=lambda d: d.name)

    def browse(
        self, datastore: str, folder: str = "", pattern: str = "*", *, recursive: bool = True
    ) -> list[DatastoreFile]:
        """Files (not folders) under ``folder`` whose names match ``pattern``, with size and mtime.

        ``folder`` is relative to the datastore root ("" is the root). A missing folder raises
        :class:`DatastoreFileNotFound`.
        """
        where = format_datastore_path(datastore, folder)
        action = f"browse {where}"
        ref = self._datastore_ref(datastore)
        spec = _BROWSER.SearchSpec(
            details=_BROWSER.FileInfo.Details(fileSize=True, modification=True),
            matchPattern=[pattern],
        )
        with self._faults(action):
            browser = ref.browser
            if recursive:
                task = browser.SearchDatastoreSubFolders_Task(datastorePath=where, searchSpec=spec)
            else:
                task = browser.SearchDatastore_Task(datastorePath=where, searchSpec=spec)
        result = self._wait(task, action)
        results = list(result) if recursive else ([result] if result is not None else [])
        files = []
        for item in results:
            base = folder_of_result(datastore, str(item.folderPath), server=self._server)
            for info in item.file or []:
                if isinstance(info, vim.host.DatastoreBrowser.FolderInfo):
                    continue
                name = str(info.path)
                files.append(
                    DatastoreFile(
                        path=f"{base}/{name}" if base else name,
                        size_bytes=int(info.fileSize or 0),
                        mtime_ns=mtime_ns_of(info.modification),
                    )
                )
        return sorted(files, key=lambda f: f.path)

    def copy_virtual_disk(self, source: str, dest: str, *, adapter_type: str = DEFAULT_ADAPTER_TYPE) -> None:
        """Copy a virtual disk (descriptor and extents) as a thin disk and wait; the destination folder must exist.

        ``adapter_type`` is the source's (one of :data:`ADAPTER_TYPES`); the copy's descriptor gets it.
        An ESXi host makes the copy thin. vCenter refuses the thin ``destSpec`` (NotImplemented): the
        copy is then made without one, and is preallocated (thick) whatever the source was; this
        client remembers that and asks vCenter no more.
        """
        parse_datastore_path(source)
        parse_datastore_path(dest)
        spec = thin_disk_spec(adapter_type)
        action = f"copy virtual disk {source} to {dest}"
        if not self._dest_spec_refused:
            try:
                self._copy(source, dest, spec, action)
            except VsphereNotImplemented:
                self._dest_spec_refused = True
                log.info("%s at %s refuses a thin destSpec; its disk copies are thick", self._server, self.url)
            else:
                return
        self._copy(source, dest, None, action)

    def _copy(self, source: str, dest: str, spec: Any, action: str) -> None:
        with self._faults(action):
            task = self._content.virtualDiskManager.CopyVirtualDisk_Task(
                sourceName=source, sourceDatacenter=self._dc, destName=dest, destDatacenter=self._dc, destSpec=spec
            )
        self._wait(task, action)

    def delete_virtual_disk(self, path: str, *, missing_ok: bool = False) -> None:
        """Delete a virtual disk: its descriptor and every extent it names (files, or vSAN objects)."""
        parse_datastore_path(path)
        action = f"delete virtual disk {path}"
        with self._faults(action):
            task = self._content.virtualDiskManager.DeleteVirtualDisk_Task(name=path, datacenter=self._dc)
        try:
            self._wait(task, action)
        except DatastoreFileNotFound:
            if not missing_ok:
                raise

    def move_file(self, source: str, dest: str, *, overwrite: bool = False) -> None:
        """Rename a file within the datacenter; ``overwrite`` replaces an existing ``dest``."""
        parse_datastore_path(source)
        parse_datastore_path(dest)
        action = f"move {source} to {dest}"
        with self._faults(action):
            task = self._content.fileManager.MoveDatastoreFile_Task(
                sourceName=source,
                sourceDatacenter=self._dc,
                destinationName=dest,
                destinationDatacenter=self._dc,
                force=overwrite,
            )
        self._wait(task, action)

    def make_directory(self, path: str) -> None:
        """Create a folder and its parents; an existing folder is fine."""
        parse_datastore_path(path)
        try:
            with self._faults(f"make directory {path}"):
                self._content.fileManager.MakeDirectory(name=path, datacenter=self._dc, createParentDirectories=True)
        except DatastoreFileExists:
            pass

    def delete_file(self, path: str, *, missing_ok: bool = False) -> None:
        """Delete a file (or a folder with its contents)."""
        parse_datastore_path(path)
        action = f"delete {path}"
        with self._faults(action):
            task = self._content.fileManager.DeleteDatastoreFile_Task(name=path, datacenter=self._dc)
        try:
            self._wait(task, action)
        except DatastoreFileNotFound:
            if not missing_ok:
                raise


def _inventory_path(entity: Any, root: Any) -> str:
    """The datacenter's path below the root folder ("DC0", or "Region/DC0" in a folder)."""
    names = []
    node = entity
    while node is not None and node != root:
        names.append(str(node.name))
        node = node.parent
    return "/".join(reversed(names))


def _fault_text(fault: Any) -> str:
    if fault is None:
        return "no error was reported"
    messages = [str(m.message) for m in getattr(fault, "faultMessage", None) or [] if getattr(m, "message", None)]
    msg = str(getattr(fault, "msg", "") or "")
    kind = type(fault).__name__.rsplit(".", 1)[-1]
    return "; ".join([*messages, msg] if msg else messages) or kind


def _network_error(server: str, url: str, exc: BaseException) -> Error:
    if isinstance(exc, CertificatePinMismatch):
        return VsphereCertificateMismatch(server=server, url=url, expected=exc.expected, actual=exc.actual)
    if isinstance(exc, ssl.SSLError):
        return VsphereTlsFailed(url=url, detail=getattr(exc, "verify_message", None) or exc.reason or str(exc))
    detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return VsphereUnreachable(server=server, url=url, detail=detail)


def connect(config: VsphereConfig) -> PyvmomiClient:
    """Log in to vCenter (or an ESXi host) and bind to the datacenter; the caller closes the client."""
    target = _parse_url(config.url)
    if not config.user or not config.password:
        raise VsphereConfigInvalid(detail="a user and a password are needed")
    tls: TlsPolicy | None = None
    context: ssl.SSLContext | None = None
    if target.scheme == "https":
        if config.ca_bundle is not None and not config.ca_bundle.is_file():
            raise VsphereConfigInvalid(detail=f"the CA bundle {config.ca_bundle} is not a file")
        pin = normalize_thumbprint(config.thumbprint_sha256) if config.thumbprint_sha256 else None
        tls = TlsPolicy(ca_bundle=config.ca_bundle, thumbprint_sha256=pin)
        try:
            context = tls.ssl_context()
        except (OSError, ssl.SSLError) as exc:
            raise VsphereConfigInvalid(detail=f"cannot load the CA bundle {config.ca_bundle}: {exc}") from exc
    log.info("connecting to %s %s as %s", config.server, target.url, config.user)
    try:
        si = SmartConnect(  # type: ignore[no-untyped-call]
            protocol=target.scheme,
            host=target.host,
            port=target.port,
            path=target.path,
            user=config.user,
            pwd=config.password,
            sslContext=context,
            httpConnectionTimeout=config.timeout_s,
        )
    except vim.fault.InvalidLogin as exc:
        raise VsphereLoginFailed(server=config.server, url=target.url, user=config.user) from exc
    except vmodl.MethodFault as exc:
        raise VsphereTaskFailed(server=config.server, action="log in", detail=_fault_text(exc)) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _network_error(config.server, target.url, exc) from exc
    except Exception as exc:  # pyvmomi raises a bare Exception when /sdk is not a vSphere API
        if type(exc) is not Exception:
            raise
        raise VsphereUnreachable(server=config.server, url=target.url, detail=str(exc)) from exc
    try:
        return PyvmomiClient(si, config, target, tls)
    except BaseException:
        with contextlib.suppress(Exception):  # the datacenter error is the one to report
            Disconnect(si)  # type: ignore[no-untyped-call]
        raise
