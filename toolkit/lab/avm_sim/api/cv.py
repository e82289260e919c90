"""``/cv_api/...``: the 2.x API, and the storage/job endpoints 4.x managers still serve."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from toolkit.lab.avm_sim import render, vmdk
from toolkit.lab.avm_sim.api import shared
from toolkit.lab.avm_sim.model import OPERATING_SYSTEMS, Assignment, Entity, Volume
from toolkit.lab.avm_sim.server import Request, Response, Route, error

if TYPE_CHECKING:
    from toolkit.lab.avm_sim.simulator import AvmSimulator

V2 = frozenset({"2.x"})


def _appstack(sim: AvmSimulator, req: Request) -> Volume | None:
    volume = sim.state.volumes.get(req.arg_int("id"))
    return volume if volume is not None and volume.kind == "appstack" else None


def _no_appstack(req: Request) -> Response:
    return error(404, f"Unable to locate the Volume ID {req.args['id']}")


# --- AppStacks and applications (2.x) ----------------------------------------------------------


def appstacks(sim: AvmSimulator, req: Request) -> Response:
    os_id = req.params.integer("operating_system_id")
    with sim.state.lock:
        view = sim.view()
        items = [
            render.appstack_index(view, v)
            for v in sim.state.volumes_of("appstack")
            if os_id is None or v.primordial_os_id == os_id
        ]
    if sim.settings.appstacks_shape == "currentappstacks":
        return Response.json(200, {"currentappstacks": {"appstacks": items}})
    return Response.json(200, items)


def appstack(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        volume = _appstack(sim, req)
        if volume is None:
            return _no_appstack(req)
        return Response.json(200, {"appstack": render.appstack_detail(sim.view(), volume)})


def appstack_files(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        volume = _appstack(sim, req)
        if volume is None:
            return _no_appstack(req)
        view = sim.view()
        return Response.json(200, [render.file_entry(view, loc) for loc in volume.locations])


def appstack_applications(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        volume = _appstack(sim, req)
        if volume is None:
            return _no_appstack(req)
        return Response.json(200, {"applications": [render.application_2x(p) for p in volume.programs]})


def appstack_assignments(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        volume = _appstack(sim, req)
        if volume is None:
            return _no_appstack(req)
        view = sim.view()
        items = [render.assignment_for_appstack(view, a) for a in sim.state.assignments_of(volume.id)]
        return Response.json(200, items)


def appstack_attachments(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        volume = _appstack(sim, req)
        if volume is None:
            return _no_appstack(req)
        view = sim.view()
        items = [render.attachment_for_volume(view, a) for a in sim.state.attachments_of(volume.id)]
        return Response.json(200, items)


def applications(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        items = [render.application_2x(p) for v in sim.state.volumes_of("appstack") for p in v.programs]
    return Response.json(200, {"applications": items})


def application(sim: AvmSimulator, req: Request) -> Response:
    wanted = req.arg_int("id")
    with sim.state.lock:
        for v in sim.state.volumes_of("appstack"):
            for p in v.programs:
                if p.id == wanted:
                    return Response.json(200, {"application": render.application_2x(p)})
    return error(404, f"Unable to locate the Application ID {wanted}")


# --- assignments and attachments (2.x) ----------------------------------------------------------


def assignments(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        view = sim.view()
        items = [render.assignment_2x(view, a) for a in sim.state.assignments.values()]
    return Response.json(200, {"assignments": items})


def assign(sim: AvmSimulator, req: Request) -> Response:
    p = req.params
    action = p.text("action_type", "assign")
    if action not in ("assign", "unassign"):
        return error(400, f"Unknown action_type {action!r}")
    ids = p.int_list("ids") or []
    if p.integer("id") is not None:
        ids.insert(0, p.integer("id") or 0)
    entities = [e for e in p.dict_list("assignments") if e.get("path") or e.get("id")]
    if not entities:
        return error(400, "No entities provided")
    if not ids:
        return error(400, "No AppStacks provided")
    with sim.state.lock:
        refused = _refused_saves(sim, action, ids, entities)
        if refused:  # the vendor's 500 answer for assignments it could not save; nothing is changed
            return Response.json(500, {"error": "Assigned AppStacks failed", "errors": refused})
        kept = _refused_removals(sim, action, ids, entities)
        if kept:  # the same answer for assignments it could not remove; nothing is changed
            return Response.json(500, {"error": "Unassigned AppStacks failed", "errors": kept})
        done, warnings = _apply_assignments(sim, action, ids, entities, p.text("mount_prefix"), req.admin_upn)
    verb = "Assigned" if action == "assign" else "Unassigned"
    body: dict[str, Any] = {
        "success": f"{verb} {done} AppStack(s)",
        "successes": [f"{verb} {done} AppStack(s)"],
    }
    if warnings:
        body |= {"warning": warnings[0], "warnings": warnings}
    return Response.json(200, body)


def _appstack_entities(
    sim: AvmSimulator, ids: list[int], entities: list[dict[str, Any]]
) -> Iterator[tuple[Volume, Entity]]:
    """(AppStack, entity) for each AppStack id and each entity of an assignment request."""
    state = sim.state
    for volume_id in ids:
        volume = state.volumes.get(volume_id)
        if volume is None or volume.kind != "appstack":
            continue
        for doc in entities:
            yield volume, state.entity_for(str(doc.get("entity_type") or "User"), str(doc.get("path") or doc["id"]))


def _refused_saves(sim: AvmSimulator, action: str, ids: list[int], entities: list[dict[str, Any]]) -> list[str]:
    """The vendor's "Unable to save assignment of …" lines for entities the manager is made to refuse."""
    if action != "assign" or not sim.state.refused_entities:
        return []
    return [
        f'Unable to save assignment of "{entity.entity_type} <{entity.upn(sim.settings.domain)}>" to "{volume.name}"'
        for volume, entity in _appstack_entities(sim, ids, entities)
        if entity.distinguished_name.lower() in sim.state.refused_entities
    ]


def _refused_removals(sim: AvmSimulator, action: str, ids: list[int], entities: list[dict[str, Any]]) -> list[str]:
    """Lines "Unable to remove assignment of …" for existing assignments the manager is made to keep."""
    state = sim.state
    if action != "unassign" or not state.refused_removals:
        return []
    return [
        f'Unable to remove assignment of "{entity.entity_type} <{entity.upn(sim.settings.domain)}>" '
        f'from "{volume.name}"'
        for volume, entity in _appstack_entities(sim, ids, entities)
        if any(a.entity is entity for a in state.assignments_of(volume.id))
        and state.removal_refused([entity], volume.id)
    ]


def _apply_assignments(
    sim: AvmSimulator, action: str, ids: list[int], entities: list[dict[str, Any]], prefix: str, admin: str
) -> tuple[int, list[str]]:
    """Assign or unassign; (AppStacks changed, warnings).

    An entity already assigned (the same entity to the same AppStack), or not assigned when
    unassigning, is ignored with a warning: the 2.17 document says "Ignored
    assignments/unassignments are indicated as warnings" in the 200 answer.
    """
    state = sim.state
    done = 0
    warnings: list[str] = []
    for volume_id in ids:
        volume = state.volumes.get(volume_id)
        if volume is None or volume.kind != "appstack":
            warnings.append(f"Unable to find AppStack {volume_id}")
            continue
        changed = False
        for doc in entities:
            entity = state.entity_for(str(doc.get("entity_type") or "User"), str(doc.get("path") or doc["id"]))
            existing = [a for a in state.assignments_of(volume.id) if a.entity is entity]
            if action == "assign" and not existing:
                assignment = Assignment(state.next_id("assignment"), volume.id, entity, prefix)
                state.assignments[assignment.id] = assignment
                changed = True
            elif action == "unassign" and existing:
                for a in existing:
                    del state.assignments[a.id]
                changed = True
            elif action == "assign":
                warnings.append(f"{entity.account_name} is already assigned to {volume.name}")
            else:
                warnings.append(f"{entity.account_name} is not assigned to {volume.name}")
        if changed:
            state.record("Assign" if action == "assign" else "Unassign", volume, admin)
            done += 1
    return done, warnings


def attachments(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        view = sim.view()
        items = [render.attachment_entry(view, a) for a in sim.state.attachments.values()]
    return Response.json(200, {"attachments": items})


def online_entities(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        machines = sorted({a.machine for a in sim.state.attachments.values()})
    records = [
        {
            "agent_status": "Good",
            "entity_name": render.owner_link("Computer", i, f"{sim.settings.domain}\\{m}$"),
            "entity_type": "Computer",
            "duration_words": "less than a minute",
            "details": "",
            "connection_time": "",
        }
        for i, m in enumerate(machines, start=1)
    ]
    return Response.json(200, {"online": {"records": records}})


# --- writables (2.x list shape) ------------------------------------------------------------------


def writables(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        view = sim.view()
        items = [render.writable_index(view, v) for v in shared.filter_writables(sim, req, view)]
    settings = {
        "name": sim.default_datastore(),
        "datacenter": sim.settings.datacenter,
        "path": sim.settings.layout.writables,
        "current": "true",
    }
    body = {
        "datastores": {
            "total_count": len(items),
            "warning_count": 0,
            "critical_count": 0,
            "writable": settings,
            "writable_volumes": items,
        }
    }
    return Response.json(200, body)


# --- storage ---------------------------------------------------------------------------------------


def datastores(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        return Response.json(200, render.datastores(sim.view(), sim.default_datastore()))


def datastores_rescan(sim: AvmSimulator, req: Request) -> Response:
    sim.jobs.submit("RescanDatastoresJob", lambda: "datastores rescanned")
    return Response.json(200, {"success": "Rescanning datastores"})


def storages(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        view = sim.view()
        return Response.json(
            200, {"storages": [render.storage_entry(view, ds) for ds in sim.state.datastores.values()]}
        )


def storages_mark_attach_action(sim: AvmSimulator, req: Request) -> Response:
    ids = req.params.int_list("ids") or []
    attachable = req.params.text("mark_attach_action", "attach") != "no_attach"
    with sim.state.lock:
        marked = [ds for ds in sim.state.datastores.values() if ds.id in ids]
        for ds in marked:
            ds.attachable = attachable
    word = "attachable" if attachable else "not attachable"
    return Response.json(200, {"success": f"Marked {len(marked)} storage(s) {word}"})


def storage_groups(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        view = sim.view()
        items = [render.storage_group(view, g, detail=False) for g in sim.state.storage_groups.values()]
    return Response.json(200, {"storage_groups": items})


def storage_group(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        group = sim.storage_group(req.arg_int("id"))
        return Response.json(200, {"storage_group": render.storage_group(sim.view(), group, detail=True)})


def storage_group_rescan(sim: AvmSimulator, req: Request) -> Response:
    group = sim.storage_group(req.arg_int("id"))
    sim.jobs.submit(f"RescanStorageGroupJob {group.name}", lambda: "storage group rescanned")
    return Response.json(200, {"success": f"Rescanning storage group {group.name}"})


def storage_group_import(sim: AvmSimulator, req: Request) -> Response:
    group = sim.storage_group(req.arg_int("id"))
    jobs = sim.import_storage_group(group)
    return Response.json(200, {"success": f"Importing from storage group {group.name}: {len(jobs)} volume(s)"})


def storage_group_replicate(sim: AvmSimulator, req: Request) -> Response:
    group = sim.storage_group(req.arg_int("id"))

    def run() -> str:
        report = sim.replicate_now(group.name)
        return f"copied {len(report.copied)}, deleted {len(report.deleted)}"

    sim.jobs.submit(f"ReplicateStorageGroupJob {group.name}", run)
    return Response.json(200, {"success": f"Replicating storage group {group.name}"})


def pending_activities(sim: AvmSimulator, req: Request) -> Response:
    """Older managers' view of the job queue (``allactivities.pending_activities``)."""
    queued = [j.as_dict() for j in sim.jobs.history() if j.state in ("queued", "running")]
    return Response.json(200, {"allactivities": {"pending_activities": queued}})


def templates(sim: AvmSimulator, req: Request) -> Response:
    p = req.params
    name = sim.resolve_datastore(p.text("datastore") or sim.default_datastore())
    folder = p.text("templates_path") or sim.settings.layout.apps_templates
    root = sim.datastore_root(name)
    items = [
        {"name": d.name, "path": folder, "sep": "/", "uploading": False}
        for d in vmdk.scan_descriptors(root / folder.strip("/"))
    ]
    return Response.json(200, {"templates": items})


def machine_managers(sim: AvmSimulator, req: Request) -> Response:
    manager = {
        "id": 1,
        "name": sim.settings.machine_manager_host,
        "host": sim.settings.machine_manager_host,
        "username": "administrator@vsphere.local",
        "type": render.MACHINE_MANAGER_TYPE,
        "adapter_type": "VcenterAdapter",
        "datacenter": sim.settings.datacenter,
        "status": "Connected",
    }
    return Response.json(200, {"machine_managers": [manager]})


def manager_services(sim: AvmSimulator, req: Request) -> Response:
    record = shared.version_record(sim)
    service = {
        "name": "avm-sim",
        "fqdn": sim.host,
        "product_version": record["version"],
        "internal_version": record["internal"],
        "status": "Good",
    }
    return Response.json(200, {"services": [service]})


# --- volumes, jobs, misc ----------------------------------------------------------------------------


def volumes_delete(sim: AvmSimulator, req: Request) -> Response:
    ids = req.params.int_list("volumes")
    if not ids:
        return error(400, "No volumes provided")
    result = sim.delete_volumes(ids, req.admin_upn)
    body: dict[str, Any] = {
        "snapvols": {
            "not_found": list(result.not_found),
            "success": list(result.deleted),
            "error": list(result.errors),
            "scheduled": [],
        }
    }
    if result.deleted:
        body["success"] = f"Deleted {len(result.deleted)} volume(s)"
    if result.errors or result.not_found:
        body["error"] = f"Unable to delete {len(result.errors) + len(result.not_found)} volume(s)"
    return Response.json(200, body)


def operating_systems(sim: AvmSimulator, req: Request) -> Response:
    created = render.fmt_time(sim.started_at)
    items = [
        {
            "id": str(os_id),
            "major_version": major,
            "minor_version": minor,
            "name": name,
            "proc_arch": "9",
            "product_type": "1",
            "created_at": created,
            "updated_at": created,
        }
        for os_id, name, major, minor in OPERATING_SYSTEMS
    ]
    return Response.json(200, items)


ROUTES: list[Route] = [
    Route("POST", "/cv_api/sessions", shared.login, auth=False),
    Route("DELETE", "/cv_api/sessions", shared.logout, auth=False),
    Route("GET", "/cv_api/version", shared.version, auth=False),
    Route("GET", "/cv_api/license", shared.license_info),
    Route("GET", "/cv_api/appstacks", appstacks, V2),
    Route("GET", "/cv_api/appstacks/{id}", appstack, V2),
    Route("GET", "/cv_api/appstacks/{id}/files", appstack_files, V2),
    Route("GET", "/cv_api/appstacks/{id}/applications", appstack_applications, V2),
    Route("GET", "/cv_api/appstacks/{id}/assignments", appstack_assignments, V2),
    Route("GET", "/cv_api/appstacks/{id}/attachments", appstack_attachments, V2),
    Route("GET", "/cv_api/applications", applications, V2),
    Route("GET", "/cv_api/applications/{id}", application, V2),
    Route("GET", "/cv_api/assignments", assignments, V2),
    Route("POST", "/cv_api/assignments", assign, V2),
    Route("GET", "/cv_api/attachments", attachments, V2),
    Route("GET", "/cv_api/online_entities", online_entities),
    Route("GET", "/cv_api/writables", writables, V2),
    Route("POST", "/cv_api/writables/grow", shared.writables_grow, V2),
    Route("POST", "/cv_api/writables/enable", shared.writables_enable),
    Route("POST", "/cv_api/writables/disable", shared.writables_disable),
    Route("GET", "/cv_api/writables/{id}", shared.writable_detail, V2),
    Route("PUT", "/cv_api/writables/{id}", shared.writable_update, V2),
    Route("DELETE", "/cv_api/writables/{id}", shared.writable_delete, V2),
    Route("GET", "/cv_api/datastores", datastores),
    Route("POST", "/cv_api/datastores/rescan", datastores_rescan),
    Route("GET", "/cv_api/storages", storages),
    Route("PUT", "/cv_api/storages/mark_attach_action", storages_mark_attach_action),
    Route("GET", "/cv_api/storage_groups", storage_groups),
    Route("GET", "/cv_api/storage_groups/{id}", storage_group),
    Route("POST", "/cv_api/storage_groups/{id}/rescan", storage_group_rescan),
    Route("POST", "/cv_api/storage_groups/{id}/import", storage_group_import),
    Route("POST", "/cv_api/storage_groups/{id}/replicate", storage_group_replicate),
    Route("POST", "/cv_api/appstacks/storage_groups/{id}/import", storage_group_import, V2),
    Route("GET", "/cv_api/templates", templates),
    Route("GET", "/cv_api/machine_managers", machine_managers),
    Route("GET", "/cv_api/manager_services", manager_services),
    Route("POST", "/cv_api/volumes/import", shared.import_volumes),
    Route("POST", "/cv_api/volumes/delete", volumes_delete),
    Route("GET", "/cv_api/jobs/pending", shared.jobs_pending),
    Route("GET", "/cv_api/pending_activities", pending_activities, V2),
    Route("GET", "/cv_api/activity_logs", shared.activity_logs, V2),
    Route("GET", "/cv_api/operating_systems", operating_systems),
]
