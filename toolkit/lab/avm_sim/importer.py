"""Import: register the volumes found as descriptor files in a datastore folder.

Per descriptor the manager reads the extents it names (they must exist, except vSAN
objects), the ``.vmdk.metadata`` sidecar and, for 4.x packages, the ``.json`` sidecar.
A volume whose GUID is already known gains a location; an unknown one becomes a new
record; with no sidecar at all it is marked ``legacy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

from toolkit.lab.avm_sim import vmdk
from toolkit.lab.avm_sim.errors import BadVolumeRequest
from toolkit.lab.avm_sim.model import (
    LIFECYCLE_STAGES,
    Flavour,
    Kind,
    Layout,
    Location,
    Product,
    Program,
    SimState,
    Volume,
    new_guid,
    now,
)

MIB: Final = 1 << 20  # descriptor sizes are reported in MB


@dataclass(frozen=True, slots=True)
class ImportContext:
    flavour: Flavour
    layout: Layout
    state: SimState


@dataclass(frozen=True, slots=True)
class Sidecars:
    metadata: dict[str, object] | None
    package_json: dict[str, object] | None

    @property
    def present(self) -> bool:
        return self.metadata is not None or self.package_json is not None

    def text(self, *keys: str) -> str:
        for source in (self.metadata, self.package_json):
            if not source:
                continue
            for key in keys:
                value = source.get(key)
                if value not in (None, ""):
                    return str(value)
        return ""


def normalise_folder(folder: str) -> str:
    return str(PurePosixPath("/" + folder.strip().replace("\\", "/")).relative_to("/"))


def kind_for_folder(ctx: ImportContext, folder: str) -> Kind:
    """Writables live under the writable path; everything else is an AppStack (2.x) or package (4.x)."""
    norm = normalise_folder(folder)
    writables = ctx.layout.writables
    if norm == writables or norm.startswith(writables + "/"):
        return "writable"
    return "appstack" if ctx.flavour == "2.x" else "package"


def read_sidecars(files: vmdk.VolumeFiles, kind: Kind) -> Sidecars:
    package_json = vmdk.read_package_json(files.package_json) if kind != "writable" else None
    return Sidecars(vmdk.read_metadata(files.metadata), package_json)


def import_descriptor(ctx: ImportContext, datastore: str, root: Path, folder: str, name: str) -> str:
    """Import one descriptor; returns a one-line result, raises when the files are unusable."""
    folder = normalise_folder(folder)
    path = root / folder / name
    kind = kind_for_folder(ctx, folder)
    if not path.is_file():
        raise BadVolumeRequest(action="import", detail=f"{path.name} is gone")
    descriptor = vmdk.read_descriptor(path)
    files = vmdk.volume_files(path)
    missing = vmdk.missing_extents(files)
    if missing:
        raise BadVolumeRequest(action="import", detail=f"extent {missing[0].name} of {name} is missing")
    sidecars = read_sidecars(files, kind)
    location = Location(datastore, folder, name)
    size_mb = max(1, descriptor.size_bytes // MIB)
    with ctx.state.lock:
        guid = sidecars.text("volume_guid", "guid")
        known = ctx.state.volume_by_guid(guid) or ctx.state.volume_at(location)
        if known is not None:
            return _refresh(ctx, known, location, sidecars, size_mb)
        volume = _create(ctx, kind, location, sidecars, size_mb)
    return f"imported {volume.kind} {volume.name!r} (id {volume.id}) from {location.file_location}"


def _refresh(ctx: ImportContext, volume: Volume, location: Location, sidecars: Sidecars, size_mb: int) -> str:
    if not any(loc.same_place(location) for loc in volume.locations):
        volume.locations.append(location)
        action = "added location"
    else:
        action = "refreshed"
    if sidecars.present:
        _apply_sidecars(ctx, volume, sidecars)
        if volume.status in ("legacy", "missing"):
            volume.status = "enabled"
    volume.size_mb = size_mb
    volume.updated_at = now()
    return f"{action} {location.file_location} for {volume.kind} {volume.name!r} (id {volume.id})"


def _create(ctx: ImportContext, kind: Kind, location: Location, sidecars: Sidecars, size_mb: int) -> Volume:
    state = ctx.state
    name = sidecars.text("name", "package_name") or vmdk.unescape_volume_name(location.base)
    volume = Volume(
        id=state.next_id("volume"),
        kind=kind,
        name=name,
        guid=_braced(sidecars.text("volume_guid", "guid")) if sidecars.present else "",
        status="enabled" if sidecars.present else "legacy",
        locations=[location],
        size_mb=size_mb,
        template_file_name=f"[{location.datastore}] {_template_path(ctx, kind)}",
    )
    if sidecars.present and not volume.guid:
        volume.guid = new_guid()
    _apply_sidecars(ctx, volume, sidecars)
    if kind == "writable":
        upn = sidecars.text("owner_upn", "owner") or name
        volume.owner = state.owner_for(upn, sidecars.text("owner_type") or "User")
    if kind == "package":
        _attach_product(ctx, volume, sidecars)
    state.volumes[volume.id] = volume
    return volume


def _braced(guid: str) -> str:
    guid = guid.strip()
    if not guid:
        return ""
    return guid if guid.startswith("{") else "{" + guid + "}"


def _template_path(ctx: ImportContext, kind: Kind) -> str:
    layout = ctx.layout
    if kind == "writable":
        return f"{layout.writables_templates}/template_uia_only_persistent.vmdk"
    if kind == "package" and layout.packages_templates:
        return f"{layout.packages_templates}/template.vmdk"
    return f"{layout.apps_templates}/template.vmdk"


def _apply_sidecars(ctx: ImportContext, volume: Volume, sidecars: Sidecars) -> None:
    if not sidecars.present:
        return
    meta = sidecars.metadata or {}
    volume.metadata = dict(meta)
    for attr, keys in (
        ("description", ("description",)),
        ("template_file_name", ("template_file_name",)),
        ("template_version", ("template_version",)),
        ("agent_version", ("agent_version",)),
        ("capture_version", ("capture_version",)),
        ("version", ("version", "package_version")),
        ("note", ("note",)),
        ("delivery", ("delivery",)),
    ):
        value = sidecars.text(*keys)
        if value:
            setattr(volume, attr, value)
    name = sidecars.text("name", "package_name")
    if name:
        volume.name = name
    guid = _braced(sidecars.text("volume_guid", "guid"))
    if guid:
        volume.guid = guid
    pj = sidecars.package_json or {}
    stage = str(pj.get("lifecycle_stage") or "")
    volume.lifecycle_stage_id = next((i for i, n in LIFECYCLE_STAGES if n.lower() == stage.lower()), 1)
    programs = pj.get("programs")
    if isinstance(programs, list):
        volume.programs = [_program(ctx, p) for p in programs if isinstance(p, dict)]


def _program(ctx: ImportContext, doc: dict[str, Any]) -> Program:
    return Program(
        id=ctx.state.next_id("program"),
        name=str(doc.get("name") or ""),
        publisher=str(doc.get("publisher") or ""),
        version=str(doc.get("version") or ""),
        install_location=str(doc.get("install_location") or ""),
        guid=str(doc.get("guid") or ""),
    )


def product_identity(sidecars: Sidecars, fallback_name: str) -> tuple[str, str]:
    """(guid, name) of the application a package belongs to, as far as the sidecars say."""
    pj = sidecars.package_json or {}
    for key in ("app_product", "application"):
        nested = pj.get(key)
        if isinstance(nested, dict):
            return str(nested.get("guid") or ""), str(nested.get("name") or fallback_name)
    guid = sidecars.text("app_product_guid", "application_guid")
    name = sidecars.text("app_product_name", "application_name") or fallback_name
    return guid, name


def _attach_product(ctx: ImportContext, volume: Volume, sidecars: Sidecars) -> None:
    """Re-associate a package with its application, creating the application if needed."""
    state = ctx.state
    guid, name = product_identity(sidecars, volume.name)
    product = state.product_by_guid_or_name(guid, name)
    if product is None:
        product = Product(id=state.next_id("product"), name=name, guid=guid or new_guid().strip("{}"))
        state.products[product.id] = product
    clash = next((p for p in state.packages_of(product.id) if p.name == volume.name), None)
    if clash is not None:
        raise BadVolumeRequest(
            action="import", detail=f"a package named {volume.name!r} already exists (id {clash.id})"
        )
    volume.product_id = product.id
