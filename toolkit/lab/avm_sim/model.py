"""The simulated manager's database: volumes, applications, assignments, sessions…

Records are plain mutable dataclasses owned by :class:`SimState`; every read or write
happens under ``SimState.lock``. Nothing here does I/O except :meth:`Location.descriptor_path`.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Final, Literal

Flavour = Literal["2.x", "4.x"]
Kind = Literal["appstack", "package", "writable"]

FLAVOURS: Final = ("2.x", "4.x")
KINDS: Final = ("appstack", "package", "writable")
# Status values the vendor documents for volumes (writables carry exactly this enum).
VOLUME_STATUSES: Final = frozenset(
    {
        "missing",
        "unprovisioned",
        "provisioning",
        "reserved",
        "orphaned",
        "legacy",
        "limit_reached",
        "enabled",
        "failed",
        "creating",
        "canceled",
        "disabled",
        "unreachable",
        "assigned",
    }
)
WRITABLE_STATES: Final = frozenset({"Moving", "Backing Up", "Restoring"})
LIFECYCLE_STAGES: Final = ((1, "New"), (2, "Tested"), (3, "Published"), (4, "Retired"))
OPERATING_SYSTEMS: Final = ((1, "Windows 10 (x64)", "10", "0"), (2, "Windows 11 (x64)", "10", "0"))


def now() -> datetime:
    return datetime.now().astimezone()


def new_guid() -> str:
    """A volume GUID in the braced form the manager shows (``{xxxxxxxx-…}``)."""
    return "{" + str(uuid.uuid4()) + "}"


@dataclass(frozen=True, slots=True)
class Layout:
    """Folders (relative to a datastore root) the manager uses by default."""

    apps: str
    apps_templates: str
    writables: str
    writables_templates: str
    packages: str | None = None
    packages_templates: str | None = None
    writables_backup: str | None = None

    @classmethod
    def for_flavour(cls, flavour: Flavour) -> Layout:
        if flavour == "2.x":
            return cls(
                apps="cloudvolumes/apps",
                apps_templates="cloudvolumes/apps_templates",
                writables="cloudvolumes/writable",
                writables_templates="cloudvolumes/writable_templates",
            )
        return cls(
            apps="appvolumes/apps",
            apps_templates="appvolumes/apps_templates",
            writables="appvolumes/writables",
            writables_templates="appvolumes/writables_templates",
            packages="appvolumes/packages",
            packages_templates="appvolumes/packages_templates",
            writables_backup="appvolumes/writables_backup",
        )

    def folders(self) -> list[str]:
        values = [
            self.apps,
            self.apps_templates,
            self.writables,
            self.writables_templates,
            self.packages,
            self.packages_templates,
            self.writables_backup,
        ]
        return [v for v in values if v]

    def folder_for(self, kind: Kind) -> str:
        if kind == "writable":
            return self.writables
        if kind == "package" and self.packages:
            return self.packages
        return self.apps

    def replicated_folders(self) -> list[str]:
        """Storage groups replicate AppStacks and packages, never writables."""
        return [f for f in (self.apps, self.packages) if f]


@dataclass(slots=True)
class Datastore:
    id: int
    name: str
    root: Path
    attachable: bool = True


@dataclass(slots=True)
class Location:
    """One copy of a volume: ``[datastore] path/filename``."""

    datastore: str
    path: str
    filename: str
    created_at: datetime = field(default_factory=now)

    @property
    def base(self) -> str:
        return self.filename[: -len(".vmdk")] if self.filename.endswith(".vmdk") else self.filename

    @property
    def file_location(self) -> str:
        return f"[{self.datastore}] {PurePosixPath(self.path) / self.filename}"

    def descriptor_path(self, root: Path) -> Path:
        return root / self.path / self.filename

    def same_place(self, other: Location) -> bool:
        return (self.datastore, self.path, self.filename) == (other.datastore, other.path, other.filename)


@dataclass(slots=True)
class Program:
    id: int
    name: str
    publisher: str = ""
    version: str = ""
    install_location: str = ""
    guid: str = ""
    created_at: datetime = field(default_factory=now)


@dataclass(slots=True)
class Owner:
    """The user or computer a writable belongs to."""

    id: int
    upn: str  # down-level name, DOMAIN\\account
    entity_type: str = "User"
    object_guid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def account(self) -> str:
        return self.upn.split("\\")[-1]


@dataclass(slots=True)
class Volume:
    """A snapvol: an AppStack (2.x), a package (4.x) or a writable."""

    id: int
    kind: Kind
    name: str
    guid: str
    status: str
    locations: list[Location]
    size_mb: int
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)
    description: str = ""
    mounted_at: datetime | None = None
    template_file_name: str = ""
    template_version: str = ""
    agent_version: str = ""
    capture_version: str = ""
    primordial_os_id: int = 1
    programs: list[Program] = field(default_factory=list)
    metadata: dict[str, object] = field(default_factory=dict)
    # packages (4.x)
    product_id: int | None = None
    version: str = ""
    lifecycle_stage_id: int = 1
    delivery: str = "classic"
    note: str = ""
    provisioning: bool = False
    provision_started_at: datetime | None = None
    provision_completed_at: datetime | None = None
    provisioning_computer: str = ""
    # writables
    owner: Owner | None = None
    block_login: bool = False
    mount_prefix: str = ""
    error_action: str = ""
    defer_create: bool = False
    busy_state: str | None = None
    requested_mb: int = 0
    protected: bool = False

    @property
    def primary(self) -> Location | None:
        return self.locations[0] if self.locations else None


@dataclass(slots=True)
class Entity:
    """A directory object (user, group, computer, OU) assignments point at."""

    id: int
    entity_type: str
    distinguished_name: str

    @property
    def account_name(self) -> str:
        first = self.distinguished_name.split(",", 1)[0]
        return first.split("=", 1)[1] if "=" in first else first

    def upn(self, domain: str) -> str:
        return f"{domain}\\{self.account_name}"


@dataclass(slots=True)
class Attachment:
    id: int
    volume_id: int
    machine: str
    user_upn: str = ""
    created_at: datetime = field(default_factory=now)


@dataclass(slots=True)
class Assignment:
    """A 2.x AppStack assignment (one entity, one AppStack)."""

    id: int
    volume_id: int
    entity: Entity
    mount_prefix: str = ""
    created_at: datetime = field(default_factory=now)


@dataclass(slots=True)
class Product:
    """A 4.x application (``app_product``) grouping packages."""

    id: int
    name: str
    guid: str
    description: str = ""
    owner_guid: str = ""
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)


@dataclass(slots=True)
class Marker:
    """The CURRENT marker of an application, pointing at one package."""

    id: int
    product_id: int
    package_id: int
    name: str = "CURRENT"
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)


@dataclass(slots=True)
class AppAssignment:
    """A 4.x assignment: entities get an application's marker or one package."""

    id: int
    product_id: int
    package_id: int | None
    marker_id: int | None
    entities: list[Entity]
    filters: list[tuple[int, str, str]] = field(default_factory=list)
    delivery: str = "default"
    priority: int = 0
    mount_prefix: str = ""
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)


@dataclass(slots=True)
class StorageGroup:
    id: int
    name: str
    members: list[str]
    strategy: str = "Spread"
    auto_import: bool = True
    auto_replicate: bool = True
    member_prefix: str = ""
    template_storage: str | None = None
    created_at: datetime = field(default_factory=now)
    replicated_at: datetime | None = None
    imported_at: datetime | None = None
    # (folder, descriptor file name) present on every member after the last replication pass
    settled: set[tuple[str, str]] = field(default_factory=set)


@dataclass(slots=True)
class Activity:
    id: int
    action: str
    target_type: str
    target_id: int
    target_name: str
    admin_upn: str
    log: str = "Success"
    event_time: datetime = field(default_factory=now)


@dataclass(slots=True)
class Session:
    token: str
    username: str
    created_at: float
    last_seen: float


@dataclass(slots=True)
class SimState:
    """Everything the manager knows. Hold ``lock`` while reading or writing."""

    datastores: dict[str, Datastore] = field(default_factory=dict)
    volumes: dict[int, Volume] = field(default_factory=dict)
    products: dict[int, Product] = field(default_factory=dict)
    markers: dict[int, Marker] = field(default_factory=dict)
    attachments: dict[int, Attachment] = field(default_factory=dict)
    assignments: dict[int, Assignment] = field(default_factory=dict)
    app_assignments: dict[int, AppAssignment] = field(default_factory=dict)
    entities: dict[str, Entity] = field(default_factory=dict)
    owners: dict[str, Owner] = field(default_factory=dict)
    storage_groups: dict[int, StorageGroup] = field(default_factory=dict)
    activities: list[Activity] = field(default_factory=list)
    sessions: dict[str, Session] = field(default_factory=dict)
    # Directory paths (lower case) whose assignments the manager fails to save (a test's injected fault).
    refused_entities: set[str] = field(default_factory=set)
    refused_pins: set[tuple[str, int]] = field(default_factory=set)  # the same, pinned to one package only (4.x)
    # (directory path in lower case, volume id) whose assignments the manager fails to remove; None matches any.
    refused_removals: set[tuple[str | None, int | None]] = field(default_factory=set)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _counters: dict[str, Iterator[int]] = field(default_factory=dict)

    def next_id(self, table: str) -> int:
        counter = self._counters.setdefault(table, itertools.count(1))
        return next(counter)

    # --- look-ups -------------------------------------------------------------------------

    def volumes_of(self, kind: Kind) -> list[Volume]:
        return [v for v in self.volumes.values() if v.kind == kind]

    def volume_by_guid(self, guid: str) -> Volume | None:
        if not guid:
            return None
        wanted = guid.strip("{}").lower()
        for v in self.volumes.values():
            if v.guid and v.guid.strip("{}").lower() == wanted:
                return v
        return None

    def volume_at(self, location: Location) -> Volume | None:
        for v in self.volumes.values():
            if any(loc.same_place(location) for loc in v.locations):
                return v
        return None

    def attachments_of(self, volume_id: int) -> list[Attachment]:
        return [a for a in self.attachments.values() if a.volume_id == volume_id]

    def removal_refused(self, entities: Sequence[Entity], volume_id: int | None) -> bool:
        """Whether the manager is made to fail removing an assignment of these entities from this volume."""
        names = {e.distinguished_name.lower() for e in entities}
        return any(
            (dn is None or dn in names) and (refused is None or refused == volume_id)
            for dn, refused in self.refused_removals
        )

    def assignments_of(self, volume_id: int) -> list[Assignment]:
        return [a for a in self.assignments.values() if a.volume_id == volume_id]

    def packages_of(self, product_id: int) -> list[Volume]:
        return [v for v in self.volumes.values() if v.kind == "package" and v.product_id == product_id]

    def marker_of(self, product_id: int) -> Marker | None:
        return next((m for m in self.markers.values() if m.product_id == product_id), None)

    def app_assignments_of_product(self, product_id: int) -> list[AppAssignment]:
        return [a for a in self.app_assignments.values() if a.product_id == product_id]

    def app_assignments_of_package(self, package: Volume) -> list[AppAssignment]:
        """Assignments that deliver ``package``: pinned to it, or to the marker pointing at it."""
        marker = self.marker_of(package.product_id) if package.product_id else None
        out = []
        for a in self.app_assignments.values():
            pinned = a.package_id == package.id
            via_marker = marker is not None and a.marker_id == marker.id and marker.package_id == package.id
            if pinned or via_marker:
                out.append(a)
        return out

    def product_by_guid_or_name(self, guid: str, name: str) -> Product | None:
        for p in self.products.values():
            if guid and p.guid.strip("{}").lower() == guid.strip("{}").lower():
                return p
        for p in self.products.values():
            if name and p.name == name:
                return p
        return None

    def entity_for(self, entity_type: str, distinguished_name: str) -> Entity:
        key = distinguished_name.lower()
        entity = self.entities.get(key)
        if entity is None:
            entity = Entity(self.next_id("entity"), entity_type, distinguished_name)
            self.entities[key] = entity
        return entity

    def owner_for(self, upn: str, entity_type: str = "User") -> Owner:
        key = upn.lower()
        owner = self.owners.get(key)
        if owner is None:
            owner = Owner(self.next_id("owner"), upn, entity_type)
            self.owners[key] = owner
        return owner

    def group_of(self, datastore: str) -> StorageGroup | None:
        return next((g for g in self.storage_groups.values() if datastore in g.members), None)

    def record(self, action: str, target: Volume | None, admin_upn: str, log: str = "Success") -> None:
        self.activities.append(
            Activity(
                id=self.next_id("activity"),
                action=action,
                target_type="Snapvol" if target else "Manager",
                target_id=target.id if target else 0,
                target_name=target.name if target else "",
                admin_upn=admin_upn,
                log=log,
            )
        )
