"""``/_sim/...``: test and demo hooks. No real manager has these paths; they need no session.

Each maps onto an ``AvmSimulator.admin_*`` method (or a replication/job helper) so tests
in another process can arrange the world the same way in-process tests do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from toolkit.lab.avm_sim.errors import BadVolumeRequest
from toolkit.lab.avm_sim.model import KINDS, Kind
from toolkit.lab.avm_sim.server import Request, Response, Route

if TYPE_CHECKING:
    from toolkit.lab.avm_sim.simulator import AvmSimulator


def state(sim: AvmSimulator, req: Request) -> Response:
    with sim.state.lock:
        groups = [{"id": g.id, "name": g.name, "members": g.members} for g in sim.state.storage_groups.values()]
        datastores = {name: str(ds.root) for name, ds in sim.state.datastores.items()}
    body = {
        "flavour": sim.flavour,
        "datastores": datastores,
        "storage_groups": groups,
        "volumes": [v.as_dict() for v in sim.volumes()],
        "pending": sim.pending_jobs(),
    }
    return Response.json(200, body)


def create_volume(sim: AvmSimulator, req: Request) -> Response:
    p = req.params
    kind = p.text("kind")
    if kind not in KINDS:
        raise BadVolumeRequest(action="create a volume", detail=f"kind must be one of {KINDS}")
    programs = [{str(k): str(v) for k, v in d.items()} for d in p.dict_list("programs")]
    info = sim.admin_create_volume(
        cast(Kind, kind),
        p.text("name"),
        datastore=p.text("datastore") or None,
        folder=p.text("folder") or None,
        size_mb=p.integer("size_mb") or 16,
        sidecar=p.boolean("sidecar", default=True),
        register=p.boolean("register", default=True),
        status=p.text("status", "enabled"),
        guid=p.text("guid") or None,
        description=p.text("description"),
        product=p.text("product") or None,
        version=p.text("version", "1.0"),
        programs=programs,
        owner_upn=p.text("owner_upn") or None,
        current=p.boolean("current", default=True),
        lifecycle_stage=p.text("lifecycle_stage", "Published"),
        create_type=p.text("create_type", "vmfs"),
        content=bytes.fromhex(p.text("content_hex")),
    )
    return Response.json(201, info.as_dict())


def update_volume(sim: AvmSimulator, req: Request) -> Response:
    p = req.params
    writes: dict[int, bytes] = {}
    for item in p.dict_list("writes"):
        writes[int(item.get("offset") or 0)] = bytes.fromhex(str(item.get("data_hex") or ""))
    info = sim.admin_update_volume(
        req.arg_int("id"),
        name=p.text("name") if p.has("name") else None,
        description=p.text("description") if "description" in p.values else None,
        size_mb=p.integer("size_mb"),
        writes=writes or None,
    )
    return Response.json(200, info.as_dict())


def delete_volume(sim: AvmSimulator, req: Request) -> Response:
    sim.admin_delete_volume(req.arg_int("id"), keep_files=req.params.boolean("keep_files"))
    return Response.json(200, {"deleted": req.arg_int("id")})


def attach(sim: AvmSimulator, req: Request) -> Response:
    p = req.params
    attachment_id = sim.admin_attach(req.arg_int("id"), p.text("machine", "DESKTOP-01"), p.text("user_upn"))
    return Response.json(200, {"attachment_id": attachment_id})


def detach(sim: AvmSimulator, req: Request) -> Response:
    machine = req.params.text("machine") or None
    return Response.json(200, {"detached": sim.admin_detach(req.arg_int("id"), machine)})


def set_status(sim: AvmSimulator, req: Request) -> Response:
    return Response.json(200, sim.admin_set_status(req.arg_int("id"), req.params.text("status")).as_dict())


def provisioning(sim: AvmSimulator, req: Request) -> Response:
    computer = req.params.text("computer", "CAPTURE-01")
    return Response.json(200, sim.admin_mark_provisioning(req.arg_int("id"), computer).as_dict())


def provisioned(sim: AvmSimulator, req: Request) -> Response:
    return Response.json(200, sim.admin_finish_provisioning(req.arg_int("id")).as_dict())


def busy(sim: AvmSimulator, req: Request) -> Response:
    value = req.params.get("state")
    return Response.json(200, sim.admin_set_busy(req.arg_int("id"), str(value) if value else None).as_dict())


def replicate(sim: AvmSimulator, req: Request) -> Response:
    report = sim.replicate_now(req.params.text("group") or None)
    body = {"copied": list(report.copied), "deleted": list(report.deleted), "skipped": list(report.skipped)}
    return Response.json(200, body)


def jobs(sim: AvmSimulator, req: Request) -> Response:
    return Response.json(200, {"pending": sim.pending_jobs(), "jobs": sim.job_history()})


def drain_jobs(sim: AvmSimulator, req: Request) -> Response:
    timeout_s = float(req.params.text("timeout_s", "10") or 10)
    drained = sim.drain_jobs(timeout_s)
    body: dict[str, Any] = {"drained": drained, "pending": sim.pending_jobs()}
    return Response.json(200, body)


def refuse_assignments(sim: AvmSimulator, req: Request) -> Response:
    p = req.params
    path = p.text("path")
    if not path:
        raise BadVolumeRequest(action="refuse assignments", detail="give the entity's directory path as path")
    refuse = p.boolean("refuse", default=True)
    sim.admin_refuse_assignments(path, refuse=refuse)
    return Response.json(200, {"path": path, "refused": refuse})


def expire_sessions(sim: AvmSimulator, req: Request) -> Response:
    return Response.json(200, {"expired": sim.expire_sessions()})


ROUTES: list[Route] = [
    Route("GET", "/_sim/state", state, auth=False),
    Route("POST", "/_sim/volumes", create_volume, auth=False),
    Route("PUT", "/_sim/volumes/{id}", update_volume, auth=False),
    Route("DELETE", "/_sim/volumes/{id}", delete_volume, auth=False),
    Route("POST", "/_sim/volumes/{id}/attach", attach, auth=False),
    Route("POST", "/_sim/volumes/{id}/detach", detach, auth=False),
    Route("POST", "/_sim/volumes/{id}/status", set_status, auth=False),
    Route("POST", "/_sim/volumes/{id}/provisioning", provisioning, auth=False),
    Route("POST", "/_sim/volumes/{id}/provisioned", provisioned, auth=False),
    Route("POST", "/_sim/volumes/{id}/busy", busy, auth=False),
    Route("POST", "/_sim/replicate", replicate, auth=False),
    Route("GET", "/_sim/jobs", jobs, auth=False),
    Route("POST", "/_sim/jobs/drain", drain_jobs, auth=False),
    Route("POST", "/_sim/sessions/expire", expire_sessions, auth=False),
    Route("POST", "/_sim/entities/refuse", refuse_assignments, auth=False),
]
