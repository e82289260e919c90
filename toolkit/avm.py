"""App Volumes Manager REST client (2.x ``/cv_api`` and 4.x ``/app_volumes``).

JSON stays inside this module: callers get dataclasses. Shapes follow the
reference notes and the vendor's OpenAPI documents; both the flat and the
nested ``version`` bodies, and both AppStack list wrappers, are accepted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final

import requests

from catalog.errors import Error
from toolkit.tls import PinnedCertificate

log = logging.getLogger(__name__)

TIMEOUT_S: Final = 30.0  # one request; a dead manager becomes an error, not a hang
JOB_POLL_S: Final = 0.5


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

    def _request(self, method: str, path: str, *, auth: bool = True, **kw: Any) -> requests.Response:
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
        if r.status_code >= 400:
            raise AvmBadResponse(method=method, path=path, detail=f"HTTP {r.status_code}")
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
            rows = _unwrap_data(self._json("GET", "/app_volumes/app_packages"), "/app_volumes/app_packages")
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
        out = []
        for row in rows:
            vol = _volume("writable", row, [])
            attached = str(row.get("attached", "")).lower() == "attached" or int(row.get("mount_count") or 0) > 0
            out.append(
                AvmVolume(
                    vol.id,
                    "writable",
                    vol.name,
                    vol.guid,
                    vol.status,
                    vol.datastore,
                    vol.path,
                    vol.filename,
                    attached,
                    (),
                    row,
                )
            )
        return out

    def assignments(self, volume: AvmVolume) -> tuple[dict[str, Any], ...]:
        """The assignments of an AppStack (2.x) or of a package's application (4.x)."""
        if volume.kind == "appstack":
            body = self._json("GET", f"/cv_api/appstacks/{volume.id}/assignments")
            rows = body if isinstance(body, list) else []
        elif volume.kind == "package" and volume.record.get("app_product_id"):
            body = self._json("GET", f"/app_volumes/app_products/{volume.record['app_product_id']}/assignments")
            rows = body.get("data", []) if isinstance(body, dict) else []
        else:
            rows = []
        return tuple(r for r in rows if isinstance(r, dict))

    def inventory(self) -> list[AvmVolume]:
        """Every AppStack/package (with its assignments) and every writable the manager knows."""
        out = []
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
                    self.assignments(v),
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


def _unwrap_data(body: Any, path: str) -> list[dict[str, Any]]:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise AvmBadResponse(method="GET", path=path, detail="no data list")
    return data


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
