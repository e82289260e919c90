"""The App Volumes Manager simulator: lifecycle, sessions, volume operations, admin hooks."""

from __future__ import annotations

import functools
import logging
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

from toolkit.lab.avm_sim import render, vmdk
from toolkit.lab.avm_sim.api import all_routes
from toolkit.lab.avm_sim.errors import (
    BadVolumeRequest,
    SimulatorError,
    SimulatorNotRunning,
    UnknownDatastore,
    UnknownStorageGroup,
    UnknownVolume,
)
from toolkit.lab.avm_sim.importer import ImportContext, import_descriptor, normalise_folder
from toolkit.lab.avm_sim.jobs import Job, JobQueue
from toolkit.lab.avm_sim.model import (
    FLAVOURS,
    KINDS,
    LIFECYCLE_STAGES,
    VOLUME_STATUSES,
    WRITABLE_STATES,
    Attachment,
    Datastore,
    Flavour,
    Kind,
    Layout,
    Location,
    Marker,
    Product,
    Program,
    Session,
    SimState,
    StorageGroup,
    Volume,
    new_guid,
    now,
)
from toolkit.lab.avm_sim.params import Params
from toolkit.lab.avm_sim.replication import ReplicationReport, Replicator, replicate_group
from toolkit.lab.avm_sim.server import Request, Response, Route, Router, SimHTTPServer, error
from toolkit.lab.avm_sim.tls import Certificate, create_certificate

log = logging.getLogger(__name__)

SESSION_COOKIE: Final = "_session_id"  # Rails' default session cookie, as the manager uses
SESSION_EXPIRED: Final = "Session expired. Please login again."  # the documented 403 text
DEFAULT_SESSION_IDLE_S: Final = 30 * 60.0  # the manager closes UI/API sessions idle for 30 minutes
DEFAULT_VERSIONS: Final = {"2.x": "2.18.10.15", "4.x": "4.18.0.25"}  # last 2.x line; 4.x release 2512
MIB: Final = 1 << 20  # sizes in the API are MB

VersionShape = Literal["nested", "flat"]
AppStacksShape = Literal["array", "currentappstacks"]


@dataclass(frozen=True, slots=True)
class StorageGroupSpec:
    """A storage group to create at start."""

    members: tuple[str, ...]
    auto_replicate: bool = True
    auto_import: bool = True
    strategy: str = "Spread"


@dataclass(frozen=True, slots=True)
class Settings:
    """Knobs fixed when the simulator is built."""

    flavour: Flavour
    username: str
    password: str = field(repr=False)
    domain: str = "LAB"
    datacenter: str = "DC0"
    machine_manager_host: str = "vcenter.lab"
    session_idle_s: float = DEFAULT_SESSION_IDLE_S
    session_error_status: int = 403
    job_delay_s: float = 0.2
    replication_interval_s: float | None = None
    version_shape: VersionShape = "nested"
    appstacks_shape: AppStacksShape = "array"
    product_version: str = ""
    layout: Layout = field(default_factory=lambda: Layout.for_flavour("4.x"))


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    """A read-only copy of one volume record, for tests and the demo."""

    id: int
    kind: Kind
    name: str
    guid: str
    status: str
    size_mb: int
    file_locations: tuple[str, ...]
    paths: tuple[Path, ...]
    attached: bool
    product_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "guid": self.guid,
            "status": self.status,
            "size_mb": self.size_mb,
            "file_locations": list(self.file_locations),
            "paths": [str(p) for p in self.paths],
            "attached": self.attached,
            "product_id": self.product_id,
        }


@dataclass(frozen=True, slots=True)
class GrowResult:
    successes: tuple[str, ...]
    warnings: tuple[str, ...]
    errors: tuple[str, ...]
    found: int


@dataclass(frozen=True, slots=True)
class DeleteResult:
    deleted: tuple[dict[str, Any], ...]  # rendered before deletion
    errors: tuple[dict[str, Any], ...]
    not_found: tuple[int, ...]


class AvmSimulator:
    """An App Volumes Manager on a real loopback port, backed by datastore directories.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        datastores: Mapping[str, Path],
        flavour: Flavour = "4.x",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = False,
        cert_dir: Path | None = None,
        username: str = "admin",
        password: str = "admin",  # noqa: S107 - the lab manager's default account, not a secret
        domain: str = "LAB",
        datacenter: str = "DC0",
        session_idle_s: float = DEFAULT_SESSION_IDLE_S,
        session_error_status: int = 403,
        job_delay_s: float = 0.2,
        replication_interval_s: float | None = None,
        storage_groups: Mapping[str, Sequence[str] | StorageGroupSpec] | None = None,
        version_shape: VersionShape = "nested",
        appstacks_shape: AppStacksShape = "array",
        product_version: str = "",
        layout: Layout | None = None,
        create_folders: bool = True,
    ) -> None:
        if flavour not in FLAVOURS:
            raise SimulatorError(detail=f"flavour must be one of {FLAVOURS}, not {flavour!r}")
        if not datastores:
            raise SimulatorError(detail="at least one datastore is needed")
        self.settings = Settings(
            flavour=flavour,
            username=username,
            password=password,
            domain=domain,
            datacenter=datacenter,
            session_idle_s=session_idle_s,
            session_error_status=session_error_status,
            job_delay_s=job_delay_s,
            replication_interval_s=replication_interval_s,
            version_shape=version_shape,
            appstacks_shape=appstacks_shape,
            product_version=product_version or DEFAULT_VERSIONS[flavour],
            layout=layout or Layout.for_flavour(flavour),
        )
        self.state = SimState()
        self.jobs = JobQueue(job_delay_s)
        self._host = host
        self._requested_port = port
        self._tls = tls
        self._cert_dir = cert_dir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._certificate: Certificate | None = None
        self._server: SimHTTPServer | None = None
        self._server_thread: threading.Thread | None = None
        self._replicator: Replicator | None = None
        self._replication_lock = threading.Lock()
        self._started_at = time.monotonic()
        self.started_at = now()
        self.database_uuid = str(uuid.uuid4())
        self._add_datastores(datastores, create_folders)
        self._add_storage_groups(storage_groups or {})
        self.router = Router.build(all_routes(), flavour)

    # --- set-up ----------------------------------------------------------------------------

    def _add_datastores(self, datastores: Mapping[str, Path], create_folders: bool) -> None:
        for name, root in datastores.items():
            root = Path(root)
            root.mkdir(parents=True, exist_ok=True)
            if create_folders:
                for folder in self.settings.layout.folders():
                    (root / folder).mkdir(parents=True, exist_ok=True)
            ds_id = self.state.next_id("datastore")
            self.state.datastores[name] = Datastore(ds_id, name, root)

    def _add_storage_groups(self, groups: Mapping[str, Sequence[str] | StorageGroupSpec]) -> None:
        for name, spec in groups.items():
            if not isinstance(spec, StorageGroupSpec):
                spec = StorageGroupSpec(tuple(spec))
            for member in spec.members:
                if member not in self.state.datastores:
                    raise UnknownDatastore(name=member)
            group = StorageGroup(
                id=self.state.next_id("storage_group"),
                name=name,
                members=list(spec.members),
                strategy=spec.strategy,
                auto_import=spec.auto_import,
                auto_replicate=spec.auto_replicate,
            )
            self.state.storage_groups[group.id] = group

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> AvmSimulator:
        if self._server is not None:
            return self
        context = None
        if self._tls:
            self._certificate = create_certificate(self._cert_folder())
            context = self._certificate.server_context()
        self._server = SimHTTPServer((self._host, self._requested_port), self, context)
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="avm-sim-http", daemon=True
        )
        self._server_thread.start()
        self.jobs.start()
        interval = self.settings.replication_interval_s
        if interval is not None and self.state.storage_groups:
            self._replicator = Replicator(self.replicate_now, interval)
            self._replicator.start()
        log.info("AVM simulator (%s) listening on %s", self.settings.flavour, self.url)
        return self

    def stop(self) -> None:
        if self._replicator is not None:
            self._replicator.stop()
            self._replicator = None
        self.jobs.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._server = None
        if self._server_thread is not None:
            self._server_thread.join(timeout=5)
            self._server_thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> AvmSimulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _cert_folder(self) -> Path:
        if self._cert_dir is not None:
            return self._cert_dir
        self._tmp = tempfile.TemporaryDirectory(prefix="avm-sim-tls-")
        return Path(self._tmp.name)

    # --- addresses -------------------------------------------------------------------------

    @property
    def flavour(self) -> Flavour:
        return self.settings.flavour

    @property
    def port(self) -> int:
        if self._server is None:
            raise SimulatorNotRunning()
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return self._host

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self._host}:{self.port}"

    @property
    def certificate(self) -> Certificate | None:
        return self._certificate

    @property
    def cert_path(self) -> Path | None:
        return self._certificate.cert_path if self._certificate else None

    @property
    def thumbprint_sha256(self) -> str | None:
        """Lower-case hex SHA-256 of the server certificate (DER); None without TLS."""
        return self._certificate.thumbprint_sha256 if self._certificate else None

    def routes(self) -> list[tuple[str, str]]:
        """(method, path template) of every manager endpoint this flavour serves (not ``/_sim``)."""
        return [(r.method, r.template) for r in self.router.routes if not r.template.startswith("/_sim")]

    # --- request entry point -------------------------------------------------------------

    def dispatch(
        self,
        *,
        method: str,
        path: str,
        query: str,
        body: bytes,
        content_type: str,
        cookies: Mapping[str, str],
        base_url: str,
    ) -> Response:
        found = self.router.match(method, path)
        if found is None:
            return error(404, "Not Found")
        route, args = found
        params = Params.from_request(query, body, content_type)
        session = None
        if route.auth:
            session = self.check_session(cookies.get(SESSION_COOKIE))
            if session is None:
                return self._unauthorized(route)
        request = Request(method, path, params, args, dict(cookies), base_url, session)
        try:
            return route.handler(self, request)
        except (UnknownVolume, UnknownStorageGroup) as exc:
            return error(404, str(exc))
        except SimulatorError as exc:
            return error(400, str(exc))
        except Exception as exc:  # a handler bug becomes a 500, as Rails answers
            log.exception("handler for %s %s failed", method, path)
            return Response.json(500, {"error": "Server Error", "detail": str(exc)})

    def _unauthorized(self, route: Route) -> Response:
        status = 403
        if self.flavour == "4.x" and route.template.startswith("/app_volumes"):
            status = self.settings.session_error_status
        if route.auth_error == "errors":
            return Response.json(status, {"errors": [{"error": SESSION_EXPIRED}]})
        return error(status, SESSION_EXPIRED)

    # --- sessions ------------------------------------------------------------------------

    def credentials_ok(self, username: str, password: str) -> bool:
        """Accept ``account``, ``DOMAIN\\account`` or ``account@domain`` for the configured account."""
        account = username.split("\\")[-1].split("@")[0]
        return account.lower() == self.settings.username.lower() and secrets.compare_digest(
            password.encode(), self.settings.password.encode()
        )

    def open_session(self, username: str) -> Session:
        token = secrets.token_hex(16)
        t = time.monotonic()
        account = username.split("\\")[-1].split("@")[0]
        session = Session(token, f"{self.settings.domain}\\{account}", t, t)
        with self.state.lock:
            self.state.sessions[token] = session
            self.state.record("Login", None, session.username)
        return session

    def check_session(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self.state.lock:
            session = self.state.sessions.get(token)
            if session is None:
                return None
            t = time.monotonic()
            if t - session.last_seen > self.settings.session_idle_s:
                del self.state.sessions[token]
                return None
            session.last_seen = t
            return session

    def close_session(self, token: str | None) -> Session | None:
        with self.state.lock:
            session = self.state.sessions.pop(token or "", None)
            if session is not None:
                self.state.record("Logout", None, session.username)
            return session

    def expire_sessions(self) -> int:
        """Make every open session idle for longer than the limit; returns how many there were."""
        with self.state.lock:
            for session in self.state.sessions.values():
                session.last_seen = -1e12
            return len(self.state.sessions)

    # --- views -----------------------------------------------------------------------------

    def view(self) -> render.View:
        return render.View(
            flavour=self.flavour,
            datacenter=self.settings.datacenter,
            domain=self.settings.domain,
            machine_manager_host=self.settings.machine_manager_host,
            layout=self.settings.layout,
            state=self.state,
        )

    def uptime_text(self) -> str:
        minutes = int((time.monotonic() - self._started_at) // 60)
        return "less than a minute" if minutes < 1 else f"{minutes} minutes"

    def default_datastore(self) -> str:
        return next(iter(self.state.datastores))

    def datastore_root(self, name: str) -> Path:
        ds = self.state.datastores.get(name)
        if ds is None:
            raise UnknownDatastore(name=name)
        return ds.root

    def resolve_datastore(self, value: str) -> str:
        """A datastore given as ``Name|DC|MMId`` (uniq_string), ``[DC] Name`` or a bare name."""
        text = value.strip()
        if "|" in text:
            text = text.split("|", 1)[0]
        if text.startswith("[") and "] " in text:
            text = text.split("] ", 1)[1]
        if text not in self.state.datastores:
            raise UnknownDatastore(name=value)
        return text

    def volume_record(self, volume_id: int, kind: Kind | None = None) -> Volume:
        volume = self.state.volumes.get(volume_id)
        if volume is None or (kind is not None and volume.kind != kind):
            raise UnknownVolume(volume_id=volume_id)
        return volume

    def volume(self, volume_id: int) -> VolumeInfo:
        with self.state.lock:
            return self._info(self.volume_record(volume_id))

    def volumes(self, kind: Kind | None = None) -> list[VolumeInfo]:
        with self.state.lock:
            return [self._info(v) for v in self.state.volumes.values() if kind is None or v.kind == kind]

    def _info(self, v: Volume) -> VolumeInfo:
        view = self.view()
        paths = tuple(
            loc.descriptor_path(self.state.datastores[loc.datastore].root)
            for loc in v.locations
            if loc.datastore in self.state.datastores
        )
        return VolumeInfo(
            id=v.id,
            kind=v.kind,
            name=v.name,
            guid=v.guid,
            status=render.effective_status(view, v),
            size_mb=v.size_mb,
            file_locations=tuple(loc.file_location for loc in v.locations),
            paths=paths,
            attached=bool(self.state.attachments_of(v.id)),
            product_id=v.product_id,
        )

    # --- jobs and import ---------------------------------------------------------------------

    def pending_jobs(self) -> int:
        return self.jobs.pending()

    def job_history(self) -> list[dict[str, Any]]:
        return [j.as_dict() for j in self.jobs.history()]

    def drain_jobs(self, timeout_s: float = 10.0) -> bool:
        """Run every queued job now and wait for the queue to empty."""
        self.jobs.release_all()
        return self.jobs.wait_idle(timeout_s)

    def import_folder(self, datastore: str, folder: str) -> list[Job]:
        """Queue one import job per descriptor in ``[datastore] folder``; they run after the job delay."""
        ctx, name, root, folder = self._import_target(datastore, folder)
        return [
            self.jobs.submit(
                f"ImportAppStackJob [{name}] {folder}/{p.name}",
                functools.partial(import_descriptor, ctx, name, root, folder, p.name),
            )
            for p in vmdk.scan_descriptors(root / folder)
        ]

    def import_folder_now(self, datastore: str, folder: str) -> list[str]:
        """Import every descriptor in ``[datastore] folder`` before returning; one result line each."""
        ctx, name, root, folder = self._import_target(datastore, folder)
        results = []
        for p in vmdk.scan_descriptors(root / folder):
            try:
                results.append(import_descriptor(ctx, name, root, folder, p.name))
            except SimulatorError as exc:
                results.append(f"failed: {exc}")
        return results

    def _import_target(self, datastore: str, folder: str) -> tuple[ImportContext, str, Path, str]:
        name = self.resolve_datastore(datastore)
        root = self.datastore_root(name)
        folder = normalise_folder(folder)
        if not (root / folder).is_dir():
            raise BadVolumeRequest(action="import", detail=f"no folder {folder!r} on datastore {name}")
        return ImportContext(self.flavour, self.settings.layout, self.state), name, root, folder

    def import_storage_group(self, group: StorageGroup) -> list[Job]:
        jobs: list[Job] = []
        for member in group.members:
            for folder in self.settings.layout.replicated_folders():
                if (self.datastore_root(member) / folder).is_dir():
                    jobs.extend(self.import_folder(member, folder))
        with self.state.lock:
            group.imported_at = now()
        return jobs

    # --- replication ---------------------------------------------------------------------------

    def replicate_now(self, group: str | None = None) -> ReplicationReport:
        """Run one replication pass over every auto-replicating group (or the named one)."""
        report = ReplicationReport()
        with self._replication_lock:
            for g in list(self.state.storage_groups.values()):
                if (group is None and g.auto_replicate) or g.name == group:
                    report = report + self._replicate(g)
        return report

    def _replicate(self, group: StorageGroup) -> ReplicationReport:
        roots = {name: ds.root for name, ds in self.state.datastores.items()}
        folders = self.settings.layout.replicated_folders()
        return replicate_group(self.state, group, roots, folders)

    def storage_group(self, group_id: int) -> StorageGroup:
        group = self.state.storage_groups.get(group_id)
        if group is None:
            raise UnknownStorageGroup(group_id=group_id)
        return group

    # --- volume operations shared by the API and the admin hooks --------------------------

    def grow_writables(self, ids: Sequence[int], size_mb: int, admin_upn: str = "") -> GrowResult:
        successes: list[str] = []
        warnings: list[str] = []
        errors: list[str] = []
        found = 0
        with self.state.lock:
            for volume_id in ids:
                volume = self.state.volumes.get(volume_id)
                if volume is None or volume.kind != "writable":
                    errors.append(f"Unable to find Writable Volume with ID {volume_id}")
                    continue
                found += 1
                if self.state.attachments_of(volume.id):
                    name = volume.name
                    warnings.append(f"Writable Volume {name} is attached. Make sure you shut down/logoff {name}.")
                elif size_mb <= volume.size_mb:
                    errors.append(f"Writable Volume {volume.name} is already {volume.size_mb}MB")
                else:
                    self._resize_files(volume, size_mb)
                    volume.size_mb = volume.requested_mb = size_mb
                    volume.updated_at = now()
                    self.state.record("Expand", volume, admin_upn)
                    successes.append(f"Successfully expanded Writable Volume {volume.name} to size {size_mb}MB")
        return GrowResult(tuple(successes), tuple(warnings), tuple(errors), found)

    def _resize_files(self, volume: Volume, size_mb: int) -> None:
        sectors = size_mb * MIB // vmdk.SECTOR_BYTES
        for loc in volume.locations:
            root = self.state.datastores[loc.datastore].root
            files = vmdk.volume_files(loc.descriptor_path(root))
            if len(files.extents) != 1 or not files.descriptor.is_file():
                raise BadVolumeRequest(action="grow", detail=f"{loc.file_location} is not a one-extent disk")
            text = files.descriptor.read_text(encoding="utf-8")
            with files.extents[0].open("r+b") as f:
                f.truncate(sectors * vmdk.SECTOR_BYTES)
            vmdk.write_text_atomic(files.descriptor, vmdk.resize_descriptor(text, sectors))

    def set_writables_enabled(self, ids: Sequence[int], enabled: bool, admin_upn: str = "") -> list[str]:
        word = "enabled" if enabled else "disabled"
        messages = []
        with self.state.lock:
            for volume_id in ids:
                volume = self.volume_record(volume_id, "writable")
                volume.status = word
                volume.updated_at = now()
                self.state.record("Enable" if enabled else "Disable", volume, admin_upn)
                messages.append(f"Writable Volume {volume.name} was {word}")
        return messages

    def delete_volumes(self, ids: Sequence[int], admin_upn: str = "", *, keep_files: bool = False) -> DeleteResult:
        deleted: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        not_found: list[int] = []
        with self.state.lock:
            view = self.view()
            for volume_id in ids:
                volume = self.state.volumes.get(volume_id)
                if volume is None:
                    not_found.append(volume_id)
                    continue
                rendered = _render_any(view, volume)
                if self.state.attachments_of(volume.id):
                    errors.append(rendered)
                    continue
                self._forget(volume)
                if not keep_files:
                    self._delete_files(volume)
                self.state.record("Delete", volume, admin_upn)
                deleted.append(rendered)
        return DeleteResult(tuple(deleted), tuple(errors), tuple(not_found))

    def _forget(self, volume: Volume) -> None:
        state = self.state
        del state.volumes[volume.id]
        # the manager deleted it on purpose: replication has no deletion left to propagate
        for group in state.storage_groups.values():
            group.settled -= {(loc.path, loc.filename) for loc in volume.locations}
        for table in (state.assignments, state.attachments):
            for key in [k for k, rec in table.items() if rec.volume_id == volume.id]:
                del table[key]
        # Deleting the package the CURRENT marker points at clears the marker, and the assignments
        # made through it go with it, as those pinned to the package do: none is left pointing at a
        # marker that no longer exists. The real manager's behaviour is not documented; this is what
        # the toolkit's restore expects (an application without a marker, whose marker assignments
        # are created again once the restored package is made CURRENT).
        cleared = {k for k, m in state.markers.items() if m.package_id == volume.id}
        for key in cleared:
            del state.markers[key]
        gone = [k for k, a in state.app_assignments.items() if a.package_id == volume.id or a.marker_id in cleared]
        for key in gone:
            del state.app_assignments[key]

    def _delete_files(self, volume: Volume) -> None:
        for loc in volume.locations:
            ds = self.state.datastores.get(loc.datastore)
            if ds is not None:
                vmdk.delete_volume(loc.descriptor_path(ds.root))

    # --- admin hooks (test and demo only; the real manager has no such calls) ------------

    def admin_create_volume(
        self,
        kind: Kind,
        name: str,
        *,
        datastore: str | None = None,
        folder: str | None = None,
        size_mb: int = 16,
        sidecar: bool = True,
        register: bool = True,
        status: str = "enabled",
        guid: str | None = None,
        description: str = "",
        product: str | None = None,
        version: str = "1.0",
        programs: Sequence[Mapping[str, str]] = (),
        owner_upn: str | None = None,
        current: bool = True,
        lifecycle_stage: str = "Published",
        create_type: str = "vmfs",
        content: bytes = b"",
    ) -> VolumeInfo:
        """Write a volume's files (descriptor, sparse flat extent, sidecars) and register it.

        ``register=False`` leaves only the files, as if copied there for a later import;
        ``sidecar=False`` writes no ``.vmdk.metadata``/``.json`` (an import then marks it legacy).
        The returned info has ``id == 0`` when not registered.
        """
        if kind not in KINDS:
            raise BadVolumeRequest(action="create a volume", detail=f"kind must be one of {KINDS}")
        if kind == "package" and self.flavour == "2.x":
            raise BadVolumeRequest(action="create a volume", detail="packages exist on 4.x managers only")
        if kind == "appstack" and self.flavour == "4.x":
            raise BadVolumeRequest(action="create a volume", detail="a 4.x manager holds packages, not AppStacks")
        ds_name = self.resolve_datastore(datastore or self.default_datastore())
        root = self.datastore_root(ds_name)
        folder = normalise_folder(folder or self.settings.layout.folder_for(kind))
        upn = owner_upn or (name if kind == "writable" else "")
        if kind == "writable" and "\\" not in upn:
            upn = f"{self.settings.domain}\\{upn}"
        display_name = upn if kind == "writable" else name
        base = vmdk.escape_volume_name(display_name)
        guid = guid or new_guid()
        product_name = product or name
        template = f"[{ds_name}] {self._template_for(kind)}"
        metadata = _metadata_doc(display_name, guid, description, template, self.settings.product_version, upn)
        package_doc = None
        if kind == "package":
            product_guid = self._product_guid(product_name)
            package_doc = _package_doc(display_name, guid, version, (product_name, product_guid), programs)
            package_doc["lifecycle_stage"] = lifecycle_stage
        if (root / folder / f"{base}.vmdk").exists():
            raise BadVolumeRequest(action="create a volume", detail=f"[{ds_name}] {folder}/{base}.vmdk exists")
        files = vmdk.write_volume(
            root / folder,
            base,
            size_mb * MIB,
            create_type=create_type,
            metadata=metadata if sidecar else None,
            package_json=package_doc if sidecar else None,
            content=content,
        )
        if not register:
            return VolumeInfo(0, kind, display_name, guid, "unregistered", size_mb, (), (files.descriptor,), False)
        with self.state.lock:
            volume = Volume(
                id=self.state.next_id("volume"),
                kind=kind,
                name=display_name,
                guid=guid,
                status=status,
                locations=[Location(ds_name, folder, files.descriptor.name)],
                size_mb=size_mb,
                description=description,
                template_file_name=template,
                template_version=self.settings.product_version,
                agent_version=self.settings.product_version,
                capture_version=self.settings.product_version,
                metadata=dict(metadata),
                version=version,
                lifecycle_stage_id=_stage_id(lifecycle_stage),
                requested_mb=size_mb,
            )
            volume.programs = [self._program(p) for p in programs]
            if kind == "writable":
                volume.owner = self.state.owner_for(upn)
            if kind == "package":
                self._link_product(volume, product_name, product_guid, current)
            self.state.volumes[volume.id] = volume
            return self._info(volume)

    def _template_for(self, kind: Kind) -> str:
        layout = self.settings.layout
        if kind == "writable":
            return f"{layout.writables_templates}/template_uia_only_persistent.vmdk"
        if kind == "package" and layout.packages_templates:
            return f"{layout.packages_templates}/template.vmdk"
        return f"{layout.apps_templates}/template.vmdk"

    def _program(self, doc: Mapping[str, str]) -> Program:
        return Program(
            id=self.state.next_id("program"),
            name=doc.get("name", ""),
            publisher=doc.get("publisher", ""),
            version=doc.get("version", ""),
            install_location=doc.get("install_location", ""),
            guid=doc.get("guid", ""),
        )

    def _product_guid(self, product_name: str) -> str:
        with self.state.lock:
            product = self.state.product_by_guid_or_name("", product_name)
            return product.guid if product else str(uuid.uuid4())

    def _link_product(self, volume: Volume, product_name: str, product_guid: str, current: bool) -> None:
        product = self.state.product_by_guid_or_name(product_guid, product_name)
        if product is None:
            product = Product(self.state.next_id("product"), product_name, product_guid)
            self.state.products[product.id] = product
        volume.product_id = product.id
        marker = self.state.marker_of(product.id)
        if current and marker is None:
            marker = Marker(self.state.next_id("marker"), product.id, volume.id)
            self.state.markers[marker.id] = marker
        elif current and marker is not None:
            marker.package_id = volume.id
            marker.updated_at = now()

    def admin_update_volume(
        self,
        volume_id: int,
        *,
        name: str | None = None,
        description: str | None = None,
        size_mb: int | None = None,
        writes: Mapping[int, bytes] | None = None,
    ) -> VolumeInfo:
        """Change a volume: record fields, sidecar, size (grows the files), bytes of its primary copy."""
        with self.state.lock:
            volume = self.volume_record(volume_id)
            if name is not None:
                volume.name = name
            if description is not None:
                volume.description = description
            if size_mb is not None and size_mb != volume.size_mb:
                if size_mb < volume.size_mb:
                    raise BadVolumeRequest(action="shrink a volume", detail="volumes only grow")
                self._resize_files(volume, size_mb)
                volume.size_mb = size_mb
            if writes:
                self._write_primary(volume, writes)
            self._rewrite_metadata(volume)
            volume.updated_at = now()
            return self._info(volume)

    def _write_primary(self, volume: Volume, writes: Mapping[int, bytes]) -> None:
        loc = volume.primary
        if loc is None:
            raise BadVolumeRequest(action="write", detail=f"volume {volume.id} has no file")
        files = vmdk.volume_files(loc.descriptor_path(self.datastore_root(loc.datastore)))
        if len(files.extents) != 1:
            raise BadVolumeRequest(action="write", detail=f"{loc.file_location} is not a one-extent disk")
        size = files.extents[0].stat().st_size
        with files.extents[0].open("r+b") as f:
            for offset, data in sorted(writes.items()):
                if offset < 0 or offset + len(data) > size:
                    raise BadVolumeRequest(action="write", detail=f"offset {offset} is outside the disk")
                f.seek(offset)
                f.write(data)
        text = files.descriptor.read_text(encoding="utf-8")
        vmdk.write_text_atomic(files.descriptor, vmdk.replace_cid(text, vmdk.new_cid()))

    def _rewrite_metadata(self, volume: Volume) -> None:
        for loc in volume.locations:
            ds = self.state.datastores.get(loc.datastore)
            if ds is None:
                continue
            files = vmdk.volume_files(loc.descriptor_path(ds.root))
            current = vmdk.read_metadata(files.metadata)
            if current is None:
                continue
            current.update({"name": volume.name, "description": volume.description})
            vmdk.write_text_atomic(files.metadata, vmdk.format_metadata(current))

    def admin_delete_volume(self, volume_id: int, *, keep_files: bool = False) -> None:
        """Remove a volume record (even an attached one) and, unless ``keep_files``, its files."""
        with self.state.lock:
            volume = self.volume_record(volume_id)
            for key in [k for k, a in self.state.attachments.items() if a.volume_id == volume_id]:
                del self.state.attachments[key]
            self._forget(volume)
            if not keep_files:
                self._delete_files(volume)

    def admin_attach(self, volume_id: int, machine: str = "DESKTOP-01", user_upn: str = "") -> int:
        """Attach a volume to a machine; a writable becomes ``Attached``. Returns the attachment id."""
        with self.state.lock:
            volume = self.volume_record(volume_id)
            attachment = Attachment(self.state.next_id("attachment"), volume.id, machine, user_upn)
            self.state.attachments[attachment.id] = attachment
            volume.mounted_at = attachment.created_at
            return attachment.id

    def admin_detach(self, volume_id: int, machine: str | None = None) -> int:
        """Detach a volume from one machine (or all); returns how many attachments ended."""
        with self.state.lock:
            self.volume_record(volume_id)
            ended = [
                k
                for k, a in self.state.attachments.items()
                if a.volume_id == volume_id and (machine is None or a.machine == machine)
            ]
            for key in ended:
                del self.state.attachments[key]
            return len(ended)

    def admin_refuse_assignments(
        self, distinguished_name: str, *, refuse: bool = True, package_id: int | None = None
    ) -> None:
        """Make the manager fail to save assignments of one directory entity (or stop doing so).

        2.x answers ``POST /cv_api/assignments`` with the documented 500 ("Unable to save
        assignment of …") and changes nothing; 4.x answers ``POST /app_volumes/app_assignments``
        with a 400 ("Unable to save assignment"). Unassigning and deleting are not affected.
        With ``package_id`` (4.x), only assignments pinned to that package fail.
        """
        dn = distinguished_name.lower()
        with self.state.lock:
            if package_id is None:
                (self.state.refused_entities.add if refuse else self.state.refused_entities.discard)(dn)
            elif refuse:
                self.state.refused_pins.add((dn, package_id))
            else:
                self.state.refused_pins.discard((dn, package_id))

    def admin_refuse_unassignments(
        self, distinguished_name: str | None = None, *, volume_id: int | None = None, refuse: bool = True
    ) -> None:
        """Make the manager fail to remove assignments of a directory entity, of a volume, or of both (or stop).

        2.x answers an unassign (``POST /cv_api/assignments``, action_type unassign) of such an
        assignment with the 500 the document gives for assignments it could not save (``errors``:
        "Unable to remove assignment of …") and changes nothing. 4.x answers ``DELETE
        /app_volumes/app_assignments`` naming such an assignment (``volume_id``: one pinned to that
        package) with the document's 500 server error and deletes none of the ids. Saving
        assignments is not affected; unassigning what is not assigned still only warns.
        """
        if distinguished_name is None and volume_id is None:
            raise BadVolumeRequest(action="refuse unassignments", detail="give a directory path, a volume id or both")
        key = (None if distinguished_name is None else distinguished_name.lower(), volume_id)
        with self.state.lock:
            (self.state.refused_removals.add if refuse else self.state.refused_removals.discard)(key)

    def admin_set_status(self, volume_id: int, status: str) -> VolumeInfo:
        if status not in VOLUME_STATUSES:
            raise BadVolumeRequest(action="set status", detail=f"{status!r} is not a manager status")
        with self.state.lock:
            volume = self.volume_record(volume_id)
            volume.status = status
            volume.updated_at = now()
            return self._info(volume)

    def admin_mark_provisioning(self, volume_id: int, computer: str = "CAPTURE-01") -> VolumeInfo:
        """A volume being captured or updated: status ``provisioning`` until finished."""
        with self.state.lock:
            volume = self.volume_record(volume_id)
            volume.status = "provisioning"
            volume.provisioning = True
            volume.provision_started_at = now()
            volume.provisioning_computer = render.owner_link("Computer", 0, f"{self.settings.domain}\\{computer}")
            return self._info(volume)

    def admin_finish_provisioning(self, volume_id: int) -> VolumeInfo:
        with self.state.lock:
            volume = self.volume_record(volume_id)
            volume.status = "enabled"
            volume.provisioning = False
            volume.provision_completed_at = now()
            return self._info(volume)

    def admin_set_busy(self, volume_id: int, state: str | None) -> VolumeInfo:
        """A writable's backup state (``Moving``, ``Backing Up``, ``Restoring``) or None."""
        if state is not None and state not in WRITABLE_STATES:
            raise BadVolumeRequest(action="set busy state", detail=f"{state!r} is not one of {WRITABLE_STATES}")
        with self.state.lock:
            volume = self.volume_record(volume_id, "writable")
            volume.busy_state = state
            return self._info(volume)


def _render_any(view: render.View, volume: Volume) -> dict[str, Any]:
    if volume.kind == "writable":
        return render.writable_detail(view, volume)
    if volume.kind == "package":
        return render.package_base(view, volume)
    return render.appstack_detail(view, volume)


def _stage_id(name: str) -> int:
    return next((i for i, n in LIFECYCLE_STAGES if n.lower() == name.lower()), 1)


def _metadata_doc(
    name: str, guid: str, description: str, template: str, version: str, owner_upn: str
) -> dict[str, object]:
    doc: dict[str, object] = {
        "name": name,
        "volume_guid": guid,
        "description": description,
        "template_file_name": template,
        "template_version": version,
        "created_at": render.fmt_time(now()),
    }
    if owner_upn:
        doc["owner_upn"] = owner_upn
    return doc


def _package_doc(
    name: str,
    guid: str,
    version: str,
    product: tuple[str, str],
    programs: Sequence[Mapping[str, str]],
) -> dict[str, object]:
    product_name, product_guid = product
    return {
        "name": name,
        "guid": guid.strip("{}"),
        "version": version,
        "app_product": {"name": product_name, "guid": product_guid},
        "programs": [dict(p) for p in programs],
    }
