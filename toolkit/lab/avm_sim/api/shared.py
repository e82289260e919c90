"""Handlers the ``/cv_api`` and ``/app_volumes`` namespaces share: sessions, version,
writables and import."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from toolkit.lab.avm_sim import render
from toolkit.lab.avm_sim.model import Volume, now
from toolkit.lab.avm_sim.server import Request, Response, error

if TYPE_CHECKING:
    from toolkit.lab.avm_sim.simulator import AvmSimulator

COOKIE_ATTRIBUTES: Final = "path=/; HttpOnly"
EXPIRED_COOKIE: Final = "_session_id=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly"
WRITABLE_NOT_FOUND: Final = "Writable Volume was not found."


# --- sessions and version ------------------------------------------------------------------


def login(sim: AvmSimulator, req: Request) -> Response:
    params = req.params.scoped("user")
    username = params.text("username") or params.text("account_name")
    password = params.text("password")
    if not username:
        return error(400, "User name is required")
    if not password:
        return error(400, "Password is required")
    if not sim.credentials_ok(username, password):
        return error(400, "Invalid user name or password")
    session = sim.open_session(username)
    response = Response.json(200, {"success": "Ok"})
    response.headers.append(("Set-Cookie", f"_session_id={session.token}; {COOKIE_ATTRIBUTES}"))
    return response


def logout(sim: AvmSimulator, req: Request) -> Response:
    session = sim.close_session(req.cookies.get("_session_id"))
    if session is None:
        response = Response.json(200, {"warning": "No valid session to remove"})
    else:
        response = Response.json(200, {"success": f'Destroying session for "{session.username}"'})
    response.headers.append(("Set-Cookie", EXPIRED_COOKIE))
    return response


def version_record(sim: AvmSimulator) -> dict[str, Any]:
    internal = sim.settings.product_version
    if sim.flavour == "4.x":
        text = f"App Volumes 4, version 2512 ({internal})"
    else:
        text = f"{'.'.join(internal.split('.')[:3])} (simulator)"
    record: dict[str, Any] = {
        "version": text,
        "internal": internal,
        "copyright": "Copyright 2011-2025",
        "configured": True,
        "uptime": sim.uptime_text(),
        "database_uuid": sim.database_uuid,
    }
    if sim.flavour == "4.x":
        record["time_offset"] = 0
    return record


def version(sim: AvmSimulator, req: Request) -> Response:
    record = version_record(sim)
    if sim.flavour == "2.x" and sim.settings.version_shape == "flat":
        flat = {k: record[k] for k in ("version", "internal", "copyright", "configured")}
        return Response.json(200, flat)
    return Response.json(200, {"version": record})


def license_info(sim: AvmSimulator, req: Request) -> Response:
    issued = render.fmt_human(sim.started_at)
    features = ("active_directory", "administrators", "hypervisor", "datastores", "appstacks")
    details = {
        "Name": "App Volumes simulator license",
        "Users": 1000,
        "Desktops": 1000,
        "Servers": 1000,
        "Terminal Users": 1000,
        "Writable Volumes": "Enabled",
        "License Mode": "Professional",
        "Attach User Volumes": "To Desktops and Servers",
        "Issued": issued,
        "Valid After": issued,
        "Valid Until": "Never",
        "Options": "",
    }
    body = {
        "keynow": None,
        "keycreate": render.fmt_time(sim.started_at),
        "invalid": "false",
        "ft": {k: "true" for k in (*features, "writable_volumes", "summary")},
        "usage": {"Users": 0, "Computers": 0, "Desktops": 0, "Servers": 0},
        "details": details,
        "filename": "app_volumes_license.key",
    }
    return Response.json(200, {"license": body})


# --- writables ---------------------------------------------------------------------------------


def _parse_time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.astimezone()


def filter_writables(sim: AvmSimulator, req: Request, view: render.View) -> list[Volume]:
    p = req.params
    out = sim.state.volumes_of("writable")
    if p.has("volume_guid"):
        wanted = p.text("volume_guid").strip("{}").lower()
        out = [v for v in out if v.guid.strip("{}").lower() == wanted]
    if p.has("user_guid"):
        out = [v for v in out if v.owner and v.owner.object_guid.lower() == p.text("user_guid").lower()]
    for key, attr in (("created_after", "created_at"), ("updated_after", "updated_at")):
        limit = _parse_time(p.text(key)) if p.has(key) else None
        if limit is not None:
            out = [v for v in out if getattr(v, attr) > limit]
    if (low := p.integer("min_capacity")) is not None:
        out = [v for v in out if v.size_mb >= low]
    if (high := p.integer("max_capacity")) is not None:
        out = [v for v in out if v.size_mb <= high]
    if sim.flavour == "4.x":
        out = _filter_writables_4x(req, view, out)
    if (count := p.integer("count")) is not None:
        out = out[:count]
    return out


def _filter_writables_4x(req: Request, view: render.View, out: list[Volume]) -> list[Volume]:
    p = req.params
    if p.has("owner_name"):
        wanted = p.text("owner_name").lower()
        out = [v for v in out if v.owner and wanted in (v.owner.account.lower(), v.owner.upn.lower())]
    if p.has("owner_type"):
        out = [v for v in out if v.owner and v.owner.entity_type.lower() == p.text("owner_type").lower()]
    if p.has("domain_name"):
        out = [v for v in out if v.owner and v.owner.upn.lower().startswith(p.text("domain_name").lower() + "\\")]
    if p.has("status"):
        out = [v for v in out if render.effective_status(view, v) == p.text("status")]
    if p.has("attached"):
        want = p.text("attached").lower() in ("attached", "true", "1")
        out = [v for v in out if bool(view.state.attachments_of(v.id)) == want]
    if p.has("datastore_name"):
        out = [v for v in out if v.primary and v.primary.datastore == p.text("datastore_name")]
    if p.has("datacenter_name") and p.text("datacenter_name") != view.datacenter:
        out = []
    return out


def writable_detail(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        volume = sim.state.volumes.get(req.arg_int("id"))
        if volume is None or volume.kind != "writable":
            return error(404, WRITABLE_NOT_FOUND)
        return Response.json(200, {"writable": render.writable_detail(sim.view(), volume)})


def writable_update(sim: AvmSimulator, req: Request) -> Response:
    p = req.params.scoped("writable")
    with sim.state.lock:
        volume = sim.state.volumes.get(req.arg_int("id"))
        if volume is None or volume.kind != "writable":
            return error(404, WRITABLE_NOT_FOUND)
        if p.has("description") or "description" in p.values:
            volume.description = p.text("description")
        if "error_action" in p.values:
            volume.error_action = p.text("error_action")
        if "block_login" in p.values:
            volume.block_login = p.boolean("block_login")
        if "mount_prefix" in p.values:
            volume.mount_prefix = p.text("mount_prefix")
        oses = p.int_list("oses")
        if oses:
            volume.primordial_os_id = oses[0]
        volume.updated_at = now()
    return Response.text(200, "Saved Writable changes.")


def writable_delete(sim: AvmSimulator, req: Request) -> Response:
    volume_id = req.arg_int("id")
    with sim.state.lock:
        volume = sim.state.volumes.get(volume_id)
        is_writable = volume is not None and volume.kind == "writable"
    if not is_writable:
        if sim.flavour == "4.x":
            body = {"error": WRITABLE_NOT_FOUND, "snapvols": _snapvols(not_found=[volume_id])}
            return Response.json(404, body)
        body = {"error": f"Unable to locate the Volume ID {volume_id}", "snapvols": _snapvols()}
        return Response.json(200, body)
    result = sim.delete_volumes([volume_id], req.admin_upn)
    if result.errors:
        body = {
            "error": "Unable to delete 1 volume (it is attached)",
            "snapvols": _snapvols(error=list(result.errors)),
        }
        return Response.json(200, body)
    body = {"success": "Deleted 1 volume", "snapvols": _snapvols(success=list(result.deleted))}
    return Response.json(200, body)


def _snapvols(
    *, not_found: list[Any] | None = None, success: list[Any] | None = None, error: list[Any] | None = None
) -> dict[str, list[Any]]:
    return {"not_found": not_found or [], "success": success or [], "error": error or [], "scheduled": []}


def writables_grow(sim: AvmSimulator, req: Request) -> Response:
    p = req.params
    size_mb = p.integer("size_mb")
    ids = p.int_list("volumes")
    if size_mb is None or not ids:
        return error(400, "Missing parameters: size_mb and volumes[] are required")
    result = sim.grow_writables(ids, size_mb, req.admin_upn)
    if result.found == 0 and sim.flavour == "4.x":
        return error(404, WRITABLE_NOT_FOUND)
    body = {
        "successes": list(result.successes),
        "warnings": list(result.warnings),
        "errors": list(result.errors),
    }
    return Response.json(200, body)


def writables_toggle(sim: AvmSimulator, req: Request, enabled: bool) -> Response:
    ids = req.params.int_list("volumes")
    if not ids:
        return error(400, "No volumes provided")
    messages = sim.set_writables_enabled(ids, enabled, req.admin_upn)
    return Response.json(200, {"success": "; ".join(messages), "successes": messages})


def writables_enable(sim: AvmSimulator, req: Request) -> Response:
    return writables_toggle(sim, req, True)


def writables_disable(sim: AvmSimulator, req: Request) -> Response:
    return writables_toggle(sim, req, False)


# --- import ------------------------------------------------------------------------------------


def import_volumes(sim: AvmSimulator, req: Request) -> Response:
    """``datastore``, ``path``, ``datacenter``, ``delay``; also as ``data[...]`` (4.x)."""
    p = req.params.scoped("data")
    datastore = p.text("datastore") or sim.default_datastore()
    path = p.text("path")
    if not path:
        return error(400, "Path is required")
    background = p.boolean("delay", default=True)
    if background:
        jobs = sim.import_folder(datastore, path)
        return Response.json(200, {"success": f"Import started: {len(jobs)} volume(s) queued"})
    results = sim.import_folder_now(datastore, path)
    return Response.json(200, {"success": f"Imported {len(results)} volume(s)", "results": results})


def jobs_pending(sim: AvmSimulator, req: Request) -> Response:
    return Response.json(200, {"pending": sim.pending_jobs()})


def activity_logs(sim: AvmSimulator, req: Request) -> Response:
    upn = req.params.text("admin_upn").lower()
    with sim.state.lock:
        logs = [render.activity(a) for a in sim.state.activities if not upn or a.admin_upn.lower() == upn]
    return Response.json(200, {"actlogs": {"logs": logs}})
