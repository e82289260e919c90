"""App Volumes Manager REST client (2.x ``/cv_api`` and 4.x ``/app_volumes``).

JSON stays inside this module: callers get dataclasses. Shapes follow the
reference notes and the vendor's OpenAPI documents; both the flat and the
nested ``version`` bodies, and both AppStack list wrappers, are accepted.
"""

from __future__ import annotations

import html
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import requests

from catalog.errors import Error
from toolkit.tls import PinnedCertificate

log = logging.getLogger(__name__)

TIMEOUT_S: Final = 30.0  # one request; a dead manager becomes an error, not a hang
JOB_POLL_S: Final = 0.5
LINK_TITLE: Final = re.compile(r'title="([^"]*)"')  # 2.x assignment names are HTML links titled DOMAIN\\user
LINK_TEXT: Final = re.compile(r">([^<]*)</a>")
# Statuses a manager refuses one assignment with; the answer's body says why (2.17 documents a 500 for a failed save).
REFUSALS: Final = (400, 500)
ENTITY_TYPES: Final = {"user": "User", "group": "Group", "computer": "Computer", "orgunit": "OrgUnit", "ou": "OrgUnit"}


class AvmUnreachable(Error):
    template = "App Volumes Manager at {url} cannot be reached: {detail}"
    hint = "check the URL, the network path and the manager's service"
    code = "avm_unreachable"


class AvmTlsRefused(Error):
    template = "the certificate of App Volumes Manager at {url} is not trusted: {detail}"
    hint = (
        "give the manager's CA with ca_bundle, or pin its certificate with thumbprint_sha256 "
        "(see docs/configuration.md); verification is never turned off silently"
    )
    code = "avm_tls_refused"


def _tls_detail(exc: Exception) -> str:
    text = str(exc)
    if "Fingerprints did not match" in text or "fingerprint" in text.lower():
        return "its SHA-256 thumbprint differs from the pinned one"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "verification failed (self-signed or unknown CA)"
    return "TLS handshake failed"


class AvmLoginFailed(Error):
    template = "App Volumes Manager at {url} refused the login of {user!r}: {detail}"
    hint = "check the user name and password, and that the user is an App Volumes administrator"
    code = "avm_login_failed"


class AvmBadResponse(Error):
    template = "App Volumes Manager answered {method} {path} with {detail}"
    hint = "check the manager's version and logs"
    code = "avm_bad_response"
    exit_code = 1


class AvmJobsTimeout(Error):
    template = "App Volumes Manager still has {pending} pending job(s) after {timeout_s:.0f} s"
    hint = "the import continues in the background; check the manager's Activity > Jobs page"
    code = "avm_jobs_timeout"
    exit_code = 1


@dataclass(frozen=True, slots=True)
class AvmVersion:
    flavour: str  # "2.x" or "4.x"
    text: str
    internal: str


@dataclass(frozen=True, slots=True)
class AvmVolume:
    """One AppStack (2.x), package (4.x) or writable as the manager lists it."""

    id: int
    kind: str  # appstack | package | writable
    name: str
    guid: str
    status: str
    datastore: str
    path: str  # folder on the datastore
    filename: str
    attached: bool = False
    assignments: tuple[dict[str, Any], ...] = ()
    record: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def relpath(self) -> str:
        """Datastore-relative path of the descriptor."""
        return f"{self.path.strip('/')}/{self.filename}" if self.path.strip("/") else self.filename

    def to_json(self) -> dict[str, Any]:
        """What a snapshot stores about the volume: the manager's record as it was."""
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "guid": self.guid,
            "status": self.status,
            "datastore": self.datastore,
            "path": self.relpath,
            "attached": self.attached,
            "assignments": list(self.assignments),
            "record": self.record,
        }


def pin_certificate(session: requests.Session, url: str, thumbprint_sha256: str) -> None:
    """Make ``session`` accept only the pinned certificate for ``url``.

    Requests to ``url`` must then pass ``verify=False``: the chain is not checked,
    the certificate's SHA-256 is (urllib3 refuses any other certificate).
    """
    session.mount(url.rstrip("/") + "/", PinnedCertificate(thumbprint_sha256))


class AvmClient:
    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        *,
        verify: bool | str = True,
        thumbprint_sha256: str | None = None,
        session: requests.Session | None = None,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.url = url.rstrip("/")
        self.username = username
        self._password = password
        self.session = session or requests.Session()
        # Passed on every request: a Session-level setting loses to REQUESTS_CA_BUNDLE in requests.
        self.verify: bool | str = verify
        if thumbprint_sha256:
            pin_certificate(self.session, self.url, thumbprint_sha256)
            self.verify = False
        self.timeout_s = timeout_s
        self._version: AvmVersion | None = None
        self._logged_in = False

    # -- plumbing ---------------------------------------------------------

    def _request(
        self, method: str, path: str, *, auth: bool = True, allow: tuple[int, ...] = (), **kw: Any
    ) -> requests.Response:
        if auth and not self._logged_in:
            self.login()
        try:
            r = self.session.request(method, self.url + path, timeout=self.timeout_s, verify=self.verify, **kw)
        except requests.exceptions.SSLError as exc:
            raise AvmTlsRefused(url=self.url, detail=_tls_detail(exc)) from exc
        except requests.RequestException as exc:
            raise AvmUnreachable(url=self.url, detail=type(exc).__name__) from exc
        if auth and r.status_code in (401, 403):
            self._logged_in = False  # expired session: log in once more
            self.login()
            try:
                r = self.session.request(method, self.url + path, timeout=self.timeout_s, verify=self.verify, **kw)
            except requests.RequestException as exc:
                raise AvmUnreachable(url=self.url, detail=type(exc).__name__) from exc
        if r.status_code >= 400 and r.status_code not in allow:
            raise AvmBadResponse(method=method, path=path, detail=_status_detail(r))
        return r

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        r = self._request(method, path, **kw)
        try:
            return r.json()
        except ValueError:
            raise AvmBadResponse(method=method, path=path, detail="a body that is not JSON") from None

    # -- session and version ----------------------------------------------

    def version(self) -> AvmVersion:
        if self._version is None:
            body = self._json("GET", "/cv_api/version", auth=False)
            v = body.get("version") if isinstance(body, dict) else None
            if isinstance(v, dict):
                body, v = v, v.get("version")
            if not isinstance(v, str):
                raise AvmBadResponse(method="GET", path="/cv_api/version", detail="no version field")
            internal = str(body.get("internal", ""))
            four = internal.startswith("4.") or "App Volumes 4" in v
            self._version = AvmVersion("4.x" if four else "2.x", v, internal)
        return self._version

    def login(self) -> None:
        path = "/app_volumes/sessions" if self.version().flavour == "4.x" else "/cv_api/sessions"
        try:
            r = self.session.post(
                self.url + path,
                json={"username": self.username, "password": self._password},
                timeout=self.timeout_s,
                verify=self.verify,
            )
        except requests.exceptions.SSLError as exc:
            raise AvmTlsRefused(url=self.url, detail=_tls_detail(exc)) from exc
        except requests.RequestException as exc:
            raise AvmUnreachable(url=self.url, detail=type(exc).__name__) from exc
        ok = r.status_code < 400
        try:
            body = r.json()
        except ValueError:
            body = {}
        if not ok or str(body.get("success", "")).lower() != "ok":
            raise AvmLoginFailed(url=self.url, user=self.username, detail=f"HTTP {r.status_code}")
        self._logged_in = True

    def logout(self) -> None:
        if self._logged_in:
            path = "/app_volumes/sessions" if self.version().flavour == "4.x" else "/cv_api/sessions"
            self._request("DELETE", path, auth=False)
            self._logged_in = False

    # -- volumes ----------------------------------------------------------

    def volumes(self) -> list[AvmVolume]:
        """Every AppStack or package, with its primary file location."""
        if self.version().flavour == "4.x":
            # With its markers: whether a package was its application's CURRENT one is part of its record.
            body = self._json("GET", "/app_volumes/app_packages", params={"include": "app_markers"})
            rows = _unwrap_data(body, "/app_volumes/app_packages")
            out = []
            for row in rows:
                files = _unwrap_data(self._json("GET", f"/app_volumes/app_packages/{row['id']}/files"), "files")
                out.append(_volume("package", row, files))
            return out
        body = self._json("GET", "/cv_api/appstacks")
        if isinstance(body, dict) and "currentappstacks" in body:
            body = body["currentappstacks"].get("appstacks", [])
        if not isinstance(body, list):
            raise AvmBadResponse(method="GET", path="/cv_api/appstacks", detail="a body that is not a list")
        out = []
        for row in body:
            detail = self._json("GET", f"/cv_api/appstacks/{row['id']}").get("appstack", row)
            files = self._json("GET", f"/cv_api/appstacks/{row['id']}/files")
            out.append(_volume("appstack", {**row, **detail}, files if isinstance(files, list) else []))
        return out

    def writables(self) -> list[AvmVolume]:
        """Every writable volume, with whether a desktop has it attached."""
        if self.version().flavour == "4.x":
            rows = _unwrap_data(self._json("GET", "/app_volumes/writables"), "/app_volumes/writables")
        else:
            body = self._json("GET", "/cv_api/writables")
            rows = body.get("datastores", {}).get("writable_volumes", []) if isinstance(body, dict) else []
        return [_writable(row) for row in rows]

    def writable(self, volume_id: int) -> AvmVolume:
        """One writable volume as the manager reports it now (``attached`` included)."""
        prefix = "/app_volumes" if self.version().flavour == "4.x" else "/cv_api"
        path = f"{prefix}/writables/{int(volume_id)}"
        body = self._json("GET", path)
        row = body.get("writable") if isinstance(body, dict) else None
        if not isinstance(row, dict):
            raise AvmBadResponse(method="GET", path=path, detail="no writable object")
        return _writable(row)

    def set_writable_enabled(self, volume_id: int, enabled: bool) -> None:
        """Enable or disable a writable volume (a disabled one is not attached at the next logon)."""
        verb = "enable" if enabled else "disable"
        path = f"/cv_api/writables/{verb}"  # the same path on 2.x and 4.x managers
        r = self._request("POST", path, data={"volumes[]": str(int(volume_id))})
        if f"was {verb}d" not in r.text.lower():
            raise AvmBadResponse(method="POST", path=path, detail=f"no 'was {verb}d' in the answer")

    def assignments(
        self, volume: AvmVolume, directory: dict[int, list[dict[str, Any]]] | None = None
    ) -> tuple[dict[str, Any], ...]:
        """The assignments of an AppStack (2.x) or those delivering a package (4.x).

        2.x lists an AppStack's assignments as HTML links; each row gets the entity's directory
        path (``entity_dn``) from the manager-wide list (``directory``, fetched when not given),
        since re-creating an assignment takes that path.
        """
        if volume.kind == "appstack":
            body = self._json("GET", f"/cv_api/appstacks/{volume.id}/assignments")
            rows = [r for r in body if isinstance(r, dict)] if isinstance(body, list) else []
            if directory is None:
                directory = self.assignments_by_volume()
            return tuple(_with_directory_path(r, directory.get(volume.id, [])) for r in rows)
        if volume.kind == "package":
            path = f"/app_volumes/app_packages/{volume.id}/assignments"
            body = self._json("GET", path, params={"include": "entities,filters"})
            rows = body.get("data", []) if isinstance(body, dict) else []
            return tuple(r for r in rows if isinstance(r, dict))
        return ()

    def assignments_by_volume(self) -> dict[int, list[dict[str, Any]]]:
        """2.x: every assignment the manager holds (``/cv_api/assignments``), by AppStack id; {} if not served."""
        try:
            body = self._json("GET", "/cv_api/assignments")
        except AvmBadResponse as exc:
            log.info("no manager-wide assignment list (%s); assignments are recorded without directory paths", exc)
            return {}
        rows = body.get("assignments", []) if isinstance(body, dict) else body
        out: dict[int, list[dict[str, Any]]] = {}
        for row in rows if isinstance(rows, list) else []:
            if isinstance(row, dict) and str(row.get("snapvol_id", "")).isdigit():
                out.setdefault(int(row["snapvol_id"]), []).append(row)
        return out

    def inventory(self) -> list[AvmVolume]:
        """Every AppStack/package (with its assignments) and every writable the manager knows."""
        out = []
        directory = self.assignments_by_volume() if self.version().flavour == "2.x" else {}
        for v in self.volumes():
            out.append(
                AvmVolume(
                    v.id,
                    v.kind,
                    v.name,
                    v.guid,
                    v.status,
                    v.datastore,
                    v.path,
                    v.filename,
                    v.attached,
                    self.assignments(v, directory),
                    v.record,
                )
            )
        return out + self.writables()

    def import_folder(self, datastore: str, path: str, datacenter: str = "") -> None:
        """Ask the manager to import every volume in a datastore folder (runs as jobs)."""
        if self.version().flavour == "4.x":
            form = {
                "data[datacenter]": datacenter,
                "data[datastore]": datastore,
                "data[path]": path,
                "data[delay]": "true",
            }
            self._json("POST", "/app_volumes/app_products/import", data=form)
        else:
            form = {"datacenter": datacenter, "datastore": datastore, "path": path, "delay": "true"}
            self._json("POST", "/cv_api/volumes/import", data=form)

    def pending_jobs(self) -> int:
        body = self._json("GET", "/cv_api/jobs/pending")
        try:
            return int(body["pending"])
        except (KeyError, TypeError, ValueError):
            raise AvmBadResponse(method="GET", path="/cv_api/jobs/pending", detail="no pending count") from None

    def wait_jobs(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while (pending := self.pending_jobs()) > 0:
            if time.monotonic() > deadline:
                raise AvmJobsTimeout(pending=pending, timeout_s=timeout_s)
            time.sleep(JOB_POLL_S)

    # -- assignments and deletion -----------------------------------------

    def restore_assignments(self, volume: AvmVolume, recorded: dict[str, Any]) -> list[AssignmentOutcome]:
        """Re-create on ``volume`` (as the manager lists it now) the assignments recorded with a version.

        ``recorded`` is the manager's record stored at capture (:meth:`AvmVolume.to_json`).
        Assignments already there are left alone, so a second run creates nothing twice.
        """
        wanted = recorded_assignments(recorded)
        if not wanted:
            return []
        if volume.kind == "appstack":
            return self._restore_appstack_assignments(volume, wanted)
        if volume.kind == "package":
            return self._restore_package_assignments(volume, wanted, recorded)
        return [AssignmentOutcome(a.who, "failed", f"the manager lists it as a {volume.kind}") for a in wanted]

    def _restore_appstack_assignments(self, volume: AvmVolume, wanted: list[AvmAssignment]) -> list[AssignmentOutcome]:
        """2.x: ``POST /cv_api/assignments`` (action_type assign) per entity not assigned yet."""
        present = {dn.lower() for row in self.assignments(volume) if (dn := _directory_path(row))}
        out: list[AssignmentOutcome] = []
        for a in wanted:
            if not a.entities:
                out.append(AssignmentOutcome(a.who, "failed", UNRESOLVED))
                continue
            missing = [(t, dn) for t, dn in a.entities if dn.lower() not in present]
            if not missing:
                out.append(AssignmentOutcome(a.who, "present", "already assigned"))
                continue
            body = {
                "action_type": "assign",
                "id": volume.id,
                "assignments": [{"entity_type": t, "path": dn} for t, dn in missing],
                "mount_prefix": a.mount_prefix,
                "rtime": False,
            }
            r = self._request("POST", "/cv_api/assignments", json=body, allow=REFUSALS)
            problem = _refusal(r)
            if problem:
                out.append(AssignmentOutcome(a.who, "failed", f"the manager refused it: {problem}"))
                continue
            present |= {dn.lower() for _, dn in missing}
            out.append(AssignmentOutcome(a.who, "created", _prefix_note(a.mount_prefix)))
        rows = self.assignments(volume)
        if rows and not all(_directory_path(r) for r in rows):
            return out  # the manager lists no directory paths: what it accepted cannot be matched
        return _confirmed(out, {dn.lower() for r in rows if (dn := _directory_path(r))}, wanted)

    def _restore_package_assignments(
        self, volume: AvmVolume, wanted: list[AvmAssignment], recorded: dict[str, Any]
    ) -> list[AssignmentOutcome]:
        """4.x: ``POST /app_volumes/app_assignments`` to the package itself, or to its application's CURRENT marker.

        The import restores neither assignments nor the CURRENT marker. A marker assignment needs
        the marker: when the application has none and this package was CURRENT at capture, it is
        set to the restored package; an existing marker is never moved.
        """
        product_id = int(volume.record.get("app_product_id") or 0)
        if not product_id:
            return [
                AssignmentOutcome(a.who, "failed", "the manager lists the package without an application")
                for a in wanted
            ]
        was_current = any(
            str(m.get("name", "")).upper() == "CURRENT"
            for m in (recorded.get("record") or {}).get("app_markers") or []
            if isinstance(m, dict)
        )
        path = f"/app_volumes/app_products/{product_id}/assignments"
        existing = _unwrap_data(self._json("GET", path, params={"include": "entities,filters"}), path)
        marker = self.current_marker(product_id)
        out: list[AssignmentOutcome] = []
        for a in wanted:
            note = ""
            if a.other_package is not None:
                detail = f"pinned to another package of the application (id {a.other_package}) at capture"
                out.append(AssignmentOutcome(a.who, "skipped", detail))
                continue
            if not a.entities:
                out.append(AssignmentOutcome(a.who, "failed", UNRESOLVED))
                continue
            if a.via == "marker" and marker is None:
                if not was_current:
                    detail = "its application has no CURRENT marker now; set one in the manager, then run again"
                    out.append(AssignmentOutcome(a.who, "failed", detail))
                    continue
                marker = (self.set_current_marker(product_id, volume.id), volume.id)
                note = "CURRENT marker set to the restored package (it was CURRENT at capture); "
            target: dict[str, Any] = {"app_package_id": volume.id, "app_marker_id": None}
            if a.via == "marker" and marker is not None:
                target = {"app_package_id": None, "app_marker_id": marker[0]}
                if marker[1] != volume.id:
                    note += f"through the CURRENT marker, which points at package id {marker[1]}; "
            if any(_same_package_assignment(row, target, a) for row in existing):
                out.append(AssignmentOutcome(a.who, "present", (note + "already assigned").strip("; ")))
                continue
            elsewhere = next((row for row in existing if _shares_entity(row, a)), None)
            if elsewhere is not None:  # the manager refuses a second assignment within the application
                detail = _assigned_elsewhere(elsewhere, marker, volume)
                out.append(AssignmentOutcome(a.who, "present", (note + detail).strip("; ")))
                continue
            item = {
                "app_product_id": product_id,
                "entities": [{"path": dn, "entity_type": t} for t, dn in a.entities],
                **target,
                "delivery": a.delivery or "default",
            }
            if a.filters:
                item["filters"] = [{"type": t, "value": v} for t, v in a.filters]
            r = self._request("POST", "/app_volumes/app_assignments", json={"data": [item]}, allow=REFUSALS)
            problem = _refusal(r)
            if problem:
                out.append(AssignmentOutcome(a.who, "failed", f"the manager refused it: {problem}"))
                continue
            created = _body(r).get("data")
            existing += [row for row in created if isinstance(row, dict)] if isinstance(created, list) else []
            out.append(AssignmentOutcome(a.who, "created", (note + _prefix_note(a.mount_prefix)).strip("; ")))
        return out

    def current_marker(self, product_id: int) -> tuple[int, int] | None:
        """(marker id, package id) of an application's CURRENT marker, or None."""
        path = f"/app_volumes/app_products/{product_id}/app_packages"
        for row in _unwrap_data(self._json("GET", path, params={"include": "app_markers"}), path):
            for m in row.get("app_markers") or []:
                if isinstance(m, dict) and str(m.get("name", "")).upper() == "CURRENT" and m.get("id") is not None:
                    return int(m["id"]), int(m.get("app_package_id") or row.get("id") or 0)
        return None

    def set_current_marker(self, product_id: int, package_id: int) -> int:
        """Point an application's CURRENT marker at one of its packages (created if missing); the marker's id."""
        path = f"/app_volumes/app_products/{product_id}/app_markers/CURRENT"
        body = self._json("PUT", path, params={"data[app_package_id]": str(package_id)})
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or data.get("id") is None:
            raise AvmBadResponse(method="PUT", path=path, detail="no marker in the answer")
        return int(data["id"])

    def unassign_appstack(self, volume: AvmVolume, entities: Sequence[tuple[str, str]]) -> str:
        """2.x: ``POST /cv_api/assignments`` (action_type unassign) of (entity type, directory path); '' or why not.

        The manager ignores an entity that is not assigned, with a warning; list the AppStack's
        assignments afterwards to know what it holds.
        """
        body = {
            "action_type": "unassign",
            "id": volume.id,
            "assignments": [{"entity_type": t, "path": dn} for t, dn in entities],
            "rtime": False,
        }
        return _refusal(self._request("POST", "/cv_api/assignments", json=body, allow=REFUSALS))

    def delete_assignments(self, ids: Sequence[int]) -> tuple[set[int], set[int]]:
        """4.x: ``DELETE /app_volumes/app_assignments``; (the ids deleted, the ids the manager did not delete)."""
        path = "/app_volumes/app_assignments"
        wanted = {int(i) for i in ids}
        body = self._json("DELETE", path, json={"ids": sorted(wanted)})
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise AvmBadResponse(method="DELETE", path=path, detail="no data object")
        rows = data.get("deleted")
        listed = rows if isinstance(rows, list) else []
        deleted = {int(d["id"]) for d in listed if isinstance(d, dict) and str(d.get("id", "")).isdigit()}
        return deleted & wanted, wanted - deleted

    def delete_volume(self, volume: AvmVolume) -> str | None:
        """Delete a volume in the manager (its record and, as the manager does, its files); None or why not."""
        r = self._request("POST", "/cv_api/volumes/delete", data={"volumes[]": [str(volume.id)]}, allow=(400,))
        problem = _refusal(r)
        if problem:
            return problem
        snapvols = _body(r).get("snapvols")
        failed = snapvols.get("error") or snapvols.get("not_found") if isinstance(snapvols, dict) else None
        return f"the manager could not delete volume id {volume.id}" if failed else None


UNRESOLVED: Final = "recorded without the entity's directory path; assign it in the manager"


@dataclass(frozen=True, slots=True)
class AvmAssignment:
    """One assignment as recorded with a version, in the terms the manager takes back."""

    who: str  # the entities, for reports (DOMAIN\\user, …)
    entities: tuple[tuple[str, str], ...]  # (entity type, directory path); empty when none was recorded
    mount_prefix: str = ""
    via: str = "volume"  # 2.x: the AppStack; 4.x: "package" (pinned) or "marker" (the CURRENT marker)
    delivery: str = ""
    filters: tuple[tuple[str, str], ...] = ()
    other_package: int | None = None  # 4.x: pinned to another package of the application


@dataclass(frozen=True, slots=True)
class AssignmentOutcome:
    who: str
    status: str  # created | present | skipped | failed
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {"who": self.who, "status": self.status, "detail": self.detail}


def recorded_assignments(recorded: dict[str, Any]) -> list[AvmAssignment]:
    """The assignments in a stored manager record, 2.x rows (one entity each) or 4.x rows (entities)."""
    own_id = recorded.get("id")
    out = []
    for row in recorded.get("assignments") or []:
        if not isinstance(row, dict):
            continue
        if isinstance(row.get("entities"), list):
            entities = [e for e in row["entities"] if isinstance(e, dict)]
            resolved = tuple(
                (_entity_type(e.get("entity_type")), str(e["distinguished_name"]))
                for e in entities
                if e.get("distinguished_name")
            )
            who = ", ".join(str(e.get("upn") or e.get("name") or e.get("distinguished_name") or "?") for e in entities)
            via = "marker" if row.get("app_marker_id") or row.get("app_marker_name") else "package"
            pinned = row.get("app_package_id")
            other = int(pinned) if via == "package" and pinned not in (None, own_id) else None
            filters = tuple(
                (str(f.get("type") or "ComputerPrefixFilter"), str(f.get("value") or ""))
                for f in row.get("filters") or []
                if isinstance(f, dict)
            )
            full = len(resolved) == len(entities)
            out.append(
                AvmAssignment(
                    who or "?",
                    resolved if full else (),
                    str(row.get("mount_prefix") or ""),
                    via,
                    str(row.get("delivery") or ""),
                    filters,
                    other,
                )
            )
            continue
        dn = _directory_path(row)
        etype = _entity_type(row.get("entity_type") or row.get("entityt"))
        out.append(AvmAssignment(_who(row), ((etype, dn),) if dn else (), str(row.get("mount_prefix") or "")))
    return out


def is_assigned(rows: Sequence[dict[str, Any]], a: AvmAssignment, volume: AvmVolume) -> bool:
    """Whether a volume's assignments (``rows``, as :meth:`AvmClient.assignments` lists them) already give it to
    ``a``'s entities: 2.x every entity by its directory path; 4.x one assignment pinned to the package with
    exactly those entities."""
    if not a.entities:
        return False
    if volume.kind == "appstack":
        present = {dn.lower() for row in rows if (dn := _directory_path(row))}
        return all(dn.lower() in present for _, dn in a.entities)
    target = {"app_package_id": volume.id, "app_marker_id": None}
    return any(_same_package_assignment(row, target, a) for row in rows)


def _entity_type(value: object) -> str:
    text = str(value or "User")
    return ENTITY_TYPES.get(text.lower().replace("_", ""), text)


def _directory_path(row: dict[str, Any]) -> str:
    return str(row.get("entity_dn") or row.get("path") or row.get("distinguished_name") or "")


def _who(row: dict[str, Any]) -> str:
    """DOMAIN\\user of a 2.x assignment row (its name is an HTML link)."""
    if row.get("entity_upn"):
        return str(row["entity_upn"])
    name = str(row.get("name") or "")
    m = LINK_TITLE.search(name) or LINK_TEXT.search(name)
    return html.unescape(m[1]) if m else (html.unescape(name) or _directory_path(row) or "?")


def _with_directory_path(row: dict[str, Any], directory: list[dict[str, Any]]) -> dict[str, Any]:
    """A 2.x per-AppStack assignment row with ``entity_dn`` from the manager-wide list, when it matches."""
    if _directory_path(row):
        return row
    who = _who(row).lower()
    kind = str(row.get("entity_type") or "").lower()
    hits = [
        d
        for d in directory
        if str(d.get("entity_upn", "")).lower() == who
        and str(d.get("entity_type") or d.get("entityt") or kind).lower() == kind
        and d.get("entity_dn")
    ]
    return {**row, "entity_dn": hits[0]["entity_dn"], "entity_upn": hits[0]["entity_upn"]} if len(hits) == 1 else row


def _same_package_assignment(row: dict[str, Any], target: dict[str, Any], a: AvmAssignment) -> bool:
    entities = {str(e.get("distinguished_name", "")).lower() for e in row.get("entities") or [] if isinstance(e, dict)}
    if entities != {dn.lower() for _, dn in a.entities}:
        return False
    if target["app_marker_id"] is not None:
        return bool(row.get("app_marker_id") == target["app_marker_id"])
    return bool(row.get("app_package_id") == target["app_package_id"] and not row.get("app_marker_id"))


def _shares_entity(row: dict[str, Any], a: AvmAssignment) -> bool:
    entities = {str(e.get("distinguished_name", "")).lower() for e in row.get("entities") or [] if isinstance(e, dict)}
    return any(dn.lower() in entities for _, dn in a.entities)


def _assigned_elsewhere(row: dict[str, Any], marker: tuple[int, int] | None, volume: AvmVolume) -> str:
    """Where an entity is given the application now (4.x allows one assignment per entity and application)."""
    if row.get("app_marker_id"):
        package_id = marker[1] if marker is not None and marker[0] == row["app_marker_id"] else None
        where = f"through the CURRENT marker, which points at package id {package_id or '?'}"
        if package_id == volume.id:
            return f"already assigned in the application, {where} (this package)"
        source = f"<package id {package_id or '?'}>"
    else:
        name = str(row.get("app_package_name") or "")
        where = f"pinned to package {name!r} (id {row.get('app_package_id')})" if name else "pinned to another package"
        source = repr(name) if name else f"<package id {row.get('app_package_id')}>"
    return (
        f"already assigned in the application, {where}, and the manager takes one assignment per entity and "
        f"application; to move it here: toolkit switch --from {source} --to {volume.name!r}"
    )


def _body(r: requests.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _refusal(r: requests.Response) -> str:
    """The manager's reason for refusing a request (HTTP 400 or an ``error`` in a 200), or ''."""
    body = _body(r)
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("title") or errors[0].get("error") or errors[0])
    if isinstance(errors, list) and errors and isinstance(errors[0], str):
        return errors[0]  # 2.x: "Unable to save assignment of …", more telling than its "error"
    if body.get("error"):
        return str(body["error"])
    return f"HTTP {r.status_code}" if r.status_code >= 400 else ""


def _status_detail(r: requests.Response) -> str:
    """``HTTP 500`` and the manager's own reason when its body gives one (one line, 200 characters at most)."""
    detail = _body(r).get("detail")
    reason = detail if isinstance(detail, str) else _refusal(r)
    reason = " ".join(reason.split())[:200]
    if not reason or reason == f"HTTP {r.status_code}":
        return f"HTTP {r.status_code}"
    return f"HTTP {r.status_code}: {reason}"


def _prefix_note(prefix: str) -> str:
    return f"for computers named {prefix}*" if prefix else ""


def _confirmed(out: list[AssignmentOutcome], present: set[str], wanted: list[AvmAssignment]) -> list[AssignmentOutcome]:
    """Created outcomes stay 'created' only if the manager now lists every entity."""
    checked = []
    for outcome, a in zip(out, wanted, strict=True):
        if outcome.status == "created" and any(dn.lower() not in present for _, dn in a.entities):
            outcome = AssignmentOutcome(a.who, "failed", "the manager accepted it but does not list it")
        checked.append(outcome)
    return checked


def _unwrap_data(body: Any, path: str) -> list[dict[str, Any]]:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise AvmBadResponse(method="GET", path=path, detail="no data list")
    return data


def _writable(row: dict[str, Any]) -> AvmVolume:
    vol = _volume("writable", row, [])
    attached = str(row.get("attached", "")).lower() == "attached" or int(row.get("mount_count") or 0) > 0
    return AvmVolume(
        vol.id, "writable", vol.name, vol.guid, vol.status, vol.datastore, vol.path, vol.filename, attached, (), row
    )


def _volume(kind: str, row: dict[str, Any], files: list[dict[str, Any]]) -> AvmVolume:
    usable = [f for f in files if f.get("reachable", True) and not f.get("missing", False)]
    first = usable[0] if usable else {}
    try:
        ident = int(row["id"])
    except (KeyError, TypeError, ValueError):
        raise AvmBadResponse(method="GET", path=kind, detail="a volume without an id") from None
    return AvmVolume(
        id=ident,
        kind=kind,
        name=str(row.get("name", "")),
        guid=str(row.get("volume_guid") or row.get("guid") or ""),
        status=str(row.get("status", "")),
        datastore=str(first.get("storage_location") or row.get("datastore_name") or ""),
        path=str(first.get("path") or row.get("path") or ""),
        filename=str(first.get("name") or row.get("filename") or ""),
        record=row,
    )
