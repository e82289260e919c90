"""``/app_volumes/...``: the 4.x API (applications, packages, programs, assignments, writables)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from toolkit.lab.avm_sim import render
from toolkit.lab.avm_sim.api import shared
from toolkit.lab.avm_sim.model import LIFECYCLE_STAGES, AppAssignment, Entity, Marker, Volume, now
from toolkit.lab.avm_sim.server import Request, Response, Route, error

if TYPE_CHECKING:
    from toolkit.lab.avm_sim.params import Params
    from toolkit.lab.avm_sim.simulator import AvmSimulator

V4 = frozenset({"4.x"})
DEFAULT_PAGE_SIZE: Final = 10  # the vendor document's default for page[size]


def _not_found(what: str, value: object) -> Response:
    body = {"errors": [{"title": f"Incorrect {what} id {value} passed", "meta": {"manager": {}}}]}
    return Response.json(404, body)


def _include(req: Request) -> set[str]:
    raw = req.params.get("include")
    items = raw if isinstance(raw, list) else str(raw or "").split(",")
    return {str(i).strip() for i in items if str(i).strip()}


def _package(sim: AvmSimulator, req: Request) -> Volume | None:
    volume = sim.state.volumes.get(req.arg_int("id"))
    return volume if volume is not None and volume.kind == "package" else None


# --- applications ------------------------------------------------------------------------------


def products(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        view = sim.view()
        return Response.json(
            200, {"data": [render.product_with_packages(view, p) for p in sim.state.products.values()]}
        )


def product(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        found = sim.state.products.get(req.arg_int("id"))
        if found is None:
            return _not_found("application", req.args["id"])
        return Response.json(200, {"data": render.product_with_packages(sim.view(), found)})


def product_packages(sim: AvmSimulator, req: Request) -> Response:
    include = _include(req)
    with sim.state.lock:
        found = sim.state.products.get(req.arg_int("id"))
        if found is None:
            return _not_found("application", req.args["id"])
        view = sim.view()
        items = [render.package_with_includes(view, v, include) for v in sim.state.packages_of(found.id)]
    return Response.json(200, {"data": items})


def product_assignments(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        found = sim.state.products.get(req.arg_int("id"))
        if found is None:
            return _not_found("application", req.args["id"])
        view = sim.view()
        items = [render.app_assignment(view, a) for a in sim.state.app_assignments_of_product(found.id)]
    return Response.json(200, {"data": items})


def set_marker(sim: AvmSimulator, req: Request) -> Response:
    p = req.params.scoped("data")
    package_id = p.integer("app_package_id")
    with sim.state.lock:
        found = sim.state.products.get(req.arg_int("id"))
        if found is None:
            return _not_found("application", req.args["id"])
        package = sim.state.volumes.get(package_id or 0)
        if package is None or package.product_id != found.id:
            return error(400, f"Package {package_id} does not belong to application {found.name}")
        marker = sim.state.marker_of(found.id)
        if marker is None:
            marker = Marker(sim.state.next_id("marker"), found.id, package.id, req.args["name"])
            sim.state.markers[marker.id] = marker
        marker.package_id = package.id
        marker.updated_at = now()
        return Response.json(200, {"data": render.marker_view(sim.view(), marker)})


# --- packages and programs -------------------------------------------------------------------------


def packages(sim: AvmSimulator, req: Request) -> Response:
    include = _include(req)
    with sim.state.lock:
        view = sim.view()
        items = [render.package_with_includes(view, v, include) for v in sim.state.volumes_of("package")]
    return Response.json(200, {"data": items})


def package(sim: AvmSimulator, req: Request) -> Response:
    include = _include(req)
    with sim.state.lock:
        volume = _package(sim, req)
        if volume is None:
            return _not_found("package", req.args["id"])
        return Response.json(200, {"data": render.package_with_includes(sim.view(), volume, include)})


def package_update(sim: AvmSimulator, req: Request) -> Response:
    data = req.params.get("data")
    if not isinstance(data, dict) or not data:
        return Response.json(400, "param is missing or the value is empty: data")
    p = req.params.scoped("data")
    with sim.state.lock:
        volume = _package(sim, req)
        if volume is None:
            return _not_found("package", req.args["id"])
        problem = _apply_package_update(sim, volume, p)
        if problem:
            return Response.json(400, problem)
        volume.updated_at = now()
        sim.state.record("Update", volume, req.admin_upn)
        return Response.json(200, {"data": render.package_with_includes(sim.view(), volume, set())})


def _apply_package_update(sim: AvmSimulator, volume: Volume, p: Params) -> str:
    for key in ("name", "description", "note", "delivery"):
        if key in p.values:
            setattr(volume, key, p.text(key))
    stage_id = p.integer("lifecycle_stage_id")
    stage_name = p.text("lifecycle_stage_name").lower()
    if stage_name:
        stage_id = next((i for i, n in LIFECYCLE_STAGES if n.lower() == stage_name), None)
    if stage_id is not None or stage_name:
        if stage_id not in {i for i, _ in LIFECYCLE_STAGES}:
            return "unknown lifecycle stage"
        volume.lifecycle_stage_id = stage_id
    product_id = p.integer("app_product_id")
    guid = p.text("app_product_guid")
    if product_id is not None or guid:
        target = sim.state.products.get(product_id or 0) or sim.state.product_by_guid_or_name(guid, "")
        if target is None:
            return "unknown application"
        volume.product_id = target.id
    return ""


def package_files(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        volume = _package(sim, req)
        if volume is None:
            return _not_found("package", req.args["id"])
        view = sim.view()
        return Response.json(200, {"data": [render.file_entry(view, loc) for loc in volume.locations]})


def package_programs(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        volume = _package(sim, req)
        if volume is None:
            return _not_found("package", req.args["id"])
        return Response.json(200, {"data": [render.program_4x(p, volume.id) for p in volume.programs]})


def package_assignments(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        volume = _package(sim, req)
        if volume is None:
            return _not_found("package", req.args["id"])
        view = sim.view()
        items = [
            render.app_assignment(view, a, for_package=volume) for a in sim.state.app_assignments_of_package(volume)
        ]
    return Response.json(200, {"data": items})


def package_operating_systems(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        volume = _package(sim, req)
        if volume is None:
            return _not_found("package", req.args["id"])
        return Response.json(200, {"data": render.package_operating_systems(volume)})


def programs(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        items = [render.program_4x(p, v.id) for v in sim.state.volumes_of("package") for p in v.programs]
    return Response.json(200, {"data": items})


def lifecycle_stages(sim: AvmSimulator, req: Request) -> Response:
    created = sim.started_at
    items = [
        {**render.lifecycle_stage(i), **_stamp("created_at", created), **_stamp("updated_at", created)}
        for i, _ in LIFECYCLE_STAGES
    ]
    return Response.json(200, {"data": items})


def _stamp(prefix: str, t: Any) -> dict[str, str]:
    return {prefix: render.fmt_time(t), f"{prefix}_human": render.fmt_human(t)}


def attachments(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        view = sim.view()
        items = []
        for a in sim.state.attachments.values():
            volume = sim.state.volumes.get(a.volume_id)
            if volume is None or volume.kind != "package":
                continue
            item_product = sim.state.products.get(volume.product_id or 0)
            items.append(
                render.attachment_entry(view, a)
                | {
                    "app_package_id": volume.id,
                    "app_package_name": volume.name,
                    "app_product_id": volume.product_id,
                    "app_product_name": item_product.name if item_product else "",
                }
            )
    return Response.json(200, {"data": items})


# --- assignments -------------------------------------------------------------------------------


def assignments(sim: AvmSimulator, req: Request) -> Response:
    p = req.params
    page = p.get("page") if isinstance(p.get("page"), dict) else {}
    paginated = p.has("api_version") or bool(page)
    with sim.state.lock:
        view = sim.view()
        everything = list(sim.state.app_assignments.values())
        if not paginated:
            return Response.json(200, {"data": [render.app_assignment(view, a) for a in everything]})
        number = int(page.get("number") or 1)
        size = int(page.get("size") or DEFAULT_PAGE_SIZE)
        if number < 1 or size < 1:
            detail = f"{min(number, size)} is not a valid value for a page parameter."
            return Response.json(400, {"errors": [{"detail": detail, "code": 118, "status": 400}]})
        chosen = everything[(number - 1) * size : number * size]
        body = {
            "data": [render.app_assignment_resource(view, a, req.base_url) for a in chosen],
            "included": [render.included_entity(view, e) for a in chosen for e in a.entities],
            "meta": {
                "total": len(everything),
                "filtered": len(everything),
                "page_count": _pages(everything, size),
            },
            "links": _page_links(req, size, number, _pages(everything, size)),
        }
    return Response.json(200, body)


def _pages(items: list[Any], size: int) -> int:
    return max(1, -(-len(items) // size))


def _page_links(req: Request, size: int, number: int, count: int) -> dict[str, str]:
    base = f"{req.base_url}/app_volumes/app_assignments?page%5Bsize%5D={size}&page%5Bnumber%5D="
    links = {"first": f"{base}1", "last": f"{base}{count}"}
    if number < count:
        links["next"] = f"{base}{number + 1}"
    return links


def assign(sim: AvmSimulator, req: Request) -> Response:
    items = req.params.dict_list("data")
    if not items:
        return _assignment_error("No assignments provided")
    created: list[AppAssignment] = []
    with sim.state.lock:
        for item in items:
            result = _create_assignment(sim, item)
            if isinstance(result, str):
                for a in created:
                    del sim.state.app_assignments[a.id]
                return _assignment_error(result)
            created.append(result)
        view = sim.view()
        data = [_without_nulls(render.app_assignment(view, a)) for a in created]
    return Response.json(200, {"data": data})


def _without_nulls(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if v is not None}


def _assignment_error(message: str) -> Response:
    return Response.json(400, {"errors": [{"title": message, "meta": {"manager": {}}}]})


def _create_assignment(sim: AvmSimulator, item: dict[str, Any]) -> AppAssignment | str:
    state = sim.state
    product = state.products.get(_int(item.get("app_product_id")))
    if product is None:
        return f"Incorrect app_product_id {item.get('app_product_id')} passed"
    package_id = _int(item.get("app_package_id")) or None
    marker_id = _int(item.get("app_marker_id")) or None
    if package_id is not None:
        package = state.volumes.get(package_id)
        if package is None or package.product_id != product.id:
            return f"Incorrect app_package_id {package_id} passed"
        if package.status == "disabled":
            return f"Package {package.name} is disabled"
        marker_id = None
    else:
        marker = state.markers.get(marker_id or 0) or state.marker_of(product.id)
        if marker is None or marker.product_id != product.id:
            return f"Incorrect app_marker_id {marker_id} passed"
        marker_id = marker.id
    entities = [
        state.entity_for(str(e.get("entity_type") or "User"), str(e["path"]))
        for e in item.get("entities") or []
        if isinstance(e, dict) and e.get("path")
    ]
    if not entities:
        return "No entities provided"
    refused = state.refused_entities | {dn for dn, pinned in state.refused_pins if pinned == package_id}
    if any(e.distinguished_name.lower() in refused for e in entities):
        return "Unable to save assignment"  # the vendor's example of a save that failed (a test's injected fault)
    duplicate = _duplicate_of(sim, product.id, entities)
    if duplicate:
        return f"Unable to create duplicate assignment with entity {duplicate} to the same application"
    filters = [
        (state.next_id("filter"), str(f.get("type") or "ComputerPrefixFilter"), str(f.get("value") or ""))
        for f in item.get("filters") or []
        if isinstance(f, dict)
    ]
    assignment = AppAssignment(
        id=state.next_id("app_assignment"),
        product_id=product.id,
        package_id=package_id,
        marker_id=marker_id,
        entities=entities,
        filters=filters,
        delivery=str(item.get("delivery") or "default"),
    )
    state.app_assignments[assignment.id] = assignment
    return assignment


def _duplicate_of(sim: AvmSimulator, product_id: int, entities: list[Entity]) -> str:
    """DOMAIN\\account of an entity that already has an assignment in the application, or ''.

    The 2512 document's examples for ``POST /app_volumes/app_assignments`` list "Unable to create
    duplicate assignment with entity SNAPVOLUMES\\test-user to the same application": an entity is
    assigned an application once, through its CURRENT marker or pinned to one package. So any
    second assignment within the application is refused, whatever its target; there is no update,
    and moving an entity to another package takes a delete, then a create.
    """
    wanted = {e.distinguished_name.lower() for e in entities}
    for a in sim.state.app_assignments_of_product(product_id):
        for e in a.entities:
            if e.distinguished_name.lower() in wanted:
                return e.upn(sim.settings.domain)
    return ""


def _int(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return 0


def unassign(sim: AvmSimulator, req: Request) -> Response:
    ids = req.params.int_list("ids")
    if not ids:
        return error(400, "Missing required ids parameter")
    deleted = []
    not_deleted = []
    with sim.state.lock:
        rows = [a for i in ids if (a := sim.state.app_assignments.get(i)) is not None]
        kept = [str(a.id) for a in rows if sim.state.removal_refused(a.entities, a.package_id)]
        if kept:  # the document's 500 (a made-to-fail delete, a test's injected fault); nothing is deleted
            detail = f"Unable to delete assignment(s) {', '.join(kept)}"
            return Response.json(500, {"error": "Server Error", "detail": detail})
        for assignment_id in ids:
            if sim.state.app_assignments.pop(assignment_id, None) is None:
                not_deleted.append({"id": str(assignment_id)})
            else:
                deleted.append({"id": str(assignment_id)})
    return Response.json(200, {"data": {"deleted": deleted, "not_deleted": not_deleted}})


# --- writables (4.x list shape) ----------------------------------------------------------------------


def writables(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        view = sim.view()
        items = [render.writable_index(view, v) for v in shared.filter_writables(sim, req, view)]
    return Response.json(200, {"data": items, "counts": {"total": len(items), "warning": 0, "critical": 0}})


def health_check(sim: AvmSimulator, req: Request) -> Response:
    line = f"Process: 1 - IP: {sim.host} - Uptime: {sim.uptime_text()} - DB: {sim.database_uuid}\n"
    return Response.text(200, line)


ROUTES: list[Route] = [
    Route("POST", "/app_volumes/sessions", shared.login, V4, auth=False),
    Route("DELETE", "/app_volumes/sessions", shared.logout, V4, auth=False),
    Route("GET", "/app_volumes/version", shared.version, V4, auth=False),
    Route("GET", "/health_check", health_check, V4, auth=False),
    Route("GET", "/app_volumes/app_products", products, V4),
    Route("POST", "/app_volumes/app_products/import", shared.import_volumes, V4),
    Route("GET", "/app_volumes/app_products/{id}", product, V4, auth_error="errors"),
    Route("GET", "/app_volumes/app_products/{id}/app_packages", product_packages, V4, auth_error="errors"),
    Route("GET", "/app_volumes/app_products/{id}/assignments", product_assignments, V4, auth_error="errors"),
    Route("PUT", "/app_volumes/app_products/{id}/app_markers/{name}", set_marker, V4),
    Route("GET", "/app_volumes/app_packages", packages, V4),
    Route("GET", "/app_volumes/app_packages/{id}", package, V4, auth_error="errors"),
    Route("PUT", "/app_volumes/app_packages/{id}", package_update, V4, auth_error="errors"),
    Route("GET", "/app_volumes/app_packages/{id}/files", package_files, V4),
    Route("GET", "/app_volumes/app_packages/{id}/programs", package_programs, V4, auth_error="errors"),
    Route("GET", "/app_volumes/app_packages/{id}/assignments", package_assignments, V4, auth_error="errors"),
    Route("GET", "/app_volumes/app_packages/{id}/operating_systems", package_operating_systems, V4),
    Route("GET", "/app_volumes/app_programs", programs, V4),
    Route("GET", "/app_volumes/lifecycle_stages", lifecycle_stages, V4),
    Route("GET", "/app_volumes/app_attachments", attachments, V4),
    Route("GET", "/app_volumes/app_assignments", assignments, V4),
    Route("POST", "/app_volumes/app_assignments", assign, V4),
    Route("DELETE", "/app_volumes/app_assignments", unassign, V4, auth_error="errors"),
    Route("POST", "/app_volumes/app_assignments/delete_batch", unassign, V4),
    Route("GET", "/app_volumes/writables", writables, V4),
    Route("POST", "/app_volumes/writables/grow", shared.writables_grow, V4),
    Route("GET", "/app_volumes/writables/{id}", shared.writable_detail, V4),
    Route("PUT", "/app_volumes/writables/{id}", shared.writable_update, V4),
    Route("DELETE", "/app_volumes/writables/{id}", shared.writable_delete, V4),
    Route("GET", "/app_volumes/activity_logs", shared.activity_logs, V4),
]
