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

log = logging.getLogger(__name__)

TIMEOUT_S: Final = 30.0  # one request; a dead manager becomes an error, not a hang
JOB_POLL_S: Final = 0.5


class AvmUnreachable(Error):
    template = "App Volumes Manager at {url} cannot be reached: {detail}"
    hint = "check the URL, the network path and the manager's service"
    code = "avm_unreachable"


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
    record: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)


class AvmClient:
    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        *,
        verify: bool | str = True,
        session: requests.Session | None = None,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.url = url.rstrip("/")
        self.username = username
        self._password = password
        self.session = session or requests.Session()
        self.session.verify = verify
        self.timeout_s = timeout_s
        self._version: AvmVersion | None = None
        self._logged_in = False

    # -- plumbing ---------------------------------------------------------

    def _request(self, method: str, path: str, *, auth: bool = True, **kw: Any) -> requests.Response:
        if auth and not self._logged_in:
            self.login()
        try:
            r = self.session.request(method, self.url + path, timeout=self.timeout_s, **kw)
        except requests.RequestException as exc:
            raise AvmUnreachable(url=self.url, detail=type(exc).__name__) from exc
        if auth and r.status_code in (401, 403):
            self._logged_in = False  # expired session: log in once more
            self.login()
            try:
                r = self.session.request(method, self.url + path, timeout=self.timeout_s, **kw)
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
            )
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
