"""JSON views of the simulator's records, in the shapes each manager flavour returns.

Field names follow the vendor OpenAPI documents and the reference notes; values that
the vendor leaves unset on a real manager are empty strings unless a documented example
shows ``null``.
"""

from __future__ import annotations

import html
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from toolkit.lab.avm_sim import vmdk
from toolkit.lab.avm_sim.model import (
    LIFECYCLE_STAGES,
    OPERATING_SYSTEMS,
    Activity,
    AppAssignment,
    Assignment,
    Attachment,
    Datastore,
    Entity,
    Flavour,
    Layout,
    Location,
    Marker,
    Product,
    Program,
    SimState,
    StorageGroup,
    Volume,
)

MIB: Final = 1 << 20  # sizes in the API are MB
MACHINE_MANAGER_TYPE: Final = "vCenter Server"  # not shown in public sources; a plausible label


@dataclass(frozen=True, slots=True)
class View:
    """What every renderer needs: the flavour, the naming context and the state (locked)."""

    flavour: Flavour
    datacenter: str
    domain: str
    machine_manager_host: str
    layout: Layout
    state: SimState

    def root(self, datastore: str) -> Path | None:
        ds = self.state.datastores.get(datastore)
        return ds.root if ds else None

    def uniq_string(self, datastore: str) -> str:
        return f"{datastore}|{self.datacenter}|1"


# --- small formatting helpers ----------------------------------------------------------------


def fmt_time(t: datetime | None) -> str:
    """Ruby ``Time#to_s``: ``2016-11-23 13:10:13 -0800``; empty when unset."""
    return t.strftime("%Y-%m-%d %H:%M:%S %z") if t else ""


def fmt_human(t: datetime | None) -> str:
    return t.strftime("%b %d %Y") if t else ""


def fmt_size(size_mb: int) -> str:
    if size_mb >= 1024:
        return f"{size_mb / 1024:.2f} GB"
    return f"{size_mb:.2f} MB"


def fmt_bytes(n: int) -> str:
    for unit, scale in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1024:.1f} KB"


def os_name(os_id: int) -> str:
    return next((name for i, name, _, _ in OPERATING_SYSTEMS if i == os_id), "Windows 10 (x64)")


def owner_link(entity_type: str, entity_id: int, upn: str) -> str:
    folder = "Computers" if entity_type == "Computer" else "Users"
    name = html.escape(upn)
    return f'<a href="/directory#/{folder}/{entity_id}" title="{name}">{name}</a>'


# --- state derived from the files ----------------------------------------------------------


def location_present(view: View, loc: Location) -> bool:
    root = view.root(loc.datastore)
    return root is not None and loc.descriptor_path(root).is_file()


def effective_status(view: View, volume: Volume) -> str:
    """The stored status, or ``missing`` when no copy of the descriptor is left."""
    if volume.locations and not any(location_present(view, loc) for loc in volume.locations):
        return "missing"
    return volume.status


def used_mb(view: View, volume: Volume) -> int:
    loc = volume.primary
    root = view.root(loc.datastore) if loc else None
    if loc is None or root is None:
        return 0
    files = vmdk.volume_files(loc.descriptor_path(root))
    return sum(vmdk.allocated_bytes(p) for p in files.extents) // MIB


def mounted_on(view: View, volume: Volume) -> str:
    attachments = view.state.attachments_of(volume.id)
    if not attachments:
        return ""
    a = attachments[0]
    return f"Machine <{a.machine}> (#{{{a.id:016d}}})"


def _location_fields(volume: Volume) -> dict[str, Any]:
    loc = volume.primary
    return {
        "path": loc.path if loc else "",
        "filename": loc.filename if loc else "",
        "datastore_name": loc.datastore if loc else "",
        "file_location": loc.file_location if loc else "",
    }


def _times(prefix: str, t: datetime | None) -> dict[str, str]:
    return {prefix: fmt_time(t), f"{prefix}_human": fmt_human(t)}


# --- 2.x AppStacks -----------------------------------------------------------------------------


def appstack_index(view: View, v: Volume) -> dict[str, Any]:
    loc = _location_fields(v)
    return {
        "id": v.id,
        "name": v.name,
        "name_html": html.escape(v.name),
        "path": loc["path"],
        "datastore_name": loc["datastore_name"],
        "status": effective_status(view, v),
        **_times("created_at", v.created_at),
        **_times("mounted_at", v.mounted_at),
        "mount_count": len(view.state.attachments_of(v.id)),
        "size_mb": v.size_mb,
        "template_version": v.template_version,
        "assignments_total": len(view.state.assignments_of(v.id)),
        "attachments_total": len(view.state.attachments_of(v.id)),
        "attachment_limit": 0,
    }


def appstack_detail(view: View, v: Volume) -> dict[str, Any]:
    loc = _location_fields(v)
    provisioning = v.status == "provisioning"
    return {
        **appstack_index(view, v),
        "filename": loc["filename"],
        "file_location": loc["file_location"],
        "description": v.description,
        "location_count": len(v.locations),
        "application_count": len(v.programs),
        "application_icons": [f"/snapvols/{v.id}/{p.id}.ico" for p in v.programs],
        "volume_guid": v.guid,
        "template_file_name": v.template_file_name,
        "agent_version": v.agent_version,
        "capture_version": v.capture_version,
        "primordial_os_id": v.primordial_os_id,
        "primordial_os_name": os_name(v.primordial_os_id),
        "oses": [{"id": v.primordial_os_id, "name": os_name(v.primordial_os_id)}],
        "parent_snapvol": "",
        "provisioning_duration": "",
        "provisioning_since": fmt_human(v.provision_started_at) if provisioning else "",
        "provisioning_computer": v.provisioning_computer if provisioning else "",
    }


def file_entry(view: View, loc: Location) -> dict[str, Any]:
    present = location_present(view, loc)
    return {
        "name": loc.filename,
        "path": loc.path,
        "missing": not present,
        "reachable": view.root(loc.datastore) is not None,
        "storage_location": loc.datastore,
        "machine_manager_host": view.machine_manager_host,
        "machine_manager_type": MACHINE_MANAGER_TYPE,
        **_times("created_at", loc.created_at),
    }


def application_2x(program: Program) -> dict[str, Any]:
    return {
        "id": program.id,
        "name": program.name,
        "guid": program.guid,
        "icon": "",
        "ing_icon": "",
        "status": "enabled",
        "version": program.version,
        "publisher": program.publisher,
        **_times("created_at", program.created_at),
    }


def assignment_for_appstack(view: View, a: Assignment) -> dict[str, Any]:
    return {
        "name": owner_link(a.entity.entity_type, a.entity.id, a.entity.upn(view.domain)),
        "entity_type": a.entity.entity_type.lower(),
        "mount_prefix": a.mount_prefix,
        # typed as a string in the vendor document
        "unmount_computer_assignments": "false",
    }


def assignment_2x(view: View, a: Assignment) -> dict[str, Any]:
    volume = view.state.volumes.get(a.volume_id)
    return {
        "id": a.id,
        "entity_type": a.entity.entity_type,
        "entity_upn": a.entity.upn(view.domain),
        "entity_dn": a.entity.distinguished_name,
        "snapvol_id": a.volume_id,
        "snapvol_name": volume.name if volume else "",
        "snapvol_type": "AppStack",
        "mount_prefix": a.mount_prefix,
        **_times("created_at", a.created_at),
    }


def attachment_for_volume(view: View, a: Attachment) -> dict[str, Any]:
    return {
        "name": owner_link("Computer", a.id, f"{view.domain}\\{a.machine}$"),
        "entity_type": "Computer",
    }


def attachment_entry(view: View, a: Attachment) -> dict[str, Any]:
    volume = view.state.volumes.get(a.volume_id)
    return {
        "id": a.id,
        "snapvol_id": a.volume_id,
        "snapvol_name": volume.name if volume else "",
        "snapvol_type": _kind_label(volume),
        "machine_name": a.machine,
        "user_upn": a.user_upn,
        **_times("created_at", a.created_at),
    }


def _kind_label(volume: Volume | None) -> str:
    if volume is None:
        return ""
    return {"appstack": "AppStack", "package": "Package", "writable": "Writable"}[volume.kind]


# --- writables -------------------------------------------------------------------------------


def _owner_fields(view: View, v: Volume) -> dict[str, Any]:
    owner = v.owner
    upn = owner.upn if owner else v.name
    entity_type = owner.entity_type if owner else "User"
    owner_id = owner.id if owner else 0
    folder = "Computers" if entity_type == "Computer" else "Users"
    return {
        "owner": owner_link(entity_type, owner_id, upn),
        "link": f"/directory#/{folder}/{owner_id}",
        "owner_name": owner.account if owner else upn,
        "owner_type": entity_type,
        "owner_upn": upn,
        "owner_upn_html": html.escape(upn),
        "owner_object_guid": owner.object_guid if owner else "",
        "_owner_id": owner_id,
    }


def _space_fields(view: View, v: Volume) -> dict[str, Any]:
    used = min(used_mb(view, v), v.size_mb)
    free = max(v.size_mb - used, 0)
    percent = f"{free * 100 // v.size_mb}" if v.size_mb else "Unknown"
    return {"size_mb": v.size_mb, "free_mb": free, "total_mb": v.size_mb, "percent_available": percent}


def writable_index(view: View, v: Volume) -> dict[str, Any]:
    owner = _owner_fields(view, v)
    owner_id = owner.pop("_owner_id")
    attachments = view.state.attachments_of(v.id)
    out: dict[str, Any] = {
        "id": v.id,
        "name": v.name,
        "name_html": html.escape(v.name),
        "title": v.name,
        "title_html": html.escape(v.name),
        **owner,
        **_times("created_at", v.created_at),
        **_times("updated_at", v.updated_at),
        **_times("mounted_at", v.mounted_at),
        "mount_count": len(attachments),
        "attached": "Attached" if attachments else "Detached",
        "status": effective_status(view, v),
        **_space_fields(view, v),
        "template_version": v.template_version,
        "filename": _location_fields(v)["filename"],
        "path": _location_fields(v)["path"],
        "datastore_name": _location_fields(v)["datastore_name"],
        "volume_guid": v.guid,
        "datastore_host": "",
        "error_action": v.error_action,
        "busy": v.busy_state is not None,
        "state": v.busy_state,
        "can_expand": not attachments,
    }
    if view.flavour == "4.x":
        out |= {
            "owner_id": owner_id,
            "requested_mb": v.requested_mb or v.size_mb,
            "version_count": 1,
            "type": "DataDisk",
            "display_type": "Writable Volume",
        }
    return out


def writable_detail(view: View, v: Volume) -> dict[str, Any]:
    out = writable_index(view, v)
    out |= {
        "description": v.description,
        "mounted_on": mounted_on(view, v),
        "block_login": v.block_login,
        "mount_prefix": v.mount_prefix,
        "defer_create": v.defer_create,
        "machine_manager_host": view.machine_manager_host,
        "machine_manager_type": MACHINE_MANAGER_TYPE,
        "file_location": _location_fields(v)["file_location"],
        "template_file_name": v.template_file_name,
        "protected": v.protected,
        "primordial_os_id": v.primordial_os_id,
        "primordial_os_name": os_name(v.primordial_os_id),
        "oses": [{"id": v.primordial_os_id, "name": os_name(v.primordial_os_id)}],
    }
    group = next((view.state.group_of(loc.datastore) for loc in v.locations), None)
    if group is not None:
        out["storage_group"] = group.name
        out["storage_group_members"] = str(len(group.members))
    if view.flavour == "4.x":
        out |= {
            "files_count": len(v.locations),
            "version_tag": "",
            "enable_version": False,
        }
    return out


# --- 4.x applications, packages, programs --------------------------------------------------------


def lifecycle_stage(stage_id: int) -> dict[str, Any]:
    name = next((n for i, n in LIFECYCLE_STAGES if i == stage_id), "New")
    return {"id": stage_id, "name": name, "priority": stage_id}


def product_base(view: View, p: Product) -> dict[str, Any]:
    packages = view.state.packages_of(p.id)
    return {
        "id": p.id,
        "name": p.name,
        "guid": p.guid,
        "icon": "",
        "assignment_count": len(view.state.app_assignments_of_product(p.id)),
        "description": p.description,
        "app_packages_count": len(packages),
        "owner_guid": p.owner_guid,
        "status": "active",
        "delete_status": "",
        **_times("created_at", p.created_at),
        **_times("updated_at", p.updated_at),
    }


def product_with_packages(view: View, p: Product) -> dict[str, Any]:
    packages = [package_base(view, v) for v in view.state.packages_of(p.id)]
    return {**product_base(view, p), "app_packages": packages}


def package_base(view: View, v: Volume) -> dict[str, Any]:
    loc = _location_fields(v)
    status = effective_status(view, v)
    attachments = view.state.attachments_of(v.id)
    present = any(location_present(view, loc_) for loc_ in v.locations)
    return {
        "id": v.id,
        "name": v.name,
        "guid": v.guid.strip("{}"),
        "app_product_id": v.product_id or 0,
        "lifecycle_stage_id": v.lifecycle_stage_id,
        "state": "Package",
        "version": v.version,
        "description": v.description,
        "note": v.note,
        "display_delivery": v.delivery.replace("_", " ").title(),
        "delivery": v.delivery,
        "delivery_format": "VMDK",
        "capable_of_on_demand": False,
        "status": status,
        "enabled": status == "enabled",
        "writable": False,
        "missing": not present,
        "reachable": present,
        "protected": v.protected,
        "programs_count": len(v.programs),
        "icon": "",
        "operating_systems_count": 1,
        "delete_status": "",
        **_times("created_at", v.created_at),
        **_times("updated_at", v.updated_at),
        **_times("added_at", v.created_at),
        "attachment_count": len(attachments),
        "assignment_count": len(view.state.app_assignments_of_package(v)),
        "total_use_count": len(attachments),
        "type": "AppPackage",
        "format": "AV",
        "path": loc["path"],
        "filename": loc["filename"],
        "datastore_name": loc["datastore_name"],
        "files_count": len(v.locations),
        "provision_uuid": "",
        "provisioning": v.provisioning,
        "provision_started_at": fmt_time(v.provision_started_at),
        "provision_completed_at": fmt_time(v.provision_completed_at),
        "provision_duration": "",
        "size_mb": v.size_mb,
        "size_human": fmt_size(v.size_mb),
        "volume_guid": v.guid,
        "snapvol_version_id": v.id,
        "mount_prefix": "",
        "mounted_at": fmt_time(v.mounted_at),
        "template_file_name": v.template_file_name,
        "template_version": v.template_version,
        "agent_version": v.agent_version,
        "capture_version": v.capture_version,
        "free_mb": max(v.size_mb - used_mb(view, v), 0),
        "total_mb": v.size_mb,
        "attachment_limit": 0,
        "primordial_os_id": v.primordial_os_id,
        "primordial_os_name": os_name(v.primordial_os_id),
    }


def marker_view(view: View, m: Marker) -> dict[str, Any]:
    product = view.state.products.get(m.product_id)
    return {
        "id": m.id,
        "name": m.name,
        "app_product_id": m.product_id,
        "app_product_name": product.name if product else "",
        "app_package_id": m.package_id,
        **_times("created_at", m.created_at),
        **_times("updated_at", m.updated_at),
        "assignable": "true",
    }


def package_with_includes(view: View, v: Volume, include: set[str]) -> dict[str, Any]:
    out = package_base(view, v)
    product = view.state.products.get(v.product_id) if v.product_id else None
    if "app_product" in include and product is not None:
        out["app_product"] = product_base(view, product)
    if "app_markers" in include:
        marker = view.state.marker_of(v.product_id) if v.product_id else None
        out["app_markers"] = [marker_view(view, marker)] if marker and marker.package_id == v.id else []
    if "lifecycle_stage" in include:
        out["lifecycle_stage"] = lifecycle_stage(v.lifecycle_stage_id)
    return out


def program_4x(program: Program, package_id: int) -> dict[str, Any]:
    return {
        "id": program.id,
        "name": program.name,
        "publisher": program.publisher,
        "install_location": program.install_location,
        "version": program.version,
        "icon": "",
        **_times("created_at", program.created_at),
        **_times("updated_at", program.created_at),
        "app_package_id": package_id,
    }


def package_operating_systems(v: Volume) -> list[dict[str, Any]]:
    return [
        {
            "id": os_id,
            "name": name,
            "major_version": major,
            "minor_version": minor,
            "proc_arch": "9",
            "product_type_human": "Workstation",
        }
        for os_id, name, major, minor in OPERATING_SYSTEMS
        if os_id == v.primordial_os_id
    ]


def entity_view(view: View, e: Entity) -> dict[str, Any]:
    return {
        "id": e.id,
        "entity_type": e.entity_type,
        "name": e.account_name,
        "account_name": e.account_name,
        "upn": e.upn(view.domain),
        "distinguished_name": e.distinguished_name,
    }


def app_assignment(view: View, a: AppAssignment, *, for_package: Volume | None = None) -> dict[str, Any]:
    """One assignment in ``/app_products/{id}/assignments`` or ``/app_packages/{id}/assignments``."""
    product = view.state.products.get(a.product_id)
    marker = view.state.markers.get(a.marker_id) if a.marker_id else None
    package_id = a.package_id if a.package_id is not None else (for_package.id if for_package else None)
    package = view.state.volumes.get(package_id) if package_id else None
    out: dict[str, Any] = {
        "id": a.id,
        "app_product_id": a.product_id,
        "app_product_name": product.name if product else "",
        "app_package_id": package_id,
        "app_package_name": package.name if package else None,
        "priority": a.priority,
        "mount_prefix": a.mount_prefix,
        "delivery": a.delivery,
        **_times("created_at", a.created_at),
        **_times("updated_at", a.updated_at),
        "entities": [entity_view(view, e) for e in a.entities],
        "filters": [{"id": i, "type": t, "value": val} for i, t, val in a.filters],
    }
    if marker is not None:
        out["app_marker_id"] = marker.id
        out["app_marker_name"] = marker.name
    return out


def app_assignment_resource(view: View, a: AppAssignment, base_url: str) -> dict[str, Any]:
    """JSON:API form used by ``GET /app_volumes/app_assignments?api_version=…``."""
    attributes: dict[str, Any] = {
        "app_product_id": a.product_id,
        "delivery": a.delivery,
        **_times("created_at", a.created_at),
        **_times("updated_at", a.updated_at),
    }
    relationships: dict[str, Any] = {
        "app_product": {"data": {"type": "app_products", "id": a.product_id}},
        "app_assignment_entities": {"data": [{"type": "app_assignment_entities", "id": e.id} for e in a.entities]},
        "assignment_filters": {"data": [{"type": "assignment_filters", "id": i} for i, _, _ in a.filters]},
    }
    if a.marker_id is not None:
        attributes["app_marker_id"] = a.marker_id
        relationships["app_marker"] = {"data": {"type": "app_markers", "id": a.marker_id}}
    if a.package_id is not None:
        attributes["app_package_id"] = a.package_id
        relationships["app_package"] = {"data": {"type": "app_packages", "id": a.package_id}}
    return {
        "id": a.id,
        "type": "app_assignments",
        "links": {"self": f"{base_url}/app_volumes/app_assignments/{a.id}"},
        "attributes": attributes,
        "relationships": relationships,
    }


def included_entity(view: View, e: Entity) -> dict[str, Any]:
    return {"id": e.id, "type": "app_assignment_entities", "attributes": entity_view(view, e)}


# --- storage ---------------------------------------------------------------------------------


def _disk_usage(root: Path) -> tuple[int, int]:
    try:
        usage = shutil.disk_usage(root)
    except OSError:
        return 0, 0
    return usage.total, usage.free


def datastore_entry(view: View, ds: Datastore) -> dict[str, Any]:
    total, free = _disk_usage(ds.root)
    grouped = view.state.group_of(ds.name) is not None
    return {
        "id": ds.id,
        "name": ds.name,
        "display_name": f"[{view.datacenter}] {ds.name}",
        "datacenter": view.datacenter,
        "category": "Grouped Storage" if grouped else "Shared",
        "accessible": ds.root.is_dir(),
        "description": "Type: VMFS - Share Mode: Local",
        "note": "VMFS",
        "identifier": view.uniq_string(ds.name),
        "uniq_string": view.uniq_string(ds.name),
        "host": "",
        "host_username": "",
        "template_storage": None,
        "capacity": total,
        "free_space": free,
    }


def datastores(view: View, default_datastore: str) -> dict[str, Any]:
    layout = view.layout
    uniq = view.uniq_string(default_datastore)
    out: dict[str, Any] = {
        "datacenter": view.datacenter,
        "appstack_storage": uniq,
        "appstack_path": layout.apps,
        "appstack_template_path": layout.apps_templates,
        "writable_storage": uniq,
        "writable_path": layout.writables,
        "writable_template_path": layout.writables_templates,
    }
    if view.flavour == "4.x":
        out |= {
            "package_storage": uniq,
            "package_path": layout.packages,
            "package_template_path": layout.packages_templates,
            "data_disk_storage": uniq,
            "data_disk_path": layout.writables,
            "data_disk_template_path": layout.writables_templates,
            "data_disk_archive_path": layout.writables_backup,
            "data_disk_backup_recurrent_path": layout.writables_backup,
            "data_disk_backup_recurrent_datastore": uniq,
            "writable_archive_path": layout.writables_backup,
            "writable_backup_recurrent_datastore": uniq,
            "writable_backup_recurrent_path": layout.writables_backup,
        }
    out["datastores"] = [datastore_entry(view, ds) for ds in view.state.datastores.values()]
    return out


def storage_entry(view: View, ds: Datastore) -> dict[str, Any]:
    total, free = _disk_usage(ds.root)
    located = [v for v in view.state.volumes.values() if any(loc.datastore == ds.name for loc in v.locations)]
    counts = {kind: sum(1 for v in located if v.kind == kind) for kind in ("appstack", "package", "writable")}
    out: dict[str, Any] = {
        "id": ds.id,
        "name": ds.name,
        "host": "",
        "space_used": fmt_bytes(total - free),
        "space_total": fmt_bytes(total),
        "num_appstacks": counts["appstack"],
        "num_writables": counts["writable"],
        "attachable": ds.attachable,
        **_times("created_at", None),
    }
    if view.flavour == "4.x":
        out |= {
            "status": "Existing" if ds.root.is_dir() else "Absent",
            "read_only": False,
            "actual_space_used": total - free,
            "actual_space_total": total,
            "num_packages": counts["package"],
            "num_combined_appstacks": 0,
        }
    return out


def storage_group(view: View, g: StorageGroup, *, detail: bool) -> dict[str, Any]:
    totals = [_disk_usage(ds.root) if (ds := view.state.datastores.get(m)) else (0, 0) for m in g.members]
    total = sum(t for t, _ in totals)
    free = sum(f for _, f in totals)
    out: dict[str, Any] = {
        "id": g.id,
        "name": g.name,
        "strategy": g.strategy,
        "template_storage": g.template_storage,
        "members": len(g.members),
        "member_prefix": g.member_prefix,
        "space_used": fmt_bytes(total - free),
        "space_total": fmt_bytes(total),
        "created_at_human": fmt_human(g.created_at),
        "auto_import": g.auto_import,
        "auto_replicate": g.auto_replicate,
        "replicated_at_human": fmt_human(g.replicated_at),
        "imported_at_human": fmt_human(g.imported_at),
        "curated_at_human": "",
    }
    if detail:
        out["storages"] = [
            {
                "name": m,
                "datacenter": view.datacenter,
                "space_used": fmt_bytes(t - f),
                "space_total": fmt_bytes(t),
                "deleted": m not in view.state.datastores,
            }
            for m, (t, f) in zip(g.members, totals, strict=True)
        ]
    return out


def activity(a: Activity) -> dict[str, Any]:
    return {
        "id": a.id,
        "source_id": 0,
        "source_type": "User",
        "source_url": "",
        "source_name": a.admin_upn.split("\\")[-1],
        "target_id": a.target_id,
        "target_type": a.target_type,
        "target_url": f"/volumes#/AppStacks/{a.target_id}" if a.target_id else "",
        "target_name": a.target_name,
        "target_description": "",
        "action": a.action,
        "log": a.log,
        "event_time": fmt_time(a.event_time),
        "event_time_human": f"{a.event_time:%B} {a.event_time.day}, {a.event_time:%Y %I:%M%p}",
        "admin_user_upn": a.admin_upn,
        "admin_user_name": a.admin_upn.split("\\")[-1],
        "admin_user_url": "",
    }
